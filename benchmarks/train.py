"""Training throughput of one model step (forward, L1, backward, AdamW) at 256², per precision/layout variant.

    python benchmarks/train.py                      # all variants the device supports, a markdown table
    python benchmarks/train.py --arch unet_b --batch 64 --steps 50 --peak H100-SXM

Variants: fp32 eager in NCHW (the baseline), bf16 autocast + channels_last, and the same under torch.compile
(on by default on CUDA; `--compile` on CPU, where compiling takes minutes). Model FLOPs are counted once with
FlopCounterMode (forward + backward, per image); MFU divides achieved FLOP/s by the GPU's dense bf16 peak, which
is named with --peak or recognised from the device name. On CPU only images/s is meaningful: there bf16 autocast
is often slower than fp32, and the table says so rather than hiding it.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from cli_args import non_negative_int, positive_int, run_main
from torch.utils.flop_counter import FlopCounterMode

from chromify.models import get_model

# Dense bf16 tensor-core peaks from the vendors' datasheets, FLOP/s (sparsity figures are 2× these).
PEAK_BF16 = {"H100-SXM": 989e12, "H100-PCIe": 756e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}


def peak_for(device_name: str) -> str | None:
    """The PEAK_BF16 key for a CUDA device name, or None."""
    if "H200" in device_name:
        return "H200"
    if "H100" in device_name:
        return "H100-PCIe" if "PCIe" in device_name else "H100-SXM"
    return next((k for k in ("A100", "L4") if k in device_name), None)


def flops_per_image(arch: str, size: int, **model_kwargs) -> float:
    """Forward + backward FLOPs for one (1, 1, size, size) image, as FlopCounterMode counts them (a MAC = 2)."""
    model = get_model(arch, **model_kwargs)
    lum = torch.rand(1, 1, size, size)
    with FlopCounterMode(display=False) as counter:
        F.l1_loss(model(lum), torch.zeros(1, 2, size, size)).backward()
    return float(counter.get_total_flops())


def time_variant(arch: str, size: int, batch: int, steps: int, warmup: int, device: str, bf16: bool,
                 channels_last: bool, compile_: bool, **model_kwargs) -> float:
    """Images per second over `steps` timed training steps after `warmup` untimed ones."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = get_model(arch, **model_kwargs).to(device).to(memory_format=fmt)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    forward = torch.compile(model) if compile_ else model
    lum = torch.rand(batch, 1, size, size, device=device).contiguous(memory_format=fmt)
    target = torch.rand(batch, 2, size, size, device=device) * 2 - 1
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16)

    def step() -> None:
        with autocast:
            loss = F.l1_loss(forward(lum).float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return batch * steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="unet_s")
    ap.add_argument("--base-width", type=positive_int, default=None, help="default: the architecture's own")
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--size", type=positive_int, default=256)
    ap.add_argument("--batch", type=positive_int, default=None, help="default 64 on CUDA, 4 on CPU")
    ap.add_argument("--steps", type=positive_int, default=None, help="timed steps; default 30 on CUDA, 3 on CPU")
    ap.add_argument("--warmup", type=non_negative_int, default=None, help="untimed steps; default 5 on CUDA, 1 on CPU")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="include the torch.compile variant (default: on CUDA only)")
    ap.add_argument("--peak", choices=sorted(PEAK_BF16), default=None, help="GPU for MFU (default: from its name)")
    ap.add_argument("--threads", type=non_negative_int, default=0, help="CPU threads (0: torch's default)")
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args()

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    if args.threads:
        torch.set_num_threads(args.threads)
    if cuda:
        torch.backends.cudnn.benchmark = True
    batch = args.batch or (64 if cuda else 4)
    steps = args.steps or (30 if cuda else 3)
    warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    do_compile = cuda if args.compile is None else args.compile
    kwargs = {"depth": args.depth, **({"base_width": args.base_width} if args.base_width is not None else {})}
    multiple = get_model(args.arch, **kwargs).multiple
    if args.size % multiple:
        ap.error(f"--size {args.size}: must divide by {multiple} for {args.arch} at depth {args.depth}")
    name = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    peak_key = args.peak or (peak_for(name) if cuda else None)
    flops = flops_per_image(args.arch, args.size, **kwargs)

    variants = [("fp32 eager, NCHW", False, False, False), ("bf16 autocast + channels_last", True, True, False)]
    if do_compile:
        variants.append(("bf16 + channels_last + compile", True, True, True))
    rows = []
    for label, bf16, cl, comp in variants:
        ips = time_variant(args.arch, args.size, batch, steps, warmup, device, bf16, cl, comp, **kwargs)
        mfu = flops * ips / PEAK_BF16[peak_key] if peak_key else None
        rows.append({"variant": label, "images_per_s": ips, "mfu": mfu})

    print(f"{args.arch} (depth {args.depth}) at {args.size}², batch {batch}, {steps} timed steps on {name}; "
          f"torch {torch.__version__}")
    print(f"model FLOPs per image, forward + backward: {flops / 1e9:.2f} GFLOP"
          + (f"; MFU against {peak_key} dense bf16 ({PEAK_BF16[peak_key] / 1e12:.0f} TFLOP/s)" if peak_key else ""))
    print("\n| variant | images/s | vs fp32 | MFU |\n|---|---:|---:|---:|")
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        print(f"| {r['variant']} | {r['images_per_s']:.2f} | {r['images_per_s'] / rows[0]['images_per_s']:.2f}× "
              f"| {mfu} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "arch": args.arch, "size": args.size, "batch": batch,
                       "flops_per_image": flops, "peak": peak_key, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    run_main(main)
