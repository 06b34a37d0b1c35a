"""The five pipeline stages as functions of (params, paths): what `chromify <stage>`, the DVC stages and
the KFP components all call, so the three ways of running agree by construction."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

from chromify.config import Params, save_params
from chromify.errors import ChromifyError, GateError
from chromify.io import atomic_write_json


def run_ingest(params: Params, out_dir: str | Path | None = None, reports_dir: str | Path = "reports",
               progress: bool = False) -> dict[str, int]:
    from dataclasses import replace

    from chromify.ingest import ingest

    p = params.ingest if out_dir is None else replace(params.ingest, out_dir=str(out_dir))
    return ingest(p, reports_dir, progress=progress)


def run_preprocess(params: Params, raw_dir: str | Path, out_dir: str | Path, partition: str = "0/1",
                   write_index: bool = True, progress: bool = False) -> dict[str, Any]:
    from chromify import shards
    from chromify.ingest import read_manifest

    part = shards.Partition.parse(partition)
    p = params.preprocess
    counts = shards.preprocess(read_manifest(raw_dir), raw_dir, out_dir, p.size, p.shard_mb, p.workers, part,
                               progress=progress)
    if write_index:
        indexes = shards.write_index(out_dir, p.size, part.count)
        counts.update({f"{s}_count": idx["count"] for s, idx in indexes.items()})
    return counts


def run_train(params: Params, data_dir: str | Path, out_dir: str | Path, reports_dir: str | Path | None = "reports",
              progress: bool = False) -> dict[str, Any]:
    from chromify.train.loop import train
    from chromify.train.report import TrainReport

    report = TrainReport(reports_dir, progress=progress)
    result = train(data_dir, out_dir, params.model, params.train, params.base.seed, callbacks=(report,))
    save_params(params, Path(out_dir) / "params.json")
    return result


def manifest_hash(raw_dir: str | Path) -> str:
    path = Path(raw_dir) / "manifest.parquet"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else ""


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def champion_dir(params: Params) -> Path | None:
    from chromify.registry import LocalRegistry

    reg = LocalRegistry(params.register.registry_dir, params.register.model_name)
    version = reg.champion()
    return reg.version_dir(version) if version is not None else None


def run_evaluate(params: Params, data_dir: str | Path, candidate_dir: str | Path,
                 reports_dir: str | Path = "reports") -> tuple[dict[str, Any], dict[str, Any]]:
    from chromify.evaluate import evaluate, model_id_of

    champ = champion_dir(params)
    if champ is not None and model_id_of(champ) == model_id_of(candidate_dir):
        raise GateError(f"{candidate_dir}: the candidate has the same weights as the champion ({champ}); "
                        "comparing a model with itself decides nothing — retrain or change params first")
    summary, decision = evaluate(data_dir, candidate_dir, champ, params.gate, reports_dir,
                                 params.evaluate.batch_size, params.evaluate.gallery_size, params.base.seed)
    return summary, {**decision.to_dict(), "candidate_id": model_id_of(candidate_dir)}


def run_register(params: Params, candidate_dir: str | Path, gate: dict[str, Any], metrics: dict[str, Any],
                 raw_dir: str | Path, reports_dir: str | Path | None = "reports") -> dict[str, Any]:
    """Register the candidate when the gate passed; returns what happened (also written to register.json)."""
    from chromify.registry import CHAMPION, LocalRegistry

    if params.register.target != "local":
        raise ChromifyError(f"register.target {params.register.target!r}: only 'local' is available in this build")
    outcome: dict[str, Any] = {"registered": False, "reasons": gate.get("reasons", [])}
    Path(params.register.registry_dir).mkdir(parents=True, exist_ok=True)
    if gate.get("passed"):
        reg = LocalRegistry(params.register.registry_dir, params.register.model_name)
        record = {
            "metrics": metrics, "gate": gate, "params": params.to_dict(),
            "data_manifest_sha256": manifest_hash(raw_dir), "git_commit": git_commit(),
            "model_id": gate.get("candidate_id", ""),
        }
        version = reg.register(candidate_dir, record, aliases=(CHAMPION,))
        outcome = {"registered": True, "version": version, "alias": CHAMPION,
                   "path": str(reg.version_dir(version))}
    if reports_dir is not None:
        atomic_write_json(Path(reports_dir) / "register.json", outcome)
    return outcome
