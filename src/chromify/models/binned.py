"""The ab-bins head: any registered backbone made to output one logit per ab bin, decoded by the annealed mean.

It keeps the models' contract (L/100 → ab/128), so serving, evaluation and validation need not know which head
a model has; training asks for the logits too (`with_logits=True`) for the cross-entropy on soft targets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from chromify.ab_bins import ABBins


class BinnedColour(nn.Module):
    """(B, 1, H, W) L/100 → (B, 2, H, W) ab/128 = annealed mean of the backbone's (B, Q, H/s, W/s) bin logits,
    upsampled bilinearly.

    `stride` s > 1 average-pools the last features before the bin layer, as Zhang et al. predict at a quarter of
    the input size: ~300 logits per pixel dominate the cost of a small U-Net otherwise (4× its step time on CPU
    at s = 1), and colour is smooth enough for the ab map to be upsampled.
    """

    def __init__(self, net: nn.Module, grid: int = 10, temperature: float = 0.38, stride: int = 1,
                 prior_correction: float = 0.0):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if stride < 1 or net.multiple % stride:
            raise ValueError(f"bin stride {stride} must be at least 1 and divide {net.multiple}")
        if stride > 1:
            net.head = nn.Sequential(nn.AvgPool2d(stride), net.head)
        self.net = net
        self.stride = stride
        self.bins = ABBins(grid)
        self.temperature = temperature
        self.multiple = net.multiple
        self.prior_correction = prior_correction
        # log p̃ of the training set's colours (start_at_prior), for the decode-time prior correction.
        self.register_buffer("log_prior", torch.zeros(len(self.bins)))

    @torch.no_grad()
    def start_at_prior(self, hist) -> None:
        """Set the last layer's bias to the log of the training set's colour distribution (smoothed).

        Training then starts from the marginal distribution instead of a uniform one over ~300 bins: an optimiser
        moving each weight by ~lr per step would otherwise spend hundreds of steps just learning the bias.
        """
        from chromify.ab_bins import smoothed_distribution

        head = self.net.head[-1] if isinstance(self.net.head, nn.Sequential) else self.net.head
        prior = torch.from_numpy(smoothed_distribution(hist, grid=self.bins.grid)).to(head.bias)
        self.log_prior.copy_(prior.clamp_min(1e-6).log())
        head.bias.copy_(self.log_prior)

    def decode_logits(self, logits: torch.Tensor, temperature: float | None = None,
                      prior_correction: float | None = None) -> torch.Tensor:
        """Bin logits → ab/128 at the input's resolution, by the model's decode or the one given (for trying
        several on the same logits: chromify.decode_search)."""
        temperature = self.temperature if temperature is None else temperature
        beta = self.prior_correction if prior_correction is None else prior_correction
        decoding = logits.float()
        if beta:  # p(c | L) / p̃(c)^β: favour colours the training set's prior made look unlikely
            decoding = decoding - beta * self.log_prior[None, :, None, None]
        ab = self.bins.decode(decoding, temperature) / 128.0
        if self.stride > 1:
            ab = F.interpolate(ab, scale_factor=self.stride, mode="bilinear", align_corners=False)
        return ab

    def forward(self, lum: torch.Tensor, with_logits: bool = False):
        logits = self.net(lum)
        ab = self.decode_logits(logits)
        return (ab, logits) if with_logits else ab
