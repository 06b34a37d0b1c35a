"""Evaluate a candidate on the test split against the gray baseline (ab = 0) and the champion, then gate it.

All three are scored on the same images, reconstructed from the stored L and their predicted ab.
"""

from __future__ import annotations

import base64
import csv
import html
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from chromify.config import GateParams
from chromify.errors import DataError
from chromify.gate import GateDecision, GateThresholds, ModelScore, decide
from chromify.io import atomic_write_json, atomic_write_text
from chromify.lab import dequantise_lab, lab_to_rgb
from chromify.loader import ShardSet
from chromify.metrics import image_metrics, summarise

GATE_METRICS = ("psnr", "ssim", "delta_e2000", "colourfulness", "colourfulness_truth", "delta_cf")


@dataclass
class Scored:
    name: str
    model_id: str | None
    rows: list[dict[str, float]]
    images: np.ndarray  # (N, S, S, 3) uint8 RGB

    @property
    def summary(self) -> dict[str, float]:
        return summarise(self.rows)


def model_id_of(model_dir: str | Path) -> str:
    """A model's identity is the hash of its weights: two names for one model compare equal."""
    import hashlib

    return hashlib.sha256((Path(model_dir) / "model.safetensors").read_bytes()).hexdigest()[:16]


def _to_rgb(lab: np.ndarray) -> np.ndarray:
    return (lab_to_rgb(lab) * 255.0 + 0.5).astype(np.uint8)


def score(name: str, lab_truth: np.ndarray, ab_pred: np.ndarray | None, model_id: str | None) -> Scored:
    """lab_truth (N, S, S, 3) float; ab_pred (N, S, S, 2) or None for the gray baseline."""
    truth_rgb = _to_rgb(lab_truth)
    pred_lab = lab_truth.copy()
    pred_lab[..., 1:] = 0.0 if ab_pred is None else ab_pred
    pred_rgb = _to_rgb(pred_lab)
    rows = [image_metrics(p.astype(np.float32) / 255.0, t.astype(np.float32) / 255.0)
            for p, t in zip(pred_rgb, truth_rgb, strict=True)]
    return Scored(name, model_id, rows, pred_rgb)


