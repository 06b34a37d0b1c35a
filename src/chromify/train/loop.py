"""The training loop, top to bottom: L → ab regression (plus optional terms) on memory-mapped Lab shards.

Resumable: every `checkpoint_every` steps and on SIGTERM the full state is saved atomically; augmentation
randomness is derived from (seed, rank, step), so a resumed run replays exactly what an uninterrupted one does.
Under torchrun it is one DDP rank of N (see distributed.py): data partitioned by rank, only rank 0 writes, and
holds the output folder's lock for the whole run.
"""

from __future__ import annotations

import hashlib
import math
import os
import queue
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from chromify.config import ModelParams, TrainParams
from chromify.decode_search import DECODE_KEYS, ab_units, candidates, choose, describe, score_decodes
from chromify.errors import ConfigError, DataError, OutputBusyError, TrainingError
from chromify.loader import ShardSet, crop_flip, crop_flip_draws, to_model_tensors
from chromify.models import get_model
from chromify.train import distributed
from chromify.train.checkpoint import (
    CHECKPOINT,
    export_model,
    fingerprint_inputs,
    fingerprint_of,
    load_checkpoint,
    lock_out_dir,
    remove_stale_temp_files,
    restore_rng_state,
    rng_state,
    save_checkpoint,
    what_changed,
)
from chromify.train.losses import MIN_GAN_SIDE, GeneratorLoss, PatchDiscriminator, discriminator_loss

Callback = Callable[[str, dict[str, Any]], None]
T = TypeVar("T")


def lr_factor(progress: float, step: int, warmup_steps: int) -> float:
    """Linear warm-up over `warmup_steps`, then cosine decay to 5% over `progress` ∈ [0, 1]."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def augment(batch, crop: int, rng: np.random.Generator):
    """Per-sample random crop and horizontal flip: (B, 3, S, S) uint8 → (B, 3, crop, crop) uint8, on the host
    for a numpy batch (a CPU trainer), on its device for a tensor (a GPU trainer, whose host then only reads
    shards); the draws come from `rng` either way, so the result does not depend on the device."""
    return crop_flip(batch, crop, *crop_flip_draws(len(batch), batch.shape[-1], crop, rng))


def scaled_crops(lum: torch.Tensor, ab: torch.Tensor, out: int, crop: int, scale_min: float,
                 rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random-resized crops, batched on the tensors' device: per sample a square of side crop × U(scale_min, 1)
    at a random place, resampled to out × out, half of them mirrored.

    roi_align with an adaptive sampling ratio averages every source pixel under an output pixel, so shrinking
    is area-like. With a few hundred photos the model sees each one at many scales, not only one framing.
    """
    from torchvision.ops import roi_align

    b, _, s, _ = lum.shape
    sides = crop * rng.uniform(scale_min, 1.0, b)
    x0, y0 = rng.uniform(0.0, 1.0, b) * (s - sides), rng.uniform(0.0, 1.0, b) * (s - sides)
    flips = torch.from_numpy(rng.random(b) < 0.5).to(lum.device)
    boxes = torch.from_numpy(np.stack([np.arange(b), x0, y0, x0 + sides, y0 + sides], 1).astype(np.float32))
    both = roi_align(torch.cat([lum, ab], 1), boxes.to(lum.device), (out, out), sampling_ratio=-1, aligned=True)
    both = torch.where(flips[:, None, None, None], both.flip(-1), both)
    return both[:, :1], both[:, 1:]


