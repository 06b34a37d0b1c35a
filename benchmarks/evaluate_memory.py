"""Peak memory of `chromify evaluate` against the size of the test split: it should not grow with the photo count.

Builds test splits of real photos (scikit-image's colour images, cropped and flipped at random into square
samples, stored as 8-bit Lab shards as preprocess writes them), exports a tiny untrained model, and runs
`evaluate` on each split in a fresh process, so each peak RSS is that run's alone (the data is made in
another, so that this process stays small: Linux counts the parent's RSS at fork into a child's peak).
FID/LPIPS are off (an empty torch hub cache), as on a machine without their weights. Without --champion it scores
gray and the candidate; with it, a third model too, as once a champion is registered (each model's rendering of a
chunk is kept until the chunk is scored, ~50 MB at 256 px).

    python benchmarks/evaluate_memory.py                     # 256 and 1024 test photos at 256 px
    python benchmarks/evaluate_memory.py --sizes 100,400,1600 --side 128
    python benchmarks/evaluate_memory.py --champion          # gray, candidate and champion
    PYTHONPATH=/tmp/old/src python benchmarks/evaluate_memory.py   # another chromify, e.g. before a change

Prints: test photos, wall seconds, peak RSS (MB), and the RSS slope in MB per test photo between the smallest
and the largest split (about 0 when memory is bounded; it was ~8 MB per 256 px photo when the split was
loaded whole). The default sizes are whole multiples of chromify.evaluate.EVAL_CHUNK (256): a split smaller
than one chunk holds fewer photos at once, which would show as a slope that is not there.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli_args import positive_int, run_main  # noqa: E402

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "colorwheel")
SHARD = 500  # samples per shard file, so the larger splits span several shards as real ones do
CHILD = """
import json, sys
import chromify.evaluate as ev
from chromify.config import GateParams
gate = GateParams(min_psnr_gain_db=-100.0, max_delta_cf=1000.0, champion_psnr_tolerance_db=100.0,
                  champion_delta_cf_tolerance=1000.0)
data, model, reports, batch, champion = sys.argv[1:6]
summary, _ = ev.evaluate(data, model, champion or None, gate, reports, batch_size=int(batch))
print(json.dumps({"module": ev.__file__, "images": summary["images"]}))
"""
PREPARE = """
import sys
sys.path.insert(0, sys.argv[1])
import evaluate_memory as bench
from pathlib import Path
tmp, side, seed = Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
bench.tiny_model(tmp / "model", side)
bench.tiny_model(tmp / "champion", side, seed=1)
for n in map(int, sys.argv[5:]):
    bench.write_split(tmp / f"data-{n}", n, side, seed)
