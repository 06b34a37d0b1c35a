"""Preprocess throughput per core: the naive path, the decode + resize floor, and `chromify.shards.preprocess`.

    python benchmarks/preprocess.py                       # ../shared/data/photos, 200 photos, 256 px
    python benchmarks/preprocess.py DIR --count 200 --sizes 256,128 --rounds 3

All three run in this one process on the same photos, read from disk (page cache) each time:
  naive  PIL open + short-side resize + centre crop, skimage.color.rgb2lab, one float32 .npy per image;
  floor  chromify's own decode + resize only (libjpeg-turbo with DCT-domain downscaling for 3-channel JPEGs, an
         embedded profile applied after the resize, PIL for the rest; torch's vectorised bilinear resize), nothing
         converted to Lab or written: what no Lab conversion or storage can beat;
  ours   `preprocess(workers=1)`: decode, resize, Lab through the 2^24-entry table, 8-bit shards with checksums.
Rounds alternate between the three so that a busy machine slows them alike; the best round of each is reported,
as rates from wall time and from this process's CPU time (images per CPU-second, i.e. per core). The one-time
Lab table build (0.3-1 s a process) is shown apart. A last line runs `preprocess` with all cores, for scale.
BLAS is held to one thread (set before numpy loads), so that "per core" means one core for every path.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy: skimage's rgb2lab would use BLAS threads
os.environ.setdefault("OMP_NUM_THREADS", "1")
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np  # noqa: E402
from cli_args import comma_list, folder, positive_int, run_main  # noqa: E402

# A string, so that argparse applies `folder` to it too: a missing ../shared is one line naming it.
DEFAULT_DIR = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "photos")


def pick(folder: Path, count: int) -> list[Path]:
    from chromify.decode import IMAGE_SUFFIXES

    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    step = max(1, len(files) // count)
    return files[::step][:count]


def naive(paths: list[Path], size: int, out: Path) -> None:
    from PIL import Image
    from skimage.color import rgb2lab

    for k, path in enumerate(paths):
        img = Image.open(path).convert("RGB")
        w, h = img.size
        scale = size / min(w, h)
        img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
        left, top = (img.size[0] - size) // 2, (img.size[1] - size) // 2
        rgb = np.asarray(img.crop((left, top, left + size, top + size)))
        np.save(out / f"{k:05d}.npy", rgb2lab(rgb).astype(np.float32))


def floor(rows: list[dict], raw: Path, size: int) -> None:
    from chromify.decode import load_square

    for r in rows:
        load_square((raw / r["path"]).read_bytes(), r["uri"], size, r["decoder"], r["orientation"])


def ours(rows: list[dict], raw: Path, size: int, out: Path, workers: int = 1) -> None:
    from chromify import shards

    shards.preprocess(rows, raw, out, size, shard_mb=64, workers=workers)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(fn, *args) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all its threads, and its waited-for children).

    Not os.times, which counts 10 ms ticks: a few photos' work read 0 s, and at the default 200 photos one tick is
    2-3 % of the floor's and ours' CPU time. Children: the pool of `preprocess(workers>1)`, once it is shut down.
    """
    c0, k0, w0 = time.process_time(), children_cpu(), time.perf_counter()
    fn(*args)
    w1, c1, k1 = time.perf_counter(), time.process_time(), children_cpu()
    return w1 - w0, (c1 - c0) + (k1 - k0)


