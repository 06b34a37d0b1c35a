"""Shared fixtures: real photos from scikit-image, bad files crafted byte by byte, ingested folders."""

from __future__ import annotations

import http.server
import io
import json
import re
import struct
import subprocess
import sys
import threading
import time
import zlib
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    """Three real colour photos, (H, W, 3) uint8."""
    from skimage import data

    return {"astronaut": data.astronaut(), "chelsea": data.chelsea(), "coffee": data.coffee()}


def png_bytes(width: int, height: int, bit_depth: int, colour_type: int, raw: bytes) -> bytes:
    """A PNG assembled chunk by chunk: any header a test needs, whatever the pixel data says."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


@pytest.fixture
def crafted_png():
    """png_bytes(width, height, bit_depth, colour_type, raw) → bytes."""
    return png_bytes


def png16(rgb: np.ndarray) -> bytes:
    """16-bit RGB (or gray, for 2-D input) PNG of an 8-bit image, each value v stored as v * 257."""
    arr = rgb.astype(">u2") * 257
    h, w = arr.shape[:2]
    rows = arr.reshape(h, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    return png_bytes(w, h, 16, 2 if rgb.ndim == 3 else 0, raw)


def bomb_png(side: int = 100_000) -> bytes:
    """A 60-byte PNG whose header claims side x side RGB pixels (30 GB for 100,000)."""
    return png_bytes(side, side, 8, 2, b"\x00" * 16)


# sRGB's colorants adapted to D50, the ICC connection space (IEC 61966-2-1 / ICC sRGB profile).
SRGB_D50 = {"r": (0.4361, 0.2225, 0.0139), "g": (0.3851, 0.7169, 0.0971), "b": (0.1431, 0.0606, 0.7141)}


def icc_rgb_profile(description: str, red, green, blue, gamma: float = 2.2) -> bytes:
    """A version-2 matrix/TRC RGB display profile assembled tag by tag (XYZ colorants at D50, one gamma)."""

    def s15(v: float) -> bytes:
        return struct.pack(">i", round(v * 65536))

    def xyz(v) -> bytes:
        return b"XYZ \0\0\0\0" + b"".join(s15(c) for c in v)

    text = description.encode("ascii") + b"\0"
    desc = b"desc\0\0\0\0" + struct.pack(">I", len(text)) + text + b"\0" * 8 + b"\0\0\0" + b"\0" * 67
    curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"
    tags = [(b"desc", desc), (b"wtpt", xyz((0.9642, 1.0, 0.8249))), (b"rXYZ", xyz(red)), (b"gXYZ", xyz(green)),
            (b"bXYZ", xyz(blue)), (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve),
            (b"cprt", b"text\0\0\0\0" + b"none\0\0\0\0")]
    table, body = b"", b""
    offset = 128 + 4 + 12 * len(tags)
    for sig, data in tags:
        data += b"\0" * (-len(data) % 4)
        table += sig + struct.pack(">II", offset + len(body), len(data))
        body += data
    size = offset + len(body)
    header = (struct.pack(">I", size) + b"\0" * 4 + struct.pack(">I", 0x02100000) + b"mntrRGB XYZ " + b"\0" * 12
              + b"acsp" + b"\0" * 24 + struct.pack(">I", 0) + s15(0.9642) + s15(1.0) + s15(0.8249) + b"\0" * 48)
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


@pytest.fixture(scope="session")
def swapped_profile() -> bytes:
    """A profile whose red and green primaries are sRGB's green and red: converting it to sRGB swaps R and G."""
    return icc_rgb_profile("Chromify test: red-green swapped", SRGB_D50["g"], SRGB_D50["r"], SRGB_D50["b"])


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def write_bad_folder(root: Path, photos: dict[str, np.ndarray]) -> dict[str, str | None]:
    """Good and bad files side by side; returns relative path → expected reject reason (None: accepted)."""
    astro, chelsea, coffee = photos["astronaut"], photos["chelsea"], photos["coffee"]
    palette = Image.fromarray(astro).quantize(64)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned 90° anticlockwise: viewers turn it clockwise to show it upright
    files: dict[str, tuple[bytes, str | None]] = {
        "astronaut.png": (encode(Image.fromarray(astro), "PNG"), None),
        "chelsea.jpg": (encode(Image.fromarray(chelsea), "JPEG", quality=92), None),
        "coffee.png": (encode(Image.fromarray(coffee), "PNG"), None),
        "café ☕ 日本.png": (encode(Image.fromarray(coffee[::-1, ::-1].copy()), "PNG"), None),
        "cmyk.jpg": (encode(Image.fromarray(chelsea[:, ::-1].copy()).convert("CMYK"), "JPEG", quality=92), None),
        "sixteen_bit.png": (png16(coffee[50:350, 100:500]), None),
        "palette_alpha.png": (encode(palette, "PNG", transparency=0), None),
        "rotated_exif.jpg": (encode(Image.fromarray(np.rot90(chelsea).copy()), "JPEG", quality=92, exif=exif), None),
        "sub/dir/coffee_crop.webp": (encode(Image.fromarray(coffee[:300, :300].copy()), "WEBP", quality=90), None),
        "truncated.jpg": (encode(Image.fromarray(astro[:, ::-1].copy()), "JPEG")[:20_000], "undecodable"),
        "empty.jpg": (b"", "empty"),
        "notes.jpg": (b"Not a photo: just text with an image's name.\n", "not_image"),
        "tiny.png": (encode(Image.new("RGB", (1, 1), (200, 30, 30)), "PNG"), "too_small"),
        "bomb.png": (bomb_png(), "too_many_pixels"),
        "gray.jpg": (encode(Image.fromarray(astro).convert("L").convert("RGB"), "JPEG"), "grayscale"),
        "gray16.png": (png16(np.asarray(Image.fromarray(chelsea).convert("L"))), "grayscale"),
        "astronaut_copy.png": (encode(Image.fromarray(astro), "PNG"), "duplicate"),
    }
    for rel, (data, _) in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "readme.txt").write_text("not listed: no image suffix\n")
    return {rel: reason for rel, (_, reason) in files.items()}


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory, photos) -> tuple[Path, dict[str, str | None]]:
    root = tmp_path_factory.mktemp("bad_folder")
    return root, write_bad_folder(root, photos)


