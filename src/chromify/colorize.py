"""Colorize files, folders and globs; a bad file is skipped with its reason, never the whole batch."""

from __future__ import annotations

import base64
import errno
import glob
import html
import io
import os
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, PngImagePlugin

from chromify.decode import IMAGE_SUFFIXES, MAX_ASPECT, decode_rgb, read_bytes
from chromify.errors import ConfigError, InputImageError, first_line
from chromify.io import atomic_write, atomic_write_text
from chromify.progress import Progress

# A 12,000 × 10,000 scan; refused from the header above that. Memory stays ~6 bytes a pixel plus fixed strips.
MAX_PIXELS = 120_000_000
# --format value → (PIL format, file suffix)
FORMATS = {"png": ("PNG", ".png"), "jpg": ("JPEG", ".jpg"), "jpeg": ("JPEG", ".jpg")}
JPEG_QUALITY = 92
# libjpeg's JPEG_MAX_DIMENSION: Pillow encodes a 65,500 px side and fails on 65,501 with only "broken data stream".
JPEG_MAX_SIDE = 65_500
THUMB_SIDE = 640  # px, long side of the contact sheet's images: a sheet of a few dozen photos stays a few MB
# Photos on one contact sheet (~130 KB each): 200 make ~26 MB that a browser still opens; a 5,000-photo folder
# would make 650 MB that none does. The rest are in the output folder.
SHEET_MAX = 200
# Every image written carries this (PNG "Software" text, JPEG comment): a re-run may replace its own outputs,
# never a photo it did not write.
MARK = "chromify"
GENERATOR = f'<meta name="generator" content="{MARK}">'  # the contact sheet's mark


def output_format(name: str) -> tuple[str, str]:
    """'png' | 'jpg' | 'jpeg' → (PIL format, suffix)."""
    try:
        return FORMATS[name.lower()]
    except KeyError:
        raise ConfigError(f"output format {name!r} is not one of: png, jpg") from None


def check_encodable(width: int, height: int, fmt: str, name: str, hint: str = "use PNG") -> None:
    """Refuse (InputImageError) an image of width × height px that `fmt` cannot hold, before any work is spent on it."""
    if output_format(fmt)[0] != "JPEG":
        return
    for side, what in ((width, "wide"), (height, "high")):
        if side > JPEG_MAX_SIDE:
            raise InputImageError(name, f"{side} px {what} is beyond JPEG's {JPEG_MAX_SIDE:,} px; {hint}")


def save_image(rgb: np.ndarray | Image.Image, f: IO[bytes], fmt: str, fast: bool = False) -> None:
    """Encode (H, W, 3) uint8 as PNG or JPEG; `fast` trades PNG size for speed (for serving)."""
    img = rgb if isinstance(rgb, Image.Image) else Image.fromarray(rgb)
    pil_format, _ = output_format(fmt)
    if pil_format == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_text("Software", MARK)
        # Measured on a 2048² photo: level 1 + run-length strategy is as fast as plain level 1 and 20% smaller;
        # most of PNG's time is its row filtering, which no zlib setting removes.
        img.save(f, format="PNG", pnginfo=info,
                 **({"compress_level": 1, "compress_type": zlib.Z_RLE} if fast else {"compress_level": 6}))
    else:
        img.save(f, format="JPEG", quality=JPEG_QUALITY, comment=MARK.encode())


def written_by_chromify(path: Path) -> bool:
    """Whether the file at `path` is an image or contact sheet this tool wrote (its mark, read from the head only)."""
    if path.suffix.lower() in (".html", ".htm"):
        try:
            with open(path, "rb") as f:
                return GENERATOR.encode() in f.read(4096)
        except OSError:
            return False
    try:
        with Image.open(path) as im:
            return im.info.get("Software") == MARK or im.info.get("comment") == MARK.encode()
    except Exception:  # noqa: BLE001 - unreadable, not an image, gone: in any case not ours
        return False


