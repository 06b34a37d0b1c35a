"""Ingest on real bad files: every one reported with its reason, no good file lost, re-runs decode nothing."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from chromify.config import IngestParams
from chromify.decode import (
    DECODER_JPEG,
    DECODER_JPEG_ICC,
    DECODER_PIL,
    decode_rgb,
    decoder_for,
    load_square,
    open_checked,
    resize_square,
)
from chromify.errors import ConfigError
from chromify.ingest import ingest as run_ingest
from chromify.ingest import inspect_bytes, list_source, read_manifest, split_for


def _rejects(reports: Path) -> dict[str, str]:
    with open(reports / "ingest_rejects.csv", encoding="utf-8", newline="") as f:
        return {row["path"]: row["reason"] for row in csv.DictReader(f)}


def test_cli_ingest_reports_every_bad_file_and_keeps_every_good_one(tmp_path, bad_folder):
    root, expected = bad_folder
    chromify = Path(sys.executable).with_name("chromify")
    proc = subprocess.run([str(chromify), "ingest", "--source", str(root), "--out", "raw", "--reports", "reports"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr

    rejects = _rejects(tmp_path / "reports")
    assert rejects == {str(root / rel): reason for rel, reason in expected.items() if reason}
    accepted = {r["uri"]: r for r in read_manifest(tmp_path / "raw")}
    assert set(accepted) == {str(root / rel) for rel, reason in expected.items() if reason is None}
    for row in accepted.values():
        assert (tmp_path / "raw" / row["path"]).exists()
        assert row["split"] == split_for(row["sha256"], 0.15, 0.15)

    counts = json.loads((tmp_path / "reports" / "ingest.json").read_text())
    assert counts["accepted"] == len(accepted) == 9
    assert counts["rejected_grayscale"] == 2 and counts["rejected_duplicate"] == 1
    assert counts["bad_files"] == 5 and counts["rejected"] == 8
    assert counts["skipped_not_image_suffix"] == 1

    rotated = accepted[str(root / "rotated_exif.jpg")]
    assert (rotated["width"], rotated["height"], rotated["orientation"]) == (451, 300, 6)
    assert accepted[str(root / "cmyk.jpg")]["decoder"] != DECODER_JPEG  # CMYK needs PIL's conversion
    assert accepted[str(root / "chelsea.jpg")]["decoder"] == DECODER_JPEG


def test_a_broken_link_is_rejected_with_a_reason_not_dropped(tmp_path, photos):
    from PIL import Image

    root = tmp_path / "photos"
    root.mkdir()
    Image.fromarray(photos["chelsea"]).save(root / "chelsea.png")
    (root / "gone.jpg").symlink_to(root / "moved-away.jpg")  # a link whose photo was moved
    counts = run_ingest(IngestParams(source=str(root), out_dir=str(tmp_path / "raw")), tmp_path / "reports")
    assert counts["accepted"] == 1 and counts["rejected"] == 1 and counts["unlisted_folders"] == 0
    with open(tmp_path / "reports" / "ingest_rejects.csv", encoding="utf-8", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["path"] == str(root / "gone.jpg"))
    assert row["reason"] == "unreadable" and "No such file or directory" in row["detail"]


def test_what_a_folder_walk_leaves_out_is_said_and_counted_never_dropped_or_crashed_on(tmp_path, photos, capfd):
    """A link to a folder (not followed: its photos vanished without a word), a file name that is not UTF-8 (a
    traceback from pyarrow, every run, with ingest.json rewritten beside the old manifest), and ingest's own store
    inside the source (its copies were read as the source's photos, and a deleted photo never left the manifest)."""
    from PIL import Image

    root = tmp_path / "photos"
    (root / "sets").mkdir(parents=True)
    for name in ("chelsea", "coffee"):
        Image.fromarray(photos[name]).save(root / "sets" / f"{name}.png")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    Image.fromarray(photos["astronaut"]).save(elsewhere / "astronaut.png")
    (root / "linked").symlink_to(elsewhere)
    (root / os.fsdecode(b"caf\xe9.png")).write_bytes((root / "sets" / "coffee.png").read_bytes())
    p = IngestParams(source=str(root), out_dir=str(root / "raw"), val_fraction=0.0, test_fraction=0.0)
    for _ in range(2):  # the second run lists the store that the first wrote inside the source
        counts = run_ingest(p, tmp_path / "reports")
        assert (counts["files_seen"], counts["accepted"], counts["rejected"]) == (2, 2, 0), counts
        assert (counts["linked_folders"], counts["skipped_bad_name"]) == (1, 1)
        assert sorted(r["uri"] for r in read_manifest(root / "raw")) == [str(root / "sets" / "chelsea.png"),
                                                                        str(root / "sets" / "coffee.png")]
        err = capfd.readouterr().err
        assert f"chromify: ingest: {root / 'linked'}: a link to a folder, not followed: its photos are left out" in err
        assert f"chromify: ingest: {root}/caf\\xe9.png: the file name is not valid UTF-8: left out (rename it)" in err
    (root / "sets" / "coffee.png").unlink()
    assert run_ingest(p, tmp_path / "reports")["accepted"] == 1
    assert [r["uri"] for r in read_manifest(root / "raw")] == [str(root / "sets" / "chelsea.png")]


def test_an_ingest_that_accepts_nothing_leaves_no_stale_manifest_behind(tmp_path, photos):
    from PIL import Image

    from chromify import shards
    from chromify.errors import ChromifyError, DataError

    root = tmp_path / "photos"
    root.mkdir()
    Image.fromarray(photos["chelsea"]).save(root / "chelsea.png")
    p = IngestParams(source=str(root), out_dir=str(tmp_path / "raw"))
    assert run_ingest(p, tmp_path / "reports")["accepted"] == 1
    with pytest.raises(ChromifyError, match="no usable colour photo among 1 file"):
        run_ingest(replace(p, min_side=4000), tmp_path / "reports")  # now every photo is too small
    assert read_manifest(tmp_path / "raw") == []  # not the first run's row, which preprocess would convert
    with pytest.raises(DataError, match="no accepted photos to convert"):
        shards.preprocess(read_manifest(tmp_path / "raw"), tmp_path / "raw", tmp_path / "processed", 64)


def test_normalisation_to_8bit_srgb(bad_folder, photos):
    root, _ = bad_folder

    def rgb(name: str) -> np.ndarray:
        return np.asarray(decode_rgb((root / name).read_bytes(), name, 40_000_000), dtype=np.int16)

    chelsea, coffee = photos["chelsea"].astype(np.int16), photos["coffee"].astype(np.int16)
    assert np.abs(rgb("cmyk.jpg") - chelsea[:, ::-1]).mean() < 3
    assert np.array_equal(rgb("sixteen_bit.png"), coffee[50:350, 100:500])
    assert np.abs(rgb("rotated_exif.jpg") - chelsea).mean() < 3  # EXIF orientation applied
    palette = rgb("palette_alpha.png")
    transparent = np.asarray(Image.open(root / "palette_alpha.png")) == 0
    assert transparent.any() and (palette[transparent] == 255).all()  # transparent → white, as on paper
    assert np.abs(palette[~transparent] - photos["astronaut"][~transparent]).mean() < 12  # 64-colour palette


def test_exif_orientation_reaches_the_pixels_preprocess_stores(bad_folder):
    root, _ = bad_folder
    upright = load_square((root / "chelsea.jpg").read_bytes(), "chelsea", 64, DECODER_JPEG, 1)
    for decoder in (DECODER_JPEG, "pil"):
        rotated = load_square((root / "rotated_exif.jpg").read_bytes(), "rotated", 64, decoder, 6)
        assert np.abs(rotated.astype(int) - upright).mean() < 8, decoder  # two JPEG encodings, two decoders
    wrong = load_square((root / "rotated_exif.jpg").read_bytes(), "rotated", 64, DECODER_JPEG, 8)
    assert np.abs(wrong.astype(int) - upright).mean() > 20


def test_embedded_profile_reaches_the_pixels_on_both_decoders(photos, swapped_profile):
    from conftest import encode

    chelsea = photos["chelsea"]
    tagged = encode(Image.fromarray(chelsea), "JPEG", quality=95, icc_profile=swapped_profile)
    plain = encode(Image.fromarray(chelsea), "JPEG", quality=95)
    assert decoder_for(open_checked(tagged, "tagged.jpg", 10**8)) == DECODER_JPEG_ICC
    assert decoder_for(open_checked(plain, "plain.jpg", 10**8)) == DECODER_JPEG

    full = np.asarray(decode_rgb(tagged, "tagged.jpg", 10**8), dtype=int)
    assert np.abs(full - chelsea[..., [1, 0, 2]]).mean() < 3  # the profile says: red and green are swapped
    swapped = load_square(plain, "plain.jpg", 128, DECODER_JPEG)[..., [1, 0, 2]].astype(int)
    after_resize = load_square(tagged, "tagged.jpg", 128, DECODER_JPEG_ICC).astype(int)
    before_resize = load_square(tagged, "tagged.jpg", 128, DECODER_PIL).astype(int)
    assert np.abs(after_resize - swapped).mean() < 3
    assert np.abs(after_resize - before_resize).mean() < 1.5  # converting the small square instead of the photo
    ignored = load_square(tagged, "tagged.jpg", 128, DECODER_JPEG).astype(int)
    assert np.abs(ignored - after_resize).mean() > 10


def test_resize_square_filters_like_pils_bilinear(photos):
    for rgb in photos.values():
        h, w = rgb.shape[:2]
        s = min(h, w)
        box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
        for size in (96, 256, 700):  # down by 5.3x and 2x, and up
            ours = resize_square(rgb, size).astype(int)
            pil = np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR, box=box), dtype=int)
            assert ours.shape == (size, size, 3)
            assert np.abs(ours - pil).mean() < 0.6, (size, np.abs(ours - pil).mean())
    assert np.array_equal(resize_square(photos["chelsea"][:64, :80], 64), photos["chelsea"][:64, 8:72])


