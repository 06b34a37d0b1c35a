"""Compile, run locally (kfp.local) and submit the DAG. Parameters default from params.yaml, so DVC and the
cloud start from the same values."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from chromify.config import Params, load_params


def pipeline_arguments(params: Params) -> dict[str, Any]:
    return {"params_json": json.dumps(params.to_dict(), sort_keys=True)}


def compile_pipeline(out: str | Path, params_path: str | Path = "params.yaml") -> Path:
    from kfp import compiler

    from pipelines.chromify_pipeline import chromify_pipeline

    compiler.Compiler().compile(chromify_pipeline, str(out),
                                pipeline_parameters=pipeline_arguments(load_params(params_path)))
    return Path(out)


def run_local(params: str | Path | Params = "params.yaml", workdir: str | Path = "local_outputs") -> dict[str, Any]:
    """Run the whole DAG in this environment with kfp.local's SubprocessRunner; returns where things went."""
    from kfp import local

    from pipelines.chromify_pipeline import chromify_pipeline

    p = params if isinstance(params, Params) else load_params(params)
    workdir = Path(workdir).resolve()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(workdir))
    chromify_pipeline(**pipeline_arguments(p))
    return {"pipeline_root": str(workdir), "registry": str(Path(p.register.registry_dir).resolve())}


def submit(target: str, project: str | None, region: str, pipeline_root: str | None, service_account: str | None,
           experiment: str | None, host: str | None, dry_run: bool, params_path: str | Path) -> dict[str, Any]:
    """Submit to Vertex AI Pipelines (target='vertex') or a Kubeflow Pipelines host (target='kfp')."""
    import tempfile

    from chromify.errors import ConfigError
    from pipelines.chromify_pipeline import PIPELINE_NAME

    params = load_params(params_path)
    spec = Path(tempfile.mkdtemp()) / "chromify_pipeline.yaml"
    compile_pipeline(spec, params_path)
    arguments = pipeline_arguments(params)
    if target == "vertex":
        if not project or not pipeline_root:
            raise ConfigError("--target vertex needs --project and --pipeline-root gs://bucket/path")
        if not pipeline_root.startswith("gs://") or "/" not in pipeline_root[5:].strip("/"):
            raise ConfigError(f"--pipeline-root {pipeline_root}: must be gs://bucket/some/path (a path in the bucket)")
        request = {"target": "vertex", "project": project, "location": region, "display_name": PIPELINE_NAME,
                   "template_path": str(spec), "pipeline_root": pipeline_root, "service_account": service_account,
                   "experiment": experiment, "parameter_values": sorted(arguments)}
        if dry_run:
            return {"dry_run": True, **request}
        from google.cloud import aiplatform

        aiplatform.init(project=project, location=region, experiment=experiment)
        job = aiplatform.PipelineJob(display_name=PIPELINE_NAME, template_path=str(spec),
                                     pipeline_root=pipeline_root, parameter_values=arguments, enable_caching=True)
        job.submit(service_account=service_account, experiment=experiment)
        return {**request, "job": job.resource_name}
    if target == "kfp":
        if not host:
            raise ConfigError("--target kfp needs --host URL of the Kubeflow Pipelines API")
        request = {"target": "kfp", "host": host, "package": str(spec), "parameter_values": sorted(arguments)}
        if dry_run:
            return {"dry_run": True, **request}
        import kfp

        run = kfp.Client(host=host).create_run_from_pipeline_package(str(spec), arguments=arguments,
                                                                     enable_caching=True)
        return {**request, "run_id": run.run_id}
    raise ConfigError(f"--target {target!r}: expected vertex or kfp")
