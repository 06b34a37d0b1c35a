"""What training shows and leaves behind: a progress line, curves (JSON, PNG, DVCLive) and a before/after grid.

Loop callbacks, all called on rank 0 only. Optional libraries (matplotlib, dvclive) are imported inside the
callbacks, so the library still imports and trains on a bare GPU box with only torch, numpy and pyarrow: what
needs a missing library is skipped with a one-line note.
"""

from __future__ import annotations

import struct
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from chromify.io import atomic_write_bytes, atomic_write_json
from chromify.lab import dequantise_lab, lab_to_rgb
from chromify.progress import LogClock, is_terminal


def _note(message: str) -> None:
    print(f"chromify: {message}", file=sys.stderr)


def png_bytes(rgb: np.ndarray) -> bytes:
    """(H, W, 3) uint8 → a PNG file, with zlib alone (no imaging library needed)."""
    h, w, _ = rgb.shape
    rows = np.concatenate([np.zeros((h, 1), np.uint8), np.ascontiguousarray(rgb).reshape(h, w * 3)], axis=1)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) \
        + chunk(b"IEND", b"")


def before_after_grid(lab_truth: np.ndarray, ab_pred: np.ndarray, gap: int = 2) -> np.ndarray:
    """One row per sample: the gray input, the model's colours, the truth. (N, 3, S, S) uint8 shard Lab and
    (N, 2, S, S) ab → (N·(S+gap) − gap, 3·(S+gap) − gap, 3) uint8 RGB on white."""
    lab = dequantise_lab(lab_truth.transpose(0, 2, 3, 1))  # (N, S, S, 3) float Lab
    gray, pred = lab.copy(), lab.copy()
    gray[..., 1:] = 0.0
    pred[..., 1:] = ab_pred.transpose(0, 2, 3, 1)
    n, s = lab.shape[:2]
    grid = np.full((n * (s + gap) - gap, 3 * (s + gap) - gap, 3), 255, np.uint8)
    for i in range(n):
        for j, img in enumerate((gray[i], pred[i], lab[i])):
            y, x = i * (s + gap), j * (s + gap)
            grid[y : y + s, x : x + s] = np.rint(lab_to_rgb(img) * 255.0)
    return grid


class TrainReport:
    """Prints progress; writes reports/train_history.json, train_curves.png, train_grid.png and
    decode_search.json (the decodes tried on validation, if any); feeds DVCLive.

    DVCLive writes to `dvclive_dir`, by default `dvclive/` beside the reports folder (the repo root for the CLI's
    `--reports reports`, where dvc.yaml can declare it); `live=False` or no reports folder turns it off.
    """

    def __init__(self, reports_dir: str | Path | None, progress: bool = False,
                 dvclive_dir: str | Path | None = None, live: bool = True):
        self.reports = Path(reports_dir) if reports_dir is not None else None
        self.progress = progress
        self.terminal = is_terminal(sys.stderr)  # a live line on a terminal; in a log, a line every half minute
        self._clock = LogClock()
        self._open_line = False
        self._unlogged: str | None = None
        if dvclive_dir is None and self.reports is not None:
            dvclive_dir = self.reports.parent / "dvclive"
        self.live = DVCLiveLogger(dvclive_dir) if live and dvclive_dir is not None else None

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        if self.live is not None:
            self.live(event, data)
        if event == "step":
            line = f"step {data['step']:>6}  loss {data['loss']:.4f}  {data['images_per_s']:.1f} img/s"
            self._unlogged = None
            if self.progress and self.terminal:
                print(f"\r{line}", end="", file=sys.stderr, flush=True)
                self._open_line = True
            elif self.progress and self._clock.due():
                print(f"chromify: train {line}", file=sys.stderr, flush=True)
            elif self.progress:
                self._unlogged = line  # printed at the end if no later line is: a log always shows the last step
        elif event == "epoch":
            if self.progress:
                self._end_line()
                print(f"epoch {data['epoch']}: val L1 {data['val_l1']:.4f}, "
                      f"val PSNR(ab) {data['val_psnr_ab']:.2f} dB", file=sys.stderr, flush=True)
            self.write_grid(data["samples"])
        elif event == "end":
            if self.progress:
                self._end_line()
                if self._unlogged:
                    print(f"chromify: train {self._unlogged}", file=sys.stderr, flush=True)
            if self.reports is not None:
                atomic_write_json(self.reports / "train_history.json",
                                  {"steps": data["steps"], "epochs": data["history"]})
                atomic_write_json(self.reports / "decode_search.json", data.get("decode_search") or {
                    "chosen": None, "note": "train.decode_search is off: the model decodes as params.yaml says"})
                self.plot(data["steps"], data["history"])
            self.write_grid(data["samples"])

    def _end_line(self) -> None:
        if self._open_line:
            print(file=sys.stderr)
            self._open_line = False

    def write_grid(self, samples: dict[str, np.ndarray]) -> None:
        if self.reports is not None and len(samples["lab_truth"]):
            grid = before_after_grid(samples["lab_truth"], samples["ab_pred"])
            atomic_write_bytes(self.reports / "train_grid.png", png_bytes(grid))

    def plot(self, steps: list[dict[str, float]], epochs: list[dict[str, Any]]) -> None:
        try:
            import matplotlib
        except ImportError:
            _note("no matplotlib: reports/train_curves.png not drawn (the JSON has the numbers)")
            return
        import io

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
        if steps:
            axes[0].plot([s["step"] for s in steps], [s["loss"] for s in steps], lw=1)
        axes[0].set(title="training loss", xlabel="step")
        if epochs:
            axes[1].plot([e["step"] for e in epochs], [e["val_l1"] for e in epochs], marker="o")
        axes[1].set(title="validation L1 (ab/128)", xlabel="step")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        atomic_write_bytes(self.reports / "train_curves.png", buf.getvalue())


