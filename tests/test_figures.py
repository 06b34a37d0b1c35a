import json
import re
from dataclasses import asdict

import numpy as np
import pytest
from PIL import Image

from chromify import figures
from chromify.errors import DataError

SIZE = 32  # px, the shards' size: the gallery's images and the contact sheet's cells


def history(n_steps: int = 12, n_epochs: int = 3) -> dict:
    """The layout chromify.train.report.TrainReport writes."""
    steps = [{"step": 5 * (i + 1), "loss": 0.2 / (i + 1), "images_per_s": 30.0, "lr": 1e-3} for i in range(n_steps)]
    epochs = [{"epoch": i + 1, "step": 20 * (i + 1), "train_loss": 0.1 / (i + 1), "val_l1": 0.09 - 0.01 * i,
               "val_psnr_ab": 24.0 + i} for i in range(n_epochs)]
    return {"steps": steps, "epochs": epochs}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, photos):
    """reports/ as `chromify evaluate` leaves it (candidate, gray and champion on 5 real test photos), plus the
    training history: what the evaluate stage has in hand when it draws the figures."""
    import torch

    from chromify.config import GateParams, IngestParams, ModelParams
    from chromify.evaluate import evaluate
    from chromify.ingest import ingest, read_manifest
    from chromify.models import get_model
    from chromify.shards import preprocess, write_index
    from chromify.train.checkpoint import export_model

    base = tmp_path_factory.mktemp("evaluated")
    (base / "photos").mkdir()
    items = list(photos.items())
    for k in range(5):
        name, rgb = items[k % len(items)]
        crop = rgb[20 * k : 20 * k + 160, 30 * k : 30 * k + 200]
        Image.fromarray(np.ascontiguousarray(crop)).save(base / "photos" / f"{name}_{k}.png")
    ingest(IngestParams(source=str(base / "photos"), out_dir=str(base / "raw"), min_side=32, val_fraction=0.0,
                        test_fraction=1.0), base / "ingest_reports", workers=1)
    preprocess(read_manifest(base / "raw"), base / "raw", base / "shards", SIZE, 1, workers=1)
    write_index(base / "shards", SIZE)
    mp = ModelParams(base_width=4, depth=2, head="regression")
    for name, seed in (("candidate", 0), ("champion", 1)):
        torch.manual_seed(seed)
        export_model(base / name, get_model("unet_s", **asdict(mp)),
                     {"format": "chromify-model-v1", "arch": mp.arch, "model": asdict(mp), "size": SIZE,
                      "multiple": 4})
    reports = base / "reports"
    evaluate(base / "shards", base / "candidate", base / "champion", GateParams(), reports, gallery_size=4)
    (reports / "train_history.json").write_text(json.dumps(history()))
    return reports


@pytest.fixture(scope="module")
def drawn(evaluated):
    return figures.write_figures(evaluated)


def test_write_figures_draws_the_three_figures_from_an_evaluation(evaluated, drawn):
    out = evaluated / "figures"
    assert drawn == [out / "training_curves.png", out / "metric_comparison.png", out / "contact_sheet.png"]
    for path in drawn:
        with Image.open(path) as img:
            assert img.format == "PNG" and img.width >= 4 * figures.MIN_CELL_PX and img.height >= 300
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temp files


def test_contact_sheet_shows_the_gallery_pixel_for_pixel(evaluated, drawn):
    headings, rows = figures.read_gallery(evaluated / "gallery.html")
    assert headings == ["gray (ab = 0)", "candidate", "champion", "truth"]
    assert len(rows) == 4 and all(len(r) == 4 and r[0].shape == (SIZE, SIZE, 3) for r in rows)
    # gray | model | model | truth: the truth has colour, the gray input none
    assert np.ptp(rows[0][3].astype(int), axis=2).mean() > np.ptp(rows[0][0].astype(int), axis=2).mean()

    scale = figures.contact_sheet_scale(rows)
    assert scale == figures.MIN_CELL_PX // SIZE  # 32 px cells are magnified 4x, by whole pixels
    with Image.open(evaluated / "figures" / "contact_sheet.png") as img:
        sheet = np.asarray(img.convert("RGB"))
    grid = figures.contact_sheet_grid(rows, scale=scale)
    assert sheet.shape[1] == grid.shape[1]
    assert np.array_equal(sheet[-grid.shape[0]:], grid)  # below the headings, exactly the gallery's pixels


