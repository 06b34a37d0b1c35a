"""Colour as a choice among quantised ab bins (Zhang, Isola & Efros, "Colorful Image Colorization", ECCV 2016).

Regression to ab learns the conditional mean of all plausible colours, which for an ambiguous object is a
desaturated brown. Predicting a distribution over ab bins keeps the alternatives apart, and the decode picks
how bold to be: the annealed mean softmax(logits / T) · centres is the distribution's mean at T = 1 (close to
what L2 regression gives) and moves towards its mode as T falls; Zhang et al. use T = 0.38.

Bins: the nodes of a square lattice on the ab plane (`grid` ab units apart, centred on 0) next to the ab of some
8-bit sRGB colour at some lightness (306 at grid 10; Zhang et al. count 313). Training targets are soft: each truth
ab is split over the four lattice nodes around it with bilinear weights, so the target's mean is the truth itself
(the round trip is exact for every sRGB colour), not the nearest centre. Rare colours are up-weighted
("class rebalancing") by 1 / ((1 − λ)·p̃ + λ/Q), p̃ the smoothed empirical distribution of the training set's
ab, normalised so that the expected weight is 1.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from chromify.lab import rgb_to_lab

AB_LIMIT = 110  # lattice nodes span ±AB_LIMIT: the sRGB gamut lies within a ∈ [-87, 99], b ∈ [-108, 95]


@functools.lru_cache(maxsize=4)
def _lattice(grid: int) -> tuple[np.ndarray, np.ndarray]:
    """(centres (Q, 2) float32 ab, node → nearest bin lookup (n·n,) int64)."""
    if grid < 2 or AB_LIMIT % grid:
        raise ValueError(f"bin grid {grid} must divide {AB_LIMIT} and be at least 2")
    n = 2 * AB_LIMIT // grid + 1
    levels = np.unique(np.r_[np.arange(0, 256, 3), 255]).astype(np.uint8)  # every 3rd level: all cells touched
    rgb = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(-1, 3)
    ab = rgb_to_lab(rgb)[:, 1:]
    # A node is a bin when some sRGB colour has it among its four lattice neighbours: then every colour's soft
    # target lies on bins and decodes back to the colour itself.
    low = np.clip(np.floor((ab + AB_LIMIT) / grid), 0, n - 2).astype(np.int64)
    inside = np.zeros((n, n), dtype=bool)
    for da in (0, 1):
        for db in (0, 1):
            inside[low[:, 0] + da, low[:, 1] + db] = True
    ia, ib = np.nonzero(inside)
    centres = (np.stack([ia, ib], axis=1) * grid - AB_LIMIT).astype(np.float32)
    # Every lattice node, in gamut or not, maps to its nearest bin: the soft targets of edge colours use it.
    ga, gb = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    all_nodes = np.stack([ga.ravel(), gb.ravel()], axis=1) * grid - AB_LIMIT
    lookup = np.argmin(((all_nodes[:, None, :] - centres[None]) ** 2).sum(-1), axis=1).astype(np.int64)
    return centres, lookup


def bin_centres(grid: int = 10) -> np.ndarray:
    """(Q, 2) float32 ab of each bin's centre."""
    return _lattice(grid)[0].copy()


