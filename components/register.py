from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def register(params_json: str, model: Input[Model], gate: Input[Artifact], raw: Input[Dataset]) -> int:
    """Record the gated model as a new registry version and champion; returns the new version's number, 0 when
    these weights were already registered (nothing new, no alias moved)."""
    import json

    from chromify.config import params_from_json
    from chromify.stages import run_register

    params = params_from_json(params_json)
    decision = json.loads(open(gate.path).read())
    metrics = decision.pop("metrics")
    outcome = run_register(params, model.path, decision, metrics,
                           raw_dir=raw.path, reports_dir=None)
    return int(outcome["version"]) if outcome.get("registered") else 0
