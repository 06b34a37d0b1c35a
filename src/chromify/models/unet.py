"""U-Net for L → ab: widths base_width × 2^level, skips kept on a stack, bounded output."""

from __future__ import annotations

import torch
from torch import nn

from chromify.models import register_model


def norm_layer(kind: str, channels: int) -> nn.Module:
    """BatchNorm for the usual batches; GroupNorm when per-GPU batches are tiny; none for ablations."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r} (batch | group | none)")


class ConvBlock(nn.Sequential):
    """Two 3×3 conv → norm → SiLU: (B, cin, H, W) → (B, cout, H, W)."""

    def __init__(self, cin: int, cout: int, norm: str):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=norm == "none"),
            norm_layer(norm, cout),
            nn.SiLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=norm == "none"),
            norm_layer(norm, cout),
            nn.SiLU(inplace=True),
        )


class Up(nn.Module):
    """(B, cin, H, W) → (B, cout, 2H, 2W). Bilinear + 1×1 avoids the checkerboard a transposed conv can leave."""

    def __init__(self, cin: int, cout: int, mode: str):
        super().__init__()
        if mode == "transposed":
            self.up = nn.ConvTranspose2d(cin, cout, 2, stride=2)
        elif mode == "bilinear":
            self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                    nn.Conv2d(cin, cout, 1))
        else:
            raise ValueError(f"unknown upsample {mode!r} (bilinear | transposed)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x)


class UNet(nn.Module):
    """L/100 (B, 1, H, W) → ab/128 (B, 2, H, W) in (-1, 1); `skips=False` is the plain encoder-decoder.

    `out_channels` other than 2 gives unbounded per-pixel logits instead (the ab-bins head, models/binned.py).
    """

    def __init__(self, base_width: int = 16, depth: int = 4, norm: str = "batch", upsample: str = "bilinear",
                 skips: bool = True, out_channels: int = 2):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self.depth = depth
        self.multiple = 2**depth
        self.skips = skips
        widths = [base_width * 2**i for i in range(depth + 1)]  # channels at resolution H / 2^i
        self.stem = ConvBlock(1, widths[0], norm)
        self.downs = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), ConvBlock(widths[i], widths[i + 1], norm)) for i in range(depth)
        )
        self.ups = nn.ModuleList(Up(widths[i + 1], widths[i], upsample) for i in reversed(range(depth)))
        self.decs = nn.ModuleList(
            ConvBlock(widths[i] * (2 if skips else 1), widths[i], norm) for i in reversed(range(depth))
        )
        self.head = nn.Conv2d(widths[0], out_channels, 1)
        self.bounded = out_channels == 2

    def forward(self, lum: torch.Tensor) -> torch.Tensor:
        h, w = lum.shape[-2:]
        assert h % self.multiple == 0 and w % self.multiple == 0, f"H, W must divide by {self.multiple}"
        x = self.stem(lum - 0.5)  # (B, w0, H, W); centring L helps the first layer's init
        stack = [x]
        for down in self.downs:
            x = down(x)  # (B, w_{i+1}, H / 2^(i+1), W / 2^(i+1))
            stack.append(x)
        stack.pop()  # the bottleneck is x itself, not a skip
        for up, dec in zip(self.ups, self.decs, strict=True):
            x = up(x)  # (B, w_i, H / 2^i, W / 2^i)
            skip = stack.pop()
            x = dec(torch.cat([x, skip], dim=1) if self.skips else x)  # (B, w_i, H / 2^i, W / 2^i)
        out = self.head(x)  # (B, out_channels, H, W)
        return torch.tanh(out) if self.bounded else out


@register_model("unet_s")
def unet_s(base_width: int = 16, depth: int = 4, norm: str = "batch", upsample: str = "bilinear",
           out_channels: int = 2, **_) -> UNet:
    return UNet(base_width, depth, norm, upsample, out_channels=out_channels)


# Kept for models registered under it: with `model.base_width` given, as training always gives it, it is unet_s;
# set base_width 32 for the bigger U-Net.
@register_model("unet_b")
def unet_b(base_width: int = 32, depth: int = 4, norm: str = "batch", upsample: str = "bilinear",
           out_channels: int = 2, **_) -> UNet:
    return UNet(base_width, depth, norm, upsample, out_channels=out_channels)
