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
    result = run_cli(str(photos), "-o", str(out), "--model", str(model_dir))
    assert result.exit_code == 0, result.output
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
    assert {p.name: Image.open(p).size for p in out.iterdir()} == {"rotated.jpg": (600, 451),
                                                                    "camera.jpg": (1024, 512)}
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
    assert sorted(p.name for p in first.written) == ["a-png.png", "a.png"]
    assert [rel.name for _, rel in expand_inputs([str(root)], exclude=root / "colour")] == ["a.jpg", "a.png"]


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
