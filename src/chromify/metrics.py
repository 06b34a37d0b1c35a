"""Colorization metrics on numpy arrays: PSNR, SSIM, CIEDE2000, colourfulness and ΔCF.

Why several metrics: PSNR and SSIM reward *dull* output. A colorizer that predicts a/b ≈ 0 (gray, or a
desaturated brown) sits near the mean of every plausible colouring and so has a small squared error, while a
vivid but slightly wrong hue is punished twice. A model can therefore climb in PSNR by losing colour.
Colourfulness (Hasler & Süsstrunk, 2003) exposes that failure, and ΔCF = |mean CF(output) − mean CF(truth)| is
gated alongside PSNR so that neither washed-out nor garish output can pass. CIEDE2000 reports the colour error
in perceptual units (≈ 1 is a just-noticeable difference).

Images are RGB, shape (H, W, 3), float in [0, 1] or uint8 in [0, 255]. Only numpy is needed at import time;
the sRGB ↔ Lab constants are those of skimage.color (D65, 2° observer) so that numbers agree with it.
"""

from __future__ import annotations

import numpy as np

from chromify.errors import DataError
from chromify.lab import lab_to_rgb, rgb_to_lab

__all__ = ["lab_to_rgb", "rgb_to_lab"]  # re-exported: the metrics are defined on Lab from chromify.lab

PSNR_CAP_DB = 100.0  # identical images: a finite number keeps means and JSON reports usable

SSIM_WINDOW = 7  # skimage's default uniform window
SSIM_K1, SSIM_K2 = 0.01, 0.03


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
    """Peak signal-to-noise ratio in dB for data range 1, capped at 100 dB for identical images."""
    pred, truth = _unit_float(pred), _unit_float(truth)
    _check_pair(pred, truth)
    mse = float(np.mean((pred - truth) ** 2))
    return PSNR_CAP_DB if mse == 0.0 else min(PSNR_CAP_DB, -10.0 * np.log10(mse))


def _box_mean(x: np.ndarray, k: int) -> np.ndarray:
    """Mean of every k×k window fully inside x: (H, W, C) → (H−k+1, W−k+1, C), via a summed-area table."""
    s = np.zeros((x.shape[0] + 1, x.shape[1] + 1, x.shape[2]))
    np.cumsum(np.cumsum(x, axis=0), axis=1, out=s[1:, 1:])
    return (s[k:, k:] - s[:-k, k:] - s[k:, :-k] + s[:-k, :-k]) / (k * k)


