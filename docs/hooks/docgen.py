"""Markdown generated at build time from the things it documents, so the pages cannot drift from them:

- the params reference from params.yaml (values and comments) and chromify.config (defaults and types);
- the CLI reference by walking the typer app's click commands;
- the Make targets from the Makefile's `## ` comments;
- the benchmark scripts from benchmarks/*.py docstrings, and the quality / performance sections of README.md.

Each function returns Markdown; chromify_docs.py puts it where a page says `<!-- chromify:NAME -->`.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

_CODE_SPAN = re.compile(r"(`[^`]*`)")
_SPECIAL = str.maketrans({"|": r"\|", "<": "&lt;", ">": "&gt;", "*": r"\*", "_": r"\_", "[": r"\[", "]": r"\]"})


def md_text(text: str) -> str:
    """Plain text (backtick code spans kept) made safe inside a Markdown table cell or paragraph."""
    parts = _CODE_SPAN.split(text)
    return "".join(p.replace("|", r"\|") if p.startswith("`") else p.translate(_SPECIAL) for p in parts)


def md_code(text: str) -> str:
    """Inline code, safe inside a table cell."""
    return "`" + text.replace("|", r"\|") + "`" if text else ""


# --- params.yaml ------------------------------------------------------------------------------------------------

_SECTION = re.compile(r"^(?P<name>[A-Za-z_]\w*):\s*(?:#\s?(?P<comment>.*))?$")
_KEY = re.compile(r"^\s+(?P<name>[A-Za-z_]\w*):(?P<rest>.*)$")
_COMMENT = re.compile(r"^\s*#\s?(?P<text>.*)$")


def _inline_comment(rest: str) -> str:
    """The comment after a YAML value: the first ` #` outside quotes."""
    quote = None
    for i, ch in enumerate(rest):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or rest[i - 1].isspace()):
            return rest[i + 1:].strip()
    return ""


@dataclasses.dataclass
class YamlComments:
    header: list[str]  # the file's opening comment block
    sections: dict[str, list[str]]  # comment lines that open a section (before its first key)
    keys: dict[tuple[str, str], list[str]]  # block comment above a key, then its inline comment


def read_yaml_comments(text: str) -> YamlComments:
    """Comments of a two-level YAML file (sections of scalar keys), as params.yaml is written."""
    out = YamlComments([], {}, {})
    section: str | None = None
    pending: list[str] = []
    # A comment-only line indented past the previous key, right after it, continues that key's inline comment
    # (params.yaml wraps long ones so); a comment at the keys' indentation belongs to the key below it.
    continued: tuple[list[str], int] | None = None
    for line in text.splitlines():
        if not line.strip():
            if section is None and pending:  # a blank line ends the file header
                out.header, pending = pending, []
            continued = None
            continue
        comment = _COMMENT.match(line)
        if comment:
            if continued is not None and not pending and line.index("#") >= continued[1]:
                continued[0].append(comment["text"].strip())
            else:
                pending.append(comment["text"].strip())
            continue
        continued = None
        top = _SECTION.match(line)
        if top:
            if section is None and not out.header:
                out.header, pending = pending, []
            section = top["name"]
            out.sections[section] = pending + ([top["comment"].strip()] if top["comment"] else [])
            pending = []
            if top["comment"]:
                continued = (out.sections[section], line.index("#"))
            continue
        key = _KEY.match(line)
        if key and section is not None:
            if not any(k[0] == section for k in out.keys):  # comments between `section:` and its first key
                out.sections[section] += pending
                pending = []
            inline = _inline_comment(key["rest"])
            out.keys[(section, key["name"])] = pending + ([inline] if inline else [])
            pending = []
            if inline:
                continued = (out.keys[(section, key["name"])], len(line) - len(line.lstrip()) + 1)
    return out


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, dict | list | tuple):
        return json.dumps(value if not isinstance(value, tuple) else list(value))
    return str(value)


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def params_markdown(params_yaml: Path) -> str:
    """One section per params.yaml section: key, value in params.yaml, default in chromify.config, type, comment."""
    import yaml

    from chromify import config

    text = params_yaml.read_text()
    raw = yaml.safe_load(text) or {}
    config.params_from_dict(raw)  # the file must load: an unknown key fails the build, as it fails `dvc repro`
    comments = read_yaml_comments(text)
    lines = []
    if comments.header:
        lines += [" ".join(comments.header), ""]
    for sect in dataclasses.fields(config.Params):
        cls = sect.default_factory  # type: ignore[misc]
        values = raw.get(sect.name) or {}
        lines += [f"## `{sect.name}` {{#{sect.name}}}", ""]
        summary = (cls.__doc__ or "").strip()
        if summary and not summary.startswith(f"{cls.__name__}("):  # not the dataclass's generated signature
            lines += [md_text(summary), ""]
        if comments.sections.get(sect.name):
            lines += [md_text(" ".join(comments.sections[sect.name])), ""]
        in_file = "" if sect.name in raw else " The section is absent from params.yaml: every key takes its default."
        lines += [f"Read into `chromify.config.{cls.__name__}`.{in_file}", ""]
        lines += ["| key | params.yaml | default | type | description |", "|---|---|---|---|---|"]
        for f in dataclasses.fields(cls):
            default = _field_default(f)
            value = md_code(_show(values[f.name])) if f.name in values else "*(default)*"
            kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
            note = " ".join(comments.keys.get((sect.name, f.name), []))
            lines.append(f"| {md_code(f'{sect.name}.{f.name}')} | {value} | "
                         f"{md_code(_show(default)) if default is not dataclasses.MISSING else '*(required)*'} | "
                         f"{md_code(kind)} | {md_text(note)} |")
        lines.append("")
    return "\n".join(lines)


# --- the CLI ----------------------------------------------------------------------------------------------------

def _commands(cmd: Any, ctx: Any) -> list[tuple[Any, Any]]:
    """Depth-first (command, context) pairs of a click command tree, the root first."""
    found = [(cmd, ctx)]
    if hasattr(cmd, "list_commands"):
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is not None and not getattr(sub, "hidden", False):
                found += _commands(sub, sub.context_class(sub, info_name=name, parent=ctx))
    return found


def cli_commands() -> list[str]:
    """Every command path of `chromify`, e.g. 'chromify models list' (the tests check the page against this)."""
    import typer

    from chromify.cli import app

    root = typer.main.get_command(app)
    return [ctx.command_path for _, ctx in _commands(root, root.context_class(root, info_name="chromify"))]


def _anchor(path: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", path.lower()).strip("-")


def _help_text(text: str) -> str:
    # click's `\b` marks a paragraph not to be rewrapped; Markdown keeps line breaks in a fenced block anyway.
    paragraphs = [p.replace("\b\n", "").strip() for p in text.split("\n\n")]
    return "\n\n".join(md_text(" ".join(p.split())) for p in paragraphs if p)


def cli_markdown() -> str:
    """A section per command: its help, usage, and a table of its arguments and options from click's help."""
    import typer

    from chromify.cli import app

    root = typer.main.get_command(app)
    lines: list[str] = []
    for cmd, ctx in _commands(root, root.context_class(root, info_name="chromify")):
        path = ctx.command_path
        depth = min(2 + path.count(" "), 4)
        lines += [f"{'#' * depth} `{path}` {{#{_anchor(path)}}}", ""]
        if cmd.help:
            lines += [_help_text(cmd.help), ""]
        lines += ["```text", f"{path} {' '.join(cmd.collect_usage_pieces(ctx))}".rstrip(), "```", ""]
        rows = []
        for param in cmd.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None or param.name == "help":
                continue
            opts, help_text = record
            kind = "argument" if param.param_type_name == "argument" else "option"
            rows.append(f"| {md_code(opts)} | {kind} | {md_text(' '.join(help_text.split()))} |")
        if hasattr(cmd, "list_commands"):
            subs = [(n, cmd.get_command(ctx, n)) for n in cmd.list_commands(ctx)]
            lines += ["| command | what it does |", "|---|---|"]
            lines += [f"| [`{path} {n}`](#{_anchor(f'{path} {n}')}) | {md_text(sub.get_short_help_str(200))} |"
                      for n, sub in subs if sub is not None and not getattr(sub, "hidden", False)]
            lines.append("")
        if rows:
            lines += ["| argument / option | kind | help |", "|---|---|---|", *rows, ""]
    return "\n".join(lines)


