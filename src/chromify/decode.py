"""Decode any photo a user may have into 8-bit sRGB, refusing bombs before decoding them.

Two decoders: PIL for everything (it knows EXIF, ICC, palettes, CMYK, 16 bit) and libjpeg-turbo through
simplejpeg for the 3-channel JPEGs that make up most datasets, because it decodes 1.5-2x faster and can
downscale in the DCT domain. Ingest decides per photo which one preprocess may use (see `decoder_for`).
"""

from __future__ import annotations

import io
import re
import struct
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
# Image formats users do have, named when refused so that "not an image" does not puzzle them.
OTHER_FORMATS = ((b"GIF87a", "GIF"), (b"GIF89a", "GIF"), (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
                 (b"\x00\x00\x01\x00", "ICO"), (b"8BPS", "PSD"), (b"%!PS", "PostScript"), (b"%PDF", "PDF"))
FORMAT_SUFFIX = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}
EXIF_ORIENTATION = 0x0112
# Long side over short side beyond which a file is not taken for a photo when colorizing: a 39,000,000 × 1 px
# PNG of 38 KB passed the pixel limit and made the merge's per-column planes cost 8.6 GB. A 360° panorama is ~8:1.
MAX_ASPECT = 100
DECODER_PIL, DECODER_JPEG = "pil", "jpeg-turbo"
# libjpeg-turbo, then the embedded (non-sRGB) ICC profile applied to the small square instead of the full photo
DECODER_JPEG_ICC = "jpeg-turbo-icc"

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


def _apply_profile(img: Image.Image, icc: bytes) -> Image.Image:
    try:
        return ImageCms.applyTransform(img, _to_srgb_transform(icc, img.mode))
    except (ImageCms.PyCMSError, OSError, ValueError):
        return img  # a broken or mismatched profile: the pixels are taken as sRGB, as browsers do


def pil_hard_limit() -> int:
    """Pixels above which PIL refuses to open an image at all (twice its warning level), whatever our limit."""
    return 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else 1 << 62


# The sizes of the BMP info headers PIL reads (OS/2 1.x, Windows 3.x to v5), little-endian after the file header.
BMP_HEADER_SIZES = tuple(struct.pack("<I", n) for n in (12, 40, 52, 56, 64, 108, 124))


