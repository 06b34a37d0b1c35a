"""CPU time of evaluate's per-image scoring per test photo: the code before the fast path against chromify.metrics
now, side by side in one process on the same images, and how far apart their numbers are.

Each photo is scored against three renderings, as `chromify evaluate` does with a champion: gray (ab = 0) and two
colourings made from its own ab (washed out, and turned 40° in hue), standing in for the two models: what a model
predicts does not change what scoring costs. The images are the first N of ../shared/data/photos (short side to
256 px, centre crop) when that folder is there, else random crops of scikit-image's sample photos; either way they
go through the 8-bit Lab of the shards and are rendered to 8-bit RGB as evaluate renders them.

    python benchmarks/evaluate_speed.py                        # 200 photos, 3 rounds
    python benchmarks/evaluate_speed.py --photos 50 --rounds 5

Before: `reference_image_metrics` below, chromify.metrics as it was (SSIM from a float64 summed-area table,
CIEDE2000 with a trigonometric call per angle, whole-image arrays), fed float32 k / 255 images as evaluate fed it.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli_args import folder, positive_int, run_main  # noqa: E402

SIDE = 256  # the stored size of preprocessed samples
PHOTOS = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "photos").resolve()
SAMPLE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry")
METRICS = ("psnr", "ssim", "delta_e2000", "colourfulness", "colourfulness_truth")


# --- chromify.metrics before the fast path, kept as the reference ---------------------------------------------


def reference_psnr(pred: np.ndarray, truth: np.ndarray) -> float:
    mse = float(np.mean((pred - truth) ** 2))
    return 100.0 if mse == 0.0 else min(100.0, -10.0 * np.log10(mse))


def _reference_box_mean(x: np.ndarray, k: int) -> np.ndarray:
    s = np.zeros((x.shape[0] + 1, x.shape[1] + 1, x.shape[2]))
    np.cumsum(np.cumsum(x, axis=0), axis=1, out=s[1:, 1:])
    return (s[k:, k:] - s[:-k, k:] - s[k:, :-k] + s[:-k, :-k]) / (k * k)


def reference_ssim(x: np.ndarray, y: np.ndarray, k: int = 7) -> float:
    cov_norm = k * k / (k * k - 1)
    mx, my = _reference_box_mean(x, k), _reference_box_mean(y, k)
    vx = cov_norm * (_reference_box_mean(x * x, k) - mx * mx)
    vy = cov_norm * (_reference_box_mean(y * y, k) - my * my)
    vxy = cov_norm * (_reference_box_mean(x * y, k) - mx * my)
    c1, c2 = 0.01**2, 0.03**2
    return float(((2 * mx * my + c1) * (2 * vxy + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2))).mean())


def reference_delta_e2000(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    L1, a1, b1 = np.moveaxis(np.asarray(lab1, dtype=np.float64), -1, 0)
    L2, a2, b2 = np.moveaxis(np.asarray(lab2, dtype=np.float64), -1, 0)
    c_mean7 = ((np.hypot(a1, b1) + np.hypot(a2, b2)) / 2) ** 7
    a_scale = 1.5 - 0.5 * np.sqrt(c_mean7 / (c_mean7 + 25.0**7))
    c1, c2 = np.hypot(a_scale * a1, b1), np.hypot(a_scale * a2, b2)
    h1 = np.degrees(np.arctan2(b1, a_scale * a1)) % 360.0
    h2 = np.degrees(np.arctan2(b2, a_scale * a2)) % 360.0
    chroma_zero = c1 * c2 == 0.0
    dh = h2 - h1
    dh = np.where(dh > 180.0, dh - 360.0, np.where(dh < -180.0, dh + 360.0, dh))
    dH = 2.0 * np.sqrt(c1 * c2) * np.sin(np.radians(np.where(chroma_zero, 0.0, dh)) / 2)
    h_sum = h1 + h2
    h_wrap = np.where(h_sum < 360.0, h_sum + 360.0, h_sum - 360.0)
    h_mean = np.where(chroma_zero, h_sum, np.where(np.abs(h1 - h2) <= 180.0, h_sum, h_wrap) / 2)
    t = (1 - 0.17 * np.cos(np.radians(h_mean - 30)) + 0.24 * np.cos(np.radians(2 * h_mean))
         + 0.32 * np.cos(np.radians(3 * h_mean + 6)) - 0.20 * np.cos(np.radians(4 * h_mean - 63)))
    l_dev2 = ((L1 + L2) / 2 - 50.0) ** 2
    c_mean = (c1 + c2) / 2
    r_c = 2 * np.sqrt(c_mean**7 / (c_mean**7 + 25.0**7))
    rotation = -np.sin(np.radians(60.0 * np.exp(-(((h_mean - 275.0) / 25.0) ** 2)))) * r_c
    dl_term = (L2 - L1) / (1 + 0.015 * l_dev2 / np.sqrt(20 + l_dev2))
    dc_term = (c2 - c1) / (1 + 0.045 * c_mean)
    dh_term = dH / (1 + 0.015 * c_mean * t)
    return np.sqrt(np.maximum(dl_term**2 + dc_term**2 + dh_term**2 + rotation * dc_term * dh_term, 0.0))


def reference_colourfulness(rgb: np.ndarray) -> float:
    rgb = rgb.reshape(-1, 3) * 255.0
    rg = rgb[:, 0] - rgb[:, 1]
    yb = 0.5 * (rgb[:, 0] + rgb[:, 1]) - rgb[:, 2]
    return float(np.sqrt(rg.var() + yb.var()) + 0.3 * np.sqrt(rg.mean() ** 2 + yb.mean() ** 2))


def reference_image_metrics(pred_rgb8: np.ndarray, truth_rgb8: np.ndarray) -> dict[str, float]:
    """What evaluate's `_image_rows` computed per image before the fast path."""
    from chromify.lab import rgb_to_lab

    pred32, truth32 = pred_rgb8.astype(np.float32) / 255.0, truth_rgb8.astype(np.float32) / 255.0
    pred, truth = pred32.astype(np.float64), truth32.astype(np.float64)
    return {
        "psnr": reference_psnr(pred, truth),
        "ssim": reference_ssim(pred, truth),
        "delta_e2000": float(reference_delta_e2000(rgb_to_lab(pred32), rgb_to_lab(truth32)).mean()),
        "colourfulness": reference_colourfulness(pred),
        "colourfulness_truth": reference_colourfulness(truth),
    }


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
    return images, f"{count} random crops of scikit-image's sample photos ({photos} not found)"


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
