"""chromify.metrics as it was before evaluate's fast path (at 588ec8b^), kept as the slow reference that the fast
path must match: whole-image arrays, SSIM from a float64 summed-area table, CIEDE2000 step by step as Sharma, Wu &
Dalal (2005) write it with a trigonometric call per angle, and colourfulness with numpy's two-pass variance.

It shares no code with chromify.metrics, so an error there cannot hide here. Used by tests/test_metrics.py,
tests/test_evaluate.py and, as "before", by benchmarks/evaluate_speed.py.
"""

from __future__ import annotations

import numpy as np

from chromify.lab import rgb_to_lab


def reference_psnr(pred: np.ndarray, truth: np.ndarray) -> float:
    """PSNR in dB of float images in [0, 1], capped at 100 dB."""
    mse = float(np.mean((pred - truth) ** 2))
    return 100.0 if mse == 0.0 else min(100.0, float(-10.0 * np.log10(mse)))


def _box_mean(x: np.ndarray, k: int) -> np.ndarray:
    s = np.zeros((x.shape[0] + 1, x.shape[1] + 1, x.shape[2]))
    np.cumsum(np.cumsum(x, axis=0), axis=1, out=s[1:, 1:])
    return (s[k:, k:] - s[:-k, k:] - s[k:, :-k] + s[:-k, :-k]) / (k * k)


def reference_ssim(x: np.ndarray, y: np.ndarray, k: int = 7) -> float:
    """Mean SSIM of (H, W, C) float images, as skimage's structural_similarity(channel_axis=-1, data_range=1)."""
    cov_norm = k * k / (k * k - 1)
    mx, my = _box_mean(x, k), _box_mean(y, k)
    vx = cov_norm * (_box_mean(x * x, k) - mx * mx)
    vy = cov_norm * (_box_mean(y * y, k) - my * my)
    vxy = cov_norm * (_box_mean(x * y, k) - mx * my)
    c1, c2 = 0.01**2, 0.03**2
    return float(((2 * mx * my + c1) * (2 * vxy + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2))).mean())


def reference_delta_e2000(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """CIEDE2000 per pixel, Lab (..., 3) × 2 → (...).

    a' and the hue angles come from np.hypot, ** 7 and arctan2 % 360, the operations chromify has always used,
    so that pairs on the formula's jumps (exactly opposite hues; a hue mean of exactly 0°/360°) fall on the same
    side as there.
    """
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
    """Hasler & Süsstrunk of a float RGB image in [0, 1], on the whole image at once, computed in float64."""
    rgb = np.asarray(rgb, dtype=np.float64).reshape(-1, 3) * 255.0
    rg = rgb[:, 0] - rgb[:, 1]
    yb = 0.5 * (rgb[:, 0] + rgb[:, 1]) - rgb[:, 2]
    return float(np.sqrt(rg.var() + yb.var()) + 0.3 * np.sqrt(rg.mean() ** 2 + yb.mean() ** 2))


def reference_image_metrics(pred_rgb8: np.ndarray, truth_rgb8: np.ndarray) -> dict[str, float]:
    """evaluate's row for an (H, W, 3) uint8 rendering before the fast path: both images read as float32 k / 255,
    Lab from rgb_to_lab's float path (pinned to skimage in tests/test_metrics.py)."""
    pred32, truth32 = pred_rgb8.astype(np.float32) / 255.0, truth_rgb8.astype(np.float32) / 255.0
    pred, truth = pred32.astype(np.float64), truth32.astype(np.float64)
    return {
        "psnr": reference_psnr(pred, truth),
        "ssim": reference_ssim(pred, truth),
        "delta_e2000": float(reference_delta_e2000(rgb_to_lab(pred32), rgb_to_lab(truth32)).mean()),
        "colourfulness": reference_colourfulness(pred),
        "colourfulness_truth": reference_colourfulness(truth),
    }
