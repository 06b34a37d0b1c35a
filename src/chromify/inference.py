"""Colorize photos at full resolution: the model sees L at its render size, its ab is upsampled under the
original full-resolution L. Colour is low-frequency, so detail and size come from L and memory stays bounded.

Memory: besides the decoded photo and the output (both uint8), only a horizontal strip per merge worker exists in
float32 at a time, so a 4000×3000 photo costs 2 × 36 MB plus ~40 MB a worker, never several 12 MP × 3 float32 copies
(the full-size path peaked 1.3 GB higher; tests/test_colorize.py holds the bound).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from chromify.decode_search import ab_units
from chromify.errors import ConfigError, ModelLoadError
from chromify.lab import (
    _LAB_EPS,
    _LAB_F_EPS,
    _LAB_KAPPA,
    _LAB_OFFSET,
    _XYZ_FROM_RGB,
    _linear_to_srgb,
    _srgb_to_linear,
    rgb_to_lab,
)
from chromify.lab import _WHITE_D65_2DEG as _WHITE_D65
from chromify.train.checkpoint import load_model

# 256 rows of a 4000 px wide photo: 4 MB per float32 (rows, W) plane, about ten alive at once per worker.
STRIP_ROWS = 256
# A panorama at render size on its short side would feed the model a very long strip; cap the long side.
MAX_RENDER_ASPECT = 4
# The largest render short side: at 1024 (× 4096, the widest) the unet_s forward pass took 1.6 GB on the CPU.
MAX_RENDER_SIZE = 1024


def fuse_conv_bn(model: nn.Module) -> nn.Module:
    """Fold each eval-mode BatchNorm that follows a Conv2d in a Sequential into the conv: same output, fewer passes."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        for (name, conv), (bn_name, bn) in zip(children, children[1:], strict=False):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(module, name, fuse_conv_bn_eval(conv, bn))
                setattr(module, bn_name, nn.Identity())
    return model


def bilinear_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices i0, i1 and weight w1 (float32) resampling `src` samples to `dst` like F.interpolate, bilinear."""
    pos = (np.arange(dst, dtype=np.float64) + 0.5) * (src / dst) - 0.5
    pos = np.clip(pos, 0.0, src - 1)
    i0 = np.floor(pos).astype(np.intp)
    i1 = np.minimum(i0 + 1, src - 1)
    return i0, i1, (pos - i0).astype(np.float32)


# The per-pixel part of the merge runs on planar float32 with table lookups at both uint8 ends: about 4× faster
# than chromify.lab's general (..., 3) float conversions. Same constants (skimage's, sRGB / D65);
# tests/test_inference.py checks that the two agree to one 8-bit level.
# Y (relative luminance, Yn = 1) is a sum of one table lookup per uint8 channel.
_Y_FROM_U8 = (_srgb_to_linear(np.arange(256) / 255.0)[:, None] * _XYZ_FROM_RGB[1][None, :]).T.astype(np.float32)
_RGB_FROM_TXYZ = (np.linalg.inv(_XYZ_FROM_RGB) * _WHITE_D65[None, :]).astype(np.float32)
# Linear light → 8-bit sRGB through 2^16 bins: fine enough that the table is off by at most one level near black.
_SRGB_BINS = 65535
_U8_FROM_LINEAR = np.clip(_linear_to_srgb(np.arange(_SRGB_BINS + 1) / _SRGB_BINS) * 255.0 + 0.5, 0, 255).astype(
    np.uint8)
# f(Y) through 2^16 bins too (np.cbrt is scalar code, the slowest step by far): the error in L is below 0.01.
_Y_BINS = 65535
_Y_GRID = np.arange(_Y_BINS + 1) / _Y_BINS
_F_FROM_Y = np.where(_Y_GRID > _LAB_EPS, np.cbrt(_Y_GRID), _LAB_KAPPA * _Y_GRID + _LAB_OFFSET).astype(np.float32)


def _f_inverse(f: np.ndarray) -> np.ndarray:
    return np.where(f > _LAB_F_EPS, f * f * f, (f - _LAB_OFFSET) / _LAB_KAPPA)


def recolour_strip(rgb: np.ndarray, fa: np.ndarray, fb: np.ndarray, out: np.ndarray) -> None:
    """(R, W, 3) uint8 + a/500, b/200 as (R, W) float32 → `out` (R, W, 3) uint8: the photo's L with that colour."""
    y = _Y_FROM_U8[0][rgb[..., 0]]
    y += _Y_FROM_U8[1][rgb[..., 1]]
    y += _Y_FROM_U8[2][rgb[..., 2]]
    y *= _Y_BINS
    y += 0.5
    fy = _F_FROM_Y[y.astype(np.int32)]
    # Lab → f: fx = fy + a/500, fz = fy - b/200; a negative fz is clipped to 0 as skimage's lab2rgb does.
    tx, ty, tz = _f_inverse(fy + fa), _f_inverse(fy), _f_inverse(np.maximum(fy - fb, 0.0))
    for c in range(3):
        m = _RGB_FROM_TXYZ[c]
        lin = m[0] * tx
        lin += m[1] * ty
        lin += m[2] * tz
        np.clip(lin, 0.0, 1.0, out=lin)
        lin *= _SRGB_BINS
        lin += 0.5
        out[..., c] = _U8_FROM_LINEAR[lin.astype(np.int32)]


