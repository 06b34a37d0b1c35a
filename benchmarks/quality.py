"""Colour quality under a fixed training budget, measured the way a user runs the pipeline: for each method,
`dvc repro` in a fresh copy of the project with `ingest.source` set to a real photo folder and
`train.max_minutes` set to the budget; everything else from params.yaml plus the method's overrides, except
the split: 10 % validation and 15 % test, the library's defaults for real folders (params.yaml's 25 % test is
there so the 11-photo bundled sample gets a test photo).

Prints one table: method × PSNR gain over gray, SSIM, ΔE2000, colourfulness of outputs and truth, ΔCF,
train images/s, on the test split chosen by the pipeline's own ingest.

    python benchmarks/quality.py                                   # ../shared/data/photos, 10 min a method
    python benchmarks/quality.py --photos DIR --minutes 10 --methods unet_l1,encdec_l1

On a GPU, the 20-minute run at full resolution (random 224 px crops of the 256 px shards, scored on the whole
256 px test photos) instead of the CPU default of 64 px:

    python benchmarks/quality.py --minutes 20 --set train.resolution=0 --set train.batch_size=64
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from cli_args import comma_list, decode, finite_float, run_main

ROOT = Path(__file__).resolve().parents[1]

# Each method is a set of params.yaml overrides; "unet_bins" is params.yaml as it is (the bins head).


def regression(model: dict | None = None, **train) -> dict:
    """Overrides for the regression head (ab itself, L1 unless `loss` says otherwise), plus any others."""
    return {"model": {"head": "regression", **(model or {})}, "train": {"regression_weight": 1.0, **train}}


GAN = {"gan_weight": 0.05, "gan_start_fraction": 0.5}  # L1, then a PatchGAN for the second half of the budget
METHODS: dict[str, dict] = {
    "unet_bins": {},  # the decode chosen on validation (train.decode_search)
    # Zhang et al.'s λ, decoded as their rows in the README were (T 0.38, β 0: no search to replace them)
    "unet_bins_zhang": {"model": {"prior_correction": 0.0}, "train": {"rebalance": 0.5, "decode_search": False}},
    # against over-fitting 519 photos: random-resized crops (half to full side) and EMA weights (~100-step horizon)
    "unet_bins_aug": {"train": {"scale_min": 0.5, "ema_decay": 0.99}},
    "unet_bins_r128": {"train": {"resolution": 128, "val_every_steps": 100}},  # 4.5× the cost a step
    "unet_bins_wd": {"train": {"weight_decay": 0.05, "val_every_steps": 100}},  # AdamW's decay, 500× the default
    "unet_l1": regression(),
    "unet_l2": regression(loss="l2"),
    "unet_cf": regression(colourfulness_weight=0.5),
    "encdec_bins": {"model": {"arch": "encdec_s"}},  # the plain encoder-decoder with the default head
    "encdec_l1": regression({"arch": "encdec_s"}),
    "unet_gan": regression(**GAN),
    # keep_best picks the adversarial phase's best PSNR, its first validation or so: the last weights show the GAN
    "unet_gan_last": regression(**GAN, keep_best=False),
    "unet_l1_r128": regression(resolution=128),
}


def project_copy(dest: Path, params: dict) -> None:
    """What a user's clone holds for `dvc repro`: dvc.yaml, .dvc/, the code the stages depend on, params."""
    dest.mkdir(parents=True)
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(ROOT / name, dest / name)
    shutil.copytree(ROOT / ".dvc", dest / ".dvc", ignore=shutil.ignore_patterns("cache", "tmp", "config.local"))
    shutil.copytree(ROOT / "src", dest / "src", ignore=shutil.ignore_patterns("__pycache__"))
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.name=chromify", "-c", "user.email=chromify@localhost"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "quality run"]):
        subprocess.run(git + cmd, cwd=dest, check=True)  # DVC and DVCLive want a repo with a commit


def with_overrides(base: dict, *overrides: dict) -> dict:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for o in overrides:
        for section, values in o.items():
            out[section] = {**out.get(section, {}), **values}
    return out


def columns(summary: dict, gray_psnr: float) -> dict:
    """The table's score columns from an evaluation summary (chromify.metrics.summarise)."""
    return {"psnr_gain_db": summary["psnr"] - gray_psnr, "psnr": summary["psnr"], "ssim": summary["ssim"],
            "delta_e2000": summary["delta_e2000"], "cf": summary["colourfulness"], "delta_cf": summary["delta_cf"]}


