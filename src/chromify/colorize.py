"""Colorize files, folders and globs; a bad file is skipped with its reason, never the whole batch."""

from __future__ import annotations

import glob
from collections.abc import Iterable
from pathlib import Path

from chromify.decode import IMAGE_SUFFIXES, decode_rgb, read_bytes
from chromify.errors import InputImageError
from chromify.io import atomic_write

MAX_PIXELS = 200_000_000


def expand_inputs(inputs: Iterable[str]) -> list[tuple[Path, Path]]:
    """(file, path relative to its input root) for every image named by files, folders or globs."""
    found: list[tuple[Path, Path]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found += [(f, f.relative_to(p)) for f in sorted(p.rglob("*"))
                      if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
        elif p.exists():
            found.append((p, Path(p.name)))
        else:
            found += [(Path(m), Path(Path(m).name)) for m in sorted(glob.glob(item, recursive=True))
                      if Path(m).is_file()]
    return found


def colorize_paths(inputs: Iterable[str], out_dir: str | Path, model_dir: str | Path,
                   progress: bool = False) -> tuple[int, list[tuple[str, str]]]:
    """Colorize into `out_dir` as PNG, keeping relative paths; returns (count done, [(path, reason)])."""
    from chromify.inference import Colorizer

    files = expand_inputs(inputs)
    failed: list[tuple[str, str]] = [(i, "no such file, folder or matching glob") for i in inputs
                                     if not Path(i).exists() and not glob.glob(i, recursive=True)]
    col = Colorizer(model_dir)
    it = files
    if progress:
        from tqdm import tqdm

        it = tqdm(files, desc="colorize", unit="img")
    done = 0
    for src, rel in it:
        try:
            img = decode_rgb(read_bytes(src), str(src), MAX_PIXELS)
        except InputImageError as exc:
            failed.append((str(src), exc.reason))
            continue
        result = col.colorize(img)
        target = (Path(out_dir) / rel).with_suffix(".png")
        atomic_write(target, lambda f, im=result: im.save(f, format="PNG"))
        done += 1
    return done, failed
