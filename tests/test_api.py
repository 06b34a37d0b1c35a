"""The HTTP API: happy paths, every kind of bad upload with its status code, Vertex AI routes, a real server."""

from __future__ import annotations

import asyncio
import base64
import html
import io
import json
import os
import re
import select
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import HTTPException
from PIL import Image
from skimage import data

from chromify.api.app import (
    InferencePool,
    choose_format,
    connection_limit,
    create_app,
    server_options,
    sniff_image_format,
)
from chromify.api.settings import ServeSettings
from chromify.lab import rgb_to_lab

MAX_BYTES = 300_000
MAX_PIXELS = 1_000_000


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir: Path) -> Path:
    return tiny_model_dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def client(model_dir: Path) -> httpx.Client:
    """The app in a real uvicorn on 127.0.0.1 (a thread of this process, so the model loads in milliseconds)."""
    import uvicorn

    port = free_port()  # in the settings too: the examples on /docs name it
    settings = ServeSettings(max_upload_bytes=MAX_BYTES, max_pixels=MAX_PIXELS, concurrency=1, max_instances=2,
                             port=port)
    config = uvicorn.Config(create_app(settings, model_dir), host="127.0.0.1", port=port, log_level="warning")
    with serving(config), httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
        yield c


@contextmanager
def served(model: Path) -> Iterator[httpx.Client]:
    """A client of a real uvicorn serving `model` on a free port with the tests' limits, one photo at a time."""
    import uvicorn

    port = free_port()
    settings = ServeSettings(max_upload_bytes=MAX_BYTES, max_pixels=MAX_PIXELS, concurrency=1, port=port)
    config = uvicorn.Config(create_app(settings, model), host="127.0.0.1", port=port, log_level="critical")
    with serving(config), httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
        yield c


@contextmanager
def serving(config) -> Iterator[None]:
    """A real uvicorn with `config` in a thread of this process, from started to stopped."""
    import uvicorn

    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def encode(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width × height: what a decompression bomb looks like before decoding."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND",
                                                                                                            b"")


CAMERA_JPEG = encode(Image.fromarray(data.camera()).resize((320, 240)), quality=90)
CAMERA_B64 = base64.b64encode(CAMERA_JPEG).decode()


def test_colorize_returns_a_png_of_the_same_size(client: httpx.Client) -> None:
    r = client.post("/colorize", files={"file": ("old photo.jpg", CAMERA_JPEG, "image/jpeg")})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert r.headers["content-disposition"] == 'inline; filename="old photo-colorized.png"'
    img = Image.open(io.BytesIO(r.content))
    assert (img.format, img.mode, img.size) == ("PNG", "RGB", (320, 240))
    # the upload's own picture, with colour under it (L moves a little only where sRGB clips)
    lightness_in = rgb_to_lab(np.asarray(Image.open(io.BytesIO(CAMERA_JPEG)).convert("RGB")))[..., 0]
    lightness_out = rgb_to_lab(np.asarray(img))[..., 0]
    assert np.corrcoef(lightness_out.ravel(), lightness_in.ravel())[0, 1] > 0.95


@pytest.mark.parametrize(("form", "accept", "expected"), [
    ({}, None, "image/png"),
    ({}, "image/jpeg", "image/jpeg"),
    ({}, "image/png;q=0.5, image/jpeg;q=0.9", "image/jpeg"),
    ({}, "text/html,*/*;q=0.8", "image/png"),
    ({"format": "jpg"}, "image/png", "image/jpeg"),
    ({"format": "png"}, "image/jpeg", "image/png"),
])
def test_format_by_field_then_accept(client: httpx.Client, form: dict, accept: str | None, expected: str) -> None:
    headers = {"accept": accept} if accept else {}
    r = client.post("/colorize", data=form, headers=headers, files={"file": ("a.jpg", CAMERA_JPEG)})
    assert r.status_code == 200 and r.headers["content-type"] == expected
    assert Image.open(io.BytesIO(r.content)).format == expected.split("/")[1].upper()
    suffix = {"image/png": "png", "image/jpeg": "jpg"}[expected]
    assert r.headers["content-disposition"] == f'inline; filename="a-colorized.{suffix}"'


# (a browser, as httpx, sends a quote in a file name as %22; a backslash comes as it is)
@pytest.mark.parametrize(("name", "said"), [('say "cheese"\\.jpg', "say %22cheese%22_"), ("été.jpg", "_t_")])
def test_the_download_name_is_a_safe_header_whatever_the_upload_was_called(client: httpx.Client, name: str,
                                                                            said: str) -> None:
    """A quote or backslash in the upload's name would end the header's filename early (a malformed header that
    clients read differently); non-ASCII is not allowed there at all."""
    r = client.post("/colorize", files={"file": (name, CAMERA_JPEG, "image/jpeg")})
    fallback, _, real = r.headers["content-disposition"].partition("; filename*=UTF-8''")
    assert r.status_code == 200 and fallback == f'inline; filename="{said}-colorized.png"'
    assert urllib.parse.unquote(real) == Path(name.replace('"', "%22")).stem + "-colorized.png"  # as it came


def test_content_is_sniffed_not_the_name_or_type(client: httpx.Client) -> None:
    png = encode(Image.fromarray(data.camera()[:64, :96]), "PNG")
    assert client.post("/colorize", files={"file": ("notes.txt", png, "text/plain")}).status_code == 200
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'
    r = client.post("/colorize", files={"file": ("photo.png", svg, "image/png")})
    assert r.status_code == 415 and "not an image" in r.json()["detail"]


