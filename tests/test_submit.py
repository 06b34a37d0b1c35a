"""Submitting the DAG, checked on the requests it would send: the Vertex AI PipelineJob is built for real (anonymous
credentials) and never submitted; the Kubeflow run is checked against kfp.Client's own signature. Nothing here
may open a network connection."""

import http.server
import inspect
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
import yaml
from conftest import GoogleCloudAPI

from chromify.config import load_params
from chromify.errors import ChromifyError, ConfigError
from pipelines.run import build_kfp_run, build_vertex_job, check_pipeline_root, compile_pipeline, load_spec, submit

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SA = "chromify-pipelines@proj-1.iam.gserviceaccount.com"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Nothing leaves the machine; 127.0.0.1 (the stub KFP API below) is allowed."""
    connect, create_connection = socket.socket.connect, socket.create_connection

    def local(address) -> bool:
        return isinstance(address, tuple) and address[0] in ("127.0.0.1", "localhost")

    def guarded_connect(sock, address):
        if not local(address):
            raise AssertionError(f"network access attempted: {address}")
        return connect(sock, address)

    def guarded_create_connection(address, *args, **kwargs):
        if not local(address):
            raise AssertionError(f"network access attempted: {address}")
        return create_connection(address, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "create_connection", guarded_create_connection)


@pytest.fixture
def kfp_api():
    """The four calls of the Kubeflow Pipelines v2beta1 REST API that a run submission makes, answered on
    127.0.0.1 and recorded: the real kfp.Client talks to it as to a cluster's ml-pipeline service."""
    received: list[tuple[str, str, dict]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            self.answer({"multi_user": False} if self.path.endswith("/healthz") else {})  # no experiment yet

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
            if self.path == "/apis/v2beta1/experiments":
                self.answer({"experiment_id": "exp-7", "display_name": body["display_name"]}, body)
            elif self.path == "/apis/v2beta1/runs":
                self.answer({"run_id": "run-1", "display_name": body["display_name"]}, body)
            else:
                self.send_error(404)

        def answer(self, reply: dict, body: dict | None = None) -> None:
            received.append((self.command, self.path.split("?")[0], body or {}))
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    server.shutdown()
    server.server_close()


@pytest.fixture
def params_path(tmp_path) -> Path:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["train"] = {**raw["train"], "lr": 0.005}
    raw["cloud"] = {**raw["cloud"], "accelerator_type": "NVIDIA_H100_80GB", "accelerator_count": 2}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def vertex_job(tmp_path, params_path, **kw):
    from google.auth.credentials import AnonymousCredentials

    spec = compile_pipeline(tmp_path / "pipeline.yaml", params_path, target="vertex")
    args = {"project": "proj-1", "region": "europe-west4", "pipeline_root": "gs://proj-1-chromify/pipeline-root",
            **kw}
    return build_vertex_job(spec, load_params(params_path), credentials=AnonymousCredentials(), **args), spec


def test_vertex_job_carries_the_pipeline_root_parameters_and_service_account(tmp_path, params_path):
    job, spec_path = vertex_job(tmp_path, params_path, service_account=SA)
    sent = job.to_dict()
    assert job.project == "proj-1" and job.location == "europe-west4"
    assert sent["displayName"] == "chromify-colorization"
    assert sent["runtimeConfig"]["gcsOutputDirectory"] == "gs://proj-1-chromify/pipeline-root"
    values = sent["runtimeConfig"]["parameterValues"]
    assert values.keys() == {"params_json"}
    assert json.loads(values["params_json"]) == yaml.safe_load(params_path.read_text())  # the file, every key
    assert json.loads(values["params_json"])["train"]["lr"] == 0.005
    assert sent["serviceAccount"] == SA
    assert sent["labels"]["app"] == "chromify" and sent["labels"]["image-tag"]

    # The spec that goes out is the compiled one: per-task caching untouched, GPUs on the train task.
    compiled, _ = load_spec(spec_path)
    pipeline_spec = sent["pipelineSpec"]
    for name, task in compiled["root"]["dag"]["tasks"].items():
        assert pipeline_spec["root"]["dag"]["tasks"][name].get("cachingOptions") == task.get("cachingOptions")
    assert not pipeline_spec["root"]["dag"]["tasks"]["evaluate"]["cachingOptions"].get("enableCache", False)
    accelerator = pipeline_spec["deploymentSpec"]["executors"]["exec-train"]["container"]["resources"]["accelerator"]
    assert (accelerator["resourceType"], accelerator["resourceCount"]) == ("NVIDIA_H100_80GB", "2")


def test_vertex_job_without_a_service_account_runs_as_the_default(tmp_path, params_path):
    job, _ = vertex_job(tmp_path, params_path)
    assert "serviceAccount" not in job.to_dict()


@pytest.mark.parametrize("root", [None, "", "gs://bucket-only", "gs://bucket-only/", "/local/path", "s3://b/p",
                                  "gs://Bad_Bucket/path"])
def test_pipeline_root_must_be_a_path_in_a_bucket(tmp_path, params_path, root):
    with pytest.raises(ConfigError, match="--pipeline-root"):
        vertex_job(tmp_path, params_path, pipeline_root=root)


@pytest.mark.parametrize(("root", "wrong"), [
    ("gs://b/root", "'b' is not a valid bucket name"), ("gs://Bad_Bucket/path", "'Bad_Bucket' is not a valid bucket"),
    ("gs://-bucket-/p", "'-bucket-' is not a valid bucket"), ("gs://bucket-only/", "not the bucket itself"),
    ("gs://bucket-ok/my runs", "no spaces in the path"), (None, "--pipeline-root is needed")])
def test_pipeline_root_errors_say_what_is_wrong(root, wrong):
    with pytest.raises(ConfigError, match=wrong):
        check_pipeline_root(root)
    assert check_pipeline_root("gs://my_bucket.example-1/x/") == "gs://my_bucket.example-1/x"


def test_an_unknown_vertex_region_is_refused_in_one_line(tmp_path, params_path):
    with pytest.raises(ConfigError, match=r"^--region 'nowhere-1': not a Vertex AI region[^\n]*$"):
        vertex_job(tmp_path, params_path, region="nowhere-1")
    with pytest.raises(ConfigError, match="--region 'nowhere-1'"):  # before the compile, in a dry run too
        submit(target="vertex", project="proj-1", region="nowhere-1", pipeline_root="gs://my-bucket/x",
               service_account=None, experiment=None, host=None, dry_run=True, params_path=params_path)


def test_submit_refuses_a_params_file_that_does_not_exist(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml: no such params file"):
        submit(target="kfp", project=None, region="us-central1", pipeline_root=None, service_account=None,
               experiment=None, host="https://kfp.example.com", dry_run=True, params_path=tmp_path / "missing.yaml")


def test_vertex_needs_a_project(tmp_path, params_path):
    with pytest.raises(ConfigError, match="--project"):
        vertex_job(tmp_path, params_path, project="")


def test_kfp_run_request_fits_kfp_client_and_keeps_compiled_caching(tmp_path, params_path):
    import kfp

    spec = compile_pipeline(tmp_path / "pipeline.yaml", params_path, target="kfp")
    kwargs = build_kfp_run(spec, load_params(params_path), experiment="chromify", pipeline_root=None,
                           service_account="pipeline-runner")
    inspect.signature(kfp.Client.create_run_from_pipeline_package).bind(None, **kwargs)  # no unknown arguments
    assert kwargs["arguments"].keys() == {"params_json"}
    assert json.loads(kwargs["arguments"]["params_json"]) == yaml.safe_load(params_path.read_text())
    assert kwargs["enable_caching"] is None  # True/False would override every task's compiled setting
    assert kwargs["experiment_name"] == "chromify" and kwargs["service_account"] == "pipeline-runner"
    # a name per run, as kfp's own default gives (a fixed one made every run 'chromify-colorization' in the list)
    assert re.fullmatch(r"chromify-colorization \d{4}-\d\d-\d\d \d\d-\d\d-\d\d", kwargs["run_name"])
    _, platform = load_spec(kwargs["pipeline_file"])
    assert platform["deploymentSpec"]["executors"]["exec-train"]["nodeSelector"]["labels"] == {"chromify-pool": "gpu"}


@pytest.mark.parametrize(("root", "sent"), [
    (None, None), ("", None), ("gs://kfp-bucket/runs/", "gs://kfp-bucket/runs"), ("s3://artifacts/chromify", None),
    ("minio://mlpipeline/v2/artifacts", None)])
def test_kfp_pipeline_root_is_optional_and_else_a_folder_in_an_object_store(params_path, root, sent):
    out = submit(target="kfp", project=None, region="us-central1", pipeline_root=root, service_account=None,
                 experiment=None, host="https://kfp.example.com", dry_run=True, params_path=params_path)
    assert out["request"]["pipeline_root"] == (sent or (root or None))


@pytest.mark.parametrize(("root", "wrong"), [
    ("foo", "'foo': a folder in the object store Kubeflow writes to: gs://, s3:// or minio://bucket/some/path"),
    ("/local/folder", "'/local/folder': a folder in the object store"), ("s3://", "'s3://': a folder in the object"),
    ("http://minio:9000/x", "'http://minio:9000/x': a folder in the object store"),
    ("gs://bucket-only", "gs://bucket-only: a folder inside the bucket, not the bucket itself")])
def test_kfp_pipeline_root_that_no_launcher_writes_to_is_refused_before_anything_is_sent(params_path, root, wrong):
    with pytest.raises(ConfigError, match=re.escape(f"--pipeline-root {wrong}")):
        submit(target="kfp", project=None, region="us-central1", pipeline_root=root, service_account=None,
               experiment=None, host="https://kfp.example.com", dry_run=True, params_path=params_path)


def test_kfp_dry_run_summarises_the_compiled_dag(params_path):
    out = submit(target="kfp", project=None, region="us-central1", pipeline_root=None, service_account=None,
                 experiment=None, host="https://kfp.example.com/pipeline", dry_run=True, params_path=params_path)
    assert out["dry_run"] is True and out["host"] == "https://kfp.example.com/pipeline"
    train = out["spec"]["tasks"]["train"]
    assert train["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert train["kubernetes"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert out["spec"]["tasks"]["preprocess-partition"]["within"] == ["preprocess-partitions"]
    assert out["spec"]["loops"] == {"preprocess-partitions": {"raw": "[0, 1, 2, 3]"}}


@pytest.mark.parametrize("target", ["vertex", "kfp"])
def test_a_dry_run_leaves_nothing_in_the_temp_dir(params_path, tmp_path, monkeypatch, target):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    out = submit(target=target, project="proj-1", region="us-central1", pipeline_root="gs://bkt/root",
                 service_account=None, experiment=None, host="https://kfp.example.com", dry_run=True,
                 params_path=params_path)
    assert out["spec"]["tasks"]["train"]  # the compiled DAG was read before its file went
    assert "pipeline_file" not in out["request"]  # no path to a file that is gone
    assert list(scratch.iterdir()) == []


def test_submit_refuses_what_it_cannot_send(params_path):
    common = {"project": None, "region": "us-central1", "pipeline_root": None, "service_account": None,
              "experiment": None, "dry_run": True, "params_path": params_path}
    with pytest.raises(ConfigError, match="--host"):
        submit(target="kfp", host=None, **common)
    with pytest.raises(ConfigError, match="run-local"):
        submit(target="local", host=None, **common)


def test_submit_refuses_a_run_that_would_lose_its_model_or_pull_placeholder_images(params_path, monkeypatch):
    from components import images

    monkeypatch.setattr(images, "REGISTRY", images.PLACEHOLDER_REGISTRY)
    with pytest.raises(ConfigError, match="not submitted: CHROMIFY_IMAGE_REGISTRY.*register.target is local"):
        submit(target="vertex", project="proj-1", region="us-central1", pipeline_root="gs://bkt/root",
               service_account=None, experiment=None, host=None, dry_run=False, params_path=params_path)


@pytest.mark.parametrize(("source", "said"), [
    ("/home/me/photos", "ingest.source /home/me/photos is a path on this machine"),
    # the ingest step would refuse it, in the cloud, as its first task
    ("gs://My_Bucket/photos", "ingest.source gs://My_Bucket/photos: 'My_Bucket' is not a valid bucket name")])
def test_a_photo_source_the_cloud_run_could_not_read_is_a_problem(params_path, monkeypatch, source, said):
    params_path = ready_params(params_path, monkeypatch)
    raw = yaml.safe_load(params_path.read_text())
    raw["ingest"] = {**raw["ingest"], "source": source}
    params_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    common = {"target": "kfp", "project": None, "region": "us-central1", "pipeline_root": None, "service_account": None,
              "experiment": None, "host": "https://kfp.example.com", "params_path": params_path}
    (problem,) = submit(dry_run=True, **common)["problems"]
    assert problem.startswith(said)
    with pytest.raises(ConfigError, match=f"not submitted: ingest.source {source}"):
        submit(dry_run=False, **common)


def ready_params(params_path: Path, monkeypatch) -> Path:
    from components import images

    monkeypatch.setattr(images, "REGISTRY", "europe-west4-docker.pkg.dev/proj-1/chromify")
    monkeypatch.setattr(images, "TAG", "0123456789abcdef0123456789abcdef01234567")
    raw = yaml.safe_load(params_path.read_text())
    raw["register"] = {**raw["register"], "target": "vertex", "vertex_project": "proj-1",
                       "artifact_root": "gs://proj-1-chromify/models",
                       "serving_image": "europe-west4-docker.pkg.dev/proj-1/chromify/chromify-serve:0123456789ab"}
    params_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return params_path


def test_incomplete_vertex_registry_params_are_refused_before_the_gpu_is_paid_for(params_path, monkeypatch):
    params_path = ready_params(params_path, monkeypatch)
    raw = yaml.safe_load(params_path.read_text())
    raw["register"] = {**raw["register"], "vertex_project": "", "artifact_root": "", "serving_image": ""}
    params_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    common = {"target": "vertex", "project": "proj-1", "region": "us-central1", "pipeline_root": "gs://bkt/root",
              "service_account": None, "experiment": None, "host": None, "params_path": params_path}
    (problem,) = submit(dry_run=True, **common)["problems"]
    assert problem.startswith("register.target vertex: register.vertex_project is empty")
    assert "register.artifact_root '' is not gs://" in problem and "register.serving_image is empty" in problem
    with pytest.raises(ConfigError, match="not submitted: register.target vertex: register.vertex_project"):
        submit(dry_run=False, **common)  # evaluate's champion lookup would fail only after training


def vertex_api(api: GoogleCloudAPI, monkeypatch) -> tuple[GoogleCloudAPI, str, str]:
    """The Google Cloud REST calls a submission makes up to the job's creation, answered by `api` on 127.0.0.1: the
    real SDKs are pointed at it, Vertex AI as its REST API endpoint, Cloud Storage as its emulator host:
    (api, the request's parent, the created job's name)."""
    from google.cloud.aiplatform import initializer

    parent = "projects/proj-1/locations/europe-west4"
    api.vertex(monkeypatch).storage(monkeypatch)
    api.routes.update({
        # The pipeline root's bucket: absent, so the SDK creates it and lets the run's service account use it.
        ("GET", "/storage/v1/b/bkt"): (404, {"error": {"code": 404, "message": "No such bucket."}}),
        ("POST", "/storage/v1/b"): (200, {"kind": "storage#bucket", "name": "bkt"}),
        ("GET", "/storage/v1/b/bkt/iam"): (200, {"kind": "storage#policy", "bindings": [], "etag": "CAE="}),
        ("PUT", "/storage/v1/b/bkt/iam"): (200, {"kind": "storage#policy", "bindings": [], "etag": "CAE="}),
    })
    monkeypatch.setattr(initializer.global_config, "_credentials", None)  # the SDK keeps the first it found
    return api, parent, f"{parent}/pipelineJobs/chromify-colorization-1"


def test_submit_sends_the_built_vertex_job_as_the_service_account_into_the_experiment(params_path, monkeypatch,
                                                                                       google_cloud_api):
    from google.auth.credentials import AnonymousCredentials

    # resource names; their REST paths are "/v1/" + name
    api, parent, job = vertex_api(google_cloud_api, monkeypatch)
    store = f"{parent}/metadataStores/default"
    experiment, run_context = f"{store}/contexts/chromify-exp", f"{store}/contexts/run-1"
    api.routes.update({
        ("GET", f"/v1/{store}"): (200, {"name": store}),
        ("GET", f"/v1/{experiment}"): (200, {
            "name": experiment, "displayName": "chromify-exp", "schemaTitle": "system.Experiment", "metadata": {}}),
        ("POST", f"/v1/{parent}/pipelineJobs"): (200, {"name": job, "state": 2}),
        ("GET", f"/v1/{job}"): (200, {"name": job, "jobDetail": {"pipelineRunContext": {"name": run_context}}}),
        ("POST", f"/v1/{experiment}:addContextChildren"): (200, {}),
    })
    monkeypatch.setattr("google.auth.default", lambda *a, **kw: (AnonymousCredentials(), "proj-1"))
    out = submit(target="vertex", project="proj-1", region="europe-west4", pipeline_root="gs://bkt/chromify/root",
                 service_account=SA, experiment="chromify-exp", host=None, dry_run=False,
                 params_path=ready_params(params_path, monkeypatch))
    assert out["job"] == job and out["experiment"] == "chromify-exp"
    assert [call[:2] for call in api.calls].count(("POST", f"/v1/{parent}/pipelineJobs")) == 1
    sent = {(method, path): body for method, path, body in api.calls}
    request = sent[("POST", f"/v1/{parent}/pipelineJobs")]
    assert request["displayName"] == "chromify-colorization" and request["serviceAccount"] == SA
    assert request["runtimeConfig"]["gcsOutputDirectory"] == "gs://bkt/chromify/root"
    params = json.loads(request["runtimeConfig"]["parameterValues"]["params_json"])
    assert params["train"]["lr"] == 0.005 and params["cloud"]["accelerator_type"] == "NVIDIA_H100_80GB"
    policy = sent[("PUT", "/storage/v1/b/bkt/iam")]
    assert {b["role"]: b["members"] for b in policy["bindings"]} == {
        "roles/storage.objectCreator": [f"serviceAccount:{SA}"], "roles/storage.objectViewer": [f"serviceAccount:{SA}"]}
    # the run joins the experiment: its run context becomes a child of the experiment's
    assert sent[("POST", f"/v1/{experiment}:addContextChildren")] == {"childContexts": [run_context]}


def test_submit_sends_the_kfp_run_to_the_host(params_path, monkeypatch, kfp_api):
    host, received = kfp_api
    scratch = params_path.parent / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    out = submit(target="kfp", project=None, region="us-central1", pipeline_root=None, service_account=SA,
                 experiment="chromify", host=host, dry_run=False, params_path=ready_params(params_path, monkeypatch))
    assert out == {"target": "kfp", "host": host, "run_id": "run-1"}
    assert list(scratch.iterdir()) == []  # the compiled file lived until the run was sent
    assert [(method, path) for method, path, _ in received] == [
        ("GET", "/apis/v2beta1/healthz"), ("GET", "/apis/v2beta1/experiments"),
        ("POST", "/apis/v2beta1/experiments"), ("POST", "/apis/v2beta1/runs")]
    assert received[2][2]["display_name"] == "chromify"
    run = received[3][2]
    assert run["experiment_id"] == "exp-7" and run["service_account"] == SA
    assert run["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "chromify-colorization"
    kubernetes = run["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]
    train = kubernetes["deploymentSpec"]["executors"]["exec-train"]
    assert train["nodeSelector"]["labels"] == {"chromify-pool": "gpu"}
    sent = json.loads(run["runtime_config"]["parameters"]["params_json"])
    assert sent["train"]["lr"] == 0.005 and sent["cloud"]["accelerator_count"] == 2


def chromify(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    # No credentials and a dead proxy: a dry run must need neither.
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "GOOGLE_APPLICATION_CREDENTIALS": "/nonexistent.json",
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": "", **(env or {})}
    return subprocess.run(["chromify", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=180)


def test_cli_dry_run_prints_the_vertex_request(params_path):
    proc = chromify("pipeline", "submit", "--target", "vertex", "--project", "proj-1", "--region", "europe-west4",
                    "--pipeline-root", "gs://proj-1-chromify/pipeline-root", "--service-account", SA,
                    "--experiment", "chromify-exp", "--params", str(params_path), "--dry-run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["dry_run"] is True and out["experiment"] == "chromify-exp"
    request = out["request"]
    assert request["parent"] == "projects/proj-1/locations/europe-west4"
    job = request["pipelineJob"]
    assert job["runtimeConfig"]["gcsOutputDirectory"] == "gs://proj-1-chromify/pipeline-root"
    sent = json.loads(job["runtimeConfig"]["parameterValues"]["params_json"])
    assert sent == yaml.safe_load(params_path.read_text())
    assert sent["train"]["lr"] == 0.005 and sent["cloud"]["accelerator_type"] == "NVIDIA_H100_80GB"
    assert job["serviceAccount"] == SA
    assert "pipelineSpec" not in job  # summarised below instead
    spec = out["spec"]
    assert spec["tasks"]["train"]["resources"]["accelerator"]["resourceType"] == "NVIDIA_H100_80GB"
    assert spec["tasks"]["train"]["retries"] == 2
    assert {t["display_name"] for t in spec["tasks"].values()} >= {"1 · ingest photos", "6 · register model"}
    assert spec["images"] and not any(i.endswith(":latest") for i in spec["images"])
    assert any(p.startswith("register.target is local") for p in out["problems"])  # submit would refuse


def test_cli_reports_a_missing_pipeline_root_in_one_line(params_path):
    proc = chromify("pipeline", "submit", "--target", "vertex", "--project", "proj-1", "--params", str(params_path),
                    "--dry-run")
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("chromify: error: --pipeline-root") and len(proc.stderr.splitlines()) == 1


def vertex_submit(params_path: Path, monkeypatch) -> dict:
    return submit(target="vertex", project="proj-1", region="europe-west4", pipeline_root="gs://bkt/chromify/root",
                  service_account=SA, experiment=None, host=None, dry_run=False,
                  params_path=ready_params(params_path, monkeypatch))


@pytest.mark.parametrize(("status", "reason", "said"), [
    (403, "PERMISSION_DENIED", r"Vertex AI: (PermissionDenied|Forbidden): .*aiplatform\.pipelineJobs\.create"),
    (429, "RESOURCE_EXHAUSTED", r"Vertex AI: (ResourceExhausted|TooManyRequests): .*[Qq]uota")])
def test_a_request_vertex_ai_refuses_is_one_line(params_path, monkeypatch, google_cloud_api, status, reason, said):
    from google.auth.credentials import AnonymousCredentials

    message = {403: "Permission 'aiplatform.pipelineJobs.create' denied on resource '//aiplatform.googleapis.com/'\n"
                    "(or it may not exist).",
               429: "Quota exceeded for aiplatform.googleapis.com/custom_model_training_nvidia_l4_gpus."}[status]
    api, parent, _ = vertex_api(google_cloud_api, monkeypatch)
    api.routes[("POST", f"/v1/{parent}/pipelineJobs")] = (status, {
        "error": {"code": status, "message": message, "status": reason}})
    monkeypatch.setattr("google.auth.default", lambda *a, **kw: (AnonymousCredentials(), "proj-1"))
    with pytest.raises(ChromifyError, match=said) as refused:
        vertex_submit(params_path, monkeypatch)
    assert "\n" not in str(refused.value)


def test_an_experiment_vertex_ai_refuses_is_one_line(params_path, monkeypatch, google_cloud_api):
    """aiplatform wraps its experiment lookup's 403 in a RuntimeError: that was a 94-line traceback, exit 1."""
    from google.auth.credentials import AnonymousCredentials

    api, parent, _ = vertex_api(google_cloud_api, monkeypatch)
    api.routes[("GET", f"/v1/{parent}/metadataStores/default")] = (403, {"error": {
        "code": 403, "message": "Permission 'aiplatform.metadataStores.get' denied", "status": "PERMISSION_DENIED"}})
    monkeypatch.setattr("google.auth.default", lambda *a, **kw: (AnonymousCredentials(), "proj-1"))
    with pytest.raises(ChromifyError, match=r"^Vertex AI: Experiment chromify could not be found or created\. "
                                            r"PipelineJob not created: (Forbidden|PermissionDenied): 403 .*"
                                            r"aiplatform\.metadataStores\.get") as refused:
        submit(target="vertex", project="proj-1", region="europe-west4", pipeline_root="gs://bkt/chromify/root",
               service_account=SA, experiment="chromify", host=None, dry_run=False,
               params_path=ready_params(params_path, monkeypatch))
    assert "\n" not in str(refused.value)
    assert not [c for c in api.calls if c[0] == "POST" and c[1].endswith("/pipelineJobs")]  # no job was sent


def test_an_experiment_name_vertex_ai_would_refuse_is_caught_before_the_compile(params_path):
    for name in ("My Exp", "-chromify", "chromify_exp", "x" * 129):
        with pytest.raises(ConfigError, match=re.escape(f"--experiment {name!r}: a Vertex AI experiment name is")):
            submit(target="vertex", project="proj-1", region="europe-west4", pipeline_root="gs://bkt/root",
                   service_account=None, experiment=name, host=None, dry_run=True, params_path=params_path)
    out = submit(target="vertex", project="proj-1", region="europe-west4", pipeline_root="gs://bkt/root",
                 service_account=None, experiment="chromify-2026", host=None, dry_run=True, params_path=params_path)
    assert out["experiment"] == "chromify-2026"


@pytest.fixture
def token_endpoint():
    """An OAuth token endpoint on 127.0.0.1 that refuses every refresh token, as Google's does a revoked one."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            data = json.dumps({"error": "invalid_grant", "error_description": "Token has been expired or revoked."})
            self.send_response(400)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data.encode())

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/token"
    server.shutdown()
    server.server_close()


def test_expired_google_credentials_are_one_line_with_the_login_hint(params_path, monkeypatch, tmp_path,
                                                                     token_endpoint, google_cloud_api):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    # a service account key whose token requests are refused (a deleted key, a disabled account); its token_uri
    # is honoured, unlike a user credential's
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    adc = tmp_path / "key.json"
    adc.write_text(json.dumps({"type": "service_account", "project_id": "proj-1", "private_key_id": "1",
                               "private_key": key, "client_email": SA, "client_id": "1", "token_uri": token_endpoint}))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(adc))
    vertex_api(google_cloud_api, monkeypatch)
    with pytest.raises(ConfigError, match=r"^Vertex AI: the Google credentials were refused \(.*invalid_grant.*\): "
                                          r"run `gcloud auth application-default login`") as refused:
        vertex_submit(params_path, monkeypatch)
    assert "\n" not in str(refused.value)


def test_cli_submit_without_google_credentials_is_one_line_with_the_login_hint(params_path, monkeypatch):
    ready_params(params_path, monkeypatch)
    proc = chromify("pipeline", "submit", "--target", "vertex", "--project", "proj-1", "--region", "europe-west4",
                    "--pipeline-root", "gs://proj-1-chromify/pipeline-root", "--params", str(params_path),
                    env={"CHROMIFY_IMAGE_REGISTRY": "europe-west4-docker.pkg.dev/proj-1/chromify"})
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = proc.stderr.splitlines()
    assert line.startswith("chromify: error: Vertex AI: no Google credentials (File /nonexistent.json was not found")
    assert "run `gcloud auth application-default login`" in line and "GOOGLE_APPLICATION_CREDENTIALS" in line


def test_cli_submit_to_an_unreachable_kfp_host_is_one_line(params_path, monkeypatch):
    ready_params(params_path, monkeypatch)
    with socket.socket() as free:  # a port nothing listens on
        free.bind(("127.0.0.1", 0))
        host = f"http://127.0.0.1:{free.getsockname()[1]}"
    proc = chromify("pipeline", "submit", "--target", "kfp", "--host", host, "--params", str(params_path),
                    env={"CHROMIFY_IMAGE_REGISTRY": "europe-west4-docker.pkg.dev/proj-1/chromify", "NO_PROXY": "*"})
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"chromify: error: --host {host}: cannot reach or use the API: MaxRetryError")
    assert "Connection refused" in line
