"""Vertex AI Model Registry backend (`register.target: vertex`).

A gated model's files go to `<artifact_root>/<model name>/<model id>-<record id>/` (hashes of the model, weights
and config, and of the lineage record, so the prefix is immutable, a retried registration rewrites nothing and a
re-registration of the same model gets a prefix of its own), then one `aiplatform.Model.upload` makes them a new
version of the Vertex model `<model name>`, with the alias `champion` (Vertex moves an alias that another version
holds), labels for lineage, and the serving container. The request is built by a pure function,
`build_upload_request`, so what is sent can be checked without sending it.

A model that a version already holds (its `chromify-model-id` label) is never uploaded again: `publish` returns an
`already_registered` outcome and moves no alias, so re-running registration (`dvc repro` after a promote or
rollback) cannot undo the user's choice. A gate decided against a champion other than the current one is refused.

google-cloud-aiplatform and google-cloud-storage are imported inside the functions that use them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import tempfile
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from chromify.config import RegisterParams
from chromify.errors import ConfigError, RegistryError
from chromify.registry import (
    CHAMPION,
    MODEL_FILES,
    RECORD,
    already_registered_note,
    check_alias,
    check_gate_is_current,
    model_id_of,
)

# The label that ties a Vertex model version to its files (the record's model_id: weights and config, see
# chromify.registry.model_id_from_hashes).
MODEL_ID_LABEL = "chromify-model-id"

# The serving contract of `chromify serve` (containers/Dockerfile.serve): Vertex passes these to the container as
# AIP_HTTP_PORT, AIP_PREDICT_ROUTE and AIP_HEALTH_ROUTE, which the app's settings read.
SERVING_PORT = 8080
PREDICT_ROUTE = "/predict"
HEALTH_ROUTE = "/healthz"

# Vertex AI / GCP label rules: at most 64 labels; keys 1-63 characters of lower-case letters, digits, '_' and '-',
# starting with a letter; values 0-63 of the same characters.
LABEL_MAX_CHARS = 63
LABEL_MAX_COUNT = 64
_LABEL_BAD = re.compile(r"[^a-z0-9_-]+")
# Model resource ids: [a-z0-9_-], at most 63, not starting with a digit or '-' (Model.upload's model_id).
_MODEL_ID_BAD = re.compile(r"[^a-z0-9_-]+")


def _label_text(text: object) -> str:
    ascii_text = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode()
    return _LABEL_BAD.sub("-", ascii_text.lower()).strip("-")[:LABEL_MAX_CHARS]


def sanitise_label_key(key: object) -> str:
    """Any text → a valid label key ('Git.Commit' → 'git-commit', '9lives' → 'k-9lives')."""
    clean = _label_text(key)
    if not clean:
        raise ConfigError(f"label key {key!r}: nothing usable is left after sanitising (need [a-z0-9_-])")
    if not clean[0].isalpha():
        clean = f"k-{clean}"[:LABEL_MAX_CHARS]
    return clean


def sanitise_label_value(value: object) -> str:
    """Any value → a valid label value: lower case, [a-z0-9_-], at most 63 characters (may be empty)."""
    return _label_text("true" if value is True else "false" if value is False else value)


def sanitise_labels(labels: Mapping[str, object]) -> dict[str, str]:
    """Sanitise keys and values; two keys that sanitise to one, or too many labels, are a ConfigError."""
    out: dict[str, str] = {}
    origin: dict[str, str] = {}
    for key, value in labels.items():
        clean = sanitise_label_key(key)
        if clean in out:
            raise ConfigError(f"labels {origin[clean]!r} and {key!r} both become {clean!r}; rename one")
        out[clean], origin[clean] = sanitise_label_value(value), key
    if len(out) > LABEL_MAX_COUNT:
        raise ConfigError(f"{len(out)} labels: Vertex AI allows at most {LABEL_MAX_COUNT}")
    return out


def vertex_model_id(model_name: str) -> str:
    """register.model_name → the Vertex model resource id that every version is uploaded under."""
    clean = _MODEL_ID_BAD.sub("-", model_name.lower()).strip("-")[:63]
    if not clean or not clean[0].isalpha():
        raise ConfigError(f"register.model_name {model_name!r}: a Vertex model id must start with a letter "
                          "and use [a-z0-9_-]")
    return clean


# A project id (6-30 of a-z0-9-, from a letter; an old domain-scoped one has "example.com:" before it) or number.
_PROJECT = re.compile(r"([a-z0-9.-]+:)?[a-z][a-z0-9-]{4,28}[a-z0-9]|[0-9]{1,20}")
# An image reference: registry host[:port], then path components, then :tag and/or @sha256:digest.
_IMAGE = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]+)?(/[a-z0-9]+([._-]+[a-z0-9]+)*)+"
                    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[0-9a-f]{64})?")


def check_params(p: RegisterParams) -> None:
    """Everything the Vertex target needs is set and well-formed, before a run pays for training; else one
    ConfigError naming what is not."""
    from chromify.gcs import split_uri

    problems = []
    if not p.vertex_project:
        problems.append("register.vertex_project is empty")
    elif not _PROJECT.fullmatch(p.vertex_project):
        problems.append(f"register.vertex_project {p.vertex_project!r} is not a project id (6-30 characters: "
                        "lower-case letters, digits and hyphens, from a letter) or number")
    if not p.vertex_location:
        problems.append("register.vertex_location is empty")
    else:
        from google.cloud.aiplatform import utils

        try:  # the client library's own list, which refuses the same regions at upload time
            utils.validate_region(p.vertex_location)
        except ValueError:
            problems.append(f"register.vertex_location {p.vertex_location!r} is not a Vertex AI region "
                            "(us-central1, europe-west4, ...)")
    root = p.artifact_root.rstrip("/")
    if not root.startswith("gs://") or not root[5:]:
        problems.append(f"register.artifact_root {p.artifact_root!r} is not gs://bucket[/prefix]")
    else:
        try:
            split_uri(root)
        except ConfigError as exc:
            problems.append(f"register.artifact_root {exc}")
    image = p.serving_image
    if not image:
        problems.append("register.serving_image is empty (the chromify-serve image, tagged by commit or digest)")
    elif not _IMAGE.fullmatch(image):
        problems.append(f"register.serving_image {image!r} is not a full image reference "
                        "(registry/path/name:tag or @sha256:digest)")
    elif image.endswith(":latest") or ("@" not in image and ":" not in image.rsplit("/", 1)[-1]):
        problems.append(f"register.serving_image {image!r}: pin a tag or digest, not latest")
    if problems:
        raise ConfigError("register.target vertex: " + "; ".join(problems))
    vertex_model_id(p.model_name)


def record_bytes(record: Mapping[str, Any]) -> bytes:
    """The lineage record as stored (record.json): canonical JSON, so equal records are equal bytes."""
    return (json.dumps(record, indent=2, sort_keys=True, default=float) + "\n").encode()


def artifact_uri(p: RegisterParams, record: Mapping[str, Any]) -> str:
    """gs:// prefix of one registration's files: <artifact_root>/<model name>/<model id>-<record sha256[:8]>."""
    record_id = hashlib.sha256(record_bytes(record)).hexdigest()[:8]
    return f"{p.artifact_root.rstrip('/')}/{vertex_model_id(p.model_name)}/{record['model_id']}-{record_id}"


