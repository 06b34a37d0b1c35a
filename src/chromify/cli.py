"""`chromify`: one subcommand per stage plus colorize, models and pipeline. Parses, calls the library, prints.

Heavy imports (torch, kfp) happen inside the commands, so `chromify --help` answers at once.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
import threading
import traceback
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperOption

from chromify.config import DEFAULT_PARAMS
from chromify.errors import ChromifyError

# A typer without that method (it is not public API) keeps its own help: the patch is skipped.
_option_type = getattr(TyperOption, "display_type_rich", None)


def _value_type(self: TyperOption, ctx: Any) -> str | None:
    """No type for a flag. typer 0.29's rich help prints every option's type, so `--dry-run <bool>` and
    `--help <bool>` read as if they took a value; its plain help, like click's, leaves flags bare."""
    return None if self.is_flag or self.count else _option_type(self, ctx)


if _option_type is not None:
    TyperOption.display_type_rich = _value_type  # the rich help panel's only source for that column

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Chromify: bring black-and-white photographs back to colour.")
models_app = typer.Typer(no_args_is_help=True, help="List, inspect, promote and roll back registered models.")
pipeline_app = typer.Typer(no_args_is_help=True, help="The Kubeflow Pipelines DAG: compile, run locally, submit.")
app.add_typer(models_app, name="models")
app.add_typer(pipeline_app, name="pipeline")

ParamsOpt = Annotated[Path, typer.Option("--params", help="The params file; no params.yaml here means the defaults.")]
ReportsOpt = Annotated[Path, typer.Option("--reports", help="Where reports are written.")]


def _params(path: Path):
    from chromify.config import load_params_named

    return load_params_named(path)


def _report(path: Path, made_by: str) -> dict:
    """A JSON report an earlier stage wrote, or one line saying which stage to run first."""
    from chromify.errors import DataError

    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: not found; run `chromify {made_by}` first") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable ({exc}); run `chromify {made_by}` again") from None
    if not isinstance(report, dict):  # every report is an object: a list or number was an AttributeError later
        raise DataError(f"{path}: unreadable (a JSON {type(report).__name__}, not an object); "
                        f"run `chromify {made_by}` again")
    return report


def _echo_json(obj: object) -> None:
    typer.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


@app.command()
def ingest(params: ParamsOpt = DEFAULT_PARAMS, source: Annotated[str | None, typer.Option(
        help="Override ingest.source: 'sample', a folder, or gs://bucket/prefix.")] = None,
        out: Annotated[Path | None, typer.Option(help="Override ingest.out_dir.")] = None,
        reports: ReportsOpt = Path("reports")) -> None:
    """Find photos, decode each fully, reject the unusable with reasons, write the manifest."""
    from dataclasses import replace

    from chromify.stages import run_ingest

    p = _params(params)
    if source:
        p = replace(p, ingest=replace(p.ingest, source=source))
    with _sigterm_unwinds():
        counts = run_ingest(p, out, reports, progress=True)
    _echo_json(counts)


@app.command()
def preprocess(params: ParamsOpt = DEFAULT_PARAMS,
               raw: Annotated[Path | None, typer.Option(help="Ingested photos (default ingest.out_dir).")] = None,
               out: Path = Path("data/processed"),
               partition: Annotated[str, typer.Option(help="Write shards i, i+n, ... of each split, as i/n.")] = "0/1",
               index: Annotated[bool, typer.Option(help="Write the split indexes (after the last partition).")] = True,
               ) -> None:
    """Convert the manifest's photos to 8-bit Lab shards."""
    from chromify.stages import run_preprocess

    p = _params(params)
    with _sigterm_unwinds():  # the worker pool is shut down, and the lock let go, on the way out
        counts = run_preprocess(p, raw or Path(p.ingest.out_dir), out, partition, index, progress=True)
    _echo_json(counts)