def test_metric_comparison_reads_the_per_image_table(evaluated):
    per_image = figures.read_per_image(evaluated / "eval_per_image.csv")
    metrics = json.loads((evaluated / "metrics.json").read_text())
    assert set(per_image) == {"gray (ab = 0)", "candidate", "champion"}
    assert len(per_image["candidate"]["psnr"]) == metrics["images"] == 5
    assert np.mean(per_image["candidate"]["psnr"]) == pytest.approx(metrics["candidate"]["psnr"], rel=1e-4)
    fig = figures.metric_comparison_figure(metrics, per_image)
    psnr_axes = fig.axes[0]
    assert [t.get_text() for t in psnr_axes.get_xticklabels()] == ["gray", "candidate", "champion"]
    assert sum(len(c.get_offsets()) for c in psnr_axes.collections) == 3 * 5  # a dot per model and photo


def test_lpips_and_fid_get_a_panel_each_when_measured(evaluated):
    metrics = json.loads((evaluated / "metrics.json").read_text())
    plain = figures.metric_comparison_figure({**metrics, "lpips": None, "fid": None})
    measured = figures.metric_comparison_figure({
        **metrics, "lpips": {"gray (ab = 0)": 0.3, "candidate": 0.2, "champion": 0.25},
        "fid": {"gray (ab = 0)": 80.0, "candidate": 60.0, "champion": 70.0}})
    assert len(plain.axes) == len(figures.PANELS)
    assert [ax.get_title() for ax in measured.axes[-2:]] == ["LPIPS ↓", "FID ↓"]


def test_missing_inputs_are_skipped_and_their_old_figures_removed(tmp_path, evaluated):
    (tmp_path / "metrics.json").write_text((evaluated / "metrics.json").read_text())
    stale = tmp_path / "figures" / "training_curves.png"
    stale.parent.mkdir()
    stale.write_bytes(b"an old run's curves")
    assert figures.write_figures(tmp_path) == [tmp_path / "figures" / "metric_comparison.png"]
    assert not stale.exists()
    assert figures.write_figures(tmp_path / "empty") == []


def test_an_unreadable_input_removes_its_old_figure_and_the_others_are_still_drawn(tmp_path, evaluated):
    """A new evaluation beside a damaged training history: the new scores' figures are drawn, the history's old
    figure goes, and the error is raised after them (no figure of the previous run beside the new metrics)."""
    for name in ("metrics.json", "eval_per_image.csv", "gallery.html"):
        (tmp_path / name).write_bytes((evaluated / name).read_bytes())
    (tmp_path / "train_history.json").write_text("{not json")
    out = tmp_path / "figures"
    out.mkdir()
    for name in (figures.TRAINING_CURVES, figures.METRIC_COMPARISON, figures.CONTACT_SHEET):
        (out / name).write_bytes(b"an old run's figure")
    with pytest.raises(DataError, match="train_history.json"):
        figures.write_figures(tmp_path)
    assert not (out / figures.TRAINING_CURVES).exists()
    for name in (figures.METRIC_COMPARISON, figures.CONTACT_SHEET):
        with Image.open(out / name) as img:
            assert img.format == "PNG"


