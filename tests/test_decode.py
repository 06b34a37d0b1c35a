"""Decoding what users have: gray photos with their own profile or transparency, and shapes no photo has."""

import io
import struct

import numpy as np
import pytest
from PIL import Image

from chromify.decode import MAX_ASPECT, decode_rgb, open_checked, to_srgb
from chromify.errors import InputImageError


def gray_gamma_profile(gamma: float) -> bytes:
    """A minimal ICC v2 gray display profile whose tone curve is a pure gamma (D50 white, as ICC wants)."""

    def s15(*xs: float) -> bytes:
        return b"".join(struct.pack(">i", round(x * 65536)) for x in xs)

    def padded(b: bytes) -> bytes:
        return b + b"\0" * (-len(b) % 4)

    text = b"Gray gamma test\0"
    tags = [(b"desc", b"desc" + bytes(4) + struct.pack(">I", len(text)) + text + bytes(4 + 4 + 2 + 1 + 67)),
            (b"wtpt", b"XYZ " + bytes(4) + s15(0.9642, 1.0, 0.8249)),
            (b"kTRC", b"curv" + bytes(4) + struct.pack(">IH", 1, round(gamma * 256))),
            (b"cprt", b"text" + bytes(4) + b"none\0")]
    offset, table, body = 128 + 4 + 12 * len(tags), b"", b""
    for sig, data in tags:
        table += sig + struct.pack(">II", offset + len(body), len(data))
        body += padded(data)
    size = offset + len(body)
    header = (struct.pack(">I", size) + b"lcms" + bytes([2, 0x10, 0, 0]) + b"mntr" + b"GRAY" + b"XYZ " + bytes(12)
              + b"acsp" + bytes(4 * 4 + 8 + 4) + s15(0.9642, 1.0, 0.8249) + bytes(4 + 16 + 28))
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


def _png(img: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kwargs)
    return buf.getvalue()


def _decoded(data: bytes) -> np.ndarray:
    return np.asarray(to_srgb(open_checked(data, "photo.png", 10**8), "photo.png"))


def test_a_gray_photo_is_read_through_its_own_profile():
    # Linear light (gamma 1.0) 128/255 is 50 % of white: sRGB 188, as a colour-managed viewer shows it; read as
    # sRGB it was 128, and the colorized photo came out a good deal darker than the original.
    gray = Image.new("L", (8, 6), 128)
    out = _decoded(_png(gray, icc_profile=gray_gamma_profile(1.0)))
    assert out.shape == (6, 8, 3) and np.abs(out.astype(int) - 188).max() <= 1
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert (_decoded(_png(gray)) == 128).all()  # no profile: sRGB, as before

    la = Image.merge("LA", [gray, Image.new("L", (8, 6), 255)])
    la.putpixel((0, 0), (128, 0))  # transparent: white on paper, white in any profile
    out = _decoded(_png(la, icc_profile=gray_gamma_profile(1.0)))
    assert (out[0, 0] == 255).all() and np.abs(out[1:].astype(int) - 188).max() <= 1


def test_transparency_in_a_gray_or_rgb_png_without_alpha_becomes_white():
    gray = Image.new("L", (5, 4), 90)
    gray.putpixel((2, 1), 7)
    out = _decoded(_png(gray, transparency=7))
    assert (out[1, 2] == 255).all() and (out[0, 0] == 90).all()

    rgb = Image.new("RGB", (5, 4), (200, 30, 40))
    rgb.putpixel((3, 2), (1, 2, 3))
    out = _decoded(_png(rgb, transparency=(1, 2, 3)))
    assert (out[2, 3] == 255).all() and tuple(out[0, 0]) == (200, 30, 40)


@pytest.mark.parametrize("size", [(MAX_ASPECT + 1, 1), (3, 3 * MAX_ASPECT + 1), (39_000_000, 1)])
def test_a_shape_no_photo_has_is_refused_from_the_header_when_colorizing(size):
    data = _png(Image.new("L", size, 100))
    with pytest.raises(InputImageError) as err:
        decode_rgb(data, "strip.png", 40_000_000, max_aspect=MAX_ASPECT)
    w, h = size
    assert str(err.value) == (f"strip.png: {w}x{h} is more than {MAX_ASPECT} times as long as it is wide, not a "
                              "photo's shape: refused before decoding")


def test_the_widest_photo_shape_still_colorizes_and_ingest_judges_shape_itself():
    assert decode_rgb(_png(Image.new("L", (MAX_ASPECT, 1), 100)), "p.png", 10**6, max_aspect=MAX_ASPECT).size == (
        MAX_ASPECT, 1)
    assert open_checked(_png(Image.new("L", (10 * MAX_ASPECT, 2), 100)), "p.png", 10**6).size == (1000, 2)


def test_a_format_we_do_not_read_is_named_not_called_no_image():
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, "GIF")
    with pytest.raises(InputImageError, match=r"^scan.jpg: not an image we read \(GIF; JPEG, PNG, WebP, BMP and TIFF "
                                              r"are\)$"):
        open_checked(buf.getvalue(), "scan.jpg", 10**6)
    with pytest.raises(InputImageError, match=r"^notes.png: not an image \(unrecognised format\)$"):
        open_checked(b"just some text", "notes.png", 10**6)