def parse_sets(items: list[str]) -> dict:
    """`section.key=value` pairs (values read as YAML: 0, true, 0.5, bins) as one set of overrides."""
    from chromify.errors import ConfigError, first_line

    out: dict[str, dict] = {}
    for item in items:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not (sep and dot and section and name):
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. train.resolution=0")
        try:
            out.setdefault(section, {})[name] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({first_line(exc)})") from None
    return out


def method_params(name: str, photos: str, minutes: float, sets: dict) -> dict:
    """params.yaml with the method's overrides, the real-folder split, the budget, then --set on top."""
    from chromify.config import ConfigError, IngestParams, params_from_dict

    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}: one of {', '.join(METHODS)}")
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    real = IngestParams()  # the split fractions for real folders
    params = with_overrides(base, METHODS[name], {"ingest": {"source": photos, "val_fraction": real.val_fraction,
                                                             "test_fraction": real.test_fraction},
                                                  "train": {"max_minutes": minutes, "max_steps": 0}}, sets)
    from chromify.train.loop import checked_model

    try:  # a typo or a setting training refuses fails here, not after the first method's training
        p = params_from_dict(params)
        checked_model(p.model, p.train, p.preprocess.size, p.preprocess.size, p.train.batch_size)
    except ConfigError as exc:
        raise ConfigError(f"{name}: {exc}") from None
    return params


def run_method(name: str, params: dict, work: Path) -> tuple[dict, list[dict]]:
    """The method's table row, and the decodes its validation search scored (reports/decode_search.json)."""
    from chromify.decode_search import describe

    repo = work / name
    if repo.exists():
        shutil.rmtree(repo)
    project_copy(repo, params)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    t0 = time.monotonic()
    proc = subprocess.run(["dvc", "repro"], cwd=repo, env=env, capture_output=True, text=True)
    if proc.returncode:
        tail = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]
        print(f"{name}: dvc repro failed (exit {proc.returncode}): {tail}\n{proc.stdout[-2000:]}\n"
              f"{proc.stderr[-2000:]}", file=sys.stderr, flush=True)
        return {"method": name, "failed": tail}, []
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    ingest = json.loads((repo / "reports/ingest.json").read_text())
    # images trained ÷ the training's own clock (validation pauses included): a mean of the logged intervals'
    # rates over-weighted the fast ones, up to 23 % above this when the rate varied (the GAN's two phases)
    live = json.loads((repo / "dvclive/metrics.json").read_text())
    steps, seconds = live["step"], live["final"]["train_seconds"]
    c, g = metrics["candidate"], metrics["gray"]
    searched = json.loads((repo / "reports/decode_search.json").read_text())
    if searched.get("chosen"):
        name = f"{name} (val-chosen {describe(searched['chosen'])})"
    row = {"method": name, **columns(c, g["psnr"]), "cf_truth": c["colourfulness_truth"],
           "train_images_per_s": steps * params["train"]["batch_size"] / seconds if seconds else float("nan"),
           "steps": steps, "train_minutes": seconds / 60, "gray_psnr": g["psnr"], "gray_ssim": g["ssim"],
           "test_images": metrics["images"], "split": {k: ingest[f"split_{k}"] for k in ("train", "val", "test")},
           "wall_s": time.monotonic() - t0, "gallery": str(repo / "reports/gallery.html")}
    return row, searched.get("rows") or []


