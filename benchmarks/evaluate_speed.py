"""CPU time of evaluate's per-image scoring per test photo: the code before the fast path against chromify.metrics
now, side by side in one process on the same images, and how far apart their numbers are.

Each photo is scored against three renderings, as `chromify evaluate` does with a champion: gray (ab = 0) and two
colourings made from its own ab (washed out, and turned 40° in hue), standing in for the two models: what a model
predicts does not change what scoring costs. The images are the first N of ../shared/data/photos (short side to
256 px, centre crop) when that folder is there, else random crops of scikit-image's sample photos; either way they
go through the 8-bit Lab of the shards and are rendered to 8-bit RGB as evaluate renders them.

    python benchmarks/evaluate_speed.py                        # 200 photos, 3 rounds
    python benchmarks/evaluate_speed.py --photos 50 --rounds 5

Before: `reference_image_metrics` of tests/metric_references.py, chromify.metrics as it was (SSIM from a float64
summed-area table, CIEDE2000 with a trigonometric call per angle, whole-image arrays), fed float32 k / 255 images as
evaluate fed it; the tests pin the fast path to the same code.
After: a PreparedTruth per photo and image_metrics_8bit per rendering. The two alternate within each round so that
both see the same machine load. Prints per-photo CPU ms of each (median and range over the rounds), the speed-up,
and the largest absolute and relative difference of every metric over all photos and renderings.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "tests")]
from cli_args import folder, positive_int, run_main  # noqa: E402
from metric_references import reference_image_metrics  # noqa: E402

SIDE = 256  # the stored size of preprocessed samples
PHOTOS = (ROOT / ".." / "shared" / "data" / "photos").resolve()
SAMPLE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry")
METRICS = ("psnr", "ssim", "delta_e2000", "colourfulness", "colourfulness_truth")


# --- images ------------------------------------------------------------------------------------------------------


def square(rgb: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    """Short side to SIDE px and a centre crop; with rng, a random square crop (half to all of the short side)."""
    from PIL import Image

    h, w, _ = rgb.shape
    s = min(h, w) if rng is None else int(rng.integers(min(h, w) // 2, min(h, w) + 1))
    if rng is None:
        y, x = (h - s) // 2, (w - s) // 2
    else:
        y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
    crop = np.ascontiguousarray(rgb[y : y + s, x : x + s, :3])
    return np.asarray(Image.fromarray(crop).resize((SIDE, SIDE), Image.BILINEAR))


def test_photos(count: int, photos: Path) -> tuple[list[np.ndarray], str]:
    """(count (SIDE, SIDE, 3) uint8 photos, where they came from)."""
    from PIL import Image

    files = sorted(p for p in photos.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"}) if photos.is_dir() \
        else []
    if files:
        picked = files[:count]
        return [square(np.asarray(Image.open(f).convert("RGB")), None) for f in picked], f"{len(picked)} of {photos}"
    from skimage import data as skdata

    rng = np.random.default_rng(0)
    samples = [getattr(skdata, n)() for n in SAMPLE_PHOTOS]
    images = [square(samples[rng.integers(len(samples))], rng) for _ in range(count)]
    why = "has no .jpg, .jpeg or .png photos" if photos.is_dir() else "not found"
    return images, f"{count} random crops of scikit-image's sample photos ({photos} {why})"


def renderings(photo: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """(truth, [gray, washed out, hue-turned]) as 8-bit RGB, rendered from the shard encoding as evaluate does."""
    from chromify.lab import dequantise_lab, lab_to_rgb8, quantise_lab, rgb_to_lab

    lab = dequantise_lab(quantise_lab(rgb_to_lab(photo)))
    turn = np.radians(40.0)
    rotation = np.array([[np.cos(turn), np.sin(turn)], [-np.sin(turn), np.cos(turn)]], dtype=np.float32)
    preds = []
    for ab in (0.0, 0.5 * lab[..., 1:], lab[..., 1:] @ rotation):
        pred = lab.copy()
        pred[..., 1:] = ab
        preds.append(lab_to_rgb8(pred))
    return lab_to_rgb8(lab), preds


# --- timing ------------------------------------------------------------------------------------------------------


def score_before(cases: list[tuple[np.ndarray, list[np.ndarray]]]) -> list[dict[str, float]]:
    return [reference_image_metrics(pred, truth) for truth, preds in cases for pred in preds]


def score_now(cases: list[tuple[np.ndarray, list[np.ndarray]]]) -> list[dict[str, float]]:
    from chromify.metrics import PreparedTruth, image_metrics_8bit

    rows = []
    for truth, preds in cases:
        prepared = PreparedTruth(truth)
        rows += [image_metrics_8bit(pred, prepared) for pred in preds]
    return rows


def cpu_ms_per_photo(score, cases) -> tuple[float, list[dict[str, float]]]:
    start = time.process_time()
    rows = score(cases)
    return (time.process_time() - start) * 1e3 / len(cases), rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=positive_int, default=200, help="test photos (default 200)")
    ap.add_argument("--rounds", type=positive_int, default=3, help="timed rounds of each (default 3)")
    ap.add_argument("--photos-dir", type=folder, default=None, help=f"photos to use (default {PHOTOS})")
    args = ap.parse_args()

    images, source = test_photos(args.photos, args.photos_dir or PHOTOS)
    cases = [renderings(photo) for photo in images]
    print(f"{len(cases)} photos at {SIDE} px: {source}; 3 renderings each (gray, washed out, hue-turned)")
    times: dict[str, list[float]] = {"before": [], "now": []}
    rows = {}
    for r in range(args.rounds):
        order = ("before", "now") if r % 2 == 0 else ("now", "before")
        for name in order:
            ms, rows[name] = cpu_ms_per_photo(score_before if name == "before" else score_now, cases)
            times[name].append(ms)
        print(f"  round {r + 1}: before {times['before'][-1]:.1f} ms, now {times['now'][-1]:.1f} ms per photo",
              file=sys.stderr, flush=True)

    print(f"\nCPU ms per photo (3 renderings), median [min–max] of {args.rounds} rounds:")
    for name, ms in times.items():
        print(f"  {name:<7} {statistics.median(ms):7.1f}  [{min(ms):.1f}–{max(ms):.1f}]")
    before, now = statistics.median(times["before"]), statistics.median(times["now"])
    print(f"  speed-up {before / now:.2f}×  (per rendering, the truth's share included: {before / 3:.1f} → "
          f"{now / 3:.1f} ms)")

    print(f"\nlargest difference, now against before, over {len(rows['now'])} rows:")
    print(f"  {'metric':<20} {'max |abs|':>10} {'max rel':>10}")
    for key in METRICS:
        old = np.array([r[key] for r in rows["before"]])
        new = np.array([r[key] for r in rows["now"]])
        diff = np.abs(new - old)
        rel = np.where(old != 0.0, diff / np.where(old != 0.0, np.abs(old), 1.0), np.where(diff == 0.0, 0.0, np.inf))
        print(f"  {key:<20} {diff.max():10.2e} {rel.max():10.2e}")


if __name__ == "__main__":
    run_main(main)
