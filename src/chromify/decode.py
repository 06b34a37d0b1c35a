"""Decode any photo a user may have into 8-bit sRGB, refusing bombs before decoding them."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from chromify.errors import InputImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")

_SRGB_PROFILE = None


def _srgb_profile() -> ImageCms.ImageCmsProfile:
    global _SRGB_PROFILE
    if _SRGB_PROFILE is None:
        _SRGB_PROFILE = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    return _SRGB_PROFILE


def open_checked(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Open lazily and check the header: nothing is decoded yet, so a bomb costs nothing."""
    if not data:
        raise InputImageError(name, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputImageError(name, f"too many pixels (over {max_pixels:,}): refused before decoding") from None
    except UnidentifiedImageError:
        raise InputImageError(name, "not an image (unrecognised format)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise InputImageError(name, f"unreadable image header ({exc})") from None
    w, h = img.size
    if w * h > max_pixels:
        raise InputImageError(name, f"too many pixels ({w}x{h} > {max_pixels:,}): refused before decoding")
    return img


def to_srgb(img: Image.Image, name: str, draft_size: int | None = None) -> Image.Image:
    """Fully decode and normalise: EXIF orientation, ICC → sRGB, any mode → 8-bit RGB.

    `draft_size` lets JPEG decode at 1/2, 1/4 or 1/8 scale in the DCT domain (never below that size).
    """
    try:
        if draft_size and img.format == "JPEG":
            scale = min(img.size) / draft_size
            img.draft("RGB", (int(img.size[0] / scale), int(img.size[1] / scale)))
        img.load()
        img = ImageOps.exif_transpose(img)
        icc = img.info.get("icc_profile")
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(img, dtype=np.float32)
            peak = 65535.0 if arr.max() > 255 else 255.0
            img = Image.fromarray(np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
        elif img.mode == "F":
            arr = np.asarray(img, dtype=np.float32)
            img = Image.fromarray(np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
        if img.mode in ("P", "PA"):
            img = img.convert("RGBA")
        if icc and img.mode in ("RGB", "CMYK"):
            try:
                src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
                img = ImageCms.profileToProfile(img, src, _srgb_profile(), outputMode="RGB")
            except (ImageCms.PyCMSError, OSError):
                pass  # a broken profile: fall back to treating the pixels as sRGB
        if img.mode in ("RGBA", "LA"):
            # Transparent areas become white, as a viewer would show them on paper.
            background = Image.new("RGB", img.size, (255, 255, 255))
            background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
            img = background
        if img.mode != "RGB":
            img = img.convert("RGB")
        return img
    except InputImageError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
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


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Short side → `size` (bilinear, antialiased), then a centre crop to size × size."""
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.BILINEAR, reducing_gap=None)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))
