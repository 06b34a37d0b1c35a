"""The API reference at /docs, rendered on the server from the app's own OpenAPI schema.

FastAPI's Swagger UI fetches its script and styles from a CDN, so on the offline machines Chromify runs on that page
was blank, and no installed package ships Swagger UI or ReDoc. This page is plain HTML whose one other resource is
its stylesheet under /static: it works with no network and no JavaScript.
"""

from __future__ import annotations

import json
import re
from html import escape
from typing import Any

METHODS = ("get", "put", "post", "patch", "delete", "head", "options")
# JSON Schema keywords that bound a value, as the reader should see them.
LIMITS = (("minimum", "≥ {}"), ("exclusiveMinimum", "> {}"), ("maximum", "≤ {}"), ("exclusiveMaximum", "< {}"),
          ("minLength", "at least {} characters"), ("maxLength", "at most {} characters"),
          ("minItems", "at least {} item(s)"), ("maxItems", "at most {} item(s)"), ("pattern", "matches {}"))
CODE_SPAN = re.compile(r"`([^`]+)`")
MAX_DEPTH = 4  # nested objects shown as dotted rows; a schema that refers to itself stops here


def render_docs_page(schema: dict[str, Any], examples: dict[str, str] | None = None,
                     schema_href: str = "openapi.json") -> str:
    """HTML for every operation in an OpenAPI 3 `schema`; `examples` maps "POST /colorize" to a shell command.

    Links are relative (the stylesheet, `schema_href`), so the page also works behind a path prefix.
    """
    examples = examples or {}
    info = schema.get("info", {})
    operations = [(method, path, op) for path, item in schema.get("paths", {}).items()
                  for method, op in item.items() if method in METHODS]
    title = escape(info.get("title", "API"))
    parts = [
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<title>{title} API reference</title>\n'
        '<link rel="stylesheet" href="static/docs.css">\n<link rel="icon" href="data:,">\n</head>\n<body>\n<header>\n'
        f'<h1>{title} API <span class="version">version {escape(str(info.get("version", "")))}</span></h1>\n',
        _paragraphs(info.get("summary")), _paragraphs(info.get("description")),
        f'<p class="meta">The same as JSON: <a href="{escape(schema_href)}">{escape(schema_href)}</a></p>\n'
        '</header>\n<main>\n'
        '<nav aria-label="routes"><ul>\n',
    ]
    for method, path, op in operations:
        parts.append(f'<li><a href="#{_anchor(method, path)}"><span class="method {method}">{method.upper()}</span> '
                     f'<code>{escape(path)}</code></a> {_inline(op.get("summary", ""))}</li>\n')
    parts.append("</ul></nav>\n")
    for method, path, op in operations:
        parts.append(_operation(schema, method, path, op, examples.get(f"{method.upper()} {path}")))
    parts.append("</main>\n</body>\n</html>\n")
    return "".join(parts)


def _operation(root: dict, method: str, path: str, op: dict, example: str | None) -> str:
    parts = [f'<section class="route" id="{_anchor(method, path)}">\n<h2><span class="method {method}">'
             f'{method.upper()}</span> <code>{escape(path)}</code></h2>\n',
             _paragraphs(op.get("summary"), "summary"), _paragraphs(op.get("description"))]
    params = op.get("parameters") or []
    if params:
        rows = []
        for p in params:
            p = _resolve(root, p)
            node = p.get("schema", {})
            rows.append((p.get("name", ""), p.get("in", ""), _type(root, node), p.get("required", False),
                         _limits(root, node), p.get("description") or _resolve(root, node).get("description", "")))
        parts.append("<h3>Parameters</h3>\n" + _table(("name", "in", "type", "required", "limits", "description"),
                                                         [_param_cells(*row) for row in rows]))
    body = _resolve(root, op.get("requestBody") or {})
    if body:
        parts.append("<h3>Request body</h3>\n" + _paragraphs(body.get("description")))
        for media, content in body.get("content", {}).items():
            node = content.get("schema", {})
            parts.append(f'<p class="media"><code>{escape(media)}</code>'
                         f'{"" if body.get("required") else " (optional)"}</p>\n')
            rows = _fields(root, node)
            if rows:
                parts.append(_table(("field", "type", "required", "limits", "description"),
                                    [_field_cells(root, *row) for row in rows]))
            else:
                parts.append(f"<p>{escape(_type(root, node))}</p>\n")
    responses = op.get("responses") or {}
    if responses:
        cells = [[f"<code>{escape(str(status))}</code>", _inline(_resolve(root, r).get("description", "")),
                  _response_body(root, _resolve(root, r))] for status, r in responses.items()]
        parts.append("<h3>Responses</h3>\n" + _table(("status", "meaning", "body"), cells))
    if example:
        parts.append(f'<h3>Example</h3>\n<pre class="example"><code>{escape(example)}</code></pre>\n')
    parts.append("</section>\n")
    return "".join(parts)


