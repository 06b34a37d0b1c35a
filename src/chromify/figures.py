"""The run's figures as PNGs in reports/figures/, for `dvc plots` and the docs: drawn from what train and evaluate
already wrote in reports/, nothing recomputed.

    training_curves.png    train_history.json: training loss per step, validation L1 and PSNR(ab) per validation
    metric_comparison.png  metrics.json (means) and eval_per_image.csv (one dot per test photo), per model
    contact_sheet.png      gallery.html's photos, pixel for pixel (small ones magnified whole): gray | candidate |
                           champion | truth; a note when the gallery has no photos

matplotlib is imported inside the functions and only its object API is used (no pyplot, no global backend), so the
library still imports without it and drawing is safe in any thread.
"""

from __future__ import annotations

import base64
import csv
import io
import json
from collections.abc import Sequence
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np

from chromify.errors import ChromifyError, DataError
from chromify.io import atomic_write_bytes

FIGURES_DIR = "figures"
TRAINING_CURVES = "training_curves.png"
METRIC_COMPARISON = "metric_comparison.png"
CONTACT_SHEET = "contact_sheet.png"
DPI = 100
MIN_CELL_PX = 128  # contact-sheet cells below this are magnified by whole pixels so the headings fit
HEADER_PX = 28
# metrics.json key → the model's name in eval_per_image.csv and the gallery (chromify.evaluate's column names)
MODELS = {"gray": "gray (ab = 0)", "candidate": "candidate", "champion": "champion"}
MODEL_COLOURS = {"gray": "#9e9e9e", "candidate": "#d2691e", "champion": "#3f6fb5"}
# (metric, axis title): means per model in metrics.json; the per-image ones also get a dot per test photo
PANELS = (("psnr", "PSNR (dB) ↑"), ("ssim", "SSIM ↑"), ("delta_e2000", "ΔE2000 ↓"),
          ("colourfulness", "colourfulness (-- truth)"), ("delta_cf", "ΔCF ↓"))
# set-level metrics, {model name: value} at the top of metrics.json, or null when their weights were not on disk
SET_PANELS = (("lpips", "LPIPS ↓"), ("fid", "FID ↓"))


def _figure(width_in: float, height_in: float):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ChromifyError("drawing reports/figures needs matplotlib, which is not installed") from None
    return Figure(figsize=(width_in, height_in), dpi=DPI)


def figure_png(fig: Any) -> bytes:
    """A matplotlib Figure → PNG bytes at DPI, without the matplotlib version in the file."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _read_json_object(path: Path) -> dict[str, Any]:
    """A report's JSON object; unreadable, not JSON (UnicodeDecodeError is a ValueError) or not an object (the
    drawing would fail on `.get`) is a DataError naming the file."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read JSON ({exc})") from None
    if not isinstance(value, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(value).__name__} {json.dumps(value)[:60]}")
    return value


def read_training_history(path: Path) -> dict[str, Any]:
    """train_history.json (chromify.train.report) → its dict, with the rows training_curves_figure reads checked: a
    DataError naming the file, not a KeyError from inside the drawing."""
    history = _read_json_object(path)
    for key, needed in (("steps", ("step", "loss")), ("epochs", ("step",))):
        rows = history.get(key, [])
        if not (isinstance(rows, list) and all(isinstance(r, dict) and all(k in r for k in needed) for r in rows)):
            raise DataError(f"{path}: not a training history ('{key}' must be a list of objects with "
                            f"{' and '.join(needed)})")
    return history


def training_curves_figure(history: dict[str, list[dict[str, float]]]) -> Any:
    """{"steps": [{step, loss, …}], "epochs": [{step, val_l1, val_psnr_ab, …}]} → a Figure of three panels."""
    steps, epochs = history.get("steps", []), history.get("epochs", [])
    fig = _figure(12, 3.4)
    loss_ax, l1_ax, psnr_ax = fig.subplots(1, 3)
    if steps:
        loss_ax.plot([s["step"] for s in steps], [s["loss"] for s in steps], lw=1, label="per logged step")
    if epochs and "train_loss" in epochs[0]:
        loss_ax.plot([e["step"] for e in epochs], [e["train_loss"] for e in epochs], marker="o", ms=3,
                     label="mean between validations")
    if steps or epochs:
        loss_ax.legend(fontsize=8)
    loss_ax.set(title="training loss", xlabel="step")
    for ax, key, title in ((l1_ax, "val_l1", "validation L1 (ab/128) ↓"),
                           (psnr_ax, "val_psnr_ab", "validation PSNR of ab (dB) ↑")):
        points = [(e["step"], e[key]) for e in epochs if key in e]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", ms=3, color="#d2691e")
        ax.set(title=title, xlabel="step")
    for ax in (loss_ax, l1_ax, psnr_ax):
        ax.grid(alpha=0.3)
        if not ax.has_data():
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="gray")
    fig.tight_layout()
    return fig