class ABBins(nn.Module):
    """The bin set of one lattice spacing, with its encode / decode on torch tensors of ab in ab units.

    A module so that its tables move with the model (`.to(device)`): no host-to-device copy per step.
    `centres` is saved with a model's weights, so one loaded with another grid fails instead of mis-decoding.
    """

    def __init__(self, grid: int = 10):
        super().__init__()
        centres, lookup = _lattice(grid)
        self.grid = grid
        self.n = 2 * AB_LIMIT // grid + 1  # lattice nodes per axis
        self.register_buffer("centres", torch.from_numpy(centres.copy()))  # (Q, 2)
        self.register_buffer("lookup", torch.from_numpy(lookup.copy()), persistent=False)  # (n·n,) node → bin

    def __len__(self) -> int:
        return len(self.centres)

    def _node_position(self, ab: torch.Tensor) -> torch.Tensor:
        # Lattice coordinates, kept inside [0, n − 1) so that the upper neighbour always exists.
        return ((ab.float() + AB_LIMIT) / self.grid).clamp(0.0, self.n - 1 - 1e-4)

    def soft_encode(self, ab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ab (B, 2, H, W) → bin indices (B, 4, H, W) int64 and their bilinear weights (B, 4, H, W), summing to 1."""
        u = self._node_position(ab)
        i0 = u.floor()
        f = u - i0
        i0 = i0.long()
        ia, ib, fa, fb = i0[:, 0], i0[:, 1], f[:, 0], f[:, 1]
        nodes = torch.stack([ia * self.n + ib, (ia + 1) * self.n + ib, ia * self.n + ib + 1,
                             (ia + 1) * self.n + ib + 1], dim=1)
        weights = torch.stack([(1 - fa) * (1 - fb), fa * (1 - fb), (1 - fa) * fb, fa * fb], dim=1)
        return self.lookup[nodes], weights

    def nearest(self, ab: torch.Tensor) -> torch.Tensor:
        """ab (B, 2, H, W) → the index of the bin whose centre is nearest (B, H, W), for hard labels and weights."""
        node = torch.round(self._node_position(ab)).long()
        return self.lookup[node[:, 0] * self.n + node[:, 1]]

    def decode(self, logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """Annealed mean: logits (B, Q, H, W) → ab (B, 2, H, W) = Σ softmax(logits / T) · centres."""
        probs = torch.softmax(logits.float() / temperature, dim=1)
        return torch.einsum("bqhw,qc->bchw", probs, self.centres)


def smoothed_distribution(hist: np.ndarray, sigma: float = 5.0, grid: int = 10) -> np.ndarray:
    """Per-bin pixel counts (Q,) → a probability distribution (Q,) blurred by a Gaussian of `sigma` ab units."""
    centres, _ = _lattice(grid)
    p = hist.astype(np.float64) / max(hist.sum(), 1)
    if sigma > 0:
        d2 = ((centres[:, None, :] - centres[None]) ** 2).sum(-1)
        p = np.exp(-d2 / (2 * sigma**2)) @ p
        p /= p.sum()
    return p.astype(np.float32)


def rebalance_weights(hist: np.ndarray, lam: float = 0.5, sigma: float = 5.0, grid: int = 10) -> np.ndarray:
    """Per-bin loss weights (Q,) from per-bin pixel counts: 1 / ((1 − λ)·p̃ + λ/Q), with E_p̃[w] = 1.

    p̃ is the empirical distribution smoothed by a Gaussian of `sigma` ab units; λ = 1 gives equal weights.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"rebalance λ {lam} must lie in [0, 1]")
    p = smoothed_distribution(hist, sigma, grid).astype(np.float64)
    w = 1.0 / ((1.0 - lam) * p + lam / len(p))
    return (w / (p * w).sum()).astype(np.float32)


def bin_histogram(ab: np.ndarray, grid: int = 10) -> np.ndarray:
    """Pixel counts per bin (Q,) of ab values (B, 2, H, W) in ab units (nearest bin, as `ABBins.nearest`)."""
    bins = ABBins(grid)
    return torch.bincount(bins.nearest(torch.from_numpy(np.asarray(ab, dtype=np.float32))).ravel(),
                          minlength=len(bins)).numpy()


def soft_cross_entropy(logits: torch.Tensor, index: torch.Tensor, weight: torch.Tensor,
                       pixel_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over pixels of −Σ_k weight_k · log softmax(logits)[index_k], each pixel scaled by `pixel_weight`."""
    logp = F.log_softmax(logits.float(), dim=1)
    ce = -(logp.gather(1, index) * weight).sum(1)  # (B, H, W)
    if pixel_weight is not None:
        ce = ce * pixel_weight
    return ce.mean()
