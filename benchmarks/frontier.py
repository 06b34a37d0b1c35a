"""Where trained weights sit on the fidelity/vividness trade-off, decode aside: for each run of quality.py (or any
project folder after `dvc repro`), every decode of the grid training searches is scored on the run's test split,
and the script prints the sharp mean and the two points the quality targets name: the best PSNR gain over gray
among decodes with ΔCF ≤ 5, and the lowest ΔCF among decodes at least 1 dB above gray.

Both are chosen *on the test split*: upper bounds for comparing weights, not results (a run's result is the decode
its validation search chose, which quality.py prints). Runs must share a test split for their rows to compare.

    python benchmarks/frontier.py /work/q-base/unet_bins /work/q-w24/unet_bins
"""

from __future__ import annotations

import argparse
import json

from cli_args import folder, run_main

TARGET_DCF, TARGET_GAIN_DB = 5.0, 1.0


def key(row: dict) -> tuple:
    from chromify.decode_search import DECODE_KEYS

    return tuple(row[k] for k in DECODE_KEYS)


def sharp_mean(rows: list[dict]) -> dict:
    """The bins head's annealed mean at T 0.38 without prior correction or gain; the regression head at gain 1."""
    return next(r for r in rows if key(r) in ((0.38, 0.0, 1.0), (None, None, 1.0)))


def frontier(rows: list[dict]) -> tuple[dict | None, dict | None]:
    """(best gain with ΔCF ≤ 5, lowest ΔCF with gain ≥ 1 dB); None where no decode of the grid qualifies."""
    vivid = [r for r in rows if r["delta_cf"] <= TARGET_DCF]
    faithful = [r for r in rows if r["psnr_gain_db"] >= TARGET_GAIN_DB]
    return (max(vivid, key=lambda r: r["psnr_gain_db"]) if vivid else None,
            min(faithful, key=lambda r: r["delta_cf"]) if faithful else None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=folder, help="project folders holding models/candidate and data/processed")
    args = ap.parse_args()

    from chromify.decode_search import candidates, describe, score_decodes
    from chromify.loader import ShardSet
    from chromify.train.checkpoint import load_model

    def cell(r: dict | None) -> str:
        return f"{r['psnr_gain_db']:+.2f} / {r['delta_cf']:.1f} ({describe(r)})" if r else "none in the grid"

    print("| run | steps | sharp mean (T 0.38, β 0, gain 1) | best with ΔCF ≤ 5 | least ΔCF at ≥ +1 dB |")
    print("|---|---|---|---|---|")
    for run in args.runs:
        model, config = load_model(run / "models/candidate", "cpu")
        test = ShardSet(run / "data/processed/test").all()
        bins = hasattr(model, "bins")
        rows, info = score_decodes(model, test, candidates(bins), int(config.get("size", 0)))
        vivid, faithful = frontier(rows)
        history = run / "reports/train_history.json"
        steps = int(json.loads(history.read_text())["steps"][-1]["step"]) if history.exists() else "?"
        print(f"| {run} | {steps} | {cell(sharp_mean(rows))} | {cell(vivid)} | {cell(faithful)} |", flush=True)
    print(f"\ntest split {len(test)} photos, truth colourfulness {info['colourfulness_truth']:.1f}; cells are PSNR "
          "gain over gray (dB) / ΔCF, chosen on the test split: upper bounds, not results")


if __name__ == "__main__":
    run_main(main)