def merge_full_resolution(rgb: np.ndarray, ab_small: np.ndarray, out: np.ndarray | None = None,
                          strip_rows: int = STRIP_ROWS, workers: int = 1) -> np.ndarray:
    """(H, W, 3) uint8 original + (2, h, w) ab in [-128, 128] → (H, W, 3) uint8: original L, ab upsampled bilinearly.

    Works strip by strip (`workers` strips at a time, numpy releases the GIL); `out` may be a view, e.g. the right
    half of a side-by-side canvas.
    """
    height, width = rgb.shape[:2]
    _, h, w = ab_small.shape
    if not np.isfinite(ab_small).all():  # the Lab table lookup would index with them (IndexError, or wrong colours)
        raise ValueError("ab_small holds non-finite values: no colours to merge")
    if out is None:
        out = np.empty((height, width, 3), dtype=np.uint8)
    # Horizontal pass once for all low-res rows, (2, h, W): small, since h is the render height. The Lab → f
    # scales (1/500, 1/200) are folded in here rather than paid per full-resolution pixel.
    x0, x1, wx = bilinear_taps(w, width)
    scaled = ab_small.astype(np.float32) * np.array([1 / 500, 1 / 200], dtype=np.float32)[:, None, None]
    ab_rows = scaled[:, :, x0] * (1.0 - wx) + scaled[:, :, x1] * wx
    y0, y1, wy = bilinear_taps(h, height)

    def strip(top: int) -> None:
        rows = slice(top, min(top + strip_rows, height))
        wyr = wy[rows, None]
        fa, fb = (ch[y0[rows]] * (1.0 - wyr) + ch[y1[rows]] * wyr for ch in ab_rows)
        recolour_strip(rgb[rows], fa, fb, out[rows])

    tops = range(0, height, strip_rows)
    if workers <= 1 or len(tops) == 1:
        for top in tops:
            strip(top)
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers, thread_name_prefix="merge") as pool:
            list(pool.map(strip, tops))
    return out