def test_bomb_is_refused_from_the_header_quickly(bad_folder, crafted_png):
    root, _ = bad_folder
    data = (root / "bomb.png").read_bytes()  # claims 100,000 x 100,000: 30 GB once decoded
    t0 = time.perf_counter()
    facts = inspect_bytes(data, "bomb.png", 40_000_000)
    assert time.perf_counter() - t0 < 0.5
    assert facts.error == "too_many_pixels" and len(data) < 100
    # Under PIL's own hard limit the size is known, and ours decides: 8000 x 8000 > 40 M.
    facts = inspect_bytes(crafted_png(8000, 8000, 8, 2, b"\0" * 16), "big.png", 40_000_000)
    assert (facts.error, facts.width, facts.height) == ("too_many_pixels", 8000, 8000)
    assert inspect_bytes(crafted_png(8000, 8000, 8, 2, b"\0" * 16), "big.png", 10**8).error == "undecodable"


def test_a_refused_bomb_quotes_the_limit_that_refused_it(crafted_png):
    from chromify.errors import InputImageError

    bomb = crafted_png(20_000, 10_000, 8, 2, b"\0" * 16)  # 200 M pixels: above PIL's own hard limit
    for ours, quoted in ((40_000_000, "40,000,000"), (300_000_000, f"{2 * Image.MAX_IMAGE_PIXELS:,}")):
        with pytest.raises(InputImageError, match=f"too many pixels \\(200,000,000 pixels > {quoted}\\)"):
            open_checked(bomb, "big.png", ours)


