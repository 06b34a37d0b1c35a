"""The compiled KFP IR for each target: the DAG's shape, the preprocess fan-out, the train task's GPUs (Vertex AI
resources, Kubeflow limit + node selector + toleration), caching, retries and pinned images. kfp.local ignores
most of these, so they are checked here, on what Vertex AI and Kubeflow would receive."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from chromify.config import load_params, params_from_dict
from chromify.errors import ConfigError
from pipelines.run import compile_pipeline, iter_tasks, load_spec, summarize_spec

ROOT = Path(__file__).resolve().parents[1]


def params_file(tmp_path: Path, **sections) -> Path:
    """The repo's params.yaml with some sections' keys overridden."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in sections.items():
        raw[section] = {**raw[section], **values}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def compiled(tmp_path: Path, target: str, **sections) -> tuple[dict, dict]:
    out = compile_pipeline(tmp_path / f"{target}.yaml", params_file(tmp_path, **sections), target=target)
    return load_spec(out)


def dag_of(spec: dict, task: dict) -> dict:
    return spec["components"][task["componentRef"]["name"]]["dag"]["tasks"]


def one(tasks: dict, prefix: str) -> tuple[str, dict]:
    (name,) = [n for n in tasks if n.startswith(prefix)]
    return name, tasks[name]