@app.command()
def train(params: ParamsOpt = DEFAULT_PARAMS, data: Path = Path("data/processed"),
          out: Annotated[Path | None, typer.Option(help="Override train.out_dir.")] = None,
          dry_run: Annotated[bool, typer.Option(
              "--dry-run", help="Five steps, to check everything wires up (into a temporary folder unless --out).")
                             ] = False,
          reports: ReportsOpt = Path("reports")) -> None:
    """Train the colorization model (resumes from a checkpoint in the output directory)."""
    from dataclasses import replace

    from chromify.stages import run_train

    p = _params(params)
    if dry_run:
        p = replace(p, train=replace(p.train, max_steps=5, checkpoint_every=0))
        if out is None:  # a wiring check must not replace the real run's checkpoint, model and reports
            import tempfile

            scratch = Path(tempfile.mkdtemp(prefix="chromify-dry-run-"))
            out, reports = scratch / "model", scratch / "reports"
            typer.echo(f"dry run: writing to {scratch}", err=True)
        elif (out / "checkpoint.pt").exists():
            from chromify.errors import ConfigError

            raise ConfigError(f"{out}: holds a checkpoint a --dry-run would replace; name an empty --out")
        elif reports == Path("reports"):  # nor the real run's curves, which a resumed run would then append to
            reports = out / "reports"
            typer.echo(f"dry run: reports and curves in {out}", err=True)
    result = run_train(p, data, out or Path(p.train.out_dir), reports, progress=True)
    from chromify.stages import is_rank_zero

    if is_rank_zero():
        _echo_json({k: v for k, v in result.items() if k != "history"})


@app.command()
def evaluate(params: ParamsOpt = DEFAULT_PARAMS, data: Path = Path("data/processed"),
             model: Annotated[Path | None, typer.Option(help="Candidate model dir (default train.out_dir).")] = None,
             reports: ReportsOpt = Path("reports")) -> None:
    """Score the candidate against the gray baseline and the champion; write metrics, gallery and gate."""
    from chromify.stages import run_evaluate

    p = _params(params)
    summary, gate = run_evaluate(p, data, model or Path(p.train.out_dir), reports)
    typer.echo(f"PSNR {summary['candidate']['psnr']:.2f} dB (gray {summary['gray']['psnr']:.2f}), "
               f"ΔCF {summary['candidate']['delta_cf']:.1f}; gate {'PASSED' if gate['passed'] else 'FAILED'}")
    for reason in gate["reasons"]:
        typer.echo(f"  - {reason}")


@app.command()
def register(params: ParamsOpt = DEFAULT_PARAMS,
             model: Annotated[Path | None, typer.Option(help="Candidate model dir (default train.out_dir).")] = None,
             raw: Annotated[Path | None, typer.Option(help="Ingested photos (default ingest.out_dir).")] = None,
             reports: ReportsOpt = Path("reports")) -> None:
    """Register the candidate as a new version (and champion) if the gate passed."""
    from chromify.stages import run_register

    p = _params(params)
    gate, metrics = _report(reports / "gate.json", "evaluate"), _report(reports / "metrics.json", "evaluate")
    reasons = gate.get("reasons")
    if not isinstance(gate.get("passed"), bool) or not (isinstance(reasons, list)
                                                        and all(isinstance(r, str) for r in reasons)):
        from chromify.errors import DataError  # an edited gate.json was a TypeError traceback below

        raise DataError(f"{reports / 'gate.json'}: damaged ('passed' must be true or false and 'reasons' a list of "
                        "text); run `chromify evaluate` again")
    outcome = run_register(p, model or Path(p.train.out_dir), gate, metrics, raw or Path(p.ingest.out_dir), reports)
    if outcome.get("already_registered"):
        typer.echo(outcome["message"])
        outcome["reasons"] = outcome["reasons"][1:]  # the first is that same message
    elif not outcome["registered"]:
        typer.echo("not registered: the gate refused the candidate")
    elif outcome["target"] == "vertex":
        typer.echo(f"registered {p.register.model_name} version {outcome['version']} on Vertex AI as "
                   f"{outcome['alias']}: {outcome['resource_name']} (files {outcome['artifact_uri']})")
    else:
        typer.echo(f"registered {p.register.model_name} v{outcome['version']} as {outcome['alias']}: "
                   f"{outcome['path']}")
    for reason in outcome["reasons"]:
        typer.echo(f"  - {reason}")