def test_odd_modes_and_exif_orientation(client: httpx.Client) -> None:
    sixteen = encode(Image.fromarray(data.camera()[:50, :70].astype(np.uint16) * 257), "PNG")
    r = client.post("/colorize", files={"file": ("16bit.png", sixteen)})
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (70, 50)
    exif = Image.Exif()
    exif[0x0112] = 8
    rotated = encode(Image.fromarray(data.chelsea()), exif=exif.tobytes())  # 451 × 300 stored
    r = client.post("/colorize", files={"file": ("cat.jpg", rotated)})
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (300, 451)


BAD_UPLOADS = {
    "too big": (b"\xff\xd8\xff" + bytes(MAX_BYTES), 413, "over the limit"),
    "bomb": (png_header_only(50_000, 50_000), 422, "too many pixels"),
    "just over max pixels": (encode(Image.new("L", (1001, 1000)), "PNG"), 422, "too many pixels"),
    "not an image": (b"%PDF-1.7\n" + bytes(100), 415, "not an image"),
    "text that starts like a BMP": (b"BMW is a car maker, not a bitmap.\n" * 3, 415, "not an image"),
    "a strip, not a photo": (encode(Image.new("L", (1001, 1)), "PNG"), 422, "not a photo's shape"),
    "empty": (b"", 422, "empty file"),
    "truncated": (CAMERA_JPEG[: len(CAMERA_JPEG) // 3], 422, "truncated"),
}


@pytest.mark.parametrize("case", BAD_UPLOADS)
def test_bad_uploads_get_clear_4xx(client: httpx.Client, case: str) -> None:
    body, status, words = BAD_UPLOADS[case]
    t0 = time.perf_counter()
    r = client.post("/colorize", files={"file": ("upload.jpg", body, "image/jpeg")})
    assert (r.status_code, r.headers["content-type"]) == (status, "application/json"), r.text
    assert words in r.json()["detail"]
    assert time.perf_counter() - t0 < 5  # nothing was decoded at full size


@pytest.mark.parametrize("chunked", [False, True])
def test_body_over_the_limit_names_the_per_photo_limit(client: httpx.Client, chunked: bool) -> None:
    """Refused from Content-Length or counted as it arrives; the body limit alone (photo + encoding room) would
    look like a different limit from the per-photo one the docs state."""
    body = b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n' + bytes(MAX_BYTES * 2)
    r = client.post("/colorize", content=(body[i:i + 65536] for i in range(0, len(body), 65536)) if chunked else body,
                    headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 413 and "larger than" in r.json()["detail"]
    assert f"{MAX_BYTES} bytes" in r.json()["detail"] and "base64" in r.json()["detail"]


def test_predict_photos_share_one_body_and_the_413_says_so(client: httpx.Client) -> None:
    """Each photo is under the per-photo limit; together they are over the body's: the message must not blame
    the photos' size alone."""
    noise = np.random.default_rng(0).integers(0, 256, (300, 270, 3), np.uint8)  # incompressible: ~240 KB as PNG
    photo = encode(Image.fromarray(noise), "PNG")
    assert MAX_BYTES * 3 // 4 < len(photo) < MAX_BYTES
    instance = {"b64": base64.b64encode(photo).decode()}
    assert client.post("/predict", json={"instances": [instance]}).status_code == 200
    r = client.post("/predict", json={"instances": [instance, instance]})
    assert r.status_code == 413 and "the photos of one /predict request share it" in r.json()["detail"]


@pytest.mark.parametrize(("kwargs", "words"), [
    ({}, "file"),
    ({"data": {"format": "gif"}, "files": {"file": ("a.jpg", CAMERA_JPEG)}}, "format 'gif'"),
])
def test_malformed_requests_are_400(client: httpx.Client, kwargs: dict, words: str) -> None:
    r = client.post("/colorize", **kwargs)
    assert r.status_code == 400 and words in r.json()["detail"]


def test_a_huge_bad_value_is_not_echoed_whole_and_the_schema_names_every_422(client: httpx.Client) -> None:
    # A 200,000-character format came back whole in the 400's detail; /docs left the aspect-ratio refusal out.
    r = client.post("/colorize", data={"format": "x" * 200_000}, files={"file": ("a.jpg", CAMERA_JPEG)})
    assert (r.status_code, r.json()["detail"]) == (400, f"format '{'x' * 40}...' is not one of: png, jpeg")
    described = client.get("/openapi.json").json()["paths"]["/colorize"]["post"]["responses"]["422"]["description"]
    assert "a side over 100 times the other" in described
    thin = io.BytesIO()
    Image.new("RGB", (3000, 20)).save(thin, "PNG")
    r = client.post("/colorize", files={"file": ("thin.png", thin.getvalue())})
    assert r.status_code == 422 and "100 times" in r.json()["detail"]


def test_a_body_of_the_wrong_kind_is_told_what_to_send(client: httpx.Client) -> None:
    # They said "body Input should be a valid dictionary" and "body.file Value error, Expected UploadFile, received:
    # <class 'str'>": pydantic's words, not what to do.
    body = json.dumps({"instances": [{"b64": CAMERA_B64}]})
    for sent in ("application/x-www-form-urlencoded", "text/plain"):  # curl -d's default, and a hand-set one
        r = client.post("/predict", content=body, headers={"content-type": sent})
        assert (r.status_code, r.json()["detail"]) == (400, "malformed request: the body must be JSON sent as "
                                                            f"Content-Type: application/json, not {sent}: "
                                                            '{"instances": [{"b64": "..."}]}')
    r = client.post("/predict", json=[1, 2])
    assert r.json()["detail"] == 'malformed request: the body must be a JSON object: {"instances": [{"b64": "..."}]}'
    assert client.post("/predict", content=body, headers={"content-type": "application/json"}).status_code == 200
    r = client.post("/colorize", data={"file": "photo.jpg"})  # curl -F file=photo.jpg, the @ forgotten
    assert (r.status_code, r.json()["detail"]) == (400, "malformed request: `file` is a text field, not a file "
                                                        "upload; send the photo itself, e.g. curl -F "
                                                        "file=@photo.jpg <server>/colorize")


def test_raw_image_body_is_told_to_use_multipart(client: httpx.Client) -> None:
    r = client.post("/colorize", content=CAMERA_JPEG, headers={"content-type": "image/jpeg"})
    assert r.status_code == 400 and "multipart/form-data field `file`" in r.json()["detail"], r.text
    assert "curl -F file=@" in r.json()["detail"] and "image/jpeg" in r.json()["detail"]


def test_vertex_predict_and_health(client: httpx.Client) -> None:
    body = {"instances": [{"b64": base64.b64encode(CAMERA_JPEG).decode()},
                          {"image": {"b64": base64.b64encode(CAMERA_JPEG).decode()}}],
            "parameters": {"format": "jpeg"}}
    r = client.post("/predict", json=body)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert [(p["mime_type"], p["width"], p["height"]) for p in preds] == [("image/jpeg", 320, 240)] * 2
    assert Image.open(io.BytesIO(base64.b64decode(preds[0]["b64"]))).size == (320, 240)
    assert client.get("/healthz").json()["status"] == "ok"


@pytest.mark.parametrize(("body", "status", "words"), [
    ({"instances": []}, 400, "instances"),
    ({"instances": [{"b64": "not base64!"}]}, 400, "instance 0: invalid base64"),
    ({"instances": [{"b64": ""}]}, 422, "instance 0: empty file"),
    ({"instances": [{"b64": base64.b64encode(b"hello").decode()}]}, 415, "not an image"),
    ({"instances": [{"b64": "AA=="}] * 3}, 400, "over the limit of 2"),
    ([1, 2], 400, "malformed request"),
    ({"instances": [{"b64": CAMERA_B64}], "parameters": {"format": 5}}, 400, "parameters.format must be a string"),
    ({"instances": [{"b64": CAMERA_B64}], "parameters": {"format": ["png"]}}, 400, "format must be a string"),
    ({"instances": [{"b64": CAMERA_B64}], "parameters": "jpeg"}, 400, "parameters must be an object"),
    ({"instances": [{"b64": CAMERA_B64}], "parameters": []}, 400, "parameters must be an object"),
    ({"instances": {"b64": CAMERA_B64}}, 400, "instances"),
    ({"instances": CAMERA_B64}, 400, "instances"),
    ({"instances": [CAMERA_B64]}, 400, "instance 0: expected an object"),
    ({"instances": [{"b64": 5}]}, 400, "instance 0: b64 must be a string"),
    ({"instances": [{"b64": [CAMERA_B64]}]}, 400, "instance 0: b64 must be a string"),
    ({"instances": [{"image": {"b64": None}}]}, 400, "instance 0: b64 must be a string"),
    ({"instances": [{"image": CAMERA_B64}]}, 400, "instance 0: expected"),
    ({"instances": [{"b64": "/9j/4AAQ\nSkZJRg=!"}]}, 400, "instance 0: invalid base64"),
    ({"instances": [{"b64": "AAé="}]}, 400, "instance 0: invalid base64"),
])
def test_vertex_bad_requests(client: httpx.Client, body: object, status: int, words: str) -> None:
    r = client.post("/predict", json=body)
    assert r.status_code == status and words in r.json()["detail"], r.text


SMALL_B64 = base64.b64encode(encode(Image.fromarray(data.camera()[::16, ::16]), "PNG")).decode()  # 32 × 32
# (body, whether /predict colorizes it): every shape the route takes, and refusals of shape the schema can tell
PREDICT_SHAPES = [
    ({"instances": [{"b64": SMALL_B64}]}, True),
    ({"instances": [{"image": {"b64": SMALL_B64}}]}, True),
    ({"instances": [{"b64": None, "image": {"b64": SMALL_B64}}]}, True),
    ({"instances": [{"b64": SMALL_B64, "image": "ignored"}], "extra": 1}, True),
    ({"instances": [{"b64": SMALL_B64}], "parameters": None}, True),
    ({"instances": [{"b64": SMALL_B64}], "parameters": {}}, True),
    ({"instances": [{"b64": SMALL_B64}], "parameters": {"format": None}}, True),
    ({"instances": [{"b64": SMALL_B64}], "parameters": {"format": ""}}, True),
    *[({"instances": [{"b64": SMALL_B64}], "parameters": {"format": fmt}}, True)
      for fmt in ("png", "jpeg", "jpg", "JPG", " Jpeg ", "image/jpeg", "IMAGE/PNG")],
    ({"instances": [{"b64": SMALL_B64}], "parameters": {"format": "gif"}}, False),
    ({"instances": [{"b64": SMALL_B64}], "parameters": {"format": "image/jpg"}}, False),
    ({"instances": [{"b64": SMALL_B64}], "parameters": {"format": " "}}, False),
    ({"instances": [{"b64": SMALL_B64}], "parameters": {"format": 5}}, False),
    ({"instances": [{"b64": SMALL_B64}], "parameters": "jpeg"}, False),
    ({"instances": [{"b64": 5, "image": {"b64": SMALL_B64}}]}, False),
    ({"instances": [{"b64": None}]}, False),
    ({"instances": [{"image": {"b64": None}}]}, False),
    ({"instances": [{"picture": SMALL_B64}]}, False),
    ({"instances": [{"b64": SMALL_B64}] * 3}, False),
    ({"instances": []}, False),
    ({"parameters": {"format": "png"}}, False),
]


@pytest.mark.parametrize(("body", "accepted"), PREDICT_SHAPES,
                         ids=[json.dumps(b).replace(SMALL_B64, "B64")[:70] for b, _ in PREDICT_SHAPES])
def test_the_predict_schema_accepts_what_the_route_accepts(client: httpx.Client, body: dict, accepted: bool) -> None:
    """A client generated from /openapi.json, or a validator in front of the server, must neither refuse a request
    the route takes nor let through a shape it refuses (bad base64 or bytes are past what a schema can tell)."""
    jsonschema = pytest.importorskip("jsonschema")
    operation = client.get("/openapi.json").json()["paths"]["/predict"]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    jsonschema.Draft202012Validator.check_schema(schema)
    by_schema = jsonschema.Draft202012Validator(schema).is_valid(body)
    r = client.post("/predict", json=body)
    assert (by_schema, r.status_code) == (accepted, 200 if accepted else 400), r.text[:300]


def test_vertex_accepts_line_wrapped_base64(client: httpx.Client) -> None:
    """What `base64 photo.jpg` prints: 76-character lines (CRLF from other tools)."""
    lines = [CAMERA_B64[i:i + 76] for i in range(0, len(CAMERA_B64), 76)]
    for wrapped in ("\n".join(lines) + "\n", "\r\n".join(lines), " " + "\n\t".join(lines)):
        r = client.post("/predict", json={"instances": [{"b64": wrapped}]})
        assert r.status_code == 200 and r.json()["predictions"][0]["width"] == 320, r.text


def test_healthz_and_the_page(client: httpx.Client, model_dir: Path) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "model": model_dir.name, "render_size": 64,
                                             "max_upload_bytes": MAX_BYTES, "max_pixels": MAX_PIXELS}
    page = client.get("/")
    assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
    for path in ("/", "/static/app.js", "/static/style.css"):
        r = client.get(path)
        assert "http:" not in r.text and "https:" not in r.text and "//cdn" not in r.text, f"{path} refers outside"
        assert r.headers["x-content-type-options"] == "nosniff", path
    for r in (client.post("/colorize", files={"file": ("a.jpg", CAMERA_JPEG)}),
              client.post("/colorize", files={"file": ("a.txt", b"not a photo")})):
        assert r.headers["x-content-type-options"] == "nosniff", r.status_code


def test_docs_page_needs_nothing_from_elsewhere(client: httpx.Client) -> None:
    """/docs was Swagger UI, whose script and styles come from a CDN: blank on a machine with no network."""
    r = client.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert not re.search(r"https?:|//[\w.-]+\.[a-z]", r.text, re.I), "/docs names another host"
    assert "default-src 'self'" in r.headers["content-security-policy"]
    links = re.findall(r'(?:href|src)="([^"]*)"', r.text)
    assert "static/docs.css" in links and "openapi.json" in links
    for link in links:
        assert not re.match(r"[a-z][\w+.-]*:|//", link, re.I) or link.startswith("data:"), link
        if not link.startswith(("#", "data:")):
            linked = client.get("/" + link)
            assert linked.status_code == 200 and not re.search(r"https?:|@import|url\(", linked.text), link
    assert client.get("/openapi.json").json()["paths"].keys() == {"/colorize", "/predict", "/healthz"}
    # every route with what it takes, its limits and its answers
    for route in ("POST</span> <code>/colorize", "POST</span> <code>/predict", "GET</span> <code>/healthz"):
        assert route in r.text
    for words in (f"at most {MAX_BYTES} bytes", f"{MAX_PIXELS} pixels", "at most 2 item(s)", "<code>file</code>",
                  "<code>instances[].b64</code>", "<code>415</code>", "<code>503</code>"):
        assert words in r.text, words


def test_docs_examples_work_as_printed(client: httpx.Client, tmp_path: Path) -> None:
    """The shell lines under /colorize and /predict, run as a reader would paste them, next to a photo.jpg."""
    (tmp_path / "photo.jpg").write_bytes(CAMERA_JPEG)
    page = client.get("/docs").text
    examples = {route: html.unescape(re.search(rf'id="{route}">.*?<pre class="example"><code>(.*?)</code>', page,
                                                re.S)[1]) for route in ("post-colorize", "post-predict")}
    env = {**os.environ, "no_proxy": "127.0.0.1"}  # a proxy set for the outside world must not take these
    run = subprocess.run(["bash", "-c", examples["post-colorize"]], cwd=tmp_path, env=env, capture_output=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    assert Image.open(tmp_path / "photo-colorized.png").size == (320, 240)
    run = subprocess.run(["bash", "-c", examples["post-predict"]], cwd=tmp_path, env=env, capture_output=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["predictions"][0]["width"] == 320


def test_pool_answers_503_past_concurrency_plus_queue() -> None:
    release = threading.Event()

    async def scenario() -> int:
        pool = InferencePool(concurrency=1, max_queue=1)
        running = [asyncio.create_task(pool.run(release.wait)) for _ in range(2)]
        await asyncio.sleep(0.05)
        try:
            await pool.run(release.wait)
        except HTTPException as exc:
            status = exc.status_code
        release.set()
        await asyncio.gather(*running)
        assert pool.in_flight == 0
        return status

    assert asyncio.run(scenario()) == 503


def test_past_the_connection_limit_the_answer_is_the_plain_503_the_schema_describes(model_dir: Path) -> None:
    """`serve`'s uvicorn answers connections past its limit itself, before the app: plain text, no Retry-After, on
    /healthz too, and idle keep-alive connections count. The schema promised JSON and Retry-After for every error."""
    import uvicorn

    settings = ServeSettings(concurrency=1, max_queue=0, port=free_port(), log_level="warning")
    app = create_app(settings, model_dir)
    base, limit = f"http://127.0.0.1:{settings.port}", connection_limit(settings)
    with serving(uvicorn.Config(app, **server_options(settings))):
        assert httpx.get(base + "/healthz", timeout=10).status_code == 200
        idle = [socket.create_connection(("127.0.0.1", settings.port)) for _ in range(limit)]
        try:
            deadline = time.monotonic() + 10
            while (r := httpx.get(base + "/healthz", timeout=10)).status_code == 200:  # until uvicorn took them all
                assert time.monotonic() < deadline, "never refused"
                time.sleep(0.05)
        finally:
            for s in idle:
                s.close()
    assert (r.status_code, r.headers["content-type"].split(";")[0], r.text) == (503, "text/plain",
                                                                               "Service Unavailable")
    assert "retry-after" not in r.headers
    schema = app.openapi()
    for answer in (schema["paths"]["/healthz"]["get"]["responses"]["503"],
                   schema["paths"]["/predict"]["post"]["responses"]["503"]):
        assert answer["content"]["text/plain"]["schema"] == {"const": r.text}
        assert f"past {limit} open connections" in answer["description"] and "no Retry-After" in answer["description"]
    assert f"past {limit} open connections" in schema["info"]["description"]


def test_connections_that_send_no_whole_request_are_closed_and_free_the_limit(model_dir: Path) -> None:
    """Sockets that sent nothing, or half a request line, were never closed (uvicorn times out only after a
    response): one client holding the limit's worth kept every route, /healthz too, at 503 for good."""
    import uvicorn

    settings = ServeSettings(concurrency=1, max_queue=0, port=free_port(), log_level="warning",
                             request_head_timeout_s=1.0)
    base, limit = f"http://127.0.0.1:{settings.port}", connection_limit(settings)
    with serving(uvicorn.Config(create_app(settings, model_dir), **server_options(settings))):
        with httpx.Client(base_url=base, timeout=10) as kept:  # a keep-alive client that does send requests
            assert kept.get("/healthz").status_code == 200
            idle = [socket.create_connection(("127.0.0.1", settings.port)) for _ in range(limit)]
            for s in idle[::2]:
                s.sendall(b"GET /healthz HT")  # half a request line, then nothing
            try:
                refused = httpx.get(base + "/healthz", timeout=10).status_code
                time.sleep(2.0)  # past the head deadline
                for s in idle:
                    s.settimeout(5)
                    assert s.recv(1) == b"", "still open"  # closed by the server
                assert httpx.get(base + "/healthz", timeout=10).status_code == 200
                assert kept.get("/healthz").status_code == 200
            finally:
                for s in idle:
                    s.close()
    assert refused == 503


def test_connections_that_stop_inside_a_body_are_closed_but_slow_uploads_finish(model_dir: Path) -> None:
    """A whole head, then a body that stops: the head deadline had ended, and 81 such sockets held every route at
    503 for good. The deadline is per piece of the body, so an upload that keeps coming, however slowly, finishes."""
    import uvicorn

    settings = ServeSettings(concurrency=1, max_queue=0, port=free_port(), log_level="warning",
                             request_head_timeout_s=1.0)
    base, limit = f"http://127.0.0.1:{settings.port}", connection_limit(settings)
    photo = encode(Image.fromarray(data.astronaut()[::8, ::8]), "PNG")
    head = (b"POST /colorize HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 1000\r\n\r\n--b\r\n")
    with serving(uvicorn.Config(create_app(settings, model_dir), **server_options(settings))):
        # one fewer than the limit: at the limit, uvicorn answers a head 503 once it has accepted them all
        stuck = [socket.create_connection(("127.0.0.1", settings.port)) for _ in range(limit - 1)]
        try:
            for s in stuck:
                s.sendall(head)
            time.sleep(0.3)
            assert not [s for s in stuck if select.select([s], [], [], 0)[0]]  # held: no answer, not closed
            time.sleep(1.7)  # past the deadline
            for s in stuck:  # closed by the server without an answer; before, recv waited until its timeout
                s.settimeout(5)
                assert s.recv(1) == b"", "still open"
            assert httpx.get(base + "/healthz", timeout=10).status_code == 200
        finally:
            for s in stuck:
                s.close()
        body = (b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n"
                b"Content-Type: image/png\r\n\r\n" + photo + b"\r\n--b--\r\n")
        with socket.create_connection(("127.0.0.1", settings.port)) as slow:
            slow.sendall(head.split(b"--b\r\n")[0].replace(b"1000", str(len(body)).encode()))
            pieces = [body[i:i + len(body) // 5 + 1] for i in range(0, len(body), len(body) // 5 + 1)]
            for piece in pieces:  # 0.6 s apart: 2.4 s or more in all, each gap inside the 1 s deadline
                slow.sendall(piece)
                time.sleep(0.6)
            slow.settimeout(10)
            answer = b""
            while b"\r\n\r\n" not in answer:
                answer += slow.recv(65536)
    assert len(pieces) >= 5
    assert answer.startswith(b"HTTP/1.1 200 ") and b"content-type: image/png" in answer.lower()


def test_a_model_folder_named_outside_latin_1_still_answers(model_dir: Path, tmp_path: Path) -> None:
    """The folder's name went into the X-Chromify-Model header as it was: 色彩模型 made every /colorize a 500."""
    import shutil

    shutil.copytree(model_dir, tmp_path / "色彩模型")
    photo = encode(Image.fromarray(data.astronaut()[::8, ::8]), "PNG")
    with served(tmp_path / "色彩模型") as c:
        answer = c.post("/colorize", files={"file": ("a.png", photo, "image/png")})
        health = c.get("/healthz").json()
    assert (answer.status_code, answer.headers["x-chromify-model"], health["model"]) == (200, "____", "色彩模型")
    with Image.open(io.BytesIO(answer.content)) as img:
        assert img.size == (64, 64)


def test_a_model_that_gives_nan_is_a_one_line_500_on_both_photo_routes(model_dir: Path, tmp_path: Path) -> None:
    # A diverged training's weights used to end in an IndexError inside the merge: a bare 500 and a traceback.
    import torch

    from chromify.train.checkpoint import export_model, load_model

    model, config = load_model(model_dir, "cpu")
    with torch.no_grad():
        for param in model.parameters():
            param.fill_(float("nan"))
    export_model(tmp_path / "diverged", model, config)
    photo = encode(Image.fromarray(data.astronaut()[::4, ::4]), "PNG")
    with served(tmp_path / "diverged") as c:
        answers = [c.post("/colorize", files={"file": ("a.png", photo, "image/png")}),
                   c.post("/predict", json={"instances": [{"b64": base64.b64encode(photo).decode()}]})]
        schema = c.get("/openapi.json").json()
    for answer in answers:
        assert answer.status_code == 500 and answer.headers["content-type"] == "application/json"
        assert answer.json() == {"detail": f"{tmp_path / 'diverged'}: the model produced non-finite colours (NaN): its "
                                           "weights are broken (a diverged training?); use another version or retrain"}
    assert {"500"} <= set(schema["paths"]["/colorize"]["post"]["responses"]) & set(
        schema["paths"]["/predict"]["post"]["responses"])


def test_a_photo_too_long_for_jpeg_asked_as_jpeg_is_a_422_before_decoding(model_dir: Path) -> None:
    # Pillow's JPEG encoder fails past 65,500 px with "broken data stream": it was a bare 500 after the whole work.
    import uvicorn

    port = free_port()
    settings = ServeSettings(max_upload_bytes=MAX_BYTES, max_pixels=50_000_000, concurrency=1, port=port)
    server = uvicorn.Config(create_app(settings, model_dir), host="127.0.0.1", port=port, log_level="critical")
    long = encode(Image.new("L", (65_501, 656), 120), "PNG")  # 43 Mpx, a few KB, within 100:1
    with serving(server), httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
        t0 = time.perf_counter()
        answers = [c.post("/colorize", files={"file": ("pano.png", long)}, data={"format": "jpeg"}),
                   c.post("/predict", json={"instances": [{"b64": base64.b64encode(long).decode()}],
                                            "parameters": {"format": "jpeg"}})]
        seconds = time.perf_counter() - t0
    for answer in answers:
        assert (answer.status_code, answer.headers["content-type"]) == (422, "application/json")
        assert answer.json()["detail"].endswith("65501 px wide is beyond JPEG's 65,500 px; ask for png")
    assert seconds < 5  # refused from the header: 43 Mpx were never decoded


def test_a_png_with_a_broken_header_is_a_corrupt_png_not_a_non_image(client: httpx.Client) -> None:
    # A wrong IHDR checksum or a 0x0 size: "not an image (unrecognised format)" from a 422, where real non-images
    # get 415 with the formats that are read.
    good = encode(Image.new("RGB", (20, 10)), "PNG")
    bad_crc, zero = bytearray(good), bytearray(good)
    bad_crc[29] ^= 0xFF  # the IHDR chunk's CRC
    zero[16:24] = bytes(8)  # width and height 0
    for damaged in (bad_crc, zero):
        r = client.post("/colorize", files={"file": ("old.png", bytes(damaged))})
        assert (r.status_code, r.json()["detail"]) == (422, "old.png: corrupt PNG header: it starts as a PNG file, "
                                                            "but its header cannot be read")
    assert client.post("/colorize", files={"file": ("notes.png", b"plain text")}).status_code == 415


def test_sniffing_and_negotiation_units() -> None:
    assert sniff_image_format(CAMERA_JPEG) == "JPEG"
    assert sniff_image_format(encode(Image.new("RGB", (4, 4)), "WEBP")) == "WEBP"
    assert sniff_image_format(encode(Image.new("RGB", (4, 4)), "TIFF")) == "TIFF"
    assert sniff_image_format(encode(Image.new("RGB", (4, 4)), "BMP")) == "BMP"
    assert sniff_image_format(b"GIF89a...") is None and sniff_image_format(b"") is None
    assert choose_format(None, "image/*") == "png" and choose_format("JPEG", None) == "jpeg"


@pytest.mark.parametrize(("env", "kwargs", "field"), [
    ({}, {"port": 99999}, "port"),  # was an OverflowError from socket.bind once the model had loaded
    ({}, {"port": 0}, "port"),
    ({"AIP_HTTP_PORT": "65536"}, {}, "port"),
    ({"CHROMIFY_HEALTH_ROUTE": "healthz"}, {}, "health_route"),
    ({}, {"predict_route": "predict"}, "predict_route"),
    ({}, {"torch_threads": 2**40}, "torch_threads"),
    ({}, {"render_size": 10**6}, "render_size"),
])
def test_settings_refuse_values_that_would_fail_later(monkeypatch: pytest.MonkeyPatch, env: dict, kwargs: dict,
                                                      field: str) -> None:
    from pydantic import ValidationError

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as exc:
        ServeSettings(**kwargs)
    # a value read from the environment is named by the field's first alias (AIP_HTTP_PORT), whichever one was set
    names = {field, *getattr(ServeSettings.model_fields[field].validation_alias, "choices", ())}
    assert len(exc.value.errors()) == 1 and exc.value.errors()[0]["loc"][0] in names


def test_vertex_ais_settings_win_over_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under Vertex AI its AIP_* variables say where to listen and answer; an image that also sets ours must not
    move the server off the port Vertex's health checks call."""
    monkeypatch.setenv("AIP_HTTP_PORT", "9000")
    monkeypatch.setenv("CHROMIFY_PORT", "8081")
    monkeypatch.setenv("AIP_PREDICT_ROUTE", "/v1/endpoints/1/deployedModels/2:predict")
    monkeypatch.setenv("CHROMIFY_PREDICT_ROUTE", "/mine")
    monkeypatch.setenv("AIP_HEALTH_ROUTE", "/v1/endpoints/1/deployedModels/2")
    monkeypatch.setenv("CHROMIFY_HEALTH_ROUTE", "/alive")
    s = ServeSettings()
    assert (s.port, s.predict_route, s.health_route) == (
        9000, "/v1/endpoints/1/deployedModels/2:predict", "/v1/endpoints/1/deployedModels/2")


def test_log_level_is_one_of_uvicorns_in_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unknown one was a KeyError from inside uvicorn; upper case worked there and still does."""
    from pydantic import ValidationError

    monkeypatch.setenv("CHROMIFY_LOG_LEVEL", "loud")
    with pytest.raises(ValidationError, match="'warning'"):
        ServeSettings()
    monkeypatch.setenv("CHROMIFY_LOG_LEVEL", "WARNING")
    assert ServeSettings().log_level == "warning"


def test_a_port_in_use_is_one_line_before_the_model_loads_and_the_log_says_where_it_serves(
        model_dir: Path, tmp_path: Path, chromify_serve) -> None:
    """A taken port or an address this machine lacks gave uvicorn's log lines and exit 3, after the model loaded."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "chromify.cli", "serve", "--model", str(model_dir),
                               "--host", "127.0.0.1", "--port", str(port)], capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stderr) == (
        2, f"chromify: error: serve: cannot listen on 127.0.0.1:{port} (Address already in use)\n")
    proc = subprocess.run([sys.executable, "-m", "chromify.cli", "serve", "--model", str(tmp_path / "no-model"),
                           "--host", "192.0.2.1", "--port", str(port)], capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stderr) == (  # TEST-NET-1: an address no machine here has; said before the model
        2, f"chromify: error: serve: cannot listen on 192.0.2.1:{port} (Cannot assign requested address)\n")

    port = free_port()
    with chromify_serve(["--model", str(model_dir), "--port", str(port)], {**os.environ}, port,
                        tmp_path / "server.log"):
        log = (tmp_path / "server.log").read_text()
    assert f"chromify: serving on http://127.0.0.1:{port} (the page at /, the API at /docs; Ctrl-C to quit)" in log


def test_real_server_with_vertex_environment(model_dir: Path, tmp_path: Path, chromify_serve) -> None:
    """`chromify serve` as Vertex AI starts it: port and routes from AIP_*, limits from CHROMIFY_*."""
    port = free_port()
    predict, health = "/v1/endpoints/1/deployedModels/2:predict", "/v1/endpoints/1/deployedModels/2"
    env = {**os.environ, "AIP_HTTP_PORT": str(port), "AIP_PREDICT_ROUTE": predict, "AIP_HEALTH_ROUTE": health,
           "CHROMIFY_MAX_UPLOAD_BYTES": str(MAX_BYTES), "CHROMIFY_MODEL": str(model_dir),
           "CHROMIFY_LOG_LEVEL": "warning"}
    with chromify_serve([], env, port, tmp_path / "server.log", health) as base:
        r = httpx.post(base + predict, json={"instances": [{"b64": base64.b64encode(CAMERA_JPEG).decode()}]},
                       timeout=60)
        assert r.status_code == 200 and r.json()["predictions"][0]["width"] == 320
        r = httpx.post(base + "/colorize", files={"file": ("a.jpg", CAMERA_JPEG)}, timeout=60)
        assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (320, 240)

        def chunks():  # no Content-Length: the limit has to be counted as the body arrives
            yield b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n\xff\xd8\xff'
            for _ in range(100):
                yield bytes(10_000)

        r = httpx.post(base + "/colorize", content=chunks(), timeout=60,
                       headers={"content-type": "multipart/form-data; boundary=x"})
        assert r.status_code == 413
        assert httpx.get(base + "/healthz", timeout=5).status_code == 200


@pytest.mark.parametrize(("accept", "expected"), [
    ("image/png;q=0", "jpeg"),  # PNG refused outright: it was sent anyway
    ("image/*;q=0.9, image/jpeg;q=0.1", "png"),  # image/* covers PNG at 0.9: JPEG was chosen, the only one named
    ("image/jpeg;q=0.5, */*;q=0.9", "png"),
    ("image/jpeg, image/png;q=0.5", "jpeg"),
    ("IMAGE/JPEG;Q=0.8, image/png;q=0.2", "jpeg"),
    ("image/jpeg;q=0.1", "jpeg"),
    ("application/json", "png"),
])
def test_the_accept_header_is_read_with_its_wildcards_and_refusals(accept: str, expected: str) -> None:
    assert choose_format(None, accept) == expected


def test_head_requests_are_answered_where_get_is(client: httpx.Client) -> None:
    # uptime monitors and `curl -I` ask HEAD: every route a person or a probe reads answered 405
    for path in ("/", "/healthz", "/docs", "/static/app.js"):
        get, head = client.get(path), client.head(path)
        assert (head.status_code, head.content) == (200, b""), path
        assert head.headers["content-type"] == get.headers["content-type"], path


def test_a_photo_named_outside_ascii_comes_back_under_its_own_name(client: httpx.Client) -> None:
    r = client.post("/colorize", files={"file": ("色彩 1.jpg", CAMERA_JPEG)})
    assert r.status_code == 200
    assert r.headers["content-disposition"] == (
        "inline; filename=\"__ 1-colorized.png\"; filename*=UTF-8''%E8%89%B2%E5%BD%A9%201-colorized.png")


def test_line_wrapped_base64_of_a_photo_under_the_limit_fits_the_body_limit(model_dir: Path) -> None:
    """`base64 photo.jpg` wraps every 76 characters and JSON doubles each line break: a photo a little under the
    limit (here 2.2 MB) made a body over the old limit, and a 413 that called it too large."""
    import uvicorn

    rng = np.random.default_rng(0)
    photo = encode(Image.fromarray(rng.integers(0, 256, (900, 800, 3), dtype=np.uint8)), "PNG")
    settings = ServeSettings(max_upload_bytes=len(photo) + 100, concurrency=1, port=free_port())
    wrapped = base64.encodebytes(photo).decode()
    body = json.dumps({"instances": [{"b64": wrapped}]}).encode()
    assert len(body) > len(photo) * 4 // 3 + 64 * 1024  # over the old limit
    config = uvicorn.Config(create_app(settings, model_dir), host="127.0.0.1", port=settings.port,
                            log_level="critical")
    with serving(config), httpx.Client(base_url=f"http://127.0.0.1:{settings.port}", timeout=120) as c:
        r = c.post("/predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text[:300]
    assert (r.json()["predictions"][0]["width"], r.json()["predictions"][0]["height"]) == (800, 900)


def test_a_gif_is_refused_as_a_kind_we_do_not_read_not_as_no_image(client: httpx.Client) -> None:
    gif = encode(Image.new("P", (8, 8)), "GIF")
    r = client.post("/colorize", files={"file": ("anim.gif", gif)})
    assert (r.status_code, r.json()["detail"]) == (415, "anim.gif: not an image we read (GIF; accepted: JPEG, "
                                                        "PNG, WebP, BMP, TIFF)")


def test_a_photo_whose_client_left_while_it_waited_is_not_colorized(model_dir: Path, monkeypatch) -> None:
    """One photo in work, a second waiting whose client hangs up, a third: the pool used to colorize the second
    anyway (a page that replaced its photo, a client that timed out), before the third."""
    import uvicorn

    from chromify.inference import Colorizer

    real, seen = Colorizer.colorize_rgb, []

    def counting(self, rgb):  # the real colorizer, counting the photos it is given
        seen.append(rgb.shape[:2])
        return real(self, rgb)

    monkeypatch.setattr(Colorizer, "colorize_rgb", counting)
    settings = ServeSettings(concurrency=1, max_queue=4, port=free_port(), log_level="warning")
    base = f"http://127.0.0.1:{settings.port}"
    big = encode(Image.fromarray(data.astronaut()).resize((2400, 2400)), "PNG")  # a second or more here
    left = encode(Image.fromarray(data.camera()[:96, :128]), "PNG")
    small = encode(Image.fromarray(data.camera()[:64, :80]), "PNG")
    with serving(uvicorn.Config(create_app(settings, model_dir), **server_options(settings))):
        with ThreadPoolExecutor(2) as clients:
            first = clients.submit(httpx.post, base + "/colorize", files={"file": ("big.png", big)}, timeout=120)
            while not seen:
                time.sleep(0.02)
            body = (b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"left.png\"\r\n"
                    b"Content-Type: image/png\r\n\r\n" + left + b"\r\n--b--\r\n")
            with socket.create_connection(("127.0.0.1", settings.port)) as s:  # sent whole, then hung up
                s.sendall(b"POST /colorize HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                          b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
                time.sleep(0.3)  # its job is in line behind the big one
            last = httpx.post(base + "/colorize", files={"file": ("small.png", small)}, timeout=120)
            assert first.result().status_code == 200 and last.status_code == 200
    assert seen == [(2400, 2400), (64, 80)]  # not (96, 128): the photo of the client that left
