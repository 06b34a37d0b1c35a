"""Loader throughput at 256 px, batch 64, against what one H100 would consume training unet_s.

    python benchmarks/loader.py                      # ../shared/data/photos → shards in a temp dir
    python benchmarks/loader.py DIR --size 256 --batch 64 --workers 2 --seconds 8

Shards are made from the folder by `preprocess` (every photo in the train split), then read back, from the page
cache, by: ShardSet.batches in this process (uint8 batches), the same plus `to_model_tensors` (float L, ab),
and a DataLoader over `ShardBatches` with `--workers` processes, yielding float (L, ab) or raw uint8 batches;
and the training loop's host-side crop + flip (what a CPU trainer does; a GPU trainer cuts on the device and its
host only runs the first row). The GPU side is an estimate, with its basis printed: unet_s's training FLOPs and
activation bytes per image (counted here) against an H100's peak rates, at the model's input size: the 224 px
crop when `train.resolution` is 0, and 64 px, the CPU default of `train.resolution`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from cli_args import folder, non_negative_int, positive_float, positive_int, run_main

# A string, so that argparse applies `folder` to it too: a missing ../shared is one line naming it.
DEFAULT_DIR = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "photos")
H100_BF16_FLOPS = 989e12  # dense bf16, H100 SXM datasheet
H100_HBM_BYTES = 3.35e12  # HBM3 bandwidth, H100 SXM datasheet
EFFICIENCY = (0.3, 0.5)  # share of peak bandwidth eager PyTorch sustains on narrow convs + BN + SiLU (assumed)


def rate(batches, seconds: float, batch: int) -> float:
    """Samples/s of an endless batch iterator over about `seconds`, after one warm-up batch."""
    it = iter(batches)
    next(it)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        next(it)
        n += batch
    return n / (time.perf_counter() - t0)


def endless(make_epoch):
    epoch = 0
    while True:
        yield from make_epoch(epoch)
        epoch += 1


def gpu_estimate(size: int) -> tuple[float, float, float, float]:
    """(training FLOPs per image, activation bytes per image moved per step, low, high images/s on an H100)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from chromify.models import get_model

    model = get_model("unet_s", base_width=16, depth=4)
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(2, 1, size, size)).float().abs().mean().backward()
    flops = counter.get_total_flops() / 2
    elements = 0

    def count(_module, _inputs, out):
        nonlocal elements
        elements += out.numel() if isinstance(out, torch.Tensor) else 0

    hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    with torch.no_grad():
        model(torch.randn(1, 1, size, size))
    for h in hooks:
        h.remove()
    # Each layer output, in bf16, is written and read once forward and about twice as much backward.
    traffic = elements * 2 * 2 * 3
    bound = min(H100_BF16_FLOPS / flops, H100_HBM_BYTES / traffic)
    return flops, traffic, bound * EFFICIENCY[0], bound * EFFICIENCY[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", nargs="?", type=folder, default=DEFAULT_DIR)
    ap.add_argument("--size", type=positive_int, default=256)
    ap.add_argument("--batch", type=positive_int, default=64)
    ap.add_argument("--workers", type=non_negative_int, default=2)
    ap.add_argument("--seconds", type=positive_float, default=8.0)
    args = ap.parse_args()

    import torch

    from chromify import shards
    from chromify.config import IngestParams
    from chromify.errors import ConfigError
    from chromify.ingest import ingest, read_manifest
    from chromify.loader import ShardBatches, ShardSet, to_model_tensors
    from chromify.train.loop import augment

    work = Path(tempfile.mkdtemp(prefix="chromify-loader-"))
    try:
        p = IngestParams(source=str(args.folder), out_dir=str(work / "raw"), val_fraction=0, test_fraction=0)
        ingest(p, work / "rep")
        t0 = time.perf_counter()
        counts = shards.preprocess(read_manifest(work / "raw"), work / "raw", work / "out", args.size,
                                   workers=os.cpu_count() or 1)
        made = time.perf_counter() - t0
        shards.write_index(work / "out", args.size)
        train = ShardSet(work / "out" / "train")
        if len(train) < args.batch:  # every epoch would be empty (the last, partial batch is dropped): no rate
            raise ConfigError(f"{len(train)} photos from {args.folder} in the train split, fewer than --batch "
                              f"{args.batch}: pass a smaller --batch or a bigger folder")
        print(f"\n{len(train)} photos from {args.folder} → {args.size} px shards in {made:.1f} s "
              f"({counts['images'] / made:.0f} images/s on {os.cpu_count()} cores); batch {args.batch}\n")

        def numpy_batches(epoch):
            return train.batches(args.batch, seed=0, epoch=epoch)

        def loader(raw: bool):
            ds = ShardBatches(work / "out" / "train", args.batch, seed=0, raw=raw)
            # with --workers 0 the DataLoader runs in this process and refuses these two options
            pool = {"persistent_workers": True, "prefetch_factor": 4} if args.workers else {}
            dl = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=args.workers, **pool)

            def make(epoch):
                ds.set_epoch(epoch)
                return dl
            return endless(make)

        rng, crop = np.random.default_rng(0), args.size * 7 // 8  # 224 at 256, as params.yaml's train.crop
        results = [
            ("ShardSet.batches, uint8, this process", rate(endless(numpy_batches), args.seconds, args.batch)),
            ("+ to_model_tensors (float L, ab), this process",
             rate((to_model_tensors(b) for b in endless(numpy_batches)), args.seconds, args.batch)),
            (f"DataLoader(ShardBatches), {args.workers} workers, float L, ab",
             rate(loader(raw=False), args.seconds, args.batch)),
            (f"DataLoader(ShardBatches, raw=True), {args.workers} workers, uint8",
             rate(loader(raw=True), args.seconds, args.batch)),
            (f"ShardSet.batches + augment (crop {crop} + flip on the host: a CPU trainer's path)",
             rate((augment(b, crop, rng) for b in endless(numpy_batches)), args.seconds, args.batch)),
        ]
        needs = {side: gpu_estimate(side) for side in (224, 64)}
        print("| loader | samples/s | ÷ H100 need, model at 224² | ÷ H100 need, model at 64² |")
        print("|---|---:|---:|---:|")
        for name, r in results:
            print(f"| {name} | {r:.0f} | " + " | ".join(f"{2 * r / (lo + hi):.1f}" for _, _, lo, hi in needs.values())
                  + " |")
        for side, (flops, traffic, low, high) in needs.items():
            print(f"\nH100 need, estimated, unet_s at {side}²: {low:.0f}-{high:.0f} images/s (taken as "
                  f"{(low + high) / 2:.0f}): {flops / 1e9:.2f} GFLOP and {traffic / 1e6:.0f} MB of activation traffic "
                  f"per image per training step; memory-bound (peak {H100_HBM_BYTES / 1e12:.2f} TB/s → "
                  f"{H100_HBM_BYTES / traffic:.0f}/s, compute peak would allow {H100_BF16_FLOPS / flops:.0f}/s), at "
                  f"{EFFICIENCY[0]:.0%}-{EFFICIENCY[1]:.0%} of peak bandwidth as eager PyTorch reaches on such layers.")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    run_main(main)
