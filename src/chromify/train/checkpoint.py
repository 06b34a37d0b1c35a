"""Checkpoints for resuming and the exported model (safetensors + JSON: nothing that must be trusted)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch

from chromify.errors import ModelLoadError
from chromify.io import atomic_write, atomic_write_json

CHECKPOINT = "checkpoint.pt"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def save_checkpoint(out_dir: str | Path, state: dict[str, Any]) -> None:
    """Atomically replace `<out_dir>/checkpoint.pt`; a kill mid-write leaves the previous one intact."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(Path(out_dir) / CHECKPOINT, lambda f: f.write(buf.getvalue()))


def load_checkpoint(out_dir: str | Path) -> dict[str, Any] | None:
    path = Path(out_dir) / CHECKPOINT
    if not path.exists():
        return None
    # Our own checkpoint holds only tensors, numbers and dicts, so the safe loader reads it.
    return torch.load(path, map_location="cpu", weights_only=True)


def export_model(out_dir: str | Path, model: torch.nn.Module, config: dict[str, Any]) -> None:
    """Write the serving artefact: weights as safetensors and the architecture as JSON."""
    from safetensors.torch import save

    out_dir = Path(out_dir)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    data = save(tensors)
    atomic_write(out_dir / WEIGHTS, lambda f: f.write(data))
    atomic_write_json(out_dir / CONFIG, config)


def load_model(model_dir: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild an exported model in eval mode from its directory."""
    from safetensors.torch import load_file

    from chromify.models import get_model

    model_dir = Path(model_dir)
    if not (model_dir / WEIGHTS).exists() or not (model_dir / CONFIG).exists():
        raise ModelLoadError(f"{model_dir}: not a model directory (needs {WEIGHTS} and {CONFIG})")
    try:
        config = json.loads((model_dir / CONFIG).read_text())
        model = get_model(config["arch"], **config["model"])
        model.load_state_dict(load_file(model_dir / WEIGHTS, device="cpu"))
    except (KeyError, RuntimeError, ValueError, OSError) as exc:
        raise ModelLoadError(f"{model_dir}: cannot load model ({str(exc).splitlines()[0]})") from None
    return model.to(device).eval(), config
