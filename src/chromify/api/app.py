"""The FastAPI app: one model loaded once, photos colorized in a bounded worker pool, a web page at `/`, the API
reference at `/docs` (served from here: nothing is fetched from elsewhere).

Status codes (every error body is {"detail": "<one line>"}, but for uvicorn's own 503 below):
    200  the colorized image (POST /colorize) or {"predictions": [...]} (Vertex AI predict route)
    400  malformed request: no multipart `file` field, unknown `format`, bad JSON or base64, a field of the wrong
         type, no or too many instances
    413  a file larger than max_upload_bytes, or a body larger than that plus room for multipart or base64 encoding
         (refused from Content-Length when the client sends one)
    415  the bytes are not a JPEG, PNG, WebP, BMP or TIFF (sniffed from the content, never the name or type)
    422  an image that cannot be used: empty file, more pixels than max_pixels (read from the header, before
         decoding: decompression bombs cost nothing), corrupt or truncated data
    500  the served model gives non-finite colours (its weights are broken: a diverged training); the body says so
    503  more than concurrency + max_queue requests in flight; retry after the Retry-After seconds. Under `serve`,
         past connection_limit() open connections (idle keep-alive ones count), uvicorn answers before the app: a
         plain-text 503 "Service Unavailable" without Retry-After, on every route
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import re
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import numpy as np
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from chromify.api.docs_page import render_docs_page
from chromify.api.settings import ServeSettings
from chromify.colorize import check_encodable, encode_image
from chromify.decode import MAX_ASPECT, OTHER_FORMATS, open_checked, sniff_image_format, to_srgb
from chromify.errors import ConfigError, InputImageError, ModelLoadError

STATIC_DIR = Path(__file__).parent / "static"
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg"}
FORMAT_ALIASES = {"jpg": "jpeg", "image/jpeg": "jpeg", "image/png": "png"}
# What a `format` field may say, in any case: the schema's pattern has no case-insensitive flag in JSON Schema.
FORMAT_PATTERN = r"^(?:\s*(?:{})\s*)?$".format("|".join(  # empty: as if absent
    "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in name)
    for name in (*MEDIA_TYPES, *FORMAT_ALIASES)))
# Open connections `serve` lets in beyond the pool's line, so health checks and the page answer while it is full.
CONNECTION_HEADROOM = 16
# The page loads nothing from anywhere else; the browser enforces it.
PAGE_CSP = ("default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
            "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def choose_format(field: str | None, accept: str | None) -> str:
    """'png' or 'jpeg': the `format` field wins, then the Accept header's preference; PNG by default."""
    if field:
        name = field.strip().lower()
        name = FORMAT_ALIASES.get(name, name)
        if name not in MEDIA_TYPES:
            shown = field if len(field) <= 40 else field[:40] + "..."  # a 200 kB field came back whole
            raise HTTPException(400, f"format {shown!r} is not one of: png, jpeg")
        return name
    offered: dict[str, float] = {}
    for part in (accept or "").split(","):
        media, _, params = part.strip().partition(";")
        q = 1.0
        for p in params.split(";"):
            key, _, value = p.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        offered.setdefault(media.strip().lower(), q)

    def quality(media: str) -> float | None:  # the most specific range that names it, as RFC 9110 says
        for key in (media, "image/*", "*/*"):
            if key in offered:
                return offered[key]
        return None

    png, jpeg = quality("image/png"), quality("image/jpeg")
    if jpeg is not None and (png is None or jpeg > png):
        return "jpeg"
    return "jpeg" if png == 0 and jpeg is None else "png"  # PNG refused outright: the one other format we have


# Module-level: FastAPI reads a route's (string) annotations in this module's namespace.
PhotoField = Annotated[UploadFile, File(description="The photo: JPEG, PNG, WebP, BMP or TIFF.")]
FormatField = Annotated[str | None, Form(description="png or jpeg (jpg); without it the Accept header's preference, "
                                                     "else png.")]


class ErrorDetail(BaseModel):
    """The body of every error answer, for the schema."""

    detail: str