def sniff_image_format(data: bytes) -> str | None:
    """PIL format name from the file's magic bytes, or None when it is not a format we accept."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return "TIFF"
    if data.startswith(b"BM") and data[14:18] in BMP_HEADER_SIZES:  # two letters alone: "BMW…" in a text file
        return "BMP"
    return None


def open_checked(data: bytes, name: str, max_pixels: int, max_aspect: float | None = None) -> Image.Image:
    """Open lazily and check the header: nothing is decoded yet, so a bomb costs nothing."""
    if not data:
        raise InputImageError(name, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # PIL warns from 89 Mpx and refuses from 179 Mpx; our own limit below is the one that counts. Its
            # parsers also warn on junk ("Corrupt EXIF data"): the file's fate is said in one line anyway.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            warnings.simplefilter("ignore", UserWarning)
            img = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as exc:
        claimed = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(claimed.group(1)):,} pixels" if claimed else "size"
        limit = min(max_pixels, pil_hard_limit())  # the limit that refused it, ours or PIL's
        raise InputImageError(name, f"too many pixels ({size} > {limit:,}): refused before decoding") from None
    except MemoryError:
        raise  # the machine's trouble, not the file's (as in to_srgb)
    except Exception as exc:  # noqa: BLE001 - any parser failure on untrusted bytes means "not an image we can read"
        if isinstance(exc, Image.UnidentifiedImageError):
            kind = next((k for magic, k in OTHER_FORMATS if data.startswith(magic)), None)
            if kind is None and (ours := sniff_image_format(data)):  # a bad checksum or a zero size in the header
                # a TIFF may be whole but of a layout PIL does not decode (32-bit float RGB): not called damaged
                what = "corrupt or unsupported TIFF" if ours == "TIFF" else f"corrupt {ours}"
                raise InputImageError(name, f"{what} header: it starts as a {ours} file, but its header cannot be "
                                            "read" + (" (damaged, or a kind PIL does not decode, such as 32-bit "
                                                      "float colour)" if ours == "TIFF" else "")) from None
            raise InputImageError(name, f"not an image we read ({kind}; JPEG, PNG, WebP, BMP and TIFF are)" if kind
                                  else "not an image (unrecognised format)") from None
        raise InputImageError(name, f"unreadable image header ({exc or type(exc).__name__})") from None
    w, h = img.size
    if w <= 0 or h <= 0:
        raise InputImageError(name, f"unreadable image header (size {w}x{h})")
    if w * h > max_pixels:
        raise InputImageError(name, f"too many pixels ({w}x{h} > {max_pixels:,}): refused before decoding")
    if max_aspect is not None and max(w, h) > max_aspect * min(w, h):
        raise InputImageError(name, f"{w}x{h} is more than {max_aspect:g} times as long as it is wide, not a photo's "
                                    "shape: refused before decoding")
    return img


def orientation_of(img: Image.Image) -> int:
    """EXIF orientation 1..8 (1: as stored)."""
    try:
        value = int(img.getexif().get(EXIF_ORIENTATION, 1))  # a PNG's may decode the pixels (eXIf can follow them)
    except MemoryError:
        raise  # the machine's trouble: "upright" would be recorded as a fact about the file
    except Exception:  # noqa: BLE001 - a broken EXIF block is common and harmless: treat as upright
        return 1
    return value if 1 <= value <= 8 else 1


def _is_srgb_profile(icc: bytes) -> bool:
    try:
        desc = ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(icc)))
    except Exception:  # noqa: BLE001 - unreadable profile: to_srgb ignores it too
        return True
    return "srgb" in desc.lower()


def decoder_for(img: Image.Image) -> str:
    """Which decoder preprocess may use: libjpeg-turbo for 3-channel JPEGs (with the profile applied after the
    resize when it is not sRGB), PIL for every other mode and format."""
    if img.format not in ("JPEG", "MPO") or img.mode != "RGB":
        return DECODER_PIL
    icc = img.info.get("icc_profile")
    return DECODER_JPEG_ICC if icc and not _is_srgb_profile(icc) else DECODER_JPEG


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
        if img.mode in ("P", "PA") or (img.mode in ("L", "RGB") and "transparency" in img.info):  # PNG tRNS
            img = img.convert("LA" if img.mode == "L" else "RGBA")
        if img.mode in ("LA", "La"):
            # Transparent areas become white, as a viewer would show them on paper; still gray, for its profile.
            la = img.convert("LA")
            background = Image.new("L", img.size, 255)
            background.paste(la.getchannel("L"), mask=la.getchannel("A"))
            img = background
        elif img.mode in ("RGBA", "RGBa"):
            rgba = img.convert("RGBA")
            background = Image.new("RGB", img.size, (255, 255, 255))
            background.paste(rgba, mask=rgba.getchannel("A"))
            img = background
        if icc and img.mode in ("RGB", "CMYK", "L"):  # a gray photo's Gray Gamma or Dot Gain profile too
            img = _apply_profile(img, icc)
        if img.mode != "RGB":
            img = img.convert("RGB")
        return img
    except MemoryError:
        raise  # the machine's trouble, not the file's: the caller may try again, which a reject would not
    except Exception as exc:  # noqa: BLE001 - decoders raise OSError, ValueError, EOFError, struct.error ...
        reason = str(exc) or type(exc).__name__
        if "truncated" in reason:
            reason = "truncated image data"
        raise InputImageError(name, f"cannot decode ({reason})") from None


def decode_rgb(data: bytes, name: str, max_pixels: int, draft_size: int | None = None,
               max_aspect: float | None = None) -> Image.Image:
    """Bytes → normalised 8-bit sRGB PIL image, or an InputImageError naming the file and the reason."""
    return to_srgb(open_checked(data, name, max_pixels, max_aspect), name, draft_size)


# A file is read whole before its header is looked at, so one too big to be a photo of at most max_pixels is
# refused from its size: 16 bytes a pixel is uncompressed 32-bit float RGBA, more than any photo format.
BYTES_PER_PIXEL_CAP = 16
MIN_BYTE_CAP = 64 << 20  # room for metadata and embedded previews around small photos


def byte_cap(max_pixels: int) -> int:
    """The largest file read as a photo: a bigger one cannot be a photo of at most `max_pixels` pixels."""
    return max(BYTES_PER_PIXEL_CAP * max_pixels, MIN_BYTE_CAP)


def too_large(size: int, max_pixels: int) -> str:
    return f"{size:,} bytes > {byte_cap(max_pixels):,}, more than a photo of at most {max_pixels:,} pixels takes"


def read_bytes(path: str | Path, max_pixels: int | None = None) -> bytes:
    """The file's bytes; with `max_pixels`, one too big to be such a photo is refused unread (a multi-GB file
    would take that much memory, or the process, just to be called not an image)."""
    try:
        if max_pixels is not None and (size := Path(path).stat().st_size) > byte_cap(max_pixels):
            raise InputImageError(str(path), f"{too_large(size, max_pixels)}: not read")
        return Path(path).read_bytes()
    except OSError as exc:
        raise InputImageError(str(path), f"cannot read ({exc.strerror or exc})") from None
    except MemoryError:
        raise InputImageError(str(path), "out of memory while reading it") from None


def resize_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 → its centre square of the short side at size × size, uint8 (a new array).

    One resampling pass, torch's bilinear with antialiasing (a triangle filter as wide as the scale factor, as
    PIL's): its uint8 kernel is vectorised, 1.8x faster than PIL's BOX and 2.6x than PIL's BILINEAR on 256 px
    squares. The square is cut on whole pixels (at most half a pixel from the exact centre).
    """
    import torch
    import torch.nn.functional as F  # noqa: N812

    h, w = rgb.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    square = rgb[top : top + s, left : left + s]
    if s == size:
        return np.array(square)
    with warnings.catch_warnings():  # a read-only array (PIL's) is only read here
        warnings.simplefilter("ignore", UserWarning)
        x = torch.from_numpy(square).permute(2, 0, 1)[None]
    # Channels-last and contiguous, the layout of the vectorised kernel: the output keeps it, so the HWC view
    # below needs no copy (from a strided crop the result comes back planar, and transposing it costs 3x the resize).
    x = x.contiguous(memory_format=torch.channels_last)
    y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return y[0].permute(1, 2, 0).numpy()


