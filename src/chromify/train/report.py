"""What training shows and leaves behind: a progress line, curves as JSON and PNG for `reports/`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from chromify.io import atomic_write_json


class TrainReport:
    """A loop callback: prints progress, writes reports/train_history.json and reports/train_curves.png."""

    def __init__(self, reports_dir: str | Path | None, progress: bool = False):
        self.reports = Path(reports_dir) if reports_dir is not None else None
        self.progress = progress
        self.steps: list[dict[str, float]] = []

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        if event == "step":
            self.steps.append({k: float(v) for k, v in data.items()})
            if self.progress:
                print(f"\rstep {data['step']:>6}  loss {data['loss']:.4f}  {data['images_per_s']:.1f} img/s",
                      end="", file=sys.stderr, flush=True)
        elif event == "epoch" and self.progress:
            print(f"\nepoch {data['epoch']}: val L1 {data['val_l1']:.4f}, val PSNR(ab) {data['val_psnr_ab']:.2f} dB",
                  file=sys.stderr)
        elif event == "end":
            if self.progress:
                print(file=sys.stderr)
            if self.reports is not None:
                atomic_write_json(self.reports / "train_history.json",
                                  {"steps": self.steps, "epochs": data["history"]})
                self.plot(data["history"])

    def plot(self, epochs: list[dict[str, Any]]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from chromify.io import atomic_write_bytes

        fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
        if self.steps:
            axes[0].plot([s["step"] for s in self.steps], [s["loss"] for s in self.steps], lw=1)
        axes[0].set(title="training loss", xlabel="step")
        if epochs:
            axes[1].plot([e["step"] for e in epochs], [e["val_l1"] for e in epochs], marker="o")
        axes[1].set(title="validation L1 (ab/128)", xlabel="step")
        fig.tight_layout()
        import io

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        atomic_write_bytes(self.reports / "train_curves.png", buf.getvalue())
