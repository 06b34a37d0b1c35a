"""Pretrained weights from the local torch hub cache only: training boxes have no network, and a silent download
would make a run depend on what happened to be reachable."""

from __future__ import annotations

import sys
from pathlib import Path

import torch


def cached_weights(stem: str) -> Path | None:
    """The newest `<hub dir>/checkpoints/<stem>-*.pth` (torchvision's file naming), or None; never downloads."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    found = sorted(folder.glob(f"{stem}-*.pth"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def load_cached(stem: str, what: str) -> dict[str, torch.Tensor] | None:
    """The state dict in the cached file for `stem`, or None with a one-line note naming where it was looked for."""
    path = cached_weights(stem)
    if path is None:
        folder = Path(torch.hub.get_dir()) / "checkpoints"
        print(f"chromify: {what}: no {stem}-*.pth in {folder}; not downloading", file=sys.stderr)
        return None
    # torchvision's files are plain state dicts, so the safe loader reads them.
    return torch.load(path, map_location="cpu", weights_only=True)