def ssim(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean SSIM over channels, as skimage's structural_similarity(channel_axis=-1, data_range=1.0).

    skimage filters the whole image and then crops the 3-pixel border, which leaves exactly the windows that
    fit inside the image, so only those are computed here.
    """
    x, y = _unit_float(pred), _unit_float(truth)
    _check_pair(x, y)
    k = SSIM_WINDOW
    if min(x.shape[:2]) < k:
        raise ValueError(f"SSIM needs images of at least {k}×{k} pixels, got {x.shape[:2]}")
    cov_norm = k * k / (k * k - 1)  # sample covariance, skimage's default
    mx, my = _box_mean(x, k), _box_mean(y, k)
    vx = cov_norm * (_box_mean(x * x, k) - mx * mx)
    vy = cov_norm * (_box_mean(y * y, k) - my * my)
    vxy = cov_norm * (_box_mean(x * y, k) - mx * my)
    c1, c2 = SSIM_K1**2, SSIM_K2**2  # (K · data_range)², data_range = 1
    s = (2 * mx * my + c1) * (2 * vxy + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s.mean())


def delta_e2000(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """CIEDE2000 colour difference (kL = kC = kH = 1) per pixel: Lab (..., 3) × 2 → (...), float64.

    Follows Sharma, Wu & Dalal (2005), including their conventions for the hue mean and for zero chroma.
    """
    L1, a1, b1 = np.moveaxis(np.asarray(lab1, dtype=np.float64), -1, 0)
    L2, a2, b2 = np.moveaxis(np.asarray(lab2, dtype=np.float64), -1, 0)
    c_mean7 = ((np.hypot(a1, b1) + np.hypot(a2, b2)) / 2) ** 7
    a_scale = 1.5 - 0.5 * np.sqrt(c_mean7 / (c_mean7 + 25.0**7))  # 1 + G
    c1, c2 = np.hypot(a_scale * a1, b1), np.hypot(a_scale * a2, b2)
    h1 = np.degrees(np.arctan2(b1, a_scale * a1)) % 360.0
    h2 = np.degrees(np.arctan2(b2, a_scale * a2)) % 360.0
    chroma_zero = c1 * c2 == 0.0  # hue is undefined: Δh = 0 and the hue mean is the plain sum

    dh = h2 - h1
    dh = np.where(dh > 180.0, dh - 360.0, np.where(dh < -180.0, dh + 360.0, dh))
    dH = 2.0 * np.sqrt(c1 * c2) * np.sin(np.radians(np.where(chroma_zero, 0.0, dh)) / 2)

    h_sum = h1 + h2
    h_wrap = np.where(h_sum < 360.0, h_sum + 360.0, h_sum - 360.0)
    h_mean = np.where(chroma_zero, h_sum, np.where(np.abs(h1 - h2) <= 180.0, h_sum, h_wrap) / 2)
    t = (
        1
        - 0.17 * np.cos(np.radians(h_mean - 30))
        + 0.24 * np.cos(np.radians(2 * h_mean))
        + 0.32 * np.cos(np.radians(3 * h_mean + 6))
        - 0.20 * np.cos(np.radians(4 * h_mean - 63))
    )
    l_dev2 = ((L1 + L2) / 2 - 50.0) ** 2
    c_mean = (c1 + c2) / 2
    r_c = 2 * np.sqrt(c_mean**7 / (c_mean**7 + 25.0**7))
    rotation = -np.sin(np.radians(60.0 * np.exp(-(((h_mean - 275.0) / 25.0) ** 2)))) * r_c  # −sin(2Δθ)·R_C
    dl_term = (L2 - L1) / (1 + 0.015 * l_dev2 / np.sqrt(20 + l_dev2))
    dc_term = (c2 - c1) / (1 + 0.045 * c_mean)
    dh_term = dH / (1 + 0.015 * c_mean * t)
    de2 = dl_term**2 + dc_term**2 + dh_term**2 + rotation * dc_term * dh_term
    return np.sqrt(np.maximum(de2, 0.0))  # ≥ 0 in exact arithmetic; guards −1e-16 rounding


def colourfulness(rgb: np.ndarray) -> float:
    """Hasler & Süsstrunk (2003) colourfulness on 0–255 sRGB: 0 for gray, about 100 for very vivid images.

    This is the signed form of the paper: rg = R − G, yb = ½(R + G) − B. The DDColor / CT2 evaluation code
    takes |rg| and |yb| instead, which gives other numbers (a red/green mix no longer averages out in the mean
    term), so values quoted in those papers are not directly comparable.
    """
    rgb = _unit_float(rgb).reshape(-1, 3) * 255.0
    rg = rgb[:, 0] - rgb[:, 1]
    yb = 0.5 * (rgb[:, 0] + rgb[:, 1]) - rgb[:, 2]
    spread = np.sqrt(rg.var() + yb.var())
    offset = np.sqrt(rg.mean() ** 2 + yb.mean() ** 2)
    return float(spread + 0.3 * offset)


def delta_cf(mean_cf_output: float, mean_cf_truth: float) -> float:
    """ΔCF: how far the outputs' mean colourfulness is from the ground truth's, either way."""
    return abs(mean_cf_output - mean_cf_truth)


def image_metrics(pred_rgb: np.ndarray, truth_rgb: np.ndarray) -> dict[str, float]:
    """All per-image metrics for one (H, W, 3) prediction against its ground truth."""
    return {
        "psnr": psnr(pred_rgb, truth_rgb),
        "ssim": ssim(pred_rgb, truth_rgb),
        "delta_e2000": float(delta_e2000(rgb_to_lab(pred_rgb), rgb_to_lab(truth_rgb)).mean()),
        "colourfulness": colourfulness(pred_rgb),
        "colourfulness_truth": colourfulness(truth_rgb),
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
