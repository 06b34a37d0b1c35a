"""Serving benchmark: CPU latency of POST /colorize for a 512² and a 2048² photo, then a load run.

A real `chromify serve` on 127.0.0.1 in a child process; the clients run in this one (on the same cores, as a
co-located load balancer or test harness would). Usage:

    python benchmarks/serve.py                       # champion, render size 256, 1,000 requests × 32 clients
    python benchmarks/serve.py --model path/to/model --requests 200 --json reports/bench_serve.json
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import io
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from cli_args import int_at_least, non_negative_int, positive_int, run_main
from PIL import Image

PHOTOS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "photos"


def percentile(times: list[float], q: float) -> float:
    """One definition for every percentile in the tables (linear interpolation), so p50 <= p90 <= p99."""
    return float(np.percentile(times, q))


def resolve_model(ref: str, params: str, scratch: Path) -> tuple[Path, str]:
    """(model dir, how it was obtained): a directory, a registry ref, or, when no --model was named and nothing is
    registered, an untrained model of params.yaml's architecture (the same cost per request as a trained one)."""
    if Path(ref).is_dir():
        return Path(ref), f"directory {ref}"
    from dataclasses import asdict

    from chromify.config import load_params_named
    from chromify.errors import ChromifyError, ConfigError
    from chromify.registry import LocalRegistry

    p = load_params_named(params)  # a mistyped --params is refused, not replaced by the defaults
    try:
        reg = LocalRegistry(p.register.registry_dir, p.register.model_name)
        version = reg.resolve(ref)
        return reg.version_dir(version), f"registry {reg.name} {ref} = v{version}"
    except ChromifyError as exc:
        if ref != "champion":  # a named model that is not there: a typo must not benchmark another model
            raise ConfigError(f"--model {ref}: neither a model folder nor a registered version ({exc})") from None
        print(f"no registered model ({exc}); exporting an untrained {p.model.arch} of params.yaml's model section",
              file=sys.stderr)
    from chromify.models import get_model
    from chromify.train.checkpoint import export_model

    model = asdict(p.model)
    out = scratch / "untrained"
    export_model(out, get_model(p.model.arch, **model), {"format": "chromify-model-v1", "arch": p.model.arch,
                                                        "model": model, "size": 256})
    return out, f"untrained {p.model.arch} (head {p.model.head}, base_width {p.model.base_width})"


def source_photo() -> tuple[Image.Image, str]:
    """(a real photo in gray, where it came from): the first of ../shared/data/photos, else skimage's astronaut."""
    candidates = sorted(PHOTOS.glob("*.jpg")) if PHOTOS.is_dir() else []
    if candidates:
        return Image.open(candidates[0]).convert("L"), str(candidates[0].resolve())
    from skimage import data

    return (Image.fromarray(data.astronaut()).convert("L"),
            f"scikit-image's astronaut (no .jpg in {PHOTOS.resolve()})")


def test_photo(img: Image.Image, side: int) -> bytes:
    """`img` resized to side × side, as a JPEG."""
    buf = io.BytesIO()
    img.resize((side, side), Image.BICUBIC).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


