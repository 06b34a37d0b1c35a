from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def evaluate(
    params_json: str,
    shards: Input[Dataset],
    model: Input[Model],
    metrics: Output[Metrics],
    gallery: Output[HTML],
    table: Output[Markdown],
    gate: Output[Artifact],
) -> bool:
    """Score candidate vs gray baseline vs champion, then gate; the returned decision feeds the dsl.If.

    A single return value: kfp.local resolves a condition on a task's `Output` but not on a named output.
    """
    import json
    import shutil
    from pathlib import Path

    from chromify.config import params_from_json
    from chromify.stages import run_evaluate

    params = params_from_json(params_json)
    reports = Path(gate.path).parent / "reports"
    history = Path(model.path) / "reports" / "train_history.json"  # written by the train step: its curves figure
    if history.is_file():
        reports.mkdir(parents=True, exist_ok=True)
        shutil.copy(history, reports / history.name)
    summary, decision = run_evaluate(params, shards.path, model.path, reports)
    for who in ("candidate", "gray", "champion"):
        for key, value in summary.get(who, {}).items():
            metrics.log_metric(f"{who}_{key}", float(value))
    metrics.log_metric("psnr_gain_db", float(summary["psnr_gain_db"]))
    shutil.copy(reports / "gallery.html", gallery.path)
    shutil.copy(reports / "metrics.md", table.path)
    Path(gate.path).write_text(json.dumps({**decision, "metrics": summary}, indent=2))
    return bool(decision["passed"])
