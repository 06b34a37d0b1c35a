"""sRGB ↔ CIE Lab (D65) and the 8-bit storage of Lab in shards.

Storage: L in [0, 100] → uint8 round(L * 255 / 100); a, b in [-128, 127] → uint8 round(ab) + 128.
The quantisation error (≤ 0.2 in L, ≤ 0.5 in a/b) is below what the eye or the metrics see.
"""

from __future__ import annotations

import numpy as np

# sRGB (D65) → XYZ, as skimage.color.colorconv.xyz_from_rgb; the inverse is taken as skimage does.
_XYZ_FROM_RGB = np.array(
    [
        [0.412453, 0.357580, 0.180423],
        [0.212671, 0.715160, 0.072169],
        [0.019334, 0.119193, 0.950227],
    ]
)
_RGB_FROM_XYZ = np.linalg.inv(_XYZ_FROM_RGB)
_WHITE_D65_2DEG = np.array([0.95047, 1.0, 1.08883])  # reference white, Y = 1
# The white point is folded into the matrices so each conversion is one matmul on (..., 3).
_XYZN_FROM_RGB = (_XYZ_FROM_RGB / _WHITE_D65_2DEG[:, None]).T.astype(np.float32)
_RGB_FROM_XYZN = (_RGB_FROM_XYZ * _WHITE_D65_2DEG[None, :]).T.astype(np.float32)
# CIE Lab breakpoints with skimage's rounded constants (0.008856 ≈ (6/29)^3, 7.787 ≈ (29/6)^2 / 3).
_LAB_EPS, _LAB_KAPPA, _LAB_OFFSET = 0.008856, 7.787, 16.0 / 116.0
_LAB_F_EPS = 0.2068966  # ≈ 6/29, the same breakpoint seen from the f(t) side
# Lab is affine in f = (f(X/Xn), f(Y/Yn), f(Z/Zn)): L = 116 fy − 16, a = 500 (fx − fy), b = 200 (fy − fz).
_LAB_FROM_F = np.array([[0.0, 500.0, 0.0], [116.0, -500.0, 200.0], [0.0, 0.0, -200.0]], dtype=np.float32)
_F_FROM_LAB = np.linalg.inv(_LAB_FROM_F).astype(np.float32)
_L_OFFSET = np.array([16.0, 0.0, 0.0], dtype=np.float32)

L_SCALE = 255.0 / 100.0
AB_OFFSET = 128.0


def _srgb_to_linear(v: np.ndarray) -> np.ndarray:
    return np.where(v > 0.04045, ((np.maximum(v, 0.04045) + 0.055) / 1.055) ** 2.4, v / 12.92)


def _linear_to_srgb(v: np.ndarray) -> np.ndarray:
    return np.where(v > 0.0031308, 1.055 * np.maximum(v, 0.0031308) ** (1 / 2.4) - 0.055, 12.92 * v)


# Linear light of each 8-bit value k, looked up instead of a per-pixel power; two tables, because two paths have
# always read k differently (214 of 256 entries differ, by up to 1.8e-7) and neither's numbers may move:
# rgb_to_lab's uint8 path (and shards' 8-bit Lab table): the float64 gamma of k / 255, rounded once to float32.
_LINEAR_FROM_U8 = _srgb_to_linear(np.arange(256) / 255.0).astype(np.float32)
# chromify.metrics' 8-bit path: evaluate has always scored renderings as `rgb8.astype(np.float32) / 255`, so there k
# is float32 k / 255 and its linear light is rgb_to_lab's float path on that float32 value.
U8_AS_FLOAT32 = np.arange(256, dtype=np.float32) / np.float32(255.0)
LINEAR_FROM_U8_AS_FLOAT32 = _srgb_to_linear(U8_AS_FLOAT32).astype(np.float32, copy=False)


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB (..., 3), float in [0, 1] or uint8, → CIE Lab float32 (L in [0, 100], a/b roughly [-128, 127])."""
    rgb = np.asarray(rgb)
    if rgb.dtype == np.uint8:
        linear = _LINEAR_FROM_U8[rgb]
    else:
        linear = _srgb_to_linear(rgb.astype(np.float32, copy=False)).astype(np.float32, copy=False)
    return linear_to_lab(linear)


def linear_to_lab(linear: np.ndarray) -> np.ndarray:
    """Linear-light sRGB (..., 3) float32 → CIE Lab float32: `rgb_to_lab` after its gamma step, for callers that
    tabulate that step."""
    t = linear @ _XYZN_FROM_RGB
    f = np.cbrt(t)
    dark = t <= _LAB_EPS  # few pixels in a photo: patch them rather than evaluate both branches everywhere
    f[dark] = _LAB_KAPPA * t[dark] + _LAB_OFFSET
    return f @ _LAB_FROM_F - _L_OFFSET


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """CIE Lab (..., 3) → sRGB float32 in [0, 1]; out-of-gamut colours are clipped as in lab2rgb."""
    f = (np.asarray(lab, dtype=np.float32) + _L_OFFSET) @ _F_FROM_LAB
    # skimage clips a negative z (strongly blue b) to 0 before cubing; doing the same keeps the two in step.
    np.maximum(f[..., 2], 0.0, out=f[..., 2])
    t = f**3
    dark = f <= _LAB_F_EPS
    t[dark] = (f[dark] - _LAB_OFFSET) / _LAB_KAPPA
    return np.clip(_linear_to_srgb(t @ _RGB_FROM_XYZN), 0.0, 1.0).astype(np.float32, copy=False)


def lab_to_rgb8(lab: np.ndarray) -> np.ndarray:
    """CIE Lab (..., 3) → 8-bit sRGB (rounded): what a user sees, and what evaluation scores."""
    return (lab_to_rgb(lab) * 255.0 + 0.5).astype(np.uint8)


def quantise_lab(lab: np.ndarray) -> np.ndarray:
    """(..., 3) float Lab → (..., 3) uint8 in the shard encoding."""
    out = np.empty(lab.shape, dtype=np.uint8)
    out[..., 0] = np.clip(np.rint(lab[..., 0] * L_SCALE), 0, 255)
    out[..., 1:] = np.clip(np.rint(lab[..., 1:] + AB_OFFSET), 0, 255)
    return out


def dequantise_lab(q: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 shard encoding → (..., 3) float32 Lab."""
    lab = q.astype(np.float32)
    lab[..., 0] /= L_SCALE
    lab[..., 1:] -= AB_OFFSET
    return lab


def mean_chroma(rgb: np.ndarray) -> float:
    """Mean sqrt(a² + b²) over an image: near 0 for grayscale content."""
    lab = rgb_to_lab(rgb)
    return float(np.mean(np.hypot(lab[..., 1], lab[..., 2])))
