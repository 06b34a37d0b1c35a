"""The training loop, top to bottom: L → ab regression on memory-mapped Lab shards.

Resumable: every `checkpoint_every` steps and on SIGTERM the full state is saved atomically; augmentation
randomness is derived from (seed, step), so a resumed run replays exactly what an uninterrupted one does.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from chromify.config import ModelParams, TrainParams
from chromify.loader import ShardSet, to_model_tensors
from chromify.models import get_model
from chromify.train.checkpoint import export_model, load_checkpoint, save_checkpoint

Callback = Callable[[str, dict[str, Any]], None]


def pick_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def lr_factor(progress: float, step: int, warmup_steps: int) -> float:
    """Linear warm-up, then cosine decay to 5% over `progress` ∈ [0, 1]."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def augment(lum: torch.Tensor, ab: torch.Tensor, crop: int, gen: torch.Generator):
    """Per-sample random crop and horizontal flip, on whatever device the batch is on."""
    b, _, h, w = lum.shape
    if crop and crop < h:
        ys = torch.randint(0, h - crop + 1, (b,), generator=gen).tolist()
        xs = torch.randint(0, w - crop + 1, (b,), generator=gen).tolist()
        lum = torch.stack([lum[i, :, y : y + crop, x : x + crop] for i, (y, x) in enumerate(zip(ys, xs, strict=True))])
        ab = torch.stack([ab[i, :, y : y + crop, x : x + crop] for i, (y, x) in enumerate(zip(ys, xs, strict=True))])
    flip = (torch.rand(b, generator=gen) < 0.5).to(lum.device).view(b, 1, 1, 1)
    return torch.where(flip, lum.flip(-1), lum), torch.where(flip, ab.flip(-1), ab)


def colourfulness_term(ab: torch.Tensor) -> torch.Tensor:
    """Mean chroma of ab/128 (B, 2, H, W): larger for saturated colour, 0 for gray."""
    return torch.sqrt(ab.pow(2).sum(1) + 1e-6).mean()


def compute_loss(pred: torch.Tensor, target: torch.Tensor, p: TrainParams) -> torch.Tensor:
    if p.loss == "huber":
        loss = F.smooth_l1_loss(pred, target, beta=0.05)
    else:
        loss = F.l1_loss(pred, target)
    if p.colourfulness_weight:
        # Pushes the output's chroma towards the truth's, against L1's pull to the desaturated mean.
        loss = loss + p.colourfulness_weight * (colourfulness_term(target) - colourfulness_term(pred)).abs()
    return loss


@torch.no_grad()
def validate(model: torch.nn.Module, data: ShardSet, device: str, batch_size: int = 32) -> dict[str, float]:
    """L1 on ab/128 and PSNR of ab on the whole split."""
    model.eval()
    l1 = se = n = 0.0
    for b in range(0, len(data), batch_size):
        lum, ab = to_model_tensors(data.gather(np.arange(b, min(b + batch_size, len(data)))), device)
        pred = model(lum).float()
        l1 += F.l1_loss(pred, ab, reduction="sum").item()
        se += F.mse_loss(pred, ab, reduction="sum").item()
        n += ab.numel()
    model.train()
    mse = se / max(n, 1)
    return {"val_l1": l1 / max(n, 1), "val_psnr_ab": 10 * math.log10(4.0 / max(mse, 1e-10))}