def _orient(rgb: np.ndarray, orientation: int) -> np.ndarray:
    """EXIF orientation 2..8 applied to an array (1 and unknown values: unchanged)."""
    if orientation not in _ORIENT:
        return rgb
    return np.asarray(Image.fromarray(rgb).transpose(_ORIENT[orientation]))


# EXIF orientation → the transpose that shows the stored pixels upright (as ImageOps.exif_transpose does).
_ORIENT = {2: Image.FLIP_LEFT_RIGHT, 3: Image.ROTATE_180, 4: Image.FLIP_TOP_BOTTOM, 5: Image.TRANSPOSE,
           6: Image.ROTATE_270, 7: Image.TRANSVERSE, 8: Image.ROTATE_90}


def _jpeg_square(data: bytes, size: int, orientation: int, with_profile: bool = False) -> np.ndarray:
    import simplejpeg

    h, w, _, _ = simplejpeg.decode_jpeg_header(data)
    factor = 1  # powers of two only: libjpeg-turbo's 3/8, 5/8, 7/8 scalings are slower than a full decode
    while factor < 8 and min(h, w) // (2 * factor) >= size:
        factor *= 2
    # libjpeg-turbo picks the smallest scale M/8 whose output is at least min_height x min_width: asking for
    # ceil(side / factor) gives exactly 1/factor. fastdct: the integer IDCT, a few % faster; its error (< 1
    # level) is far below the 8-bit Lab step.
    rgb = simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=True, min_height=-(-h // factor),
                                 min_width=-(-w // factor))
    # A centre square crop commutes with the eight EXIF orientations, so orienting the small result is enough.
    out = _orient(resize_square(rgb, size), orientation)
    if with_profile:
        # Through the profile after the resize: ~25x fewer pixels for lcms than the full photo (10 ms → 0.4),
        # at a cost of mean ΔE < 0.7 against converting first (both resample gamma-encoded values).
        icc = Image.open(io.BytesIO(data)).info.get("icc_profile")
        if icc:
            out = np.asarray(_apply_profile(Image.fromarray(out), icc))
    return out


def jpeg_damage(data: bytes) -> str | None:
    """libjpeg-turbo's strict verdict on a 3-channel JPEG's data, decoded at 1/8 scale (well under a millisecond):
    PIL decodes a file whose data ends early (cut, or a hole of zeros) into a gray band without a word. None:
    whole, or a kind libjpeg-turbo does not decode (arithmetic coding...), which PIL then reads as a whole."""
    import simplejpeg

    try:
        h, w, _, _ = simplejpeg.decode_jpeg_header(data)
        simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=True, min_height=max(1, h // 8),
                               min_width=max(1, w // 8))
    except (ValueError, OSError) as exc:
        # Only missing data: libjpeg's other "Corrupt JPEG data" warnings (extraneous bytes before a marker)
        # also come from harmless padding in whole files
        if "premature end" in str(exc).lower():
            return str(exc)
    return None


def load_square(data: bytes, name: str, size: int, decoder: str = DECODER_PIL, orientation: int = 1,
                max_pixels: int = 400_000_000) -> np.ndarray:
    """Bytes → (size, size, 3) uint8 sRGB centre square, upright; `decoder` and `orientation` as ingest recorded."""
    if decoder in (DECODER_JPEG, DECODER_JPEG_ICC):
        try:
            return _jpeg_square(data, size, orientation, with_profile=decoder == DECODER_JPEG_ICC)
        except (ValueError, OSError):
            pass  # libjpeg-turbo refuses what PIL accepted (rare: odd markers, arithmetic coding): use PIL
    return resize_square(np.asarray(decode_rgb(data, name, max_pixels, draft_size=size)), size)
