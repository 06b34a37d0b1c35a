"""Colorization metrics on numpy arrays: PSNR, SSIM, CIEDE2000, colourfulness and ΔCF.

Why several metrics: PSNR and SSIM reward *dull* output. A colorizer that predicts a/b ≈ 0 (gray, or a
desaturated brown) sits near the mean of every plausible colouring and so has a small squared error, while a
vivid but slightly wrong hue is punished twice. A model can therefore climb in PSNR by losing colour.
Colourfulness (Hasler & Süsstrunk, 2003) exposes that failure, and ΔCF = |mean CF(output) − mean CF(truth)| is
gated alongside PSNR so that neither washed-out nor garish output can pass. CIEDE2000 reports the colour error
in perceptual units (≈ 1 is a just-noticeable difference).

Images are RGB, shape (H, W, 3), float in [0, 1] or uint8 in [0, 255]. Only numpy is needed at import time;
the sRGB ↔ Lab constants are those of skimage.color (D65, 2° observer) so that numbers agree with it.

Speed (evaluation scores every test photo against gray, the candidate and the champion): `PreparedTruth` computes
what depends on the truth alone once; `image_metrics_8bit` looks up what an 8-bit value stands for instead of
computing it per pixel; every metric works through an image in strips or blocks whose arrays stay in the CPU cache
(whole-image temporaries, 0.5–1.5 MB each at 256 px, are mapped afresh from the OS, and their page faults cost
more than the arithmetic); and CIEDE2000 replaces most of its trigonometric calls by algebra on unit hue vectors.
The numbers are those of the straightforward whole-image formulas to ~1e-12 relative (sums are rounded in another
order); tests/test_metrics.py pins that and benchmarks/evaluate_speed.py measures it.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from chromify.errors import DataError
from chromify.lab import LINEAR_FROM_U8_AS_FLOAT32, U8_AS_FLOAT32, lab_to_rgb, linear_to_lab, rgb_to_lab

__all__ = ["lab_to_rgb", "rgb_to_lab"]  # re-exported: the metrics are defined on Lab from chromify.lab

PSNR_CAP_DB = 100.0  # identical images: a finite number keeps means and JSON reports usable

SSIM_WINDOW = 7  # skimage's default uniform window
SSIM_K1, SSIM_K2 = 0.01, 0.03

# Rows of SSIM windows per strip, and pixels per block of the per-pixel metrics: ~100 kB working arrays that stay
# in the CPU cache and in memory the allocator keeps (see the module docstring).
SSIM_STRIP = 16
PIXEL_BLOCK = 8192

# An 8-bit value k as evaluate has always scored it (float32 k / 255, see chromify.lab), widened to float64 as the
# metrics widen every image: looking it up gives what the per-pixel arithmetic gave.
_UNIT_FROM_8BIT = U8_AS_FLOAT32.astype(np.float64)


def _unit_float(rgb: np.ndarray) -> np.ndarray:
    """RGB as float64 in [0, 1]; uint8 is read as 0–255."""
    rgb = np.asarray(rgb)
    if rgb.dtype == np.uint8:
        return rgb / 255.0
    return rgb.astype(np.float64, copy=False)


def _check_pair(pred: np.ndarray, truth: np.ndarray) -> None:
    if pred.shape != truth.shape or pred.ndim != 3 or pred.shape[-1] != 3:
        raise ValueError(f"expected two (H, W, 3) images of one shape, got {pred.shape} and {truth.shape}")


def psnr(pred: np.ndarray, truth: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB for data range 1, capped at 100 dB for identical images; NaN when a pixel is
    not finite."""
    pred, truth = _unit_float(pred), _unit_float(truth)
    _check_pair(pred, truth)
    return _psnr_db(float(np.mean((pred - truth) ** 2)))


def _psnr_db(mse: float) -> float:
    # NaN, not the cap (min(100, nan) is 100): a NaN rendering must fail the gate's finite check, not score perfect.
    if not np.isfinite(mse):
        return float("nan")
    return PSNR_CAP_DB if mse == 0.0 else min(PSNR_CAP_DB, float(-10.0 * np.log10(mse)))


def _run_sums(x: np.ndarray, k: int) -> np.ndarray:
    """Sums of k consecutive rows, (n, ...) → (n − k + 1, ...), assembled from sums of 1, 2, 4, … rows: four adds
    for k = 7. (A summed-area table needs cumulative sums, slow along these axes, and its large running totals
    cost precision that the variances below, differences of near-equal means, then lose.)"""
    n = len(x) - k + 1
    total, start, run, width = None, 0, x, 1
    while True:
        if k & width:
            part = run[start : start + n]
            total = part if total is None else total + part
            start += width
        if 2 * width > k:
            return total
        run = run[:-width] + run[width:]
        width *= 2