def _error_responses(settings: ServeSettings, bad_request: str) -> dict[int | str, dict[str, Any]]:
    """The refusals a photo route answers with, for the schema: FastAPI would list only a 422 validation error,
    which this app answers as 400."""
    return {status: {"model": ErrorDetail, "description": text} for status, text in (
        (400, bad_request),
        (413, f"A photo over {settings.max_upload_bytes} bytes ({_mib(settings.max_upload_bytes)}), or a body too "
              "large to hold one."),
        (415, "Not a JPEG, PNG, WebP, BMP or TIFF (judged by the bytes, never the name or Content-Type)."),
        (422, f"An empty, corrupt or truncated image, one over {settings.max_pixels} pixels, or one with a side "
              f"over {MAX_ASPECT} times the other, a shape no photo has (both read from the header, before "
              "decoding)."),
        (500, "The served model gives non-finite colours: its weights are broken (a diverged training)."),
    )} | {503: _busy_response(settings)}


# uvicorn's own 503, for the schema of every route: it answers before the app, so not as the app's errors do.
UVICORN_BUSY = {"text/plain": {"schema": {"const": "Service Unavailable"}}}


def _uvicorn_busy(settings: ServeSettings) -> str:
    return (f"under `chromify serve`, past {connection_limit(settings)} open connections: uvicorn's plain-text "
            "`Service Unavailable`, with no Retry-After")


def _busy_response(settings: ServeSettings) -> dict[str, Any]:
    """The two 503s, for the schema: the pool's JSON one, and uvicorn's plain-text one that never reaches the app."""
    return {"model": ErrorDetail, "content": {"application/json": {}, **UVICORN_BUSY},
            "description": "Busy. More photos in line than the server takes: `{\"detail\": ...}`, retry after the "
                           f"Retry-After seconds. Or, {_uvicorn_busy(settings)}; retry after a pause.",
            "headers": {"Retry-After": {"description": "Seconds to wait; sent with the JSON answer only.",
                                        "schema": {"type": "integer"}}}}


def connection_limit(settings: ServeSettings) -> int:
    """uvicorn's limit_concurrency under `serve`: open connections, idle keep-alive ones included, past which
    uvicorn answers 503 itself."""
    return settings.concurrency + settings.max_queue + CONNECTION_HEADROOM


class BodyTooLarge(Exception):
    pass


class CommonHeaders:
    """nosniff on every answer, and no-cache on the page's files (revalidated: a new release shows at once). Plain
    ASGI: Starlette's BaseHTTPMiddleware wraps `receive` in a task group that hid a client's disconnect from
    request.is_disconnected(), so the pool colorized photos for clients that had left."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        page = path in ("/", "/docs") or path.startswith("/static/")

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                if b"x-content-type-options" not in names:
                    headers.append((b"x-content-type-options", b"nosniff"))
                if page and b"cache-control" not in names:
                    headers.append((b"cache-control", b"no-cache"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyLimit:
    """ASGI guard: a body past `max_bytes` is answered 413 without reading the rest, Content-Length or not."""

    def __init__(self, app: Any, max_bytes: int, detail: str | None = None):
        self.app = app
        self.max_bytes = max_bytes
        self.detail = detail or f"request body larger than {max_bytes} bytes"

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._reject(send)
            return
        received, over, started = 0, False, False

        async def guarded_receive() -> dict:
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    over = True
                    raise BodyTooLarge
            return message

        async def guarded_send(message: dict) -> None:
            nonlocal started
            if over:  # whatever the app made of the aborted read (FastAPI turns it into a 400) is replaced
                return
            started = True
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except BodyTooLarge:
            pass
        if over and not started:
            await self._reject(send)

    async def _reject(self, send: Callable) -> None:
        body = json.dumps({"detail": self.detail}, separators=(",", ":")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class InferencePool:
    """At most `concurrency` photos in work and `max_queue` waiting, whatever the number of clients. A waiting
    /colorize upload waits on disk; a waiting /predict request waits in memory (its JSON body, the decoded bytes,
    later the encoded answer: about five times the photo), so /predict's peak grows with the line, not the pool."""

    def __init__(self, concurrency: int, max_queue: int):
        self.executor = ThreadPoolExecutor(concurrency, thread_name_prefix="colorize")
        self.limit = concurrency + max_queue
        self.in_flight = 0  # touched only on the event loop's thread

    async def run(self, fn: Callable[..., Any], *args: Any, request: Request | None = None) -> Any:
        """fn(*args) in the pool; a job whose client has gone (`request` disconnected) while it waited is skipped:
        a page that replaced its photo, or a timed-out client, left the pool colorizing answers nobody reads."""
        if self.in_flight >= self.limit:
            raise HTTPException(503, "busy: too many photos in line, try again shortly", headers={"Retry-After": "1"})
        self.in_flight += 1
        gone = threading.Event()
        watcher = asyncio.create_task(_watch_disconnect(request, gone)) if request is not None else None
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, _unless_gone, gone, fn, *args)
        finally:
            if watcher is not None:
                watcher.cancel()
            self.in_flight -= 1