def test_junk_behind_a_tiff_magic_is_one_reason_and_no_parser_warning():
    import warnings

    from chromify.errors import InputImageError

    junk = b"MM\x00*" + np.random.default_rng(5).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's "Corrupt EXIF data" would be printed to the user's terminal
        with pytest.raises(InputImageError, match="junk.jpg: corrupt or unsupported TIFF header: it starts as a "
                                                  "TIFF file"):
            open_checked(junk, "junk.jpg", 40_000_000)
    # whole, but a layout PIL does not decode: not called damaged
    import io

    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, np.zeros((8, 8, 3), np.float32), photometric="rgb")
    with pytest.raises(InputImageError) as err:
        open_checked(buf.getvalue(), "float.tif", 40_000_000)
    assert str(err.value) == ("float.tif: corrupt or unsupported TIFF header: it starts as a TIFF file, but its header "
                              "cannot be read (damaged, or a kind PIL does not decode, such as 32-bit float colour)")


def test_rerun_is_a_noop_and_thresholds_rejudge_without_decoding(tmp_path, bad_folder):
    root, expected = bad_folder
    p = IngestParams(source=str(root), out_dir=str(tmp_path / "raw"))
    first = run_ingest(p, tmp_path / "reports", workers=2)
    manifest = tmp_path / "raw" / "manifest.parquet"
    before = (manifest.read_bytes(), manifest.stat().st_mtime_ns)

    second = run_ingest(p, tmp_path / "reports", workers=2)
    assert second["decoded_this_run"] == 0
    assert (manifest.read_bytes(), manifest.stat().st_mtime_ns) == before
    assert {k: v for k, v in second.items() if k != "decoded_this_run"} == \
        {k: v for k, v in first.items() if k != "decoded_this_run"}

    strict = run_ingest(replace(p, min_side=400), tmp_path / "reports")
    assert strict["decoded_this_run"] == 0 and strict["accepted"] < first["accepted"]
    assert strict["rejected_too_small"] > 1
    relaxed = run_ingest(p, tmp_path / "reports")
    assert relaxed["decoded_this_run"] == 0 and relaxed["accepted"] == first["accepted"]
    assert manifest.read_bytes() == before[0]

    os.utime(root / "coffee.png", ns=(time.time_ns(), time.time_ns() + 10**9))  # a new stamp: read again
    assert run_ingest(p, tmp_path / "reports")["decoded_this_run"] == 1


