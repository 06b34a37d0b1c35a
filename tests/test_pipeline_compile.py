"""The compiled KFP IR: five tasks, the gate condition, metrics artifacts, caching and retries."""

import yaml

from pipelines.run import compile_pipeline


def test_compiled_pipeline_has_five_tasks_the_gate_condition_and_metrics(tmp_path):
    spec = yaml.safe_load(compile_pipeline(tmp_path / "pipeline.yaml").read_text())
    root = spec["root"]["dag"]["tasks"]
    condition = next(t for name, t in root.items() if name.startswith("condition"))
    inner = spec["components"][condition["componentRef"]["name"]]["dag"]["tasks"]
    assert sorted(root) == sorted(["ingest", "preprocess", "train", "evaluate", next(n for n in root if
                                                                                       n.startswith("condition"))])
    assert list(inner) == ["register"]
    assert condition["triggerPolicy"]["condition"] == "inputs.parameter_values['pipelinechannel--evaluate-Output'] == true"
    assert "evaluate" in condition["dependentTasks"]

    outputs = spec["components"]["comp-evaluate"]["outputDefinitions"]["artifacts"]
    assert outputs["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
    assert outputs["gallery"]["artifactType"]["schemaTitle"] == "system.HTML"
    assert outputs["table"]["artifactType"]["schemaTitle"] == "system.Markdown"
    train_out = spec["components"]["comp-train"]["outputDefinitions"]["artifacts"]
    assert train_out["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
    assert train_out["model"]["artifactType"]["schemaTitle"] == "system.Model"

    # Champion lookup and registration must never come from cache; training retries on preemption.
    assert root["evaluate"]["cachingOptions"].get("enableCache", False) is False
    assert inner["register"]["cachingOptions"].get("enableCache", False) is False
    assert root["train"]["retryPolicy"]["maxRetryCount"] == 2
    assert all(t["taskInfo"]["name"] for t in root.values())


def test_images_are_pinned_never_latest(tmp_path):
    spec = yaml.safe_load(compile_pipeline(tmp_path / "pipeline.yaml").read_text())
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images and all(":" in i.rsplit("/", 1)[-1] and not i.endswith(":latest") for i in images)
    assert any("chromify-gpu" in i for i in images) and any("chromify-cpu" in i for i in images)


def test_pipeline_parameters_default_from_params_yaml(tmp_path):
    import json

    from chromify.config import load_params

    spec = yaml.safe_load(compile_pipeline(tmp_path / "pipeline.yaml").read_text())
    default = spec["root"]["inputDefinitions"]["parameters"]["params_json"]["defaultValue"]
    assert json.loads(default) == load_params().to_dict()