class DVCLiveLogger:
    """Curves for `dvc plots` / `dvc exp show` under `dvclive/`: train/* every log step, val/* per validation.

    It writes neither a dvc.yaml nor a git experiment of its own (the pipeline's dvc.yaml declares its outputs);
    on a resume it drops the rows logged after the checkpoint, which the resumed run logs again.
    """

    def __init__(self, live_dir: str | Path = "dvclive"):
        self.dir = Path(live_dir)
        self.live: Any = None

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        if event == "start":
            try:
                from dvclive import Live
            except ImportError:
                _note("no dvclive: curves only in reports/")
                return
            resumed = int(data["resumed_from_step"])
            if resumed:
                self.drop_rows_after(resumed, int(data["validated_through_step"]))
            self.live = Live(str(self.dir), resume=bool(resumed), save_dvc_exp=False, dvcyaml=False)
        if self.live is None:
            return
        if event == "step":
            self.live.step = int(data["step"])
            for key, value in data.items():
                if key != "step":
                    self.live.log_metric(f"train/{key}", float(value))
        elif event == "epoch":
            self.live.step = int(data["step"])
            self.live.log_metric("val/l1", float(data["val_l1"]))
            self.live.log_metric("val/psnr_ab", float(data["val_psnr_ab"]))
            self.live.make_summary()
        elif event == "end":
            self.live.step = int(data["step"])
            for key in ("val_l1", "val_psnr_ab", "train_seconds"):
                if key in data:
                    self.live.log_metric(f"final/{key}", float(data[key]), plot=False)
            # end() takes its step back from the summary, which still holds the last validation's step
            self.live.make_summary()
            self.live.end()
            self.live = None
            # The train stage declares this folder as an output: a run that logged no curve point (log_every 0,
            # no validation) still leaves it, empty, rather than failing `dvc repro` after training.
            (self.dir / "plots" / "metrics").mkdir(parents=True, exist_ok=True)

    def drop_rows_after(self, step: int, validated: int | None = None) -> None:
        """Cut every metric history (TSV with a `step` column) back to the rows at or before `step`, and the
        validation curves to the checkpoint's last validation (`validated`): a checkpoint written at an epoch's
        last step precedes that epoch's validation, which the resumed run then makes, and would log, again."""
        metrics = self.dir / "plots" / "metrics"
        for tsv in metrics.rglob("*.tsv"):
            last = validated if validated is not None and tsv.relative_to(metrics).parts[0] == "val" else step
            lines = tsv.read_text().splitlines()
            if not lines:
                continue
            col = lines[0].split("\t").index("step") if "step" in lines[0].split("\t") else None
            if col is None:
                continue
            kept = [lines[0]] + [ln for ln in lines[1:] if int(ln.split("\t")[col]) <= last]
            atomic_write_bytes(tsv, ("\n".join(kept) + "\n").encode())
