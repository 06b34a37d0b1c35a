"""dvc.yaml's code deps against the code each stage really runs: a module missing from a stage's deps is a change
`dvc repro` would not rerun that stage for (evaluate once missed registry.py, which names the champion it compares
against, so a change there reran register alone, on a gate decided against another champion)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def module_file(name: str) -> Path | None:
    for path in (SRC / f"{name.replace('.', '/')}.py", SRC / name.replace(".", "/") / "__init__.py"):
        if path.exists():
            return path
    return None


def chromify_imports(nodes: list[ast.AST]) -> set[str]:
    """Modules of the package that `nodes` import, lazy imports inside functions included."""
    found = set()
    for node in (n for top in nodes for n in ast.walk(top)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "chromify":
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)  # `from chromify import shards`
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "chromify")
    return {m for m in found if module_file(m)}


def closure(modules: set[str]) -> set[Path]:
    seen: set[str] = set()
    todo = list(modules)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # a package's __init__ runs first
        todo += chromify_imports([ast.parse(module_file(name).read_text())])
    return {module_file(m).relative_to(ROOT) for m in seen}


def stage_modules(stage: str) -> set[str]:
    """What `run_<stage>` in stages.py imports, through the stages.py functions it calls, plus the module's own
    (stages.py itself is left out: walked whole, its lazy imports would be every stage's)."""
    tree = ast.parse((SRC / "chromify" / "stages.py").read_text())
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    module_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    reached, todo = set(), [f"run_{stage}"]
    while todo:
        name = todo.pop()
        if name in reached:
            continue
        reached.add(name)
        todo += [n.func.id for n in ast.walk(functions[name]) if isinstance(n, ast.Call)
                 and isinstance(n.func, ast.Name) and n.func.id in functions]
    return chromify_imports(module_level + [functions[n] for n in reached]) - {"chromify.stages"}


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_module_a_stage_runs_is_among_its_deps(stage: str) -> None:
    deps = [Path(d) for d in STAGES[stage]["deps"] if isinstance(d, str) and d.startswith("src/")]
    runs = closure(stage_modules(stage)) | {Path("src/chromify/stages.py")}
    assert len(runs) > 3  # the walk found the stage's code, not just stages.py
    missing = sorted(str(f) for f in runs if not any(f == d or d in f.parents for d in deps))
    assert missing == [], f"dvc.yaml stage {stage!r} runs these but does not depend on them"


def test_the_stage_walk_follows_lazy_imports_and_helpers() -> None:
    # The check above is only as good as this walk: evaluate reaches the registry through a helper's lazy import.
    runs = {str(p) for p in closure(stage_modules("evaluate"))}
    assert {"src/chromify/evaluate.py", "src/chromify/registry.py", "src/chromify/figures.py"} <= runs
    assert "src/chromify/train/loop.py" not in runs and "src/chromify/api/app.py" not in runs
