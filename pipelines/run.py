"""Compile, run locally (kfp.local) and submit the DAG. Parameters default from params.yaml, so DVC and the
cloud start from the same values; the `cloud:` section picks where the DAG runs and what the train task gets."""

from __future__ import annotations

import io
import json
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from chromify.config import Params, load_params_named
from chromify.errors import ChromifyError, ConfigError
from chromify.gcs import CREDENTIALS_HINT, split_uri

if TYPE_CHECKING:
    from google.auth.credentials import Credentials
    from google.cloud.aiplatform import PipelineJob


def pipeline_arguments(params: Params) -> dict[str, Any]:
    """The run's parameters: the whole params, as one JSON string every step parses."""
    return {"params_json": json.dumps(params.to_dict(), sort_keys=True)}


def _params(params: str | Path | Params) -> Params:
    return params if isinstance(params, Params) else load_params_named(params)


def compile_pipeline(out: str | Path, params_path: str | Path | Params = "params.yaml",
                     target: str | None = None) -> Path:
    """Write the IR YAML for `target` (vertex, kfp, local; default `cloud.target`), defaults from params."""
    import tempfile

    from kfp import compiler

    from chromify.io import atomic_write_text
    from pipelines.chromify_pipeline import build_pipeline

    out = Path(out)
    if out.suffix not in (".yaml", ".yml"):  # kfp writes YAML only (its JSON is deprecated, without kubernetes)
        raise ConfigError(f"{out}: the pipeline spec is YAML; name the file .yaml")
    if not out.parent.is_dir():
        raise ConfigError(f"{out}: no such folder {out.parent}")
    params = _params(params_path)
    pipeline = build_pipeline(params, target or params.cloud.target)
    # kfp writes in place: compile aside, then replace `out` atomically (temp file beside it + rename), so a
    # failed compile never leaves half a spec where the old one was.
    with tempfile.TemporaryDirectory(prefix="chromify-compile-") as tmp:
        staged = Path(tmp) / "pipeline.yaml"
        compiler.Compiler().compile(pipeline, str(staged), pipeline_parameters=pipeline_arguments(params))
        try:
            atomic_write_text(out, staged.read_text())
        except OSError as exc:
            raise ConfigError(f"{out}: cannot write ({exc.strerror})") from None
    return out


class _TaskErrors(io.TextIOBase):
    """kfp.local's output, passed through, keeping each task's error: the last line of the traceback its streamed
    log shows. kfp.local itself reports only the failed task's name."""

    _ANSI = re.compile(r"\x1b\[[0-9;]*m")

    def __init__(self, out: io.TextIOBase):
        self.out = out
        self.task_errors: dict[str, str] = {}
        self._partial: dict[int, str] = {}  # per thread: kfp.local runs loop iterations side by side
        self._task: dict[int, str] = {}
        self._traceback_indent: dict[int, int] = {}

    def write(self, text: str) -> int:
        self.out.write(text)
        thread = threading.get_ident()
        *lines, self._partial[thread] = (self._partial.get(thread, "") + text).split("\n")
        for line in lines:
            self._see(thread, self._ANSI.sub("", line))
        return len(text)

    def flush(self) -> None:
        self.out.flush()

    def _see(self, thread: int, line: str) -> None:
        indent = len(line) - len(line.lstrip(" "))
        if started := re.search(r"Executing task '([^']+)'", line):
            self._task[thread] = started[1]
        elif line.strip() == "Traceback (most recent call last):":
            self._traceback_indent[thread] = indent
        elif line.strip() and indent == self._traceback_indent.get(thread):
            del self._traceback_indent[thread]  # the exception line: frames are indented deeper
            task = self._task.get(thread, "")
            self.task_errors.pop(task, None)  # re-inserted last: the latest error comes last
            self.task_errors[task] = re.sub(r"^[\w.]*\.(?=\w+:)", "", line.strip())  # ConfigError, not a.b.ConfigError


