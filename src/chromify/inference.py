"""Colorize photos at full resolution: the model sees L at its render size, its ab is upsampled under the
original full-resolution L. Colour is low-frequency, so detail and size come from L and memory stays bounded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from chromify.lab import lab_to_rgb, rgb_to_lab
from chromify.train.checkpoint import load_model


class Colorizer:
    """A loaded model plus how to run it; load once, call many times."""

    def __init__(self, model_dir: str | Path, device: str | None = None, render_size: int | None = None):
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.config = load_model(model_dir, self.device)
        self.model_dir = Path(model_dir)
        self.multiple = 2 ** int(self.config["model"].get("depth", 4))
        self.render_size = render_size or int(self.config["size"])

    @torch.no_grad()
    def predict_ab(self, lum: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) L/100 → (B, 2, H, W) ab in [-128, 128], H and W divisible by 2^depth."""
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device == "cuda")
        with autocast:
            out = self.model(lum.to(self.device).contiguous(memory_format=torch.channels_last))
        return out.float() * 128.0

    def render_shape(self, width: int, height: int) -> tuple[int, int]:
        """Short side to the render size, both sides rounded to the model's multiple."""
        scale = self.render_size / min(width, height)
        m = self.multiple
        return max(m, round(width * scale / m) * m), max(m, round(height * scale / m) * m)

    def colorize_rgb(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 sRGB (its colour is ignored) → (H, W, 3) uint8 colorized, same size."""
        h, w = rgb.shape[:2]
        lum = rgb_to_lab(rgb)[..., 0]
        rw, rh = self.render_shape(w, h)
        small = np.asarray(Image.fromarray(rgb).resize((rw, rh), Image.BILINEAR))
        small_l = torch.from_numpy(rgb_to_lab(small)[..., 0] / 100.0)[None, None]
        ab = self.predict_ab(small_l)
        ab = F.interpolate(ab, size=(h, w), mode="bilinear", align_corners=False)[0].permute(1, 2, 0).cpu().numpy()
        lab = np.concatenate([lum[..., None], ab], axis=-1)
        return (lab_to_rgb(lab) * 255.0 + 0.5).astype(np.uint8)

    def colorize(self, img: Image.Image) -> Image.Image:
        return Image.fromarray(self.colorize_rgb(np.asarray(img.convert("RGB"))))