def lineage_labels(p: RegisterParams, record: Mapping[str, Any]) -> dict[str, str]:
    """The user's labels plus the model id, commit, data hash and gate verdict, sanitised to Vertex's rules."""
    gate = record.get("gate", {})
    ours = {
        MODEL_ID_LABEL: record.get("model_id", ""),
        "git-commit": str(record.get("git_commit", ""))[:12],
        "data-sha256": str(record.get("data_manifest_sha256", ""))[:16],
        "gate": "passed" if gate.get("passed") else "failed",
    }
    clash = sorted(set(map(sanitise_label_key, p.labels)) & set(ours))
    if clash:
        raise ConfigError(f"register.labels: {', '.join(clash)} is set by chromify; choose another key")
    return sanitise_labels({**p.labels, **ours})


def version_description(record: Mapping[str, Any]) -> str:
    """One line for the Vertex console: the candidate's PSNR, gain over gray, ΔCF and the champion it beat."""
    m = record.get("metrics", {})
    c = m.get("candidate", {})
    champion = record.get("gate", {}).get("champion_id")
    return (f"PSNR {c.get('psnr', float('nan')):.2f} dB ({m.get('psnr_gain_db', float('nan')):+.2f} vs gray), "
            f"ΔCF {c.get('delta_cf', float('nan')):.1f}; gate passed vs "
            f"{'champion ' + champion if champion else 'no champion'}; weights {record.get('model_id', '?')}")