@pytest.mark.parametrize("target", ["vertex", "kfp", "local"])
def test_dag_has_its_steps_the_gate_condition_metrics_and_display_names(tmp_path, target):
    spec, _ = compiled(tmp_path, target)
    root = spec["root"]["dag"]["tasks"]
    loop_name, loop = one(root, "for-loop")
    cond_name, cond = one(root, "condition")
    assert sorted(root) == sorted(["ingest", loop_name, "collect-shards", "train", "evaluate", cond_name])
    assert list(dag_of(spec, loop)) == ["preprocess-partition"]
    assert list(dag_of(spec, cond)) == ["register"]
    assert cond["triggerPolicy"]["condition"] == "inputs.parameter_values['pipelinechannel--evaluate-Output'] == true"
    assert "evaluate" in cond["dependentTasks"]
    assert root["train"]["dependentTasks"] == ["collect-shards"]

    outputs = spec["components"]["comp-evaluate"]["outputDefinitions"]["artifacts"]
    assert outputs["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
    assert outputs["gallery"]["artifactType"]["schemaTitle"] == "system.HTML"
    assert outputs["table"]["artifactType"]["schemaTitle"] == "system.Markdown"
    train_out = spec["components"]["comp-train"]["outputDefinitions"]
    assert train_out["artifacts"]["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
    assert train_out["artifacts"]["model"]["artifactType"]["schemaTitle"] == "system.Model"
    # No parameter: train's returned validation L1 was NaN without validation photos, written as a bare NaN into
    # the executor output that Kubeflow's launcher parses as JSON; its scores travel in the Metrics artifact.
    assert set(train_out) == {"artifacts"}

    # Every task, loop and condition carries a name of its own, not the generated one.
    names = {name: task["taskInfo"]["name"] for name, task, _ in iter_tasks(spec)}
    assert len(names) == 8 and all(display and display != name for name, display in names.items())
    assert names[loop_name] == "preprocess-partitions" and names[cond_name] == "gate-passed"
    for step in ("ingest", "Lab shards", "collect", "train", "evaluate", "register"):  # the docstring lists the steps
        assert step in spec["pipelineInfo"]["description"]


def test_preprocess_fans_out_over_partitions_and_one_step_collects_them(tmp_path):
    spec, _ = compiled(tmp_path, "vertex", cloud={"preprocess_partitions": 3})
    root = spec["root"]["dag"]["tasks"]
    loop_name, loop = one(root, "for-loop")
    assert json.loads(loop["parameterIterator"]["items"]["raw"]) == [0, 1, 2]
    part = dag_of(spec, loop)["preprocess-partition"]
    assert part["inputs"]["parameters"]["partition"]["componentInputParameter"] == loop["parameterIterator"][
        "itemInput"]
    assert part["inputs"]["parameters"]["partitions"]["runtimeValue"]["constant"] == 3
    assert part["inputs"]["artifacts"]["raw"]["componentInputArtifact"] == "pipelinechannel--ingest-raw"

    # dsl.Collected: the loop's outputs come back as one list of datasets into collect-shards.
    collect = root["collect-shards"]
    parts = collect["inputs"]["artifacts"]["parts"]["taskOutputArtifact"]
    assert parts["producerTask"] == loop_name
    loop_outputs = spec["components"][loop["componentRef"]["name"]]["outputDefinitions"]["artifacts"]
    assert loop_outputs[parts["outputArtifactKey"]]["isArtifactList"] is True
    collect_input = spec["components"]["comp-collect-shards"]["inputDefinitions"]["artifacts"]["parts"]
    assert collect_input["isArtifactList"] is True
    assert collect["inputs"]["parameters"]["partitions"]["runtimeValue"]["constant"] == 3
    assert root["train"]["inputs"]["artifacts"]["shards"]["taskOutputArtifact"]["producerTask"] == "collect-shards"


def test_vertex_train_task_gets_the_accelerator_cpu_and_memory_from_params(tmp_path):
    spec, platform = compiled(tmp_path, "vertex", cloud={"accelerator_type": "NVIDIA_A100_80GB",
                                                         "accelerator_count": 4, "cpu_limit": "48",
                                                         "memory_limit": "340G"})
    container = spec["deploymentSpec"]["executors"]["exec-train"]["container"]
    resources = container["resources"]
    assert resources["accelerator"]["resourceType"] == "NVIDIA_A100_80GB"
    assert resources["accelerator"]["resourceCount"] == "4"
    assert resources["resourceCpuLimit"] == "48" and resources["resourceMemoryLimit"] == "340G"
    # Four GPUs: the train component starts four torchrun ranks.
    assert spec["root"]["dag"]["tasks"]["train"]["inputs"]["parameters"]["nproc"]["runtimeValue"]["constant"] == 4
    assert platform == {}  # no Kubernetes settings on Vertex AI
    # Only training asks for GPUs; the other steps take the default machine.
    others = [e for name, e in spec["deploymentSpec"]["executors"].items() if name != "exec-train"]
    assert others and not any("resources" in e["container"] for e in others)


def test_kfp_train_task_gets_the_gpu_limit_node_selector_and_toleration(tmp_path):
    spec, platform = compiled(tmp_path, "kfp", cloud={"accelerator_count": 2, "kfp_gpu_node_selector_key": "pool",
                                                      "kfp_gpu_node_selector_value": "l4-spot"})
    resources = spec["deploymentSpec"]["executors"]["exec-train"]["container"]["resources"]
    assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert resources["accelerator"]["resourceCount"] == "2"
    assert resources["resourceCpuLimit"] == "7" and resources["resourceMemoryLimit"] == "26G"
    assert spec["root"]["dag"]["tasks"]["train"]["inputs"]["parameters"]["nproc"]["runtimeValue"]["constant"] == 2
    executors = platform["deploymentSpec"]["executors"]
    assert list(executors) == ["exec-train"]  # CPU steps stay off the GPU pool
    assert executors["exec-train"]["nodeSelector"] == {"labels": {"pool": "l4-spot"}}
    assert executors["exec-train"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"}]


def test_the_kfp_defaults_select_and_tolerate_the_terraform_gpu_pool():
    hcl2 = pytest.importorskip("hcl2")
    cloud = load_params(ROOT / "params.yaml").cloud
    module = ROOT / "infra/modules/gke_gpu_pool"
    pool = next(r["google_container_node_pool"]["gpu"] for r in hcl2.loads((module / "main.tf").read_text())[
        "resource"] if "google_container_node_pool" in r)["node_config"][0]
    variables = {k: v for d in hcl2.loads((module / "variables.tf").read_text())["variable"] for k, v in d.items()}
    assert pool["labels"] == {cloud.kfp_gpu_node_selector_key: "${var.node_label_value}"}
    assert variables["node_label_value"]["default"] == cloud.kfp_gpu_node_selector_value
    (taint,) = pool["taint"]
    assert (taint["key"], taint["value"]) == (cloud.kfp_gpu_toleration_key, cloud.kfp_gpu_toleration_value)
    assert taint["effect"] == "NO_SCHEDULE" and cloud.kfp_gpu_toleration_effect == "NoSchedule"


def test_local_target_and_zero_gpus_carry_no_accelerator_settings(tmp_path):
    spec, platform = compiled(tmp_path, "local", cloud={"accelerator_count": 8})
    assert not any("resources" in e["container"] for e in spec["deploymentSpec"]["executors"].values())
    assert spec["root"]["dag"]["tasks"]["train"]["inputs"]["parameters"]["nproc"]["runtimeValue"]["constant"] == 1
    assert platform == {}

    spec, platform = compiled(tmp_path, "kfp", cloud={"accelerator_count": 0})
    resources = spec["deploymentSpec"]["executors"]["exec-train"]["container"]["resources"]
    assert "accelerator" not in resources and platform == {}


def test_caching_is_on_for_deterministic_steps_and_off_for_the_champion_and_a_live_source(tmp_path):
    spec, _ = compiled(tmp_path, "vertex")
    tasks = {name: task for name, task, _ in iter_tasks(spec)}

    def cached(name: str) -> bool:
        return tasks[name].get("cachingOptions", {}).get("enableCache", False)

    # the compiled source is the bundled sample, but params_json, which names the source, can change per run
    assert not cached("ingest")
    assert cached("preprocess-partition") and cached("collect-shards") and cached("train")
    assert not cached("evaluate") and not cached("register")  # champion lookup, registry writes
    retry = tasks["train"]["retryPolicy"]  # preemptible GPU nodes: 60 s, then 120 s after a failure (cloud.md)
    assert (retry["maxRetryCount"], retry["backoffDuration"], retry["backoffFactor"]) == (2, "60s", 2)

    spec, _ = compiled(tmp_path, "vertex", ingest={"source": "gs://photos/incoming"})
    assert not spec["root"]["dag"]["tasks"]["ingest"].get("cachingOptions", {}).get("enableCache", False)


@pytest.mark.parametrize("target", ["vertex", "kfp"])
def test_the_register_task_records_the_images_commit(tmp_path, target):
    from components.images import TAG

    spec, _ = compiled(tmp_path, target)
    register_env = spec["deploymentSpec"]["executors"]["exec-register"]["container"]["env"]
    assert register_env == [{"name": "CHROMIFY_GIT_COMMIT", "value": TAG}]  # the images have no git
    spec, _ = compiled(tmp_path, "local")  # kfp.local runs this checkout, whose commit git finds
    assert "env" not in spec["deploymentSpec"]["executors"]["exec-register"]["container"]


def test_git_commit_prefers_the_images_commit_and_else_finds_the_packages_repository_from_anywhere(tmp_path):
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
    show = [sys.executable, "-c", "from chromify.stages import git_commit; print(git_commit())"]
    env = {k: v for k, v in os.environ.items() if k != "CHROMIFY_GIT_COMMIT"}
    outside = subprocess.run(show, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert outside.stdout.strip() == head.stdout.strip(), outside.stderr  # run-local started outside the checkout
    # a cloud image: no git binary, no .git, the commit in the environment
    env.update(CHROMIFY_GIT_COMMIT="0123456789abcdef0123456789abcdef01234567", PATH=str(tmp_path))
    image = subprocess.run(show, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert image.stdout.strip() == "0123456789abcdef0123456789abcdef01234567", image.stderr


@pytest.mark.parametrize("target", ["vertex", "kfp"])
def test_images_are_pinned_never_latest(tmp_path, target):
    summary = summarize_spec(*compiled(tmp_path, target))
    images = summary["images"]
    assert images and all(":" in i.rsplit("/", 1)[-1] and not i.endswith(":latest") for i in images)
    assert summary["tasks"]["train"]["image"].rsplit(":", 1)[0].endswith("/chromify-gpu")
    assert {t["image"].rsplit(":", 1)[0].rsplit("/", 1)[1] for n, t in summary["tasks"].items() if n != "train"} == {
        "chromify-cpu"}


def test_images_refuse_a_moving_tag_and_follow_the_registry():
    env = {**os.environ, "CHROMIFY_IMAGE_TAG": "latest"}
    proc = subprocess.run([sys.executable, "-c", "import components.images"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "CHROMIFY_IMAGE_TAG=latest" in proc.stderr
    # through the CLI, a moving tag or a reference no node could pull is one line (it was a traceback)
    for name, value, message in (("CHROMIFY_IMAGE_TAG", "latest", "use the git commit the images were built from"),
                                 ("CHROMIFY_IMAGE_TAG", "my tag", "not an image tag"),
                                 ("CHROMIFY_IMAGE_REGISTRY", "https://x.io/p", "not an image registry path")):
        proc = subprocess.run([sys.executable, "-m", "chromify.cli", "pipeline", "compile", "-o", "x.yaml"],
                              cwd=ROOT, env={**os.environ, name: value}, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and proc.stderr.startswith(f"chromify: error: {name}=") and message in proc.stderr
        assert proc.stderr.count("\n") == 1 and not (ROOT / "x.yaml").exists()
    env = {**os.environ, "CHROMIFY_IMAGE_TAG": "abc123", "CHROMIFY_IMAGE_REGISTRY": "europe-west4-docker.pkg.dev/p/r"}
    proc = subprocess.run([sys.executable, "-c", "from components.images import GPU_IMAGE; print(GPU_IMAGE)"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "europe-west4-docker.pkg.dev/p/r/chromify-gpu:abc123"


def test_pipeline_parameters_default_from_params_yaml(tmp_path):
    spec, _ = compiled(tmp_path, "vertex", train={"lr": 0.01})
    default = spec["root"]["inputDefinitions"]["parameters"]["params_json"]["defaultValue"]
    assert json.loads(default) == yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert json.loads(default)["train"]["lr"] == 0.01


def test_bad_targets_and_cloud_params_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="--target 'aws'"):
        compile_pipeline(tmp_path / "x.yaml", ROOT / "params.yaml", target="aws")
    with pytest.raises(ConfigError, match="cloud.accelerator_type 'NVIDIA_K80'"):
        params_from_dict({"cloud": {"accelerator_type": "NVIDIA_K80"}})
    with pytest.raises(ConfigError, match="cloud.preprocess_partitions 0"):
        params_from_dict({"cloud": {"preprocess_partitions": 0}})
    with pytest.raises(ConfigError, match="cloud.target 'local'"):
        params_from_dict({"cloud": {"target": "local"}})  # kfp.local is a compile target, not a cloud


def chromify(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run(["chromify", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=180)


def test_a_params_file_named_must_exist_only_params_yaml_may_be_absent(tmp_path, monkeypatch):
    from pipelines.run import run_local

    # As the stage commands: a typo in --params must not compile or run the library defaults.
    proc = chromify("pipeline", "compile", "--params", str(tmp_path / "typo.yaml"), "-o", "x.yaml", cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (2, f"chromify: error: {tmp_path / 'typo.yaml'}: no such params file\n")
    assert not (tmp_path / "x.yaml").exists()
    with pytest.raises(ConfigError, match="typo.yaml: no such params file"):
        run_local(tmp_path / "typo.yaml", tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before kfp.local started
    monkeypatch.chdir(tmp_path)  # no params.yaml here: the defaults
    spec, _ = load_spec(compile_pipeline(tmp_path / "p.yaml", "params.yaml", target="vertex"))
    assert json.loads(spec["root"]["inputDefinitions"]["parameters"]["params_json"]["defaultValue"]) == (
        load_params(tmp_path / "absent.yaml").to_dict())


def test_compile_replaces_the_spec_by_rename_and_refuses_a_missing_folder_in_one_line(tmp_path):
    out = tmp_path / "p.yaml"
    out.write_text("the previous spec\n")
    before = out.stat().st_ino
    compile_pipeline(out, ROOT / "params.yaml", target="vertex")
    assert out.stat().st_ino != before  # a new file renamed over the old, never rewritten in place
    assert load_spec(out)[0]["pipelineInfo"]["name"] == "chromify-colorization"
    assert [f.name for f in tmp_path.iterdir()] == ["p.yaml"]  # no temp file left beside it

    proc = chromify("pipeline", "compile", "-o", str(tmp_path / "missing" / "p.yaml"), cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr[-2000:]
    assert proc.stderr.startswith(f"chromify: error: {tmp_path / 'missing' / 'p.yaml'}: no such folder")
    with pytest.raises(ConfigError, match="p.json: the pipeline spec is YAML"):
        compile_pipeline(tmp_path / "p.json", ROOT / "params.yaml", target="vertex")


def test_run_local_names_the_failed_task_and_its_error_in_one_line(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["ingest"]["source"] = str(tmp_path / "no-photos-here")  # ingest, the first task, fails at once
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    proc = chromify("pipeline", "run-local", "--workdir", "run", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.splitlines()[-1] == (
        f"chromify: error: kfp.local: task 'ingest' failed: ConfigError: ingest.source: {tmp_path / 'no-photos-here'}"
        ": not a folder, 'sample' or gs:// URI")
    assert "Executing task" in proc.stdout  # kfp.local's log still streams through


def test_every_component_refuses_a_params_json_that_is_not_the_whole_params():
    """A run's params_json edited in the pipeline UI: a partial object once ran on the library's defaults for the
    rest (test_fraction 0.15, not params.yaml's 0.25: an empty test split, found only after training), and a list
    ended in an AttributeError traceback. Each step refuses both before touching an artifact."""
    import inspect

    from chromify.config import params_from_json
    from components.evaluate import evaluate
    from components.ingest import ingest
    from components.preprocess import collect_shards, preprocess_partition
    from components.register import register
    from components.train import train

    whole = load_params(ROOT / "params.yaml").to_dict()
    assert params_from_json(json.dumps(whole)) == load_params(ROOT / "params.yaml")
    no_max_steps = {**whole, "train": {k: v for k, v in whole["train"].items() if k != "max_steps"}}
    cases = {
        "[]": "params_json: expected a JSON object of params sections, got list",
        "{not json": "params_json: not JSON (Expecting property name enclosed in double quotes",
        json.dumps({"train": {"max_minutes": 5}}): "params_json: base, ingest, preprocess, model, train.epochs and 32 "
                                                    "more missing; give the whole params as compiled",
        json.dumps(no_max_steps): "params_json: train.max_steps missing; give the whole params as compiled",
    }
    for component in (ingest, preprocess_partition, collect_shards, train, evaluate, register):
        others = {name: None for name in inspect.signature(component.python_func).parameters if name != "params_json"}
        for text, message in cases.items():
            with pytest.raises(ConfigError) as err:
                component.python_func(params_json=text, **others)
            assert str(err.value).startswith(message), (component.name, str(err.value))


@pytest.mark.slow
def test_train_component_runs_torchrun_ranks_and_reports_rank_0s_metrics(tmp_path, monkeypatch):
    """Two ranks on the CPU (gloo): what four GPUs do on a node, with the component's own code."""
    from kfp import dsl

    from chromify.stages import run_ingest, run_preprocess
    from components.train import train

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    p = load_params(params_file(tmp_path, preprocess={"size": 64, "workers": 1},
                                model={"base_width": 8, "depth": 3},
                                train={"max_steps": 4, "max_minutes": 0, "crop": 48, "batch_size": 2,
                                       "checkpoint_every": 0, "warmup_steps": 2, "decode_search_min_photos": 1}))
    run_ingest(p, tmp_path / "raw", tmp_path / "reports")
    run_preprocess(p, tmp_path / "raw", tmp_path / "shards")
    model, metrics = dsl.Model(uri=str(tmp_path / "model")), dsl.Metrics(uri=str(tmp_path / "metrics"))
    train.python_func(params_json=json.dumps(p.to_dict()), shards=dsl.Dataset(uri=str(tmp_path / "shards")),
                      model=model, metrics=metrics, nproc=2)
    assert metrics.metadata["processes"] == 2 and metrics.metadata["step"] == metrics.metadata["exported_step"] == 4
    assert 0 < metrics.metadata["val_l1"] < 1  # only rank 0 validates: its result was read
    # The decode search ran on rank 0 (on the sample's one validation photo): its choice is exported and shown.
    exported = json.loads((tmp_path / "model" / "config.json").read_text())["model"]
    assert model.metadata["decode"] == {k: exported[k] for k in ("temperature", "prior_correction", "chroma_gain")}
    assert metrics.metadata["val_decode_delta_cf"] >= 0 and np.isfinite(metrics.metadata["val_decode_psnr_gain_db"])


def test_evaluate_component_returns_the_gate_decision_and_hands_over_its_reports(tmp_path, monkeypatch):
    """The component's own code on a two-step model: the bool it returns is what the DAG's dsl.If branches on, so
    it must be the gate's decision both ways; the gallery, table and gate artifacts are the reports' own."""
    from kfp import dsl

    from chromify.stages import run_ingest, run_preprocess, run_train
    from components.evaluate import evaluate

    monkeypatch.chdir(tmp_path)  # the registry (no champion yet) is relative to here
    small = {"preprocess": {"size": 64, "workers": 1}, "model": {"base_width": 8, "depth": 3},
             "train": {"max_steps": 2, "max_minutes": 0, "crop": 48, "batch_size": 2, "checkpoint_every": 0,
                       "warmup_steps": 1}}
    p = load_params(params_file(tmp_path, **small))
    run_ingest(p, tmp_path / "raw", tmp_path / "reports")
    run_preprocess(p, tmp_path / "raw", tmp_path / "shards")
    run_train(p, tmp_path / "shards", tmp_path / "model", reports_dir=None)
    decisions = {}
    for name, bar in (("lenient", -100.0), ("strict", 100.0)):
        gate_params = {"min_psnr_gain_db": bar, "max_delta_cf": 1000.0}
        params_json = json.dumps(load_params(params_file(tmp_path, gate=gate_params, **small)).to_dict())
        out = tmp_path / name
        artifacts = {"metrics": dsl.Metrics(uri=str(out / "metrics")), "gallery": dsl.HTML(uri=str(out / "gallery")),
                     "table": dsl.Markdown(uri=str(out / "table")), "gate": dsl.Artifact(uri=str(out / "gate"))}
        out.mkdir()
        passed = evaluate.python_func(params_json=params_json, shards=dsl.Dataset(uri=str(tmp_path / "shards")),
                                      model=dsl.Model(uri=str(tmp_path / "model")), **artifacts)
        gate = json.loads((out / "gate").read_text())
        reports = out / "reports"
        assert passed is gate["passed"]
        assert (out / "gallery").read_bytes() == (reports / "gallery.html").read_bytes()
        assert (out / "table").read_text() == (reports / "metrics.md").read_text()
        logged = artifacts["metrics"].metadata
        assert logged["psnr_gain_db"] == pytest.approx(gate["metrics"]["psnr_gain_db"])
        assert logged["candidate_psnr"] - logged["gray_psnr"] == pytest.approx(logged["psnr_gain_db"])
        decisions[name] = (passed, gate["reasons"])
    assert decisions["lenient"][0] is True and decisions["strict"][0] is False
    assert any("PSNR" in reason for reason in decisions["strict"][1])
