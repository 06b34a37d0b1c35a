"""DDP switched on by the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK): the same `train()` runs alone
or as one of N processes, one per GPU; rank 0 is the only one that writes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: its rank among `world` processes and the device it drives."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"
    owns_group: bool = False  # True when setup() created the process group, so teardown() must destroy it
    control: Any = field(default=None, repr=False)  # a gloo group for host-side decisions (see agree_max)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup() -> DistEnv:
    """Read torchrun's environment; with WORLD_SIZE > 1 join the process group (nccl on CUDA, gloo on CPU)."""
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    cuda = torch.cuda.is_available()
    device = f"cuda:{local_rank}" if cuda else "cpu"
    if cuda:
        torch.cuda.set_device(local_rank)
    if world == 1:
        return DistEnv(device=device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend="nccl" if cuda else "gloo", init_method="env://", rank=rank, world_size=world)
    # Host-side flags go over gloo even when gradients go over nccl: a flag then never waits for the GPU queue,
    # and the CPU keeps launching work ahead of it. new_group is collective: every rank creates it here, in step.
    control = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD
    return DistEnv(rank, world, local_rank, device, owns, control)


@contextmanager
def session() -> Iterator[DistEnv]:
    """setup() … teardown(), also when training ends by an exception or SystemExit."""
    env = setup()
    try:
        yield env
    finally:
        teardown(env)


def teardown(env: DistEnv) -> None:
    """Leave the process group if setup() joined it; a no-op for a single process."""
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def agree_max(env: DistEnv, values: list[float]) -> list[float]:
    """Element-wise maximum over ranks, so that every rank takes the same decision (stop now, lr, GAN phase)."""
    if env.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=env.control)
    return t.tolist()


def barrier(env: DistEnv) -> None:
    """Wait for every rank (on the host-side group, so no GPU work is involved)."""
    if env.world > 1:
        dist.barrier(group=env.control)