def writable_folder(folder: Path, what: str) -> None:
    """Make `folder` or say in one line why it cannot hold our files: before any photo is worked on."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder}: the {what} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{folder}: cannot create the {what} ({exc.strerror or exc})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{folder}: the {what} is not writable")


def encode_image(rgb: np.ndarray, fmt: str, fast: bool = False) -> bytes:
    buf = io.BytesIO()
    save_image(rgb, buf, fmt, fast)
    return buf.getvalue()


def _glob_root(pattern: str) -> str:
    """The leading wildcard-free folders of a glob ('scans' of 'scans/**/*.jpg'): what its matches are relative to."""
    parts = Path(pattern).parts
    fixed = next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts) - 1)
    return str(Path(*parts[:fixed])) if fixed else "."


def _relative_to_root(match: str, root: str) -> Path:
    """A glob match's path under its root; only its name where the pattern climbs out ('x/*/../../y.jpg')."""
    rel = Path(os.path.normpath(os.path.relpath(match, root)))
    return Path(Path(match).name) if rel.parts[0] == ".." else rel


def first_mentions(pairs: Iterable[tuple[Path, Path]]) -> list[tuple[Path, Path]]:
    """(file, rel) pairs with a file named again (a folder and its subfolder, relative and absolute) left out."""
    seen: set[Path] = set()
    kept = []
    for src, rel in pairs:
        real = src.resolve()
        if real not in seen:
            seen.add(real)
            kept.append((src, rel))
    return kept


def expand_inputs(inputs: Iterable[str], exclude: Path | None = None,
                  left_alone: Counter | None = None) -> list[tuple[Path, Path]]:
    """(file, path relative to its input root) for every image named by files, folders or globs, each file once.

    A glob's root is its wildcard-free start, so 'scans/**/*.jpg' keeps the folders under scans. Files under
    `exclude` (the output folder) are left out, so a re-run never colorizes its own outputs. The folders' files
    without an image suffix are counted by suffix into `left_alone`, and links to folders (not followed) and to
    nothing as such.
    """
    excluded = exclude.resolve() if exclude is not None else None

    def keep(f: Path) -> bool:
        try:
            where = f.resolve()
        except (OSError, RuntimeError):  # a link loop: where it stands, then (counted as a broken link)
            where = f.absolute()
        return excluded is None or not where.is_relative_to(excluded)

    def folder(p: Path) -> list[tuple[Path, Path]]:
        found = []
        for f in sorted(p.rglob("*")):
            if f.is_symlink() and not f.is_file() and keep(f):  # a link to a folder (not followed) or to nothing
                if left_alone is not None:
                    left_alone["a link to a folder" if f.is_dir() else "a broken link"] += 1
                continue
            if not (f.is_file() and keep(f)):
                continue
            if f.suffix.lower() in IMAGE_SUFFIXES:
                found.append((f, f.relative_to(p)))
            elif left_alone is not None:
                left_alone[f.suffix.lower() or "(none)"] += 1
        return found

    found: list[tuple[Path, Path]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found += folder(p)
        elif p.exists():
            found.append((p, Path(p.name)))
        else:
            root = _glob_root(item)
            for m in sorted(glob.glob(item, recursive=True)):
                mp = Path(m)
                if mp.is_dir():
                    found += [(f, _relative_to_root(m, root) / rel) for f, rel in folder(mp)]
                elif mp.is_file() and keep(mp):
                    found.append((mp, _relative_to_root(m, root)))
    return first_mentions(found)


def side_by_side(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) → a (H, 2W, 3) canvas with the original on the left, and a view of its empty right half."""
    h, w = rgb.shape[:2]
    canvas = np.empty((h, 2 * w, 3), dtype=np.uint8)
    canvas[:, :w] = rgb
    return canvas, canvas[:, w:]


