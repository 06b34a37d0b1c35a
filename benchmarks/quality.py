"""Colour quality under a fixed training budget: one table of methods × (PSNR gain over gray, SSIM, ΔE2000,
colourfulness, ΔCF, train images/s), on the test split of a real photo folder split by the pipeline's ingest.

    python benchmarks/quality.py                          # ../shared/data/photos, 10 min per method
    python benchmarks/quality.py --photos DIR --minutes 10 --methods unet_l1,unet_cf,encdec_cf

Each method is a set of params overrides on top of params.yaml; ingest and preprocess run once and are shared.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from chromify.config import load_params, params_from_dict

ROOT = Path(__file__).resolve().parents[1]

# Real-run data settings: 256 px shards (the size the gray baseline of the issue was measured at).
DATA = {"preprocess": {"size": 256}, "ingest": {"val_fraction": 0.1, "test_fraction": 0.15}}

METHODS: dict[str, dict] = {
    "unet_l1": {"model": {"arch": "unet_s"}, "train": {"colourfulness_weight": 0.0}},
    "unet_cf": {"model": {"arch": "unet_s"}, "train": {"colourfulness_weight": 0.5}},
    "encdec_cf": {"model": {"arch": "encdec_s"}, "train": {"colourfulness_weight": 0.5}},
    "unet_gan": {"model": {"arch": "unet_s"}, "train": {"colourfulness_weight": 0.5, "gan_weight": 0.05,
                                                         "gan_start_fraction": 0.5}},
}


def merged(base: dict, *overrides: dict) -> dict:
    out = {k: dict(v) for k, v in base.items()}
    for o in overrides:
        for section, values in o.items():
            out.setdefault(section, {}).update(values)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", default=str(ROOT.parent / "shared/data/photos"))
    ap.add_argument("--minutes", type=float, default=10.0, help="training budget per method")
    ap.add_argument("--methods", default="unet_l1,unet_cf,encdec_cf,unet_gan")
    ap.add_argument("--workdir", default=str(ROOT / "build/quality"))
    args = ap.parse_args()
    if not Path(args.photos).is_dir():
        raise SystemExit(f"no photo folder at {args.photos}: pass --photos DIR")

    from chromify.evaluate import evaluate
    from chromify.stages import run_ingest, run_preprocess, run_train

    work = Path(args.workdir)
    base = load_params(ROOT / "params.yaml").to_dict()
    data_params = params_from_dict(merged(base, DATA, {"ingest": {"source": args.photos,
                                                                  "out_dir": str(work / "raw")}}))
    t0 = time.monotonic()
    counts = run_ingest(data_params, work / "raw", work / "reports")
    run_preprocess(data_params, work / "raw", work / "processed")
    print(f"data: {counts['accepted']} photos ({counts['split_train']} train / {counts['split_val']} val / "
          f"{counts['split_test']} test) prepared in {time.monotonic() - t0:.0f} s")

    rows = []
    for name in args.methods.split(","):
        p = params_from_dict(merged(base, DATA, METHODS[name], {"train": {"max_minutes": args.minutes,
                                                                           "max_steps": 0}}))
        out = work / "models" / name
        if out.exists():
            import shutil

            shutil.rmtree(out)
        result = run_train(p, work / "processed", out, reports_dir=work / "reports" / name)
        summary, decision = evaluate(work / "processed", out, None, p.gate, work / "reports" / name,
                                     p.evaluate.batch_size, p.evaluate.gallery_size, p.base.seed)
        c, g = summary["candidate"], summary["gray"]
        images_per_s = result["step"] * min(p.train.batch_size, counts["split_train"]) / result["train_seconds"]
        rows.append({"method": name, "psnr_gain_db": c["psnr"] - g["psnr"], "psnr": c["psnr"], "ssim": c["ssim"],
                     "delta_e2000": c["delta_e2000"], "cf": c["colourfulness"], "cf_truth": c["colourfulness_truth"],
                     "delta_cf": c["delta_cf"], "train_images_per_s": images_per_s, "steps": result["step"],
                     "gray_psnr": g["psnr"], "gray_ssim": g["ssim"]})
        print(json.dumps(rows[-1]), flush=True)

    print(f"\nbudget {args.minutes:g} min per method; test split {rows[0] and counts['split_test']} photos; "
          f"gray baseline PSNR {rows[0]['gray_psnr']:.2f} dB, SSIM {rows[0]['gray_ssim']:.3f}\n")
    print("| method | PSNR gain (dB) | SSIM | ΔE2000 | CF | CF truth | ΔCF | train img/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['psnr_gain_db']:+.2f} | {r['ssim']:.3f} | {r['delta_e2000']:.2f} | {r['cf']:.1f} "
              f"| {r['cf_truth']:.1f} | {r['delta_cf']:.1f} | {r['train_images_per_s']:.1f} |")
    (work / "quality.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