def test_thresholds_judge_the_short_side_and_a_raised_pixel_limit_reads_what_was_refused(tmp_path, photos):
    """min_side is the *short* side (a 1000x40 strip would be a 40 px square once cropped), and a photo refused
    from its header was never stored: raising max_pixels must read it, not accept an empty path."""
    root = tmp_path / "folder"
    root.mkdir()
    Image.fromarray(photos["astronaut"]).resize((1000, 40)).save(root / "strip.png")
    Image.fromarray(photos["chelsea"]).resize((64, 1000)).save(root / "tall.png")  # short side exactly 64
    Image.fromarray(photos["coffee"]).save(root / "coffee.png")  # 600x400 = 240,000 pixels
    Image.fromarray(photos["astronaut"]).resize((200, 150)).save(root / "small.png")
    raw, reports = tmp_path / "raw", tmp_path / "reports"
    p = IngestParams(source=str(root), out_dir=str(raw), min_side=64, max_pixels=200_000)

    first = run_ingest(p, reports)
    assert _rejects(reports) == {str(root / "strip.png"): "too_small", str(root / "coffee.png"): "too_many_pixels"}
    assert [r["uri"] for r in read_manifest(raw)] == [str(root / "small.png"), str(root / "tall.png")]

    raised = run_ingest(replace(p, max_pixels=40_000_000), reports)
    assert first["decoded_this_run"] == 4 and raised["decoded_this_run"] == 1  # coffee, never stored, is read now
    coffee = {r["uri"]: r for r in read_manifest(raw)}[str(root / "coffee.png")]
    assert (raw / coffee["path"]).is_file() and (coffee["width"], coffee["height"]) == (600, 400)
    assert coffee["chroma"] > 2.0

    # Lowered below tall.png's 64,000 pixels: re-judged from what the cache knows, nothing decoded.
    lowered = run_ingest(replace(p, max_pixels=63_999), reports)
    assert lowered["decoded_this_run"] == 0 and lowered["accepted"] == 1
    assert _rejects(reports)[str(root / "tall.png")] == "too_many_pixels"


