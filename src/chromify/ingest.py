"""Ingest: find photos, decode each fully, reject the unusable with a reason, split by content hash.

Accepted files are stored content-addressed under `<out_dir>/images/`, so re-runs and growing datasets
only touch what is new, and a photo's split never changes: it is a function of its sha256 alone.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chromify.config import IngestParams
from chromify.decode import IMAGE_SUFFIXES, decode_rgb
from chromify.errors import ChromifyError, ConfigError, InputImageError
from chromify.io import atomic_write, atomic_write_json, atomic_write_text
from chromify.lab import mean_chroma

MANIFEST_COLUMNS = ("uri", "sha256", "width", "height", "split", "source", "path", "size_bytes", "stamp")
REJECT_COLUMNS = ("uri", "reason", "detail", "sha256", "source", "size_bytes", "stamp")

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
    st = path.stat()
    return SourceFile(str(path), st.st_size, str(st.st_mtime_ns), str(path))


def find_kaggle_colour_dirs(root: Path) -> list[tuple[Path, Path | None]]:
    """Pairs (colour dir, grayscale dir or None) in a Kaggle-style layout, or [] for a plain folder."""
    pairs = []
    for d in sorted(p for p in root.rglob("*") if p.is_dir()):
        name = d.name.lower()
        if "color" in name or "colour" in name:
            gray = None
            for sib in d.parent.iterdir():
                sname = sib.name.lower()
                if sib.is_dir() and any(k in sname for k in ("gray", "grey", "black", "bw")):
                    if sname.replace("gray", "").replace("grey", "").replace("black", "").replace("bw", "") == (
                        name.replace("colour", "").replace("color", "")
                    ):
                        gray = sib
            pairs.append((d, gray))
    return pairs


def _images_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def list_source(source: str) -> tuple[list[SourceFile], dict[str, int]]:
    """The files a source names, and notes about its layout (e.g. Kaggle pairing mismatches)."""
    notes: dict[str, int] = {}
    if source == "sample":
        return [_local_file(p) for p in sample_paths()], notes
    if source.startswith("gs://"):
        from chromify.gcs import list_gcs_images

        return list_gcs_images(source), notes
    root = Path(source).expanduser()
    if not root.is_dir():
        raise ConfigError(f"ingest.source: {source}: not a folder, 'sample' or gs:// URI")
    kaggle = find_kaggle_colour_dirs(root)
    if kaggle:
        files: list[SourceFile] = []
        unpaired = 0
        for colour_dir, gray_dir in kaggle:
            colour = _images_under(colour_dir)
            files.extend(_local_file(p) for p in colour)
            if gray_dir is not None:
                gray_names = {p.relative_to(gray_dir).as_posix() for p in _images_under(gray_dir)}
                colour_names = {p.relative_to(colour_dir).as_posix() for p in colour}
                unpaired += len(colour_names ^ gray_names)
        notes["kaggle_colour_dirs"] = len(kaggle)
        notes["kaggle_unpaired"] = unpaired
        return files, notes
    return [_local_file(p) for p in _images_under(root)], notes


def read_source_bytes(f: SourceFile) -> bytes:
    if f.local_path is not None:
        return Path(f.local_path).read_bytes()
    from chromify.gcs import read_gcs_bytes

    return read_gcs_bytes(f.uri)


def split_for(sha256: str, val_fraction: float, test_fraction: float) -> str:
    """Deterministic split from the content hash: stable as the dataset grows."""
    u = int(sha256[:12], 16) / float(1 << 48)
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


@dataclass(frozen=True)
class Inspection:
    sha256: str
    width: int
    height: int
    reason: str | None  # None: accepted
    detail: str = ""


def inspect_bytes(data: bytes, name: str, min_side: int, max_pixels: int, min_chroma: float) -> Inspection:
    """Decode fully and classify one file; never raises for a bad image."""
    sha = hashlib.sha256(data).hexdigest()
    try:
        img = decode_rgb(data, name, max_pixels)
    except InputImageError as exc:
        reason = exc.reason
        kind = (
            "empty"
            if reason.startswith("empty")
            else "not_image"
            if reason.startswith("not an image")
            else "too_many_pixels"
            if reason.startswith("too many pixels")
            else "undecodable"
        )
        return Inspection(sha, 0, 0, kind, reason)
    w, h = img.size
    if min(w, h) < min_side:
        return Inspection(sha, w, h, "too_small", f"{w}x{h}: short side under {min_side} px")
    thumb = img.copy()
    thumb.thumbnail((256, 256))
    chroma = mean_chroma(np.asarray(thumb))
    if chroma < min_chroma:
        return Inspection(sha, w, h, "grayscale", f"mean chroma {chroma:.2f} < {min_chroma}")
    return Inspection(sha, w, h, None)


def _inspect_task(args: tuple[SourceFile, int, int, float]) -> tuple[SourceFile, Inspection, bytes | None]:
    f, min_side, max_pixels, min_chroma = args
    try:
        data = read_source_bytes(f)
    except (OSError, ChromifyError) as exc:
        return f, Inspection("", 0, 0, "unreadable", str(exc)), None
    result = inspect_bytes(data, f.uri, min_side, max_pixels, min_chroma)
    return f, result, (data if result.reason is None else None)


def _previous(path: Path, columns: Iterable[str]) -> dict[tuple[str, int, str], dict]:
    if not path.exists():
        return {}
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    if not set(columns) <= set(table.column_names):
        return {}
    return {(r["uri"], r["size_bytes"], r["stamp"]): r for r in table.to_pylist()}


def _store(data: bytes, images_dir: Path, sha: str, suffix: str) -> str:
    rel = Path("images") / sha[:2] / f"{sha}{suffix.lower()}"
    target = images_dir.parent / rel
    if not target.exists():
        atomic_write(target, lambda f: f.write(data))
    return rel.as_posix()


def _write_parquet(path: Path, rows: list[dict], columns: tuple[str, ...]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({c: [r[c] for r in rows] for c in columns}) if rows else pa.table(
        {c: pa.array([], type=pa.int64() if c in ("width", "height", "size_bytes") else pa.string()) for c in columns}
    )
    buf = io.BytesIO()
    pq.write_table(table, buf)
    data = buf.getvalue()
    if not (path.exists() and path.read_bytes() == data):
        atomic_write(path, lambda f: f.write(data))


def _iter_inspected(todo: list[SourceFile], p: IngestParams, workers: int) -> Iterator[tuple]:
    args = [(f, p.min_side, p.max_pixels, p.min_chroma) for f in todo]
    if workers <= 1 or len(todo) < 8:
        yield from map(_inspect_task, args)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(_inspect_task, args, chunksize=16)


def ingest(p: IngestParams, reports_dir: str | Path = "reports", workers: int | None = None,
           progress: bool = False) -> dict[str, int]:
    """Run the ingest stage; returns the counts written to `reports/ingest.json`."""
    out = Path(p.out_dir)
    reports = Path(reports_dir)
    manifest_path, rejects_path = out / "manifest.parquet", out / "rejects.parquet"
    files, notes = list_source(p.source)
    previous = _previous(manifest_path, MANIFEST_COLUMNS)
    previous_rejects = _previous(rejects_path, REJECT_COLUMNS)

    accepted: list[dict] = []
    rejected: list[dict] = []
    todo: list[SourceFile] = []
    for f in files:
        key = (f.uri, f.size, f.stamp)
        if key in previous and (out / previous[key]["path"]).exists():
            row = previous[key]
            accepted.append({**row, "split": split_for(row["sha256"], p.val_fraction, p.test_fraction)})
        elif key in previous_rejects and previous_rejects[key]["reason"] != "duplicate":
            rejected.append(previous_rejects[key])
        else:
            todo.append(f)

    workers = workers or min(os.cpu_count() or 1, 8)
    it = _iter_inspected(todo, p, workers)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, total=len(todo), desc="ingest", unit="img")
    for f, r, data in it:
        base = {"uri": f.uri, "sha256": r.sha256, "source": p.source, "size_bytes": f.size, "stamp": f.stamp}
        if r.reason is not None:
            rejected.append({**base, "reason": r.reason, "detail": r.detail})
            continue
        path = _store(data, out / "images", r.sha256, Path(f.uri).suffix or ".img")
        split = split_for(r.sha256, p.val_fraction, p.test_fraction)
        accepted.append({**base, "width": r.width, "height": r.height, "split": split, "path": path})

    # Exact duplicates: the first URI in sorted order keeps the photo, the others are rejected by name.
    accepted.sort(key=lambda r: r["uri"])
    kept: dict[str, dict] = {}
    for row in accepted:
        first = kept.setdefault(row["sha256"], row)
        if first is not row:
            rejected.append({**{k: row[k] for k in ("uri", "sha256", "source", "size_bytes", "stamp")},
                             "reason": "duplicate", "detail": f"same content as {first['uri']}"})
    accepted = sorted(kept.values(), key=lambda r: r["uri"])
    rejected.sort(key=lambda r: r["uri"])
    if not accepted:
        raise ChromifyError(f"ingest.source {p.source}: no usable colour photo among {len(files)} file(s)")

    _write_parquet(manifest_path, accepted, MANIFEST_COLUMNS)
    _write_parquet(rejects_path, rejected, REJECT_COLUMNS)
    csv_buf = io.StringIO()
    writer = csv.writer(csv_buf, lineterminator="\n")
    writer.writerow(["path", "reason", "detail"])
    writer.writerows([r["uri"], r["reason"], r["detail"]] for r in rejected)
    atomic_write_text(reports / "ingest_rejects.csv", csv_buf.getvalue())

    counts = {"files_seen": len(files), "accepted": len(accepted), "rejected": len(rejected)}
    for split in ("train", "val", "test"):
        counts[f"split_{split}"] = sum(r["split"] == split for r in accepted)
    for r in rejected:
        counts[f"rejected_{r['reason']}"] = counts.get(f"rejected_{r['reason']}", 0) + 1
    counts.update(notes)
    atomic_write_json(reports / "ingest.json", counts)
    return counts


def read_manifest(out_dir: str | Path, split: str | None = None) -> list[dict]:
    import pyarrow.parquet as pq

    path = Path(out_dir) / "manifest.parquet"
    if not path.exists():
        raise ChromifyError(f"{path}: no manifest; run `chromify ingest` first")
    rows = pq.read_table(path).to_pylist()
    return [r for r in rows if split is None or r["split"] == split]