def _task_failure(exc: RuntimeError, errors: dict[str, str]) -> ChromifyError | None:
    """kfp.local's 'Pipeline ... finished with status FAILURE. Inner task failed: 't' inside 'loop'.' as one
    line naming the task and its error; None for any other RuntimeError."""
    failed = re.search(r"Inner task failed: (.*?)\.?$", _TaskErrors._ANSI.sub("", str(exc)))
    if not failed:
        return None
    innermost = re.match(r"'([^']+)'", failed[1])
    error = errors.get(innermost[1] if innermost else "") or next(reversed(errors.values()), "")
    return ChromifyError(f"kfp.local: task {failed[1]} failed" + (f": {error}" if error else " (its log is above)"))


def run_local(params: str | Path | Params = "params.yaml", workdir: str | Path = "local_outputs") -> dict[str, Any]:
    """Run the whole DAG in this environment with kfp.local's SubprocessRunner; returns where things went."""
    from kfp import local

    from pipelines.chromify_pipeline import PIPELINE_NAME, build_pipeline

    p = _params(params)
    workdir = Path(workdir).resolve()
    earlier = set(workdir.glob(f"{PIPELINE_NAME}-*"))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(workdir))
    tee = _TaskErrors(sys.stdout)
    try:
        with redirect_stdout(tee):
            build_pipeline(p, "local")(**pipeline_arguments(p))
    except RuntimeError as exc:
        failure = _task_failure(exc, tee.task_errors)
        if failure is None:
            raise
        raise failure from None
    out: dict[str, Any] = {"pipeline_root": str(workdir), "registry": str(Path(p.register.registry_dir).resolve())}
    # What the run decided, as `dvc repro`'s register step says it: otherwise only an `Output: False` in kfp's log
    runs = sorted(set(workdir.glob(f"{PIPELINE_NAME}-*")) - earlier)
    if len(runs) == 1 and (runs[0] / "evaluate" / "gate").is_file():
        gate = json.loads((runs[0] / "evaluate" / "gate").read_text())
        registered = runs[0] / "register" / "executor_output.json"
        version = json.loads(registered.read_text())["parameterValues"]["Output"] if registered.is_file() else 0
        out.update(run=str(runs[0]), gate="passed" if gate["passed"] else "failed: " + "; ".join(gate["reasons"]),
                   registered=version or None)  # 0: already registered, nothing new
    return out