def test_a_file_too_big_to_be_a_photo_under_the_pixel_limit_is_refused_unread(tmp_path, photos):
    """Ingest holds a whole file in memory before its header says what it is: a multi-GB file must not be read."""
    root = tmp_path / "folder"
    root.mkdir()
    Image.fromarray(photos["astronaut"]).resize((200, 150)).save(root / "small.png")
    with open(root / "scan.tif", "wb") as fh:  # sparse: 65 MiB of zeros on no disk
        fh.truncate(65 << 20)
    raw, reports = tmp_path / "raw", tmp_path / "reports"
    p = IngestParams(source=str(root), out_dir=str(raw), max_pixels=200_000)  # at most 64 MiB read

    first = run_ingest(p, reports)
    assert _rejects(reports) == {str(root / "scan.tif"): "too_large"}
    with open(reports / "ingest_rejects.csv", encoding="utf-8", newline="") as f:
        detail = {r["path"]: r["detail"] for r in csv.DictReader(f)}
    assert detail[str(root / "scan.tif")] == ("68,157,440 bytes > 67,108,864, more than a photo of at most "
                                              "200,000 pixels takes: not read")
    assert first["bad_files"] == 1 and first["accepted"] == 1
    assert run_ingest(p, reports)["decoded_this_run"] == 0  # the refusal is remembered, not read again

    raised = run_ingest(replace(p, max_pixels=40_000_000), reports)  # 640 MB now fit: read, and found to be zeros
    assert raised["decoded_this_run"] == 1 and _rejects(reports) == {str(root / "scan.tif"): "not_image"}


def test_split_is_a_function_of_the_hash_with_the_asked_fractions():
    shas = [hashlib.sha256(str(k).encode()).hexdigest() for k in range(4000)]
    splits = [split_for(s, 0.1, 0.2) for s in shas]
    assert abs(splits.count("test") / 4000 - 0.2) < 0.03 and abs(splits.count("val") / 4000 - 0.1) < 0.03
    # The rule, by hand: u = the first 12 hex digits / 16^12; test below the test fraction, then val, then train.
    # Pinned, so a change of the rule (or a salted hash) moves no photo from one run or machine to the next.
    assert split_for("0" * 64, 0.1, 0.2) == "test"  # u = 0
    assert split_for("33" + "0" * 62, 0.1, 0.2) == "test"  # u = 0.199
    assert split_for("4" + "0" * 63, 0.1, 0.2) == "val"  # u = 0.25
    assert split_for("5" + "0" * 63, 0.1, 0.2) == "train"  # u = 0.3125
    assert split_for("f" * 64, 0.1, 0.2) == "train"  # u ≈ 1


def test_kaggle_layout_uses_colour_and_reports_unpaired(tmp_path, photos):
    colour, gray = tmp_path / "data" / "train_color", tmp_path / "data" / "train_black"
    colour.mkdir(parents=True)
    gray.mkdir(parents=True)
    for k, name in enumerate(("a", "b", "c")):
        Image.fromarray(np.roll(photos["coffee"], 40 * k, axis=1)).save(colour / f"{name}.jpg")
    for name in ("a", "b", "d"):
        Image.fromarray(photos["coffee"]).convert("L").save(gray / f"{name}.jpg")
    files, notes = list_source(str(tmp_path))
    assert sorted(Path(f.uri).name for f in files) == ["a.jpg", "b.jpg", "c.jpg"]
    assert notes["kaggle_pairs"] == 1 and notes["kaggle_unpaired"] == 2

    counts = run_ingest(IngestParams(source=str(tmp_path), out_dir=str(tmp_path / "raw")), tmp_path / "reports")
    assert counts["accepted"] == 3 and counts["rejected"] == 0  # the gray copies are not training data
    with open(tmp_path / "reports" / "ingest_pairing.csv", encoding="utf-8") as f:
        problems = {Path(r["path"]).name: r["problem"] for r in csv.DictReader(f)}
    assert problems == {"c.jpg": "colour image without a grayscale copy",
                        "d.jpg": "grayscale copy without a colour image"}


def test_not_a_source():
    with pytest.raises(ConfigError):
        list_source("/no/such/folder")