def train(data_dir: str | Path, out_dir: str | Path, mp: ModelParams, p: TrainParams, seed: int,
          callbacks: tuple[Callback, ...] = (), rank: int = 0, world: int = 1) -> dict[str, Any]:
    """Train (or resume) and export the model to `out_dir`; returns the final metrics."""
    out_dir = Path(out_dir)
    device = pick_device()
    if p.num_threads:
        torch.set_num_threads(p.num_threads)
    torch.manual_seed(seed)
    train_set, val_set = ShardSet(Path(data_dir) / "train"), ShardSet(Path(data_dir) / "val")
    batch_size = min(p.batch_size, len(train_set) // world)
    steps_per_epoch = max(1, len(train_set) // world // batch_size)
    total_steps = p.max_steps or p.epochs * steps_per_epoch

    model = get_model(mp.arch, **asdict(mp)).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    ema = torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(p.ema_decay)) if p.ema_decay else None
    step, epoch, batch_in_epoch, elapsed_before = 0, 0, 0, 0.0
    history: list[dict[str, Any]] = []
    state = load_checkpoint(out_dir)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if ema is not None and state.get("ema"):
            ema.load_state_dict(state["ema"])
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        elapsed_before, history = state["elapsed_s"], state["history"]
        torch.set_rng_state(state["torch_rng"])
    for cb in callbacks:
        cb("start", {"resumed_from_step": step, "total_steps": total_steps, "device": device})

    wrapped = model
    if world > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
    forward = torch.compile(wrapped) if p.compile else wrapped
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")  # fp32 on CPU

    stop = {"signal": False}
    previous_handler = signal.signal(signal.SIGTERM, lambda *_: stop.update(signal=True)) if rank == 0 else None

    def checkpoint() -> None:
        if rank == 0:
            save_checkpoint(out_dir, {
                "model": model.state_dict(), "optimizer": opt.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                "elapsed_s": elapsed_before + time.monotonic() - t0, "history": history,
                "torch_rng": torch.get_rng_state(),
            })

    t0 = time.monotonic()
    budget_s = p.max_minutes * 60 if p.max_minutes else math.inf
    seen, t_rate = 0, time.monotonic()
    model.train()
    done = False
    while not done and epoch < p.epochs:
        for batch in train_set.batches(batch_size, seed, epoch, rank, world, start=batch_in_epoch):
            elapsed = elapsed_before + time.monotonic() - t0
            progress = max(step / total_steps, elapsed / budget_s)
            for group in opt.param_groups:
                group["lr"] = p.lr * lr_factor(progress, step, p.warmup_steps)
            gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
            lum, ab = augment(*to_model_tensors(batch, device), p.crop, gen)
            lum = lum.contiguous(memory_format=torch.channels_last)
            with autocast:
                pred = forward(lum)
            loss = compute_loss(pred.float(), ab, p)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if p.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip)
            opt.step()
            if ema is not None:
                ema.update_parameters(model)
            step += 1
            batch_in_epoch += 1
            seen += len(batch) * world
            if step % 10 == 0:
                now = time.monotonic()
                rate, seen, t_rate = seen / max(now - t_rate, 1e-9), 0, now
                for cb in callbacks:
                    cb("step", {"step": step, "loss": loss.item(), "lr": opt.param_groups[0]["lr"],
                                "images_per_s": rate})
            if p.checkpoint_every and step % p.checkpoint_every == 0:
                checkpoint()
            out_of_time = elapsed_before + time.monotonic() - t0 >= budget_s
            if stop["signal"] or out_of_time or (p.max_steps and step >= p.max_steps):
                done = True
                break
        else:
            epoch, batch_in_epoch = epoch + 1, 0
            val_interval = max(1, math.ceil(50 / steps_per_epoch))
            if rank == 0 and (epoch % val_interval == 0 or epoch == p.epochs):
                row = {"epoch": epoch, "step": step, "train_loss": loss.item(), **validate(model, val_set, device)}
                history.append(row)
                for cb in callbacks:
                    cb("epoch", row)
    if stop["signal"]:
        checkpoint()
        raise SystemExit(143)  # the conventional exit for SIGTERM; the checkpoint above resumes the run
    if previous_handler is not None:
        signal.signal(signal.SIGTERM, previous_handler)

    final = {"step": step, "epochs": epoch, "train_seconds": elapsed_before + time.monotonic() - t0}
    if rank == 0:
        checkpoint()
        best = ema.module if ema is not None else model
        final.update(validate(best, val_set, device))
        export_model(out_dir, best, {
            "format": "chromify-model-v1", "arch": mp.arch, "model": asdict(mp), "size": train_set.size,
            "input": "L/100 in [0, 1], (B, 1, H, W)", "output": "ab/128 in (-1, 1), (B, 2, H, W)",
        })
        for cb in callbacks:
            cb("end", {**final, "history": history})
    return {**final, "history": history}