def prefetch(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """Produce `items` on a background thread, `depth` ahead, so shard reads and crops overlap the step."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done, stop = object(), threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(done)
        except BaseException as exc:  # handed to the consumer, which raises it
            put(exc)

    threading.Thread(target=work, daemon=True, name="chromify-prefetch").start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def epoch_batches(data: ShardSet, batch_size: int, crop: int, seed: int, epoch: int, start: int, first_step: int,
                  env: distributed.DistEnv, whole: bool = False) -> Iterator[tuple[np.ndarray, np.random.Generator]]:
    """This rank's batches of one epoch from batch `start`, cropped and flipped unless `whole`, each with the
    generator for its further augmentation; batch k's randomness is (seed, rank, step)."""
    for k, batch in enumerate(data.batches(batch_size, seed, epoch, env.rank, env.world, start=start)):
        rng = np.random.default_rng([seed, env.rank, first_step + k])
        yield (batch if whole else augment(batch, crop, rng)), rng


def at_resolution(lum: torch.Tensor, ab: torch.Tensor, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Area-downscale a batch to the model's working resolution (0 or the same size: unchanged).

    Colour is low-frequency: a model that predicts ab at 64-128 px, upsampled under the full-resolution L, loses
    little, and each step costs (S / resolution)² less.
    """
    if not resolution or resolution == lum.shape[-1]:
        return lum, ab
    size = (resolution, resolution)
    return F.interpolate(lum, size=size, mode="area"), F.interpolate(ab, size=size, mode="area")


@torch.no_grad()
def validate(model: torch.nn.Module, data: ShardSet, device: str, batch_size: int = 32,
             resolution: int = 0) -> dict[str, float]:
    """L1 on ab/128 and PSNR of ab/128 (peak-to-peak 2) over the whole split."""
    was_training = model.training
    model.eval()
    l1 = se = n = 0.0
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=device.startswith("cuda"))
    for b in range(0, len(data), batch_size):
        lum, ab = at_resolution(*to_model_tensors(data.gather(np.arange(b, min(b + batch_size, len(data)))), device),
                                resolution)
        with autocast:
            pred = model(lum.contiguous(memory_format=torch.channels_last)).float()
        l1 += F.l1_loss(pred, ab, reduction="sum").item()
        se += F.mse_loss(pred, ab, reduction="sum").item()
        n += ab.numel()
    model.train(was_training)
    mse = se / max(n, 1)
    return {"val_l1": l1 / max(n, 1), "val_psnr_ab": 10 * math.log10(4.0 / max(mse, 1e-10))}


@torch.no_grad()
def preview(model: torch.nn.Module, data: ShardSet, device: str, n: int = 4,
            resolution: int = 0, chroma_gain: float = 1.0) -> dict[str, np.ndarray]:
    """The first `n` samples of a split with the model's ab: for the before/after grid in reports/."""
    was_training = model.training
    model.eval()
    truth = data.gather(np.arange(min(n, len(data))))
    lum, ab_truth = to_model_tensors(truth, device)
    small, _ = at_resolution(lum, ab_truth, resolution)
    ab = ab_units(model(small.contiguous(memory_format=torch.channels_last)), chroma_gain)
    ab = F.interpolate(ab, size=lum.shape[-2:], mode="bilinear", align_corners=False)
    model.train(was_training)
    return {"lab_truth": truth, "ab_pred": ab.cpu().numpy()}  # (n, 3, S, S) uint8, (n, 2, S, S) float ab


def bin_histogram_of(data: ShardSet, grid: int, max_images: int = 512) -> np.ndarray:
    """Pixel counts per ab bin over (up to `max_images` evenly spaced) training photos, every other pixel.

    Deterministic in the data alone, so every DDP rank derives the same numbers without talking to the others.
    """
    from chromify.ab_bins import bin_histogram

    picks = np.unique(np.linspace(0, len(data) - 1, min(max_images, len(data))).astype(np.int64))
    return sum(bin_histogram(data.gather(picks[i : i + 64])[:, 1:, ::2, ::2].astype(np.float32) - 128.0, grid)
               for i in range(0, len(picks), 64))


# Enough photos to rank decodes a few tenths of a dB apart; more only slows the end of training.
DECODE_SEARCH_IMAGES = 256


def note(message: str) -> None:
    print(f"chromify: {message}", file=sys.stderr, flush=True)


def search_decode(model: torch.nn.Module, val_set: ShardSet, mp: ModelParams, p: TrainParams,
                  device: str) -> dict[str, Any]:
    """Pick the exported decode on (up to DECODE_SEARCH_IMAGES of) the validation split; sets it on the model.

    With fewer photos than `train.decode_search_min_photos` the ranking would be noise: `chosen` is None then,
    and the model keeps params.yaml's decode.
    """
    if len(val_set) < p.decode_search_min_photos:
        why = (f"decode search skipped: {len(val_set)} validation photo(s), fewer than "
               f"train.decode_search_min_photos ({p.decode_search_min_photos}); the model decodes as params.yaml says")
        note(why)
        return {"chosen": None, "images": len(val_set), "note": why}
    samples = val_set.gather(np.arange(min(len(val_set), DECODE_SEARCH_IMAGES)))
    bins = mp.head == "bins"
    rows, info = score_decodes(model, samples, candidates(bins), p.resolution, device)
    chosen = choose(rows, p.decode_min_psnr_gain_db)
    if bins:
        model.temperature, model.prior_correction = chosen["temperature"], chosen["prior_correction"]
    note(f"decode chosen on {info['images']} validation photos: {describe(chosen)} "
         f"(PSNR {chosen['psnr_gain_db']:+.2f} dB over gray, ΔCF {chosen['delta_cf']:.1f}; floor "
         f"{p.decode_min_psnr_gain_db:+.2f} dB)")
    return {**info, "min_psnr_gain_db": p.decode_min_psnr_gain_db, "chosen": chosen, "rows": rows}


@contextmanager
def holding(out_dir: str | Path, env: distributed.DistEnv) -> Iterator[None]:
    """Rank 0, the one that writes, locks the output folder for the run. When another training holds it, every rank
    stops with the same error: the others would otherwise wait for rank 0 in their first collective."""
    with ExitStack() as held:
        failed: Exception | None = None  # rank 0's: another training holds the folder, or it cannot be locked
        if env.is_main:
            try:
                held.enter_context(lock_out_dir(out_dir))
            except (OutputBusyError, OSError) as exc:
                failed = exc
        busy = isinstance(failed, OutputBusyError)
        pid = float(failed.pid or 0) if busy else 0.0
        code, pid = distributed.agree_max(env, [2.0 if busy else float(failed is not None), pid])
        if failed is not None:
            raise failed
        if code == 2:
            raise OutputBusyError(str(out_dir), int(pid) or None)
        if code:
            raise DataError(f"{out_dir}: rank 0 cannot lock this folder (its error says why)")
        yield


def checked_model(mp: ModelParams, p: TrainParams, train_size: int, val_size: int, batch_size: int
                  ) -> tuple[torch.nn.Module, int]:
    """(the model, the crop) once the settings train() refuses before its first step pass: every one that needs
    no data, so benchmarks/quality.py can refuse a bad --set before any method trains."""
    crop = p.crop if 0 < p.crop < train_size else train_size
    if not 0.0 < p.scale_min <= 1.0:
        raise ConfigError(f"train.scale_min {p.scale_min} must lie in (0, 1]")
    model = get_model(mp.arch, **asdict(mp))
    checked = (("train.crop", crop), ("the stored (validation) size", val_size))
    if p.resolution:
        checked = (("train.resolution", p.resolution),)
    for what, size in checked:
        if size % model.multiple:
            raise ConfigError(f"{what} {size} must divide by {model.multiple} for {mp.arch} at depth {mp.depth}")
    bottleneck = (p.resolution or crop) // model.multiple
    batch_norm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if batch_norm and batch_size * bottleneck ** 2 < 2:  # torch refuses it at the first step, mid-traceback
        # resnet18_unet's encoder is torchvision's ResNet-18, BatchNorm whatever model.norm says
        way_out = (", or set model.norm: group" if mp.norm == "batch"
                   else f" ({mp.arch}'s encoder keeps BatchNorm whatever model.norm says)")
        raise ConfigError(f"a batch of {batch_size} at {p.resolution or crop} px leaves BatchNorm one value a "
                          f"channel at the {bottleneck}x{bottleneck} bottleneck: raise train.batch_size (per "
                          f"process) or the training size{way_out}")
    if p.gan_weight and (p.resolution or crop) < MIN_GAN_SIDE:  # else it fails once the adversarial phase starts
        raise ConfigError(f"train.gan_weight: the PatchGAN needs images of at least {MIN_GAN_SIDE} px, and this "
                          f"run trains at {p.resolution or crop} px (train.resolution, train.crop)")
    return model, crop


def compiler_check(cuda: bool) -> None:
    """torch.compile builds code with the machine's compiler at the first step, and without one fails there in a
    long traceback: Triton (CUDA) needs a C compiler, Inductor on CPU a C++ one. The images carry neither."""
    env, names, kind = ("CC", ("gcc", "clang"), "C") if cuda else ("CXX", ("g++",), "C++")
    chosen = os.environ.get(env, "").split()  # as the compilers read it: a command, maybe with flags
    if chosen:
        found, problem = shutil.which(chosen[0]), f"${env} ({chosen[0]}) is not on PATH"
    else:
        found, problem = next(filter(None, map(shutil.which, names)), None), f"no {' or '.join(names)} on PATH"
    if not found:
        raise ConfigError(f"train.compile needs a {kind} compiler on this machine and {problem}: install one, or set "
                          "train.compile: false")


def train(data_dir: str | Path, out_dir: str | Path, mp: ModelParams, p: TrainParams, seed: int,
          callbacks: tuple[Callback, ...] = ()) -> dict[str, Any]:
    """Train (or resume) and export the model to `out_dir`; returns the final metrics.

    Alone or under torchrun (rank and world from the environment); only rank 0 validates, writes and calls
    `callbacks(event, data)` with event ∈ start, step, epoch, end.
    """
    with distributed.session() as env, holding(out_dir, env):
        out_dir, cuda = Path(out_dir), env.device.startswith("cuda")

        def emit(event: str, data: dict[str, Any]) -> None:
            if env.is_main:
                for cb in callbacks:
                    cb(event, data)

        if p.compile:
            compiler_check(cuda)
        if p.num_threads:
            torch.set_num_threads(p.num_threads)
        if cuda:
            torch.backends.cudnn.benchmark = True  # the crop size is fixed: pick the fastest conv algorithms once
        train_set, val_set = ShardSet(Path(data_dir) / "train"), ShardSet(Path(data_dir) / "val")
        # A small folder can get no validation photo (the split is by hash): scores of nothing would read as a
        # perfect model in the curves and `dvc exp show`, so there are none, and the last weights are exported.
        validating = len(val_set) > 0
        if env.is_main and not validating:
            note(f"{Path(data_dir) / 'val'} holds no photo: no validation scores, no train.keep_best; "
                 "the last step's weights are exported")
        per_rank = len(train_set) // env.world
        if per_rank < 1:
            raise DataError(f"{data_dir}/train: {len(train_set)} sample(s) cannot feed {env.world} process(es)")
        batch_size = min(p.batch_size, per_rank)  # per process: the global batch is batch_size × world
        steps_per_epoch = per_rank // batch_size
        # the step budget is whichever of max_steps and epochs ends first: the schedule and the GAN's start
        # follow it (max_steps alone ignored a smaller epochs, whose run then ended at a high learning rate)
        total_steps = min(p.max_steps, p.epochs * steps_per_epoch) if p.max_steps else p.epochs * steps_per_epoch
        rescale = p.scale_min < 1.0  # random-resized crops (batched, on the device) instead of fixed-size ones
        crops_on_device = env.device.startswith("cuda") and not rescale  # the host only reads shards then

        torch.manual_seed(seed)
        model, crop = checked_model(mp, p, train_set.size, val_set.size, batch_size)
        model = model.to(env.device).to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
        ema = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(p.ema_decay),
        ) if p.ema_decay and env.is_main else None  # only rank 0 validates and exports, so only it keeps one
        binned = mp.head == "bins"
        bin_weights = None
        if binned:
            from chromify.ab_bins import rebalance_weights

            hist = bin_histogram_of(train_set, mp.bin_grid)
            if p.rebalance < 1.0:  # λ = 1 weighs every bin alike: no per-pixel lookup in the step at all
                bin_weights = torch.from_numpy(rebalance_weights(hist, p.rebalance, grid=mp.bin_grid))
            model.start_at_prior(hist)  # overwritten below when resuming
        criterion = GeneratorLoss(p, *((model.bins, bin_weights) if binned else ())).to(env.device)
        disc = opt_d = None
        if p.gan_weight:
            disc = PatchDiscriminator().to(env.device).to(memory_format=torch.channels_last)
            opt_d = torch.optim.Adam(disc.parameters(), lr=p.gan_lr, betas=(0.5, 0.999))  # pix2pix's settings

        # Resume only from a checkpoint written with the same params: anything else would silently mix two runs.
        # both splits: validation decides which weights train.keep_best exports (a new val split once resumed the
        # finished run and compared the old split's best score with the new one's)
        index_sha = hashlib.sha256(b"".join((Path(data_dir) / split / "index.json").read_bytes()
                                            for split in ("train", "val"))).hexdigest()
        inputs = fingerprint_inputs(mp, p, seed, env.world, index_sha)
        fingerprint = fingerprint_of(inputs)
        step, epoch, batch_in_epoch, elapsed_before, history = 0, 0, 0, 0.0, []
        step_rows: list[dict[str, float]] = []  # the logged steps, kept so a resumed run's curves start at step 1
        loss_sum, loss_steps = 0.0, 0  # the training loss since the last validation, for its mean
        best: dict[str, Any] | None = None  # the weights of the best validation so far (train.keep_best)
        state = load_checkpoint(out_dir)
        if state is None and env.is_main and (out_dir / CHECKPOINT).exists():
            note(f"{out_dir / CHECKPOINT} is of another format (written before checkpoints carried a checksum?); "
                 "starting fresh")
        if state is not None and state.get("fingerprint") != fingerprint:
            if env.is_main:  # named, so that a setting changed by mistake can be changed back to resume
                changed = what_changed(state["fingerprint_inputs"], inputs) if "fingerprint_inputs" in state else []
                said = ", ".join(changed) if changed else "other params, data, code or world size"
                note(f"{out_dir / CHECKPOINT} is another run's ({said}); starting fresh")
            state = None
        if state is not None:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            if ema is not None:
                ema.load_state_dict(state["ema"])
            if disc is not None:
                disc.load_state_dict(state["discriminator"])
                opt_d.load_state_dict(state["optimizer_d"])
            step, elapsed_before = state["schedule"]["step"], state["schedule"]["elapsed_s"]
            epoch, batch_in_epoch = state["loader"]["epoch"], state["loader"]["batch_in_epoch"]
            history = state["history"]
            step_rows = state.get("steps", [])
            loss_sum, loss_steps = state.get("loss_since_validation", (0.0, 0))
            best = state.get("best")
            restore_rng_state(state["rng"])
            if env.is_main:  # said in logs too (DVC, KFP), not only on a terminal
                note(f"resuming at step {step} from {out_dir / CHECKPOINT}")
        if env.is_main:
            remove_stale_temp_files(out_dir)

        wrapped, disc_wrapped = model, disc
        if env.world > 1:
            ids = [env.local_rank] if cuda else None
            wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
            if disc is not None:
                disc_wrapped = torch.nn.parallel.DistributedDataParallel(disc, device_ids=ids)
        forward = torch.compile(wrapped) if p.compile else wrapped
        autocast = torch.autocast(torch.device(env.device).type, dtype=torch.bfloat16, enabled=cuda)  # fp32 on CPU

        t0 = time.monotonic()

        def save() -> None:
            if env.is_main:
                save_checkpoint(out_dir, {
                    "fingerprint": fingerprint, "fingerprint_inputs": inputs,
                    "model": model.state_dict(), "optimizer": opt.state_dict(),
                    "scaler": None,  # bf16 autocast needs no loss scaling; the key is kept for fp16 variants
                    "ema": ema.state_dict() if ema is not None else None,
                    "discriminator": disc.state_dict() if disc is not None else None,
                    "optimizer_d": opt_d.state_dict() if opt_d is not None else None,
                    "schedule": {"step": step, "elapsed_s": elapsed_before + time.monotonic() - t0},
                    "loader": {"epoch": epoch, "batch_in_epoch": batch_in_epoch},
                    "rng": rng_state(), "history": history, "steps": step_rows, "best": best,
                    "loss_since_validation": (float(loss_sum), loss_steps),
                })

        # SIGTERM (a preempted node, a cancelled pipeline) and SIGINT (Ctrl-C) end the run at a step boundary with
        # a checkpoint, instead of losing the steps since the last one.
        stop = {"signal": 0}
        on_main_thread = threading.current_thread() is threading.main_thread()
        previous_handlers = {s: signal.signal(s, lambda signum, _: stop.update(signal=signum))
                             for s in (signal.SIGTERM, signal.SIGINT)} if on_main_thread else {}
        budget_s = p.max_minutes * 60 if p.max_minutes else math.inf
        emit("start", {"resumed_from_step": step, "validated_through_step": history[-1]["step"] if history else 0,
                       "total_steps": total_steps, "device": env.device, "world": env.world, "batch_size": batch_size,
                       "fingerprint": fingerprint})
        interrupted, stopping, gan_on = 0, False, False
        terms: dict[str, torch.Tensor] | None = None
        seen, t_rate = 0, time.monotonic()

        def log_step() -> None:
            nonlocal seen, t_rate
            now = time.monotonic()
            rate, seen, t_rate = seen / max(now - t_rate, 1e-9), 0, now
            row = {"step": step, "loss": terms["total"].item(), "lr": lr, "images_per_s": rate,
                   **{f"loss_{k}": v.item() for k, v in terms.items() if k != "total"}}
            if env.is_main:
                step_rows.append({k: float(v) for k, v in row.items()})
            emit("step", row)

        model.train()
        try:
            while epoch < p.epochs:
                for batch, rng in prefetch(epoch_batches(train_set, batch_size, crop, seed, epoch, batch_in_epoch,
                                                         step, env, whole=rescale or crops_on_device)):
                    # Every rank must take the same decisions, so the flags and the clock are agreed first.
                    signalled, elapsed = distributed.agree_max(
                        env, [float(stop["signal"]), elapsed_before + time.monotonic() - t0])
                    interrupted = int(signalled)  # the signal's number; SIGTERM wins if ranks got different ones
                    stopping = interrupted or elapsed >= budget_s or step >= total_steps
                    if stopping:
                        break
                    progress = max(step / total_steps, elapsed / budget_s)
                    lr = p.lr * lr_factor(progress, step, p.warmup_steps)
                    for group in opt.param_groups:
                        group["lr"] = lr
                    gan_on = disc is not None and progress >= p.gan_start_fraction

                    if rescale:
                        lum, ab = scaled_crops(*to_model_tensors(batch, env.device), p.resolution or crop, crop,
                                               p.scale_min, rng)
                    else:
                        if crops_on_device:
                            batch = augment(torch.from_numpy(batch).to(env.device, non_blocking=True), crop, rng)
                        lum, ab = at_resolution(*to_model_tensors(batch, env.device), p.resolution)
                    lum = lum.contiguous(memory_format=torch.channels_last)
                    if disc is not None:
                        disc.requires_grad_(False)  # the generator's step must not train D
                    with autocast:
                        # (B, 2, crop, crop) ab/128, and with the bins head the (B, Q, crop, crop) logits
                        pred, logits = forward(lum, with_logits=True) if binned else (forward(lum), None)
                        terms = criterion(lum, pred, ab, disc if gan_on else None, logits)
                    opt.zero_grad(set_to_none=True)
                    terms["total"].backward()
                    if p.grad_clip:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip)
                    opt.step()
                    if gan_on:
                        disc.requires_grad_(True)
                        with autocast:
                            terms["discriminator"] = discriminator_loss(disc_wrapped, lum, ab, pred.detach())
                        opt_d.zero_grad(set_to_none=True)
                        terms["discriminator"].backward()
                        opt_d.step()
                    if ema is not None:
                        ema.update_parameters(model)
                    loss_sum, loss_steps = terms["total"].detach().float() + loss_sum, loss_steps + 1  # no sync
                    step, batch_in_epoch, seen = step + 1, batch_in_epoch + 1, seen + len(batch) * env.world

                    if env.is_main and p.log_every and step % p.log_every == 0:
                        log_step()
                    if p.checkpoint_every and step % p.checkpoint_every == 0:
                        save()
                if stopping:
                    break
                epoch, batch_in_epoch = epoch + 1, 0
                since = step - (history[-1]["step"] if history else 0)
                if env.is_main and validating and since and (since >= p.val_every_steps or epoch == p.epochs):
                    shown = ema.module if ema is not None else model
                    mean_loss = float(loss_sum) / loss_steps if loss_steps else math.nan
                    loss_sum, loss_steps = 0.0, 0
                    row = {"epoch": epoch, "step": step, "train_loss": mean_loss,
                           **validate(shown, val_set, env.device, resolution=p.resolution)}
                    history.append(row)
                    # With a discriminator, only its phase competes: the regression warm-up usually wins on PSNR,
                    # and keeping it would quietly export a model the adversarial term never touched.
                    if p.keep_best and (disc is None or gan_on) and (
                            best is None or row["val_psnr_ab"] > best["val_psnr_ab"]):
                        best = {"val_psnr_ab": row["val_psnr_ab"], "step": step,
                                "model": {k: v.detach().to("cpu", copy=True) for k, v in shown.state_dict().items()}}
                    emit("epoch", {**row, "samples": preview(shown, val_set, env.device, resolution=p.resolution)})
            if not interrupted:  # a signal during the last epoch's validation, which no next batch would see
                interrupted = int(distributed.agree_max(env, [float(stop["signal"])])[0])
            if interrupted:
                # Still under this run's handlers, and no rank leaves before the checkpoint is written: the first
                # rank to exit makes torchrun SIGTERM the others, which would kill rank 0 mid-save.
                save()
                distributed.barrier(env)
        finally:
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
        if interrupted:
            if env.is_main:
                note(f"stopped by {signal.Signals(interrupted).name} at step {step}; the checkpoint in {out_dir} "
                     "resumes the run (the same command, or `dvc repro`; a new `dvc exp run` starts afresh)")
            raise SystemExit(128 + interrupted)  # the conventional exit status: 143 for SIGTERM, 130 for SIGINT

        final = {"step": step, "epochs": epoch, "train_seconds": elapsed_before + time.monotonic() - t0}
        if env.is_main and p.log_every and terms and seen:
            log_step()  # the curves end where training did; a run shorter than log_every still gets its point
        if env.is_main:
            save()
            kept = ema.module if ema is not None else model
            final["exported_step"] = step
            if validating:
                final.update(validate(kept, val_set, env.device, resolution=p.resolution))
            if best is not None and not best["val_psnr_ab"] <= final["val_psnr_ab"]:  # NaN: diverged since best
                # Early stopping after the fact: on a few hundred photos the validation score can peak long
                # before the budget ends, and the last weights are then only the most over-fitted ones.
                kept.load_state_dict(best["model"])
                final.update(validate(kept, val_set, env.device, resolution=p.resolution), exported_step=best["step"])
                note(f"exported the weights of step {best['step']}, the best validation (val_psnr_ab "
                     f"{best['val_psnr_ab']:.2f} dB); the last step's were worse")
            if not all(t.isfinite().all() for t in kept.state_dict().values() if t.is_floating_point()):
                last = terms["total"].item() if terms is not None else math.nan
                raise TrainingError(f"{out_dir}: training diverged (weights not finite at step {step}, last loss "
                                    f"{last:.4g}); nothing exported: lower train.lr ({p.lr:g})"
                                    + ("" if p.grad_clip else " or set train.grad_clip"))
            exported = asdict(mp)
            searched = search_decode(kept, val_set, mp, p, env.device) if p.decode_search else None
            if searched is not None and searched["chosen"] is not None:
                final["decode"] = chosen = searched["chosen"]
                exported.update({k: chosen[k] for k in DECODE_KEYS if chosen[k] is not None})
            export_model(out_dir, kept, {
                "format": "chromify-model-v1", "arch": mp.arch, "model": exported,
                "size": p.resolution or train_set.size,
                "multiple": model.multiple,
                "input": "L/100 in [0, 1], (B, 1, H, W)", "output": "ab/128 in (-1, 1), (B, 2, H, W)",
            })
            samples = preview(kept, val_set, env.device, resolution=p.resolution, chroma_gain=exported["chroma_gain"])
            emit("end", {**final, "history": history, "steps": step_rows, "samples": samples,
                         "decode_search": searched})
        return {**final, "history": history}