def read_per_image(path: Path) -> dict[str, dict[str, list[float]]]:
    """eval_per_image.csv → {model name: {metric: [value per photo]}} (the CSV's model names)."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    out: dict[str, dict[str, list[float]]] = {}
    try:
        for row in rows:
            metrics = out.setdefault(row["model"], {})
            for key, value in row.items():
                if key not in ("index", "model"):
                    metrics.setdefault(key, []).append(float(value))
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: not a per-image metrics table ({exc!r})") from None
    return out


def metric_comparison_figure(metrics: dict[str, Any], per_image: dict[str, dict[str, list[float]]] | None = None
                             ) -> Any:
    """metrics.json (a summary per model) → a Figure: a bar per model and metric, a dot per test photo where
    `per_image` (read_per_image's output) has the metric, and LPIPS / FID panels when they were measured."""
    models = [m for m in MODELS if isinstance(metrics.get(m), dict)]
    if not models:
        raise DataError(f"metrics have none of the models {', '.join(MODELS)}: {sorted(metrics)}")
    means = {key: {m: metrics[m].get(key) for m in models} for key, _ in PANELS}
    titles = dict(PANELS)
    for key, title in SET_PANELS:
        if isinstance(metrics.get(key), dict):  # keyed by the models' display names
            means[key] = {m: metrics[key].get(MODELS[m]) for m in models}
            titles[key] = title
    fig = _figure(3 * len(means), 3.4)
    axes = fig.subplots(1, len(means))
    rng = np.random.default_rng(0)  # the dots' horizontal jitter, the same on every run
    for ax, (key, by_model) in zip(axes, means.items(), strict=True):
        for x, model in enumerate(models):
            mean = by_model[model]
            if mean is None:
                continue
            ax.bar(x, mean, width=0.6, color=MODEL_COLOURS[model], alpha=0.85)
            ax.annotate(f"{mean:.3g}", (x, mean), ha="center", va="bottom", fontsize=8)
            values = (per_image or {}).get(MODELS[model], {}).get(key)
            if values:
                ax.scatter(x + rng.uniform(-0.15, 0.15, len(values)), values, s=9, color="black", alpha=0.6,
                           zorder=3)
        if key == "colourfulness" and "colourfulness_truth" in metrics[models[0]]:
            ax.axhline(metrics[models[0]]["colourfulness_truth"], color="black", ls="--", lw=1)
        ax.set_xticks(range(len(models)), models, rotation=20)
        ax.set_title(titles[key])
        ax.grid(axis="y", alpha=0.3)
    images = metrics.get("images")
    fig.suptitle(f"test split{f', {images} photos' if images else ''}: mean (bar) and each photo (dot)")
    fig.tight_layout()
    return fig


class _GalleryParser(HTMLParser):
    """Column headings (<th>) and, per table row, the PNG data URIs of its <img>s."""

    def __init__(self) -> None:
        super().__init__()
        self.headings: list[str] = []
        self.rows: list[list[str]] = []
        self._in_th = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "th":
            self._in_th = True
            self.headings.append("")
        elif tag == "tr":
            self.rows.append([])
        elif tag == "img" and self.rows:
            src = dict(attrs).get("src") or ""
            if src.startswith("data:image/png;base64,"):
                self.rows[-1].append(src)

    def handle_endtag(self, tag: str) -> None:
        if tag == "th":
            self._in_th = False

    def handle_data(self, data: str) -> None:
        if self._in_th:
            self.headings[-1] += data.strip()


def read_gallery(path: Path) -> tuple[list[str], list[list[np.ndarray]]]:
    """gallery.html (chromify.evaluate.write_gallery) → (column headings, rows of (S, S, 3) uint8 images)."""
    from PIL import Image

    parser = _GalleryParser()
    try:
        parser.feed(path.read_text(encoding="utf-8"))  # evaluate writes it as UTF-8
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a gallery written by chromify evaluate (not UTF-8: {exc.reason} at byte "
                        f"{exc.start})") from None
    rows = []
    for uris in parser.rows:
        if not uris:
            continue
        try:
            rows.append([np.asarray(Image.open(io.BytesIO(base64.b64decode(u.split(",", 1)[1]))).convert("RGB"))
                         for u in uris])
        except (ValueError, OSError) as exc:
            raise DataError(f"{path}: an embedded image does not decode ({exc})") from None
    return parser.headings, rows


def contact_sheet_grid(rows: Sequence[Sequence[np.ndarray]], gap: int = 4, scale: int = 1) -> np.ndarray:
    """Rows of (h, w, 3) uint8 images → one (H, W, 3) uint8 sheet on white: each image in a cell as large as the
    largest, every pixel a `scale` × `scale` block (no resampling)."""
    if not rows or not any(rows):
        raise DataError("a contact sheet needs at least one image")
    rows = [[np.repeat(np.repeat(img, scale, axis=0), scale, axis=1) for img in row] for row in rows]
    cell_h = max(img.shape[0] for row in rows for img in row)
    cell_w = max(img.shape[1] for row in rows for img in row)
    cols = max(len(row) for row in rows)
    sheet = np.full((len(rows) * (cell_h + gap) - gap, cols * (cell_w + gap) - gap, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            y, x = i * (cell_h + gap), j * (cell_w + gap)
            sheet[y : y + img.shape[0], x : x + img.shape[1]] = img
    return sheet


def contact_sheet_scale(rows: Sequence[Sequence[np.ndarray]]) -> int:
    """The whole-number magnification that makes the largest image at least MIN_CELL_PX wide (1 if it is)."""
    widest = max(img.shape[1] for row in rows for img in row)
    return max(1, -(-MIN_CELL_PX // widest))


def contact_sheet_figure(headings: Sequence[str], rows: Sequence[Sequence[np.ndarray]], gap: int = 4) -> Any:
    """contact_sheet_grid (magnified by contact_sheet_scale) with the column headings above it; the figure is the
    grid's own size in pixels, so the saved PNG holds the grid exactly."""
    grid = contact_sheet_grid(rows, gap, contact_sheet_scale(rows))
    cols = max(len(row) for row in rows)
    fig = _figure(grid.shape[1] / DPI, (grid.shape[0] + HEADER_PX) / DPI)
    fig.figimage(grid, xo=0, yo=0, origin="upper")
    cell_w = (grid.shape[1] + gap) / cols
    for j, heading in enumerate(list(headings)[:cols]):
        fig.text((j + 0.5) * cell_w / grid.shape[1], 1 - 0.5 * HEADER_PX / (grid.shape[0] + HEADER_PX), heading,
                 ha="center", va="center", fontsize=9)
    return fig


def no_gallery_figure() -> Any:
    """The contact sheet of a gallery with no photos (evaluate.gallery_size 0): a note in its place, since the
    evaluate stage always declares the sheet."""
    fig = _figure(4, 0.6)
    fig.text(0.5, 0.5, "no photos in the gallery (evaluate.gallery_size: 0)", ha="center", va="center", fontsize=9)
    return fig


def write_figures(reports_dir: str | Path) -> list[Path]:
    """Draw every figure whose inputs are in `reports_dir` into `reports_dir`/figures/ (atomically); returns the
    paths written. Each figure is drawn on its own: one whose input is missing or unreadable is not drawn and an
    older copy of it is removed, so no figure outlives the data it showed; the first unreadable input's error is
    raised once the other figures are written."""
    reports = Path(reports_dir)
    out = reports / FIGURES_DIR
    history = reports / "train_history.json"
    metrics = reports / "metrics.json"
    per_image = reports / "eval_per_image.csv"
    gallery = reports / "gallery.html"

    def sheet() -> Any:
        headings, rows = read_gallery(gallery)
        return contact_sheet_figure(headings, rows) if rows else no_gallery_figure()

    figures = {
        TRAINING_CURVES: (history, lambda: training_curves_figure(read_training_history(history))),
        METRIC_COMPARISON: (metrics, lambda: metric_comparison_figure(
            _read_json_object(metrics), read_per_image(per_image) if per_image.exists() else None)),
        CONTACT_SHEET: (gallery, sheet),
    }
    written: list[Path] = []
    failed: ChromifyError | None = None
    for name, (source, draw) in figures.items():
        try:
            png = figure_png(draw()) if source.exists() else None
        except ChromifyError as exc:
            png, failed = None, failed or exc
        if png is None:
            (out / name).unlink(missing_ok=True)
        else:
            atomic_write_bytes(out / name, png)
            written.append(out / name)
    if failed is not None:
        raise failed
    return written