def rescore(row: dict, tried: list[dict], decodes: list[tuple[float, ...]], floors: list[float]) -> list[dict]:
    """The same weights' test scores with other decodes: bolder or safer.

    `decodes`: (T, β[, gain]) for a bins-head model. `floors`: the decode the training's validation search
    (`tried`, the rows of its reports/decode_search.json) would have chosen with that
    train.decode_min_psnr_gain_db, so the trade-off can be read off the test split without choosing anything on it.
    """
    import numpy as np

    from chromify.decode_search import choose, describe
    from chromify.evaluate import EVAL_CHUNK, predict_split, score
    from chromify.lab import dequantise_lab
    from chromify.loader import ShardSet
    from chromify.metrics import summarise

    repo = Path(row["gallery"]).parents[1]
    model_dir = repo / "models/candidate"
    bins = json.loads((model_dir / "config.json").read_text())["model"].get("head") == "bins"
    todo = []
    for floor in floors:
        if tried:
            d = choose(tried, floor)
            todo.append((f"floor {floor:+g} dB: ", d["temperature"], d["prior_correction"], d["chroma_gain"]))
    if bins:
        todo += [("", d[0], d[1], d[2] if len(d) > 2 else 1.0) for d in decodes]
    test = ShardSet(repo / "data/processed/test")
    rows = []
    for label, t, beta, gain in todo:
        per_image = []  # a chunk of the split at a time, as evaluate does: a Kaggle-sized test split fits too
        for lo in range(0, len(test), EVAL_CHUNK):
            data = test.gather(np.arange(lo, min(lo + EVAL_CHUNK, len(test))))
            ab = predict_split(model_dir, data, 16, temperature=t, prior_correction=beta, chroma_gain=gain)
            per_image += score("candidate", dequantise_lab(data.transpose(0, 2, 3, 1)), ab, None).rows
        decode = {"temperature": t, "prior_correction": beta, "chroma_gain": gain}
        rows.append({**row, "method": f"  same weights, {label}{describe(decode)}",
                     **columns(summarise(per_image), row["gray_psnr"]), "rescored": True})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", default=str(ROOT.parent / "shared/data/photos"))
    ap.add_argument("--minutes", type=float, default=10.0, help="train.max_minutes for every method")
    ap.add_argument("--methods", default="unet_bins,encdec_bins,unet_l1,encdec_l1,unet_gan")
    ap.add_argument("--workdir", default=None, help="keep the runs here (default: a temp dir)")
    # --decodes and --floors are checked as they are parsed: a bad one would end the run after a method's training
    ap.add_argument("--decodes", type=comma_list(decode, empty_ok=True), default="0.38:0.5,0.38:0",
                    help="bins-head methods: also score the trained model with these T:β[:gain] decodes "
                         "(annealed-mean temperature : prior correction : chroma gain)")
    ap.add_argument("--floors", type=comma_list(finite_float, empty_ok=True), default="-0.5,0,1",
                    help="also score the decodes the validation search picks with these PSNR floors (dB)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="a params override for every method, after the method's own (repeatable)")
    args = ap.parse_args()
    photos = str(Path(args.photos).resolve())
    if not Path(photos).is_dir():
        ap.error(f"no photo folder at {photos}: pass --photos DIR")
    sets = parse_sets(args.set)
    plans = {name: method_params(name, photos, args.minutes, sets) for name in args.methods.split(",")}
    work = Path(args.workdir or tempfile.mkdtemp(prefix="chromify-quality-"))

    rows = []
    for name, params in plans.items():
        row, tried = run_method(name, params, work)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if "failed" in row:  # its row says so; the other methods still run and get their table
            continue
        extra = rescore(row, tried, args.decodes, args.floors)
        for r in extra:
            print(json.dumps(r), flush=True)
        rows += extra

    import torch

    machine = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"{os.cpu_count()} CPU cores, no GPU"
    overrides = "".join(f" --set {item}" for item in args.set)
    budgets = sorted({budget(p["train"]) for p in plans.values()})  # after --set, which can replace --minutes
    scored = [r for r in rows if "failed" not in r]
    print(f"\n{' / '.join(budgets)} of training per method, {machine};{overrides}", end=" ")
    if scored:
        r0 = scored[0]
        print(f"split {r0['split']}; test split {r0['test_images']} photos; gray baseline PSNR "
              f"{r0['gray_psnr']:.2f} dB, SSIM {r0['gray_ssim']:.3f}; colourfulness of the truth {r0['cf_truth']:.1f}")
    print("\n| method | PSNR gain (dB) | SSIM | ΔE2000 | CF | ΔCF | train img/s | steps |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "failed" in r:
            print(f"| {r['method']} | failed: {r['failed']} | | | | | | |")
            continue
        # a re-scored row trained nothing: no rate, no steps of its own
        trained = "| | |" if r.get("rescored") else f"| {r['train_images_per_s']:.0f} | {int(r['steps'])} |"
        print(f"| {r['method']} | {r['psnr_gain_db']:+.2f} | {r['ssim']:.3f} | {r['delta_e2000']:.2f} | "
              f"{r['cf']:.1f} | {r['delta_cf']:.1f} {trained}")
    (work / "quality.json").write_text(json.dumps(rows, indent=2))
    print(f"\nruns and galleries kept in {work}")
    if any("failed" in r for r in rows):
        raise SystemExit(1)


def budget(train: dict) -> str:
    """A method's training budget as its params state it: minutes, steps, or both (whichever ends first)."""
    parts = [f"{train['max_minutes']:g} min"] * bool(train.get("max_minutes")) + \
        [f"{train['max_steps']} steps"] * bool(train.get("max_steps"))
    return " or ".join(parts) or "no budget"


if __name__ == "__main__":
    run_main(main)
