"""U-Net on a torchvision ResNet-18 encoder: ImageNet features know what a thing is, which is what decides its
colour (sky, grass, skin), so they help most when training data is small.

ImageNet weights load only when `pretrained` is true and `resnet18-*.pth` is already in the local torch hub
cache (torch.hub.get_dir()/checkpoints); nothing is ever downloaded. torchvision is imported only when the model is
built, so the library imports without it.
"""

from __future__ import annotations

import torch
from torch import nn

from chromify.models import register_model
from chromify.models.unet import ConvBlock, Up
from chromify.models.weights import load_cached

# Channels of the ResNet-18 stages, at H/2 (conv1), H/4 (layer1), H/8, H/16, H/32 (layer4).
RESNET18_WIDTHS = (64, 64, 128, 256, 512)
# ImageNet's RGB mean and std averaged over the channels: a gray image is R = G = B, and the first conv's
# weights are summed over RGB (below), so this is the normalisation that conv saw, to first order.
GRAY_MEAN, GRAY_STD = 0.449, 0.226


class ResNetUNet(nn.Module):
    """L/100 (B, 1, H, W) → ab/128 (B, 2, H, W) in (-1, 1); `depth` (1–5) = ResNet stages used, H, W ÷ 2^depth."""

    def __init__(self, base_width: int = 16, depth: int = 4, norm: str = "batch", upsample: str = "bilinear",
                 pretrained: bool = False, out_channels: int = 2):
        super().__init__()
        if not 1 <= depth <= len(RESNET18_WIDTHS):
            raise ValueError(f"depth must be 1..{len(RESNET18_WIDTHS)} for a ResNet-18 encoder, got {depth}")
        from torchvision.models import resnet18

        net = resnet18(weights=None)
        if pretrained:
            state = load_cached("resnet18", "model.pretrained")
            if state is not None:
                net.load_state_dict(state)  # before conv1 is replaced, so the file's keys match one to one
        conv1 = nn.Conv2d(1, 64, 7, stride=2, padding=3, bias=False)
        with torch.no_grad():
            conv1.weight.copy_(net.conv1.weight.sum(dim=1, keepdim=True))  # (64, 3, 7, 7) → (64, 1, 7, 7)
        stages = [
            nn.Sequential(conv1, net.bn1, net.relu),  # (B, 64, H/2, W/2)
            nn.Sequential(net.maxpool, net.layer1),  # (B, 64, H/4, W/4)
            net.layer2,  # (B, 128, H/8, W/8)
            net.layer3,  # (B, 256, H/16, W/16)
            net.layer4,  # (B, 512, H/32, W/32)
        ]
        self.depth = depth
        self.multiple = 2**depth
        self.encoder = nn.ModuleList(stages[:depth])
        # A full-resolution skip of its own: the encoder's first output is already at H/2, and edges need H.
        self.stem = ConvBlock(1, base_width, norm)
        skip_widths = [base_width, *RESNET18_WIDTHS[:depth]]  # channels of the skip at H / 2^i
        dec_widths = [base_width * 2**i for i in range(depth)]  # decoder channels at H / 2^i
        cins = [*dec_widths[1:], skip_widths[depth]]  # what arrives at level i from level i + 1
        self.ups = nn.ModuleList(Up(cins[i], dec_widths[i], upsample) for i in reversed(range(depth)))
        self.decs = nn.ModuleList(
            ConvBlock(dec_widths[i] + skip_widths[i], dec_widths[i], norm) for i in reversed(range(depth))
        )
        self.head = nn.Conv2d(dec_widths[0], out_channels, 1)
        self.bounded = out_channels == 2  # otherwise logits for the ab-bins head

    def forward(self, lum: torch.Tensor) -> torch.Tensor:
        h, w = lum.shape[-2:]
        assert h % self.multiple == 0 and w % self.multiple == 0, f"H, W must divide by {self.multiple}"
        skips = [self.stem(lum - 0.5)]  # (B, base_width, H, W)
        x = (lum - GRAY_MEAN) / GRAY_STD
        for stage in self.encoder:
            x = stage(x)  # (B, RESNET18_WIDTHS[i], H / 2^(i+1), W / 2^(i+1))
            skips.append(x)
        skips.pop()  # the deepest stage is x itself
        for up, dec in zip(self.ups, self.decs, strict=True):
            x = up(x)  # (B, dec_width_i, H / 2^i, W / 2^i)
            x = dec(torch.cat([x, skips.pop()], dim=1))  # (B, dec_width_i, H / 2^i, W / 2^i)
        out = self.head(x)  # (B, out_channels, H, W)
        return torch.tanh(out) if self.bounded else out


@register_model("resnet18_unet")
def resnet18_unet(base_width: int = 16, depth: int = 4, norm: str = "batch", upsample: str = "bilinear",
                  pretrained: bool = False, out_channels: int = 2, **_) -> ResNetUNet:
    return ResNetUNet(base_width, depth, norm, upsample, pretrained, out_channels)