class Colorizer:
    """A loaded model plus how to run it; load once, call many times."""

    def __init__(self, model_dir: str | Path, device: str | None = None, render_size: int | None = None,
                 merge_workers: int | None = None, temperature: float | None = None,
                 prior_correction: float | None = None, chroma_gain: float | None = None):
        for name, value, positive in (("chroma gain", chroma_gain, True), ("temperature", temperature, True),
                                      ("prior correction", prior_correction, False)):
            if value is not None and not (math.isfinite(value) and (value > 0 or not positive)):
                raise ConfigError(f"{name} must be a finite{' positive' if positive else ''} number, got {value}")
        if render_size is not None and render_size > MAX_RENDER_SIZE:
            raise ConfigError(f"render size {render_size} is above {MAX_RENDER_SIZE}: colour is predicted at low "
                              "resolution and merged with the photo's full-resolution lightness anyway")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model, self.config = load_model(model_dir, self.device)
        # ab × this about gray: the last knob of the decode, for either head (chromify.decode_search picks it).
        self.chroma_gain = float(self.config["model"].get("chroma_gain", 1.0) if chroma_gain is None else chroma_gain)
        # How bold a bins-head model's decode is; the values it was exported with otherwise.
        if temperature is not None or prior_correction is not None:
            if not hasattr(model, "temperature"):
                raise ConfigError(f"{model_dir}: temperature and prior correction apply only to the bins head")
            if temperature is not None:
                model.temperature = temperature
            if prior_correction is not None:
                model.prior_correction = prior_correction
        self.model = fuse_conv_bn(model).to(memory_format=torch.channels_last)
        self.model_dir = Path(model_dir)
        self.multiple = getattr(model, "multiple", None) or 2 ** int(self.config["model"].get("depth", 4))
        self.render_size = int(render_size or self.config["size"])
        if self.render_size < self.multiple:
            raise ConfigError(f"render size {self.render_size} is below the model's multiple {self.multiple}")
        self.merge_workers = merge_workers or torch.get_num_threads()

    @torch.inference_mode()
    def predict_ab(self, lum: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) L/100 → (B, 2, H, W) ab in [-128, 128], H and W divisible by 2^depth.

        A model whose output is not finite (NaN) is a ModelLoadError: its NaN would index the merge's lookup tables
        (an IndexError deep inside), and evaluate would score it as black photos that can pass a lenient gate.
        """
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device == "cuda")
        with autocast:
            out = self.model(lum.to(self.device).contiguous(memory_format=torch.channels_last))
        ab = ab_units(out, self.chroma_gain)
        if not bool(torch.isfinite(ab).all()):  # the low-res map is small, so checking is cheap
            raise ModelLoadError(f"{self.model_dir}: the model produced non-finite colours (NaN): its weights are "
                                 "broken (a diverged training?); use another version or retrain")
        return ab

    def render_shape(self, width: int, height: int) -> tuple[int, int]:
        """Short side to the render size (long side capped), both rounded to the model's multiple; (w, h)."""
        scale = min(self.render_size / min(width, height), MAX_RENDER_ASPECT * self.render_size / max(width, height))
        m = self.multiple
        return max(m, round(width * scale / m) * m), max(m, round(height * scale / m) * m)

    def model_input(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 → (h, w) float32 L/100 at the render shape, resized in RGB as the training data was."""
        rw, rh = self.render_shape(rgb.shape[1], rgb.shape[0])
        small = np.asarray(Image.fromarray(rgb).resize((rw, rh), Image.BILINEAR, reducing_gap=None))
        return rgb_to_lab(small)[..., 0] / 100.0

    def predict_small_ab(self, rgbs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One forward pass per render shape: photos of the same shape are batched; → [(2, h, w) ab] in input order."""
        inputs = [self.model_input(rgb) for rgb in rgbs]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, lum in enumerate(inputs):
            groups.setdefault(lum.shape, []).append(i)
        result: list[np.ndarray | None] = [None] * len(inputs)
        for idx in groups.values():
            batch = torch.from_numpy(np.stack([inputs[i] for i in idx]))[:, None]
            ab = self.predict_ab(batch).cpu().numpy()
            for j, i in enumerate(idx):
                result[i] = ab[j]
        return result  # type: ignore[return-value]

    def colorize_batch(self, rgbs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """[(H, W, 3) uint8] → [(H, W, 3) uint8 colorized at each input's own size]; the input colour is ignored."""
        return [merge_full_resolution(rgb, ab, workers=self.merge_workers)
                for rgb, ab in zip(rgbs, self.predict_small_ab(rgbs), strict=True)]

    def colorize_rgb(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 sRGB (its colour is ignored) → (H, W, 3) uint8 colorized, same size."""
        return self.colorize_batch([rgb])[0]

    def colorize(self, img: Image.Image) -> Image.Image:
        return Image.fromarray(self.colorize_rgb(np.asarray(img.convert("RGB"))))