def _response_body(root: dict, response: dict) -> str:
    """The media types a response comes as, with a JSON body's top-level fields and their types."""
    shown = []
    for media, content in (response.get("content") or {}).items():
        fields = _fields(root, content.get("schema", {}))
        shown.append(f"<code>{escape(media)}</code>" + "".join(
            f'<br><span class="field"><code>{escape(name)}</code> {escape(_type(root, node))}</span>'
            for name, node, _ in fields))
    return "<br>".join(shown) or "(empty)"


def _fields(root: dict, node: dict, prefix: str = "", depth: int = 0) -> list[tuple[str, dict, bool]]:
    """An object's properties as (dotted name, schema, required), nested objects and arrays of objects flattened:
    `instances[].b64`. Alternatives (anyOf, oneOf) show every field once, as the first one to name it has it, and
    required only where every alternative requires it: a reader sees each way to write the object."""
    node = _resolve(root, node)
    alternatives = [_resolve(root, n) for n in node.get("anyOf") or node.get("oneOf") or []]
    shapes = [n for n in (node, *alternatives) if isinstance(n.get("properties"), dict)]
    if depth >= MAX_DEPTH or not shapes:
        return []
    properties: dict[str, Any] = {}
    for shape in shapes:
        for name, prop in shape["properties"].items():
            properties.setdefault(name, prop)
    required = set(node.get("required", ()))
    if alternatives:
        required |= set.intersection(*(set(n.get("required", ())) for n in alternatives))
    rows = []
    for name, prop in properties.items():
        rows.append((prefix + name, prop, name in required))
        prop = _resolve(root, prop)
        inner = _resolve(root, prop.get("items", {})) if prop.get("type") == "array" else prop
        rows += _fields(root, inner, f"{prefix}{name}{'[]' if inner is not prop else ''}.", depth + 1)
    return rows


def _type(root: dict, node: dict) -> str:
    """A schema's type in words: `string or null`, `array of object`, `file`, `one of: "png", "jpeg"`."""
    node = _resolve(root, node)
    if "enum" in node:
        return "one of: " + ", ".join(json.dumps(v) for v in node["enum"])
    if "const" in node:
        return json.dumps(node["const"])
    for key in ("anyOf", "oneOf"):
        if key in node:
            return " or ".join(dict.fromkeys(_type(root, n) for n in node[key]))
    kind = node.get("type")
    if isinstance(kind, list):
        return " or ".join(kind)
    if kind == "array":
        return f"array of {_type(root, node.get('items', {}))}"
    if kind == "string" and (node.get("format") == "binary" or "contentMediaType" in node):
        return "file"
    if kind == "string" and node.get("contentEncoding"):
        return f"string ({node['contentEncoding']})"
    return kind or "any"


def _limits(root: dict, node: dict) -> str:
    node = _resolve(root, node)
    found = [fmt.format(node[key]) for key, fmt in LIMITS if key in node]
    for member in node.get("anyOf", []) + node.get("oneOf", []):  # a nullable number keeps its bounds in there
        found += [fmt.format(v) for key, fmt in LIMITS if (v := _resolve(root, member).get(key)) is not None]
    if "default" in node:
        found.append(f"default {json.dumps(node['default'])}")
    return "; ".join(dict.fromkeys(found))


def _param_cells(name: str, where: str, kind: str, required: bool, limits: str, description: str) -> list[str]:
    return [f"<code>{escape(name)}</code>", escape(where), escape(kind), "yes" if required else "no",
            escape(limits), _inline(description)]


def _field_cells(root: dict, name: str, node: dict, required: bool) -> list[str]:
    return [f"<code>{escape(name)}</code>", escape(_type(root, node)), "yes" if required else "no",
            escape(_limits(root, node)), _inline(_resolve(root, node).get("description", ""))]


def _table(head: tuple[str, ...], rows: list[list[str]]) -> str:
    """Cells are HTML already escaped by the caller."""
    return ("<table>\n<thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead>\n<tbody>\n"
            + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>\n" for row in rows)
            + "</tbody>\n</table>\n")


def _paragraphs(text: str | None, css_class: str | None = None) -> str:
    """Plain text as paragraphs, split at blank lines; nothing but `backticks` is read as markup."""
    if not text:
        return ""
    attr = f' class="{css_class}"' if css_class else ""
    return "".join(f"<p{attr}>{_inline(p.strip())}</p>\n" for p in re.split(r"\n\s*\n", text) if p.strip())


def _inline(text: str) -> str:
    """Escaped text with `backticks` as code."""
    return CODE_SPAN.sub(r"<code>\1</code>", escape(text))


def _resolve(root: dict, node: dict) -> dict:
    """`node`, or what its local `$ref` ("#/components/schemas/Name") points at."""
    seen = 0
    while isinstance(node, dict) and "$ref" in node and seen < MAX_DEPTH:
        target: Any = root
        for key in node["$ref"].removeprefix("#/").split("/"):
            target = target.get(key, {}) if isinstance(target, dict) else {}
        node, seen = target, seen + 1
    return node if isinstance(node, dict) else {}


def _anchor(method: str, path: str) -> str:
    return f"{method}-" + (re.sub(r"[^A-Za-z0-9]+", "-", path).strip("-") or "root")
