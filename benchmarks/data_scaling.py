"""Learning curve: the same training budget on nested subsets of the training photos, scored on the test split.

Tells whether more photos would move colour quality before anyone collects them. Each fraction trains from
scratch for `--minutes` (params.yaml otherwise) on a seeded subset of the training split (a quarter ⊂ a half ⊂ all),
with the same validation and test splits. Per fraction it prints, on the test split:
- the sharp mean (T 0.38, β 0, gain 1): how much the model knows, whatever the decode;
- the decode training's own validation search picks at params.yaml's floor (the one a real run exports);
- the best decode *chosen on the test split* with ΔCF ≤ 5: an upper bound on any decode of the grid, not a result.

    python benchmarks/data_scaling.py --data data/processed                # after `dvc repro` on a real folder
    python benchmarks/data_scaling.py --data DIR --fractions 0.25,0.5,1 --minutes 10 --workdir /tmp/curve
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
from cli_args import comma_list, non_negative_int, positive_float, run_main, unit_fraction
from frontier import frontier, key, sharp_mean

ROOT = Path(__file__).resolve().parents[1]


def write_subset(data: Path, train, dest: Path, fraction: float, seed: int) -> int:
    """A processed directory whose train split holds a seeded `fraction` of `train` (`data`'s, a ShardSet;
    nested across fractions); val and test are links to `data`'s own."""
    from chromify.io import atomic_write_json, file_sha256

    keep = np.sort(np.random.default_rng(seed).permutation(len(train))[: max(1, round(fraction * len(train)))])
    (dest / "train").mkdir(parents=True, exist_ok=True)
    for split in ("val", "test"):
        link = dest / split
        if not link.exists():
            link.symlink_to((data / split).resolve(), target_is_directory=True)
    shard = dest / "train" / "subset-00000.npy"
    np.save(shard, train.gather(keep))
    index = dict(train.index)
    index.update(count=len(keep), shards=[{"file": shard.name, "count": len(keep), "sha256": file_sha256(shard)}])
    atomic_write_json(dest / "train" / "index.json", index)  # last: a half-written subset has no index
    return len(keep)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT / "data/processed"), help="a processed directory (train/val/test)")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--fractions", type=comma_list(unit_fraction), default="0.25,0.5,1",
                    help="shares of the training split, each in (0, 1]")
    ap.add_argument("--minutes", type=positive_float, default=10.0, help="train.max_minutes for every fraction")
    ap.add_argument("--max-steps", type=non_negative_int, default=0,
                    help="a step budget instead of minutes (smoke runs)")
    ap.add_argument("--workdir", default=None,
                    help="keep the subsets and models here (default: a temp dir, removed at the end)")
    args = ap.parse_args()

    from chromify.config import load_params_named

    params = load_params_named(args.params)  # a mistyped --params is refused, not replaced by the defaults
    work = Path(args.workdir or tempfile.mkdtemp(prefix="chromify-curve-"))
    try:
        curve(args, params, work)
    finally:
        if not args.workdir:  # a subset and a model per fraction: as large as the training split, per fraction
            shutil.rmtree(work, ignore_errors=True)


def curve(args: argparse.Namespace, params, work: Path) -> None:
    from chromify.decode_search import candidates, describe, score_decodes
    from chromify.loader import ShardSet
    from chromify.train.checkpoint import load_model
    from chromify.train.loop import train

    data = Path(args.data)
    train_set, val, test = ShardSet(data / "train"), ShardSet(data / "val"), ShardSet(data / "test").all()
    bins = params.model.head == "bins"
    grid = candidates(bins)
    print(f"data {data}: {len(train_set)} train, {len(val)} val, {len(test)} test photos; "
          f"{f'{args.max_steps} steps' if args.max_steps else f'{args.minutes:g} min'} a fraction; work in {work}",
          flush=True)
    lines = []
    for fraction in args.fractions:
        tag = f"f{fraction:g}"
        photos = write_subset(data, train_set, work / tag / "data", fraction, params.base.seed)
        tp = replace(params.train, max_minutes=0.0 if args.max_steps else args.minutes, max_steps=args.max_steps,
                     decode_search=True, out_dir=str(work / tag / "model"))
        shutil.rmtree(work / tag / "model", ignore_errors=True)  # train() would resume an earlier run's
        result = train(work / tag / "data", work / tag / "model", params.model, tp, seed=params.base.seed)
        model, config = load_model(work / tag / "model", "cpu")
        size = int(config.get("size", 0))
        test_rows, info = score_decodes(model, test, grid, size)
        chosen = result.get("decode")  # none when validation has fewer than train.decode_search_min_photos
        on_test = next(r for r in test_rows if key(r) == key(chosen)) if chosen else None
        mean = sharp_mean(test_rows)
        bound = frontier(test_rows)[0]
        cell = lambda r: f"{r['psnr_gain_db']:+.2f} / {r['delta_cf']:.1f}"  # noqa: E731
        minutes = result["train_seconds"] / 60
        lines.append(f"| {fraction:g} | {photos} | {result['step']} ({minutes:.1f} min) | {cell(mean)} "
                     f"| {f'{describe(chosen)}: {cell(on_test)}' if chosen else 'none searched'} "
                     f"| {cell(bound) if bound else 'none'} |")
        print(lines[-1], flush=True)
    print(f"\ntest split: {len(test)} photos, truth colourfulness {info['colourfulness_truth']:.1f}; "
          "cells are PSNR gain over gray (dB) / ΔCF\n")
    print("| fraction | train photos | steps | sharp mean (T 0.38, β 0) | val-chosen decode on test "
          "| best on test with ΔCF ≤ 5 (upper bound) |")
    print("|---|---|---|---|---|---|")
    print("\n".join(lines))


if __name__ == "__main__":
    run_main(main)