def build_upload_request(p: RegisterParams, record: Mapping[str, Any], artifact: str, parent_exists: bool,
                         aliases: tuple[str, ...] = (CHAMPION,)) -> dict[str, Any]:
    """The exact keyword arguments for `aiplatform.Model.upload`: a new version of `parent_model` when the model
    exists, else the model itself created under its stable id; `aliases` (champion) move to the new version."""
    model_id = vertex_model_id(p.model_name)
    request: dict[str, Any] = {
        "display_name": p.model_name,
        "description": "Chromify colorizer: L (B, 1, H, W) → ab; weights model.safetensors, architecture "
                       "config.json, lineage record.json",
        "artifact_uri": artifact,
        "serving_container_image_uri": p.serving_image,
        "serving_container_predict_route": PREDICT_ROUTE,
        "serving_container_health_route": HEALTH_ROUTE,
        "serving_container_ports": [SERVING_PORT],
        "version_aliases": [check_alias(a) for a in aliases],
        "version_description": version_description(record),
        "is_default_version": CHAMPION in aliases,  # callers that resolve the model without a version get it
        "labels": lineage_labels(p, record),
        "project": p.vertex_project,
        "location": p.vertex_location,
        "sync": True,
    }
    if parent_exists:
        request["parent_model"] = model_id
    else:
        request["model_id"] = model_id
    return request


def _one_line(what: str):
    """Google's auth and API failures as one line naming what was being done, not a traceback through the SDK."""
    import functools

    def wrap(fn):
        @functools.wraps(fn)
        def call(p: RegisterParams, *args, **kwargs):
            from google.api_core.exceptions import GoogleAPICallError
            from google.auth.exceptions import GoogleAuthError

            from chromify.gcs import CREDENTIALS_HINT

            where = f"Vertex AI model {p.model_name!r} in {p.vertex_project}/{p.vertex_location}: {what}"
            try:
                return fn(p, *args, **kwargs)
            except GoogleAuthError as exc:
                raise ConfigError(f"{where}: no usable Google credentials ({' '.join(str(exc).split())[:200]}); "
                                  f"{CREDENTIALS_HINT}") from None
            except GoogleAPICallError as exc:
                raise RegistryError(f"{where}: HTTP {exc.code}: {' '.join(str(exc.message).split())}") from None
        return call
    return wrap


def _storage_client(project: str | None = None):
    from google.cloud import storage

    # Not cached: a test's emulator (STORAGE_EMULATOR_HOST) must not outlive it in a module global.
    return storage.Client(project=project or None)


def _split(uri: str) -> tuple[str, str]:
    from chromify.gcs import split_uri

    bucket, prefix = split_uri(uri)
    return bucket, prefix.strip("/")