def write_derived_jpegs(root: Path, photos: dict[str, np.ndarray], n: int, seed: int = 0) -> list[Path]:
    """n distinct 320x240 JPEGs cut from the photos at random places, turned and flipped at random."""
    rng = np.random.default_rng(seed)
    sources = list(photos.values())
    paths = []
    for k in range(n):
        src = sources[k % len(sources)]
        h, w = src.shape[:2]
        ch, cw = int(h * rng.uniform(0.5, 0.9)), int(w * rng.uniform(0.5, 0.9))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = np.rot90(src[y : y + ch, x : x + cw], k=int(rng.integers(0, 4)))
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        img = Image.fromarray(np.ascontiguousarray(crop)).resize((320, 240), Image.BILINEAR)
        path = root / f"derived_{k:04d}.jpg"
        img.save(path, "JPEG", quality=int(rng.integers(80, 96)))
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def derived_raw(tmp_path_factory, photos) -> Path:
    """240 derived JPEGs, ingested (train ~80%, val and test ~10% each): the raw dir with its manifest."""
    from chromify.config import IngestParams
    from chromify.ingest import ingest

    base = tmp_path_factory.mktemp("derived")
    (base / "photos").mkdir()
    write_derived_jpegs(base / "photos", photos, 240)
    params = IngestParams(source=str(base / "photos"), out_dir=str(base / "raw"), val_fraction=0.1,
                          test_fraction=0.1)
    counts = ingest(params, base / "reports", workers=1)
    assert counts["accepted"] == 240
    return base / "raw"


@pytest.fixture(scope="session")
def small_shards(tmp_path_factory, derived_raw) -> Path:
    """The derived photos as 32 px Lab shards of 10 images each: the processed dir."""
    from chromify import shards
    from chromify.ingest import read_manifest

    out = tmp_path_factory.mktemp("small_shards")
    mb = 10 * 3 * 32 * 32 / 2**20
    shards.preprocess(read_manifest(derived_raw), derived_raw, out, 32, mb, workers=1)
    shards.write_index(out, 32)
    return out


