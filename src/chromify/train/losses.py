"""What the generator is trained to minimise, term by term (see docs/source/training.md for why each exists).

- regression (L1 or Huber on ab/128): gets the layout of colour right, but alone it drifts to the per-pixel
  median/mean of all plausible colours, which for most objects is a desaturated brown: the sepia look;
- bins (with `model.head: bins`): cross-entropy between the predicted distribution over quantised ab and the
  soft-encoded truth, each pixel weighted by its colour's rarity (chromify.ab_bins); the regression term then
  applies to the annealed-mean decode, with `train.regression_weight` (0: classification alone, as Zhang et al.);
- colourfulness: penalises the gap between each image's mean chroma and the truth's, against that drift;
- perceptual (VGG-16 features of the RGB rendering): compares textures and object-level colour, not pixels;
  only when the VGG-16 weights are already in the local torch hub cache;
- adversarial (pix2pix PatchGAN, conditioned on L): rewards colours a discriminator cannot tell from real ones.
  It joins after a pure-regression warm-up (`train.gan_start_fraction`), as in NoGAN / DeOldify, so the
  discriminator first meets a generator that already colours plausibly.

Conventions: L is L/100 in [0, 1] as (B, 1, H, W); ab is ab/128 in [-1, 1] as (B, 2, H, W).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from chromify.ab_bins import ABBins, soft_cross_entropy
from chromify.config import TrainParams
from chromify.errors import ConfigError
from chromify.models.weights import load_cached

# Huber's quadratic zone: errors below ~6 ab units (0.05 × 128) are squared, larger ones count linearly.
HUBER_BETA = 0.05


def regression_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Mean L1 or Huber (smooth L1, beta = HUBER_BETA) between ab/128 maps (B, 2, H, W)."""
    if kind == "l1":
        return F.l1_loss(pred, target)
    if kind == "huber":
        return F.smooth_l1_loss(pred, target, beta=HUBER_BETA)
    if kind == "l2":
        return F.mse_loss(pred, target)
    raise ConfigError(f"train.loss {kind!r}: expected l1, huber or l2")


def colourfulness(ab: torch.Tensor) -> torch.Tensor:
    """Mean chroma per image of ab/128 (B, 2, H, W) → (B,): 0 for gray, up to √2 for the most saturated."""
    return torch.sqrt(ab.float().pow(2).sum(1) + 1e-8).mean(dim=(-2, -1))  # epsilon: finite gradient at gray


def colourfulness_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over images of |chroma(pred) − chroma(target)|: per image, so a vivid photo cannot pay for a dull one."""
    return (colourfulness(pred) - colourfulness(target)).abs().mean()


# sRGB (D65) from XYZ, the standard matrix (IEC 61966-2-1); chromify.lab inverts skimage's forward matrix, which
# agrees with this to about 1e-4 — far below what a loss can notice.
_RGB_FROM_XYZ = ((3.2406, -1.5372, -0.4986), (-0.9689, 1.8758, 0.0415), (0.0557, -0.2040, 1.0570))
_WHITE_D65 = (0.95047, 1.0, 1.08883)


@functools.lru_cache(maxsize=8)
def _lab_constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # Made once per device: a host-to-GPU copy every step would stall the launch queue.
    return (torch.tensor(_WHITE_D65, device=device).view(1, 3, 1, 1),
            torch.tensor(_RGB_FROM_XYZ, device=device))


def lab_to_rgb(lum: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """Differentiable CIE Lab → sRGB: L/100 (B, 1, H, W) and ab/128 (B, 2, H, W) → RGB (B, 3, H, W) in [0, 1]."""
    with torch.autocast(lum.device.type, enabled=False):  # cube, matmul and 1/2.4 power need fp32, not bf16
        return _lab_to_rgb_fp32(lum.float(), ab.float())


def _lab_to_rgb_fp32(lum: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    fy = (lum[:, 0] * 100.0 + 16.0) / 116.0
    fx = fy + ab[:, 0] * 128.0 / 500.0
    fz = (fy - ab[:, 1] * 128.0 / 200.0).clamp(min=0.0)  # as chromify.lab / skimage: negative z clipped
    f = torch.stack([fx, fy, fz], dim=1)  # (B, 3, H, W)
    t = torch.where(f > 6.0 / 29.0, f.pow(3), (f - 16.0 / 116.0) * 3.0 * (6.0 / 29.0) ** 2)
    white, rgb_from_xyz = _lab_constants(t.device)
    linear = torch.einsum("ij,bjhw->bihw", rgb_from_xyz, t * white)
    # The clamp inside the power keeps its gradient finite; the other branch of `where` is linear.
    srgb = torch.where(linear > 0.0031308, 1.055 * linear.clamp(min=0.0031308).pow(1 / 2.4) - 0.055, 12.92 * linear)
    return srgb.clamp(0.0, 1.0)


# VGG-16's `features` up to relu3_3: (out channels | "M" for max-pool), in torchvision's layer order so that its
# state-dict keys (features.0.weight, …) load as they are. Deeper layers add cost and little for colour.
_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256)
_VGG_TAPS = (3, 8, 15)  # relu1_2, relu2_2, relu3_3
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class VGGFeatures(nn.Module):
    """Frozen VGG-16 features of an RGB image (B, 3, H, W) in [0, 1]: a list of relu1_2, relu2_2, relu3_3 maps."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in _VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=False)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGGFeatures:
        return super().train(False)  # frozen: a model.train() elsewhere must not flip it

    def forward(self, rgb: torch.Tensor) -> list[torch.Tensor]:
        x = (rgb - self.mean) / self.std
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in _VGG_TAPS:
                taps.append(x)
        return taps


