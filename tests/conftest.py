"""Shared fixtures: real photos from scikit-image, bad files crafted byte by byte, ingested folders."""

from __future__ import annotations

import io
import json
import re
import struct
import subprocess
import sys
import time
import zlib
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx
import numpy as np
import pytest
import requests
import requests.adapters
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
    """Answers Google Cloud REST calls in process, where the real SDKs' requests leave requests' HTTP adapter
    (patch `requests.adapters.HTTPAdapter.send` with `send`): `routes` maps (method, path regex) to (status,
    JSON body) or to an exception to raise; every call is kept in `calls` as (method, path, JSON body). Calls to
    127.0.0.1 (fake-gcs-server) go out for real; any other host, or a call no route answers, fails the test."""

    def __init__(self, *hosts: str):
        self.hosts = hosts
        self.routes: dict[tuple[str, str], object] = {}
        self.calls: list[tuple[str, str, dict | None]] = []

    def send(self, adapter, request, real_send, **kw):
        url = urlsplit(request.url)
        if url.hostname in ("127.0.0.1", "localhost"):
            return real_send(adapter, request, **kw)
        assert url.hostname in self.hosts, f"a request left the machine: {request.url}"
        path = unquote(url.path)
        body = json.loads(request.body) if request.body else None
        self.calls.append((request.method, path, body))
        for (method, pattern), answer in self.routes.items():
            if method == request.method and re.fullmatch(pattern, path):
                if isinstance(answer, Exception):
                    raise answer
                status, payload = answer
                response = requests.Response()
                response.status_code, response.url, response.request = status, request.url, request
                response._content = json.dumps(payload).encode()
                response.headers["Content-Type"] = "application/json"
                response.encoding = "utf-8"
                return response
        raise AssertionError(f"unexpected Google Cloud call {request.method} {path}")

    def answer(self, monkeypatch) -> GoogleCloudAPI:
        """Route every requests call through `send` for the rest of the test."""
        real_send = requests.adapters.HTTPAdapter.send
        monkeypatch.setattr(requests.adapters.HTTPAdapter, "send",
                            lambda adapter, request, **kw: self.send(adapter, request, real_send, **kw))
        return self
