"""Preprocess: photos → 8-bit Lab arrays in shards that load at memory speed.

Storage: a shard is one `.npy` of shape (N, 3, S, S), uint8, channels [L, a, b] as `chromify.lab` encodes
them (L·255/100 and ab+128, rounded): a quarter of float32's bytes, with a quantisation error (≤ 0.2 in L,
≤ 0.5 in a/b) below what the eye or the metrics see. Each shard has a sidecar `.json` (count, image hashes,
shape, sha256 of the file) written last: a shard without one is unfinished and is redone, a shard whose
sidecar and checksum agree is skipped on re-runs. Each split's `index.json` lists the shards.

Workers write their images straight into their rows of the shard's file (a hidden `.partial` file), and the
finished file is hashed, fsynced and renamed into place, so a kill at any moment leaves only whole shards. A run
holds a lock on its partition (`.<tag>.lock` in the output folder), so that no second run takes those partial files
for a killed run's leftovers.
"""

from __future__ import annotations

import errno
import hashlib
import json
import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chromify.decode import DECODER_PIL, load_square, read_bytes
from chromify.errors import DataError, InputImageError, first_line
from chromify.io import atomic_write_json, die_with, exclusive_lock, file_sha256, lock_if_free
from chromify.lab import AB_OFFSET, L_SCALE
from chromify.progress import Progress

SPLITS = ("train", "val", "test")
FORMAT = "chromify-lab8-v1"  # the storage encoding, which readers check
# What produced the pixels (decoders, crop, filter, Lab table): part of every sidecar, so a change of it redoes
# the shards on the next run instead of mixing old and new samples. Bump it with any such change.
PIXELS = "jpeg-turbo-dct2|pil-draft,icc-after-resize,centre-square-whole-px,torch-bilinear-aa,lab8-table-v1"
CHUNK = 32  # images per task: small enough for a live progress bar and balanced workers


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


# 8-bit sRGB has 2^24 colours: a table of their encodings turns the conversion into one lookup per pixel
# (0.8 ms for 256², against 9 ms for chromify.lab's float pipeline). 64 MiB per process, built in ~0.3 s;
# preprocess builds it before forking its workers, which then share its pages.
_LAB8_TABLE: np.ndarray | None = None


def lab8_table() -> np.ndarray:
    """(2^24,) little-endian uint32: at key r | g<<8 | b<<16 (the bytes of an RGBX pixel), the bytes
    [L, a, b, 0] of that colour's shard encoding.

    Built with chromify.lab's constants; it differs from quantise_lab(rgb_to_lab(rgb)) by one step in 5,790
    colours (1 in 2,900), those that fall near a rounding tie.
    """
    global _LAB8_TABLE
    if _LAB8_TABLE is not None:
        return _LAB8_TABLE
    from chromify import lab

    # f(t) of CIE Lab on a 2^20-step grid of t = X/Xn, Y/Yn, Z/Zn in [0, 1] (error < 4e-6, dark branch included).
    k = 1 << 20
    t = np.arange(k + 1, dtype=np.float64) / k
    f_of_t = np.where(t > lab._LAB_EPS, np.cbrt(t), lab._LAB_KAPPA * t + lab._LAB_OFFSET).astype(np.float32)
    linear = lab._LINEAR_FROM_U8.astype(np.float64)
    m = lab._XYZN_FROM_RGB.T.astype(np.float64) * k  # rows X, Y, Z; columns r, g, b; in grid steps
    g, r = np.divmod(np.arange(1 << 16), 256)
    # t = (m[:, 0] lin(r) + m[:, 1] lin(g)) + m[:, 2] lin(b): the bracket is shared by all 256 values of b.
    from_rg = [(m[i, 0] * linear[r] + m[i, 1] * linear[g] + 0.5).astype(np.float32) for i in range(3)]
    from_b = [(m[i, 2] * linear).astype(np.float32) for i in range(3)]
    table = np.empty(1 << 24, dtype="<u4")
    tmp, q, idx = np.empty(1 << 16, np.float32), np.empty(1 << 16, np.float32), np.empty(1 << 16, np.int32)
    f = [np.empty(1 << 16, np.float32) for _ in range(3)]

    def to_byte(offset: float) -> np.ndarray:  # + offset, then +0.5 so that truncation rounds
        np.add(q, offset + 0.5, out=q)
        np.clip(q, 0, 255, out=q)
        return q.astype(np.uint32)

    for b in range(256):
        for i in range(3):
            np.add(from_rg[i], from_b[i][b], out=tmp)
            np.minimum(tmp, k, out=tmp)
            idx[:] = tmp
            np.take(f_of_t, idx, out=f[i])
        fx, fy, fz = f
        out = table[b << 16 : (b + 1) << 16]
        np.multiply(fy, 116 * lab.L_SCALE, out=q)  # L = 116 fy - 16, stored as L * L_SCALE
        out[:] = to_byte(-16 * lab.L_SCALE)
        np.subtract(fx, fy, out=q)  # a = 500 (fx - fy)
        q *= 500
        out |= to_byte(lab.AB_OFFSET) << 8
        np.subtract(fy, fz, out=q)  # b = 200 (fy - fz)
        q *= 200
        out |= to_byte(lab.AB_OFFSET) << 16
    _LAB8_TABLE = table
    return table