def load_spec(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The compiled file → (pipeline spec, kubernetes platform spec or {}); kfp-kubernetes adds a second document."""
    docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
    platform = next((d for d in docs[1:] if "platforms" in d), {})
    return docs[0], platform.get("platforms", {}).get("kubernetes", {})


def iter_tasks(spec: dict[str, Any], dag: dict[str, Any] | None = None,
               within: tuple[str, ...] = ()) -> Iterator[tuple[str, dict[str, Any], tuple[str, ...]]]:
    """Every task of the IR as (task name, task, display names of the enclosing loops/conditions), loops and
    conditions included, their DAGs flattened."""
    for name, task in (dag or spec["root"]["dag"])["tasks"].items():
        yield name, task, within
        component = spec["components"][task["componentRef"]["name"]]
        if "dag" in component:
            yield from iter_tasks(spec, component["dag"], (*within, task["taskInfo"]["name"]))


def summarize_spec(spec: dict[str, Any], platform: dict[str, Any]) -> dict[str, Any]:
    """What a reviewer checks before a run: each task's display name, image, resources, caching and retries."""
    executors = spec["deploymentSpec"]["executors"]
    k8s = platform.get("deploymentSpec", {}).get("executors", {})
    tasks, loops = {}, {}
    for name, task, within in iter_tasks(spec):
        component = spec["components"][task["componentRef"]["name"]]
        if "parameterIterator" in task:
            loops[task["taskInfo"]["name"]] = task["parameterIterator"]["items"]
        if "executorLabel" not in component:
            continue
        executor = component["executorLabel"]
        container = executors[executor]["container"]
        tasks[name] = {
            "display_name": task["taskInfo"]["name"],
            "image": container["image"],
            "within": list(within),
            "cache": task.get("cachingOptions", {}).get("enableCache", False),
            "retries": task.get("retryPolicy", {}).get("maxRetryCount", 0),
            **({"resources": container["resources"]} if container.get("resources") else {}),
            **({"kubernetes": k8s[executor]} if executor in k8s else {}),
        }
    return {"pipeline": spec["pipelineInfo"]["name"], "tasks": tasks, "loops": loops,
            "images": sorted({t["image"] for t in tasks.values()})}


def check_pipeline_root(pipeline_root: str | None) -> str:
    """gs://bucket/path, a folder inside a bucket (Vertex AI writes each run beneath it); returns it without '/'."""
    if not pipeline_root:
        raise ConfigError("--pipeline-root is needed: a path in a bucket, gs://bucket/some/path")
    root = pipeline_root.rstrip("/")
    if not root.startswith("gs://"):
        raise ConfigError(f"--pipeline-root {pipeline_root}: must be a path in a bucket, gs://bucket/some/path")
    try:
        bucket, path = split_uri(root)  # the bucket-name rule of every gs:// path
    except ConfigError as exc:
        raise ConfigError(f"--pipeline-root {exc}") from None
    if not path:
        raise ConfigError(f"--pipeline-root {pipeline_root}: a folder inside the bucket, not the bucket itself: "
                          f"gs://{bucket}/some/path")
    if re.search(r"\s", path):
        raise ConfigError(f"--pipeline-root {pipeline_root!r}: no spaces in the path")
    return root


def check_kfp_pipeline_root(pipeline_root: str | None) -> str | None:
    """Kubeflow's: optional (the installation's default store), else a folder in a store its launcher writes to."""
    if not pipeline_root:
        return None
    root = pipeline_root.rstrip("/")
    if root.startswith("gs://"):
        return check_pipeline_root(root)
    if not re.fullmatch(r"(s3|minio)://[^/\s]+/\S+", root):
        raise ConfigError(f"--pipeline-root {pipeline_root!r}: a folder in the object store Kubeflow writes to: "
                          "gs://, s3:// or minio://bucket/some/path (or leave it out for the installation's default)")
    return root


def check_region(region: str) -> str:
    """A Vertex AI region, as the SDK knows them; its own error lists all of them inside a traceback."""
    from google.cloud.aiplatform import utils

    try:
        utils.validate_region(region)
    except ValueError:
        raise ConfigError(f"--region {region!r}: not a Vertex AI region (e.g. us-central1, europe-west4)") from None
    return region


# Vertex AI Experiments' resource ids; aiplatform refuses others only at submit, inside a RuntimeError
_EXPERIMENT = re.compile(r"[a-z0-9][a-z0-9-]{0,127}")


def check_experiment(experiment: str | None) -> str | None:
    """A Vertex AI experiment name (None: none), refused before the compile instead of at submit."""
    if experiment is not None and not _EXPERIMENT.fullmatch(experiment):
        raise ConfigError(f"--experiment {experiment!r}: a Vertex AI experiment name is 1-128 lower-case letters, "
                          "digits and '-', starting with a letter or digit")
    return experiment


def cloud_problems(params: Params) -> list[str]:
    """What would make a cloud run fail late or lose its result; submit refuses them, a dry run lists them."""
    from components import images

    problems = []
    if images.REGISTRY == images.PLACEHOLDER_REGISTRY:
        problems.append("CHROMIFY_IMAGE_REGISTRY is not set: the steps would pull images from a placeholder "
                        "registry (export it from `terraform -chdir=infra output -raw image_registry`)")
    if images.TAG == images.NO_COMMIT:
        problems.append("no git commit to tag the images with: set CHROMIFY_IMAGE_TAG to the built commit")
    if params.register.target == "local":
        problems.append("register.target is local: the registry would live and die on the register step's "
                        "container, and every champion lookup would find none (set register.target: vertex)")
    if params.ingest.source != "sample" and not params.ingest.source.startswith("gs://"):
        problems.append(f"ingest.source {params.ingest.source} is a path on this machine, which the cloud's steps "
                        "cannot read: upload the photos and set ingest.source to their gs://bucket/prefix")
    elif params.ingest.source.startswith("gs://"):  # else the run's first step fails on it, in the cloud
        try:
            split_uri(params.ingest.source)
        except ConfigError as exc:
            problems.append(f"ingest.source {exc}")
    if params.register.target == "vertex":  # else evaluate's champion lookup fails, after the GPU was paid for
        from chromify.vertex_registry import check_params

        try:
            check_params(params.register)
        except ConfigError as exc:
            problems.append(str(exc))
    return problems


def vertex_labels() -> dict[str, str]:
    """Labels on the run: the app (as in infra/) and the image tag, i.e. the code the steps run."""
    from components.images import TAG

    return {"app": "chromify", "image-tag": re.sub(r"[^a-z0-9_-]", "-", TAG.lower())[:63]}


def build_vertex_job(template_path: str | Path, params: Params, project: str, region: str, pipeline_root: str,
                     service_account: str | None = None, credentials: Credentials | None = None) -> PipelineJob:
    """The Vertex AI PipelineJob request, built and not sent (`job.to_dict()` is what `submit` sends)."""
    from google.cloud import aiplatform

    from pipelines.chromify_pipeline import PIPELINE_NAME

    if not project:
        raise ConfigError("--target vertex needs --project")
    check_region(region)
    job = aiplatform.PipelineJob(
        display_name=PIPELINE_NAME, template_path=str(template_path),
        pipeline_root=check_pipeline_root(pipeline_root), parameter_values=pipeline_arguments(params),
        # None keeps the compiled per-task caching; True or False here would override it for every task,
        # and a cached evaluate would gate against a stale champion.
        enable_caching=None, labels=vertex_labels(), project=project, location=region, credentials=credentials)
    if service_account:
        # What job.submit(service_account=...) does first, done here so that a dry run shows the request that
        # submit sends (the public `gca_resource` refuses access before the job exists).
        job._gca_resource.service_account = service_account
    return job


def vertex_request(job: PipelineJob, project: str, region: str) -> dict[str, Any]:
    """The create request without the (long) pipeline spec, for printing."""
    body = {k: v for k, v in job.to_dict().items() if k != "pipelineSpec"}
    return {"parent": f"projects/{project}/locations/{region}", "pipelineJob": body}


def build_kfp_run(template_path: str | Path, params: Params, experiment: str | None, pipeline_root: str | None,
                  service_account: str | None) -> dict[str, Any]:
    """Keyword arguments of `kfp.Client.create_run_from_pipeline_package`, built and not sent."""
    from pipelines.chromify_pipeline import PIPELINE_NAME

    # kfp's own default name, which Chromify's fixed one replaced: every run was 'chromify-colorization' in the list
    run_name = f"{PIPELINE_NAME} {datetime.now(UTC).strftime('%Y-%m-%d %H-%M-%S')}"
    return {"pipeline_file": str(template_path), "arguments": pipeline_arguments(params), "run_name": run_name,
            "experiment_name": experiment, "pipeline_root": pipeline_root, "service_account": service_account,
            "enable_caching": None}  # None: the compiled per-task caching holds (see build_vertex_job)


@contextmanager
def _one_line_errors(where: str) -> Iterator[None]:
    """The SDKs' failures to authenticate or to reach `where` (Vertex AI, a Kubeflow host) as one line that says
    what to do, instead of their tracebacks: missing or expired credentials are the likeliest first-submit error."""
    import requests
    import urllib3
    from google.api_core.exceptions import GoogleAPIError
    from google.auth.exceptions import DefaultCredentialsError, GoogleAuthError, RefreshError
    from kfp_server_api import ApiException

    def text(exc: BaseException) -> str:  # google.auth's errors carry (message, response) as their args
        message = exc.args[0] if isinstance(exc, GoogleAuthError) and exc.args else exc
        return " ".join(str(message).split())  # the SDKs' messages span lines

    def said(exc: BaseException) -> ChromifyError | None:
        if isinstance(exc, DefaultCredentialsError):
            return ConfigError(f"{where}: no Google credentials ({text(exc)}): {CREDENTIALS_HINT}")
        if isinstance(exc, RefreshError):
            return ConfigError(f"{where}: the Google credentials were refused ({text(exc)}): {CREDENTIALS_HINT}")
        if isinstance(exc, (GoogleAuthError, GoogleAPIError)):  # PermissionDenied, NotFound, quota, unreachable...
            return ChromifyError(f"{where}: {type(exc).__name__}: {text(exc)}")
        if isinstance(exc, (requests.RequestException, urllib3.exceptions.HTTPError, ApiException, TimeoutError)):
            # kfp.Client: the host refuses or is not a Kubeflow Pipelines API; requests: Cloud Storage unreachable
            return ChromifyError(f"{where}: cannot reach or use the API: {type(exc).__name__}: {text(exc)}")
        return None

    try:
        yield
    except Exception as exc:
        error = said(exc)
        # aiplatform wraps whatever its experiment lookup raised (a 403, a name it refuses) in a RuntimeError
        cause = exc.__cause__
        if error is None and isinstance(exc, RuntimeError) and cause is not None:
            inner = said(cause) or (ChromifyError(f"{where}: {type(cause).__name__}: {text(cause)}")
                                    if isinstance(cause, ValueError) else None)
            if inner is not None:
                error = type(inner)(f"{where}: {text(exc)}: {str(inner).removeprefix(f'{where}: ')}")
        if error is None:
            raise
        raise error from None


def default_credentials() -> Credentials:
    """The application default credentials, refreshed now: the SDK's first call (the pipeline root's bucket) logs
    a refusal as a traceback and goes on, to fail later with another."""
    import google.auth
    from google.auth.transport.requests import Request

    with _one_line_errors("Vertex AI"):
        credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
        if not credentials.valid:
            credentials.refresh(Request())
    return credentials


def submit(target: str | None, project: str | None, region: str, pipeline_root: str | None,
           service_account: str | None, experiment: str | None, host: str | None, dry_run: bool,
           params_path: str | Path) -> dict[str, Any]:
    """Submit to Vertex AI Pipelines (target='vertex') or a Kubeflow Pipelines host (target='kfp')."""
    import tempfile

    params = _params(params_path)
    target = target or params.cloud.target
    if target not in ("vertex", "kfp"):
        raise ConfigError(f"--target {target!r}: expected vertex or kfp (kfp.local is `chromify pipeline run-local`)")
    if target == "kfp" and not host:
        raise ConfigError("--target kfp needs --host URL of the Kubeflow Pipelines API")
    if target == "vertex":  # checked before the compile, so a typo costs no time
        if not project:
            raise ConfigError("--target vertex needs --project")
        check_pipeline_root(pipeline_root)
        check_region(region)
        check_experiment(experiment)
    else:
        pipeline_root = check_kfp_pipeline_root(pipeline_root)
    problems = cloud_problems(params)
    if problems and not dry_run:
        raise ConfigError("not submitted: " + "; ".join(problems))
    if target == "vertex":
        if dry_run:  # nothing is sent, so no account is needed to build the request
            from google.auth.credentials import AnonymousCredentials

            credentials = AnonymousCredentials()
        else:
            credentials = default_credentials()
    # The compiled file is needed until the request is sent, no longer: every submit, dry runs too, used to
    # leave its folder behind in the temp dir
    with tempfile.TemporaryDirectory(prefix="chromify-pipeline-") as folder:
        spec_path = Path(folder) / "chromify_pipeline.yaml"
        compile_pipeline(spec_path, params, target)
        summary = summarize_spec(*load_spec(spec_path))
        if target == "vertex":
            job = build_vertex_job(spec_path, params, project, region, pipeline_root, service_account, credentials)
            request = {"target": "vertex", "request": vertex_request(job, project, region),
                       "experiment": experiment, "spec": summary}
            if dry_run:
                return {"dry_run": True, **request, "problems": problems}
            with _one_line_errors("Vertex AI"):
                job.submit(service_account=service_account, experiment=experiment)
            return {"target": "vertex", "job": job.resource_name, "experiment": experiment,
                    "console": f"https://console.cloud.google.com/vertex-ai/locations/{region}/pipelines/runs/"
                               f"{job.job_id}?project={project}"}
        run_kwargs = build_kfp_run(spec_path, params, experiment, pipeline_root, service_account)
        request = {"target": "kfp", "host": host, "request": run_kwargs, "spec": summary}
        if dry_run:
            # the compiled file goes with the temp folder: `chromify pipeline compile` writes one to keep
            request["request"] = {k: v for k, v in run_kwargs.items() if k != "pipeline_file"}
            return {"dry_run": True, **request, "problems": problems}
        import warnings

        import kfp

        with _one_line_errors(f"--host {host}"), warnings.catch_warnings():
            # kfp.Client warns on every use that it needs a 2.x backend, which cloud.md already requires
            warnings.filterwarnings("ignore", "This client only works with Kubeflow Pipeline", FutureWarning)
            run = kfp.Client(host=host).create_run_from_pipeline_package(**run_kwargs)
        return {"target": "kfp", "host": host, "run_id": run.run_id}
