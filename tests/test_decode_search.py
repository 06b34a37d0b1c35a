"""The rule that picks a model's decode: as colourful as the truth, but not at the cost of the fidelity floor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data

from chromify.decode_search import Decode, candidates, choose, score_decodes
from chromify.lab import quantise_lab, rgb_to_lab
from chromify.metrics import colourfulness


def rows(*pairs):
    return [{"chroma_gain": 1.0 + i / 10, "psnr_gain_db": g, "delta_cf": d} for i, (g, d) in enumerate(pairs)]


def test_the_most_truthful_colour_above_the_floor_wins() -> None:
    tried = rows((1.2, 24.0), (0.7, 13.0), (0.4, 9.0), (-0.3, 2.0))
    assert choose(tried, 0.5)["delta_cf"] == 13.0
    assert choose(tried, 0.0)["delta_cf"] == 9.0
    assert choose(tried, -1.0)["delta_cf"] == 2.0


def test_a_decode_exactly_on_the_floor_is_above_it() -> None:
    assert choose(rows((1.0, 2.0), (1.5, 9.0)), 1.0)["delta_cf"] == 2.0


def test_delta_cf_is_how_far_from_the_truths_colourfulness_either_way() -> None:
    """A gray prediction is duller than the truth: its ΔCF is the truth's whole colourfulness, a positive number
    (signed, the dullest decode would look the most truthful and be chosen)."""

    class Gray(torch.nn.Module):  # the regression head's contract: ab/128 in (-1, 1), here 0 everywhere
        def forward(self, lum):
            return torch.zeros(lum.shape[0], 2, *lum.shape[-2:])

    rgb = [data.astronaut()[::8, ::8][:64, :64], data.coffee()[::6, ::6][:64, :64]]
    samples = np.stack([quantise_lab(rgb_to_lab(im)).transpose(2, 0, 1) for im in rgb])
    [row], info = score_decodes(Gray(), samples, [Decode(chroma_gain=1.0)])
    assert info["colourfulness_truth"] == pytest.approx(np.mean([colourfulness(im) for im in rgb]), rel=0.05)
    assert row["colourfulness"] < 0.5 and row["delta_cf"] == pytest.approx(
        info["colourfulness_truth"] - row["colourfulness"]) and row["delta_cf"] > 10


def test_ties_on_colour_go_to_fidelity_and_an_unreachable_floor_to_the_best_psnr() -> None:
    assert choose(rows((0.6, 5.0), (0.9, 5.0)), 0.5)["psnr_gain_db"] == 0.9
    assert choose(rows((0.2, 3.0), (0.4, 9.0)), 1.0)["psnr_gain_db"] == 0.4


def test_the_grid_spans_safe_to_bold_for_either_head() -> None:
    bins = candidates(bins_head=True)
    assert len(set(bins)) == len(bins) and min(d.temperature for d in bins) < 0.38 < max(d.temperature for d in bins)
    assert {d.prior_correction for d in bins} >= {0.0, 0.3} and {d.chroma_gain for d in bins} >= {1.0}
    plain = candidates(bins_head=False)
    assert all(d.temperature is None for d in plain) and min(d.chroma_gain for d in plain) == 1.0
    assert max(d.chroma_gain for d in plain) >= 1.5
