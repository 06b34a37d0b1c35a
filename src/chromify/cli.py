"""`chromify`: one subcommand per stage plus colorize, models and pipeline. Parses, calls the library, prints.

Heavy imports (torch, kfp) happen inside the commands, so `chromify --help` answers at once.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Annotated

import typer

from chromify.errors import ChromifyError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Chromify: bring black-and-white photographs back to colour.")
models_app = typer.Typer(no_args_is_help=True, help="List, inspect, promote and roll back registered models.")
pipeline_app = typer.Typer(no_args_is_help=True, help="The Kubeflow Pipelines DAG: compile, run locally, submit.")
app.add_typer(models_app, name="models")
app.add_typer(pipeline_app, name="pipeline")

ParamsOpt = Annotated[Path, typer.Option("--params", help="The params file.")]
ReportsOpt = Annotated[Path, typer.Option("--reports", help="Where reports are written.")]


def _params(path: Path):
    from chromify.config import load_params

    return load_params(path)


def _echo_json(obj: object) -> None:
    typer.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


@app.command()
def ingest(params: ParamsOpt = Path("params.yaml"), source: Annotated[str | None, typer.Option(
        help="Override ingest.source: 'sample', a folder, or gs://bucket/prefix.")] = None,
        out: Annotated[Path | None, typer.Option(help="Override ingest.out_dir.")] = None,
        reports: ReportsOpt = Path("reports")) -> None:
    """Find photos, decode each fully, reject the unusable with reasons, write the manifest."""
    from dataclasses import replace

    from chromify.stages import run_ingest

    p = _params(params)
    if source:
        p = replace(p, ingest=replace(p.ingest, source=source))
    counts = run_ingest(p, out, reports, progress=sys.stderr.isatty())
    _echo_json(counts)


@app.command()
def preprocess(params: ParamsOpt = Path("params.yaml"), raw: Path = Path("data/raw"),
               out: Path = Path("data/processed"),
               partition: Annotated[str, typer.Option(help="Process slice i of n of the manifest, as i/n.")] = "0/1",
               index: Annotated[bool, typer.Option(help="Write the split indexes (after the last partition).")] = True,
               ) -> None:
    """Convert the manifest's photos to 8-bit Lab shards."""
    from chromify.stages import run_preprocess

    _echo_json(run_preprocess(_params(params), raw, out, partition, index, progress=sys.stderr.isatty()))


@app.command()
def train(params: ParamsOpt = Path("params.yaml"), data: Path = Path("data/processed"),
          out: Annotated[Path | None, typer.Option(help="Override train.out_dir.")] = None,
          dry_run: Annotated[bool, typer.Option("--dry-run", help="Five steps, to check everything wires up.")] = False,
          reports: ReportsOpt = Path("reports")) -> None:
    """Train the colorization model (resumes from a checkpoint in the output directory)."""
    from dataclasses import replace

    from chromify.stages import run_train

    p = _params(params)
    if dry_run:
        p = replace(p, train=replace(p.train, max_steps=5, checkpoint_every=0))
    result = run_train(p, data, out or Path(p.train.out_dir), reports, progress=sys.stderr.isatty())
    _echo_json({k: v for k, v in result.items() if k != "history"})