def load_vgg_features() -> VGGFeatures | None:
    """VGG-16 features with ImageNet weights from the local hub cache (vgg16-*.pth), or None (one-line note)."""
    state = load_cached("vgg16", "perceptual term off")
    if state is None:
        return None
    net = VGGFeatures()
    wanted = {k: v for k, v in state.items() if k.startswith("features.") and k.split(".")[1].isdigit()
              and int(k.split(".")[1]) < len(net.features)}
    net.load_state_dict(wanted)
    return net


def perceptual_loss(vgg: VGGFeatures, lum: torch.Tensor, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean L1 between VGG features of the RGB renderings of (L, pred) and (L, target)."""
    with torch.no_grad():
        real = vgg(lab_to_rgb(lum, target))
    fake = vgg(lab_to_rgb(lum, pred))
    return sum(F.l1_loss(f.float(), r.float()) for f, r in zip(fake, real, strict=True)) / len(real)


MIN_GAN_SIDE = 24  # px: below it the fourth block's map is 1×1, which InstanceNorm refuses


class PatchDiscriminator(nn.Module):
    """pix2pix's 70×70 PatchGAN on (L, ab) (B, 3, H, W) → real/fake logits (B, 1, H/8 − 2, W/8 − 2).

    InstanceNorm instead of pix2pix's BatchNorm: real and fake go through in one batch (one DDP forward per step),
    and instance statistics do not mix them.
    """

    def __init__(self, width: int = 64):
        super().__init__()

        def block(cin: int, cout: int, stride: int, norm: bool) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 4, stride, 1, bias=not norm),
                    *([nn.InstanceNorm2d(cout, affine=True)] if norm else []),
                    nn.LeakyReLU(0.2, inplace=True)]

        self.net = nn.Sequential(
            *block(3, width, 2, norm=False),  # (B, w, H/2, W/2)
            *block(width, width * 2, 2, norm=True),  # (B, 2w, H/4, W/4)
            *block(width * 2, width * 4, 2, norm=True),  # (B, 4w, H/8, W/8)
            *block(width * 4, width * 8, 1, norm=True),  # (B, 8w, H/8 − 1, W/8 − 1)
            nn.Conv2d(width * 8, 1, 4, 1, 1),  # (B, 1, H/8 − 2, W/8 − 2)
        )

    def forward(self, lum: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([lum * 2.0 - 1.0, ab], dim=1))


def discriminator_loss(disc: nn.Module, lum: torch.Tensor, real_ab: torch.Tensor,
                       fake_ab: torch.Tensor) -> torch.Tensor:
    """pix2pix's D objective, halved as there: ½·(BCE(D(real), 1) + BCE(D(fake), 0)); `fake_ab` is detached."""
    logits = disc(torch.cat([lum, lum]), torch.cat([real_ab, fake_ab.detach()])).float()
    real, fake = logits.chunk(2)
    return 0.5 * (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                  + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))


def generator_adversarial_loss(disc: nn.Module, lum: torch.Tensor, fake_ab: torch.Tensor) -> torch.Tensor:
    """The non-saturating G objective BCE(D(fake), 1); gradients reach `fake_ab`, not D (caller freezes D)."""
    logits = disc(lum, fake_ab).float()
    return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))


class GeneratorLoss(nn.Module):
    """The weighted sum of the terms `TrainParams` switches on; returns each term too, for the curves."""

    def __init__(self, p: TrainParams, bins: ABBins | None = None, bin_weights: torch.Tensor | None = None):
        super().__init__()
        regression_loss(torch.zeros(1), torch.zeros(1), p.loss)  # fail at start-up on a bad train.loss, not later
        if bins is None and not p.regression_weight > 0:
            raise ConfigError("train.regression_weight must be positive unless model.head is bins")
        self.kind = p.loss
        self.regression_w = p.regression_weight
        self.bins = bins
        self.register_buffer("bin_weights", bin_weights, persistent=False)
        self.colour_w = p.colourfulness_weight
        self.perceptual_w = p.perceptual_weight
        self.gan_w = p.gan_weight
        self.vgg = load_vgg_features() if p.perceptual_weight else None

    def forward(self, lum: torch.Tensor, pred: torch.Tensor, target: torch.Tensor,
                disc: nn.Module | None = None, logits: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Terms and their weighted `total`; pass `disc` once the adversarial phase has begun, and the bin
        `logits` (B, Q, H, W) when the model has the ab-bins head."""
        pred = pred.float()
        terms = {}
        if self.regression_w:
            terms["regression"] = regression_loss(pred, target, self.kind)
        if logits is not None and self.bins is not None:
            small = target if logits.shape[-2:] == target.shape[-2:] else \
                F.interpolate(target, size=logits.shape[-2:], mode="area")  # a bins head with a stride
            ab = small * 128.0
            index, weight = self.bins.soft_encode(ab)
            rarity = None if self.bin_weights is None else self.bin_weights[self.bins.nearest(ab)]
            terms["bins"] = soft_cross_entropy(logits, index, weight, rarity)
        if self.colour_w:
            terms["colourfulness"] = colourfulness_loss(pred, target)
        if self.perceptual_w and self.vgg is not None:
            terms["perceptual"] = perceptual_loss(self.vgg, lum, pred, target)
        if self.gan_w and disc is not None:
            terms["adversarial"] = generator_adversarial_loss(disc, lum, pred)
        weights = {"regression": self.regression_w, "bins": 1.0, "colourfulness": self.colour_w,
                   "perceptual": self.perceptual_w, "adversarial": self.gan_w}
        terms["total"] = sum(weights[k] * v for k, v in terms.items())
        return terms
