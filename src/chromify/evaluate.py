"""Evaluate a candidate on the test split against the gray baseline (ab = 0) and the champion, then gate it.

All three are scored on the same images, reconstructed from the stored L and their predicted ab.

The test split is read `EVAL_CHUNK` photos at a time and only per-image numbers (plus Inception features for FID)
outlive a chunk, so memory does not grow with the split (it used to: ~8 MB per 256 px test photo), but for FID's
features, 16 KB a photo and model, kept only when its weights are on disk.

FID and LPIPS are reported too when the networks they need already have weights on this machine (the torch hub
cache); they are never downloaded. Without them the metrics say `"fid": null` / `"lpips": null` and one line in
`notes` says what was missing and where it was looked for. They are reported, not gated on.
"""

from __future__ import annotations

import base64
import csv
import html
import io
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from chromify.config import GateParams
from chromify.errors import DataError
from chromify.gate import GateDecision, GateThresholds, ModelScore, decide
from chromify.io import atomic_write_json, atomic_write_text
from chromify.lab import dequantise_lab, lab_to_rgb8
from chromify.loader import ShardSet
from chromify.metrics import PreparedTruth, image_metrics_8bit, summarise
from chromify.registry import model_id_of
from chromify.shards import verify_shards

GATE_METRICS = ("psnr", "ssim", "delta_e2000", "colourfulness", "colourfulness_truth", "delta_cf")
EVAL_CHUNK = 256  # test photos in memory at once (~2 MB each at 256 px): bounds memory whatever the split


@dataclass
class Scored:
    name: str
    model_id: str | None
    rows: list[dict[str, float]]
    # (N, S, S, 3) uint8 RGB from `score`; `evaluate` keeps only its gallery's, as {image index: (S, S, 3)}
    images: np.ndarray | Mapping[int, np.ndarray]

    @property
    def summary(self) -> dict[str, float]:
        return summarise(self.rows)


def score(name: str, lab_truth: np.ndarray, ab_pred: np.ndarray | None, model_id: str | None) -> Scored:
    """lab_truth (N, S, S, 3) float; ab_pred (N, S, S, 2) or None for the gray baseline."""
    truth_rgb = lab_to_rgb8(lab_truth)
    pred_lab = lab_truth.copy()
    pred_lab[..., 1:] = 0.0 if ab_pred is None else ab_pred
    pred_rgb = lab_to_rgb8(pred_lab)
    return Scored(name, model_id, _image_rows([pred_rgb], truth_rgb)[0], pred_rgb)


def _rgb(data: np.ndarray, ab: np.ndarray | float | None = None) -> np.ndarray:
    """(n, 3, S, S) uint8 Lab samples → (n, S, S, 3) uint8 RGB, an image at a time (no float copy of the chunk):
    with their stored colour (`ab` None: the truth), gray (0.0), or a predicted (n, S, S, 2) ab under their L."""
    out = np.empty((len(data), data.shape[2], data.shape[3], 3), dtype=np.uint8)
    for i, sample in enumerate(data):
        lab = dequantise_lab(sample.transpose(1, 2, 0))
        if ab is not None:
            lab[..., 1:] = ab if np.isscalar(ab) else ab[i]
        out[i] = lab_to_rgb8(lab)
    return out


def _image_rows(renderings: list[np.ndarray], truth_rgb: np.ndarray) -> list[list[dict[str, float]]]:
    """Per-image metric rows of each (n, S, S, 3) uint8 rendering against the truth, a truth image at a time: what
    depends on the truth alone is computed once for all the renderings."""
    rows: list[list[dict[str, float]]] = [[] for _ in renderings]
    for i, truth in enumerate(truth_rgb):
        prepared = PreparedTruth(truth)
        for model_rows, pred_rgb in zip(rows, renderings, strict=True):
            model_rows.append(image_metrics_8bit(pred_rgb[i], prepared))
    return rows


