"""Static checks of the Terraform in infra/: parsed with python-hcl2, no terraform binary needed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hcl2
import pytest

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
MODULE = INFRA / "modules" / "gke_gpu_pool"
CHECKOV = "checkov==3.3.30"

PRIMITIVE_ROLES = {"roles/owner", "roles/editor", "roles/viewer"}


def load_dir(directory: Path) -> dict[str, list[Any]]:
    """Merge the top-level blocks of every .tf file in a directory (not recursive)."""
    merged: dict[str, list[Any]] = {}
    for path in sorted(directory.glob("*.tf")):
        with path.open() as handle:
            for key, blocks in hcl2.load(handle).items():
                merged.setdefault(key, []).extend(blocks)
    return merged


def resources(config: dict[str, list[Any]], rtype: str) -> dict[str, dict[str, Any]]:
    """All resources of one type, by name."""
    found: dict[str, dict[str, Any]] = {}
    for block in config.get("resource", []):
        for name, body in block.get(rtype, {}).items():
            found[name] = body
    return found


def named_blocks(config: dict[str, list[Any]], kind: str) -> dict[str, dict[str, Any]]:
    """variable / output / module blocks, by name."""
    return {name: body for block in config.get(kind, []) for name, body in block.items()}


def walk_strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from walk_strings(key)
            yield from walk_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from walk_strings(item)


def expressions(config: dict[str, list[Any]]) -> list[str]:
    """Every interpolated string (`${...}`) in a parsed configuration."""
    return [text for text in walk_strings(config) if "${" in text]


@pytest.fixture(scope="module")
def root() -> dict[str, list[Any]]:
    return load_dir(INFRA)


@pytest.fixture(scope="module")
def module() -> dict[str, list[Any]]:
    return load_dir(MODULE)


def test_every_tf_file_parses() -> None:
    files = sorted(INFRA.rglob("*.tf"))
    assert {p.relative_to(INFRA).as_posix() for p in files} >= {
        "versions.tf",
        "variables.tf",
        "main.tf",
        "outputs.tf",
        "modules/gke_gpu_pool/main.tf",
        "modules/gke_gpu_pool/variables.tf",
        "modules/gke_gpu_pool/outputs.tf",
    }
    for path in files:
        with path.open() as handle:
            assert hcl2.load(handle), path


def test_google_provider_is_pinned_to_6x(root: dict[str, list[Any]]) -> None:
    (terraform,) = root["terraform"]
    google = terraform["required_providers"][0]["google"]
    assert google["source"] == "hashicorp/google"
    assert re.fullmatch(r"~> 6\.\d+(\.\d+)?", google["version"]), google["version"]


def test_bucket_is_private_versioned_and_expires_old_versions(root: dict[str, list[Any]]) -> None:
    (bucket,) = resources(root, "google_storage_bucket").values()
    assert bucket["uniform_bucket_level_access"] is True
    assert bucket["public_access_prevention"] == "enforced"
    assert bucket["versioning"] == [{"enabled": True}]
    assert bucket.get("force_destroy", False) is False
    noncurrent = [
        rule
        for rule in bucket["lifecycle_rule"]
        if rule["action"][0]["type"] == "Delete"
        and {"days_since_noncurrent_time", "num_newer_versions"} & set(rule["condition"][0])
    ]
    assert noncurrent, "no lifecycle rule deletes old noncurrent versions"


def test_no_primitive_roles_anywhere() -> None:
    for path in INFRA.rglob("*.tf"):
        for role in re.findall(r"roles/[A-Za-z.]+", path.read_text()):
            assert role not in PRIMITIVE_ROLES, f"{path}: {role}"


def test_service_accounts_and_their_grants(root: dict[str, list[Any]]) -> None:
    accounts = resources(root, "google_service_account")
    ids = {body["account_id"] for body in accounts.values()}
    assert {"chromify-pipelines", "chromify-serving"} <= ids

    project_roles = {(body["role"], body["member"]) for body in resources(root, "google_project_iam_member").values()}
    assert ("roles/aiplatform.user", "${google_service_account.pipelines.member}") in project_roles

    bucket_roles = {
        (body["role"], body["member"]) for body in resources(root, "google_storage_bucket_iam_member").values()
    }
    assert ("roles/storage.objectAdmin", "${google_service_account.pipelines.member}") in bucket_roles
    assert ("roles/storage.objectViewer", "${google_service_account.serving.member}") in bucket_roles
    # Storage access is granted on the bucket, never project-wide.
    assert not [role for role, _ in project_roles if role.startswith("roles/storage.")]

    repo_roles = {
        (body["role"], body["member"])
        for body in resources(root, "google_artifact_registry_repository_iam_member").values()
    }
    for account in ("pipelines", "serving"):
        assert ("roles/artifactregistry.reader", f"${{google_service_account.{account}.member}}") in repo_roles

    sa_roles = resources(root, "google_service_account_iam_member")
    act_as = [(body["service_account_id"], body["member"]) for body in sa_roles.values()
              if body["role"] == "roles/iam.serviceAccountUser"]
    # The pipeline launches its custom jobs as itself; it deploys nothing, so it may act as no other account.
    assert act_as == [("${google_service_account.pipelines.name}", "${google_service_account.pipelines.member}")]
    # Acting as a service account is granted per account, never on the project.
    assert not [role for role, _ in project_roles if role.startswith("roles/iam.serviceAccount")]


def test_apis_include_vertex_and_container_only_with_gke(root: dict[str, list[Any]]) -> None:
    text = (INFRA / "main.tf").read_text()
    for api in ("aiplatform", "artifactregistry", "storage", "cloudbuild", "iam", "compute"):
        assert f'"{api}.googleapis.com"' in text
    assert re.search(r'var\.enable_gke_gpu_pool \? \["container\.googleapis\.com"\] : \[\]', text)
    services = resources(root, "google_project_service")
    assert all(body.get("disable_on_destroy") is False for body in services.values())


def test_outputs_cover_the_submit_command(root: dict[str, list[Any]]) -> None:
    outputs = named_blocks(root, "output")
    assert {
        "project_id",
        "region",
        "bucket_name",
        "pipeline_root",
        "image_registry",
        "pipelines_service_account_email",
        "serving_service_account_email",
    } <= set(outputs)
    locals_ = {k: v for block in root["locals"] for k, v in block.items()}
    assert locals_["pipeline_root"] == "gs://${google_storage_bucket.pipelines.name}/pipeline-root"
    assert outputs["pipeline_root"]["value"] == "${local.pipeline_root}"
    assert outputs["pipelines_service_account_email"]["value"] == "${google_service_account.pipelines.email}"
    assert outputs["serving_service_account_email"]["value"] == "${google_service_account.serving.email}"
    assert locals_["image_registry"].startswith("${var.region}-docker.pkg.dev/${var.project_id}/")
    command = outputs["pipeline_submit_command"]["value"]
    for flag in ("--target vertex", "--project", "--region", "--pipeline-root", "--service-account"):
        assert flag in command


def test_variables_are_typed_and_described(root: dict[str, list[Any]], module: dict[str, list[Any]]) -> None:
    for config in (root, module):
        for name, body in named_blocks(config, "variable").items():
            assert body.get("description"), name
            assert body.get("type"), name
    variables = named_blocks(root, "variable")
    assert variables["region"]["default"] == "us-central1"
    assert variables["enable_gke_gpu_pool"]["default"] is False
    assert variables["enable_gke_gpu_pool"]["type"] == "bool"


@pytest.mark.parametrize("where", ["root", "module"])
def test_every_referenced_variable_is_declared(
    where: str, root: dict[str, list[Any]], module: dict[str, list[Any]]
) -> None:
    config = root if where == "root" else module
    declared = set(named_blocks(config, "variable"))
    used = {name for text in expressions(config) for name in re.findall(r"\bvar\.([a-z0-9_]+)", text)}
    assert used - declared == set()


def test_module_call_matches_module_interface(root: dict[str, list[Any]], module: dict[str, list[Any]]) -> None:
    call = named_blocks(root, "module")["gke_gpu_pool"]
    assert call["source"] == "./modules/gke_gpu_pool"
    assert call["count"] == "${var.enable_gke_gpu_pool ? 1 : 0}"
    declared = named_blocks(module, "variable")
    arguments = set(call) - {"source", "count", "depends_on", "providers", "for_each"}
    assert arguments <= set(declared), arguments - set(declared)
    required = {name for name, body in declared.items() if "default" not in body}
    assert required <= arguments, required - arguments
    module_outputs = set(named_blocks(module, "output"))
    used = {name for text in expressions(root) for name in re.findall(r"module\.gke_gpu_pool\[0\]\.(\w+)", text)}
    assert used <= module_outputs, used - module_outputs


def test_referenced_resources_exist(root: dict[str, list[Any]], module: dict[str, list[Any]]) -> None:
    for config in (root, module):
        declared = {
            (rtype, name)
            for block in config.get("resource", [])
            for rtype, by_name in block.items()
            for name in by_name
        }
        used = {
            match for text in expressions(config) for match in re.findall(r"\b(google_[a-z0-9_]+)\.([a-z0-9_]+)", text)
        }
        assert used <= declared, used - declared


def test_gpu_pool_is_tainted_accelerated_and_hardened(module: dict[str, list[Any]]) -> None:
    (pool,) = resources(module, "google_container_node_pool").values()
    assert pool["autoscaling"][0]["min_node_count"] == 0
    assert pool["management"] == [{"auto_repair": True, "auto_upgrade": True}]
    (node,) = pool["node_config"]
    assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NO_SCHEDULE"} in node["taint"]
    (accelerator,) = node["guest_accelerator"]
    assert accelerator["type"] == "${var.gpu_type}"
    assert accelerator["count"] == "${var.gpu_count}"
    assert node["spot"] == "${var.spot}"
    assert node["workload_metadata_config"] == [{"mode": "GKE_METADATA"}]
    assert node["shielded_instance_config"] == [{"enable_secure_boot": True, "enable_integrity_monitoring": True}]
    assert node["service_account"] == "${var.node_service_account}"
    outputs = named_blocks(module, "output")
    assert set(node["labels"]) == set(outputs["node_selector"]["value"])
    assert named_blocks(module, "variable")["gpu_type"]["default"] == "nvidia-l4"


def test_checkov_skips_are_justified() -> None:
    for path in INFRA.rglob("*.tf"):
        for line in path.read_text().splitlines():
            if "checkov:skip=" in line:
                assert re.search(r"checkov:skip=CKV2?_[A-Z]+_\d+:\S.{20,}", line), f"{path}: {line.strip()}"


@pytest.mark.skipif(
    os.environ.get("CHROMIFY_CHECKOV") != "1", reason="set CHROMIFY_CHECKOV=1: fetches checkov from PyPI"
)
def test_checkov_passes() -> None:
    uvx = shutil.which("uvx")
    assert uvx, "uvx is needed to run checkov in its own environment"
    # --skip-download: no call to the Prisma Cloud API for guideline links (PyPI is the only network use).
    result = subprocess.run(
        [uvx, CHECKOV, "-d", str(INFRA), "--quiet", "--compact", "--skip-download"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"Failed checks: 0\b", result.stdout), result.stdout


def test_cloud_build_pushes_to_the_repository_terraform_made(root: dict[str, list[Any]]) -> None:
    # cloudbuild.yaml defaults _REPOSITORY to "chromify": with another `repository_id` the images went there while
    # CHROMIFY_IMAGE_REGISTRY (terraform's image_registry) named the repository terraform made
    outputs = named_blocks(root, "output")
    assert outputs["repository_id"]["value"] == "${google_artifact_registry_repository.images.repository_id}"
    for doc in ("README.md", "docs/source/cloud.md", "infra/README.md"):
        text = (ROOT / doc).read_text()
        commands = re.findall(r"gcloud builds submit(?:[^\n]*\\\n)*[^\n]*", text)
        assert commands, doc
        for command in commands:
            assert '_REPOSITORY="$(terraform -chdir=infra output -raw repository_id)"' in command, (doc, command)
            assert "cd infra" not in text, f"{doc}: its commands run from the repository root"
