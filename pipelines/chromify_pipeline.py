"""The DAG, read like the diagram: ingest → preprocess ×n → collect → train → evaluate → [gate passed] → register.

The DAG's shape depends on params (the number of preprocess partitions, where training runs and on what), so it
is built by `build_pipeline(params, target)`; its one run-time parameter is the params JSON every step reads.
"""

from kfp import dsl, kubernetes
from kfp.dsl import PipelineTask
from kfp.dsl.graph_component import GraphComponent

from chromify.config import CloudParams, Params
from components import images
from components.evaluate import evaluate
from components.ingest import ingest
from components.preprocess import collect_shards, preprocess_partition
from components.register import register
from components.train import train

PIPELINE_NAME = "chromify-colorization"
TARGETS = ("vertex", "kfp", "local")
KFP_GPU_RESOURCE = "nvidia.com/gpu"  # the Kubernetes extended resource of NVIDIA's device plugin


def place_training(task: PipelineTask, cloud: CloudParams, target: str) -> None:
    """GPUs, CPU and memory for the train task on `target`; kfp.local ('local') takes none of them."""
    if target == "local":
        return
    task.set_cpu_limit(cloud.cpu_limit).set_memory_limit(cloud.memory_limit)
    if not cloud.accelerator_count:
        return
    if target == "vertex":  # Vertex AI picks a machine type that carries these GPUs and limits
        task.set_accelerator_type(cloud.accelerator_type).set_accelerator_limit(cloud.accelerator_count)
    else:  # Kubeflow: the GPU limit, and the GKE GPU pool's label and taint (infra/modules/gke_gpu_pool)
        task.set_accelerator_type(KFP_GPU_RESOURCE).set_accelerator_limit(cloud.accelerator_count)
        kubernetes.add_node_selector(task, cloud.kfp_gpu_node_selector_key, cloud.kfp_gpu_node_selector_value)
        kubernetes.add_toleration(task, key=cloud.kfp_gpu_toleration_key, operator="Equal",
                                  value=cloud.kfp_gpu_toleration_value, effect=cloud.kfp_gpu_toleration_effect)


def build_pipeline(params: Params, target: str) -> GraphComponent:
    """The Chromify DAG for `target` (vertex, kfp or local), shaped by `params.cloud`."""
    if target not in TARGETS:
        from chromify.errors import ConfigError

        raise ConfigError(f"--target {target!r}: expected one of {', '.join(TARGETS)}")
    cloud = params.cloud
    partitions = cloud.preprocess_partitions
    nproc = cloud.accelerator_count if target != "local" and cloud.accelerator_count > 1 else 1
    # Caching keys on the params JSON and the image, never on what a source holds: a folder or gs:// prefix is a
    # live listing, and a cached ingest would silently miss photos added since. So ingest is never cached: whether
    # the source is the fixed sample is known only at run time (params_json can be overridden per run). A fresh
    # ingest gives the later steps a new input artifact, so they rerun too: the price of seeing new photos.
    # Preprocess, collect and train are deterministic in their inputs.

    @dsl.pipeline(name=PIPELINE_NAME)
    def chromify_pipeline(params_json: str = "{}"):
        """Train, gate and register a photo colorization model. Steps:
        1. ingest: decode and validate the source photos, split them by content hash;
        2. preprocess: n parallel tasks, each writing every n-th of the 8-bit CIE Lab shards;
        3. collect: gather the partitions' shards into one dataset with a per-split index;
        4. train: fit the U-Net L → ab (GPU nodes in the cloud; torchrun when several GPUs);
        5. evaluate: metrics vs the gray baseline and the champion, gallery, gate decision;
        6. register: only when the gate passed, as a new version and the champion.
        """
        ing = ingest(params_json=params_json).set_display_name("1 · ingest photos")
        ing.set_caching_options(False)
        with dsl.ParallelFor(list(range(partitions)), name="preprocess-partitions") as i:
            part = preprocess_partition(params_json=params_json, raw=ing.outputs["raw"], partition=i,
                                        partitions=partitions).set_display_name("2 · Lab shards (one partition)")
            part.set_caching_options(True)
        pre = collect_shards(params_json=params_json, parts=dsl.Collected(part.outputs["shards"]),
                             partitions=partitions).set_display_name("3 · collect shards")
        pre.set_caching_options(True)
        fit = train(params_json=params_json, shards=pre.outputs["shards"], nproc=nproc)
        fit.set_display_name("4 · train U-Net").set_caching_options(True)
        # preemptible GPU nodes: resume from checkpoint, 60 s then 120 s after a failure (cloud.md)
        fit.set_retry(num_retries=2, backoff_duration="60s", backoff_factor=2)
        place_training(fit, cloud, target)
        ev = evaluate(params_json=params_json, shards=pre.outputs["shards"], model=fit.outputs["model"])
        ev.set_display_name("5 · evaluate & gate").set_caching_options(False)  # reads the current champion
        with dsl.If(ev.outputs["Output"] == True, name="gate-passed"):  # noqa: E712 (a KFP condition, not Python)
            reg = register(params_json=params_json, model=fit.outputs["model"], gate=ev.outputs["gate"],
                           raw=ing.outputs["raw"])
            reg.set_display_name("6 · register model").set_caching_options(False)
            if target != "local" and images.TAG != images.NO_COMMIT:
                # the lineage's git commit: the cloud images have neither git nor .git, and TAG is their commit
                # (kfp.local runs this checkout, whose commit git_commit finds itself)
                reg.set_env_variable("CHROMIFY_GIT_COMMIT", images.TAG)

    return chromify_pipeline