def predict_split(model_dir: str | Path, data: np.ndarray, batch_size: int,
                  temperature: float | None = None, prior_correction: float | None = None,
                  chroma_gain: float | None = None) -> np.ndarray:
    """(N, 3, S, S) uint8 shard samples → (N, S, S, 2) predicted ab.

    The model runs at the size it was trained at (its config's `size`) and its ab is upsampled to S, as
    `chromify colorize` does for full-resolution photos.
    """
    from chromify.inference import Colorizer

    col = Colorizer(model_dir, temperature=temperature, prior_correction=prior_correction, chroma_gain=chroma_gain)
    return _predict(col, data, batch_size)


def _predict(col, data: np.ndarray, batch_size: int) -> np.ndarray:
    """`predict_split` with a loaded Colorizer, so a chunked pass loads each model once."""
    import torch
    import torch.nn.functional as F

    side = data.shape[-1]
    work = min(int(col.config.get("size", side)), side)
    out = []
    for b in range(0, len(data), batch_size):
        lum = torch.from_numpy(data[b : b + batch_size, :1].astype(np.float32) / 255.0)
        if work != side:
            lum = F.interpolate(lum, size=(work, work), mode="area")
        ab = col.predict_ab(lum)
        if work != side:
            ab = F.interpolate(ab, size=(side, side), mode="bilinear", align_corners=False)
        out.append(ab.permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(out)


def _png_data_uri(rgb: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def gallery_rows(candidate: Scored, count: int, seed: int) -> dict[int, str]:
    """Gallery rows in order, image index → why it is shown: the worst and best ΔE2000 of the candidate, then a
    seeded sample (failures are shown, not hidden)."""
    n = len(candidate.rows)
    order = np.argsort([r["delta_e2000"] for r in candidate.rows])
    rows = {int(order[-1]): "worst ΔE2000 of the candidate"}
    rows.setdefault(int(order[0]), "best ΔE2000 of the candidate")
    rows = dict(list(rows.items())[: min(count, n)])
    for i in np.random.default_rng(seed).permutation(n).tolist():
        if len(rows) >= min(count, n):
            break
        rows.setdefault(i, "seeded sample")
    return rows


def write_gallery(path: Path, truth_rgb: np.ndarray | Mapping[int, np.ndarray], columns: list[Scored],
                  indices: list[int] | dict[int, str], title: str) -> None:
    """One row per image index (with its reason when `indices` maps index → reason): each model, then the truth."""
    head = "".join(f"<th>{html.escape(c.name)}</th>" for c in columns)
    reasons = indices if isinstance(indices, dict) else {}
    body = []
    for i in indices:
        if i in reasons:
            body.append(f'<tr class="why"><td colspan="{len(columns) + 1}">image {i}: '
                        f"{html.escape(reasons[i])}</td></tr>")
        cells = "".join(
            f'<td><img src="{_png_data_uri(c.images[i])}" alt="{html.escape(c.name)} {i}"><br>'
            f"PSNR {c.rows[i]['psnr']:.2f} dB · ΔE {c.rows[i]['delta_e2000']:.1f} · CF {c.rows[i]['colourfulness']:.1f}"
            "</td>"
            for c in columns
        )
        body.append(f'<tr>{cells}<td><img src="{_png_data_uri(truth_rgb[i])}" alt="truth {i}"></td></tr>')
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:1em}}td{{text-align:center;vertical-align:top;font-size:12px;padding:4px}}
tr.why td{{text-align:left;font-weight:bold;padding-top:1em}}
img{{width:192px;height:192px;image-rendering:auto}}</style></head>
<body><h1>{html.escape(title)}</h1><p>Test split, worst and best by ΔE2000 first, then a seeded sample.</p>
<table><tr>{head}<th>truth</th></tr>{''.join(body)}</table></body></html>
"""
    atomic_write_text(path, page)


def markdown_table(columns: list[Scored], truth_cf: float, extra: dict[str, dict[str, float] | None] | None = None,
                   notes: list[str] | tuple[str, ...] = ()) -> str:
    """One row per model; `extra` adds a column per available set-level metric ({"LPIPS": {model name: value}})."""
    extra = {k: v for k, v in (extra or {}).items() if v is not None}
    lines = ["| model | PSNR (dB) | SSIM | ΔE2000 | colourfulness | ΔCF |" + "".join(f" {k} |" for k in extra),
             "|---|---|---|---|---|---|" + "---|" * len(extra)]
    for c in columns:
        s = c.summary
        lines.append(f"| {c.name} | {s['psnr']:.2f} | {s['ssim']:.4f} | {s['delta_e2000']:.2f} | "
                     f"{s['colourfulness']:.1f} | {s['delta_cf']:.1f} |"
                     + "".join(f" {v[c.name]:.4g} |" for v in extra.values()))
    lines.append(f"\nColourfulness of the truth: {truth_cf:.1f}.")
    lines += [f"\nNote: {n}" for n in notes]
    return "\n".join(lines) + "\n"


# -- FID and LPIPS: optional, only with network weights already on disk --

INCEPTION_STEM = "inception_v3_google"  # torchvision's Inception-v3 IMAGENET1K_V1 file, inception_v3_google-*.pth
ALEXNET_STEM = "alexnet"  # torchvision's AlexNet IMAGENET1K_V1 file, alexnet-owt-*.pth (only `features.*` is used)
LPIPS_ENV = "CHROMIFY_LPIPS_WEIGHTS"  # path to LPIPS v0.1 AlexNet linear weights (the lpips package's alex.pth)
# LPIPS (Zhang et al. 2018): AlexNet's five ReLU outputs, each unit-normalised over channels, squared difference
# weighted per channel by the learned linear layer, averaged over space, summed over layers. The input scaling
# below is the paper's, applied to RGB in [-1, 1].
_LPIPS_TAPS = (1, 4, 7, 9, 11)
_LPIPS_CHANNELS = (64, 192, 384, 256, 256)
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)
FID_MIN_IMAGES = 2  # a covariance needs two samples; FID on few images is biased high, compare like with like


def _hub_checkpoints() -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def lpips_linear_weights() -> Path | None:
    """The LPIPS linear-layer file: $CHROMIFY_LPIPS_WEIGHTS, an installed lpips package's, or lpips_alex*.pth in
    the hub cache; None if none exists."""
    import importlib.util
    import os

    candidates = [Path(os.environ[LPIPS_ENV])] if os.environ.get(LPIPS_ENV) else []
    spec = importlib.util.find_spec("lpips")
    if spec is not None and spec.origin:
        candidates.append(Path(spec.origin).parent / "weights" / "v0.1" / "alex.pth")
    candidates += sorted(_hub_checkpoints().glob("lpips_alex*.pth"))
    return next((p for p in candidates if p.is_file()), None)


def alexnet_features():
    """torchvision's AlexNet `features` layout, so its `features.*` weights load; (B, 3, H, W), H, W ≥ 32."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
    )


