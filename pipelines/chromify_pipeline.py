"""The DAG, read like the diagram: ingest → preprocess → train → evaluate → [gate passed] → register."""

from kfp import dsl

from components.evaluate import evaluate
from components.ingest import ingest
from components.preprocess import preprocess
from components.register import register
from components.train import train

PIPELINE_NAME = "chromify-colorization"


@dsl.pipeline(name=PIPELINE_NAME, description="Train, gate and register a photo colorization model.")
def chromify_pipeline(params_json: str = "{}"):
    """Steps:
    1. ingest: decode and validate the source photos, split them by content hash;
    2. preprocess: convert to 8-bit CIE Lab shards;
    3. train: fit the U-Net L → ab (GPU nodes in the cloud);
    4. evaluate: metrics vs the gray baseline and the champion, gallery, gate decision;
    5. register: only when the gate passed, as a new version and the champion.
    """
    ing = ingest(params_json=params_json).set_display_name("1 · ingest photos")
    pre = preprocess(params_json=params_json, raw=ing.outputs["raw"]).set_display_name("2 · Lab shards")
    fit = train(params_json=params_json, shards=pre.outputs["shards"]).set_display_name("3 · train U-Net")
    fit.set_retry(num_retries=2, backoff_duration="60s")  # preemptible GPU nodes: resume from checkpoint
    ev = evaluate(params_json=params_json, shards=pre.outputs["shards"], model=fit.outputs["model"])
    ev.set_display_name("4 · evaluate & gate").set_caching_options(False)  # reads the current champion
    with dsl.If(ev.outputs["Output"] == True, name="gate-passed"):  # noqa: E712 (a KFP condition, not Python)
        reg = register(params_json=params_json, model=fit.outputs["model"], gate=ev.outputs["gate"],
                       raw=ing.outputs["raw"])
        reg.set_display_name("5 · register model").set_caching_options(False)
