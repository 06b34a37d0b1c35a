"""Read shards by memory map and hand out batches: no per-sample file I/O, deterministic per seed and epoch.

Shards are cut from photos sorted by content hash, so each shard is already a random sample of the split:
visiting shards in a shuffled order and samples in a shuffled order within each shard mixes as well as a
global shuffle, while reading one shard's pages at a time when the data is larger than memory.
torch is imported only by the functions that return tensors (and by `ShardBatches`, on first use).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from chromify.errors import DataError
from chromify.shards import read_index


class ShardSet:
    """All shards of one split, memory-mapped; samples are (3, S, S) uint8 Lab."""

    def __init__(self, split_dir: str | Path):
        self.split_dir = Path(split_dir)
        self.index = read_index(self.split_dir)
        shape = tuple(self.index["shape"])
        self.arrays = []
        for s in self.index["shards"]:
            path = self.split_dir / s["file"]
            try:
                arr = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise DataError(f"{path}: cannot open shard ({exc})") from None
            if arr.dtype != np.uint8 or arr.shape != (s["count"], *shape):
                raise DataError(f"{path}: holds {arr.dtype}{list(arr.shape)}, the index says uint8"
                                f"{[s['count'], *shape]}; re-run preprocess")
            self.arrays.append(arr)
        self.offsets = np.cumsum([0] + [len(a) for a in self.arrays])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def size(self) -> int:
        return int(self.index["shape"][-1])

    def order(self, seed: int, epoch: int, rank: int = 0, world: int = 1) -> np.ndarray:
        """Sample order of one epoch for DDP rank `rank` of `world`: shards shuffled, then samples within each.

        Ranks take interleaved positions of one global order, cut to a multiple of `world` so that every rank
        takes the same number of steps: disjoint, and together all but fewer than `world` samples.
        """
        rng = np.random.default_rng([seed, epoch])
        parts = []
        for s in rng.permutation(len(self.arrays)):
            lo, hi = self.offsets[s], self.offsets[s + 1]
            parts.append(lo + rng.permutation(hi - lo))
        order = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        usable = len(order) - len(order) % world
        return order[:usable][rank::world]

    def batch_count(self, batch_size: int, rank: int = 0, world: int = 1, drop_last: bool = True) -> int:
        n = (len(self) - len(self) % world) // world
        return n // batch_size if drop_last else -(-n // batch_size)

    def batch_orders(self, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1,
                     worker: int = 0, workers: int = 1, start: int = 0, drop_last: bool = True
                     ) -> Iterator[tuple[int, np.ndarray]]:
        """(batch number, sample indices) of one epoch for this rank and DataLoader worker, from batch `start`.

        Worker w of n takes batches start + w, start + w + n, ...: the round-robin order in which a DataLoader
        collects them, so the stream of batches is the same for any number of workers.
        """
        order = self.order(seed, epoch, rank, world)
        n = self.batch_count(batch_size, rank, world, drop_last)
        for b in range(start + worker, n, workers):
            yield b, order[b * batch_size : (b + 1) * batch_size]

    def gather(self, indices: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """(B,) global indices → (B, 3, S, S) uint8 (into `out` if given).

        One copy per sample, straight from the memory map into its row of `out`: each run of indices that fall
        in one shard (a batch of `order` spans one or two) is a single `np.take`.
        """
        indices = np.asarray(indices, dtype=np.int64)
        if out is None:
            out = np.empty((len(indices), *self.index["shape"]), dtype=np.uint8)
        if len(indices) == 0:
            return out
        if indices.min() < 0 or indices.max() >= len(self):
            raise IndexError(f"sample index out of range 0..{len(self) - 1}")
        shard_of = np.searchsorted(self.offsets, indices, side="right") - 1
        cuts = [0, *(np.flatnonzero(np.diff(shard_of)) + 1).tolist(), len(indices)]
        for lo, hi in zip(cuts[:-1], cuts[1:], strict=False):
            s = shard_of[lo]
            # mode="clip": the range is checked above, and "raise" would copy through a temporary.
            np.take(self.arrays[s], indices[lo:hi] - self.offsets[s], axis=0, out=out[lo:hi], mode="clip")
        return out

    def batches(self, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1,
                start: int = 0, drop_last: bool = True) -> Iterator[np.ndarray]:
        """Batches of one epoch from batch number `start` (for resuming mid-epoch), in this process."""
        for _, idx in self.batch_orders(batch_size, seed, epoch, rank, world, start=start, drop_last=drop_last):
            yield self.gather(idx)

    def all(self) -> np.ndarray:
        return self.gather(np.arange(len(self)))


def to_model_tensors(batch, device: str = "cpu", out=None):
    """(B, 3, S, S) uint8 (numpy or torch) → L/255 in [0, 1] as (B, 1, S, S) and ab/128 in [-1, 1) as
    (B, 2, S, S), float32 on `device` (views of `out`, a (B, 3, S, S) float32 tensor, if given). Converting
    after the transfer moves a quarter of the bytes."""
    import torch

    t = batch if isinstance(batch, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(batch))
    t = t.to(device, non_blocking=True)
    out = t.float() if out is None else out.copy_(t)
    # In place on the one float copy: a 64 x 256² batch is 50 MB, and every extra temporary costs as much.
    lum, ab = out[:, :1], out[:, 1:]
    lum.div_(255.0)
    ab.sub_(128.0).div_(128.0)
    return lum, ab


def crop_flip_draws(b: int, size: int, crop: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Per-sample crop corners (ys, xs) and flips for `crop_flip`, drawn from `rng` (the host's, so that the
    result does not depend on the device that applies them)."""
    ys, xs = rng.integers(0, size - crop + 1, b), rng.integers(0, size - crop + 1, b)
    return ys, xs, rng.random(b) < 0.5