def run(paths: list[Path], size: int, rounds: int, work: Path) -> None:
    from chromify import shards
    from chromify.config import IngestParams
    from chromify.ingest import ingest, read_manifest

    src = work / "photos"
    if not src.exists():
        src.mkdir()
        for p in paths:
            os.symlink(p.resolve(), src / p.name)
        ingest(IngestParams(source=str(src), out_dir=str(work / "raw"), min_side=1, min_chroma=0.0), work / "rep")
    raw = work / "raw"
    by_name = {Path(r["uri"]).name: r for r in read_manifest(raw)}
    paths = [p for p in paths if p.name in by_name]  # the same photos for all three
    rows = [by_name[p.name] for p in paths]
    n, jpeg = len(rows), sum(by_name[p.name]["decoder"].startswith("jpeg-turbo") for p in paths)
    shards._LAB8_TABLE = None  # ingest built it (for chroma): time a fresh build
    table_wall, table_cpu = timed(shards.lab8_table)
    # One untimed pass of each path over one photo: the decoders' and torch's one-time set-up is not a rate (with
    # --rounds 1 it made the floor slower than the naive path).
    for name, fn in (("naive", lambda o: naive(paths[:1], size, o)), ("floor", lambda o: floor(rows[:1], raw, size)),
                     ("ours", lambda o: ours(rows[:1], raw, size, o))):
        (work / f"warm-{name}").mkdir()
        fn(work / f"warm-{name}")
        shutil.rmtree(work / f"warm-{name}")

    best: dict[str, tuple[float, float]] = {}
    for k in range(rounds):
        for name in ("naive", "floor", "ours"):
            out = work / f"{name}-{k}"
            out.mkdir()
            fn = {"naive": lambda o=out: naive(paths, size, o), "floor": lambda: floor(rows, raw, size),
                  "ours": lambda o=out: ours(rows, raw, size, o)}[name]
            wall, cpu = timed(fn)
            prev = best.get(name, (np.inf, np.inf))
            best[name] = (min(prev[0], wall), min(prev[1], cpu))
            shutil.rmtree(out)
    from chromify.errors import ConfigError

    for name, (wall, cpu) in best.items():
        if not (wall > 0 and cpu > 0):  # a rate would divide by it
            raise ConfigError(f"{name}: {n} photos at {size} px took {wall:g} s wall, {cpu:g} s CPU: too little to "
                              "time; pass a bigger --count")
    cores = os.cpu_count() or 1
    wall_all, _ = timed(lambda: ours(rows, raw, size, work / "parallel", workers=cores))
    shutil.rmtree(work / "parallel")

    print(f"\n{n} photos ({jpeg} through libjpeg-turbo, {n - jpeg} through PIL), {size} px, one process, "
          f"best of {rounds} rounds; Lab table built once per process in {table_wall:.2f} s\n")
    print("| path | images/s (wall) | images/s per CPU-second | × naive | % of floor |")
    print("|---|---:|---:|---:|---:|")
    rate = {name: (n / w, n / c) for name, (w, c) in best.items()}
    for name, label in (("naive", "naive: PIL + skimage rgb2lab + .npy each"),
                        ("floor", "floor: decode + resize only"), ("ours", "ours: preprocess(workers=1)")):
        w, c = rate[name]
        print(f"| {label} | {w:.0f} | {c:.0f} | {c / rate['naive'][1]:.1f} | {100 * c / rate['floor'][1]:.0f}% |")
    w, c = n / (best["ours"][0] + table_wall), n / (best["ours"][1] + table_cpu)
    print(f"| ours, counting the table build ({n} photos only) | {w:.0f} | {c:.0f} | {c / rate['naive'][1]:.1f} | "
          f"{100 * c / rate['floor'][1]:.0f}% |")
    print(f"| ours: preprocess(workers={cores}), all cores | {n / wall_all:.0f} | | | |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", nargs="?", type=folder, default=DEFAULT_DIR)
    ap.add_argument("--count", type=positive_int, default=200)
    ap.add_argument("--sizes", type=comma_list(positive_int), default="256,128", help="comma-separated px")
    ap.add_argument("--rounds", type=positive_int, default=3)
    args = ap.parse_args()

    paths = pick(args.folder, args.count)
    print(f"{len(paths)} photos from {args.folder}")
    work = Path(tempfile.mkdtemp(prefix="chromify-bench-"))
    try:
        for size in args.sizes:
            run(paths, size, args.rounds, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    run_main(main)
