"""Decode any photo a user may have into 8-bit sRGB, refusing bombs before decoding them.

Two decoders: PIL for everything (it knows EXIF, ICC, palettes, CMYK, 16 bit) and libjpeg-turbo through
simplejpeg for the plain RGB JPEGs that make up most datasets, because it decodes 1.5-2x faster and can
downscale in the DCT domain. Ingest decides per photo which one preprocess may use (see `fast_jpeg_ok`).
"""

from __future__ import annotations

import io
import re
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageOps

from chromify.errors import InputImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
# Only the decoders photos need: PIL would otherwise also try EPS (Ghostscript), PSD, ICO and others
# on a file that merely carries an image suffix.
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF")  # JPEG includes MPO (multi-picture) files
FORMAT_SUFFIX = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}
EXIF_ORIENTATION = 0x0112
DECODER_PIL, DECODER_JPEG = "pil", "jpeg-turbo"

_SRGB_PROFILE = None


def _srgb_profile() -> ImageCms.ImageCmsProfile:
    global _SRGB_PROFILE
    if _SRGB_PROFILE is None:
        _SRGB_PROFILE = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    return _SRGB_PROFILE


@lru_cache(maxsize=32)
def _to_srgb_transform(icc: bytes, mode: str) -> ImageCms.ImageCmsTransform:
    # Building a transform costs ~10 ms, applying it ~1 ms; a dataset's photos share a handful of profiles.
    return ImageCms.buildTransform(ImageCms.ImageCmsProfile(io.BytesIO(icc)), _srgb_profile(), mode, "RGB")


def open_checked(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Open lazily and check the header: nothing is decoded yet, so a bomb costs nothing."""
    if not data:
        raise InputImageError(name, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # PIL warns from 89 Mpx and refuses from 179 Mpx; our own limit below is the one that counts.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as exc:
        claimed = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(claimed.group(1)):,} pixels" if claimed else "size"
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        raise InputImageError(name, f"too many pixels ({size} > {limit:,}): refused before decoding") from None
    except Exception as exc:  # noqa: BLE001 - any parser failure on untrusted bytes means "not an image we can read"
        if isinstance(exc, Image.UnidentifiedImageError):
            raise InputImageError(name, "not an image (unrecognised format)") from None
        raise InputImageError(name, f"unreadable image header ({exc or type(exc).__name__})") from None
    w, h = img.size
    if w <= 0 or h <= 0:
        raise InputImageError(name, f"unreadable image header (size {w}x{h})")
    if w * h > max_pixels:
        raise InputImageError(name, f"too many pixels ({w}x{h} > {max_pixels:,}): refused before decoding")
    return img


def orientation_of(img: Image.Image) -> int:
    """EXIF orientation 1..8 (1: as stored)."""
    try:
        value = int(img.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block is common and harmless: treat as upright
        return 1
    return value if 1 <= value <= 8 else 1


def _is_srgb_profile(icc: bytes) -> bool:
    try:
        desc = ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(icc)))
    except Exception:  # noqa: BLE001 - unreadable profile: to_srgb ignores it too
        return True
    return "srgb" in desc.lower()


def fast_jpeg_ok(img: Image.Image) -> bool:
    """True when libjpeg-turbo's RGB output equals PIL's normalised output: a 3-channel JPEG in sRGB."""
    icc = img.info.get("icc_profile")
    return img.format in ("JPEG", "MPO") and img.mode == "RGB" and (not icc or _is_srgb_profile(icc))


def to_srgb(img: Image.Image, name: str, draft_size: int | None = None) -> Image.Image:
    """Fully decode and normalise: EXIF orientation, any mode → 8-bit, alpha onto white, ICC → sRGB, RGB.

    `draft_size` lets JPEG decode at 1/2, 1/4 or 1/8 scale in the DCT domain (never below that size).
    """
    try:
        if draft_size and img.format in ("JPEG", "MPO"):
            scale = min(img.size) / draft_size
            img.draft("RGB", (int(img.size[0] / scale), int(img.size[1] / scale)))
        img.load()
        icc = img.info.get("icc_profile")
        img = ImageOps.exif_transpose(img)
        if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
            # 16-bit PNG/TIFF grayscale; "I" is also how PIL opens some 16-bit files, so the range is the type's.
            arr = np.asarray(img, dtype=np.float32)
            peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
            img = Image.fromarray(np.clip(arr * (255.0 / peak) + 0.5, 0, 255).astype(np.uint8), "L")
        elif img.mode == "F":
            arr = np.asarray(img, dtype=np.float32)
            img = Image.fromarray(np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
        if img.mode in ("P", "PA"):
            img = img.convert("RGBA")
        if img.mode in ("RGBA", "LA", "RGBa", "La"):
            # Transparent areas become white, as a viewer would show them on paper.
            rgba = img.convert("RGBA")
            background = Image.new("RGB", img.size, (255, 255, 255))
            background.paste(rgba, mask=rgba.getchannel("A"))
            img = background
        if icc and img.mode in ("RGB", "CMYK"):
            try:
                img = ImageCms.applyTransform(img, _to_srgb_transform(icc, img.mode))
            except (ImageCms.PyCMSError, OSError, ValueError):
                pass  # a broken or mismatched profile: the pixels are taken as sRGB, as browsers do
        if img.mode != "RGB":
            img = img.convert("RGB")
        return img
    except Exception as exc:  # noqa: BLE001 - decoders raise OSError, ValueError, EOFError, struct.error ...
        reason = str(exc) or type(exc).__name__
        if "truncated" in reason:
            reason = "truncated image data"
        raise InputImageError(name, f"cannot decode ({reason})") from None


def decode_rgb(data: bytes, name: str, max_pixels: int, draft_size: int | None = None) -> Image.Image:
    """Bytes → normalised 8-bit sRGB PIL image, or an InputImageError naming the file and the reason."""
    return to_srgb(open_checked(data, name, max_pixels), name, draft_size)


def read_bytes(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InputImageError(str(path), f"cannot read ({exc.strerror or exc})") from None


def _filter(source_side: float, size: int) -> Image.Resampling:
    # Downscaling: BOX (area averaging) antialiases as well as bilinear for these factors and costs 30% less.
    return Image.BOX if source_side > size else Image.BILINEAR


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Centre square of the short side → size × size (area average down, bilinear up), in one resampling pass."""
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) / 2, (h - s) / 2
    return img.resize((size, size), _filter(s, size), box=(left, top, left + s, top + s), reducing_gap=None)


