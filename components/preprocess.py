from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def preprocess(params_json: str, raw: Input[Dataset], shards: Output[Dataset]) -> int:
    """Photos → 8-bit Lab shards with a per-split index; returns the number of training samples."""
    import json

    from chromify.config import params_from_dict
    from chromify.stages import run_preprocess

    counts = run_preprocess(params_from_dict(json.loads(params_json)), raw.path, shards.path)
    shards.metadata.update(counts)
    return counts["train_count"]
