from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def train(params_json: str, shards: Input[Dataset], model: Output[Model], metrics: Output[Metrics]) -> float:
    """Train the colorizer (torchrun inside when several GPUs are attached); returns validation L1."""
    import json

    from chromify.config import params_from_dict
    from chromify.stages import run_train

    result = run_train(params_from_dict(json.loads(params_json)), shards.path, model.path, reports_dir=None)
    for key in ("step", "train_seconds", "val_l1", "val_psnr_ab"):
        metrics.log_metric(key, float(result[key]))
    model.metadata.update({"framework": "pytorch", "format": "safetensors"})
    return float(result["val_l1"])