def test_evaluate_stage_says_its_scores_stand_when_a_figure_cannot_be_drawn(tmp_path, evaluated):
    from chromify.config import params_from_dict
    from chromify.errors import ChromifyError
    from chromify.stages import run_evaluate

    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "train_history.json").write_text("{not json")
    params = params_from_dict({"register": {"registry_dir": str(tmp_path / "registry")}})
    with pytest.raises(ChromifyError) as err:
        run_evaluate(params, evaluated.parent / "shards", evaluated.parent / "candidate", reports)
    assert str(err.value).startswith(f"{reports / 'train_history.json'}: cannot read JSON")
    assert str(err.value).endswith("(the evaluation itself is written: metrics.json, gate.json and gallery.html; "
                                   "the figure drawn from that file is not)")
    assert json.loads((reports / "metrics.json").read_text())["images"] == 5
    assert sorted(p.name for p in (reports / "figures").iterdir()) == [figures.CONTACT_SHEET,
                                                                       figures.METRIC_COMPARISON]


def test_a_gallery_without_photos_gets_a_contact_sheet_that_says_so(tmp_path, evaluated):
    """evaluate.gallery_size 0 is allowed, and the evaluate stage declares the sheet: it must still be written."""
    (tmp_path / "gallery.html").write_text(re.sub(r"<img[^>]*>", "", (evaluated / "gallery.html").read_text()))
    assert figures.read_gallery(tmp_path / "gallery.html")[1] == []
    sheet = tmp_path / "figures" / figures.CONTACT_SHEET
    assert figures.write_figures(tmp_path) == [sheet]
    with Image.open(sheet) as img:
        gray = np.asarray(img.convert("L"))
    assert gray.shape == (60, 400) and gray.min() < 100 and np.median(gray) > 200  # dark text on white


def test_training_curves_draw_whatever_the_history_holds():
    full = figures.training_curves_figure(history())
    assert all(ax.has_data() for ax in full.axes)
    steps_only = figures.training_curves_figure(history(n_epochs=0))
    assert [ax.has_data() for ax in steps_only.axes] == [True, False, False]
    assert not any(ax.has_data() for ax in figures.training_curves_figure({"steps": [], "epochs": []}).axes)


def test_unreadable_reports_raise_data_error_naming_the_file(tmp_path):
    (tmp_path / "train_history.json").write_text("{not json")
    with pytest.raises(DataError, match="train_history.json"):
        figures.write_figures(tmp_path)
    (tmp_path / "train_history.json").unlink()
    (tmp_path / "metrics.json").write_text(json.dumps({"images": 3}))
    with pytest.raises(DataError, match="none of the models"):
        figures.write_figures(tmp_path)


@pytest.mark.parametrize(("name", "content", "reason"), [
    ("gallery.html", b"\xff\xfe<table><tr><td>",
     "not a gallery written by chromify evaluate (not UTF-8: invalid start byte at byte 0)"),
    ("train_history.json", b"[1, 2]", "expected a JSON object, got list [1, 2]"),
    ("train_history.json", b'{"steps": [1, 2]}',
     "not a training history ('steps' must be a list of objects with step and loss)"),
    ("train_history.json", b'{"epochs": [{"val_l1": 0.1}]}',
     "not a training history ('epochs' must be a list of objects with step)"),
    ("metrics.json", b'"candidate"', 'expected a JSON object, got str "candidate"'),
])
def test_reports_of_the_wrong_kind_raise_a_one_line_data_error_naming_the_file(tmp_path, name, content, reason):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError) as err:
        figures.write_figures(tmp_path)
    assert str(err.value) == f"{tmp_path / name}: {reason}"
    assert not (tmp_path / "figures").exists()  # nothing drawn


def test_contact_sheet_grid_places_each_image_at_its_own_size():
    a = np.full((4, 6, 3), 10, np.uint8)
    b = np.full((5, 3, 3), 200, np.uint8)
    grid = figures.contact_sheet_grid([[a, b], [b]], gap=2)
    assert grid.shape == (2 * 5 + 2, 2 * 6 + 2, 3)  # cells as large as the largest image
    assert (grid[:4, :6] == 10).all() and (grid[4, :6] == 255).all()
    assert (grid[:5, 8:11] == 200).all() and (grid[7:12, :3] == 200).all()
    assert figures.contact_sheet_grid([[a]], scale=3).shape == (12, 18, 3)
    with pytest.raises(DataError):
        figures.contact_sheet_grid([])