class LPIPS:
    """LPIPS distance (AlexNet, v0.1) between RGB images; lower is more alike, 0 for identical images."""

    def __init__(self, alexnet_state: dict, linear_state: dict):
        import re

        import torch

        self.features = alexnet_features().eval()
        feats = {k.removeprefix("features."): v for k, v in alexnet_state.items() if k.startswith("features.")}
        self.features.load_state_dict(feats)
        self.weights = []
        for k, channels in enumerate(_LPIPS_CHANNELS):
            key = re.compile(rf"(.*\.)?lin{k}\.(model\.1\.)?weight")
            found = [v for name, v in linear_state.items() if key.fullmatch(name)]
            if len(found) != 1 or found[0].numel() != channels:
                raise DataError(f"LPIPS linear weights: expected one lin{k} weight of {channels} values")
            self.weights.append(found[0].reshape(1, channels, 1, 1).float())
        self.shift = torch.tensor(_LPIPS_SHIFT).view(1, 3, 1, 1)
        self.scale = torch.tensor(_LPIPS_SCALE).view(1, 3, 1, 1)

    def _taps(self, rgb):
        x = (rgb * 2.0 - 1.0 - self.shift) / self.scale
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in _LPIPS_TAPS:
                taps.append(x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return taps

    def __call__(self, a: np.ndarray, b: np.ndarray, batch_size: int = 16) -> np.ndarray:
        """(N, S, S, 3) uint8 RGB × 2 → (N,) distances."""
        import torch

        out = []
        with torch.inference_mode():
            for k in range(0, len(a), batch_size):
                ta, tb = (torch.from_numpy(np.ascontiguousarray(x[k : k + batch_size])).permute(0, 3, 1, 2).float()
                          / 255.0 for x in (a, b))
                d = sum(((fa - fb) ** 2 * w).sum(1).mean((1, 2))
                        for fa, fb, w in zip(self._taps(ta), self._taps(tb), self.weights, strict=True))
                out.append(d.numpy())
        return np.concatenate(out).astype(np.float64)


def load_lpips() -> tuple[LPIPS | None, str]:
    """(LPIPS, '') when AlexNet's and LPIPS's weights are both on disk, else (None, a note saying what is missing)."""
    import torch

    from chromify.models.weights import cached_weights

    backbone, linear = cached_weights(ALEXNET_STEM), lpips_linear_weights()
    if backbone is None or linear is None:
        missing = ([f"{ALEXNET_STEM}-*.pth in {_hub_checkpoints()}"] if backbone is None else []) + (
            [f"LPIPS alex.pth (${LPIPS_ENV}, the lpips package, or lpips_alex*.pth in the hub cache)"]
            if linear is None else [])
        return None, f"lpips skipped: no {' and no '.join(missing)}; weights are never downloaded"
    return LPIPS(torch.load(backbone, map_location="cpu", weights_only=True),
                 torch.load(linear, map_location="cpu", weights_only=True)), ""


def load_inception(weights: Path):
    """torchvision's Inception-v3 from a local weights file, its classifier removed: → (N, 2048) pool features."""
    import torch
    from torchvision.models import inception_v3

    net = inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=False)
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    net.fc = torch.nn.Identity()
    return net.eval()