def predict_split(model_dir: str | Path, data: np.ndarray, batch_size: int) -> np.ndarray:
    """(N, 3, S, S) uint8 shard samples → (N, S, S, 2) predicted ab."""
    import torch

    from chromify.inference import Colorizer

    col = Colorizer(model_dir)
    out = []
    for b in range(0, len(data), batch_size):
        lum = torch.from_numpy(data[b : b + batch_size, :1].astype(np.float32) / 255.0)
        out.append(col.predict_ab(lum).permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(out)


def _png_data_uri(rgb: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def gallery_indices(candidate: Scored, count: int, seed: int) -> list[int]:
    """The worst and best images by ΔE2000, plus a seeded random sample: failures are shown, not hidden."""
    n = len(candidate.rows)
    order = np.argsort([r["delta_e2000"] for r in candidate.rows])
    chosen = list(dict.fromkeys([int(order[-1]), int(order[0])]))[: min(count, n)]
    rest = [i for i in np.random.default_rng(seed).permutation(n).tolist() if i not in chosen]
    return chosen + rest[: max(0, count - len(chosen))]


def write_gallery(path: Path, truth_rgb: np.ndarray, columns: list[Scored], indices: list[int], title: str) -> None:
    head = "".join(f"<th>{html.escape(c.name)}</th>" for c in columns)
    body = []
    for i in indices:
        cells = "".join(
            f'<td><img src="{_png_data_uri(c.images[i])}" alt="{html.escape(c.name)} {i}"><br>'
            f"PSNR {c.rows[i]['psnr']:.2f} dB · ΔE {c.rows[i]['delta_e2000']:.1f} · CF {c.rows[i]['colourfulness']:.1f}"
            "</td>"
            for c in columns
        )
        body.append(f'<tr>{cells}<td><img src="{_png_data_uri(truth_rgb[i])}" alt="truth {i}"></td></tr>')
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:1em}}td{{text-align:center;font-size:12px;padding:4px}}
img{{width:192px;height:192px;image-rendering:auto}}</style></head>
<body><h1>{html.escape(title)}</h1><p>Test split, worst and best by ΔE2000 first, then a seeded sample.</p>
<table><tr>{head}<th>truth</th></tr>{''.join(body)}</table></body></html>
"""
    atomic_write_text(path, page)


def markdown_table(columns: list[Scored], truth_cf: float) -> str:
    lines = ["| model | PSNR (dB) | SSIM | ΔE2000 | colourfulness | ΔCF |", "|---|---|---|---|---|---|"]
    for c in columns:
        s = c.summary
        lines.append(f"| {c.name} | {s['psnr']:.2f} | {s['ssim']:.4f} | {s['delta_e2000']:.2f} | "
                     f"{s['colourfulness']:.1f} | {s['delta_cf']:.1f} |")
    lines.append(f"\nColourfulness of the truth: {truth_cf:.1f}.")
    return "\n".join(lines) + "\n"


def evaluate(data_dir: str | Path, candidate_dir: str | Path, champion_dir: str | Path | None,
             gate: GateParams, reports_dir: str | Path, batch_size: int = 16, gallery_size: int = 6,
             seed: int = 0) -> tuple[dict[str, Any], GateDecision]:
    """Score, gate and write the reports; returns (metrics summary, gate decision)."""
    reports = Path(reports_dir)
    test = ShardSet(Path(data_dir) / "test")
    if len(test) == 0:
        raise DataError(f"{Path(data_dir) / 'test'}: the test split is empty; add photos or raise "
                        "ingest.test_fraction")
    data = test.all()
    lab_truth = dequantise_lab(data.transpose(0, 2, 3, 1))
    candidate_id = model_id_of(candidate_dir)
    candidate = score("candidate", lab_truth, predict_split(candidate_dir, data, batch_size), candidate_id)
    gray = score("gray (ab = 0)", lab_truth, None, None)
    columns = [gray, candidate]
    champion = None
    if champion_dir is not None:
        champion = score("champion", lab_truth, predict_split(champion_dir, data, batch_size),
                         model_id_of(champion_dir))
        columns.append(champion)

    decision = decide(
        ModelScore(candidate_id, candidate.summary),
        gray.summary,
        ModelScore(champion.model_id, champion.summary) if champion else None,
        GateThresholds(**vars(gate)),
    )
    truth_rgb = _to_rgb(lab_truth)
    summary: dict[str, Any] = {
        "images": len(test),
        "candidate": candidate.summary,
        "gray": gray.summary,
        "psnr_gain_db": candidate.summary["psnr"] - gray.summary["psnr"],
        "gate_passed": decision.passed,
    }
    if champion:
        summary["champion"] = champion.summary
    atomic_write_json(reports / "metrics.json", summary)
    atomic_write_json(reports / "gate.json", {**decision.to_dict(), "candidate_id": candidate_id})
    per_image = io.StringIO()
    writer = csv.writer(per_image, lineterminator="\n")
    writer.writerow(["index", "model", *GATE_METRICS[:-1]])
    for c in columns:
        for i, r in enumerate(c.rows):
            writer.writerow([i, c.name, *(f"{r[k]:.6g}" for k in GATE_METRICS[:-1])])
    atomic_write_text(reports / "eval_per_image.csv", per_image.getvalue())
    ordered = [gray, candidate] + ([champion] if champion else [])
    write_gallery(reports / "gallery.html", truth_rgb, ordered, gallery_indices(candidate, gallery_size, seed),
                  "Chromify: gray input | candidate | champion | truth")
    atomic_write_text(reports / "metrics.md", markdown_table(ordered, candidate.summary["colourfulness_truth"]))
    return summary, decision
