"""The five pipeline stages as functions of (params, paths): what `chromify <stage>`, the DVC stages and
the KFP components all call, so the three ways of running agree by construction."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

from chromify.config import Params, save_params
from chromify.errors import ChromifyError, GateError, RegistryError
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

    def save_resolved_params(event: str, data: dict[str, Any]) -> None:
        # at the end, beside the weights, while this run still holds the folder's lock (callbacks run on rank 0)
        if event == "end":
            save_params(params, Path(out_dir) / "params.json")

    return train(data_dir, out_dir, params.model, params.train, params.base.seed,
                 callbacks=(report, save_resolved_params))


def is_rank_zero() -> bool:
    """True outside torchrun and on its rank 0: the one process that writes."""
    import os

    return os.environ.get("RANK", "0") == "0"


def manifest_hash(raw_dir: str | Path) -> str:
    path = Path(raw_dir) / "manifest.parquet"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else ""


def git_commit(inside: str | Path = __file__) -> str:
    """The commit of the code that runs, "" if unknown: CHROMIFY_GIT_COMMIT (set in the cloud images and tasks,
    which have neither git nor .git), else HEAD of the repository holding the file `inside` (default: this
    package, wherever the command runs from), else of the current folder's (a package installed as a wheel)."""
    import os

    if commit := os.environ.get("CHROMIFY_GIT_COMMIT", "").strip():
        return commit
    for cwd in (Path(inside).resolve().parent, None):
        try:
            out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.SubprocessError):
            continue
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    return ""


def champion_dir(params: Params) -> Path | None:
    """The champion's model directory, or None before the first registration.

    For target vertex the champion's files are fetched once into `<registry_dir>/.vertex-cache/<model id>`.
    """
    from chromify.registry import LocalRegistry

    if params.register.target == "vertex":  # RegisterParams allows local or vertex only
        from chromify.vertex_registry import fetch_champion

        return fetch_champion(params.register, Path(params.register.registry_dir) / ".vertex-cache")
    reg = LocalRegistry(params.register.registry_dir, params.register.model_name)
    version = reg.champion()
    if version is None:
        return None
    changed = reg.verify(version)  # else "no trained model here; train one first": no training mends the champion
    if changed:
        raise RegistryError(f"{reg.version_dir(version)}: the champion (v{version}) has {', '.join(changed)} missing "
                            "or changed since it was registered; restore them, or promote another version "
                            "(`chromify models list`)")
    return reg.version_dir(version)


def run_evaluate(params: Params, data_dir: str | Path, candidate_dir: str | Path,
                 reports_dir: str | Path = "reports") -> tuple[dict[str, Any], dict[str, Any]]:
    from chromify.evaluate import evaluate
    from chromify.registry import model_id_of

    champ = champion_dir(params)
    candidate_id = model_id_of(candidate_dir)
    summary, decision = evaluate(data_dir, candidate_dir, champ, params.gate, reports_dir,
                                 params.evaluate.batch_size, params.evaluate.gallery_size, params.base.seed)
    from chromify.figures import write_figures

    try:
        write_figures(reports_dir)
    except ChromifyError as exc:  # the scores and the gate stand: say so, or the error reads as a failed evaluation
        raise ChromifyError(f"{exc} (the evaluation itself is written: metrics.json, gate.json and gallery.html; "
                            "the figure drawn from that file is not)") from None
    return summary, {**decision.to_dict(), "candidate_id": candidate_id}


def registration_record(params: Params, candidate_dir: str | Path, gate: dict[str, Any], metrics: dict[str, Any],
                        raw_dir: str | Path) -> dict[str, Any]:
    """What a registered version carries besides its files: metrics, gate decision, params and lineage.

    Refuses weights other than those the gate decided on (a candidate retrained after `evaluate`).
    """
    from chromify.registry import model_id_of

    model_id = model_id_of(candidate_dir)
    decided_on = gate.get("candidate_id")
    if decided_on and decided_on != model_id:
        raise GateError(f"{candidate_dir}: files (model {model_id}) are not the ones the gate decided on "
                        f"({decided_on}); re-run evaluate")
    return {
        "metrics": metrics, "gate": gate, "params": params.to_dict(),
        "data_manifest_sha256": manifest_hash(raw_dir), "git_commit": git_commit(),
        "model_id": model_id,
    }


def run_register(params: Params, candidate_dir: str | Path, gate: dict[str, Any], metrics: dict[str, Any],
                 raw_dir: str | Path, reports_dir: str | Path | None = "reports") -> dict[str, Any]:
    """Register the candidate as a new champion version when the gate passed, in the local registry or on Vertex
    AI (register.target); returns what happened, with the gate's reasons (also written to register.json).

    Locally, weights already registered are left where they are: the outcome says `already_registered` and which
    version holds them, and no alias moves (a re-run must not undo a promotion or rollback made since), unless a
    kill stopped that registration before the champion moved to it: then the re-run finishes it. A gate
    decided against a champion that is no longer the champion is a RegistryError: re-run evaluate.
    """
    from chromify.registry import CHAMPION, AlreadyRegistered, LocalRegistry, already_registered_note

    target = params.register.target
    if target == "vertex":
        from chromify.vertex_registry import check_params

        check_params(params.register)  # a misconfigured target fails on the first run, not the first pass
    reasons = gate.get("reasons", [])
    outcome: dict[str, Any] = {"registered": False, "target": target, "reasons": reasons}
    # DVC declares the registry folder an output of this stage: it must exist even when nothing is registered.
    Path(params.register.registry_dir).mkdir(parents=True, exist_ok=True)
    if gate.get("passed"):
        record = registration_record(params, candidate_dir, gate, metrics, raw_dir)
        if target == "vertex":
            from chromify.vertex_registry import publish

            outcome = {**publish(params.register, candidate_dir, record), "reasons": reasons}
        else:
            reg = LocalRegistry(params.register.registry_dir, params.register.model_name)
            try:
                version = reg.register(candidate_dir, record, aliases=(CHAMPION,))
            except AlreadyRegistered as already:
                outcome = {"registered": False, "already_registered": True, "target": target,
                           "version": already.version, "path": str(reg.version_dir(already.version)),
                           "message": already_registered_note(already.version, already.model_id, reg.champion()),
                           "reasons": reasons}
            else:
                outcome = {"registered": True, "target": target, "version": version, "alias": CHAMPION,
                           "path": str(reg.version_dir(version)), "reasons": reasons}
        if outcome.get("already_registered"):
            # Nothing registered, no alias moved ("registered" stays False): the note first among the reasons,
            # which every caller prints.
            outcome["reasons"] = [outcome["message"], *reasons]
    if reports_dir is not None:
        atomic_write_json(Path(reports_dir) / "register.json", outcome)
    return outcome