def crop_flip(batch, crop: int, ys, xs, flips):
    """(B, C, S, S) → (B, C, crop, crop): sample i cut at (ys[i], xs[i]), mirrored where flips[i].

    A numpy batch is cut on the host, sample by sample (slices are copies at memory speed there); a torch tensor
    in one gather on its own device, so a GPU trainer's host only reads shards.
    """
    if isinstance(batch, np.ndarray):
        b, c = batch.shape[:2]
        out = np.empty((b, c, crop, crop), dtype=batch.dtype)
        for i in range(b):
            patch = batch[i, :, ys[i] : ys[i] + crop, xs[i] : xs[i] + crop]
            out[i] = patch[..., ::-1] if flips[i] else patch
        return out
    import torch

    b = batch.shape[0]
    ys, xs, flips = (torch.as_tensor(np.asarray(v)) for v in (ys, xs, flips))
    ar = torch.arange(crop)
    rows = (ys[:, None] + ar)[:, :, None]  # (B, crop, 1)
    cols = (xs[:, None] + torch.where(flips[:, None], crop - 1 - ar, ar))[:, None, :]  # (B, 1, crop)
    dev = batch.device
    bi = torch.arange(b)[:, None, None]
    # Advanced indices around a slice put the gathered dims first: (B, crop, crop, C) → (B, C, crop, crop).
    out = batch[bi.to(dev), :, rows.to(dev, non_blocking=True), cols.to(dev, non_blocking=True)]
    return out.permute(0, 3, 1, 2).contiguous()


def random_crop_flip(batch, crop: int, gen):
    """Per-sample random crop and horizontal flip of a (B, C, S, S) tensor on its own device, in one gather,
    with random numbers from the torch CPU generator `gen` (for DataLoader users). crop 0: flip only."""
    import torch

    b, s = batch.shape[0], batch.shape[-1]
    crop = crop if 0 < crop < s else s
    ys = torch.randint(0, s - crop + 1, (b,), generator=gen)
    xs = torch.randint(0, s - crop + 1, (b,), generator=gen)
    return crop_flip(batch, crop, ys.numpy(), xs.numpy(), (torch.rand(b, generator=gen) < 0.5).numpy())


