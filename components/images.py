"""The container images components run in: one place, tagged by git commit, never a moving tag.

KFP caches a task by its image reference, so `:latest` would silently reuse results of older code.
Set CHROMIFY_IMAGE_REGISTRY (e.g. us-central1-docker.pkg.dev/PROJECT/chromify) and CHROMIFY_IMAGE_TAG
(default: the current git commit) before compiling for the cloud.
"""

from __future__ import annotations

import os
import subprocess


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "dev"
    except (OSError, subprocess.SubprocessError):
        return "dev"


REGISTRY = os.environ.get("CHROMIFY_IMAGE_REGISTRY", "us-central1-docker.pkg.dev/chromify-project/chromify")
TAG = os.environ.get("CHROMIFY_IMAGE_TAG") or _git_commit()
if TAG == "latest":
    raise ValueError("CHROMIFY_IMAGE_TAG=latest: use a commit tag or digest (KFP caches by image reference)")

CPU_IMAGE = f"{REGISTRY}/chromify-cpu:{TAG}"
GPU_IMAGE = f"{REGISTRY}/chromify-gpu:{TAG}"
SERVE_IMAGE = f"{REGISTRY}/chromify-serve:{TAG}"
