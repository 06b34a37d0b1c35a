"""Ingest: find photos, decode each fully, reject the unusable with a reason, split by content hash.

Accepted files are stored content-addressed under `<out_dir>/images/`, so re-runs and growing datasets
only touch what is new, and a photo's split never changes: it is a function of its sha256 alone.
What was measured about each file (size, chroma, decoder) is kept with its row, keyed by (uri, size,
stamp): a re-run decodes only new or changed files, and a change of thresholds re-judges the rest from
those facts without decoding them again.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import multiprocessing
import os
import re
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from chromify import gcs
from chromify.config import IngestParams
from chromify.decode import (
    DECODER_JPEG,
    DECODER_JPEG_ICC,
    DECODER_PIL,
    FORMAT_SUFFIX,
    IMAGE_SUFFIXES,
    byte_cap,
    decoder_for,
    jpeg_damage,
    open_checked,
    orientation_of,
    pil_hard_limit,
    to_srgb,
    too_large,
)
from chromify.errors import ChromifyError, ConfigError, DataError, InputImageError, first_line
from chromify.io import atomic_write, die_with, exclusive_lock
from chromify.lab import AB_OFFSET
from chromify.progress import Progress
from chromify.shards import lab8_table, rgb_to_lab8

# What is known about a file once read: the manifest holds the accepted ones (plus their split), the reject
# table the others (plus reason and detail). chroma is NaN and path "" where the file never decoded.
FACT_COLUMNS = ("uri", "sha256", "width", "height", "source", "path", "size_bytes", "stamp", "format",
                "orientation", "decoder", "chroma", "chroma_off_tint")
MANIFEST_COLUMNS = (*FACT_COLUMNS[:4], "split", *FACT_COLUMNS[4:])
REJECT_COLUMNS = ("uri", "reason", "detail", *FACT_COLUMNS[1:])
_INT_COLUMNS = ("width", "height", "size_bytes", "orientation")

# Reasons that depend on the file alone; the others are re-judged from the facts when thresholds change.
FILE_REASONS = ("empty", "not_image", "undecodable")
THUMB_SIDE = 256  # px: chroma is measured on a thumbnail, which is as good as the full image and much faster

# Photographs shipped inside installed packages: the offline sample for the demo and the tests.
SAMPLE_FILES = (
    ("skimage", "data/astronaut.png"),
    ("skimage", "data/chelsea.png"),
    ("skimage", "data/coffee.png"),
    ("skimage", "data/rocket.jpg"),
    ("skimage", "data/motorcycle_left.png"),
    ("skimage", "data/motorcycle_right.png"),
    ("skimage", "data/hubble_deep_field.jpg"),
    ("skimage", "data/ihc.png"),
    ("skimage", "data/retina.jpg"),
    ("skimage", "data/camera.png"),  # grayscale: shows the rejection path in every demo
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
    ("matplotlib", "mpl-data/sample_data/Minduka_Present_Blue_Pack.png"),
)


@dataclass(frozen=True)
class SourceFile:
    uri: str
    size: int
    stamp: str  # changes whenever the content may have: mtime_ns locally, generation on GCS
    local_path: str | None = None
    gzip: bool = False  # a GCS object stored gzip-encoded: `size` is the compressed size, not the photo's


@dataclass
class Listing:
    """The files a source names, and what was noticed about its layout."""

    files: list[SourceFile]
    notes: dict[str, int]
    pairing: list[tuple[str, str]]  # (path, problem) for Kaggle colour/gray copies that do not pair up


def sample_paths() -> list[Path]:
    import importlib.util

    paths = []
    for package, rel in SAMPLE_FILES:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            continue
        path = Path(spec.origin).parent / rel
        if path.exists():
            paths.append(path)
    if not paths:
        raise ConfigError("the bundled sample needs scikit-image and matplotlib installed")
    return paths


def _local_file(path: Path) -> SourceFile:
    try:
        st = path.stat()
    except OSError:  # a broken link, or gone since the listing: reading it fails and the rejects say why
        return SourceFile(str(path), 0, "", str(path))
    return SourceFile(str(path), st.st_size, str(st.st_mtime_ns), str(path))


@dataclass
class Walk:
    """A folder's listing, and what it leaves out and why (each said on stderr and counted)."""

    files: list[Path]
    unlisted: list[str]  # folders that could not be listed, as `folder (reason)`
    linked: list[str]  # links to folders: not followed, as rglob does
    bad_names: list[str]  # file names that are not valid UTF-8 (the manifest and CSVs are), escaped


