from kfp import dsl
from kfp.dsl import Dataset, Metrics, Output

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def ingest(params_json: str, raw: Output[Dataset], metrics: Output[Metrics], rejects: Output[Dataset]) -> int:
    """Validate and split the source photos; returns the number accepted."""
    import shutil
    from pathlib import Path

    from chromify.config import params_from_json
    from chromify.stages import run_ingest

    params = params_from_json(params_json)
    reports = Path(raw.path).parent / "reports"
    counts = run_ingest(params, out_dir=raw.path, reports_dir=reports, progress=True)  # a line every 30 s in the log
    shutil.copy(reports / "ingest_rejects.csv", rejects.path)
    for key, value in counts.items():
        metrics.log_metric(key, value)
    return counts["accepted"]
