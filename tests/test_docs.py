"""The documentation site builds strictly, documents every parameter and command, and works opened from disk."""

import importlib.util
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
KEY_PAGES = ("index.html", "getting-started.html", "pipeline.html", "serving.html", "quality.html",
             "notebooks.html", "reference/params.html", "reference/cli.html", "api/index.html", "api/config.html",
             "api/inference.html", "data.html", "training.html", "cloud.html", "registry.html", "404.html")
MERMAID_JS = "assets/vendor/mermaid/mermaid.min.js"


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """(mkdocs' output, the site folder) of `mkdocs build --strict` into a temporary folder."""
    site = tmp_path_factory.mktemp("docs") / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "CHROMIFY_DOCS_VENDOR": "optional"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "docs/mkdocs.yml"),
                           "-d", str(site)], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr, site


class Links(HTMLParser):
    """Every src, href and srcset value of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.urls.append(value.strip())
            elif name == "srcset" and value:
                self.urls += [part.split()[0] for part in value.split(",") if part.strip()]


def page(site: Path, rel: str) -> str:
    return (site / rel).read_text(encoding="utf-8")


def test_build_is_clean_and_has_the_key_pages(build):
    log, site = build
    assert not [line for line in log.splitlines() if "WARNING" in line or "ERROR" in line], log
    for rel in KEY_PAGES:
        assert (site / rel).is_file(), rel
    getting_started = page(site, "getting-started.html")
    assert "make demo" in getting_started and "make test" in getting_started and "make docs" in getting_started


def test_params_page_lists_every_key_of_params_yaml(build):
    _, site = build
    html = page(site, "reference/params.html")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    missing = [f"{section}.{key}" for section, keys in params.items() for key in keys
               if f"<td><code>{section}.{key}</code></td>" not in html]
    assert not missing
    # the YAML comment and the dataclass type arrive too
    assert "refused from the header, before decoding" in html and "<code>float</code>" in html


def test_cli_page_lists_every_command(build):
    import typer

    from chromify.cli import app

    _, site = build
    html = page(site, "reference/cli.html")
    root = typer.main.get_command(app)

    def paths(cmd, prefix):
        yield prefix
        for name in getattr(cmd, "commands", {}):
            yield from paths(cmd.commands[name], f"{prefix} {name}")

    commands = list(paths(root, "chromify"))
    assert "chromify models list" in commands and "chromify pipeline submit" in commands
    for command in commands:
        anchor = re.sub(r"[^a-z0-9]+", "-", command)
        assert f'id="{anchor}"' in html and f"<code>{command}</code>" in html, command
    assert "--render-size" in html  # options, from click's help


def test_api_reference_is_rendered_from_docstrings(build):
    _, site = build
    assert "A loaded model plus how to run it" in page(site, "api/inference.html")
    assert "Read params.yaml" in page(site, "api/config.html")
    assert "write_figures" in page(site, "api/evaluation.html")
    # members without a docstring are listed too: the API index's own example calls them
    for name, where in (("chromify.config.TrainParams", "config"), ("chromify.registry.LocalRegistry.model_dir",
                        "registry"), ("chromify.inference.Colorizer.colorize", "inference")):
        assert f'id="{name}"' in page(site, f"api/{where}.html"), name


def test_no_page_loads_or_links_anything_from_another_host(build):
    _, site = build
    offenders = []
    for html in site.rglob("*.html"):
        links = Links()
        links.feed(html.read_text(encoding="utf-8"))
        offenders += [f"{html.relative_to(site)}: {url}" for url in links.urls
                      if re.match(r"^([a-z][a-z0-9+.-]*:)?//", url, re.IGNORECASE)]
    assert not offenders


def test_every_local_link_resolves_on_disk(build):
    _, site = build
    broken = []
    for html in site.rglob("*.html"):
        if html.name == "404.html":  # a server's error page: its links are absolute to the server's root
            continue
        links = Links()
        links.feed(html.read_text(encoding="utf-8"))
        for url in links.urls:
            parts = urlsplit(url)
            if parts.scheme or not parts.path:  # data:, mailto:, javascript:, or a #fragment on this page
                continue
            if not (html.parent / unquote(parts.path)).exists():
                broken.append(f"{html.relative_to(site)}: {url}")
    assert not broken


@pytest.fixture(scope="module")
def docgen():
    """docs/hooks/docgen.py, the generators the build runs, imported as the mkdocs hook imports it."""
    spec = importlib.util.spec_from_file_location("docgen", ROOT / "docs/hooks/docgen.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_readme_result_sections_are_copied_with_repository_links_unlinked(tmp_path, docgen):
    readme = tmp_path / "README.md"
    readme.write_text(
        "# Chromify\n\n## Quick start\n\n```bash\n## not a heading\nmake demo\n```\n\n"
        "## Performance\n\nMeasured with [the script](benchmarks/train.py) on ![a plot](docs/p.png).\n\n"
        "| variant | images/s |\n|---|---|\n| fp32 | 10.5 |\n\n### Serving latency\n\n| size | ms |\n|---|---|\n\n"
        "## Layout\n\ntext\n")
    sections = docgen.readme_sections(readme)
    assert [title for title, _ in sections] == ["Performance"]  # its ### inside it, not twice
    out = docgen.readme_results_markdown(readme)
    assert "| fp32 | 10.5 |" in out and "#### Serving latency" in out and "Layout" not in out
    assert "the script (`benchmarks/train.py` in the repository)" in out and "](" not in out


def test_params_comments_are_read_per_section_and_key(docgen):
    comments = docgen.read_yaml_comments(
        "# file header\n\nbase:\n  seed: 1  # the seed\ngate:\n  # about the gate\n  a: 1\n  # about b\n"
        "  b: '#not a comment'  # b's comment\n")
    assert comments.header == ["file header"]
    assert comments.sections == {"base": [], "gate": ["about the gate"]}
    assert comments.keys == {("base", "seed"): ["the seed"], ("gate", "a"): [],
                             ("gate", "b"): ["about b", "b's comment"]}


def test_a_wrapped_inline_comment_stays_with_its_key(docgen):
    # params.yaml wraps long inline comments on indented comment lines; they were read as the next key's
    comments = docgen.read_yaml_comments(
        "train:\n  a: 1      # a, first line,\n           # a, second line\n  # about b\n  b: 2  # b\n"
        "  c: 3      # c\n                # c, more\n\n  d: 4\n")
    assert comments.keys == {("train", "a"): ["a, first line,", "a, second line"], ("train", "b"): ["about b", "b"],
                             ("train", "c"): ["c", "c, more"], ("train", "d"): []}


def test_mermaid_is_served_from_the_site_or_the_diagram_stays_text(build):
    log, site = build
    pipeline = page(site, "pipeline.html")
    if not (site / MERMAID_JS).is_file():
        # Without the vendored library the diagram must not be marked for material, which would fetch Mermaid.
        assert 'class="mermaid"' not in pipeline and "flowchart TD" in pipeline
        reason = next((line.split("not vendored: ", 1)[1] for line in log.splitlines() if "not vendored:" in line),
                      "no reason logged")
        pytest.skip(f"Mermaid not vendored (npm pack unavailable): {reason}")
    assert '<pre class="mermaid"><code>flowchart TD' in pipeline
    assert f'<script src="{MERMAID_JS}"></script>' in pipeline
    assert (site / MERMAID_JS).stat().st_size > 1_000_000 and (site / "assets/vendor/mermaid/LICENSE.txt").is_file()



def test_params_yaml_comments_end_where_their_key_does(docgen):
    # ingest.source's comment, above the section's first key, was read as the section's; cloud.cpu_limit's stopped
    # mid-sentence ("on Kubeflow they are"), its end read as memory_limit's
    text = (ROOT / "params.yaml").read_text()
    comments = docgen.read_yaml_comments(text)
    assert "gs://bucket/prefix" in " ".join(comments.keys[("ingest", "source")])
    assert "g2-standard-8" in " ".join(comments.keys[("cloud", "cpu_limit")])
    for where, words in [*comments.keys.items(), *comments.sections.items()]:
        joined = " ".join(words)
        assert not re.search(r"\b(are|is|the|a|an|and|or|of|to|on|with|they)$", joined), f"{where}: {joined}"
