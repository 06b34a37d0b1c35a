"""Preprocess: photos → 8-bit Lab arrays in shards that load at memory speed.

A shard is one `.npy` of shape (N, 3, S, S), uint8, channels [L, a, b] in the encoding of `chromify.lab`,
plus a sidecar `.json` (count, image hashes, sha256 of the file). The sidecar is written last, so a shard
without one is unfinished and is redone; a shard whose sidecar and checksum agree is skipped on re-runs.
Each split's `index.json` lists the shards with their counts and checksums.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chromify.decode import decode_rgb, read_bytes, resize_center_crop
from chromify.errors import DataError
from chromify.io import atomic_write, atomic_write_json
from chromify.lab import AB_OFFSET, L_SCALE, quantise_lab, rgb_to_lab

SPLITS = ("train", "val", "test")
FORMAT = "chromify-lab8-v1"


@dataclass(frozen=True)
class Partition:
    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> Partition:
        """'i/n' → Partition(i, n), 0 ≤ i < n."""
        try:
            i, n = (int(x) for x in text.split("/"))
        except ValueError:
            raise DataError(f"--partition {text!r}: expected i/n, e.g. 0/4") from None
        if not 0 <= i < n:
            raise DataError(f"--partition {text!r}: need 0 <= i < n")
        return cls(i, n)

    @property
    def tag(self) -> str:
        return f"p{self.index:03d}of{self.count:03d}"


def images_per_shard(size: int, shard_mb: float) -> int:
    return max(1, int(shard_mb * 2**20) // (3 * size * size))


def lab_sample(path: str, name: str, size: int, max_pixels: int = 400_000_000) -> np.ndarray:
    """One photo → (3, size, size) uint8 Lab in the shard encoding."""
    img = decode_rgb(read_bytes(path), name, max_pixels, draft_size=size)
    rgb = np.asarray(resize_center_crop(img, size))
    return np.ascontiguousarray(quantise_lab(rgb_to_lab(rgb)).transpose(2, 0, 1))


def _sample_task(args: tuple[str, str, int]) -> np.ndarray:
    return lab_sample(*args)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _shard_is_done(npy: Path, side: Path, shas: list[str]) -> dict | None:
    if not (npy.exists() and side.exists()):
        return None
    try:
        meta = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if meta.get("images") != shas or meta.get("sha256") != file_sha256(npy):
        return None
    return meta


def _write_npy(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))


def plan_shards(rows: list[dict], size: int, shard_mb: float, partition: Partition) -> dict[str, list[list[dict]]]:
    """Rows of this partition, per split, cut into shard-sized groups (sorted by hash: deterministic)."""
    per_shard = images_per_shard(size, shard_mb)
    plan: dict[str, list[list[dict]]] = {}
    for split in SPLITS:
        mine = sorted((r for r in rows if r["split"] == split), key=lambda r: r["sha256"])
        mine = [r for k, r in enumerate(mine) if k % partition.count == partition.index]
        plan[split] = [mine[k : k + per_shard] for k in range(0, len(mine), per_shard)]
    return plan


def preprocess(rows: list[dict], raw_dir: str | Path, out_dir: str | Path, size: int, shard_mb: float = 256,
               workers: int = 0, partition: Partition = Partition(), progress: bool = False) -> dict[str, int]:
    """Write this partition's shards; returns counts. Re-runs skip verified shards."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    workers = workers or (os.cpu_count() or 1)
    plan = plan_shards(rows, size, shard_mb, partition)
    total = sum(len(g) for groups in plan.values() for g in groups)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=f"preprocess {partition.tag}", unit="img")
    pool = ProcessPoolExecutor(max_workers=workers) if workers > 1 and total > 4 else None
    counts = {"images": 0, "shards_written": 0, "shards_skipped": 0}
    for split, groups in plan.items():  # shards of this partition left by an earlier, different plan
        wanted = {f"{partition.tag}-{k:05d}" for k in range(len(groups))}
        for stale in (out_dir / split).glob(f"{partition.tag}-*"):
            if stale.name.split(".")[0] not in wanted:
                stale.unlink()
    try:
        for split, groups in plan.items():
            split_dir = out_dir / split
            for k, group in enumerate(groups):
                stem = f"{partition.tag}-{k:05d}"
                npy, side = split_dir / f"{stem}.npy", split_dir / f"{stem}.json"
                shas = [r["sha256"] for r in group]
                if _shard_is_done(npy, side, shas):
                    counts["shards_skipped"] += 1
                else:
                    tasks = [(str(raw_dir / r["path"]), r["uri"], size) for r in group]
                    arrays = list(pool.map(_sample_task, tasks, chunksize=8) if pool else map(_sample_task, tasks))
                    _write_npy(npy, np.stack(arrays))
                    atomic_write_json(side, {"file": npy.name, "count": len(group), "images": shas,
                                             "sha256": file_sha256(npy)})
                    counts["shards_written"] += 1
                counts["images"] += len(group)
                if bar:
                    bar.update(len(group))
    finally:
        if pool:
            pool.shutdown()
        if bar:
            bar.close()
    return counts


def write_index(out_dir: str | Path, size: int, partitions: int = 1) -> dict[str, dict]:
    """Collect the shard sidecars of all `partitions` into one index.json per split."""
    out_dir = Path(out_dir)
    indexes = {}
    for split in SPLITS:
        split_dir = out_dir / split
        shards = []
        for side in sorted(split_dir.glob(f"p???of{partitions:03d}-*.json")) if split_dir.exists() else []:
            meta = json.loads(side.read_text())
            shards.append({"file": meta["file"], "count": meta["count"], "sha256": meta["sha256"]})
        index = {
            "format": FORMAT,
            "split": split,
            "count": sum(s["count"] for s in shards),
            "shape": [3, size, size],
            "dtype": "uint8",
            "channels": ["L", "a", "b"],
            "normalisation": {"L": f"uint8 = round(L * {L_SCALE:.4f})", "ab": f"uint8 = round(ab) + {AB_OFFSET:g}"},
            "shards": shards,
        }
        atomic_write_json(split_dir / "index.json", index)
        indexes[split] = index
    return indexes


def read_index(split_dir: str | Path) -> dict:
    path = Path(split_dir) / "index.json"
    if not path.exists():
        raise DataError(f"{path}: no shard index; run `chromify preprocess` first")
    index = json.loads(path.read_text())
    if index.get("format") != FORMAT:
        raise DataError(f"{path}: unknown shard format {index.get('format')!r}")
    return index


def verify_shards(split_dir: str | Path) -> None:
    """Raise DataError if any shard's checksum differs from the index."""
    split_dir = Path(split_dir)
    for s in read_index(split_dir)["shards"]:
        if file_sha256(split_dir / s["file"]) != s["sha256"]:
            raise DataError(f"{split_dir / s['file']}: checksum mismatch (corrupt or partial shard)")