def _registry(params: Path):
    from chromify.registry import LocalRegistry

    p = _params(params)
    return LocalRegistry(p.register.registry_dir, p.register.model_name)


def resolve_model(ref: str, params: Path) -> Path:
    """A model directory, or a registry alias / version; a path-like ref (a separator, a leading . or ~) is a
    folder only, so a mistyped one says so rather than that no such alias is registered."""
    folder = Path(os.path.expanduser(ref))  # os.path's leaves an unknown ~user as it is; Path's raises
    if folder.is_dir():
        return folder
    if os.sep in ref or (os.altsep and os.altsep in ref) or ref.startswith((".", "~")):
        from chromify.errors import ConfigError

        raise ConfigError(f"{ref}: not a folder; name the model's folder" if folder.exists()
                          else f"{ref}: no such model folder")
    return _project_registry(params, "run this from the project's folder, or name a model's folder",
                             f"{ref}: ").model_dir(ref)


class _Terminated(BaseException):
    """Raised by SIGTERM in the main thread: unwinds like Ctrl-C, through every cleanup."""


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """SIGTERM (a timeout, docker stop, Kubernetes) ends the block as Ctrl-C does, exit 143: by default it kills
    the process before atomic_write removes its temp file, which no later run would remove."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the cleanup short
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    except _Terminated:
        print("chromify: terminated", file=sys.stderr)
        raise SystemExit(128 + signal.SIGTERM) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


@app.command()
def colorize(inputs: Annotated[list[str], typer.Argument(help="Files, folders (recursive) or globs.")],
             out: Annotated[Path, typer.Option("-o", "--out", help="Output folder.")],
             model: Annotated[str, typer.Option(help="Registry alias, version, or model directory.")] = "champion",
             render_size: Annotated[int | None, typer.Option(
                 min=16, help="Model input short side in px, 16 to 1024 (default: the model's training size).")] = None,
             fmt: Annotated[str, typer.Option("--format", help="Output format: png or jpg.")] = "png",
             side_by_side: Annotated[bool, typer.Option(
                 "--side-by-side", help="Write original | colorized in one image.")] = False,
             html: Annotated[Path | None, typer.Option(
                 "--html", help="Also write a self-contained HTML contact sheet (original | colorized).")] = None,
             batch_size: Annotated[int, typer.Option(min=0, help="Photos per forward pass; 0: 8 on a GPU, 1 on CPU.")
                                   ] = 0,
             temperature: Annotated[float | None, typer.Option(
                 help="Bins-head models only: annealed-mean temperature, 1 = safe and dull, lower = bolder "
                      "(default: the model's).")] = None,
             prior_correction: Annotated[float | None, typer.Option(
                 help="Bins-head models only: divide by the training colours' prior to this power; > 0 is more "
                      "colourful (default: the model's).")] = None,
             chroma_gain: Annotated[float | None, typer.Option(
                 help="Scale the predicted colour about gray; > 1 is more vivid (default: the model's, chosen on "
                      "validation when it was trained).")] = None,
             params: ParamsOpt = DEFAULT_PARAMS) -> None:
    """Colorize photos at their full resolution; bad files are skipped with their reason."""
    from chromify.colorize import ColorizeOutcome, colorize_paths, output_format

    output_format(fmt)  # an unknown format fails before the model loads
    outcome = ColorizeOutcome()

    def say_skipped() -> None:
        for path, reason in outcome.failed:
            typer.echo(f"skipped {path}: {reason}", err=True)

    try:
        with _sigterm_unwinds():
            colorize_paths(inputs, out, resolve_model(model, params), render_size=render_size, fmt=fmt,
                           side_by_side_output=side_by_side, html_path=html, batch_size=batch_size,
                           progress=True, temperature=temperature, prior_correction=prior_correction,
                           chroma_gain=chroma_gain, outcome=outcome)
    except (KeyboardInterrupt, SystemExit, OSError) as exc:  # Ctrl-C, SIGTERM, a full disk: what was done is said
        if isinstance(exc, OSError) and not (outcome.written or outcome.failed):
            raise  # before any photo (an unreadable model folder, say): the error alone says it
        say_skipped()
        typer.echo(f"stopped after colorizing {len(outcome.written)} photo(s) into {out}" +
                   (f", skipped {len(outcome.failed)}" if outcome.failed else ""), err=True)
        raise
    say_skipped()
    done = len(outcome.written)
    typer.echo(f"colorized {done} photo(s) into {out}" + (f", skipped {len(outcome.failed)}" if outcome.failed
                                                           else "") + (f"; contact sheet {html}" if html and done
                                                                       else ""))
    if outcome.left_alone:
        from chromify.decode import IMAGE_SUFFIXES

        kinds = sorted(outcome.left_alone, key=lambda k: (-outcome.left_alone[k], k))
        typer.echo(f"left alone {sum(outcome.left_alone.values())} file(s) of the folders without an image suffix "
                   f"or not followed ({', '.join(kinds[:5])}{', ...' if len(kinds) > 5 else ''}; read: "
                   f"{' '.join(IMAGE_SUFFIXES)})", err=True)
    if done == 0:
        raise typer.Exit(1)


@app.command()
def serve(model: Annotated[str | None, typer.Option(
              help="Registry alias, version, or model directory (env CHROMIFY_MODEL; default champion).")] = None,
          host: Annotated[str | None, typer.Option(help="Interface (env CHROMIFY_HOST; default 127.0.0.1).")] = None,
          port: Annotated[int | None, typer.Option(help="Port (env AIP_HTTP_PORT or CHROMIFY_PORT; default 8080).")
                          ] = None,
          render_size: Annotated[int | None, typer.Option(min=16, help="Model input short side in px, 16 to 1024.")
                                 ] = None,
          concurrency: Annotated[int | None, typer.Option(min=1, help="Photos colorized at once (default 2).")
                                 ] = None,
          params: Annotated[Path | None, typer.Option(
              "--params", help="The params file, for the registry (env CHROMIFY_PARAMS).")] = None) -> None:
    """Serve the HTTP API, Vertex AI prediction routes and the web page (other settings: CHROMIFY_* variables)."""
    from pydantic import ValidationError

    from chromify.api.app import listen
    from chromify.api.app import serve as run_server
    from chromify.api.settings import ServeSettings
    from chromify.errors import ConfigError

    overrides = {"model": model, "host": host, "port": port, "render_size": render_size,
                 "concurrency": concurrency, "params": str(params) if params else None}
    try:
        settings = ServeSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:  # from an option or a CHROMIFY_* / AIP_* variable
        raise ConfigError("invalid serve setting(s): " + "; ".join(
            f"{_setting_name(e['loc'], ServeSettings, overrides)} = {e.get('input')!r}: {e['msg']}"
            for e in exc.errors())) from None
    sock = listen(settings.host, settings.port)
    run_server(settings, serving_model_dir(settings.model, Path(settings.params), explicit=model is not None), sock)


def _setting_name(loc: tuple, settings_cls: Any, options: dict[str, Any]) -> str:
    """What the user set: the option's field name, else the variable. pydantic names a setting read through
    AliasChoices by its first choice (AIP_HTTP_PORT) even when the value came from another (CHROMIFY_PORT), and a
    prefixed variable (CHROMIFY_CONCURRENCY) by its field."""
    name = ".".join(map(str, loc))
    if options.get(name) is not None:
        return name
    for field_name, field in settings_cls.model_fields.items():
        choices = getattr(field.validation_alias, "choices", ())
        if name in choices:
            return next((c for c in choices if isinstance(c, str) and c in os.environ), name)
        variable = settings_cls.model_config.get("env_prefix", "") + field_name.upper()
        if name == field_name and variable in os.environ:
            return variable
    return name


def serving_model_dir(ref: str, params: Path, explicit: bool) -> Path:
    """The model to serve. On a Vertex AI endpoint the container is told where the registered version's files
    are (AIP_STORAGE_URI, a gs:// folder) and has no local registry: fetch them unless a model was named."""
    storage_uri = os.environ.get("AIP_STORAGE_URI", "").rstrip("/")
    if storage_uri.startswith("gs://") and not explicit and not os.environ.get("CHROMIFY_MODEL"):
        import hashlib
        import tempfile

        from chromify.vertex_registry import download_version_files

        # One folder per URI: a container restarted with its /tmp for another deployed version must not serve
        # the files it fetched for the previous one.
        key = hashlib.sha256(storage_uri.encode()).hexdigest()[:16]
        return download_version_files(storage_uri, Path(tempfile.gettempdir()) / f"chromify-model-{key}")
    return resolve_model(ref, params)


def _local_registry(params: Path, command: str):
    p = _params(params)
    if p.register.target != "local":
        raise ChromifyError(f"`chromify models {command}` reads the local registry, and register.target is "
                            f"{p.register.target!r}: use the Vertex AI console or `gcloud ai models list-version`")
    return _project_registry(params, f"run `chromify models {command}` from the project's folder")


def _project_registry(params: Path, advice: str, prefix: str = ""):
    """The registry of the project this command runs in. The registry is found from the folder a command runs
    in: with no params.yaml here (the default named, not found) and no registry folder, this is not a project's
    folder, and an empty registry would be the wrong answer."""
    registry = _registry(params)
    if params == DEFAULT_PARAMS and not params.is_file() and not registry.dir.exists():
        raise ChromifyError(f"{prefix}no params.yaml in {Path.cwd()} to find the model registry by: {advice}")
    return registry


def version_rows(reg) -> list[dict]:
    """One summary per registered version: metrics, what its gate compared it with, lineage and aliases."""
    by_model_id = {}
    rows = []
    for v in reg.versions():
        r = reg.record(v)  # of the types registration writes (else a RegistryError); a null is no value
        m, gate = r.get("metrics") or {}, r.get("gate") or {}
        candidate = m.get("candidate") or {}
        champion_id = gate.get("champion_id")
        rows.append({
            "version": v, "aliases": reg.aliases_of(v),
            "psnr": candidate.get("psnr"), "psnr_gain_db": m.get("psnr_gain_db"),
            "delta_cf": candidate.get("delta_cf"),
            "gate_passed": gate.get("passed"),
            "gated_against": None if champion_id is None else by_model_id.get(champion_id, champion_id),
            "registered_at": r.get("registered_at") or "", "git_commit": r.get("git_commit") or "",
            "model_id": r.get("model_id") or "",
        })
        by_model_id.setdefault(r.get("model_id"), f"v{v}")
    return rows


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


@models_app.command("list")
def models_list(params: ParamsOpt = DEFAULT_PARAMS,
                as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON.")] = False) -> None:
    """Every registered version: PSNR, gain over gray, ΔCF, the champion its gate beat, lineage and aliases."""
    reg = _local_registry(params, "list")
    rows = version_rows(reg)
    if as_json:
        _echo_json(rows)
        return
    if not rows:
        typer.echo(f"{reg.name}: no registered versions in {reg.dir}")
        return
    champion = reg.aliases().get("champion")  # not reg.champion(): a dangling one must not hide the versions
    gone = champion is not None and champion not in {row["version"] for row in rows}
    typer.echo(f"{reg.name}: {len(rows)} version(s) in {reg.dir}; champion "
               f"{'none' if champion is None else f'v{champion}'}"
               f"{' (not a registered version: promote one with `chromify models promote VERSION`)' if gone else ''}")
    typer.echo(f"{'version':<8} {'PSNR dB':>7} {'vs gray':>7} {'ΔCF':>6}  {'gated vs':<8}  {'registered (UTC)':<19}  "
               f"{'commit':<8}  {'model id':<16}  aliases")
    for row in rows:
        typer.echo(f"{'v' + str(row['version']):<8} {_num(row['psnr'], '.2f'):>7} "
                   f"{_num(row['psnr_gain_db'], '+.2f'):>7} {_num(row['delta_cf'], '.1f'):>6}  "
                   f"{(row['gated_against'] or '-')[:8]:<8}  {row['registered_at'][:19].replace('T', ' '):<19}  "
                   f"{row['git_commit'][:8] or '-':<8}  {row['model_id'][:16] or '-':<16}  "
                   f"{','.join(row['aliases']) or '-'}")


@models_app.command("show")
def models_show(ref: Annotated[str, typer.Argument(help="Version (3, v3) or alias.")] = "champion",
                params: ParamsOpt = DEFAULT_PARAMS) -> None:
    """The full record of a version or alias, its aliases, its folder and whether its files are intact."""
    reg = _local_registry(params, "show")
    version = reg.resolve(ref)
    changed = reg.verify(version)
    _echo_json({**reg.record(version), "aliases": reg.aliases_of(version), "path": str(reg.version_dir(version)),
                "files_intact": not changed, **({"files_changed": changed} if changed else {})})


@models_app.command("promote")
def models_promote(ref: Annotated[str, typer.Argument(help="Version (3, v3; on Vertex AI its version id) or alias.")],
                   alias: Annotated[str, typer.Option(help="The alias to move.")] = "champion",
                   params: ParamsOpt = DEFAULT_PARAMS) -> None:
    """Point an alias (default champion) at a version."""
    p = _params(params)
    if p.register.target == "vertex":
        from chromify.vertex_registry import promote

        promote(p.register, ref.removeprefix("v"), alias)
        typer.echo(f"{alias} -> version {ref.removeprefix('v')} of {p.register.model_name} on Vertex AI")
        return
    reg = _registry(params)
    before = reg.aliases().get(alias)
    version = reg.set_alias(alias, ref)
    if before == version:
        typer.echo(f"{alias} already names v{version}")
    else:
        typer.echo(f"{alias}: {'none' if before is None else f'v{before}'} -> v{version}")


@models_app.command("rollback")
def models_rollback(alias: Annotated[str, typer.Option(help="The alias to move back.")] = "champion",
                    params: ParamsOpt = DEFAULT_PARAMS) -> None:
    """Move an alias back to the version it named before its last promotion, passing over versions deleted since;
    again goes further back."""
    reg = _local_registry(params, "rollback")
    before = reg.aliases().get(alias)
    version = reg.rollback(alias)
    typer.echo(f"{alias}: v{before} -> v{version} (rolled back)")


@models_app.command("history")
def models_history(alias: Annotated[str | None, typer.Option(help="Only this alias.")] = None,
                   params: ParamsOpt = DEFAULT_PARAMS) -> None:
    """Every alias move, oldest first: when, which alias, from which version to which, and why."""
    reg = _local_registry(params, "history")
    moves = reg.alias_history(alias)
    if not moves:
        typer.echo(f"{reg.name}: no alias moves" + (f" for {alias!r}" if alias else ""))
    for m in moves:
        before = "none" if m.get("previous") is None else f"v{m['previous']}"
        typer.echo(f"{m['at'][:19].replace('T', ' ')}  {m['alias']:<12} {before:>5} -> v{m['version']:<4} "
                   f"{m.get('action', 'move')}")


@pipeline_app.command("compile")
def pipeline_compile(out: Annotated[Path, typer.Option("-o", "--out")] = Path("pipeline.yaml"),
                     params: ParamsOpt = DEFAULT_PARAMS,
                     target: Annotated[str | None, typer.Option(
                         help="vertex, kfp or local (kfp.local: no accelerators); default cloud.target.")] = None,
                     ) -> None:
    """Write the KFP v2 pipeline spec (IR YAML)."""
    from pipelines.run import compile_pipeline

    compile_pipeline(out, params, target)
    typer.echo(f"wrote {out}")


@pipeline_app.command("run-local")
def pipeline_run_local(params: ParamsOpt = DEFAULT_PARAMS,
                       workdir: Annotated[Path, typer.Option(help="Where kfp.local keeps artifacts.")] = Path(
                           "local_outputs")) -> None:
    """Run the whole DAG with kfp.local's SubprocessRunner, in this environment."""
    from pipelines.run import run_local

    _echo_json(run_local(params, workdir))


@pipeline_app.command("submit")
def pipeline_submit(
    target: Annotated[str | None, typer.Option(help="vertex or kfp; default cloud.target in the params.")] = None,
    project: Annotated[str | None, typer.Option(help="GCP project (vertex).")] = None,
    region: Annotated[str, typer.Option(help="GCP region (vertex).")] = "us-central1",
    pipeline_root: Annotated[str | None, typer.Option(
        help="gs://bucket/path for artifacts (vertex: required; kfp: default the cluster's).")] = None,
    service_account: Annotated[str | None, typer.Option(
        help="Service account the run uses (vertex: GCP; kfp: Kubernetes).")] = None,
    experiment: Annotated[str | None, typer.Option(help="Vertex AI / KFP experiment name.")] = None,
    host: Annotated[str | None, typer.Option(help="Kubeflow Pipelines host URL (kfp).")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the request and a summary of the compiled DAG; send nothing.")] = False,
    params: ParamsOpt = DEFAULT_PARAMS,
) -> None:
    """Submit the DAG to Vertex AI Pipelines or a Kubeflow Pipelines host."""
    from pipelines.run import submit

    _echo_json(submit(target=target, project=project, region=region, pipeline_root=pipeline_root,
                      service_account=service_account, experiment=experiment, host=host, dry_run=dry_run,
                      params_path=params))


_USER_FIXABLE = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def _one_line(exc: BaseException) -> str | None:
    """The one line a user-fixable error gets; None for a bug, which keeps its traceback. The file system refusing
    a named file (permissions, a full or read-only disk, a folder where a file belongs) is the user's to fix too,
    as is an OSError naming no file whose errno is one of those."""
    if isinstance(exc, ChromifyError):
        return str(exc)
    if isinstance(exc, BrokenProcessPool):  # ingest's and preprocess's workers: finished files and shards are kept
        return ("a worker process died before it finished (killed, out of memory, or crashed in a decoder: the "
                "kernel log says which); what was finished is kept: run the command again, with fewer workers if "
                "memory is short (if it dies again, CHROMIFY_DEBUG=1 shows where)")
    if isinstance(exc, FileExistsError) and exc.filename2 is None and Path(str(exc.filename)).is_file():
        return f"{exc.filename}: a file, where a folder is needed"  # mkdir's bare "File exists"
    if isinstance(exc, OSError):
        where = exc.filename2 or exc.filename
        if where is not None or exc.errno in _USER_FIXABLE:
            return f"{f'{where}: ' if where is not None else ''}{exc.strerror or exc}"
    return None


def _exit(code: int) -> None:
    """sys.exit, but a rank of a torchrun job that stops early leaves at once, its output flushed: at interpreter
    exit a gloo or TCPStore thread of the (already destroyed) process group could still be joinable, and C++ then
    aborts ("terminate called without an active exception", exit -6) after the rank had said why it stopped."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and code:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def main() -> None:
    """Entry point: ChromifyError → one line on stderr and exit 2; CHROMIFY_DEBUG=1 shows the traceback."""
    try:
        app()
    except (ChromifyError, OSError, BrokenProcessPool) as exc:
        line = _one_line(exc)
        if line is None:
            raise
        if os.environ.get("CHROMIFY_DEBUG"):
            traceback.print_exc()
        print(f"chromify: error: {line}", file=sys.stderr)
        _exit(2)
    except KeyboardInterrupt:
        print("chromify: interrupted", file=sys.stderr)
        _exit(130)
    except SystemExit as exc:  # typer's own exit, or training's 130 / 143 after a signal
        if exc.code is not None and not isinstance(exc.code, int):
            raise  # a message for Python to print
        if _from_ctrl_c(exc):  # typer turns Ctrl-C into a silent exit 130
            print("chromify: interrupted", file=sys.stderr)
        _exit(exc.code or 0)


def _from_ctrl_c(exc: BaseException) -> bool:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


if __name__ == "__main__":
    main()
