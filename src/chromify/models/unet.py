"""U-Net for L → ab: widths base_width × 2^level, skips kept on a stack, bounded output."""

from __future__ import annotations

import torch
from torch import nn

from chromify.models import register_model


def norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}")


class ConvBlock(nn.Sequential):
    """Two 3×3 conv → norm → SiLU."""

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
    def __init__(self, cin: int, cout: int, mode: str):
        super().__init__()
        if mode == "transposed":
            self.up = nn.ConvTranspose2d(cin, cout, 2, stride=2)
        elif mode == "bilinear":
            self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                    nn.Conv2d(cin, cout, 1))
        else:
            raise ValueError(f"unknown upsample {mode!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x)


class UNet(nn.Module):
    def __init__(self, base_width: int = 16, depth: int = 4, norm: str = "batch", upsample: str = "bilinear",
                 skips: bool = True):
        super().__init__()
        self.depth = depth
        self.skips = skips
        widths = [base_width * 2**i for i in range(depth + 1)]
        self.stem = ConvBlock(1, widths[0], norm)
        self.downs = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), ConvBlock(widths[i], widths[i + 1], norm)) for i in range(depth)
        )
        self.ups = nn.ModuleList(Up(widths[i + 1], widths[i], upsample) for i in reversed(range(depth)))
        self.decs = nn.ModuleList(
            ConvBlock(widths[i] * (2 if skips else 1), widths[i], norm) for i in reversed(range(depth))
        )
        self.head = nn.Conv2d(widths[0], 2, 1)

    def forward(self, lum: torch.Tensor) -> torch.Tensor:
        # lum: (B, 1, H, W) with H, W divisible by 2^depth → (B, 2, H, W) in (-1, 1)
        h, w = lum.shape[-2:]
        assert h % 2**self.depth == 0 and w % 2**self.depth == 0, f"H, W must divide by {2**self.depth}"
        x = self.stem(lum - 0.5)
        stack = [x]
        for down in self.downs:
            x = down(x)
            stack.append(x)
        stack.pop()
        for up, dec in zip(self.ups, self.decs, strict=True):
            x = up(x)
            skip = stack.pop()
            x = dec(torch.cat([x, skip], dim=1) if self.skips else x)
        return torch.tanh(self.head(x))


@register_model("unet_s")
def unet_s(base_width: int = 16, depth: int = 4, norm: str = "batch", upsample: str = "bilinear", **_) -> UNet:
    return UNet(base_width, depth, norm, upsample)


@register_model("unet_b")
def unet_b(base_width: int = 32, depth: int = 4, norm: str = "batch", upsample: str = "bilinear", **_) -> UNet:
    return UNet(base_width, depth, norm, upsample)