def test_a_manifest_damaged_anywhere_is_read_afresh_or_one_line_never_a_traceback(tmp_path, photos, capsys):
    """One flipped byte, at 300 seeded places in a real manifest: ingest's cache reads it or starts afresh, and
    preprocess's reader returns rows or one ChromifyError naming the file (a flipped byte in a text column once
    escaped as a UnicodeDecodeError, a garbled type as ArrowNotImplementedError)."""
    from chromify.errors import ChromifyError
    from chromify.ingest import _read_rows

    folder = tmp_path / "photos"
    folder.mkdir()
    for name, rgb in photos.items():
        Image.fromarray(rgb).save(folder / f"{name}.png")
    raw = tmp_path / "raw"
    run_ingest(IngestParams(source=str(folder), out_dir=str(raw)), tmp_path / "reports", workers=1)
    manifest = raw / "manifest.parquet"
    good = manifest.read_bytes()
    rng = np.random.default_rng(0)
    refused = 0
    for _ in range(300):
        damaged = bytearray(good)
        damaged[rng.integers(len(good))] ^= int(rng.integers(1, 256))
        manifest.write_bytes(bytes(damaged))
        assert isinstance(_read_rows(manifest), dict)
        try:
            read_manifest(raw)
        except ChromifyError as exc:
            refused += 1
            assert str(exc).startswith(f"{manifest}: unreadable (") and "\n" not in str(exc)
    assert refused > 0
    assert "reading every photo again" in capsys.readouterr().err


@pytest.mark.parametrize(("suffix", "where", "method"), [
    ("jpg", "PIL.ImageFile.ImageFile", "load"),  # to_srgb's decode
    ("png", "PIL.PngImagePlugin.PngImageFile", "getexif"),  # orientation_of: a PNG's EXIF may follow the pixels
    ("png", "PIL.PngImagePlugin.PngImageFile", "_open"),  # open_checked's header
])
def test_running_out_of_memory_while_reading_a_photo_is_tried_again_not_cached_as_its_fault(
        tmp_path, photos, monkeypatch, suffix, where, method):
    """A MemoryError (eight workers on big photos) was recorded as `undecodable` (or the photo as upright), a fact
    about the file that no re-run reads again: now it is `unreadable`, which the next run reads again."""
    import importlib

    module, cls = where.rsplit(".", 1)
    owner = getattr(importlib.import_module(module), cls)
    original, calls = getattr(owner, method), []

    def out_of_memory_once(self, *args, **kwargs):
        calls.append(method)
        if len(calls) == 1:
            raise MemoryError
        return original(self, *args, **kwargs)

    root, raw, reports = tmp_path / "photos", tmp_path / "raw", tmp_path / "reports"
    root.mkdir()
    Image.fromarray(photos["astronaut"]).save(root / f"a.{suffix}")  # listed first: the one that meets the fault
    Image.fromarray(photos["chelsea"]).save(root / f"b.{suffix}")
    p = IngestParams(source=str(root), out_dir=str(raw))
    monkeypatch.setattr(owner, method, out_of_memory_once)
    first = run_ingest(p, reports, workers=1)
    assert calls and first["accepted"] == 1
    with open(reports / "ingest_rejects.csv", encoding="utf-8", newline="") as f:
        assert [(r["path"], r["reason"], r["detail"]) for r in csv.DictReader(f)] == \
            [(str(root / f"a.{suffix}"), "unreadable", "out of memory while decoding; tried again on the next run")]

    second = run_ingest(p, reports, workers=1)
    assert (second["decoded_this_run"], second["accepted"], second["rejected"]) == (1, 2, 0)
    stored = {r["uri"]: raw / r["path"] for r in read_manifest(raw)}
    assert stored[str(root / f"a.{suffix}")].read_bytes() == (root / f"a.{suffix}").read_bytes()