"""


def sizes_list(text: str) -> list[int]:
    try:
        sizes = sorted({positive_int(t) for t in text.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text}: expected positive whole numbers separated by commas") from None
    return sizes


def samples(count: int, side: int, seed: int):
    """(count, 3, side, side) uint8 Lab: random square crops (half to all of the short side) of real photos,
    flipped at random, resized to `side`."""
    import numpy as np
    from PIL import Image
    from skimage import data as skdata

    from chromify.lab import quantise_lab, rgb_to_lab

    photos = [getattr(skdata, n)()[..., :3] for n in PHOTOS]
    rng = np.random.default_rng(seed)
    out = np.empty((count, 3, side, side), dtype=np.uint8)
    for i in range(count):
        rgb = photos[rng.integers(len(photos))]
        h, w, _ = rgb.shape
        s = int(rng.integers(min(h, w) // 2, min(h, w) + 1))
        y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
        crop = rgb[y : y + s, x : x + s]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        small = np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((side, side), Image.BILINEAR))
        out[i] = quantise_lab(rgb_to_lab(small)).transpose(2, 0, 1)
    return out


def write_split(root: Path, count: int, side: int, seed: int) -> Path:
    """processed/test with its shards and index.json, as preprocess writes them."""
    import numpy as np

    from chromify.io import file_sha256
    from chromify.shards import FORMAT

    split = root / "test"
    split.mkdir(parents=True)
    shards = []
    for k, lo in enumerate(range(0, count, SHARD)):
        path = split / f"test-{k:04d}.npy"
        np.save(path, samples(min(SHARD, count - lo), side, seed + k))
        shards.append({"file": path.name, "count": min(SHARD, count - lo), "sha256": file_sha256(path)})
    (split / "index.json").write_text(json.dumps({
        "format": FORMAT, "split": "test", "count": count, "shape": [3, side, side], "dtype": "uint8",
        "shards": shards}))
    return root


def tiny_model(path: Path, side: int, seed: int = 0) -> Path:
    import torch

    from chromify.models import get_model
    from chromify.train.checkpoint import export_model

    torch.manual_seed(seed)
    export_model(path, get_model("unet_s", base_width=4, depth=2),
                 {"arch": "unet_s", "model": {"base_width": 4, "depth": 2}, "size": side})
    return path


def run_child(data: Path, model: Path, reports: Path, batch_size: int, env: dict,
              champion: Path | None = None) -> tuple[float, float, dict]:
    """(wall s, peak RSS MB, what the child printed) of one `evaluate` in a fresh interpreter."""
    logs = reports.parent / f"{reports.name}.log"
    with open(logs.with_suffix(".out"), "w") as out, open(logs, "w") as err:
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(data), str(model), str(reports),
                                 str(batch_size), str(champion or "")], env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (not Popen.wait: it would reap it)
        wall = time.monotonic() - t0
    proc.returncode = code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"evaluate on {data} failed (exit {code}):\n{logs.read_text()[-3000:]}")
    said = json.loads(logs.with_suffix(".out").read_text().strip().splitlines()[-1])
    return wall, usage.ru_maxrss / 1024.0, said  # ru_maxrss: KB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=sizes_list, default=[256, 1024], help="test photos per run, e.g. 256,1024")
    ap.add_argument("--side", type=positive_int, default=256, help="sample side in pixels (preprocess: 256)")
    ap.add_argument("--batch-size", type=positive_int, default=16, help="evaluate.batch_size (params.yaml: 16)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--champion", action="store_true", help="score a champion too (three models, not two)")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="keep the splits, model and reports here (a new folder; default: a temp dir, removed)")
    args = ap.parse_args()
    if args.side < 8 or args.side % 4:
        ap.error(f"--side {args.side}: must be a multiple of 4, at least 8 (the model halves it twice)")
    if args.workdir is not None and args.workdir.exists():
        ap.error(f"--workdir {args.workdir}: already exists; name a new folder")

    with tempfile.TemporaryDirectory(prefix="evaluate-memory-") as tmp:
        tmp = Path(tmp) if args.workdir is None else args.workdir.resolve()
        tmp.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "TORCH_HOME": str(tmp / "torch-home")}  # no FID/LPIPS weights, nothing downloaded
        env.pop("CHROMIFY_LPIPS_WEIGHTS", None)
        here = str(Path(__file__).resolve().parent)
        subprocess.run([sys.executable, "-c", PREPARE, here, str(tmp), str(args.side), str(args.seed),
                        *map(str, args.sizes)], env=env, check=True)
        rows = []
        for n in args.sizes:
            wall, rss, said = run_child(tmp / f"data-{n}", tmp / "model", tmp / f"reports-{n}", args.batch_size,
                                        env, tmp / "champion" if args.champion else None)
            rows.append((n, wall, rss))
            print(f"  evaluated {n} photos ({'3' if args.champion else '2'} models) with {said['module']}",
                  file=sys.stderr, flush=True)

    print(f"{'test photos':>11} | {'wall s':>7} | {'peak RSS MB':>11}")
    for n, wall, rss in rows:
        print(f"{n:>11} | {wall:>7.1f} | {rss:>11.0f}")
    if len(rows) > 1:
        (n0, _, r0), (n1, _, r1) = rows[0], rows[-1]
        print(f"RSS slope: {(r1 - r0) / (n1 - n0):.3f} MB per test photo ({n0} → {n1} photos, {args.side} px)")


if __name__ == "__main__":
    run_main(main)
