"""The container images components run in: one place, tagged by git commit, never a moving tag.

KFP caches a task by its image reference, so `:latest` would silently reuse results of older code.
Set CHROMIFY_IMAGE_REGISTRY (`terraform -chdir=infra output -raw image_registry`) before compiling for the cloud;
CHROMIFY_IMAGE_TAG defaults to this repository's HEAD commit, the full SHA that containers/cloudbuild.yaml tags
the images with (`COMMIT_SHA`).
"""

from __future__ import annotations

import os
import re

from chromify.errors import ConfigError
from chromify.stages import git_commit

PLACEHOLDER_REGISTRY = "us-central1-docker.pkg.dev/chromify-project/chromify"
NO_COMMIT = "dev"

REGISTRY = os.environ.get("CHROMIFY_IMAGE_REGISTRY", PLACEHOLDER_REGISTRY).rstrip("/")
# The repository this file is in, wherever the command runs from (the same one stages.git_commit records).
TAG = os.environ.get("CHROMIFY_IMAGE_TAG") or git_commit(__file__) or NO_COMMIT
if TAG == "latest":
    raise ConfigError("CHROMIFY_IMAGE_TAG=latest: use the git commit the images were built from "
                      "(KFP caches by image reference)")
# Docker's reference grammar, checked here: a bad one otherwise surfaces only when a node fails to pull the image.
if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", TAG):
    raise ConfigError(f"CHROMIFY_IMAGE_TAG={TAG!r}: not an image tag (letters, digits, '_', '.', '-'; at most 128)")
if not re.fullmatch(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*", REGISTRY):
    raise ConfigError(f"CHROMIFY_IMAGE_REGISTRY={REGISTRY!r}: not an image registry path such as "
                      "us-central1-docker.pkg.dev/PROJECT/chromify (no scheme, lower case)")

CPU_IMAGE = f"{REGISTRY}/chromify-cpu:{TAG}"
GPU_IMAGE = f"{REGISTRY}/chromify-gpu:{TAG}"
SERVE_IMAGE = f"{REGISTRY}/chromify-serve:{TAG}"