def _shard_batches_class():
    import torch

    class ShardBatches(torch.utils.data.IterableDataset):
        """Batches of one split for `torch.utils.data.DataLoader(ds, batch_size=None, num_workers=n)`.

        Partitioned by DDP rank and by DataLoader worker (worker w of n takes every n-th batch from the w-th,
        which the DataLoader collects round-robin: the stream is the same for any n). Yields (L, ab) float32 tensors as
        `to_model_tensors`, or the (B, 3, S, S) uint8 batch with `raw=True`: a quarter of the bytes to pass
        between processes, pin and copy, and no float pass over memory on the CPU (several times the throughput);
        convert on the GPU with `to_model_tensors(batch, "cuda")`. Call `set_epoch` before each epoch; it
        reaches persistent workers too.
        """

        def __init__(self, split_dir: str | Path, batch_size: int, seed: int, rank: int = 0, world: int = 1,
                     drop_last: bool = True, raw: bool = False, start: int = 0):
            import multiprocessing

            self.split_dir, self.batch_size, self.seed = str(split_dir), batch_size, seed
            self.rank, self.world, self.drop_last, self.raw = rank, world, drop_last, raw
            # (epoch, start batch) in shared memory: persistent DataLoader workers see every set_epoch.
            self._position = multiprocessing.RawArray("q", [0, start])
            self._shards: ShardSet | None = None  # opened in each worker: memory maps are not sent across

        @property
        def epoch(self) -> int:
            return int(self._position[0])

        def set_epoch(self, epoch: int, start: int = 0) -> None:
            """Epoch (and first batch, to resume mid-epoch) of the next iteration, in every worker."""
            self._position[0], self._position[1] = epoch, start

        def _set(self) -> ShardSet:
            if self._shards is None:
                self._shards = ShardSet(self.split_dir)
            return self._shards

        def __getstate__(self) -> dict:
            return {**self.__dict__, "_shards": None}

        def __len__(self) -> int:
            n = self._set().batch_count(self.batch_size, self.rank, self.world, self.drop_last)
            return max(0, n - int(self._position[1]))

        def __iter__(self):
            info = torch.utils.data.get_worker_info()
            worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
            shards = self._set()
            epoch, start = int(self._position[0]), int(self._position[1])
            shape = tuple(shards.index["shape"])
            scratch = None
            for _, idx in shards.batch_orders(self.batch_size, self.seed, epoch, self.rank, self.world,
                                              worker, workers, start, self.drop_last):
                if self.raw:
                    # In a worker, gathered straight into shared memory: the DataLoader then hands the batch
                    # over without copying its 12.5 MB (at 64 x 256²) a second time.
                    batch = torch.empty((len(idx), *shape), dtype=torch.uint8)
                    if info is not None:
                        batch.share_memory_()
                    shards.gather(idx, out=batch.numpy())
                    yield batch
                    continue
                # Float batches: the uint8 gather reuses one buffer, and the floats are written once, into
                # shared memory in a worker (the DataLoader would otherwise copy their 50 MB there).
                if scratch is None or len(scratch) != len(idx):
                    scratch = np.empty((len(idx), *shape), dtype=np.uint8)
                out = torch.empty((len(idx), *shape), dtype=torch.float32)
                if info is not None:
                    out.share_memory_()
                yield to_model_tensors(shards.gather(idx, out=scratch), out=out)

    ShardBatches.__module__, ShardBatches.__qualname__ = __name__, "ShardBatches"
    return ShardBatches


def __getattr__(name: str):
    # PEP 562: `chromify.loader.ShardBatches` subclasses a torch class, so it is built on first access only;
    # being a module attribute afterwards, it pickles by name into spawned DataLoader workers.
    if name == "ShardBatches":
        cls = _shard_batches_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