def _walk_files(root: Path, skip: Path | None = None) -> Walk:
    """Every file under `root` (broken links included: they are rejected with a reason, not dropped), less the
    folder `skip` (ingest's own store, when it lies inside the source: its copies are not the source's photos)."""
    walk = Walk([], [], [], [])
    for folder, dirs, names in os.walk(root, onerror=lambda e: walk.unlisted.append(f"{e.filename} ({e.strerror})")):
        here = Path(folder)
        walk.linked += [str(here / d) for d in dirs if (here / d).is_symlink()]
        dirs[:] = [d for d in dirs if skip is None or (here / d).resolve() != skip]
        for name in names:
            path = here / name
            try:
                str(path).encode("utf-8")
            except UnicodeEncodeError:
                walk.bad_names.append(os.fsencode(path).decode("utf-8", "backslashreplace"))
                continue
            if path.is_file() or (path.is_symlink() and not path.exists()):
                walk.files.append(path)
    walk.files.sort()
    walk.unlisted.sort()
    return walk


_COLOUR_WORDS = ("colour", "color")
_GRAY_WORDS = ("gray", "grey", "black", "bw")


def _strip(name: str, words: tuple[str, ...]) -> str:
    for w in words:
        name = name.replace(w, "")
    return name


def kaggle_layout(names: list[str]) -> tuple[set[str], list[tuple[str, str]], int]:
    """For the image files of a source, as '/'-separated paths relative to it (a folder's or a bucket prefix's):
    (the grayscale copies, which are not training data; [(path, problem)] for copies that do not pair up; the number
    of colour/grayscale folder pairs, siblings such as train_color/ + train_black/ or color/ + gray/).

    On the strings themselves: it runs on every ingest, and the Kaggle set lists 236k names.
    """
    folders: set[str] = set()
    for n in names:
        d = n.rpartition("/")[0]
        while d and d not in folders:  # a folder seen has had its parents added already
            folders.add(d)
            d = d.rpartition("/")[0]
    siblings: dict[str, list[str]] = {}
    for d in sorted(folders):
        siblings.setdefault(d.rpartition("/")[0], []).append(d)
    pairs = []
    for d in sorted(folders):
        parent, _, name = d.rpartition("/")
        name = name.lower()
        if not any(w in name for w in _COLOUR_WORDS):
            continue
        for sib in siblings[parent]:
            sname = sib.rpartition("/")[2].lower()
            if any(w in sname for w in _GRAY_WORDS) and _strip(sname, _GRAY_WORDS) == _strip(name, _COLOUR_WORDS):
                pairs.append((d, sib))
                break
    gray_copies: set[str] = set()
    pairing: list[tuple[str, str]] = []
    for colour_dir, gray_dir in pairs:
        def under(folder: str) -> dict[str, str]:  # stem key (path below `folder`, no suffix, lower case) → name
            return {os.path.splitext(n[len(folder) + 1:])[0].lower(): n for n in names if n.startswith(folder + "/")}

        colour, gray = under(colour_dir), under(gray_dir)
        gray_copies |= set(gray.values())
        pairing += [(colour[k], "colour image without a grayscale copy") for k in sorted(colour.keys() - gray)]
        pairing += [(gray[k], "grayscale copy without a colour image") for k in sorted(gray.keys() - colour)]
    return gray_copies, pairing, len(pairs)