TINY_MODEL = {"arch": "unet_s", "base_width": 8, "depth": 3, "norm": "batch", "upsample": "bilinear",
              "pretrained": False}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """An untrained but complete exported model (64 px, 8 channels): what serving tests load."""
    import torch

    from chromify.models import get_model
    from chromify.train.checkpoint import export_model

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("model") / "tiny"
    export_model(out, get_model("unet_s", **TINY_MODEL),
                 {"format": "chromify-model-v1", "arch": "unet_s", "model": TINY_MODEL, "size": 64})
    return out


@contextmanager
def _chromify_serve(args: list[str], env: dict[str, str], port: int, log_path: Path, health: str = "/healthz"):
    """`chromify serve ARGS` in a child process, yielded as its base URL once `health` answers; stopped after."""
    log = log_path.open("w+")
    proc = subprocess.Popen([sys.executable, "-m", "chromify.cli", "serve", *args], env=env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.seek(0) or log.read()
            try:
                if httpx.get(base + health, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not become healthy"
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.fixture(scope="session")
def chromify_serve():
    """A context manager that runs a real `chromify serve` on 127.0.0.1 (see `_chromify_serve`)."""
    return _chromify_serve


class GoogleCloudAPI:
    """Google Cloud's REST APIs (Vertex AI, the Cloud Storage JSON API) served by a real HTTP server on 127.0.0.1, at
    which the real SDKs are pointed through their own settings (`vertex`, `storage`): `routes` maps (method, path
    regex) to the (status, JSON body) answered; every call is kept in `calls` as (method, path, JSON body, or the
    raw bytes of a body that is not JSON). A call no route answers gets 501 and is kept in `unanswered`, as is any
    request for another host (requests sends those to this server as its proxy): the fixture's teardown fails the
    test on either."""

    LOCAL = "127.0.0.1,localhost"

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], tuple[int, dict]] = {}
        self.calls: list[tuple[str, str, dict | bytes | None]] = []
        self.unanswered: list[str] = []
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def serve(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.command == "CONNECT" or not self.path.startswith("/"):  # a proxy request: another host
                    api.unanswered.append(f"a request left for another host: {self.command} {self.path}")
                    return self.reply(501, {"error": {"code": 501, "message": "not a 127.0.0.1 request"}})
                path = unquote(urlsplit(self.path).path)
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw
                api.calls.append((self.command, path, body))
                for (method, pattern), answer in list(api.routes.items()):
                    if method == self.command and re.fullmatch(pattern, path):
                        return self.reply(*answer)
                api.unanswered.append(f"unexpected Google Cloud call {self.command} {path}")
                self.reply(501, {"error": {"code": 501, "message": f"no route for {self.command} {path}",
                                           "status": "UNIMPLEMENTED"}})

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_CONNECT = serve

            def reply(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=UTF-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def refuse_other_hosts(self, monkeypatch) -> None:
        """requests' proxy settings name this server for every host but 127.0.0.1: a request for any other host
        (googleapis.com) comes here as a proxy request, is refused and fails the test, and never leaves."""
        for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
            monkeypatch.setenv(name, self.url)
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.setenv(name, self.LOCAL)

    def vertex(self, monkeypatch, **init) -> GoogleCloudAPI:
        """Point google-cloud-aiplatform at this server for the rest of the test: `aiplatform.init` with the REST
        transport and this server as its API endpoint (and `init`'s other arguments); the SDK's global settings
        are restored after the test."""
        from google.cloud import aiplatform
        from google.cloud.aiplatform import initializer

        for name in ("_project", "_location", "_credentials", "_api_transport", "_api_endpoint"):
            monkeypatch.setattr(initializer.global_config, name, getattr(initializer.global_config, name))
        aiplatform.init(api_transport="rest", api_endpoint=self.url, **init)
        self.refuse_other_hosts(monkeypatch)
        return self

    def storage(self, monkeypatch) -> GoogleCloudAPI:
        """Point google-cloud-storage (and so the Vertex SDK's own bucket calls) at this server for the rest of the
        test, as at an emulator (STORAGE_EMULATOR_HOST)."""
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", self.url)
        self.refuse_other_hosts(monkeypatch)
        return self


@pytest.fixture
def google_cloud_api():
    """A `GoogleCloudAPI` on 127.0.0.1 for one test; the test fails if any call went unanswered."""
    api = GoogleCloudAPI()
    yield api
    api.close()
    assert not api.unanswered, "\n".join(api.unanswered)
