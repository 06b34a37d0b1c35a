"""MkDocs hook for the Chromify site: generated reference sections and vendored scripts.

- `<!-- chromify:NAME -->` in a page is replaced by docgen's Markdown for NAME (params, cli, make-targets,
  benchmarks, readme-results); an unknown NAME fails the build.
- Mermaid and the iframe-worker shim are served from the site itself (vendor_js.py), never from a CDN. Without them
  (no npm, no registry, no cache) the build still succeeds with CHROMIFY_DOCS_VENDOR=optional (the default):
  diagrams then show as their Mermaid source and offline search needs a web server, but nothing is fetched from the
  network at view time. `make docs` sets CHROMIFY_DOCS_VENDOR=required. The files are cached in docs/.cache/
  (CHROMIFY_DOCS_CACHE moves it, e.g. to a CI cache).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import docgen
import vendor_js
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

log = logging.getLogger("mkdocs.hooks.chromify")

MARKER = re.compile(r"<!--\s*chromify:(?P<name>[a-z-]+)\s*-->")
MERMAID_FENCE = "mermaid"
UNPKG = "https://unpkg.com/"

_state: dict[str, object] = {}


def _paths(config: MkDocsConfig) -> tuple[Path, Path]:
    docs_root = Path(config.config_file_path).resolve().parent  # docs/
    return docs_root, docs_root.parent  # (docs/, the repository)


def _vendor(asset: vendor_js.NpmAsset, cache: Path, required: bool) -> Path | None:
    try:
        return vendor_js.cached_files(asset, cache)
    except vendor_js.VendorError as exc:
        if required:
            raise PluginError(f"{exc} (CHROMIFY_DOCS_VENDOR=optional builds without it)") from None
        log.info("chromify: not vendored: %s", exc)
        return None


@event_priority(-50)  # after material's offline plugin has added its unpkg polyfill
def on_config(config: MkDocsConfig) -> MkDocsConfig:
    docs_root, _ = _paths(config)
    policy = os.environ.get("CHROMIFY_DOCS_VENDOR", "optional")
    if policy not in ("optional", "required"):
        raise PluginError(f"CHROMIFY_DOCS_VENDOR={policy!r}: expected optional or required")
    cache = Path(os.environ.get("CHROMIFY_DOCS_CACHE", docs_root / ".cache")) / "npm"
    vendored = {a.package: (a, _vendor(a, cache, policy == "required"))
                for a in (vendor_js.MERMAID, vendor_js.IFRAME_WORKER)}
    _state["vendored"] = vendored

    mermaid, mermaid_dir = vendored["mermaid"]
    fences = config.mdx_configs.get("pymdownx.superfences", {}).get("custom_fences", [])
    if mermaid_dir is not None:
        # A plain script before material's bundle runs its DOMContentLoaded work: material then finds `mermaid`
        # defined and does not fetch its own copy from unpkg.
        config.extra_javascript.append(mermaid.files["package/dist/mermaid.min.js"])
    else:
        # Without the library, a ```mermaid block stays a code block: material would otherwise fetch Mermaid.
        fences[:] = [f for f in fences if f.get("name") != MERMAID_FENCE]

    shim, shim_dir = vendored["iframe-worker"]
    polyfills = [p for p in config.extra.get("polyfills", []) if not str(p).startswith(UNPKG)]
    if shim_dir is not None:
        polyfills.append(shim.files["package/shim/index.js"])
    config.extra["polyfills"] = polyfills
    return config


def on_files(files: Files, config: MkDocsConfig) -> Files:
    for asset, folder in _state.get("vendored", {}).values():  # type: ignore[union-attr]
        if folder is None:
            continue
        for dest in asset.files.values():
            files.append(File.generated(config, dest, abs_src_path=str(folder / dest)))
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    _, repo = _paths(config)
    generators = {
        "params": lambda: docgen.params_markdown(repo / "params.yaml"),
        "cli": docgen.cli_markdown,
        "make-targets": lambda: docgen.make_targets_markdown(repo / "Makefile"),
        "benchmarks": lambda: docgen.benchmarks_markdown(repo / "benchmarks", repo),
        "readme-results": lambda: docgen.readme_results_markdown(repo / "README.md"),
    }

    def generate(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in generators:
            raise PluginError(f"{page.file.src_uri}: unknown marker chromify:{name} "
                              f"(known: {', '.join(sorted(generators))})")
        return generators[name]()

    return MARKER.sub(generate, markdown)