class RssSampler(threading.Thread):
    """Samples the server's RSS every 50 ms: the kernel's VmHWM gives the peak, this shows it was not a spike."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.samples, self.stop = pid, [], threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.05):
            try:
                self.samples.append(rss_bytes(self.pid))
            except OSError:
                return


def start_server(model: Path, render_size: int, concurrency: int | None, log: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "chromify.cli", "serve", "--model", str(model), "--host", "127.0.0.1",
           "--port", str(port), "--render-size", str(render_size)]
    if concurrency:
        cmd += ["--concurrency", str(concurrency)]
    proc = subprocess.Popen(cmd, env={**os.environ, "CHROMIFY_LOG_LEVEL": "warning"}, stdout=log.open("w"),
                            stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"server exited:\n{log.read_text()}")
        try:
            if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("server did not become healthy in 180 s")
        time.sleep(0.2)


def latency(base: str, photo: bytes, fmt: str, runs: int) -> dict[str, float]:
    """Sequential requests, one client: what one person waits for."""
    times, server = [], []
    with httpx.Client(base_url=base, timeout=120) as client:
        for i in range(runs + 3):
            t0 = time.perf_counter()
            r = client.post("/colorize", files={"file": ("photo.jpg", photo)}, data={"format": fmt})
            elapsed = time.perf_counter() - t0
            r.raise_for_status()
            if i >= 3:  # the first requests warm allocators and oneDNN's kernel cache
                times.append(elapsed * 1000)
                server.append(float(r.headers["server-timing"].split("dur=")[1]))
    times.sort()
    return {"p50_ms": percentile(times, 50), "p90_ms": percentile(times, 90), "min_ms": min(times),
            "server_p50_ms": statistics.median(server), "bytes_out": len(r.content)}


async def load(base: str, photo: bytes, requests: int, clients: int) -> dict[str, float]:
    """`clients` concurrent clients share `requests` requests; every answer must be a 200 with a PNG."""
    todo = iter(range(requests))
    errors: list[str] = []
    times: list[float] = []

    async def client_loop(client: httpx.AsyncClient) -> None:
        for _ in todo:
            t0 = time.perf_counter()
            try:
                r = await client.post("/colorize", files={"file": ("photo.jpg", photo)})
                if r.status_code != 200 or not r.content.startswith(b"\x89PNG"):
                    errors.append(f"{r.status_code} {r.text[:80]}")
            except httpx.HTTPError as exc:
                errors.append(type(exc).__name__)
            times.append((time.perf_counter() - t0) * 1000)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    t0 = time.perf_counter()
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
    wall = time.perf_counter() - t0
    times.sort()
    return {"requests": requests, "clients": clients, "errors": len(errors), "error_examples": errors[:3],
            "wall_s": wall, "throughput_rps": requests / wall, "p50_ms": percentile(times, 50),
            "p99_ms": percentile(times, 99)}


def breakdown(model: Path, render_size: int, photo: bytes, runs: int = 5) -> dict[str, float]:
    """Where one request's time goes, in this process (torch on all cores, like a lone request on the server)."""
    import torch

    from chromify.colorize import encode_image
    from chromify.decode import open_checked, to_srgb
    from chromify.inference import Colorizer, merge_full_resolution

    col = Colorizer(model, device="cpu", render_size=render_size)
    stages: dict[str, list[float]] = {k: [] for k in ("decode", "resize", "model", "merge", "png", "jpeg")}
    for i in range(runs + 2):
        t = [time.perf_counter()]
        rgb = np.asarray(to_srgb(open_checked(photo, "photo", 10**9), "photo"))
        t.append(time.perf_counter())
        lum = col.model_input(rgb)
        t.append(time.perf_counter())
        ab = col.predict_ab(torch.from_numpy(lum)[None, None]).numpy()[0]
        t.append(time.perf_counter())
        out = merge_full_resolution(rgb, ab, workers=col.merge_workers)
        t.append(time.perf_counter())
        encode_image(out, "png", fast=True)
        t.append(time.perf_counter())
        encode_image(out, "jpeg")
        t.append(time.perf_counter())
        if i >= 2:
            for name, a, b in zip(stages, t, t[1:], strict=False):
                stages[name].append((b - a) * 1000)
    return {k: statistics.median(v) for k, v in stages.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="champion", help="registry alias/version or model directory")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--render-size", type=int_at_least(16), default=256)  # what the server accepts
    ap.add_argument("--concurrency", type=positive_int, default=None, help="server's --concurrency (default: its own)")
    ap.add_argument("--runs", type=positive_int, default=20, help="sequential requests per latency cell")
    ap.add_argument("--requests", type=non_negative_int, default=1000, help="load run size; 0 skips the load run")
    ap.add_argument("--clients", type=positive_int, default=32)
    ap.add_argument("--no-breakdown", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="chromify-bench-"))
    atexit.register(shutil.rmtree, scratch, True)  # however the run ends (the server's log is printed first)
    model, model_note = resolve_model(args.model, args.params, scratch)
    source, source_note = source_photo()
    photos = {side: test_photo(source, side) for side in (512, 2048)}
    result: dict = {"machine": {"cpus": len(os.sched_getaffinity(0)), "cpu": platform.processor() or platform.machine(),
                                "load_avg_at_start": os.getloadavg()[0], "gpu": False},
                    "model": model_note, "render_size": args.render_size, "test_photo": source_note}
    proc, base = start_server(model, args.render_size, args.concurrency, scratch / "server.log")
    try:
        result["server_rss_idle_mb"] = rss_bytes(proc.pid) / 2**20
        result["latency"] = {f"{side}x{side} {fmt}": latency(base, photos[side], fmt, args.runs)
                             for side in photos for fmt in ("png", "jpeg")}
        result["server_rss_after_latency_mb"] = rss_bytes(proc.pid) / 2**20
        if args.requests:
            sampler = RssSampler(proc.pid)
            sampler.start()
            result["load"] = asyncio.run(load(base, photos[512], args.requests, args.clients))
            sampler.stop.set()
            sampler.join()
            result["load"]["server_rss_peak_mb"] = rss_bytes(proc.pid, "VmHWM") / 2**20
            result["load"]["server_rss_sampled_max_mb"] = max(sampler.samples, default=0) / 2**20
            result["load"]["server_rss_end_mb"] = rss_bytes(proc.pid) / 2**20
        result["server_healthy_after"] = httpx.get(base + "/healthz", timeout=10).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    if not args.no_breakdown:
        result["breakdown_2048_ms"] = breakdown(model, args.render_size, photos[2048])

    m = result["machine"]
    print(f"\nmachine: {m['cpus']} CPU cores ({m['cpu']}), no GPU, load average at start {m['load_avg_at_start']:.1f}")
    print(f"model: {result['model']}, render size {result['render_size']}; test photo {result['test_photo']}\n")
    print("| photo | format | p50 ms | p90 ms | min ms | server p50 ms | response bytes |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for cell, r in result["latency"].items():
        size, fmt = cell.split()
        print(f"| {size} | {fmt} | {r['p50_ms']:.0f} | {r['p90_ms']:.0f} | {r['min_ms']:.0f} | "
              f"{r['server_p50_ms']:.0f} | {r['bytes_out']:,} |")
    ld = result.get("load")
    print(f"\nserver RSS: idle {result['server_rss_idle_mb']:.0f} MB, after latency runs "
          f"{result['server_rss_after_latency_mb']:.0f} MB")
    if ld:
        print(f"load: {ld['requests']} requests (512², PNG), {ld['clients']} concurrent clients: {ld['errors']} "
              f"errors, {ld['throughput_rps']:.1f} req/s, p50 {ld['p50_ms']:.0f} ms, p99 {ld['p99_ms']:.0f} ms, "
              f"{ld['wall_s']:.0f} s; server RSS peak (VmHWM) {ld['server_rss_peak_mb']:.0f} MB, sampled max "
              f"{ld['server_rss_sampled_max_mb']:.0f} MB, at the end {ld['server_rss_end_mb']:.0f} MB")
    if "breakdown_2048_ms" in result:
        print("2048² in-process breakdown (ms): " + ", ".join(f"{k} {v:.0f}"
                                                           for k, v in result["breakdown_2048_ms"].items()))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if (ld and ld["errors"]) or not result["server_healthy_after"]:
        raise SystemExit(1)


if __name__ == "__main__":
    run_main(main)