def test_stored_photos_get_the_ordinary_file_mode_not_mkstemps_0600(tmp_path, photos):
    """The content store is read by other users and services (a shared data folder, a container's user): its files
    get the mode any other output gets, 0644 under umask 022."""
    root = tmp_path / "photos"
    root.mkdir()
    Image.fromarray(photos["chelsea"]).save(root / "chelsea.jpg")
    chromify = Path(sys.executable).with_name("chromify")
    proc = subprocess.run([str(chromify), "ingest", "--source", str(root), "--out", "raw", "--reports", "reports"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, umask=0o022)
    assert proc.returncode == 0, proc.stderr
    [row] = read_manifest(tmp_path / "raw")
    for path in (tmp_path / "raw" / row["path"], tmp_path / "raw" / "manifest.parquet"):
        assert oct(path.stat().st_mode & 0o777) == oct(0o644), path


def test_copies_of_photos_gone_from_the_source_and_killed_runs_temp_files_are_removed(tmp_path, photos):
    """The store held every photo any earlier source had (200 copies under a 48-row manifest in an audit), and DVC
    caches the folder again with each version. A photo still listed keeps its copy, byte for byte."""
    root = tmp_path / "photos"
    root.mkdir()
    for name, rgb in photos.items():
        Image.fromarray(rgb).save(root / f"{name}.png")
    p = IngestParams(source=str(root), out_dir=str(tmp_path / "raw"))
    assert run_ingest(p, tmp_path / "reports")["accepted"] == 3
    stored = {r["uri"]: tmp_path / "raw" / r["path"] for r in read_manifest(tmp_path / "raw")}
    kept = {uri: path.read_bytes() for uri, path in stored.items() if not uri.endswith("coffee.png")}
    leftover = stored[str(root / "astronaut.png")].with_name(".abc.png.x1y2.tmp")  # a run killed mid-write
    leftover.write_bytes(b"half a photo")

    (root / "coffee.png").unlink()
    assert run_ingest(p, tmp_path / "reports")["accepted"] == 2
    assert not stored[str(root / "coffee.png")].exists() and not leftover.exists()
    assert {uri: path.read_bytes() for uri, path in stored.items() if path.exists()} == kept
    left = {f.relative_to(tmp_path / "raw").as_posix() for f in (tmp_path / "raw").rglob("*") if f.is_file()}
    assert left == {"manifest.parquet", "rejects.parquet", *(r["path"] for r in read_manifest(tmp_path / "raw"))}


def test_a_second_ingest_into_the_same_folder_is_refused_in_one_line(tmp_path, photos):
    """Each ingest removes the temp files and copies its tables do not name: a second one at the same time would
    remove the first's half-written copies."""
    from chromify.errors import DataError
    from chromify.io import exclusive_lock

    root = tmp_path / "photos"
    root.mkdir()
    Image.fromarray(photos["chelsea"]).save(root / "chelsea.png")
    out = tmp_path / "raw"
    out.mkdir()
    p = IngestParams(source=str(root), out_dir=str(out))
    with exclusive_lock(out / ".ingest.lock", RuntimeError, "-"):  # as a running ingest holds it
        with pytest.raises(DataError) as refused:
            run_ingest(p, tmp_path / "reports")
    assert str(refused.value) == (f"{out}: another ingest is writing here (pid {os.getpid()}); wait for it to end "
                                  "or ingest into another folder")
    assert not (out / "manifest.parquet").exists()
    assert run_ingest(p, tmp_path / "reports")["accepted"] == 1  # once it has ended
    assert not (out / ".ingest.lock").exists()


def test_photos_damaged_inside_their_pixel_data_are_undecodable_not_accepted(photos) -> None:
    """Damage PIL decodes without a word: a PNG whose late IDAT byte is wrong (reading its EXIF first loaded the
    pixels and swallowed the error; the next load gave a black band, preprocess removed the copy, and every ingest
    accepted it again) and a JPEG with a hole of zeros (a gray band)."""
    import io

    rgb = photos["astronaut"]
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    png = bytearray(buf.getvalue())
    start = png.find(b"IDAT")
    png[start + (len(png) - start) * 3 // 4] ^= 0xFF
    late = inspect_bytes(bytes(png), "late.png", 10**8)
    assert (late.error, late.detail) == ("undecodable", "cannot decode (unrecognized data stream contents when "
                                                        "reading image file)")
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=90)
    jpeg = buf.getvalue()
    assert inspect_bytes(jpeg, "intact.jpg", 10**8).error == ""
    half = len(jpeg) // 2
    zeroed = jpeg[:half] + bytes(len(jpeg) - half - 2) + jpeg[-2:]  # a hole of zeros, the end marker kept
    facts = inspect_bytes(zeroed, "zero-filled.jpg", 10**8)
    assert (facts.error, facts.detail) == ("undecodable", "damaged JPEG data (Corrupt JPEG data: premature end of "
                                                          "data segment): part of the picture would be a gray band")
    # padding before a marker is only a warning of libjpeg's, in a whole file: accepted
    marker = jpeg.index(b"\xff\xdb")
    padded = jpeg[:marker] + bytes(3) + jpeg[marker:]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(padded))), np.asarray(Image.open(io.BytesIO(jpeg))))
    assert inspect_bytes(padded, "padded.jpg", 10**8).error == ""
    # without the end marker PIL itself refuses it
    assert inspect_bytes(jpeg[:half] + bytes(len(jpeg) - half), "cut.jpg", 10**8).error == "undecodable"