def _is_image_name(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES


def list_source(source: str) -> tuple[list[SourceFile], dict[str, int]]:
    """The files a source names, and counts about its layout (e.g. unpaired Kaggle colour/gray copies)."""
    listing = _list(source)
    return listing.files, listing.notes


def _list(source: str, store: Path | None = None) -> Listing:
    if source == "sample":
        return Listing([_local_file(p) for p in sample_paths()], {}, [])
    if source.startswith("gs://"):
        files = gcs.list_gcs_images(source)
        bucket, prefix = gcs.split_uri(source)
        root = f"gs://{bucket}/{gcs.folder_prefix(prefix)}"  # every listed object's URI starts with it
        return _without_gray_copies(files, [f.uri[len(root):] for f in files], root, {})
    root = Path(source).expanduser()
    if not root.is_dir():
        raise ConfigError(f"ingest.source: {source}: not a folder, 'sample' or gs:// URI")
    walk = _walk_files(root, store.resolve() if store is not None else None)
    for folder in walk.unlisted:
        print(f"chromify: ingest: cannot list {folder}: its photos are left out", file=sys.stderr)
    for link in walk.linked:
        print(f"chromify: ingest: {link}: a link to a folder, not followed: its photos are left out (point "
              "ingest.source at the folder itself)", file=sys.stderr)
    for name in walk.bad_names:
        print(f"chromify: ingest: {name}: the file name is not valid UTF-8: left out (rename it)", file=sys.stderr)
    images = [p for p in walk.files if _is_image_name(p)]
    notes = {"skipped_not_image_suffix": len(walk.files) - len(images), "unlisted_folders": len(walk.unlisted)}
    notes.update({k: len(v) for k, v in (("linked_folders", walk.linked), ("skipped_bad_name", walk.bad_names)) if v})
    return _without_gray_copies([_local_file(p) for p in images], [p.relative_to(root).as_posix() for p in images],
                                f"{root}/", notes)


def _without_gray_copies(files: list[SourceFile], names: list[str], root: str, notes: dict[str, int]) -> Listing:
    """A Kaggle colorization layout's grayscale copies are derived from the colour photos: not training data, only
    checked for pairing (`names`: each file's path relative to the source, '/'-separated)."""
    gray, pairing, pairs = kaggle_layout(names)
    if pairs:
        notes = {**notes, "kaggle_pairs": pairs, "kaggle_unpaired": len(pairing)}
    return Listing([f for f, n in zip(files, names, strict=True) if n not in gray], notes,
                   [(root + n, problem) for n, problem in pairing])


def read_source_bytes(f: SourceFile, limit: int | None = None) -> bytes:
    """The file's bytes; `limit` bounds what a gzip-encoded object may expand to (gcs.TooLarge past it)."""
    if f.local_path is not None:
        return Path(f.local_path).read_bytes()
    return gcs.read_gcs_bytes(f.uri, f.stamp, gzip=f.gzip, limit=limit)


def split_for(sha256: str, val_fraction: float, test_fraction: float) -> str:
    """Deterministic split from the content hash: stable as the dataset grows."""
    u = int(sha256[:12], 16) / float(1 << 48)
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


@dataclass(frozen=True)
class Facts:
    """What reading one file established; `error` says why it was not decoded (too_many_pixels: not tried)."""

    sha256: str = ""
    width: int = 0
    height: int = 0
    format: str = ""
    orientation: int = 1
    decoder: str = ""
    chroma: float = math.nan
    off_tint: float = math.nan  # chroma across the photo's mean tint (a toned black-and-white photo has ~none)
    error: str = ""  # "", or a reason: empty | not_image | undecodable | too_many_pixels | too_large | unreadable
    detail: str = ""
    path: str = ""  # content-store path, relative to out_dir, for files that decoded


def _error_kind(reason: str) -> str:
    for prefix, kind in (("empty", "empty"), ("not an image", "not_image"), ("too many pixels", "too_many_pixels")):
        if reason.startswith(prefix):
            return kind
    return "undecodable"


def inspect_bytes(data: bytes, name: str, max_pixels: int) -> Facts:
    """Decode fully and measure one file; never raises for a bad image."""
    sha = hashlib.sha256(data).hexdigest()
    try:
        img = open_checked(data, name, 1 << 62)  # only PIL's hard limit here: the size is recorded, then judged
    except InputImageError as exc:
        return Facts(sha, error=_error_kind(exc.reason), detail=exc.reason)
    if img.size[0] * img.size[1] > max_pixels:
        w, h = img.size
        return Facts(sha, w, h, img.format or "", error="too_many_pixels",
                     detail=f"{w}x{h} > {max_pixels:,} pixels: refused before decoding")
    fmt, decoder = img.format or "", decoder_for(img)
    try:
        rgb = to_srgb(img, name)  # the pixels first: reading a PNG's EXIF loads them and swallowed their error
    except InputImageError as exc:
        return Facts(sha, *img.size, fmt, error=_error_kind(exc.reason), detail=exc.reason)
    orientation = orientation_of(img)
    if decoder in (DECODER_JPEG, DECODER_JPEG_ICC) and (damage := jpeg_damage(data)):
        return Facts(sha, *img.size, fmt, orientation, error="undecodable",
                     detail=f"damaged JPEG data ({damage}): part of the picture would be a gray band")
    w, h = rgb.size
    factor = max(1, min(w, h) // THUMB_SIDE)
    thumb = np.asarray(rgb.reduce(factor) if factor > 1 else rgb)
    return Facts(sha, w, h, fmt, orientation, decoder, *chroma_stats(thumb))


def chroma_stats(rgb: np.ndarray) -> tuple[float, float]:
    """(mean chroma, mean chroma across the mean tint) of (H, W, 3) uint8 sRGB as the shards will store it
    (through their Lab table: within 0.05 of the float conversion, 8x faster): the second is each pixel's ab
    component perpendicular to the image's mean ab direction. A sepia or cyanotype print has chroma, however strong,
    but all of it along one hue; a colour photo has some across it (on ../shared: toned prints <= 0.39, the 743
    colour photos >= 0.76)."""
    ab = rgb_to_lab8(rgb)[1:].astype(np.float32) - AB_OFFSET
    chroma = np.hypot(ab[0], ab[1])
    mean_a, mean_b = float(ab[0].mean()), float(ab[1].mean())
    norm = float(np.hypot(mean_a, mean_b))
    mean = float(chroma.mean())
    if norm < 1e-6:  # no mean tint to be across: all of the chroma counts
        return mean, mean
    return mean, float(np.abs(ab[0] * mean_b - ab[1] * mean_a).mean() / norm)


def judge(f: Facts, p: IngestParams) -> tuple[str | None, str]:
    """(reason, detail) under the current thresholds; reason None: accepted."""
    if f.error and f.error != "too_many_pixels":
        return f.error, f.detail
    if f.error == "too_many_pixels" and not f.width:  # over PIL's own hard limit: no size known
        return f.error, f.detail
    if f.width * f.height > p.max_pixels:
        return "too_many_pixels", f"{f.width}x{f.height} > {p.max_pixels:,} pixels: refused before decoding"
    if min(f.width, f.height) < p.min_side:
        return "too_small", f"{f.width}x{f.height}: short side under {p.min_side} px"
    if f.chroma < p.min_chroma:
        return "grayscale", f"mean chroma {f.chroma:.2f} < {p.min_chroma}"
    if f.off_tint < p.min_chroma_off_tint:
        return "grayscale", (f"mean chroma {f.chroma:.2f}, but {f.off_tint:.2f} across its tint < "
                             f"{p.min_chroma_off_tint}: a toned black-and-white photo")
    return None, ""


def _needs_decode(f: Facts, p: IngestParams, size: int | None) -> bool:
    """A cached file must be read again when a threshold change could now accept what was never stored."""
    if f.error in FILE_REASONS:
        return False
    if f.error == "too_large":  # refused unread from its size; read now if a raised max_pixels lets it in (a
        return size is not None and size <= byte_cap(p.max_pixels)  # gzip bomb's expanded size is never known)
    if f.error == "too_many_pixels":  # refused from the header; accepted now only if the limit rose above it
        return 0 < f.width * f.height <= p.max_pixels or (f.width == 0 and p.max_pixels > pil_hard_limit())
    if not f.path:  # decoded, but its bytes were not kept (e.g. unreadable before, or an older manifest)
        return True
    return math.isnan(f.off_tint)  # measured before the tint check existed: measured again, once


def _store(data: bytes, out_dir: Path, sha: str, fmt: str) -> str:
    """Write once under the content's name. Renamed into place but not fsynced (10 ms a file): after a crash a
    re-run finds a short or empty file by its size and reads the source again; preprocess, which hashes what it
    reads, removes one of the right size with the wrong bytes, and the next ingest reads that source again too."""
    rel = Path("images") / sha[:2] / f"{sha}{FORMAT_SUFFIX.get(fmt, '.img')}"
    target = out_dir / rel
    if not _stored_ok(target, len(data)):
        atomic_write(target, lambda fh: fh.write(data), durable=False)
    return rel.as_posix()


def _stored_ok(path: Path, size: int | None) -> bool:
    """The stored copy is there, at the source's size where that is known (not for gzip-encoded objects: preprocess
    checks every copy's sha256 anyway)."""
    try:
        return size is None or path.stat().st_size == size
    except OSError:
        return False


def _inspect_task(args: tuple[SourceFile, str, int]) -> tuple[SourceFile, Facts]:
    f, out_dir, max_pixels = args
    if f.size > byte_cap(max_pixels):  # a worker holds the whole file: a multi-GB one would get it killed
        return f, Facts(error="too_large", detail=f"{too_large(f.size, max_pixels)}: not read")
    try:
        data = read_source_bytes(f, byte_cap(max_pixels))
    except gcs.TooLarge:
        return f, Facts(error="too_large", detail=f"gzip-encoded, expands past {byte_cap(max_pixels):,} bytes, more "
                                                  f"than a photo of at most {max_pixels:,} pixels takes: not kept")
    except (OSError, ChromifyError) as exc:
        return f, Facts(error="unreadable", detail=f"cannot read ({exc})")
    except Exception as exc:  # noqa: BLE001 - e.g. a GCS transport error: report the file, keep ingesting
        return f, Facts(error="unreadable", detail=f"cannot read ({type(exc).__name__}: {exc})")
    try:
        facts = inspect_bytes(data, f.uri, max_pixels)
    except MemoryError:  # this machine's state, not a fact about the file (as "undecodable" would cache it)
        return f, Facts(error="unreadable", detail="out of memory while decoding; tried again on the next run")
    if not facts.error:
        # Stored even if a threshold rejects it now: a later, looser threshold then needs no second read.
        facts = replace(facts, path=_store(data, Path(out_dir), facts.sha256, facts.format))
    return f, facts


def _worker_init(parent: int) -> None:
    die_with(parent)
    gcs.fresh()


@contextmanager
def _inspected(todo: list[SourceFile], out_dir: Path, max_pixels: int, workers: int) -> Iterator[Iterator[tuple]]:
    """(file, facts) for every file of `todo`, in order; in a process pool when there is enough to do."""
    args = [(f, str(out_dir), max_pixels) for f in todo]
    if workers <= 1 or len(todo) < 8:
        yield map(_inspect_task, args)
        return
    lab8_table()  # built before the fork, shared by the workers
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init,
                             initargs=(os.getpid(),)) as pool:
        pool.submit(int).result()  # forks the workers now, before a progress bar starts its thread
        yield pool.map(_inspect_task, args, chunksize=8)


def _facts_from_row(row: dict[str, Any]) -> Facts:
    reason = row.get("reason")
    cached_error = reason if reason in (*FILE_REASONS, "too_many_pixels", "too_large", "unreadable") else ""
    chroma, off_tint = row.get("chroma"), row.get("chroma_off_tint")  # not in tables from before the check
    return Facts(row["sha256"] or "", int(row.get("width") or 0), int(row.get("height") or 0),
                 row.get("format") or "", int(row.get("orientation") or 1), row.get("decoder") or DECODER_PIL,
                 math.nan if chroma is None else float(chroma), math.nan if off_tint is None else float(off_tint),
                 cached_error, row.get("detail") or "" if cached_error else "", row.get("path") or "")


def _damaged_table() -> tuple[type[BaseException], ...]:
    """What pyarrow raises on a damaged Parquet file, reading it or decoding its columns (UnicodeDecodeError on a
    flipped byte in a text column, ArrowNotImplementedError on a garbled type, ArrowInvalid, ArrowIOError)."""
    import pyarrow as pa

    return OSError, ValueError, pa.ArrowException


def _read_rows(path: Path) -> dict[tuple[str, int, str], dict]:
    if not path.exists():
        return {}
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
        rows = table.to_pylist() if {"uri", "size_bytes", "stamp", "sha256"} <= set(table.column_names) else []
    except _damaged_table() as exc:  # a cache is only a cache: read afresh
        print(f"chromify: ingest: {path}: unreadable ({first_line(exc)}); reading every photo again",
              file=sys.stderr)
        return {}
    return {(r["uri"], r["size_bytes"], r["stamp"]): r for r in rows}


def _table_bytes(rows: list[dict], columns: tuple[str, ...]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    def kind(c: str) -> pa.DataType:
        return pa.int64() if c in _INT_COLUMNS else pa.float64() if c in ("chroma", "chroma_off_tint") else pa.string()

    table = pa.table({c: pa.array([r[c] for r in rows], type=kind(c)) for c in columns})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def write_if_changed(path: Path, data: bytes) -> bool:
    """Atomic write, skipped when the file already holds exactly `data` (a no-op re-run keeps mtimes)."""
    if path.exists() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return False
    atomic_write(path, lambda fh: fh.write(data))
    return True


def _csv_bytes(header: list[str], rows: list[list[str]]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")


def ingest(p: IngestParams, reports_dir: str | Path = "reports", workers: int | None = None,
           progress: bool = False) -> dict[str, int]:
    """Run the ingest stage; returns the counts written to `reports/ingest.json`.

    One ingest at a time per `out_dir`: each removes the stored copies no row of its tables names, and the temp
    files of killed runs, which would be a running one's half-written copies."""
    out = Path(p.out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def busy(pid: int | None) -> DataError:
        holder = f" (pid {pid})" if pid is not None else ""
        return DataError(f"{out}: another ingest is writing here{holder}; wait for it to end or ingest into "
                         "another folder")

    with exclusive_lock(out / ".ingest.lock", busy, "a second ingest from removing this one's copies"):
        return _ingest(p, Path(reports_dir), workers, progress)


def _ingest(p: IngestParams, reports: Path, workers: int | None, progress: bool) -> dict[str, int]:
    import json

    out = Path(p.out_dir)
    manifest_path, rejects_path = out / "manifest.parquet", out / "rejects.parquet"
    if p.source.startswith("gs://"):
        gcs.fresh()  # a bucket that was unreachable in an earlier run of this process is tried afresh
    listing = _list(p.source, out)
    if not listing.files:  # a mistyped prefix, say: the earlier run's manifest and facts are kept, not emptied
        raise ConfigError(f"ingest.source {p.source}: no image files (by suffix: "
                          f"{', '.join(IMAGE_SUFFIXES)}); nothing was written")
    cache = {**_read_rows(rejects_path), **_read_rows(manifest_path)}

    known: list[tuple[SourceFile, Facts]] = []
    todo: list[SourceFile] = []
    for f in listing.files:
        row = cache.get((f.uri, f.size, f.stamp))
        facts = _facts_from_row(row) if row is not None else None
        if facts is None or facts.error == "unreadable" or _needs_decode(facts, p, None if f.gzip else f.size) or \
                (facts.path and not _stored_ok(out / facts.path, None if f.gzip else f.size)):
            todo.append(f)
        else:
            known.append((f, facts))

    workers = workers or min(os.cpu_count() or 1, 8)
    with _inspected(todo, out, p.max_pixels, workers) as it:
        bar = Progress(len(todo), "ingest", enabled=progress)
        for item in it:
            known.append(item)
            bar.update()
        bar.close()

    accepted: list[dict] = []
    rejected: list[dict] = []
    for f, facts in sorted(known, key=lambda x: x[0].uri):
        row = {"uri": f.uri, "sha256": facts.sha256, "width": facts.width, "height": facts.height,
               "source": p.source, "path": facts.path, "size_bytes": f.size, "stamp": f.stamp,
               "format": facts.format, "orientation": facts.orientation, "decoder": facts.decoder,
               "chroma": facts.chroma, "chroma_off_tint": facts.off_tint}
        reason, detail = judge(facts, p)
        if reason is None:
            accepted.append({**row, "split": split_for(facts.sha256, p.val_fraction, p.test_fraction)})
        else:
            rejected.append({**row, "reason": reason, "detail": detail})

    # Exact duplicates: the first URI in sorted order keeps the photo, the others are rejected by name.
    kept: dict[str, dict] = {}
    for row in accepted:
        first = kept.setdefault(row["sha256"], row)
        if first is not row:
            rejected.append({**row, "reason": "duplicate", "detail": f"same content as {first['uri']}"})
    accepted = list(kept.values())
    rejected.sort(key=lambda r: r["uri"])

    changed = write_if_changed(rejects_path, _table_bytes(rejected, REJECT_COLUMNS))
    write_if_changed(reports / "ingest_rejects.csv",
                     _csv_bytes(["path", "reason", "detail"], [[r["uri"], r["reason"], r["detail"]] for r in rejected]))
    write_if_changed(reports / "ingest_pairing.csv", _csv_bytes(["path", "problem"], [[*x] for x in listing.pairing]))
    counts = {"files_seen": len(listing.files), "accepted": len(accepted), "rejected": len(rejected),
              "decoded_this_run": len(todo)}
    for split in ("train", "val", "test"):
        counts[f"split_{split}"] = sum(r["split"] == split for r in accepted)
    for r in rejected:
        counts[f"rejected_{r['reason']}"] = counts.get(f"rejected_{r['reason']}", 0) + 1
    # Broken or unusable files, as opposed to the grayscale photos and duplicates a healthy dataset also has.
    counts["bad_files"] = sum(r["reason"] not in ("grayscale", "duplicate") for r in rejected)
    counts.update(listing.notes)
    # Written even when empty: a manifest left from an earlier run would feed preprocess photos this run refused.
    changed |= write_if_changed(manifest_path, _table_bytes(accepted, MANIFEST_COLUMNS))
    write_if_changed(reports / "ingest.json", (json.dumps(counts, indent=2, sort_keys=True) + "\n").encode())
    if changed or todo:  # else the store is as the last run left it: a no-op re-run does not list it again
        _prune_store(out, {r["path"] for r in (*accepted, *rejected) if r["path"]})
    if not accepted:
        raise ChromifyError(f"ingest.source {p.source}: no usable colour photo among {len(listing.files)} file(s); "
                            f"reasons in {reports / 'ingest_rejects.csv'}")
    return counts


_STORED_NAME = re.compile(r"[0-9a-f]{64}\.[a-z0-9]+|\..+\.tmp")


def _prune_store(out: Path, keep: set[str]) -> None:
    """Remove the stored copies no table row names (photos gone from the source, or a previous source's: nothing
    reads them, and DVC would cache them again with every version of the folder), and killed runs' temp files.
    Only names the store writes are touched; the source, not this copy, is where a photo lives."""
    images = out / "images"
    for sub in images.iterdir() if images.is_dir() else []:
        if not (sub.is_dir() and re.fullmatch(r"[0-9a-f]{2}", sub.name)):
            continue
        for f in sub.iterdir():
            if f"images/{sub.name}/{f.name}" not in keep and _STORED_NAME.fullmatch(f.name) and f.is_file():
                f.unlink(missing_ok=True)
        with suppress(OSError):  # not empty: the usual case
            sub.rmdir()


def read_manifest(out_dir: str | Path, split: str | None = None) -> list[dict]:
    """Accepted rows of the manifest (optionally one split), sorted by uri."""
    import pyarrow.parquet as pq

    path = Path(out_dir) / "manifest.parquet"
    if not path.exists():
        raise ChromifyError(f"{path}: no manifest; run `chromify ingest` first")
    try:
        table = pq.read_table(path)
        rows = table.to_pylist()  # decodes the columns: a flipped byte in a text one fails here
    except _damaged_table() as exc:
        raise ChromifyError(f"{path}: unreadable ({first_line(exc)}); run `chromify ingest` again") from None
    missing = [c for c in ("uri", "sha256", "path", "split") if c not in table.column_names]
    if missing:  # a Parquet file, but not a manifest: a KeyError traceback in preprocess before
        raise ChromifyError(f"{path}: not a Chromify manifest (no column {', '.join(missing)}); run `chromify "
                            "ingest` again")
    return [r for r in rows if split is None or r["split"] == split]
