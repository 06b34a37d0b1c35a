"""Checkpoints for resuming and the exported model (safetensors + JSON: nothing that must be trusted).

A checkpoint is one self-describing dict in `<out_dir>/checkpoint.pt`, replaced atomically: model, optimiser(s),
schedule position, EMA, discriminator, RNG states and the loader's position, plus the fingerprint of the params
it was written with. A run resumes from it only when the fingerprints agree. Its first line is the sha256 of the
torch bytes after it. A run holds `<out_dir>/.train.lock` (flock) from start to end.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from chromify.config import ModelParams, TrainParams
from chromify.errors import ConfigError, DataError, ModelLoadError, OutputBusyError, first_line
from chromify.io import atomic_write, atomic_write_json, exclusive_lock, file_sha256

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = "chromify-train-checkpoint-v1"
# The checkpoint's first line: this, the sha256 (hex) of the torch bytes that follow, "\n". torch's zip reader
# checks no CRC, so without it a flipped byte inside a tensor loads as a wrong weight.
CHECKSUM_HEADER = b"chromify-checkpoint sha256="
HEADER_LENGTH = len(CHECKSUM_HEADER) + 64 + 1
LOCK = ".train.lock"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"

# Train params that change where output goes, how often it is reported, or how the finished weights are decoded
# (the decode search runs again at every export), not the trajectory of the weights: changing them keeps the
# checkpoint usable, so a finished run re-exports in seconds with another decode floor instead of retraining.
BOOKKEEPING = frozenset({"out_dir", "checkpoint_every", "log_every", "val_every_steps", "num_threads",
                         "decode_search", "decode_min_psnr_gain_db", "decode_search_min_photos"})


# The package's code that decides the weights (the train stage's code deps in dvc.yaml, less the params parsing and
# the stage shell). A change to it makes a checkpoint another run's, as a change of params does: so dvc.yaml can keep
# the folder across runs (persist) to resume a killed run, and a code change still trains afresh instead of
# re-exporting the old finished run.
WEIGHTS_CODE = ("train", "models", "loader.py", "shards.py", "ab_bins.py", "lab.py", "decode_search.py", "metrics.py")


def code_fingerprint() -> str:
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for name in WEIGHTS_CODE:
        for f in sorted((root / name).rglob("*.py")) if (root / name).is_dir() else [root / name]:
            digest.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()


def local_weights(mp: ModelParams, p: TrainParams) -> dict[str, str | None]:
    """The pretrained files a run would load from the hub cache (their names carry torchvision's hash): a file
    added after a run makes another run, not a resume of the one that trained without it."""
    from chromify.models.weights import cached_weights

    wanted = [stem for stem, used in (("resnet18", mp.arch == "resnet18_unet" and mp.pretrained),
                                      ("vgg16", p.perceptual_weight > 0)) if used]
    return {stem: found.name for stem in wanted if (found := cached_weights(stem)) is not None}


def fingerprint_inputs(mp: ModelParams, p: TrainParams, seed: int, world: int, data_index: str = "") -> dict[str, Any]:
    """Everything that decides the weights: model + train params (less bookkeeping), seed, world size (the
    loader's position means something only for the same partition), the training and validation data's indexes
    (validation picks the exported weights: train.keep_best), the pretrained files found and the code. Kept in
    the checkpoint, so a run that cannot resume it can say what changed."""
    train = {k: v for k, v in asdict(p).items() if k not in BOOKKEEPING}
    return {"model": asdict(mp), "train": train, "seed": seed, "world": world, "data": data_index,
            "weights": local_weights(mp, p), "code": code_fingerprint()}


def fingerprint_of(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def params_fingerprint(mp: ModelParams, p: TrainParams, seed: int, world: int, data_index: str = "") -> str:
    return fingerprint_of(fingerprint_inputs(mp, p, seed, world, data_index))


def what_changed(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The settings that differ between two `fingerprint_inputs`, as a user would name them."""
    changed = []
    for section in ("model", "train"):
        old, new = before.get(section, {}), now.get(section, {})
        changed += [f"{section}.{k} {old.get(k, '(unset)')!r} -> {new.get(k, '(unset)')!r}"
                    for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    labels = {"seed": "base.seed", "world": "the number of processes", "data": "the training or validation data",
              "weights": "the pretrained weights found", "code": "the training code"}
    for key, label in labels.items():
        if before.get(key) != now.get(key):
            shown = key in ("seed", "world", "weights")
            changed.append(f"{label} {before.get(key)!r} -> {now.get(key)!r}" if shown else label)
    return changed


def save_checkpoint(out_dir: str | Path, state: dict[str, Any]) -> None:
    """Atomically replace `<out_dir>/checkpoint.pt`, checksum line first; a kill mid-write leaves the previous one
    intact."""
    buf = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **state}, buf)
    body = buf.getbuffer()
    header = CHECKSUM_HEADER + hashlib.sha256(body).hexdigest().encode() + b"\n"

    def write(f) -> None:
        f.write(header)
        f.write(body)

    atomic_write(Path(out_dir) / CHECKPOINT, write)


def load_checkpoint(out_dir: str | Path) -> dict[str, Any] | None:
    """The checkpoint in `out_dir`, or None when there is none (or it is of another format: a bare torch zip is
    one written before checkpoints carried a checksum, whose code fingerprint no longer matches anyway)."""
    path = Path(out_dir) / CHECKPOINT
    if not path.exists():
        return None
    with open(path, "rb") as f:
        header = f.readline(HEADER_LENGTH)
        if header.startswith(b"PK\x03\x04"):
            return None
        body = f.read()  # whole, as torch.save wrote it: hashed, then loaded from the same bytes
    reason = None
    if not header.startswith(CHECKSUM_HEADER) or len(header) != HEADER_LENGTH or not header.endswith(b"\n"):
        reason = "empty file" if not header else "no checksum line: not a chromify checkpoint"
    elif hashlib.sha256(body).hexdigest().encode() != header[len(CHECKSUM_HEADER):-1]:
        reason = "checksum mismatch: its bytes changed after it was written"
    if reason is not None:
        raise DataError(f"{path}: unreadable checkpoint ({reason}); delete it to train from scratch")
    # Our own checkpoint holds only tensors, numbers, strings, lists and dicts, so the safe loader reads it.
    try:
        state = torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
    except MemoryError:
        raise  # the machine's trouble, not the file's: "delete it" would be the wrong advice
    except Exception as exc:  # foreign bytes fail in the unpickler in any way (KeyError, IndexError, struct.error)
        # Writes are atomic, so this is a file damaged after the fact: say so rather than train over it.
        raise DataError(f"{path}: unreadable checkpoint ({first_line(exc)}); delete it to train from scratch") \
            from None
    return state if isinstance(state, dict) and state.get("format") == CHECKPOINT_FORMAT else None


@contextmanager
def lock_out_dir(out_dir: str | Path) -> Iterator[None]:
    """Hold `<out_dir>/.train.lock` for a run: a second trainer on the folder would replace this one's checkpoint,
    model and curves (and delete its temp files), so it gets OutputBusyError instead."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out_dir / LOCK, lambda pid: OutputBusyError(str(out_dir), pid),
                        "a second training from writing into it"):
        yield


def remove_stale_temp_files(out_dir: str | Path) -> None:
    """Delete the temp files a kill -9 during an atomic write leaves behind (`.<name>.*.tmp`)."""
    for tmp in Path(out_dir).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def rng_state() -> dict[str, Any]:
    """Every global RNG, as tensors and plain numbers (weights_only-loadable)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": random.getstate(),
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    random.setstate(state["python"])


def export_model(out_dir: str | Path, model: torch.nn.Module, config: dict[str, Any]) -> None:
    """Write the serving artefact: weights as safetensors and the architecture as JSON.

    config.json, written second, records the weights' sha256: an export cut between the two files leaves new weights
    beside the last export's config, which load_model then refuses instead of loading a mismatched pair.
    """
    from safetensors.torch import save

    out_dir = Path(out_dir)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    data = save(tensors)
    atomic_write(out_dir / WEIGHTS, lambda f: f.write(data))
    atomic_write_json(out_dir / CONFIG, {**config, "weights_sha256": hashlib.sha256(data).hexdigest()})


def load_model(model_dir: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild an exported model in eval mode from its directory."""
    from safetensors.torch import load_file

    from chromify.models import get_model

    model_dir = Path(model_dir)
    if not (model_dir / WEIGHTS).exists() or not (model_dir / CONFIG).exists():
        raise ModelLoadError(f"{model_dir}: not a model directory (needs {WEIGHTS} and {CONFIG})")
    try:
        config = json.loads((model_dir / CONFIG).read_text())
        _check_config(config)
        recorded = config.get("weights_sha256")  # absent in models exported before it was recorded
        if recorded is not None and file_sha256(model_dir / WEIGHTS) != recorded:
            raise ModelLoadError(f"{model_dir}: {WEIGHTS} is not the one {CONFIG} was written with (an export "
                                 "that was cut short?); re-run training to export again")
        # The trained weights replace any ImageNet ones, so do not go looking for those.
        model = get_model(config["arch"], **{**config["model"], "pretrained": False})
        model.load_state_dict(load_file(model_dir / WEIGHTS, device="cpu"))
    except (KeyError, RuntimeError, ValueError, TypeError, OSError, ConfigError) as exc:
        raise ModelLoadError(f"{model_dir}: cannot load model ({first_line(exc)})") from None
    return model.to(device).eval(), config


def _check_config(config: Any) -> None:
    """The shape every reader of config.json relies on: an edited or foreign one was an AttributeError, KeyError or
    TypeError traceback in colorize, serve and evaluate."""
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise ValueError(f"{CONFIG} is not an object with a 'model' object")
    if not isinstance(config.get("arch"), str):
        raise ValueError(f"{CONFIG}: 'arch' is not a name")
    size = config.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"{CONFIG}: 'size' {size!r} is not a positive whole number")
    for key, value in config["model"].items():
        if key in ("depth", "base_width", "bin_grid", "bin_stride") and (isinstance(value, bool)
                                                                          or not isinstance(value, int)):
            raise ValueError(f"{CONFIG}: model.{key} {value!r} is not a whole number")
        if key in ("temperature", "prior_correction", "chroma_gain") and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
            raise ValueError(f"{CONFIG}: model.{key} {value!r} is not a finite number")