def test_a_worker_killed_mid_ingest_is_one_line_and_the_rerun_completes(tmp_path):
    """kill -9 of one worker (the OOM killer's way) ended in a BrokenProcessPool traceback."""
    import signal

    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    root.mkdir()
    for k in range(160):  # enough decoding that the kill lands mid-run
        Image.fromarray(rng.integers(0, 256, (700, 700, 3), dtype=np.uint8)).save(root / f"noise{k:03d}.jpg",
                                                                                 quality=90)
    cmd = [sys.executable, "-m", "chromify.cli", "ingest", "--source", str(root), "--out", str(tmp_path / "raw"),
           "--reports", str(tmp_path / "reports")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    children: list[str] = []
    while not children and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    assert children, "no worker started"
    os.kill(int(children[0]), signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert (proc.returncode, err.strip().splitlines()[-1]) == (2, (
        "chromify: error: a worker process died before it finished (killed, out of memory, or crashed in a decoder: "
        "the kernel log says which); what was finished is kept: run the command again, with fewer workers if memory "
        "is short (if it dies again, CHROMIFY_DEBUG=1 shows where)")), err
    assert "Traceback" not in err
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert len(read_manifest(tmp_path / "raw")) == 160


def test_a_toned_black_and_white_photo_is_grayscale_and_older_tables_are_measured_again(tmp_path, photos):
    """A sepia print has chroma (2.4 to 2.7 on two of ../shared's historical photos, over min_chroma 2.0; far more
    on a strongly toned one), all of it along one hue: it passed as a colour photo and would teach the model sepia."""
    import pyarrow.parquet as pq

    root = tmp_path / "photos"
    root.mkdir()
    Image.fromarray(photos["chelsea"]).save(root / "colour.png")
    gray = np.asarray(Image.fromarray(photos["coffee"]).convert("L"), dtype=np.float32)[..., None] / 255
    sepia = np.clip(gray * np.array([255, 225, 180]), 0, 255).astype(np.uint8)  # a warm tone over the grays
    Image.fromarray(sepia).save(root / "sepia.png")
    p = IngestParams(source=str(root), out_dir=str(tmp_path / "raw"), val_fraction=0.0, test_fraction=0.0)
    counts = run_ingest(p, tmp_path / "reports")
    assert (counts["accepted"], counts["rejected_grayscale"]) == (1, 1)
    with open(tmp_path / "reports" / "ingest_rejects.csv", encoding="utf-8", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["path"] == str(root / "sepia.png") and row["reason"] == "grayscale"
    chroma, off_tint = (float(x) for x in re.fullmatch(r"mean chroma (\S+), but (\S+) across its tint < 0.5: a "
                                                        r"toned black-and-white photo", row["detail"]).groups())
    assert chroma > 5 * p.min_chroma and off_tint < 0.4  # a strong tone, all of it along one hue
    # a manifest from before the check (no chroma_off_tint) is measured again once, then trusted
    for name in ("manifest.parquet", "rejects.parquet"):
        table = pq.read_table(tmp_path / "raw" / name)
        pq.write_table(table.drop_columns(["chroma_off_tint"]), tmp_path / "raw" / name)
    assert run_ingest(p, tmp_path / "reports")["decoded_this_run"] == 2
    assert run_ingest(p, tmp_path / "reports")["decoded_this_run"] == 0