def _md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def upload_version_files(model_dir: str | Path, record: Mapping[str, Any], uri: str,
                         project: str | None = None) -> list[str]:
    """Write model.safetensors, config.json and record.json under `uri`, write-once; returns the gs:// URIs.

    An object that is already there with the same bytes (a retried registration) is kept; with other bytes it is a
    RegistryError: a version prefix never changes once written.
    """
    from google.api_core.exceptions import PreconditionFailed

    bucket_name, prefix = _split(uri)
    bucket = _storage_client(project).bucket(bucket_name)
    payloads = {name: (Path(model_dir) / name).read_bytes() for name in MODEL_FILES}
    payloads[RECORD] = record_bytes(record)
    written = []
    for name, data in payloads.items():
        blob = bucket.blob(f"{prefix}/{name}")
        try:
            blob.upload_from_string(data, content_type="application/octet-stream", if_generation_match=0)
        except PreconditionFailed:
            blob.reload()
            if blob.md5_hash != _md5_b64(data):
                raise RegistryError(f"gs://{bucket_name}/{blob.name}: already holds other bytes; a version's files "
                                    "are never overwritten") from None
        written.append(f"gs://{bucket_name}/{blob.name}")
    return written


def download_version_files(uri: str, dest: str | Path, project: str | None = None,
                           model_id: str | None = None) -> Path:
    """Copy a version's files from `uri` into the folder `dest` (whole or not at all); returns `dest`.

    A `dest` already holding the files is used as it is, unless `model_id` is given and its files hash to another
    model (edited in the cache): then, like a `dest` missing a file, it is fetched again.
    """
    bucket_name, prefix = _split(uri)
    dest = Path(dest)

    def usable(folder: Path) -> bool:
        if not all((folder / f).is_file() for f in MODEL_FILES):
            return False
        return model_id is None or model_id_of(folder) == model_id

    if usable(dest):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        client = _storage_client(project)
        for blob in client.list_blobs(bucket_name, prefix=f"{prefix}/"):
            name = blob.name[len(prefix) + 1 :]
            if name and "/" not in name:
                blob.download_to_filename(str(staging / name))
        missing = [f for f in MODEL_FILES if not (staging / f).is_file()]
        if missing:
            raise RegistryError(f"{uri}: not a model version (missing {', '.join(missing)})")
        if model_id is not None and (found := model_id_of(staging)) != model_id:
            raise RegistryError(f"{uri}: its files are model {found}, not {model_id} as the version's label says")
        if dest.exists():  # damaged: set aside, so the rename below can take its place
            dest.rename(Path(tempfile.mkdtemp(prefix=f".{dest.name}-old-", dir=dest.parent)) / dest.name)
        staging.rename(dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if dest.is_dir() and usable(dest):
            return dest  # another process fetched it first
        raise
    finally:
        for old in dest.parent.glob(f".{dest.name}-old-*"):
            shutil.rmtree(old, ignore_errors=True)
    return dest


def model_exists(p: RegisterParams) -> bool:
    """Whether the Vertex model `register.model_name` exists yet (its first upload creates it)."""
    from google.api_core.exceptions import NotFound
    from google.cloud import aiplatform

    try:
        aiplatform.Model(model_name=vertex_model_id(p.model_name), project=p.vertex_project,
                         location=p.vertex_location)
    except NotFound:
        return False
    return True


def versions_holding(p: RegisterParams, model_id: str) -> list[Any]:
    """The versions of the Vertex model labelled with `model_id` (Model messages, lowest version first);
    [] when there are none or the model does not exist yet."""
    from google.api_core.exceptions import NotFound
    from google.cloud import aiplatform

    value = sanitise_label_value(model_id)
    registry = aiplatform.models.ModelRegistry(vertex_model_id(p.model_name), location=p.vertex_location,
                                               project=p.vertex_project)
    # Every version, filtered here: a model has tens of versions, and a server-side filter on a key holding '-'
    # would rest on quoting rules the API documents loosely (a wrong guess would fail every registration).
    try:
        found = [m for m in registry.client.list_model_versions(request={"name": registry.model_resource_name})
                 if m.labels.get(MODEL_ID_LABEL) == value]
    except NotFound:
        return []
    return sorted(found, key=lambda m: int(m.version_id) if m.version_id.isdigit() else 0)


def current_champion(p: RegisterParams):
    """The version that holds the alias `champion` (an `aiplatform.Model`), or None."""
    from google.api_core.exceptions import NotFound
    from google.cloud import aiplatform

    try:
        return aiplatform.Model(model_name=f"{vertex_model_id(p.model_name)}@{CHAMPION}", project=p.vertex_project,
                                location=p.vertex_location)
    except NotFound:
        return None


def _check_registrable(p: RegisterParams, record: Mapping[str, Any], exists: bool) -> dict[str, Any] | None:
    """Before anything is written: the already-registered outcome when a version holds this model, a
    RegistryError when the gate compared the candidate with a champion that no longer is; None to go on."""
    model_id = record.get("model_id")
    gate = record.get("gate") or {}
    held = versions_holding(p, model_id) if exists and model_id else []
    if not held and "champion_id" not in gate:
        return None
    champion = current_champion(p) if exists else None
    version = None if champion is None else champion.version_id
    if held:
        holder = next((m for m in held if CHAMPION in m.version_aliases), held[0])
        return {"registered": False, "already_registered": True, "target": "vertex", "version": holder.version_id,
                "resource_name": holder.name.split("@")[0], "artifact_uri": holder.artifact_uri,
                "path": holder.artifact_uri, "message": already_registered_note(holder.version_id, model_id, version)}
    current_id = None if champion is None else (champion.labels or {}).get(MODEL_ID_LABEL)
    # A champion without the label (not registered by chromify) cannot be compared without downloading it: skipped.
    if champion is None or current_id:
        check_gate_is_current(p.model_name, gate, version, current_id)
    return None


@_one_line("registering the candidate")
def publish(p: RegisterParams, candidate_dir: str | Path, record: Mapping[str, Any]) -> dict[str, Any]:
    """Upload a gated model's files to gs:// and register them as the new champion version on Vertex AI; a model
    that a version already holds is not registered again (the outcome says `already_registered`, no alias moves).
    """
    from google.cloud import aiplatform

    check_params(p)
    exists = model_exists(p)
    already = _check_registrable(p, record, exists)
    if already is not None:
        return already
    uri = artifact_uri(p, record)
    upload_version_files(candidate_dir, record, uri, p.vertex_project)
    request = build_upload_request(p, record, uri, parent_exists=exists)
    # The SDK appends 'default' to version_aliases in place: give it a copy, keep the request as built.
    model = aiplatform.Model.upload(**{**request, "version_aliases": list(request["version_aliases"])})
    return {"registered": True, "target": "vertex", "version": model.version_id, "alias": CHAMPION,
            "resource_name": model.resource_name, "artifact_uri": uri, "path": uri}


@_one_line("fetching the champion")
def fetch_champion(p: RegisterParams, cache_dir: str | Path) -> Path | None:
    """The champion version's files, downloaded once into `cache_dir/<model id>`; None if there is no champion."""
    check_params(p)
    model = current_champion(p)
    if model is None:
        return None
    uri = model.uri
    if not uri:
        raise RegistryError(f"{model.resource_name}@{CHAMPION}: has no artifact_uri to load the champion from")
    label = (model.labels or {}).get(MODEL_ID_LABEL)
    return download_version_files(uri, Path(cache_dir) / (label or f"version-{model.version_id}"), p.vertex_project,
                                  model_id=label)


@_one_line("moving the alias")
def promote(p: RegisterParams, version_id: str, alias: str = CHAMPION) -> None:
    """Move `alias` to Vertex model version `version_id` (Vertex takes it off the version that held it)."""
    from google.cloud import aiplatform

    check_params(p)
    registry = aiplatform.models.ModelRegistry(vertex_model_id(p.model_name), location=p.vertex_location,
                                               project=p.vertex_project)
    registry.add_version_aliases([check_alias(alias)], version_id)