def _thumbnail_uri(rgb: np.ndarray) -> str:
    img = Image.fromarray(rgb)
    img.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def contact_sheet_html(rows: list[tuple[str, str, str]], title: str) -> str:
    """Self-contained page: one row per photo (name, original data URI, colorized data URI); no external URL."""
    body = "".join(
        f'<figure><figcaption>{html.escape(name)}</figcaption><div class="pair">'
        f'<img src="{before}" alt="original: {html.escape(name)}">'
        f'<img src="{after}" alt="colorized: {html.escape(name)}"></div></figure>'
        for name, before, after in rows
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">{GENERATOR}<title>{html.escape(title)}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:1.5em;background:#f6f4ef;color:#222}}
figure{{margin:0 0 2em}} figcaption{{font-size:14px;margin-bottom:.4em;word-break:break-all}}
.pair{{display:grid;grid-template-columns:1fr 1fr;gap:8px}} .pair img{{width:100%;height:auto;display:block}}
.head{{display:grid;grid-template-columns:1fr 1fr;gap:8px;font-weight:600}}
</style></head>
<body><h1>{html.escape(title)}</h1><div class="head"><span>original</span><span>colorized</span></div>
{body}
</body></html>
"""


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# The output's file system is full or read-only: not a photo's fault, and the same for every photo after it.
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


@dataclass
class ColorizeOutcome:
    """What a run wrote and what it skipped; the CLI exits non-zero only when nothing was written."""

    written: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, one-line reason)
    # files of the input folders without an image suffix (a .heic, a .gif, sidecars): by suffix, how many
    left_alone: Counter = field(default_factory=Counter)


def colorize_paths(inputs: Iterable[str], out_dir: str | Path, model_dir: str | Path, *,
                   render_size: int | None = None, fmt: str = "png", side_by_side_output: bool = False,
                   html_path: str | Path | None = None, batch_size: int = 0, device: str | None = None,
                   progress: bool = False, temperature: float | None = None,
                   prior_correction: float | None = None, chroma_gain: float | None = None,
                   outcome: ColorizeOutcome | None = None) -> ColorizeOutcome:
    """Colorize into `out_dir` keeping relative paths, each photo at its own size; bad files land in `failed`.
    `outcome` is filled as the run goes, so a caller interrupted mid-run can still say what was done.

    `batch_size` 0 picks 8 on a GPU and 1 on the CPU (where batching buys nothing and costs memory).
    """
    from chromify.inference import Colorizer, merge_full_resolution

    inputs = list(inputs)
    out_dir = Path(out_dir)
    _, suffix = output_format(fmt)
    if html_path is not None and Path(html_path).is_dir():
        raise ConfigError(f"{html_path}: the contact sheet path is a folder; name an .html file")
    outcome = outcome if outcome is not None else ColorizeOutcome()
    found = {i: expand_inputs([i], exclude=out_dir, left_alone=outcome.left_alone) for i in inputs}
    files = first_mentions(f for fs in found.values() for f in fs)  # the first mention gives the output's path
    for i, fs in found.items():
        if not Path(i).exists() and not glob.glob(i, recursive=True):
            outcome.failed.append((i, "no such file, folder or matching glob"))
        elif not fs:
            inside = Path(i).is_dir() and out_dir.resolve().is_relative_to(Path(i).resolve())
            outcome.failed.append((i, "no image files found" + (" outside the output folder" if inside else "")))
    inputs_seen = {src.resolve() for src, _ in files}
    plan: list[tuple[Path, Path, Path]] = []  # (file, rel, target)
    targets: set[Path] = set()
    siblings: dict[Path, set[Path]] = {}
    for _, rel in files:
        siblings.setdefault((out_dir / rel).with_suffix(suffix), set()).add(rel)
    for src, rel in files:
        target = (out_dir / rel).with_suffix(suffix)
        base, n = f"{rel.stem}-{rel.suffix.lstrip('.')}", 1
        # a.jpg and a.png in one folder: each is named by its suffix, so that neither's output is replaced by the
        # other's when one of them comes or goes; IMG_0001.jpg in several input folders: numbered in input order
        if len(siblings[target]) > 1:
            target = target.with_name(f"{base}{suffix}")
        while target in targets:
            target = target.with_name(f"{base}{suffix}" if n == 1 else f"{base}-{n}{suffix}")
            n += 1
        targets.add(target)
        plan.append((src, rel, target))
    if html_path is not None:
        sheet_path = Path(html_path).resolve()
        # Checked before any photo is written: the page, written last, would replace a photo this run wrote.
        clash = next((src for src, _, target in plan if target.resolve() == sheet_path), None)
        if clash is not None:
            raise ConfigError(f"{html_path}: is where the colorized {clash} goes; name another .html file for the "
                              "contact sheet")
        if sheet_path in inputs_seen or (sheet_path.exists() and not written_by_chromify(sheet_path)):
            raise ConfigError(f"{html_path}: exists and was not written by chromify; the contact sheet never "
                              "replaces another file: name a new .html file")
        if sheet_path.suffix.lower() in IMAGE_SUFFIXES:
            raise ConfigError(f"{html_path}: the contact sheet is a web page, not an image; name an .html file")
    col = Colorizer(model_dir, device=device, render_size=render_size, temperature=temperature,
                    prior_correction=prior_correction, chroma_gain=chroma_gain)
    if files:
        writable_folder(out_dir, "output folder")
        if html_path is not None:
            writable_folder(Path(html_path).parent, "contact sheet's folder")
    batch_size = batch_size or (8 if col.device.startswith("cuda") else 1)
    sheet: list[tuple[str, str, str]] = []
    bar = Progress(len(plan), "colorize", enabled=progress)
    for chunk in _chunks(plan, batch_size):
        decoded: list[tuple[Path, Path, Path, np.ndarray]] = []
        for src, rel, target in chunk:
            if target.resolve() in inputs_seen:
                outcome.failed.append((str(src), f"its output {target} would replace an input photo; "
                                                  "choose another output folder"))
                continue
            if target.exists() and not written_by_chromify(target):
                outcome.failed.append((str(src), f"{target} exists and was not written by chromify; "
                                                  "left as it is"))
                continue
            try:
                rgb = np.asarray(decode_rgb(read_bytes(src, MAX_PIXELS), str(src), MAX_PIXELS, max_aspect=MAX_ASPECT))
                # before the model runs: Pillow's JPEG encoder fails on a long side only after all that work
                h, w = rgb.shape[:2]
                alone_fits = max(w, h) <= JPEG_MAX_SIDE
                check_encodable(w * (2 if side_by_side_output else 1), h, fmt, str(src), "use --format png" + (
                    " or leave out --side-by-side" if side_by_side_output and alone_fits else ""))
                decoded.append((src, target, rel, rgb))
            except InputImageError as exc:
                outcome.failed.append((str(src), exc.reason))
            except MemoryError:  # a photo within the pixel limit that this machine cannot hold: the others can go on
                outcome.failed.append((str(src), "out of memory while decoding it"))
        abs_small = col.predict_small_ab([rgb for *_, rgb in decoded]) if decoded else []
        for (src, target, rel, rgb), ab in zip(decoded, abs_small, strict=True):
            if side_by_side_output:
                result, colour = side_by_side(rgb)
            else:
                result = colour = np.empty_like(rgb)
            merge_full_resolution(rgb, ab, out=colour, workers=col.merge_workers)
            try:
                atomic_write(target, lambda f, im=result: save_image(im, f, fmt))
            except OSError as exc:
                outcome.failed.append((str(src), f"cannot write {target} ({exc.strerror or first_line(exc)})"))
                if exc.errno in _DISK_FULL:  # every later photo would be decoded and colorized only to fail so
                    raise OSError(exc.errno, exc.strerror, str(target)) from None
                continue
            outcome.written.append(target)
            if html_path is not None and len(sheet) < SHEET_MAX:
                sheet.append((str(rel), _thumbnail_uri(rgb), _thumbnail_uri(colour)))
        bar.update(len(chunk))
    bar.close()
    if html_path is not None and sheet:
        try:
            done = len(outcome.written)
            title = f"Chromify: {done} photo(s) colorized" + (
                f"; the first {len(sheet)} shown here, all in {out_dir}" if done > len(sheet) else "")
            atomic_write_text(html_path, contact_sheet_html(sheet, title))
        except OSError as exc:
            raise ConfigError(f"{html_path}: cannot write the contact sheet ({exc.strerror or first_line(exc)}); "
                              f"the {len(outcome.written)} photo(s) are in {out_dir}") from None
    return outcome