def inception_features(net, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """(N, S, S, 3) uint8 RGB → (N, 2048) pool features of `load_inception`'s network at 299², float64."""
    import torch
    import torch.nn.functional as F

    out = []
    with torch.inference_mode():
        for k in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[k : k + batch_size])).permute(0, 3, 1, 2).float() / 255
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
            out.append(net(x * 2.0 - 1.0).double().numpy())  # these weights expect [-1, 1]
    return np.concatenate(out)


def frechet_distance(f1: np.ndarray, f2: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, D): |μ1 − μ2|² + Tr(Σ1 + Σ2 − 2(Σ1Σ2)^½)."""
    a, b = f1 - f1.mean(0), f2 - f2.mean(0)
    mean_term = float(((f1.mean(0) - f2.mean(0)) ** 2).sum())
    traces = float((a * a).sum() / (len(f1) - 1) + (b * b).sum() / (len(f2) - 1))
    few = min(len(f1), len(f2)) <= f1.shape[1]
    cross = trace_sqrt_product_by_samples(a, b) if few else trace_sqrt_product_by_covariances(a, b)
    return max(mean_term + traces - 2.0 * cross, 0.0)


def trace_sqrt_product_by_samples(a: np.ndarray, b: np.ndarray) -> float:
    """Tr (Σ1Σ2)^½ for the covariances of centred features a (N1, D), b (N2, D): ‖a bᵀ‖_* / √((N1 − 1)(N2 − 1)).

    Σ1Σ2 and (a bᵀ)(a bᵀ)ᵀ/((N1 − 1)(N2 − 1)) share their non-zero eigenvalues, so with fewer images than
    dimensions (the usual evaluation set against Inception's 2048) an (N1, N2) SVD replaces two 2048²
    eigendecompositions (~30 s on two cores).
    """
    return float(np.linalg.svd(a @ b.T, compute_uv=False).sum() / np.sqrt((len(a) - 1) * (len(b) - 1)))


def trace_sqrt_product_by_covariances(a: np.ndarray, b: np.ndarray) -> float:
    """Tr (Σ1Σ2)^½ = Σ √λ(Σ1^½ Σ2 Σ1^½): symmetric PSD, so eigh is stable where sqrtm(Σ1Σ2) is not."""
    s1, s2 = a.T @ a / (len(a) - 1), b.T @ b / (len(b) - 1)
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    return float(np.sqrt(np.clip(np.linalg.eigvalsh(root1 @ s2 @ root1), 0.0, None)).sum())


class PerceptualMetrics:
    """FID and LPIPS fed a chunk at a time, so the images need not all be in memory: per image it keeps 2048
    Inception features (truth and each model) and one LPIPS distance per model, and gives the numbers a
    whole-set computation would."""

    def __init__(self, names: list[str], images: int):
        from chromify.models.weights import cached_weights

        self.images = images
        self.fid_note = ""
        self.inception_file = cached_weights(INCEPTION_STEM)
        self.inception = None
        if self.inception_file is None:
            self.fid_note = (f"fid skipped: no {INCEPTION_STEM}-*.pth in {_hub_checkpoints()}; "
                             "weights are never downloaded")
        elif images < FID_MIN_IMAGES:
            self.fid_note = f"fid skipped: {images} test image(s), FID needs at least {FID_MIN_IMAGES}"
        else:
            self.inception = load_inception(self.inception_file)
        self.lpips, self.lpips_note = load_lpips()
        self.truth_features: list[np.ndarray] = []
        self.features: dict[str, list[np.ndarray]] = {n: [] for n in names}
        self.distances: dict[str, list[np.ndarray]] = {n: [] for n in names}

    def add_truth(self, truth_rgb: np.ndarray) -> None:
        if self.inception is not None:
            self.truth_features.append(inception_features(self.inception, truth_rgb))

    def add(self, name: str, pred_rgb: np.ndarray, truth_rgb: np.ndarray) -> None:
        if self.inception is not None:
            self.features[name].append(inception_features(self.inception, pred_rgb))
        if self.lpips is not None:
            self.distances[name].append(self.lpips(pred_rgb, truth_rgb))

    def result(self) -> tuple[dict[str, float] | None, dict[str, float] | None, list[str]]:
        notes = []
        fid = None
        if self.inception is None:
            notes.append(self.fid_note)
        else:
            truth = np.concatenate(self.truth_features)
            fid = {n: frechet_distance(np.concatenate(f), truth) for n, f in self.features.items()}
            notes.append(f"fid: torchvision's Inception-v3 ({self.inception_file.name}), not the TF-FID network, "
                         f"on {self.images} images; compare only with FIDs computed the same way on this test set")
        lpips = None
        if self.lpips is None:
            notes.append(self.lpips_note)
        else:
            lpips = {n: float(np.concatenate(d).mean()) for n, d in self.distances.items()}
        return fid, lpips, notes


def perceptual_metrics(truth_rgb: np.ndarray, columns: list[Scored]
                       ) -> tuple[dict[str, float] | None, dict[str, float] | None, list[str]]:
    """(FID per model, mean LPIPS per model, notes); a metric whose weights are not on disk is None with a note."""
    acc = PerceptualMetrics([c.name for c in columns], len(truth_rgb))
    acc.add_truth(truth_rgb)
    for c in columns:
        acc.add(c.name, np.asarray(c.images), truth_rgb)
    return acc.result()


def _read(split: Path, indices: np.ndarray) -> np.ndarray:
    """Samples of the split from shards mapped for this read only: a memory map's pages count in the process's
    RSS until it is closed, so one ShardSet held through the pass would grow RSS by the split's size."""
    return ShardSet(split).gather(indices)


def _chunks(n: int, batch_size: int) -> Iterator[np.ndarray]:
    """Index ranges of whole prediction batches, so each model sees the batches a one-pass run would give it."""
    step = max(1, EVAL_CHUNK // batch_size) * batch_size
    for lo in range(0, n, step):
        yield np.arange(lo, min(lo + step, n))


def _renderings(data: np.ndarray, models: list[tuple[str, str | None, Any]],
                batch_size: int) -> Iterator[tuple[str, np.ndarray]]:
    """(name, RGB) of each model's colours under the samples' L, one model at a time (None: the gray baseline)."""
    for name, _, col in models:
        yield name, _rgb(data, 0.0 if col is None else _predict(col, data, batch_size))


def evaluate(data_dir: str | Path, candidate_dir: str | Path, champion_dir: str | Path | None,
             gate: GateParams, reports_dir: str | Path, batch_size: int = 16, gallery_size: int = 6,
             seed: int = 0) -> tuple[dict[str, Any], GateDecision]:
    """Score, gate and write the reports; returns (metrics summary, gate decision).

    One pass over the test split in chunks keeps per-image rows only; the gallery's few images are predicted
    again afterwards, in the batches they were scored in.
    """
    from chromify.inference import Colorizer

    reports = Path(reports_dir)
    split = Path(data_dir) / "test"
    n = len(ShardSet(split))
    if n == 0:
        raise DataError(f"{split}: the test split is empty; add photos or raise ingest.test_fraction")
    verify_shards(split)  # the scores the gate judges come from these bytes: a changed one is refused, not scored
    candidate_id = model_id_of(candidate_dir)
    # (name, model id, loaded model or None for the gray baseline), in the reports' column order
    models = [("gray (ab = 0)", None, None), ("candidate", candidate_id, Colorizer(candidate_dir))]
    if champion_dir is not None:
        models.append(("champion", model_id_of(champion_dir), Colorizer(champion_dir)))
    rows: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in models}
    perceptual = PerceptualMetrics(list(rows), n)
    for idx in _chunks(n, batch_size):
        data = _read(split, idx)
        truth_rgb = _rgb(data)
        perceptual.add_truth(truth_rgb)
        renderings = []  # every model's, to score each truth against all of them in turn
        for name, pred_rgb in _renderings(data, models, batch_size):
            perceptual.add(name, pred_rgb, truth_rgb)
            renderings.append(pred_rgb)
        for model_rows, chunk_rows in zip(rows.values(), _image_rows(renderings, truth_rgb), strict=True):
            model_rows += chunk_rows
        del data, truth_rgb, renderings
    fid, lpips, notes = perceptual.result()
    del perceptual

    columns = [Scored(name, model_id, rows[name], {}) for name, model_id, _ in models]
    gray, candidate = columns[0], columns[1]
    champion = columns[2] if len(columns) > 2 else None
    decision = decide(
        ModelScore(candidate_id, candidate.summary),
        gray.summary,
        ModelScore(champion.model_id, champion.summary) if champion else None,
        GateThresholds(**vars(gate)),
    )
    summary: dict[str, Any] = {
        "images": n,
        "candidate": candidate.summary,
        "gray": gray.summary,
        "psnr_gain_db": candidate.summary["psnr"] - gray.summary["psnr"],
        "gate_passed": decision.passed,
        "fid": fid,
        "lpips": lpips,
        "notes": notes,
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

    shown = gallery_rows(candidate, gallery_size, seed)
    truth = {}
    if shown:  # whole batches around each shown image: the predictions scored above, not a re-batched variant
        batches = sorted({i // batch_size for i in shown})
        where = np.concatenate([np.arange(b * batch_size, min((b + 1) * batch_size, n)) for b in batches])
        data = _read(split, where)
        position = {int(i): k for k, i in enumerate(where)}
        truth_rgb = _rgb(data)
        truth = {i: truth_rgb[position[i]] for i in shown}
        for c, (_, pred_rgb) in zip(columns, _renderings(data, models, batch_size), strict=True):
            c.images = {i: pred_rgb[position[i]] for i in shown}
    write_gallery(reports / "gallery.html", truth, columns, shown,
                  "Chromify: " + " | ".join([*(c.name for c in columns), "truth"]))
    atomic_write_text(reports / "metrics.md", markdown_table(columns, candidate.summary["colourfulness_truth"],
                                                             {"LPIPS": lpips, "FID": fid}, notes))
    return summary, decision