def _window_mean(x: np.ndarray, k: int) -> np.ndarray:
    """Mean of every k×k window fully inside x: (H, W, C) → (H − k + 1, W − k + 1, C)."""
    return _run_sums(_run_sums(x, k).swapaxes(0, 1), k).swapaxes(0, 1) / (k * k)


def _strips(rows: int) -> Iterator[tuple[int, int]]:
    for lo in range(0, rows, SSIM_STRIP):
        yield lo, min(lo + SSIM_STRIP, rows)


def _mean_var(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Window means and sample variances (skimage's default: k² / (k² − 1) times the population ones) of x."""
    k = SSIM_WINDOW
    mean = _window_mean(x, k)
    return mean, k * k / (k * k - 1) * (_window_mean(x * x, k) - mean * mean)


class _Windows:
    """An image (H, W, C) with its SSIM window means and variances, kept to score other images against it."""

    def __init__(self, image: np.ndarray):
        k = SSIM_WINDOW
        if min(image.shape[:2]) < k:
            raise ValueError(f"SSIM needs images of at least {k}×{k} pixels, got {image.shape[:2]}")
        self.image = image
        self.mean = np.empty((image.shape[0] - k + 1, image.shape[1] - k + 1, *image.shape[2:]))
        self.var = np.empty_like(self.mean)
        for lo, hi in _strips(len(self.mean)):
            self.mean[lo:hi], self.var[lo:hi] = _mean_var(image[lo : hi + k - 1])


def _ssim(x: np.ndarray, y: _Windows, table: np.ndarray | None = None) -> float:
    """Mean SSIM of image x (or of `table[x]`, for 8-bit x) against y's windows, a strip of window rows at a time."""
    k = SSIM_WINDOW
    c1, c2 = SSIM_K1**2, SSIM_K2**2  # (K · data_range)², data_range = 1
    total = 0.0
    for lo, hi in _strips(len(y.mean)):
        xs, ys = x[lo : hi + k - 1], y.image[lo : hi + k - 1]
        if table is not None:
            xs = table[xs]
        mx, vx = _mean_var(xs)
        my, vy = y.mean[lo:hi], y.var[lo:hi]
        cov = k * k / (k * k - 1) * (_window_mean(xs * ys, k) - mx * my)
        s = (2 * mx * my + c1) * (2 * cov + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        total += float(s.sum())
    return total / y.mean.size


def ssim(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean SSIM over channels, as skimage's structural_similarity(channel_axis=-1, data_range=1.0).

    skimage filters the whole image and then crops the 3-pixel border, which leaves exactly the windows that
    fit inside the image, so only those are computed here.
    """
    x, y = _unit_float(pred), _unit_float(truth)
    _check_pair(x, y)
    return _ssim(x, _Windows(y))


# CIEDE2000's T as 1 + Σ w·cos(n·h̄ + φ) for n = 1…4, (w, φ) from the formula; stored as (w cos φ, w sin φ).
_T_TERMS = tuple((w * np.cos(np.radians(phi)), w * np.sin(np.radians(phi)))
                 for w, phi in ((-0.17, -30.0), (0.24, 0.0), (0.32, 6.0), (-0.20, -63.0)))


def delta_e2000(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray | np.float64:
    """CIEDE2000 colour difference (kL = kC = kH = 1) per pixel: Lab (..., 3) × 2 → (...) float64; for a single
    pair, (3,) × 2, a numpy float64, which json.dumps takes (a 0-d array it refuses).

    Follows Sharma, Wu & Dalal (2005), including their conventions for the hue mean and for zero chroma.
    """
    lab1, lab2 = np.broadcast_arrays(np.asarray(lab1, dtype=np.float64), np.asarray(lab2, dtype=np.float64))
    shape, lab1, lab2 = lab1.shape[:-1], _planar(lab1), _planar(lab2)
    out = np.empty(lab1.shape[1])
    for lo in range(0, len(out), PIXEL_BLOCK):
        hi = lo + PIXEL_BLOCK
        out[lo:hi] = _delta_e2000_block(*lab1[:, lo:hi], *lab2[:, lo:hi])
    return out.reshape(shape)[()]  # [()]: a 0-d array's scalar; any other array unchanged


def _planar(lab: np.ndarray) -> np.ndarray:
    """(..., 3) → (3, n) float64, each of L, a, b contiguous."""
    return np.array(lab.reshape(-1, 3).T, dtype=np.float64, order="C")


def _delta_e2000_block(L1, a1, b1, L2, a2, b2) -> np.ndarray:
    """CIEDE2000 of L, a, b arrays, in Sharma et al.'s steps (split up so that few temporaries live at once)."""
    a1s, a2s = _scaled_a(a1, b1, a2, b2)
    h_mean, dh_sign, on_jump = _hue_mean(a1s, b1, a2s, b2)
    if on_jump.any():  # rare: redo these as the textbook does, so that they land on its side of the jump
        i = np.flatnonzero(on_jump)
        a1s[i], a2s[i] = _scaled_a(a1[i], b1[i], a2[i], b2[i], textbook=True)
        h_mean[i], dh_sign[i], _ = _hue_mean(a1s[i], b1[i], a2s[i], b2[i])
    c1, c2 = np.sqrt(a1s * a1s + b1 * b1), np.sqrt(a2s * a2s + b2 * b2)
    dH, t = _hue_difference_and_t(a1s, b1, c1, a2s, b2, c2, dh_sign)
    l_dev2 = ((L1 + L2) / 2 - 50.0) ** 2
    c_mean = (c1 + c2) / 2
    c_mean7 = _pow7(c_mean)
    r_c = 2 * np.sqrt(c_mean7 / (c_mean7 + 25.0**7))
    rotation = -np.sin(np.radians(60.0 * np.exp(-(((h_mean - 275.0) / 25.0) ** 2)))) * r_c  # −sin(2Δθ)·R_C
    dl_term = (L2 - L1) / (1 + 0.015 * l_dev2 / np.sqrt(20 + l_dev2))
    dc_term = (c2 - c1) / (1 + 0.045 * c_mean)
    dh_term = dH / (1 + 0.015 * c_mean * t)
    de2 = dl_term**2 + dc_term**2 + dh_term**2 + rotation * dc_term * dh_term
    return np.sqrt(np.maximum(de2, 0.0))  # ≥ 0 in exact arithmetic; guards −1e-16 rounding


def _pow7(x: np.ndarray) -> np.ndarray:
    x2 = x * x
    return x2 * x2 * x2 * x


def _scaled_a(a1, b1, a2, b2, textbook: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """a' = (1 + G) a for both colours, G from the mean chroma of the pair; `textbook`: by np.hypot and ** 7."""
    if textbook:
        c_mean7 = ((np.hypot(a1, b1) + np.hypot(a2, b2)) / 2) ** 7
    else:
        c_mean7 = _pow7((np.sqrt(a1 * a1 + b1 * b1) + np.sqrt(a2 * a2 + b2 * b2)) / 2)
    a_scale = 1.5 - 0.5 * np.sqrt(c_mean7 / (c_mean7 + 25.0**7))  # 1 + G
    return a_scale * a1, a_scale * a2


# Within this many degrees of a jump of the formula (two hues exactly opposite: ΔH' changes sign and h̄' turns by
# 180°; h̄' at 0° = 360°: the rotation term jumps) a last-bit change in a' could put a pair on the other side, so
# such pairs get a' as the textbook form computes it, and with it its hue angles and branches. Elsewhere the cheap
# a' (a few times faster than np.hypot and ** 7) moves angles by ~1e-13°, well inside the margin. No pixel of
# 6.5 million from real photos and their renderings came within it.
_HUE_JUMP_MARGIN_DEG = 1e-9


def _hue_mean(a1, b1, a2, b2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(h̄' in degrees, the sign of Δh', whether the pair is within the margin of a jump), from the hue angles in
    [0, 360) and Sharma et al.'s branches.

    At zero chroma they take h̄' = h1 + h2 rather than half of it; that is left out, as ΔH' is 0 there and every
    term h̄' enters is multiplied by ΔH'.
    """
    h1, h2 = np.degrees(np.arctan2(b1, a1)), np.degrees(np.arctan2(b2, a2))
    h1 += np.where(h1 < 0.0, 360.0, 0.0)  # as % 360 gives
    h2 += np.where(h2 < 0.0, 360.0, 0.0)
    dh, h_sum = h2 - h1, h1 + h2
    wrapped = np.abs(dh) > 180.0
    h_mean = np.where(wrapped, np.where(h_sum < 360.0, h_sum + 360.0, h_sum - 360.0), h_sum) / 2
    on_jump = ((np.abs(np.abs(dh) - 180.0) < _HUE_JUMP_MARGIN_DEG) | (h_mean < _HUE_JUMP_MARGIN_DEG)
               | (h_mean > 360.0 - _HUE_JUMP_MARGIN_DEG))
    return h_mean, np.where(wrapped, -np.sign(dh), np.sign(dh)), on_jump  # Δh' is dh moved into [-180, 180]


def _hue_difference_and_t(a1, b1, c1, a2, b2, c2, dh_sign) -> tuple[np.ndarray, np.ndarray]:
    """(ΔH', T) from unit hue vectors u = (a', b) / C' instead of sin and cos of angles.

    |u1 + u2| = 2 cos(Δh'/2) and |u2 − u1| = 2 |sin(Δh'/2)| give ΔH' = 2 √(C1 C2) sin(Δh'/2), and rotating u1 by
    Δh'/2 gives cos and sin of h̄' (= h1 + Δh'/2), whose multiples T needs. u = 0 at zero chroma, where ΔH' is 0.
    """
    inv1, inv2 = 1.0 / np.where(c1 > 0.0, c1, np.inf), 1.0 / np.where(c2 > 0.0, c2, np.inf)
    x1, y1, x2, y2 = a1 * inv1, b1 * inv1, a2 * inv2, b2 * inv2
    half_cos = np.sqrt((x1 + x2) ** 2 + (y1 + y2) ** 2) / 2
    half_sin = dh_sign * np.sqrt((x2 - x1) ** 2 + (y2 - y1) ** 2) / 2
    cos_mean, sin_mean = x1 * half_cos - y1 * half_sin, y1 * half_cos + x1 * half_sin
    t = 1.0
    cos_n, sin_n = cos_mean, sin_mean
    for n, (w_cos, w_sin) in enumerate(_T_TERMS):
        if n:  # cos and sin of (n + 1)·h̄' from n·h̄'
            cos_n, sin_n = cos_n * cos_mean - sin_n * sin_mean, sin_n * cos_mean + cos_n * sin_mean
        t = t + w_cos * cos_n - w_sin * sin_n
    return 2.0 * np.sqrt(c1 * c2) * half_sin, t


def colourfulness(rgb: np.ndarray) -> float:
    """Hasler & Süsstrunk (2003) colourfulness on 0–255 sRGB: 0 for gray, about 100 for very vivid images.

    This is the signed form of the paper: rg = R − G, yb = ½(R + G) − B. The DDColor / CT2 evaluation code
    takes |rg| and |yb| instead, which gives other numbers (a red/green mix no longer averages out in the mean
    term), so values quoted in those papers are not directly comparable.
    """
    pixels = _unit_float(rgb).reshape(-1, 3)
    return _colourfulness([_opponent_moments(pixels[lo : lo + PIXEL_BLOCK])
                           for lo in range(0, len(pixels), PIXEL_BLOCK)])


def _opponent_moments(rgb: np.ndarray) -> np.ndarray:
    """(n, 3) RGB in [0, 1] → [count, mean, sum of squared deviations] of rg and of yb on the 0–255 scale, (2, 3)."""
    rgb = rgb * 255.0
    rg = rgb[:, 0] - rgb[:, 1]
    yb = 0.5 * (rgb[:, 0] + rgb[:, 1]) - rgb[:, 2]
    return np.array([[len(v), v.mean(), ((v - v.mean()) ** 2).sum()] for v in (rg, yb)])


def _colourfulness(parts: list[np.ndarray]) -> float:
    """Colourfulness from the opponent moments of the parts of an image, merged as Chan, Golub & LeVeque (1979)
    do: exact for any split, and without the cancellation of a one-pass E[x²] − E[x]²."""
    count, mean, sq_dev = np.moveaxis(np.stack(parts), -1, 0)  # each (parts, 2)
    n = count.sum(axis=0)
    total_mean = (count * mean).sum(axis=0) / n
    var = (sq_dev.sum(axis=0) + (count * (mean - total_mean) ** 2).sum(axis=0)) / n
    return float(np.sqrt(var.sum()) + 0.3 * np.sqrt((total_mean**2).sum()))


def delta_cf(mean_cf_output: float, mean_cf_truth: float) -> float:
    """ΔCF: how far the outputs' mean colourfulness is from the ground truth's, either way."""
    return abs(mean_cf_output - mean_cf_truth)


def image_metrics(pred_rgb: np.ndarray, truth_rgb: np.ndarray) -> dict[str, float]:
    """All per-image metrics for one (H, W, 3) prediction against its ground truth, float in [0, 1] or uint8.

    The public per-image API; nothing in chromify calls it (evaluate scores several renderings against each truth
    with PreparedTruth and image_metrics_8bit). It reads uint8 as k / 255 in float64, evaluate as float32 k / 255:
    on the same 8-bit images the two differ by ~1e-8 relative.
    """
    return {
        "psnr": psnr(pred_rgb, truth_rgb),
        "ssim": ssim(pred_rgb, truth_rgb),
        "delta_e2000": float(delta_e2000(rgb_to_lab(pred_rgb), rgb_to_lab(truth_rgb)).mean()),
        "colourfulness": colourfulness(pred_rgb),
        "colourfulness_truth": colourfulness(truth_rgb),
    }


def _bands(rgb: np.ndarray) -> Iterator[tuple[int, int, int, int]]:
    """(first row, end row, first pixel, end pixel) of bands of whole rows, about PIXEL_BLOCK pixels each.

    Whole rows keep Lab's 3×3 matmul on (rows, W, 3), which numpy does itself: on (n, 3) it calls OpenBLAS, whose
    idle threads then spin and double the process's CPU time.
    """
    height, width = rgb.shape[:2]
    step = max(1, PIXEL_BLOCK // width)
    for lo in range(0, height, step):
        hi = min(lo + step, height)
        yield lo, hi, lo * width, hi * width


class PreparedTruth:
    """An (H, W, 3) uint8 ground truth with what scoring any rendering against it needs, computed once: its values
    in [0, 1] and their SSIM windows, its Lab as (3, H·W) float64, and its colourfulness."""

    def __init__(self, rgb8: np.ndarray):
        if rgb8.dtype != np.uint8 or rgb8.ndim != 3 or rgb8.shape[-1] != 3:
            raise ValueError(f"expected an (H, W, 3) uint8 image, got {rgb8.dtype} {rgb8.shape}")
        self.rgb8 = rgb8
        self.windows = _Windows(_UNIT_FROM_8BIT[rgb8])
        self.lab = np.empty((3, rgb8.shape[0] * rgb8.shape[1]))
        moments = []
        for lo, hi, first, end in _bands(rgb8):
            self.lab[:, first:end] = _planar_lab(rgb8[lo:hi])
            moments.append(_opponent_moments(self.windows.image[lo:hi].reshape(-1, 3)))
        self.colourfulness = _colourfulness(moments)


def _planar_lab(rgb8: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 → (3, n) float64 Lab, as rgb_to_lab gives it for rgb8 as float32 / 255."""
    return _planar(linear_to_lab(LINEAR_FROM_U8_AS_FLOAT32[rgb8]))


def image_metrics_8bit(pred_rgb8: np.ndarray, truth: PreparedTruth) -> dict[str, float]:
    """`image_metrics` of an (H, W, 3) uint8 rendering against a prepared truth, both read as float32 / 255 (as
    evaluate has always scored them)."""
    if pred_rgb8.shape != truth.rgb8.shape or pred_rgb8.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image of shape {truth.rgb8.shape}, got {pred_rgb8.dtype} {pred_rgb8.shape}")
    squared_error = delta_e = 0.0
    moments = []
    for lo, hi, first, end in _bands(pred_rgb8):
        unit = _UNIT_FROM_8BIT[pred_rgb8[lo:hi]]
        squared_error += float(((unit - truth.windows.image[lo:hi]) ** 2).sum())
        delta_e += float(_delta_e2000_block(*_planar_lab(pred_rgb8[lo:hi]), *truth.lab[:, first:end]).sum())
        moments.append(_opponent_moments(unit.reshape(-1, 3)))
    return {
        "psnr": _psnr_db(squared_error / pred_rgb8.size),
        "ssim": _ssim(pred_rgb8, truth.windows, _UNIT_FROM_8BIT),
        "delta_e2000": delta_e / (pred_rgb8.shape[0] * pred_rgb8.shape[1]),
        "colourfulness": _colourfulness(moments),
        "colourfulness_truth": truth.colourfulness,
    }


def summarise(rows: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each per-image metric over a set, plus delta_cf (computed on the means, as ΔCF is defined)."""
    if not rows:
        raise DataError("no per-image metrics to summarise: the evaluation set is empty")
    keys = rows[0].keys()
    if any(row.keys() != keys for row in rows):
        raise DataError(f"per-image metric rows do not all have the same keys: expected {sorted(keys)}")
    summary = {key: float(np.mean([row[key] for row in rows])) for key in keys}
    summary["delta_cf"] = delta_cf(summary["colourfulness"], summary["colourfulness_truth"])
    return summary