def _lab8_from_keys(keys: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """(H, W) keys r | g<<8 | b<<16 → (3, H, W) uint8 shard encoding, into `out` if given."""
    h, w = keys.shape
    # take: 30% faster than fancy indexing for this gather; mode="clip" (a no-op: keys < 2^24) spares the
    # temporary that the default mode allocates.
    packed = np.take(lab8_table(), keys, mode="clip")
    planes = packed.view(np.uint8).reshape(h, w, 4)[..., :3].transpose(2, 0, 1)
    if out is None:
        return np.ascontiguousarray(planes)
    np.copyto(out, planes)
    return out


def rgb_to_lab8(rgb: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) uint8 sRGB → (3, H, W) uint8 shard encoding (as quantise_lab(rgb_to_lab(rgb)), see lab8_table)."""
    h, w = rgb.shape[:2]
    flat = np.ascontiguousarray(rgb).reshape(-1)
    keys = np.empty(h * w, dtype="<u4")
    # Each pixel's three bytes and the next pixel's first, read as one little-endian uint32 (an unaligned view,
    # no copy) and masked: the key in one pass. The last pixel has no next byte and is done alone.
    quads = np.ndarray((h * w - 1,), dtype="<u4", buffer=flat, strides=(3,))
    np.bitwise_and(quads, 0xFFFFFF, out=keys[:-1])
    keys[-1] = int(flat[-3]) | int(flat[-2]) << 8 | int(flat[-1]) << 16
    return _lab8_from_keys(keys.reshape(h, w), out)


def lab_sample(path: str, name: str, size: int, decoder: str = DECODER_PIL, orientation: int = 1,
               out: np.ndarray | None = None) -> np.ndarray:
    """One photo → (3, size, size) uint8 Lab in the shard encoding (into `out` if given)."""
    return lab_sample_bytes(read_bytes(path), name, size, decoder, orientation, out)


def lab_sample_bytes(data: bytes, name: str, size: int, decoder: str = DECODER_PIL, orientation: int = 1,
                     out: np.ndarray | None = None) -> np.ndarray:
    """lab_sample of a photo's bytes already in memory."""
    return rgb_to_lab8(load_square(data, name, size, decoder, orientation), out)


def plan_shards(rows: list[dict], size: int, shard_mb: float, partition: Partition
                ) -> dict[str, list[tuple[int, list[dict]]]]:
    """This partition's shards per split, as (shard number, rows): each split's photos sorted by hash and cut into
    shard-sized groups, which the partitions deal out round-robin. The shards, and so the order training reads
    them in, are the same for any number of partitions: a DVC run and a KFP run of the same params train the
    same model."""
    per_shard = images_per_shard(size, shard_mb)
    plan: dict[str, list[tuple[int, list[dict]]]] = {}
    for split in SPLITS:
        mine = sorted((r for r in rows if r["split"] == split), key=lambda r: r["sha256"])
        groups = [mine[k : k + per_shard] for k in range(0, len(mine), per_shard)]
        plan[split] = [(n, g) for n, g in enumerate(groups) if n % partition.count == partition.index]
    return plan


def _shard_number(file: str) -> int:
    """'p001of004-00005.npy' → 5, its place among the split's shards whatever the partitioning."""
    return int(file.rsplit("-", 1)[1].split(".")[0])


@dataclass(frozen=True)
class ShardJob:
    npy: Path
    meta: dict  # the sidecar's content, less the checksum

    @property
    def side(self) -> Path:
        return self.npy.with_suffix(".json")

    @property
    def partial(self) -> Path:
        return self.npy.with_name(f".{self.npy.name}.partial")


def _shard_ok(job: ShardJob) -> bool:
    """The sidecar describes exactly this job and the file's checksum matches it."""
    try:
        meta = json.loads(job.side.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if any(meta.get(k) != v for k, v in job.meta.items()):
        return False
    try:
        return meta.get("sha256") == file_sha256(job.npy)
    except OSError:
        return False


def _init_worker(parent: int) -> None:
    import torch

    die_with(parent)
    lab8_table()  # a no-op after fork (inherited); spawned workers build their own
    torch.set_num_threads(1)  # the resize of one photo is too small to share: the processes are the parallelism


def _stored_sample(path: str, name: str, sha256: str, size: int, decoder: str, orientation: int,
                   out: np.ndarray) -> None:
    """One stored photo into `out` as lab_sample does, once its bytes match the manifest's sha256.

    Ingest knows a stored file by its size alone (hashing the whole store on every run would read it all): a file
    damaged at the same size is caught here, where its bytes are in memory anyway, and removed, so that the next
    ingest copies it from the source again. So is one that no longer decodes: ingest then judges it afresh.
    """
    try:
        data = read_bytes(path)
    except InputImageError as exc:
        raise DataError(f"{name}: accepted by ingest but unreadable now ({exc.reason}); re-run ingest") from None
    if hashlib.sha256(data).hexdigest() != sha256:
        problem = "damaged (its sha256 is not the manifest's)"
    else:
        try:
            lab_sample_bytes(data, name, size, decoder, orientation, out)
            return
        except InputImageError as exc:
            problem = f"unreadable now ({exc.reason})"
    Path(path).unlink(missing_ok=True)
    raise DataError(f"{path}: the stored copy of {name} is {problem} and was removed; re-run ingest to copy it again")


def _fill(partial: str, offset: int, start: int, tasks: list[tuple[str, str, str, str, int]], size: int) -> int:
    """Decode `tasks` (stored file, uri, sha256, decoder, orientation) into rows start.. of the partial shard file,
    whose pixels begin at byte `offset`.

    pwrite from one reused buffer: a memory map would take a page fault (and a block allocation) for every
    4 KiB it first touches, which cost more than the copy into the page cache.
    """
    sample = np.empty((3, size, size), dtype=np.uint8)
    fd = os.open(partial, os.O_WRONLY)
    try:
        for k, (path, name, sha256, decoder, orientation) in enumerate(tasks):
            _stored_sample(path, name, sha256, size, decoder, orientation, sample)
            if os.pwrite(fd, sample, offset + (start + k) * sample.nbytes) != sample.nbytes:
                # a regular file is written short only when the disk (or quota) is full: named, it is one line
                raise OSError(errno.ENOSPC, "short write: no space left on the device?", str(partial))
    finally:
        os.close(fd)  # no fsync here: _finish's fsync writes the pages back
    return len(tasks)


def _finish(job: ShardJob) -> str:
    """Checksum, fsync and rename the partial file, then write the sidecar: the shard now exists."""
    sha = file_sha256(job.partial)
    fd = os.open(job.partial, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(job.partial, job.npy)
    atomic_write_json(job.side, {**job.meta, "sha256": sha})
    return sha


def _clean(split_dir: Path, partition: Partition, wanted: set[str]) -> bool:
    """Remove this partition's leftovers (shards of an earlier plan, temp files of a killed run); True if any."""
    removed = False
    for path in split_dir.iterdir() if split_dir.exists() else ():
        name = path.name.lstrip(".")
        if name.startswith(partition.tag + "-") and (path.name.startswith(".") or name.split(".")[0] not in wanted):
            path.unlink(missing_ok=True)
            removed = True
    return removed


def photos_digest(rows: list[dict]) -> str:
    """sha256 of which photo is in which split: partitions cut from different manifests (an ingest between them)
    would index some photos twice and leave others out."""
    pairs = sorted((r["sha256"], r["split"]) for r in rows)
    return hashlib.sha256(json.dumps(pairs).encode()).hexdigest()


def _done_marker(out_dir: Path, partition: Partition) -> Path:
    return out_dir / f"{partition.tag}.done.json"


@contextmanager
def _holding(out_dir: Path, partition: Partition) -> Iterator[None]:
    """Hold `<out_dir>/.<tag>.lock` for a run: a second run of the partition would delete this one's partial files
    as a killed run's leftovers and recreate them, and both would then finish shards of zeros with valid checksums."""
    out_dir.mkdir(parents=True, exist_ok=True)

    def busy(pid: int | None) -> DataError:
        holder = f" (pid {pid})" if pid is not None else ""
        return DataError(f"{out_dir}: another preprocess is writing partition {partition.tag} here{holder}; "
                         "wait for it to end or preprocess into another folder")

    with exclusive_lock(out_dir / f".{partition.tag}.lock", busy,
                        f"a second preprocess of partition {partition.tag} from writing into it"):
        yield


def preprocess(rows: list[dict], raw_dir: str | Path, out_dir: str | Path, size: int, shard_mb: float = 256,
               workers: int = 0, partition: Partition = Partition(), progress: bool = False) -> dict[str, int]:
    """Write this partition's shards; returns counts. Re-runs skip verified shards; a killed run resumes."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    if not rows:  # the whole manifest, before partitioning: a last ingest that accepted nothing
        raise DataError(f"{raw_dir / 'manifest.parquet'}: no accepted photos to convert; the ingest report says why")
    workers = workers or (os.cpu_count() or 1)
    with _holding(out_dir, partition):  # before anything of the partition is read or removed
        _done_marker(out_dir, partition).unlink(missing_ok=True)
        for tmp in out_dir.glob(f".{partition.tag}.done.json.*.tmp"):  # a marker write that a kill cut short
            tmp.unlink(missing_ok=True)
        jobs: list[tuple[ShardJob, list[dict]]] = []
        changed: set[str] = set()
        for split, numbered in plan_shards(rows, size, shard_mb, partition).items():
            stems = [f"{partition.tag}-{n:05d}" for n, _ in numbered]
            if _clean(out_dir / split, partition, set(stems)):
                changed.add(split)
            for stem, (_, group) in zip(stems, numbered, strict=True):
                meta = {"format": FORMAT, "pixels": PIXELS, "file": f"{stem}.npy", "count": len(group),
                        "shape": [len(group), 3, size, size], "images": [r["sha256"] for r in group]}
                jobs.append((ShardJob(out_dir / split / f"{stem}.npy", meta), group))
        total = sum(len(g) for _, g in jobs)
        counts = {"images": total, "shards_written": 0, "shards_skipped": 0}

        # Verifying is hashing, which releases the GIL: threads suffice, and no worker is forked for a no-op re-run.
        with ThreadPoolExecutor(max_workers=workers) as threads:
            ok = list(threads.map(_shard_ok, [j for j, _ in jobs]))
        todo = [(j, g) for (j, g), good in zip(jobs, ok, strict=True) if not good]
        counts["shards_skipped"] = len(jobs) - len(todo)
        changed |= {j.npy.parent.name for j, _ in todo}
        for split in changed:
            (out_dir / split / "index.json").unlink(missing_ok=True)  # stale from here on; write_index redoes it
        import torch  # the resize's: imported before the workers fork, so they inherit it

        pool = None
        threads = torch.get_num_threads()
        if todo and workers > 1:
            lab8_table()  # built once here and shared by the forked workers
            ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
            pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                                       initargs=(os.getpid(),))
            pool.submit(int).result()  # forks every worker now, before tqdm starts its monitor thread
        bar = Progress(total, f"preprocess {partition.tag}", initial=total - sum(len(g) for _, g in todo),
                       enabled=progress)
        try:
            if pool is None:
                torch.set_num_threads(1)  # in this process, as in each worker (_init_worker)
            _run_jobs(todo, raw_dir, size, pool, bar)
            counts["shards_written"] = len(todo)
        finally:
            torch.set_num_threads(threads)
            if pool:
                pool.shutdown(cancel_futures=True)
            bar.close()
        shards = {split: [j.meta["file"] for j, _ in jobs if j.npy.parent.name == split] for split in SPLITS}
        atomic_write_json(_done_marker(out_dir, partition), {
            "size": size, "shards": shards, "photos": photos_digest(rows),
            # what decides which photos shard n holds, and how: partitions that differ cannot be indexed together
            "per_shard": images_per_shard(size, shard_mb), "pixels": PIXELS})
        return counts


def _run_jobs(todo: list[tuple[ShardJob, list[dict]]], raw_dir: Path, size: int, pool, bar: Progress) -> None:
    """Fill every shard chunk by chunk (in the pool when there is one), finishing each shard once it is full."""
    pending: dict[Future, tuple[str, ShardJob, int]] = {}
    chunks_left: dict[Path, int] = {}
    for job, group in todo:
        job.npy.parent.mkdir(parents=True, exist_ok=True)
        shape = tuple(job.meta["shape"])
        del_me = np.lib.format.open_memmap(job.partial, mode="w+", dtype=np.uint8, shape=shape)
        del del_me  # a sparse file of the final size, header included; the workers fill it in place
        offset = job.partial.stat().st_size - int(np.prod(shape))
        tasks = [(str(raw_dir / r["path"]), r["uri"], r["sha256"], r.get("decoder") or DECODER_PIL,
                  int(r.get("orientation") or 1)) for r in group]
        chunks = [(k, tasks[k : k + CHUNK]) for k in range(0, len(tasks), CHUNK)]
        chunks_left[job.npy] = len(chunks)
        for start, chunk in chunks:
            if pool is None:
                _fill(str(job.partial), offset, start, chunk, size)
                bar.update(len(chunk))
            else:
                pending[pool.submit(_fill, str(job.partial), offset, start, chunk, size)] = ("fill", job, len(chunk))
        if pool is None:
            _finish(job)
    while pending:
        done, _ = wait(pending, return_when=FIRST_COMPLETED)
        for fut in done:
            kind, job, n = pending.pop(fut)
            fut.result()  # re-raises a worker's error here
            if kind == "fill":
                bar.update(n)
                chunks_left[job.npy] -= 1
                if chunks_left[job.npy] == 0:
                    pending[pool.submit(_finish, job)] = ("finish", job, 0)


def write_index(out_dir: str | Path, size: int, partitions: int = 1) -> dict[str, dict]:
    """One index.json per split over the shards of all `partitions`, once every partition has finished.

    Returns the indexes, or {} (writing nothing) while some partition is unfinished: with a job array, the
    last partition to finish writes them.
    """
    out_dir = Path(out_dir)
    markers = []
    for i in range(partitions):
        path = _done_marker(out_dir, Partition(i, partitions))
        try:
            marker = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}
        if not isinstance(marker, dict) or not isinstance(marker.get("shards"), dict):
            raise DataError(f"{path}: damaged; re-run `chromify preprocess --partition {i}/{partitions}`")
        if marker.get("size") != size:
            raise DataError(f"{path}: shards of size {marker.get('size')}, not {size}; re-run preprocess")
        markers.append((path, marker))
    # The newest marker names the current manifest: locally the partition finished last (its run writes the index);
    # in the KFP collect step the last copied, all cut from one ingest's output
    newest_path, newest = max(markers, key=lambda m: m[0].stat().st_mtime_ns)
    for key, expected, what in (("photos", newest.get("photos"), "from another manifest than the latest (ingest ran "
                                                                 "in between)"),
                                ("per_shard", newest.get("per_shard"), "with another shard size (preprocess.shard_mb)"),
                                ("pixels", PIXELS, "with another pixel pipeline (an earlier version of chromify)")):
        if any(key not in m for _, m in markers):
            what = "by an earlier version of chromify (its done marker lacks what this one checks)"
        stale = [f"{i}/{partitions}" for i, (_, m) in enumerate(markers) if m.get(key) != expected]
        if stale:
            raise DataError(f"{out_dir}: partition {', '.join(stale)} was preprocessed {what}: re-run `chromify "
                            f"preprocess --partition` for {'it' if len(stale) == 1 else 'them'}")
    # temp files of an index write that a kill cut short (one now in progress is younger than every marker)
    for tmp in out_dir.glob("*/.index.json.*.tmp"):
        try:
            if tmp.stat().st_mtime_ns < newest_path.stat().st_mtime_ns:
                tmp.unlink()
        except FileNotFoundError:  # renamed into place by another partition writing the same index
            continue
    markers = [m for _, m in markers]
    indexes = {}
    for split in SPLITS:
        split_dir = out_dir / split
        shards = []
        for i, marker in enumerate(markers):
            for name in marker["shards"].get(split, []):
                sidecar = (split_dir / name).with_suffix(".json")
                try:
                    meta = json.loads(sidecar.read_text())
                    shards.append({"file": meta["file"], "count": int(meta["count"]), "sha256": str(meta["sha256"])})
                except (OSError, ValueError, KeyError, TypeError) as exc:  # JSONDecodeError is a ValueError
                    raise DataError(f"{sidecar}: {'missing' if isinstance(exc, FileNotFoundError) else 'damaged'}; "
                                    f"re-run `chromify preprocess --partition {i}/{partitions}`") from None
        shards.sort(key=lambda e: _shard_number(e["file"]))  # the one-partition order, whatever the partitioning
        index = {
            "format": FORMAT,
            "pixels": PIXELS,
            "split": split,
            "count": sum(s["count"] for s in shards),
            "shape": [3, size, size],
            "dtype": "uint8",
            "channels": ["L", "a", "b"],
            # value = stored_uint8 / scale - offset: L in [0, 100], a and b in [-128, 127]
            "normalisation": {"L": {"scale": L_SCALE, "offset": 0.0}, "a": {"scale": 1.0, "offset": AB_OFFSET},
                              "b": {"scale": 1.0, "offset": AB_OFFSET},
                              "text": f"uint8 = round(L * {L_SCALE:.4f}), round(ab) + {AB_OFFSET:g}"},
            "partitions": partitions,
            "shards": shards,
        }
        split_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(split_dir / "index.json", index)
        indexes[split] = index
        listed = {s["file"] for s in shards}
        for old in split_dir.glob("p???of???-*"):  # shards of an earlier partitioning
            if old.with_suffix(".npy").name not in listed:
                old.unlink(missing_ok=True)
    for old in out_dir.glob("p???of???.done.json"):
        if not old.name.endswith(f"of{partitions:03d}.done.json"):
            old.unlink(missing_ok=True)
    _remove_killed_runs_of_other_partitionings(out_dir, partitions)
    return indexes


def _remove_killed_runs_of_other_partitionings(out_dir: Path, partitions: int) -> None:
    """The partial shards, temp files and lock of runs under another partition count, which their own re-runs
    would have removed: once the count changed none comes. A run of theirs still going holds its lock: kept."""
    tags = {p.name[1:10] for p in out_dir.glob(".p???of???.*")} | {p.name[1:10] for p in out_dir.glob("*/.p???of???-*")}
    for tag in sorted(t for t in tags if not t.endswith(f"of{partitions:03d}")):
        lock = out_dir / f".{tag}.lock"
        with lock_if_free(lock) as free:  # held by a live run, or a file system without locks: left as it is
            if free:
                for path in [*out_dir.glob(f".{tag}.*"), *out_dir.glob(f"*/.{tag}-*")]:
                    if path != lock:
                        path.unlink(missing_ok=True)


def read_index(split_dir: str | Path) -> dict:
    path = Path(split_dir) / "index.json"
    if not path.exists():
        raise DataError(f"{path}: no shard index; run `chromify preprocess` first")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # a JSONDecodeError or UnicodeDecodeError is a ValueError
        raise DataError(f"{path}: unreadable shard index ({first_line(exc)}); re-run preprocess") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        found = index.get("format") if isinstance(index, dict) else type(index).__name__
        raise DataError(f"{path}: unknown shard format {found!r}")
    shards = index.get("shards")
    shape = index.get("shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(type(n) is int and n > 0 for n in shape)
            and isinstance(shards, list) and all(isinstance(e, dict) and isinstance(e.get("file"), str)
                                                 and type(e.get("count")) is int for e in shards)):
        raise DataError(f"{path}: damaged shard index (needs shape [3, S, S] and shards [{{file, count}}, ...]); "
                        "re-run preprocess")
    return index


def verify_shards(split_dir: str | Path) -> None:
    """Raise DataError if any shard is missing or its checksum differs from the index."""
    split_dir = Path(split_dir)
    for s in read_index(split_dir)["shards"]:
        path = split_dir / s["file"]
        if not path.exists():
            raise DataError(f"{path}: missing shard listed in the index; re-run preprocess")
        if file_sha256(path) != s.get("sha256"):
            raise DataError(f"{path}: checksum mismatch with the index (corrupt or partial shard); re-run preprocess")