# EXIF orientation → the transpose that shows the stored pixels upright (as ImageOps.exif_transpose does).
_ORIENT = {2: Image.FLIP_LEFT_RIGHT, 3: Image.ROTATE_180, 4: Image.FLIP_TOP_BOTTOM, 5: Image.TRANSPOSE,
           6: Image.ROTATE_270, 7: Image.TRANSVERSE, 8: Image.ROTATE_90}


def _jpeg_square(data: bytes, size: int, orientation: int) -> Image.Image:
    import simplejpeg

    h, w, _, _ = simplejpeg.decode_jpeg_header(data)
    factor = 1  # powers of two only: libjpeg-turbo's 3/8, 5/8, 7/8 scalings are slower than a full decode
    while factor < 8 and min(h, w) // (2 * factor) >= size:
        factor *= 2
    # libjpeg-turbo picks the smallest scale M/8 whose output is at least min_height x min_width: asking for
    # ceil(side / factor) gives exactly 1/factor. fastdct: the integer IDCT, a few % faster; its error (< 1
    # level) is far below the 8-bit Lab step.
    dh, dw = -(-h // factor), -(-w // factor)
    # One spare row, so that the last row of the crop below has a whole stride of bytes after its start.
    flat = np.empty((dh + 1) * dw * 3, dtype=np.uint8)
    rgb = simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=True, min_height=dh, min_width=dw, buffer=flat)
    h, w = rgb.shape[:2]
    s = min(h, w)
    # Crop while handing the pixels to PIL (copying the discarded sides costs as much as resizing): PIL's raw
    # decoder reads rows `stride` apart, so it takes the crop straight from the decoded buffer. A margin as wide
    # as the filter's reach keeps the square's edge pixels filtered as in the PIL path.
    margin = -(-s // size) + 1
    top, left = (h - s) / 2, (w - s) / 2
    y0, x0 = max(0, int(top) - margin), max(0, int(left) - margin)
    y1, x1 = min(h, int(top + s) + margin + 1), min(w, int(left + s) + margin + 1)
    start = (y0 * w + x0) * 3
    square = Image.frombuffer("RGB", (x1 - x0, y1 - y0), flat[start : start + (y1 - y0) * w * 3], "raw", "RGB",
                              w * 3, 1)
    box = (left - x0, top - y0, left - x0 + s, top - y0 + s)
    out = square.resize((size, size), _filter(s, size), box=box, reducing_gap=None)
    # A centre square crop commutes with the eight EXIF orientations, so orienting the small result is enough.
    return out.transpose(_ORIENT[orientation]) if orientation in _ORIENT else out


def square_image(data: bytes, name: str, size: int, decoder: str = DECODER_PIL, orientation: int = 1,
                 max_pixels: int = 400_000_000) -> Image.Image:
    """Bytes → size × size 8-bit sRGB centre square, upright; `decoder` and `orientation` as ingest recorded."""
    if decoder == DECODER_JPEG:
        try:
            return _jpeg_square(data, size, orientation)
        except (ValueError, OSError):
            pass  # libjpeg-turbo refuses what PIL accepted (rare: odd markers, arithmetic coding): use PIL
    return resize_center_crop(decode_rgb(data, name, max_pixels, draft_size=size), size)


def load_square(data: bytes, name: str, size: int, decoder: str = DECODER_PIL, orientation: int = 1,
                max_pixels: int = 400_000_000) -> np.ndarray:
    """As `square_image`, as a (size, size, 3) uint8 array."""
    return np.asarray(square_image(data, name, size, decoder, orientation, max_pixels))