# --- Makefile ---------------------------------------------------------------------------------------------------

_TARGET = re.compile(r"^(?P<target>[A-Za-z_-]+):.*?## (?P<help>.*)$")


def make_targets_markdown(makefile: Path) -> str:
    """The targets `make help` lists (a `## ` comment on the rule line), as a table."""
    rows = [f"| `make {m['target']}` | {md_text(m['help'].strip())} |"
            for m in map(_TARGET.match, makefile.read_text().splitlines()) if m]
    return "\n".join(["| target | what it does |", "|---|---|", *rows, ""])


# --- benchmarks and README results --------------------------------------------------------------------------------

def benchmarks_markdown(benchmarks_dir: Path, repo_root: Path) -> str:
    """A list of the benchmark scripts (the files that run as scripts: not their shared helpers) with the first
    paragraph of each one's docstring."""
    scripts = sorted(p for p in benchmarks_dir.glob("*.py") if '__name__ == "__main__"' in p.read_text()) \
        if benchmarks_dir.is_dir() else []
    if not scripts:
        return f"`{benchmarks_dir.relative_to(repo_root)}/` holds no benchmark scripts in this checkout.\n"
    lines = ["| script | what it measures |", "|---|---|"]
    for script in scripts:
        doc = ast.get_docstring(ast.parse(script.read_text())) or ""
        first = " ".join(doc.split("\n\n")[0].split())
        lines.append(f"| `{script.relative_to(repo_root)}` | {md_text(first) or '*(no docstring)*'} |")
    return "\n".join(lines) + "\n"


