from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def train(params_json: str, shards: Input[Dataset], model: Output[Model], metrics: Output[Metrics],
          nproc: int = 1) -> None:
    """Train the colorizer, in-process or, with nproc > 1, as `torchrun` ranks (one per GPU). The validation scores
    go to `metrics` only when there are some: a returned NaN (no validation photo) is not JSON, and the executor
    output that carries a return value is read by Kubeflow's Go launcher."""
    import json
    from pathlib import Path

    from chromify.config import params_from_json

    params = params_from_json(params_json)  # refused here, before any GPU work, when it is not the whole params
    # The curves, the validation grid and the decodes tried travel with the model (evaluate draws the curves from
    # them), as reports/ does under dvc repro; DVCLive's files land beside them.
    reports = Path(model.path) / "reports"
    if nproc > 1:
        import subprocess
        import tempfile

        with tempfile.TemporaryDirectory(prefix="chromify-train-") as tmp:
            work = Path(tmp)
            (work / "params.json").write_text(params_json)  # JSON is YAML: `--params` reads it as it is
            # Only rank 0 prints its result (it alone has the validation metrics): `--redirects 1` keeps each
            # rank's stdout in its own file under --log-dir (stderr stays in the task's log).
            subprocess.run(["torchrun", "--standalone", "--nproc-per-node", str(nproc), "--redirects", "1",
                            "--log-dir", str(work / "logs"), "-m", "chromify.cli", "train",
                            "--params", str(work / "params.json"), "--data", shards.path, "--out", model.path,
                            "--reports", str(reports)], cwd=work, check=True)
            rank0 = max(work.glob("logs/**/attempt_*/0/stdout.log"), key=lambda p: p.stat().st_mtime).read_text()
        result = json.loads(rank0[rank0.rfind("\n{\n") + 1:])  # the CLI's JSON is the last thing it prints
    else:
        from chromify.stages import run_train

        result = run_train(params, shards.path, model.path, reports_dir=reports, progress=True)
    # val_* are the exported weights' scores: those of exported_step, which train.keep_best can put before `step`
    for key in ("step", "exported_step", "train_seconds", "val_l1", "val_psnr_ab"):
        if key in result:  # no validation scores without validation photos
            metrics.log_metric(key, float(result[key]))
    metrics.log_metric("processes", nproc)
    model.metadata.update({"framework": "pytorch", "format": "safetensors", "processes": nproc})
    from chromify.decode_search import DECODE_KEYS

    decode = result.get("decode")  # the decode chosen on validation (train.decode_search), shown in the run's UI
    if decode:
        metrics.log_metric("val_decode_psnr_gain_db", float(decode["psnr_gain_db"]))
        metrics.log_metric("val_decode_delta_cf", float(decode["delta_cf"]))
        model.metadata["decode"] = {k: decode[k] for k in DECODE_KEYS}
