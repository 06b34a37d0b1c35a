"""Read shards by memory map and hand out batches: no per-sample file I/O, deterministic per seed and epoch."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from chromify.shards import read_index


class ShardSet:
    """All shards of one split, memory-mapped; samples are (3, S, S) uint8 Lab."""

    def __init__(self, split_dir: str | Path):
        self.split_dir = Path(split_dir)
        self.index = read_index(self.split_dir)
        self.arrays = [np.load(self.split_dir / s["file"], mmap_mode="r") for s in self.index["shards"]]
        self.offsets = np.cumsum([0] + [len(a) for a in self.arrays])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def size(self) -> int:
        return int(self.index["shape"][-1])

    def order(self, seed: int, epoch: int, rank: int = 0, world: int = 1) -> np.ndarray:
        """Global sample order for one epoch: shards shuffled, then samples within each; rank r takes r::world.

        Shuffling shard by shard keeps reads local (one shard's pages at a time) on data larger than memory.
        """
        rng = np.random.default_rng([seed, epoch])
        parts = []
        for s in rng.permutation(len(self.arrays)):
            lo, hi = self.offsets[s], self.offsets[s + 1]
            parts.append(lo + rng.permutation(hi - lo))
        order = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        # Every rank gets the same number of samples, so DDP ranks take the same number of steps.
        usable = len(order) - len(order) % world if len(order) >= world else len(order)
        return order[:usable][rank::world]

    def gather(self, indices: np.ndarray) -> np.ndarray:
        """(B,) global indices → (B, 3, S, S) uint8, reading each shard once."""
        out = np.empty((len(indices), *self.index["shape"]), dtype=np.uint8)
        shard_of = np.searchsorted(self.offsets, indices, side="right") - 1
        for s in np.unique(shard_of):
            sel = np.nonzero(shard_of == s)[0]
            local = indices[sel] - self.offsets[s]
            sort = np.argsort(local)
            out[sel[sort]] = self.arrays[s][local[sort]]
        return out

    def batches(self, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1,
                start: int = 0, drop_last: bool = True) -> Iterator[np.ndarray]:
        """Batches of one epoch from batch number `start` (for resuming mid-epoch)."""
        order = self.order(seed, epoch, rank, world)
        n = len(order) // batch_size if drop_last else -(-len(order) // batch_size)
        for b in range(start, n):
            yield self.gather(order[b * batch_size : (b + 1) * batch_size])

    def all(self) -> np.ndarray:
        return self.gather(np.arange(len(self)))


def to_model_tensors(batch: np.ndarray, device: str = "cpu"):
    """(B, 3, S, S) uint8 → L in [0, 1] as (B, 1, S, S) and ab/128 in [-1, 1) as (B, 2, S, S), float32."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(batch)).to(device, non_blocking=True).float()
    return t[:, :1] / 255.0, (t[:, 1:] - 128.0) / 128.0
