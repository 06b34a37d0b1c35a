"""The container images components run in: one place, tagged by git commit, never a moving tag.

KFP caches a task by its image reference, so `:latest` would silently reuse results of older code.
Set CHROMIFY_IMAGE_REGISTRY (`terraform -chdir=infra output -raw image_registry`) before compiling for the cloud;
CHROMIFY_IMAGE_TAG defaults to this repository's HEAD commit, the full SHA that containers/cloudbuild.yaml tags
the images with (`COMMIT_SHA`).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

PLACEHOLDER_REGISTRY = "us-central1-docker.pkg.dev/chromify-project/chromify"
NO_COMMIT = "dev"


def _git_commit() -> str:
    try:  # the repository this file is in, wherever the command runs from
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else NO_COMMIT
    except (OSError, subprocess.SubprocessError):
        return NO_COMMIT


REGISTRY = os.environ.get("CHROMIFY_IMAGE_REGISTRY", PLACEHOLDER_REGISTRY).rstrip("/")
TAG = os.environ.get("CHROMIFY_IMAGE_TAG") or _git_commit()
if TAG == "latest":
    raise ValueError("CHROMIFY_IMAGE_TAG=latest: use the git commit the images were built from "
                     "(KFP caches by image reference)")

CPU_IMAGE = f"{REGISTRY}/chromify-cpu:{TAG}"
GPU_IMAGE = f"{REGISTRY}/chromify-gpu:{TAG}"
SERVE_IMAGE = f"{REGISTRY}/chromify-serve:{TAG}"
