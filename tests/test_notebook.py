"""The notebook runs top to bottom on the CPU against a model registered here, never a previous `make demo`."""

import json
from dataclasses import asdict
from pathlib import Path

import nbformat
import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "colorize_historical.ipynb"
# (name, width, height): odd sizes, not multiples of the model's 4, and a portrait
PHOTOS = (("astronaut", 173, 131), ("chelsea", 120, 90), ("coffee", 97, 150))


@pytest.fixture
def registry(tmp_path):
    """An untrained (but valid) small model registered as the champion, under the name params.yaml gives."""
    from chromify.config import ModelParams, load_params
    from chromify.models import get_model
    from chromify.registry import CHAMPION, LocalRegistry
    from chromify.train.checkpoint import export_model

    mp = ModelParams(base_width=4, depth=2, head="regression")
    export_model(tmp_path / "candidate", get_model(mp.arch, **asdict(mp)),
                 {"format": "chromify-model-v1", "arch": mp.arch, "model": asdict(mp), "size": 32, "multiple": 4})
    root = tmp_path / "registry"
    LocalRegistry(root, load_params(ROOT / "params.yaml").register.model_name).register(
        tmp_path / "candidate", {"metrics": {"candidate": {"psnr": 20.0}}}, aliases=(CHAMPION,))
    return root


@pytest.fixture
def reports(tmp_path):
    """A metrics.json and train_history.json in the layouts the evaluate and train stages write."""
    summary = {"psnr": 21.0, "ssim": 0.8, "delta_e2000": 12.0, "colourfulness": 30.0, "colourfulness_truth": 40.0,
               "delta_cf": 10.0}
    metrics = {"images": 2, "candidate": summary, "gray": {**summary, "psnr": 23.0, "colourfulness": 0.0,
                                                          "delta_cf": 40.0},
               "psnr_gain_db": -2.0, "gate_passed": True, "fid": None, "lpips": None, "notes": []}
    history = {"steps": [{"step": s, "loss": 1 / s, "images_per_s": 10.0} for s in (10, 20, 30)],
               "epochs": [{"epoch": 1, "step": 30, "train_loss": 0.1, "val_l1": 0.08, "val_psnr_ab": 25.0}]}
    out = tmp_path / "reports"
    out.mkdir()
    (out / "metrics.json").write_text(json.dumps(metrics))
    (out / "train_history.json").write_text(json.dumps(history))
    return out


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_notebook_colorizes_every_photo_at_its_size_and_plots_the_metrics(tmp_path, monkeypatch, photos, registry,
                                                                        reports):
    from nbclient import NotebookClient

    from chromify.lab import rgb_to_lab

    images = tmp_path / "images"
    images.mkdir()
    for name, w, h in PHOTOS:  # black-and-white photos, stored as RGB as old scans usually are
        Image.fromarray(photos[name]).convert("L").resize((w, h)).convert("RGB").save(images / f"{name}.png")
    out = tmp_path / "colorized"
    for var, value in (("CHROMIFY_REGISTRY", registry), ("CHROMIFY_IMAGES", images), ("CHROMIFY_REPORTS", reports),
                       ("CHROMIFY_NOTEBOOK_OUT", out)):
        monkeypatch.setenv(var, str(value))
    monkeypatch.delenv("CHROMIFY_MODEL", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # on the CPU, as the docs promise

    nb = nbformat.read(NOTEBOOK, as_version=4)
    # A failing cell raises CellExecutionError here, with the cell's traceback.
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
                   ).execute()

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "(champion)" in text and "on cpu" in text
    assert f"colorized {len(PHOTOS)} photo(s) into {out}" in text
    assert "no " + str(reports) not in text  # metrics and curves were found
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == len(PHOTOS) + 2  # input | colorized per photo, the metric comparison, the training curves

    written = sorted(out.iterdir())
    assert [p.name for p in written] == sorted(f"{name}.png" for name, _, _ in PHOTOS)
    for name, w, h in PHOTOS:
        with Image.open(out / f"{name}.png") as img, Image.open(images / f"{name}.png") as src:
            assert img.mode == "RGB" and img.size == (w, h)
            lightness_out, lightness_in = rgb_to_lab(np.asarray(img))[..., 0], rgb_to_lab(np.asarray(src))[..., 0]
        # The photo's own detail with colour under it (a random model's extreme ab leaves the gamut, so L moves a
        # little where sRGB clips, but the picture stays the same).
        assert np.corrcoef(lightness_out.ravel(), lightness_in.ravel())[0, 1] > 0.95