RESULT_TITLES = re.compile(r"quality|performance|benchmark|speed|throughput|latency|results", re.IGNORECASE)
_HEADING = re.compile(r"^(?P<hashes>#{1,6})\s+(?P<title>.+?)\s*$")
_REL_LINK = re.compile(r"(?P<bang>!?)\[(?P<text>[^\]]*)\]\((?P<target>(?!https?:|mailto:|#)[^)\s]+)\)")


def readme_sections(readme: Path, titles: re.Pattern[str] = RESULT_TITLES) -> list[tuple[str, str]]:
    """(title, body) of each README section (## or ###) whose title matches, body up to the next heading at its
    level or above; fenced code is not mistaken for headings."""
    lines = readme.read_text().splitlines() if readme.exists() else []
    headings: list[tuple[int, int, str]] = []  # (line, level, title)
    fenced = False
    for i, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        m = None if fenced else _HEADING.match(line)
        if m:
            headings.append((i, len(m["hashes"]), m["title"]))
    found = []
    for n, (i, level, title) in enumerate(headings):
        if level < 2 or not titles.search(title):
            continue
        end = next((j for j, lv, _ in headings[n + 1:] if lv <= level), len(lines))
        found.append((title, "\n".join(lines[i + 1:end]).strip()))
    # a matching ### inside a matching ## is already in the ##'s body
    return [(t, b) for t, b in found if not any(b != ob and b in ob for _, ob in found)]


def _unlink_relative(markdown: str) -> str:
    """README links are relative to the repository, not the site: keep their text, drop the link."""
    return _REL_LINK.sub(lambda m: f"{m['text']} (`{m['target']}` in the repository)" if not m["bang"]
                         else f"*(image `{m['target']}` in the repository)*", markdown)


def readme_results_markdown(readme: Path) -> str:
    """The README's quality and performance sections, verbatim but for relative links, one level down."""
    sections = readme_sections(readme)
    if not sections:
        return ("README.md has no quality, performance or benchmark section in this checkout, so there is no table "
                "to show here yet.\n")
    parts = []
    for title, body in sections:
        body = re.sub(r"^(#{2,5}) ", lambda m: "#" + m[1] + " ", body, flags=re.MULTILINE)
        parts += [f"### {title}", "", _unlink_relative(body), ""]
    return "\n".join(parts)