class ClientGone(Exception):
    """The client disconnected before its photo's turn: the job was skipped."""


def _unless_gone(gone: threading.Event, fn: Callable[..., Any], *args: Any) -> Any:
    if gone.is_set():
        raise ClientGone
    return fn(*args)


async def _watch_disconnect(request: Request, gone: threading.Event, every_s: float = 0.1) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(every_s)
    gone.set()


def create_app(settings: ServeSettings, model_dir: str | Path) -> FastAPI:
    """Load the model once and wire the routes; `settings.concurrency` photos are colorized at a time."""
    import torch

    from chromify.inference import Colorizer

    cores = len(os.sched_getaffinity(0))
    per_job = max(1, cores // settings.concurrency)
    torch.set_num_threads(settings.torch_threads or per_job)
    colorizer = Colorizer(model_dir, render_size=settings.render_size, merge_workers=per_job)
    pool = InferencePool(settings.concurrency, settings.max_queue)
    model_name = Path(model_dir).name

    # Swagger UI and ReDoc load from a CDN, which the offline machines this serves on cannot reach: /docs is ours.
    app = FastAPI(title="Chromify", version="1", summary="Colorize black-and-white photos at full resolution.",
                  description='Every error answers `{"detail": "<one line>"}`, but one: under `chromify serve`, past '
                              f'{connection_limit(settings)} open connections (idle keep-alive ones count), uvicorn '
                              'answers any route with a plain-text 503 `Service Unavailable` and no Retry-After.',
                  docs_url=None, redoc_url=None)
    # base64 makes Vertex AI bodies 4/3 of the image; exact per-file limits are checked in the routes. The message
    # names the per-file limit too: the body's own number is not one the user was ever told.
    # `base64 photo.jpg` wraps at 76 characters, and JSON writes each line break as two bytes: 78 for 76.
    body_limit = settings.max_upload_bytes * 4 // 3 * 78 // 76 + 64 * 1024
    app.add_middleware(BodyLimit, max_bytes=body_limit, detail=(
        f"request body larger than {body_limit} bytes: a photo may be at most {settings.max_upload_bytes} bytes "
        f"({_mib(settings.max_upload_bytes)}), and the body limit only adds room for multipart or base64 encoding; "
        "the photos of one /predict request share it: send large ones in separate requests"))

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        sent = (request.headers.get("content-type") or "none").split(";")[0].strip()
        if tuple(first.get("loc", ())) == ("body", "file") and first.get("type") == "missing":
            # Most often the photo itself posted as the body (curl --data-binary): say how to send it instead.
            return JSONResponse({"detail": f"malformed request: no `file` field (Content-Type: {sent}); send the "
                                           "photo as multipart/form-data field `file`, e.g. curl -F file=@photo.jpg "
                                           "<server>/colorize"}, status_code=400)
        if tuple(first.get("loc", ())) == ("body", "file"):  # a text field named file: -F file=name without the @
            return JSONResponse({"detail": "malformed request: `file` is a text field, not a file upload; send the "
                                           "photo itself, e.g. curl -F file=@photo.jpg <server>/colorize"},
                                status_code=400)
        if tuple(first.get("loc", ())) == ("body",):  # JSON sent as curl -d's form default, or not an object
            how = "a JSON object" if sent == "application/json" else \
                f"JSON sent as Content-Type: application/json, not {sent}"
            return JSONResponse({"detail": f"malformed request: the body must be {how}: "
                                           '{"instances": [{"b64": "..."}]}'}, status_code=400)
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"detail": f"malformed request: {where} {first.get('msg', '')}".strip()}, status_code=400)

    @app.exception_handler(ClientGone)
    async def client_gone(_: Request, __: ClientGone) -> Response:
        return Response(status_code=499)  # nginx's "client closed request": nobody reads it, the log shows it

    @app.exception_handler(InputImageError)
    async def unusable(_: Request, exc: InputImageError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(ModelLoadError)
    async def broken_model(_: Request, exc: ModelLoadError) -> JSONResponse:
        # a model that gives NaN (the loaded weights' fault, not the photo's): one line, not a traceback's 500
        return JSONResponse({"detail": str(exc)}, status_code=500)

    def check_upload(size: int, head: bytes, name: str) -> str:
        """The cheap refusals, before a photo waits for the pool: size, emptiness, content type; → PIL format."""
        if size > settings.max_upload_bytes:
            raise HTTPException(413, f"{name}: {size} bytes, over the limit of {settings.max_upload_bytes} "
                                     f"bytes ({_mib(settings.max_upload_bytes)})")
        if size == 0:
            raise InputImageError(name, "empty file (0 bytes)")
        kind = sniff_image_format(head)
        if kind is None:
            known = next((k for magic, k in OTHER_FORMATS if head.startswith(magic)), None)  # a GIF is an image
            raise HTTPException(415, f"{name}: not an image" + (f" we read ({known}; " if known else " (")
                                + "accepted: JPEG, PNG, WebP, BMP, TIFF)")
        return kind

    def colorize_bytes(data: bytes | BinaryIO, name: str, kind: str, fmt: str) -> tuple[bytes, int, int]:
        """Runs in the pool: header check, decode, colorize, encode; → (encoded image, width, height).

        An upload arrives as its spooled file and is read only here, so photos waiting in line stay on disk.
        """
        if not isinstance(data, bytes):
            data = data.read()
        img = open_checked(data, name, settings.max_pixels, MAX_ASPECT)
        if {"MPO": "JPEG"}.get(img.format, img.format) != kind:  # MPO: a JPEG with extra frames
            raise InputImageError(name, f"content looks like {kind} but decodes as {img.format}")
        check_encodable(*img.size, fmt, name, "ask for png")  # a side too long for JPEG, before any decoding
        rgb = np.asarray(to_srgb(img, name))
        del img
        out = colorizer.colorize_rgb(rgb)
        return encode_image(out, fmt, fast=True), out.shape[1], out.shape[0]

    def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_name, "render_size": colorizer.render_size,
                "max_upload_bytes": settings.max_upload_bytes, "max_pixels": settings.max_pixels}

    health_answer = {200: {"description": "The model is loaded.", "content": {"application/json": {"schema": _object({
        "status": {"const": "ok"}, "model": {"type": "string", "description": "The served model's name."},
        "render_size": {"type": "integer"}, "max_upload_bytes": {"type": "integer"},
        "max_pixels": {"type": "integer"}})}}},
        503: {"description": f"Only {_uvicorn_busy(settings)}.", "content": UVICORN_BUSY}}
    app.get("/healthz", summary="Liveness and readiness: the model is loaded.", responses=health_answer)(health)
    if settings.health_route != "/healthz":
        app.get(settings.health_route, summary="Vertex AI health check.", responses=health_answer)(health)
    for path in {"/healthz", settings.health_route}:  # uptime monitors ask HEAD; uvicorn sends no body to it
        app.head(path, include_in_schema=False)(health)

    @app.post("/colorize", summary="Colorize one photo (multipart `file`); PNG or JPEG by `format` or Accept.",
              description=f"A photo of at most {settings.max_upload_bytes} bytes ({_mib(settings.max_upload_bytes)}) "
                          f"and {settings.max_pixels} pixels comes back colorized at its full size, named after the "
                          "upload (Content-Disposition: `photo-colorized.png` for `photo.jpg`).",
              response_class=Response, responses={
                  200: {"description": "The colorized photo.", "content": {"image/png": {}, "image/jpeg": {}}},
                  **_error_responses(settings, "No multipart `file` field (the photo sent as the raw body, say), "
                                              "or a `format` other than png or jpeg.")})
    async def colorize(request: Request, file: PhotoField, format: FormatField = None) -> Response:
        fmt = choose_format(format, request.headers.get("accept"))
        name = file.filename or "upload"
        head = await file.read(32)  # enough for every sniffed signature
        await file.seek(0)
        kind = check_upload(file.size if file.size is not None else len(head), head, name)
        t0 = time.perf_counter()
        encoded, _, _ = await pool.run(colorize_bytes, file.file, name, kind, fmt, request=request)
        return Response(encoded, media_type=MEDIA_TYPES[fmt], headers={
            "Content-Disposition": _download_name(Path(name).stem or "photo", "png" if fmt == "png" else "jpg"),
            "Server-Timing": f"colorize;dur={(time.perf_counter() - t0) * 1000:.0f}",
            "X-Chromify-Model": _ascii(model_name),  # a header is Latin-1: a folder named 色彩 made every answer a 500
        })

    @app.post(settings.predict_route, summary="Vertex AI prediction: {instances: [{b64}]} → {predictions: [{b64}]}.",
              description="Each instance is colorized in turn; the predictions come in the same order.",
              responses={200: {"description": "One prediction per instance.", "content": {"application/json": {
                  "schema": _object({"predictions": {"type": "array", "items": _object({
                      "b64": {"type": "string", "contentEncoding": "base64", "description": "The colorized photo."},
                      "mime_type": {"enum": list(MEDIA_TYPES.values())},
                      "width": {"type": "integer"}, "height": {"type": "integer"}})},
                      "model": {"type": "string", "description": "The model's name."}})}}},
                  **_error_responses(settings, f"Bad JSON, no instances or more than {settings.max_instances}, invalid "
                                              "base64, a field of the wrong type, or a `format` other than png or "
                                              "jpeg.")},
              # the body is checked by hand, for messages that say what to send; this is what it accepts
              openapi_extra={"requestBody": {"content": {"application/json": {"schema": _object({
                  "instances": {"type": "array", "minItems": 1, "maxItems": settings.max_instances,
                                "description": 'Photos, each `{"b64": ...}` or `{"image": {"b64": ...}}`.',
                                "items": {"anyOf": [
                                    _object({"b64": {"type": "string", "contentEncoding": "base64",
                                                     "description": "A photo (as for /colorize), base64; line "
                                                                    "breaks are ignored."}}, required=["b64"]),
                                    # the image variant counts only without a b64: one beside it wins
                                    _object({"b64": {"type": "null"}, "image": _object({"b64": {
                                        "type": "string", "contentEncoding": "base64",
                                        "description": "The same, as Vertex AI's image instance."}},
                                        required=["b64"])}, required=["image"])]}},
                  "parameters": _object({"format": {
                      "type": ["string", "null"], "pattern": FORMAT_PATTERN, "default": "png",
                      "description": "png or jpeg; also jpg, image/png or image/jpeg, in any case."}}, nullable=True)},
                  required=["instances"])}}}})
    async def predict(request: Request, body: dict[str, Any]) -> dict[str, Any]:
        instances = body.get("instances")
        if not isinstance(instances, list) or not instances:
            raise HTTPException(400, "body must be {\"instances\": [{\"b64\": \"...\"}, ...]}")
        if len(instances) > settings.max_instances:
            raise HTTPException(400, f"{len(instances)} instances, over the limit of {settings.max_instances}")
        parameters = {} if body.get("parameters") is None else body["parameters"]
        if not isinstance(parameters, dict):
            raise HTTPException(400, f"parameters must be an object like {{\"format\": \"png\"}}, got "
                                     f"{_json_type(parameters)}")
        field = parameters.get("format")
        if field is not None and not isinstance(field, str):
            raise HTTPException(400, f"parameters.format must be a string (png or jpeg), got {_json_type(field)}")
        fmt = choose_format(field, None)
        predictions = []
        for i, inst in enumerate(instances):
            name = f"instance {i}"
            if not isinstance(inst, dict):
                raise HTTPException(400, f"{name}: expected an object {{\"b64\": \"<base64 image>\"}}, got "
                                         f"{_json_type(inst)}")
            image = inst.get("image")
            if inst.get("b64") is None and isinstance(image, dict) and "b64" in image:
                encoded_in = image["b64"]  # the {"image": {"b64": ...}} variant
            elif "b64" in inst:
                encoded_in = inst["b64"]
            else:
                raise HTTPException(400, f"{name}: expected {{\"b64\": \"<base64 image>\"}}")
            if not isinstance(encoded_in, str):
                raise HTTPException(400, f"{name}: b64 must be a string of base64, got {_json_type(encoded_in)}")
            try:
                # Line breaks as `base64` and mail tools wrap it; anything else outside the alphabet is refused.
                data = base64.b64decode("".join(encoded_in.split()), validate=True)
            except (binascii.Error, ValueError):
                raise HTTPException(400, f"{name}: invalid base64") from None
            kind = check_upload(len(data), data[:16], name)
            encoded, width, height = await pool.run(colorize_bytes, data, name, kind, fmt, request=request)
            predictions.append({"b64": base64.b64encode(encoded).decode(), "mime_type": MEDIA_TYPES[fmt],
                                "width": width, "height": height})
        return {"predictions": predictions, "model": model_name}

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Content-Security-Policy": PAGE_CSP})

    # Rendered once, from the finished schema; a shell line beats a "try it" button that needs a script.
    address = _example_address(settings)
    docs_html = render_docs_page(app.openapi(), examples={
        "POST /colorize": f"curl -F file=@photo.jpg -F format=png -o photo-colorized.png {address}/colorize",
        f"POST {settings.predict_route}": (
            f"printf '{{\"instances\": [{{\"b64\": \"%s\"}}]}}' \"$(base64 -w0 photo.jpg)\" |\n"
            f"  curl -H 'Content-Type: application/json' --data-binary @- {address}{settings.predict_route}"),
        "GET /healthz": f"curl {address}/healthz",
    })

    @app.api_route("/docs", methods=["GET", "HEAD"], include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(docs_html, headers={"Content-Security-Policy": PAGE_CSP})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    app.add_middleware(CommonHeaders)  # last, so outermost: on every answer, the body limit's 413 too
    return app


def _mib(size: int) -> str:
    return f"{size / 2**20:.3g} MiB"


def _object(properties: dict[str, Any], required: list[str] | None = None, nullable: bool = False) -> dict[str, Any]:
    """A JSON Schema object, for the routes whose bodies are checked by hand."""
    return {"type": ["object", "null"] if nullable else "object", "properties": properties,
            **({"required": required} if required else {})}


def _example_address(settings: ServeSettings) -> str:
    """host:port for the examples, without a scheme (curl assumes http): a server listening on every interface is
    reached on the loopback one from its own machine."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"[{host}]:{settings.port}" if ":" in host else f"{host}:{settings.port}"


def _json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages about what a client sent."""
    for kind, word in ((bool, "a boolean"), ((int, float), "a number"), (str, "a string"), (list, "an array"),
                       (dict, "an object")):
        if isinstance(value, kind):
            return word
    return "null"


def _download_name(stem: str, suffix: str) -> str:
    """Content-Disposition for `stem-colorized.suffix`: an ASCII fallback, and the real name (RFC 6266's filename*)
    when the fallback had to change it: curl -OJ and browsers saved 色彩.png's answer as __-colorized.png."""
    plain = f"{_ascii(stem)}-colorized.{suffix}"
    real = f"{stem[:100]}-colorized.{suffix}"
    if real == plain:
        return f'inline; filename="{plain}"'
    return f"inline; filename=\"{plain}\"; filename*=UTF-8''{urllib.parse.quote(real, safe='')}"


def _ascii(text: str) -> str:
    """A name safe inside a (quoted) header value."""
    return "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in text)[:100]


def listen(host: str, port: int) -> socket.socket:
    """The server's socket, bound before the model is fetched and loaded: a port in use or an address this
    machine does not have is one line then, not uvicorn's log and exit 3 after the wait."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, UnicodeError) as exc:  # socket.gaierror is an OSError
        raise ConfigError(f"serve: cannot listen on {host}:{port} ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a restart need not wait
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"serve: cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    sock.set_inheritable(True)
    return sock


def serve(settings: ServeSettings, model_dir: str | Path, sock: socket.socket | None = None) -> None:
    """Run uvicorn in this process with the app (one process: the model is loaded once)."""
    import uvicorn

    sock = sock or listen(settings.host, settings.port)
    server = uvicorn.Server(uvicorn.Config(create_app(settings, model_dir), **server_options(settings)))
    host, port = sock.getsockname()[:2]  # uvicorn does not say where it listens on a socket it is given
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    print(f"chromify: serving on {url} (the page at /, the API at /docs; Ctrl-C to quit)", file=sys.stderr,
          flush=True)
    server.run(sockets=[sock])


def server_options(settings: ServeSettings) -> dict[str, Any]:
    """uvicorn's settings for `serve`, in one place: the schema's 503 text and a test rely on its connection limit."""
    # Connections past what the pool would queue anyway get uvicorn's 503 before their bodies are read; the
    # headroom keeps health checks and the page answering while the line is full, and the head deadline keeps
    # connections that send no request from holding that headroom.
    protocol = type("H11WithHeadDeadline", (_head_deadline_protocol(),),
                    {"head_timeout": settings.request_head_timeout_s})
    return {"host": settings.host, "port": settings.port, "log_level": settings.log_level,
            "timeout_graceful_shutdown": 10, "limit_concurrency": connection_limit(settings), "http": protocol}


def _head_deadline_protocol() -> type:
    """uvicorn's HTTP/1.1 protocol with a deadline for each request's head, and for each piece of its body. uvicorn
    arms its keep-alive timer only after a response and stops it at the first byte received, so a connection that
    never sends a whole request stays open: 81 such sockets held every route, /healthz too, at 503 until they
    closed, whether they stopped inside the head or inside the body."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class H11WithHeadDeadline(H11Protocol):
        head_timeout = 10.0

        # One timer, armed while the connection waits on its client: from the end of a response (or the
        # connection's start) until the next head is whole, and from each piece of a body to the next.
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._deadline: asyncio.TimerHandle | None = None
            self._arm()

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(self.head_timeout, self._timed_out)

        def _disarm(self) -> None:
            if getattr(self, "_deadline", None) is not None:
                self._deadline.cancel()
                self._deadline = None

        def _between_requests(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _body_pending(self) -> bool:
            return self.cycle is not None and self.cycle.more_body and not self.cycle.response_complete

        def handle_events(self) -> None:
            before = self.cycle
            super().handle_events()
            if self.cycle is not before:  # a request's head arrived: the head's deadline is over
                self._disarm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._body_pending() and not self.transport.is_closing():  # the next piece is due within the deadline
                self._arm()
            elif not self._between_requests():  # the request is whole: the app's turn, not the client's
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self._between_requests():
                self._arm()  # the next request's head, on a connection kept open

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _timed_out(self) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            if self._body_pending() and self.flow.read_paused:  # the app has not taken what came: not the client's
                self._arm()
            elif self._between_requests() or self._body_pending():
                self.transport.close()

    return H11WithHeadDeadline