@app.command()
def evaluate(params: ParamsOpt = Path("params.yaml"), data: Path = Path("data/processed"),
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
def register(params: ParamsOpt = Path("params.yaml"),
             model: Annotated[Path | None, typer.Option(help="Candidate model dir (default train.out_dir).")] = None,
             raw: Path = Path("data/raw"), reports: ReportsOpt = Path("reports")) -> None:
    """Register the candidate as a new version (and champion) if the gate passed."""
    from chromify.stages import run_register

    p = _params(params)
    gate = json.loads((reports / "gate.json").read_text())
    metrics = json.loads((reports / "metrics.json").read_text())
    outcome = run_register(p, model or Path(p.train.out_dir), gate, metrics, raw, reports)
    if outcome["registered"]:
        typer.echo(f"registered {p.register.model_name} v{outcome['version']} as {outcome['alias']}: "
                   f"{outcome['path']}")
    else:
        typer.echo("not registered: the gate did not pass")


def _registry(params: Path):
    from chromify.registry import LocalRegistry

    p = _params(params)
    return LocalRegistry(p.register.registry_dir, p.register.model_name)


def resolve_model(ref: str, params: Path) -> Path:
    """A model directory, or a registry alias / version."""
    if Path(ref).is_dir():
        return Path(ref)
    return _registry(params).model_dir(ref)


@app.command()
def colorize(inputs: Annotated[list[str], typer.Argument(help="Files, folders (recursive) or globs.")],
             out: Annotated[Path, typer.Option("-o", "--out", help="Output folder.")],
             model: Annotated[str, typer.Option(help="Registry alias, version, or model directory.")] = "champion",
             params: ParamsOpt = Path("params.yaml")) -> None:
    """Colorize photos at their full resolution."""
    from chromify.colorize import colorize_paths

    done, failed = colorize_paths(inputs, out, resolve_model(model, params), progress=sys.stderr.isatty())
    for path, reason in failed:
        typer.echo(f"skipped {path}: {reason}", err=True)
    typer.echo(f"colorized {done} photo(s) into {out}" + (f", skipped {len(failed)}" if failed else ""))
    if done == 0:
        raise typer.Exit(1)


@models_app.command("list")
def models_list(params: ParamsOpt = Path("params.yaml")) -> None:
    """Every registered version, with its key metrics and aliases."""
    reg = _registry(params)
    aliases: dict[int, list[str]] = {}
    for alias, version in reg.aliases().items():
        aliases.setdefault(version, []).append(alias)
    versions = reg.versions()
    if not versions:
        typer.echo(f"no registered versions of {reg.name} in {reg.dir}")
        return
    typer.echo(f"{'version':<8} {'PSNR':>7} {'gain':>6} {'ΔCF':>6}  {'registered':<25} aliases")
    for v in versions:
        r = reg.record(v)
        m = r.get("metrics", {})
        c = m.get("candidate", {})
        typer.echo(f"v{v:<7} {c.get('psnr', float('nan')):7.2f} {m.get('psnr_gain_db', float('nan')):+6.2f} "
                   f"{c.get('delta_cf', float('nan')):6.1f}  {r.get('registered_at', ''):<25} "
                   f"{','.join(aliases.get(v, []))}")


@models_app.command("show")
def models_show(ref: str = "champion", params: ParamsOpt = Path("params.yaml")) -> None:
    """The full record of a version or alias."""
    reg = _registry(params)
    _echo_json(reg.record(reg.resolve(ref)))


@models_app.command("promote")
def models_promote(ref: str, alias: str = "champion", params: ParamsOpt = Path("params.yaml")) -> None:
    """Point an alias (default champion) at a version."""
    version = _registry(params).set_alias(alias, ref)
    typer.echo(f"{alias} -> v{version}")


@models_app.command("rollback")
def models_rollback(alias: str = "champion", params: ParamsOpt = Path("params.yaml")) -> None:
    """Move an alias back to the version it named before."""
    version = _registry(params).rollback(alias)
    typer.echo(f"{alias} -> v{version}")


@pipeline_app.command("compile")
def pipeline_compile(out: Annotated[Path, typer.Option("-o", "--out")] = Path("pipeline.yaml"),
                     params: ParamsOpt = Path("params.yaml")) -> None:
    """Write the KFP v2 pipeline spec (IR YAML)."""
    from pipelines.run import compile_pipeline

    compile_pipeline(out, params)
    typer.echo(f"wrote {out}")


@pipeline_app.command("run-local")
def pipeline_run_local(params: ParamsOpt = Path("params.yaml"),
                       workdir: Annotated[Path, typer.Option(help="Where kfp.local keeps artifacts.")] = Path(
                           "local_outputs")) -> None:
    """Run the whole DAG with kfp.local's SubprocessRunner, in this environment."""
    from pipelines.run import run_local

    _echo_json(run_local(params, workdir))


@pipeline_app.command("submit")
def pipeline_submit(
    target: Annotated[str, typer.Option(help="vertex or kfp")] = "vertex",
    project: Annotated[str | None, typer.Option(help="GCP project (vertex).")] = None,
    region: Annotated[str, typer.Option(help="GCP region (vertex).")] = "us-central1",
    pipeline_root: Annotated[str | None, typer.Option(help="gs://bucket/path for artifacts.")] = None,
    service_account: Annotated[str | None, typer.Option(help="Service account the run uses.")] = None,
    experiment: Annotated[str | None, typer.Option(help="Vertex AI experiment name.")] = None,
    host: Annotated[str | None, typer.Option(help="Kubeflow Pipelines host URL (kfp).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the request; send nothing.")] = False,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Submit the DAG to Vertex AI Pipelines or a Kubeflow Pipelines host."""
    from pipelines.run import submit

    _echo_json(submit(target=target, project=project, region=region, pipeline_root=pipeline_root,
                      service_account=service_account, experiment=experiment, host=host, dry_run=dry_run,
                      params_path=params))


def main() -> None:
    """Entry point: ChromifyError → one line on stderr and exit 2; CHROMIFY_DEBUG=1 shows the traceback."""
    try:
        app()
    except ChromifyError as exc:
        if os.environ.get("CHROMIFY_DEBUG"):
            traceback.print_exc()
        print(f"chromify: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("chromify: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
