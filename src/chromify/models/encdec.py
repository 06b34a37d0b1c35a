"""The plain encoder-decoder the seed compared the U-Net against: the same blocks, no skip connections.

Without skips every edge must squeeze through the bottleneck, so colours bleed across boundaries: the baseline
that shows what the skips buy."""

from __future__ import annotations

from chromify.models import register_model
from chromify.models.unet import UNet


@register_model("encdec_s")
def encdec_s(base_width: int = 16, depth: int = 4, norm: str = "batch", upsample: str = "bilinear",
             out_channels: int = 2, **_) -> UNet:
    return UNet(base_width, depth, norm, upsample, skips=False, out_channels=out_channels)
