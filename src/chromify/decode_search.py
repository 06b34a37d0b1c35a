"""Choose, on the validation split, how boldly a trained model's colours are decoded.

Fidelity (PSNR) and vividness (colourfulness near the truth's) pull against each other: where a model is unsure, a
vivid colour is a bet that costs more squared error than a dull one. Which decode gives the best balance depends on
the model and the data (how long it trained, how sure it became), so it is measured per model rather than fixed:
the rule keeps a fidelity floor over the gray baseline and, above it, takes the decode whose colourfulness is
closest to the truth's.

A decode is the bins head's annealed-mean temperature T and prior correction β (models/binned.py) and, for both
heads, a chroma gain g that scales the predicted ab about gray (applied by `inference.Colorizer`).
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from chromify.lab import dequantise_lab, lab_to_rgb8
from chromify.metrics import colourfulness, psnr

TEMPERATURES = (0.2, 0.38, 0.6, 1.0)
PRIOR_CORRECTIONS = (0.0, 0.15, 0.3, 0.45, 0.6)
BINS_GAINS = (1.0, 1.2, 1.4)
REGRESSION_GAINS = tuple(round(1.0 + 0.1 * i, 1) for i in range(11))


@dataclass(frozen=True)
class Decode:
    temperature: float | None = None  # bins head only
    prior_correction: float | None = None  # bins head only
    chroma_gain: float = 1.0


DECODE_KEYS = tuple(f.name for f in fields(Decode))  # as they appear in an exported config's "model"


def ab_units(out: torch.Tensor, chroma_gain: float = 1.0) -> torch.Tensor:
    """A model's ab/128 → ab × the chroma gain, kept inside the ab range: every consumer scales the same way."""
    return (out.float() * (128.0 * chroma_gain)).clamp_(-128.0, 128.0)


def describe(decode: dict[str, Any]) -> str:
    """A decode (a Decode's fields, or a scored row) as people read it: "T 0.38, β 0.45, gain 1" or "gain 1.2"."""
    gain = f"gain {decode['chroma_gain']:g}"
    if decode["temperature"] is None:  # the regression head
        return gain
    return f"T {decode['temperature']:g}, β {decode['prior_correction']:g}, {gain}"


def candidates(bins_head: bool) -> list[Decode]:
    if not bins_head:
        return [Decode(chroma_gain=g) for g in REGRESSION_GAINS]
    return [Decode(t, b, g) for t, b, g in itertools.product(TEMPERATURES, PRIOR_CORRECTIONS, BINS_GAINS)]


@torch.no_grad()
def score_decodes(model: torch.nn.Module, samples: np.ndarray, decodes: list[Decode], resolution: int = 0,
                  device: str = "cpu", batch_size: int = 32) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Per decode: mean PSNR gain over gray (dB), mean colourfulness and ΔCF on uint8 shard samples (N, 3, S, S).

    Scored as evaluation scores a model: the model runs at `resolution`, its ab is upsampled under the full L.
    The bins head's logits are computed once per batch and decoded every way from them.
    """
    was_training = model.training
    model.eval()
    bins = hasattr(model, "bins")
    side = samples.shape[-1]
    gain_sum = np.zeros(len(decodes))
    cf_sum = np.zeros(len(decodes))
    cf_truth = 0.0
    for start in range(0, len(samples), batch_size):
        batch = samples[start:start + batch_size]
        lab = dequantise_lab(batch.transpose(0, 2, 3, 1))
        truth = lab_to_rgb8(lab)  # in 8-bit steps, as the evaluate stage scores its outputs
        gray_lab = lab.copy()
        gray_lab[..., 1:] = 0.0
        gray_psnr = np.array([psnr(p, t) for p, t in zip(lab_to_rgb8(gray_lab), truth, strict=True)])
        cf_truth += sum(colourfulness(t) for t in truth)
        lum = torch.from_numpy(batch[:, :1].astype(np.float32) / 255.0).to(device)
        if resolution and resolution != side:
            lum = F.interpolate(lum, size=(resolution, resolution), mode="area")
        lum = lum.contiguous(memory_format=torch.channels_last)
        if bins:
            _, logits = model(lum, with_logits=True)
        else:
            raw = model(lum).float()
        for i, d in enumerate(decodes):
            ab = model.decode_logits(logits, d.temperature, d.prior_correction) if bins else raw
            ab = F.interpolate(ab_units(ab, d.chroma_gain), size=(side, side), mode="bilinear", align_corners=False)
            pred = lab.copy()
            pred[..., 1:] = ab.permute(0, 2, 3, 1).cpu().numpy()
            rgb = lab_to_rgb8(pred)
            gain_sum[i] += sum(psnr(p, t) for p, t in zip(rgb, truth, strict=True)) - gray_psnr.sum()
            cf_sum[i] += sum(colourfulness(p) for p in rgb)
    model.train(was_training)
    n = len(samples)
    rows = [{**asdict(d), "psnr_gain_db": float(gain_sum[i] / n), "colourfulness": float(cf_sum[i] / n),
             "delta_cf": float(abs(cf_sum[i] - cf_truth) / n)} for i, d in enumerate(decodes)]
    return rows, {"images": n, "colourfulness_truth": float(cf_truth / n)}


def choose(rows: list[dict[str, Any]], min_psnr_gain_db: float) -> dict[str, Any]:
    """The most truthfully colourful decode (least ΔCF) that still beats gray by `min_psnr_gain_db`; when none
    does, the one with the most PSNR gain."""
    floor = [r for r in rows if r["psnr_gain_db"] >= min_psnr_gain_db]
    if floor:
        return min(floor, key=lambda r: (r["delta_cf"], -r["psnr_gain_db"]))
    return max(rows, key=lambda r: r["psnr_gain_db"])
