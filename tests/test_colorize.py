"""`chromify colorize`: files, folders, globs, odd modes, EXIF, bad files, side-by-side, HTML, and bounded memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data
from typer.testing import CliRunner

from chromify.cli import app
from chromify.colorize import colorize_paths, expand_inputs
from chromify.errors import ConfigError


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir: Path) -> Path:
    return tiny_model_dir


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """A folder of what people have: gray JPEG, colour PNG, RGBA, palette, 16-bit, a rotated JPEG, and junk."""
    root = tmp_path / "photos"
    (root / "album" / "1935").mkdir(parents=True)
    Image.fromarray(data.camera()).save(root / "camera.jpg", quality=90)  # 512 × 512, mode L
    Image.fromarray(data.coffee()).save(root / "album" / "coffee.png")  # 600 × 400 RGB
    Image.fromarray(data.astronaut()).convert("RGBA").resize((90, 70)).save(root / "album" / "rgba.png")
    Image.fromarray(data.chelsea()).convert("P").save(root / "album" / "1935" / "palette.png")
    Image.fromarray((data.camera().astype(np.uint16) * 257)[:100, :150]).save(root / "album" / "sixteen.png")
    rotated = Image.fromarray(data.chelsea())  # stored 451 wide × 300 high, shown rotated a quarter turn
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated.save(root / "album" / "1935" / "rotated.jpg", exif=exif.tobytes())
    (root / "album" / "notes.png").write_bytes(b"this is not a picture")
    Image.fromarray(data.camera()).save(root / "truncated.jpg")
    (root / "truncated.jpg").write_bytes((root / "truncated.jpg").read_bytes()[:2000])
    (root / "empty.jpg").write_bytes(b"")
    (root / "readme.txt").write_text("not an image suffix: a folder walk ignores it")
    return root


def run_cli(*args: str) -> object:
    return CliRunner().invoke(app, ["colorize", *args], catch_exceptions=False)


def test_folder_is_walked_and_bad_files_are_skipped_with_a_reason(photos: Path, model_dir: Path,
                                                                  tmp_path: Path) -> None:
    out = tmp_path / "out"
    (photos / "album" / "phone.HEIC").write_bytes((photos / "camera.jpg").read_bytes())  # not read: said so
    # links to a folder (not followed) and to nothing: their photos vanished without a word
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "camera.jpg").write_bytes((photos / "camera.jpg").read_bytes())
    (photos / "linked").symlink_to(elsewhere)
    (photos / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (photos / "loop-a").symlink_to(photos / "loop-b")  # a loop: resolving it raised a RuntimeError
    (photos / "loop-b").symlink_to(photos / "loop-a")
    result = run_cli(str(photos), "-o", str(out), "--model", str(model_dir))
    for link in ("linked", "gone.jpg", "loop-a", "loop-b"):
        (photos / link).unlink()
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[-1] == ("left alone 6 file(s) of the folders without an image suffix or not "
                                              "followed (a broken link, .heic, .txt, a link to a folder; read: .jpg "
                                              ".jpeg .png .webp .bmp .tif .tiff)")
    sizes = {str(p.relative_to(out)): Image.open(p).size for p in out.rglob("*.png")}
    assert sizes == {
        "camera.png": (512, 512), "album/coffee.png": (600, 400), "album/rgba.png": (90, 70),
        "album/1935/palette.png": (451, 300), "album/sixteen.png": (150, 100),
        "album/1935/rotated.png": (300, 451),  # EXIF orientation applied
    }
    skipped = [line for line in result.stderr.splitlines() if line.startswith("skipped ")]
    assert len(skipped) == 3
    assert any("notes.png: not an image" in line for line in skipped)
    assert any("truncated.jpg: cannot decode" in line for line in skipped)
    assert any("empty.jpg: empty file" in line for line in skipped)
    assert "colorized 6 photo(s)" in result.stdout and "skipped 3" in result.stdout
    assert all(Image.open(p).mode == "RGB" for p in out.rglob("*.png"))


def test_globs_files_jpg_side_by_side_and_render_size(photos: Path, model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_cli(str(photos / "album" / "**" / "*.jpg"), str(photos / "camera.jpg"), "-o", str(out),
                     "--model", str(model_dir), "--format", "jpg", "--side-by-side", "--render-size", "32")
    assert result.exit_code == 0, result.output
    # the glob keeps the folders below its wildcard-free start (album): 1935/ is kept, album/ is not
    assert {str(p.relative_to(out)): Image.open(p).size for p in out.rglob("*.jpg")} == {
        "1935/rotated.jpg": (600, 451), "camera.jpg": (1024, 512)}
    pair = np.asarray(Image.open(out / "camera.jpg"))
    # the left half is the original (up to JPEG), the right half the colorized photo with the same lightness
    assert np.abs(pair[:, :512].astype(int).mean(axis=2) - data.camera()).mean() < 3


def test_a_big_folder_gets_a_contact_sheet_a_browser_can_open(photos: Path, model_dir: Path, tmp_path: Path,
                                                               monkeypatch) -> None:
    from chromify import colorize

    monkeypatch.setattr(colorize, "SHEET_MAX", 2)  # 200 in use: a 5,000-photo folder made a 650 MB page
    sheet = tmp_path / "sheet.html"
    result = run_cli(str(photos / "album"), "-o", str(tmp_path / "out"), "--model", str(model_dir),
                     "--html", str(sheet))
    assert result.exit_code == 0, result.output
    page = sheet.read_text()
    assert page.count("<figure>") == 2 and page.count("data:image/jpeg;base64,") == 2 * 2
    assert f"Chromify: 5 photo(s) colorized; the first 2 shown here, all in {tmp_path / 'out'}" in page
    assert len(list((tmp_path / "out").rglob("*.png"))) == 5


def test_html_contact_sheet_is_self_contained(photos: Path, model_dir: Path, tmp_path: Path) -> None:
    sheet = tmp_path / "reports" / "sheet.html"
    result = run_cli(str(photos / "album"), "-o", str(tmp_path / "out"), "--model", str(model_dir),
                     "--html", str(sheet))
    assert result.exit_code == 0, result.output
    page = sheet.read_text()
    assert page.count("data:image/jpeg;base64,") == 2 * 5 and "1935/rotated.jpg" in page
    assert "http://" not in page and "https://" not in page and "src=\"/" not in page
    # A re-run replaces its own sheet; another file, an input photo above all, is never replaced by one.
    again = run_cli(str(photos / "album"), "-o", str(tmp_path / "out"), "--model", str(model_dir), "--html", str(sheet))
    assert again.exit_code == 0, again.output
    notes = tmp_path / "notes.html"
    notes.write_text("<html>my notes</html>")
    photo = photos / "album" / "coffee.png"
    before = photo.read_bytes()
    for target in (notes, photo):
        with pytest.raises(ConfigError, match=f"{target}: exists and was not written by chromify"):
            run_cli(str(photos / "album"), "-o", str(tmp_path / "out"), "--model", str(model_dir),
                    "--html", str(target))
    assert notes.read_text() == "<html>my notes</html>" and photo.read_bytes() == before


def test_nothing_coloured_exits_non_zero(photos: Path, model_dir: Path, tmp_path: Path) -> None:
    result = run_cli(str(photos / "empty.jpg"), str(photos / "nowhere" / "*.jpg"), "-o", str(tmp_path / "out"),
                     "--model", str(model_dir))
    assert result.exit_code == 1
    assert "skipped" in result.stderr and "no such file, folder or matching glob" in result.stderr


def test_outputs_are_not_inputs_of_a_rerun_and_names_do_not_collide(tmp_path: Path, model_dir: Path) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    Image.fromarray(data.camera()).save(root / "a.jpg")
    Image.fromarray(data.camera()).save(root / "a.png")
    first = colorize_paths([str(root)], root / "colour", model_dir)
    assert sorted(p.name for p in first.written) == ["a-jpg.png", "a-png.png"]
    assert [rel.name for _, rel in expand_inputs([str(root)], exclude=root / "colour")] == ["a.jpg", "a.png"]


def test_a_photo_added_beside_another_of_the_same_name_never_takes_over_its_output(tmp_path: Path,
                                                                                   model_dir: Path) -> None:
    """a.png alone went to out/a.png; with a.jpg added, a.jpg (first in order) took out/a.png, replacing a.png's
    colours by its own without a word (the file was chromify's), and a.png's moved to a-png.png."""
    root = tmp_path / "photos"
    root.mkdir()
    Image.fromarray(data.coffee()).save(root / "a.png")  # 600 × 400
    assert colorize_paths([str(root)], tmp_path / "out", model_dir).written == [tmp_path / "out" / "a.png"]
    Image.fromarray(data.astronaut()).resize((64, 300)).save(root / "a.jpg")
    again = colorize_paths([str(root)], tmp_path / "out", model_dir)
    assert sorted(again.written) == [tmp_path / "out" / "a-jpg.png", tmp_path / "out" / "a-png.png"]
    sizes = {p.name: Image.open(p).size for p in (tmp_path / "out").iterdir()}
    assert sizes == {"a.png": (600, 400), "a-png.png": (600, 400), "a-jpg.png": (64, 300)}


def test_same_named_photos_of_several_folders_each_keep_their_output(tmp_path: Path, model_dir: Path) -> None:
    """IMG_0001.jpg in every year's folder: each gets its own output, none replaces another's."""
    years = []
    for year, width in (("2019", 60), ("2020", 70), ("2021", 80)):
        (tmp_path / year).mkdir()
        Image.fromarray(data.astronaut()).resize((width, 40)).save(tmp_path / year / "IMG_0001.jpg")
        years.append(str(tmp_path / year))
    outcome = colorize_paths(years, tmp_path / "out", model_dir)
    assert outcome.failed == []
    assert len(set(outcome.written)) == 3
    widths = sorted(Image.open(p).size[0] for p in (tmp_path / "out").iterdir())
    assert widths == [60, 70, 80]

def test_originals_are_never_replaced_only_earlier_outputs_are(tmp_path: Path, model_dir: Path) -> None:
    scans = tmp_path / "scans"
    scans.mkdir()
    Image.fromarray(data.camera()).save(scans / "a.png")  # written into its own folder: would be replaced
    Image.fromarray(data.camera()).save(scans / "b.jpg")  # b.png below is another original, not an output
    Image.fromarray(data.camera()[::2, ::2]).save(scans / "b.png")
    (scans / "b.jpg").chmod(0o444)
    before = {p.name: p.read_bytes() for p in scans.iterdir()}
    result = run_cli(str(scans / "a.png"), str(scans / "b.jpg"), "-o", str(scans), "--model", str(model_dir))
    assert result.exit_code == 1
    assert {p.name: p.read_bytes() for p in scans.iterdir()} == before
    assert "a.png would replace an input photo" in result.stderr
    assert "b.png exists and was not written by chromify; left as it is" in result.stderr
    again = colorize_paths([str(scans)], scans, model_dir)  # the folder as its own output: nothing to read
    assert again.failed == [(str(scans), "no image files found outside the output folder")] and not again.written
    # a re-run replaces what the tool itself wrote, in either format
    out = tmp_path / "out"
    for fmt in ("png", "jpg", "png", "jpg"):
        done = colorize_paths([str(scans / "b.jpg")], out, model_dir, fmt=fmt)
        assert [p.name for p in done.written] == [f"b.{fmt}"] and not done.failed


def test_a_photo_another_program_marked_is_never_replaced(tmp_path: Path, model_dir: Path) -> None:
    """GIMP writes a PNG Software tag, cameras and editors write JPEG comments: only chromify's own mark lets an
    output be replaced."""
    from PIL import PngImagePlugin

    Image.fromarray(data.camera()).save(tmp_path / "a.jpg")
    out = tmp_path / "out"
    out.mkdir()
    tag = PngImagePlugin.PngInfo()
    tag.add_text("Software", "GIMP 2.10")
    Image.fromarray(data.coffee()).save(out / "a.png", pnginfo=tag)
    Image.fromarray(data.coffee()).save(out / "b.jpg", comment=b"holiday 1987")
    (tmp_path / "b.png").write_bytes((tmp_path / "a.jpg").read_bytes())  # an input whose output is b.jpg
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    png = colorize_paths([str(tmp_path / "a.jpg")], out, model_dir)
    jpg = colorize_paths([str(tmp_path / "b.png")], out, model_dir, fmt="jpg")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not png.written and not jpg.written
    assert [r for _, r in png.failed + jpg.failed] == [f"{out / 'a.png'} exists and was not written by chromify; "
                                                       "left as it is", f"{out / 'b.jpg'} exists and was not "
                                                       "written by chromify; left as it is"]


def test_the_contact_sheet_escapes_file_names(tmp_path: Path, model_dir: Path) -> None:
    """A file may be named like markup (legal on Linux): the self-contained page shows the name, runs nothing."""
    Image.fromarray(data.camera()).save(tmp_path / 'a<b onmouseover="x">&c.png')
    sheet = tmp_path / "sheet.html"
    colorize_paths([str(tmp_path / 'a<b onmouseover="x">&c.png')], tmp_path / "out", model_dir, html_path=sheet)
    page = sheet.read_text()
    assert "a&lt;b onmouseover=&quot;x&quot;&gt;&amp;c.png" in page and "<b onmouseover" not in page


def test_unusable_output_paths_fail_in_one_line_before_any_photo(tmp_path: Path, model_dir: Path) -> None:
    photo = tmp_path / "a.png"
    Image.fromarray(data.camera()).save(photo)
    (tmp_path / "file").write_text("not a folder")
    (tmp_path / "sheet").mkdir()
    for args, message in (
            (["-o", str(tmp_path / "file")], "the output folder is a file, not a folder"),
            (["-o", str(tmp_path / "file" / "out")], "cannot create the output folder"),
            (["-o", str(tmp_path / "out"), "--html", str(tmp_path / "sheet")], "the contact sheet path is a folder"),
            (["-o", str(tmp_path / "out2"), "--html", str(tmp_path / "file" / "s.html")],
             "the contact sheet's folder is a file")):
        with pytest.raises(ConfigError, match=message):
            run_cli(str(photo), *args, "--model", str(model_dir))
    assert not (tmp_path / "out2").exists() or not any((tmp_path / "out2").iterdir())


def test_the_contact_sheet_never_replaces_a_photo_the_run_writes(tmp_path: Path, model_dir: Path) -> None:
    """--html out/a.png, where a.jpg's colour goes: the photo was written, then replaced by the page, exit 0."""
    Image.fromarray(data.camera()[:64, :64]).save(tmp_path / "a.jpg")
    out = tmp_path / "out"
    for sheet, message in ((out / "a.png", f"{out / 'a.png'}: is where the colorized {tmp_path / 'a.jpg'} goes"),
                           (out / "b.jpg", "the contact sheet is a web page, not an image; name an .html file")):
        with pytest.raises(ConfigError, match=message):
            run_cli(str(tmp_path / "a.jpg"), "-o", str(out), "--model", str(model_dir), "--html", str(sheet))
    assert not out.exists() or not any(out.iterdir())


def test_a_photo_too_long_for_jpeg_is_skipped_before_the_model_with_the_reason(tmp_path: Path,
                                                                               model_dir: Path) -> None:
    """Pillow's JPEG encoder fails past 65,500 px saying only "broken data stream", which reached the user as
    "([Errno None] None: '…')" after the model had run; the photo, or a side-by-side twice its width, is refused."""
    import io

    from chromify.colorize import JPEG_MAX_SIDE, check_encodable
    from chromify.errors import InputImageError

    Image.new("RGB", (JPEG_MAX_SIDE, 1)).save(io.BytesIO(), format="JPEG")  # the limit is Pillow's own
    with pytest.raises(OSError, match="broken data stream"):
        Image.new("RGB", (JPEG_MAX_SIDE + 1, 1)).save(io.BytesIO(), format="JPEG")
    check_encodable(JPEG_MAX_SIDE, JPEG_MAX_SIDE, "jpg", "x")
    check_encodable(10**6, 10**6, "png", "x")
    with pytest.raises(InputImageError, match="^x: 65501 px high is beyond JPEG's 65,500 px; use PNG$"):
        check_encodable(10, JPEG_MAX_SIDE + 1, "jpeg", "x")

    Image.new("L", (65_501, 656), 90).save(tmp_path / "pano.png")  # a photo's shape (under 100:1), 44 KB
    Image.new("L", (32_751, 328), 90).save(tmp_path / "half.png")  # side by side: 65,502 px
    Image.fromarray(data.camera()[:64, :64]).save(tmp_path / "small.png")
    out = tmp_path / "out"
    plain = colorize_paths([str(tmp_path / "pano.png"), str(tmp_path / "small.png")], out, model_dir, fmt="jpg")
    pair = colorize_paths([str(tmp_path / "half.png")], out, model_dir, fmt="jpg", side_by_side_output=True)
    assert plain.failed + pair.failed == [
        (str(tmp_path / "pano.png"), "65501 px wide is beyond JPEG's 65,500 px; use --format png"),
        (str(tmp_path / "half.png"), "65502 px wide is beyond JPEG's 65,500 px; use --format png or leave out "
                                     "--side-by-side")]
    assert plain.written == [out / "small.jpg"] and not pair.written
    assert [p.name for p in out.iterdir()] == ["small.jpg"]  # no temp file left either


def test_a_recursive_glob_keeps_the_folders_below_its_start(tmp_path: Path, model_dir: Path) -> None:
    """'scans/**/*.jpg' flattened scans/1950/IMG_1.jpg and scans/1960/IMG_1.jpg into IMG_1.png and IMG_1-jpg.png."""
    for year in ("1950", "1960"):
        (tmp_path / "scans" / year).mkdir(parents=True)
        Image.fromarray(data.camera()[: int(year[2:]), :40]).save(tmp_path / "scans" / year / "IMG_1.jpg")
    (tmp_path / "elsewhere.jpg").write_bytes((tmp_path / "scans" / "1950" / "IMG_1.jpg").read_bytes())
    out = tmp_path / "out"
    outcome = colorize_paths([str(tmp_path / "scans" / "**" / "*.jpg")], out, model_dir)
    assert outcome.failed == [] and sorted(outcome.written) == [out / "1950/IMG_1.png", out / "1960/IMG_1.png"]
    assert Image.open(out / "1960/IMG_1.png").size == (40, 60)
    # a pattern climbing out of its start keeps only the name: its output stays inside the output folder
    climbing = expand_inputs([str(tmp_path / "scans" / "*" / ".." / ".." / "elsewhere.jpg")])
    assert [rel for _, rel in climbing] == [Path("elsewhere.jpg")]


def test_a_photo_named_twice_is_colorized_once_where_first_named(tmp_path: Path, model_dir: Path,
                                                                 monkeypatch) -> None:
    """A folder, its subfolder, the file, and the file again by its absolute path: one output, not three."""
    (tmp_path / "ov" / "sub").mkdir(parents=True)
    Image.fromarray(data.camera()[:48, :48]).save(tmp_path / "ov" / "sub" / "x.jpg")
    monkeypatch.chdir(tmp_path)
    outcome = colorize_paths(["ov", "ov/sub", "ov/sub/x.jpg", str(tmp_path / "ov" / "sub" / "x.jpg")], "out",
                             model_dir)
    assert outcome.failed == [] and outcome.written == [Path("out/sub/x.png")]
    assert [str(p.relative_to("out")) for p in Path("out").rglob("*") if p.is_file()] == ["sub/x.png"]


def test_sigterm_ends_a_run_like_ctrl_c_leaving_no_temp_file(tmp_path: Path, model_dir: Path) -> None:
    """docker stop, Kubernetes and timeout send SIGTERM, which killed the run mid-write: its .name.XXXX.tmp
    stayed in the output folder, and no later run removes it."""
    import glob
    import signal
    import time

    photos = tmp_path / "photos"
    photos.mkdir()
    y, x = np.mgrid[0:1500, 0:2000]
    noisy = ((x * 0.05 + y * 0.03) % 200 + np.random.default_rng(0).integers(0, 50, (1500, 2000))).astype(np.uint8)
    Image.fromarray(noisy, "L").save(photos / "p0.png", compress_level=0)
    for i in range(1, 4):  # several writes: several chances to catch one
        (photos / f"p{i}.png").write_bytes((photos / "p0.png").read_bytes())
    (photos / "e.png").write_bytes(b"")  # skipped first
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "chromify.cli", "colorize", str(photos), "-o", str(out),
                             "--model", str(model_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not glob.glob(str(out / ".*.tmp")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before it wrote anything: no temp file to catch"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    done = [p for p in out.iterdir() if not p.name.startswith(".")]
    assert proc.returncode == 143 and err.splitlines()[-3:] == [  # what was done and skipped is said, not lost
        "chromify: terminated", f"skipped {photos / 'e.png'}: empty file (0 bytes)",
        f"stopped after colorizing {len(done)} photo(s) into {out}, skipped 1"], err[-500:]
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_a_strip_no_photo_is_shaped_like_is_skipped_from_its_header(tmp_path: Path, model_dir: Path) -> None:
    # 500,000 x 1 px is 2 KB as a PNG; its merge planes were many times the photo's size (a 39 Mpx strip: 8.6 GB).
    root = tmp_path / "in"
    root.mkdir()
    Image.new("L", (500_000, 1), 128).save(root / "strip.png")
    Image.fromarray(data.camera()).resize((160, 120)).save(root / "photo.png")
    out = tmp_path / "out"
    result = run_cli(str(root), "-o", str(out), "--model", str(model_dir))
    assert result.exit_code == 0, result.output
    assert [p.name for p in out.iterdir()] == ["photo.png"]
    assert (f"skipped {root / 'strip.png'}: 500000x1 is more than 100 times as long as it is wide, not a photo's "
            "shape: refused before decoding") in result.stderr.splitlines()


def test_unknown_format_fails_before_loading_anything(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="png, jpg"):
        run_cli(str(tmp_path), "-o", str(tmp_path / "out"), "--model", str(tmp_path), "--format", "gif")


PEAK_RSS = textwrap.dedent("""
    import json, sys
    from chromify.colorize import colorize_paths

    def high_water_mark() -> int:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024

    small, big, out, model = sys.argv[1:5]
    colorize_paths([small], out, model, fmt="jpg")  # imports, model, allocator pools: the baseline
    base = high_water_mark()
    done = colorize_paths([big], out, model, fmt="jpg")
    print(json.dumps({"base": base, "peak": high_water_mark(), "written": [str(p) for p in done.written]}))
""")


def test_a_12_megapixel_photo_keeps_its_size_with_bounded_memory(tmp_path: Path, model_dir: Path) -> None:
    """4000 × 3000: the naive full-size float path peaked ~1.3 GB above the baseline; strips keep it near 150 MB."""
    y, x = np.mgrid[0:3000, 0:4000]
    gray = ((x * 0.045 + y * 0.02) % 200 + np.random.default_rng(0).integers(0, 50, (3000, 4000))).astype(np.uint8)
    Image.fromarray(gray, "L").save(tmp_path / "big.jpg", quality=90)
    Image.fromarray(gray[:300, :400], "L").save(tmp_path / "small.jpg", quality=90)
    proc = subprocess.run([sys.executable, "-c", PEAK_RSS, str(tmp_path / "small.jpg"), str(tmp_path / "big.jpg"),
                           str(tmp_path / "out"), str(model_dir)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rss = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Image.open(rss["written"][0]).size == (4000, 3000)
    growth_mb = (rss["peak"] - rss["base"]) / 2**20
    # Unavoidable: the photo in (36 MB), PIL's decoded copy (48 MB), the output (36 MB). Strips add ~40 MB each.
    assert growth_mb < 300, f"peak RSS grew {growth_mb:.0f} MB for a 12 MP photo"


def test_a_file_too_big_to_be_a_photo_is_skipped_unread_and_the_others_are_done(tmp_path: Path,
                                                                                 model_dir: Path) -> None:
    """A 3 GB file of zeros was read whole (3.7 GB of memory) to be called not an image, and one bigger than the
    memory left ended the whole batch in a MemoryError traceback. Its size alone refuses it now, as ingest does."""
    from chromify.colorize import MAX_PIXELS
    from chromify.decode import byte_cap

    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(data.coffee()).save(src / "good.jpg")
    big = src / "big.jpg"
    with open(big, "wb") as f:  # sparse: no disk spent, but a reader gets every byte
        f.truncate(byte_cap(MAX_PIXELS) + 1)
    outcome = colorize_paths([str(src)], tmp_path / "out", model_dir)
    assert outcome.written == [tmp_path / "out" / "good.png"]
    assert outcome.failed == [(str(big), f"{byte_cap(MAX_PIXELS) + 1:,} bytes > {byte_cap(MAX_PIXELS):,}, more than "
                                         f"a photo of at most {MAX_PIXELS:,} pixels takes: not read")]


def test_a_full_disk_stops_the_run_in_one_line_after_saying_what_was_done(photos: Path, model_dir: Path,
                                                                           tmp_path: Path, monkeypatch) -> None:
    """ENOSPC on the second photo: every later photo was still decoded and colorized only to fail the same way, and
    the run exited 0. (A full file system cannot be mounted here: the kernel's error is raised in its place.)"""
    import errno

    from chromify import colorize

    real, calls = colorize.save_image, []

    def save_until_full(image, f, fmt):
        calls.append(1)
        if len(calls) >= 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(image, f, fmt)

    monkeypatch.setattr(colorize, "save_image", save_until_full)
    from chromify.cli import _one_line

    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["colorize", str(photos), "-o", str(out), "--model", str(model_dir)])
    assert len(calls) == 2 and isinstance(result.exception, OSError)
    line = _one_line(result.exception)  # what `chromify` prints, exit 2
    assert line is not None and line.startswith(str(out)) and line.endswith(".png: No space left on device"), line
    assert result.stderr.splitlines()[-1] == f"stopped after colorizing 1 photo(s) into {out}, skipped 1"
    assert len(list(out.rglob("*.png"))) == 1 and not list(out.rglob("*.tmp"))
