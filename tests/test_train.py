"""chromify.train on a tiny set of real photos: it learns, it reports, it resumes exactly, it runs under torchrun."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from skimage import data

from chromify import shards
from chromify.config import ModelParams, Params, TrainParams
from chromify.errors import ConfigError
from chromify.loader import ShardSet, to_model_tensors
from chromify.models import get_model
from chromify.train.checkpoint import CHECKPOINT, load_checkpoint, load_model
from chromify.train.loop import at_resolution, augment, lr_factor, prefetch, scaled_crops, train, validate
from chromify.train.report import DVCLiveLogger, TrainReport, png_bytes

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "colorwheel",  # train
          "hubble_deep_field", "retina")  # val
SIZE = 64
# Small and fast: the regression head at the stored size; the tests that need bins or a resolution say so.
MODEL = ModelParams(arch="unet_s", base_width=8, depth=2, head="regression", bin_stride=1, prior_correction=0.0)
BASE = TrainParams(epochs=10_000, max_steps=24, max_minutes=0, batch_size=4, crop=32, resolution=0, lr=3e-3,
                   warmup_steps=2, regression_weight=1.0, rebalance=0.5, keep_best=False, decode_search=False,
                   checkpoint_every=0, log_every=1, val_every_steps=6, num_threads=1)
SEED = 7


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory) -> Path:
    """16 samples (the left and right part of 8 skimage photos) as 64 px shards: 12 train, 4 val."""
    root = tmp_path_factory.mktemp("data")
    raw = root / "raw"
    raw.mkdir()
    rows = []
    for k, name in enumerate(PHOTOS):
        img = getattr(data, name)()[..., :3]
        h, w = img.shape[:2]
        for side, part in (("l", img[:, : w // 2 + h // 4]), ("r", img[:, w // 2 - h // 4 :])):
            path = raw / f"{name}_{side}.png"
            Image.fromarray(np.ascontiguousarray(part)).save(path)
            rows.append({"path": path.name, "uri": f"skimage:{name}/{side}", "split": "val" if k >= 6 else "train",
                         "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
    shards.preprocess(rows, raw, root / "processed", SIZE, shard_mb=1, workers=1)
    shards.write_index(root / "processed", SIZE)
    return root / "processed"


@pytest.fixture(scope="module")
def trained(shard_dir, tmp_path_factory):
    """One in-process run with every report on; what it left behind and what its callbacks saw."""
    root = tmp_path_factory.mktemp("run")
    torch.manual_seed(SEED)  # the loop seeds the same way, so this is the model it starts from
    before = validate(get_model(MODEL.arch, **asdict(MODEL)), ShardSet(shard_dir / "val"), "cpu")
    events: list[tuple[str, dict]] = []
    report = TrainReport(root / "reports")  # DVCLive beside it: root / "dvclive"
    result = train(shard_dir, root / "model", MODEL, BASE, SEED,
                   callbacks=(report, lambda event, d: events.append((event, d))))
    return {"root": root, "before": before, "result": result, "events": events}


def test_a_few_steps_on_real_photos_reduce_the_loss(trained) -> None:
    losses = [d["loss"] for e, d in trained["events"] if e == "step"]
    assert len(losses) == BASE.max_steps
    assert np.mean(losses[-6:]) < np.mean(losses[:3])
    assert trained["result"]["val_l1"] < trained["before"]["val_l1"]
    assert trained["result"]["step"] == BASE.max_steps


def test_the_exported_model_loads_with_safe_formats_only(trained, shard_dir) -> None:
    model_dir = trained["root"] / "model"
    assert sorted(p.name for p in model_dir.iterdir()) == [CHECKPOINT, "config.json", "model.safetensors"]
    model, config = load_model(model_dir)
    assert config["arch"] == MODEL.arch and config["size"] == SIZE and config["multiple"] == 4
    again = validate(model, ShardSet(shard_dir / "val"), "cpu")
    assert again["val_l1"] == pytest.approx(trained["result"]["val_l1"], rel=1e-5)
    state = load_checkpoint(model_dir)  # torch.load(weights_only=True) inside
    for key in ("fingerprint", "model", "optimizer", "schedule", "scaler", "ema", "rng", "loader", "history"):
        assert key in state
    assert state["schedule"]["step"] == BASE.max_steps


def test_reports_curves_grid_and_dvclive(trained) -> None:
    root = trained["root"]
    history = json.loads((root / "reports" / "train_history.json").read_text())
    assert [e["step"] for e in history["epochs"]] == [6, 12, 18, 24]
    assert all(np.isfinite(e["val_psnr_ab"]) for e in history["epochs"])
    grid = Image.open(root / "reports" / "train_grid.png")
    assert grid.size == (3 * SIZE + 4, 4 * SIZE + 6)  # gray | model | truth, one row per val photo
    assert Image.open(root / "reports" / "train_curves.png").format == "PNG"
    summary = json.loads((root / "dvclive" / "metrics.json").read_text())
    assert summary["step"] == BASE.max_steps and "l1" in summary["val"] and "loss" in summary["train"]
    rows = (root / "dvclive" / "plots" / "metrics" / "val" / "l1.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["step", "l1"] and len(rows) == 1 + len(history["epochs"])


def test_a_run_shorter_than_log_every_still_logs_its_last_step(shard_dir, tmp_path) -> None:
    # A short time budget (or a smoke test's max_steps) ends before the first log step: the curves still get
    # the last step, and the folder the DVC stage declares as an output exists.
    p = replace(BASE, max_steps=5, log_every=10, val_every_steps=1000)
    train(shard_dir, tmp_path / "model", MODEL, p, SEED, callbacks=(TrainReport(tmp_path / "reports"),))
    history = json.loads((tmp_path / "reports" / "train_history.json").read_text())
    assert [s["step"] for s in history["steps"]] == [5] and history["epochs"] == []
    rows = (tmp_path / "dvclive" / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()
    assert [r.split("\t")[0] for r in rows] == ["step", "5"]
    # log_every 0 and no validation: no point at all, but the declared folder is there
    p = replace(p, log_every=0)
    train(shard_dir, tmp_path / "model0", MODEL, p, SEED,
          callbacks=(TrainReport(tmp_path / "r0", dvclive_dir=tmp_path / "live0"),))
    assert (tmp_path / "live0" / "plots" / "metrics").is_dir()
    assert not list((tmp_path / "live0" / "plots" / "metrics").rglob("*.tsv"))


def test_dvclive_summary_step_is_the_last_step_trained_not_the_last_validation(shard_dir, tmp_path) -> None:
    # `dvc metrics show` and benchmarks/quality.py read this step; it said 6 for a run that trained 8 steps
    p = replace(BASE, max_steps=8, log_every=4, val_every_steps=3)
    result = train(shard_dir, tmp_path / "model", MODEL, p, SEED, callbacks=(TrainReport(tmp_path / "reports"),))
    history = json.loads((tmp_path / "reports" / "train_history.json").read_text())
    assert [e["step"] for e in history["epochs"]] == [3, 6] and history["steps"][-1]["step"] == 8
    summary = json.loads((tmp_path / "dvclive" / "metrics.json").read_text())
    assert summary["step"] == result["step"] == 8
    assert summary["final"]["val_psnr_ab"] == pytest.approx(result["val_psnr_ab"])


def test_a_diverged_training_exports_nothing_and_says_so(shard_dir, tmp_path) -> None:
    # lr 1e6 gave NaN weights, exported with exit 0: only a later colorize or evaluate said "non-finite colours"
    from chromify.errors import TrainingError

    p = replace(BASE, max_steps=6, lr=1e6, grad_clip=0.0, keep_best=False)
    with pytest.raises(TrainingError, match=r"training diverged \(weights not finite at step 6, last loss nan\); "
                                            r"nothing exported: lower train.lr \(1e\+06\) or set train.grad_clip"):
        train(shard_dir, tmp_path / "model", MODEL, p, SEED)
    assert not (tmp_path / "model" / "model.safetensors").exists()
    # with keep_best, the best validation from before the weights went bad is exported (NaN lost no comparison)
    p = replace(BASE, max_steps=30, lr=1e6, warmup_steps=100, grad_clip=0.0, keep_best=True, val_every_steps=1)
    kept = train(shard_dir, tmp_path / "kept", MODEL, p, SEED)
    scores = [row["val_psnr_ab"] for row in kept["history"]]
    assert not math.isfinite(scores[-1]) and math.isfinite(kept["val_psnr_ab"]), scores
    assert kept["exported_step"] < 30 and (tmp_path / "kept" / "model.safetensors").exists()


def test_no_validation_photo_means_no_validation_scores_not_perfect_ones(shard_dir, tmp_path, capfd) -> None:
    # A small folder can get no validation photo (the split is by hash): scores over nothing read 106 dB before.
    data_dir = tmp_path / "processed"
    shutil.copytree(shard_dir / "train", data_dir / "train")
    (data_dir / "val").mkdir()
    index = json.loads((shard_dir / "val" / "index.json").read_text())
    (data_dir / "val" / "index.json").write_text(json.dumps({**index, "count": 0, "shards": []}))
    p = replace(BASE, max_steps=12, val_every_steps=3, keep_best=True)
    result = train(data_dir, tmp_path / "model", MODEL, p, SEED, callbacks=(TrainReport(tmp_path / "reports"),))
    assert "holds no photo" in capfd.readouterr().err
    assert "val_psnr_ab" not in result and "val_l1" not in result
    assert result["history"] == [] and result["exported_step"] == 12
    history = json.loads((tmp_path / "reports" / "train_history.json").read_text())
    assert history["epochs"] == [] and [s["step"] for s in history["steps"]][-1] == 12
    summary = json.loads((tmp_path / "dvclive" / "metrics.json").read_text())
    assert "val" not in summary and "val_psnr_ab" not in summary.get("final", {}) and "loss" in summary["train"]


def test_the_training_loss_of_a_validation_row_is_the_mean_since_the_last_one(trained) -> None:
    losses = {e["step"]: e["loss"] for event, e in trained["events"] if event == "step"}  # log_every 1
    rows = trained["result"]["history"]
    for before, row in zip([0] + [r["step"] for r in rows[:-1]], rows, strict=True):
        steps = range(before + 1, row["step"] + 1)
        assert row["train_loss"] == pytest.approx(np.mean([losses[s] for s in steps]), rel=1e-5)


def test_a_dry_run_never_replaces_a_real_run(trained, shard_dir, tmp_path) -> None:
    params = write_params(tmp_path / "params.yaml", MODEL, BASE)
    real = trained["root"] / "model"
    before = {f.name: f.read_bytes() for f in real.iterdir()}
    cli = [sys.executable, "-m", "chromify.cli", "train", "--params", str(params), "--data", str(shard_dir)]
    proc = subprocess.run(cli + ["--dry-run", "--out", str(real)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert (proc.returncode, proc.stderr) == (
        2, f"chromify: error: {real}: holds a checkpoint a --dry-run would replace; name an empty --out\n")
    # without --out: a temporary folder, not train.out_dir (models/candidate under the working directory)
    proc = subprocess.run(cli + ["--dry-run"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and json.loads(proc.stdout)["step"] == 5, proc.stderr[-2000:]
    scratch = Path(proc.stderr.split("dry run: writing to ", 1)[1].split()[0])
    assert (scratch / "model" / "model.safetensors").is_file() and (scratch / "reports").is_dir()
    assert not (tmp_path / "models").exists() and not (tmp_path / "reports").exists()
    assert {f.name: f.read_bytes() for f in real.iterdir()} == before
    shutil.rmtree(scratch)
    # --out an empty folder: the reports and curves go there too, not over the real run's in ./reports, ./dvclive
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "train_history.json").write_text("the real run's")
    proc = subprocess.run(cli + ["--dry-run", "--out", str(tmp_path / "wiring")], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"dry run: reports and curves in {tmp_path / 'wiring'}" in proc.stderr
    assert (tmp_path / "wiring" / "reports" / "train_history.json").is_file()
    assert (tmp_path / "reports" / "train_history.json").read_text() == "the real run's"
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == ["train_history.json"]
    assert not (tmp_path / "dvclive").exists()


def test_a_damaged_checkpoint_is_one_line_not_a_traceback(trained, tmp_path) -> None:
    from chromify.errors import DataError

    good = (trained["root"] / "model" / CHECKPOINT).read_bytes()
    for name, damaged in (("truncated", good[: len(good) // 2]), ("empty", b""), ("text", b"hello"),
                          ("paren", b"(ello world"), ("one_byte", b"G")):
        (tmp_path / name).mkdir()
        (tmp_path / name / CHECKPOINT).write_bytes(damaged)
        with pytest.raises(DataError, match=f"{name}/checkpoint.pt: unreadable checkpoint .*; delete it to train"):
            load_checkpoint(tmp_path / name)


def test_the_fingerprint_follows_the_code_that_decides_the_weights(tmp_path) -> None:
    # A finished or interrupted checkpoint is resumed only by the same code: dvc.yaml keeps the folder (persist),
    # and a changed loss must train again rather than re-export the old run. Another module changes nothing.
    import chromify

    src = Path(chromify.__file__).parent
    prints = {}
    for name, edit in (("same", None), ("loss", "train/losses.py"), ("api", "api/app.py")):
        pkg = tmp_path / name / "chromify"
        shutil.copytree(src, pkg, ignore=shutil.ignore_patterns("__pycache__", "static"))
        if edit:
            (pkg / edit).write_text((pkg / edit).read_text() + "\n# edited\n")
        prints[name] = subprocess.run(
            [sys.executable, "-c", "from chromify.train.checkpoint import code_fingerprint; print(code_fingerprint())"],
            env={**os.environ, "PYTHONPATH": str(tmp_path / name)}, capture_output=True, text=True, check=True,
            cwd=tmp_path).stdout.strip()
    assert len(prints["same"]) == 64 and prints["loss"] != prints["same"] and prints["api"] == prints["same"]


def test_dvclive_history_is_cut_back_to_the_checkpoint_on_resume(tmp_path) -> None:
    tsv = tmp_path / "dvclive" / "plots" / "metrics" / "train" / "loss.tsv"
    tsv.parent.mkdir(parents=True)
    tsv.write_text("step\tloss\n2\t0.5\n4\t0.4\n6\t0.3\n")  # logged up to step 6, checkpoint at 4
    DVCLiveLogger(tmp_path / "dvclive").drop_rows_after(4)
    assert tsv.read_text() == "step\tloss\n2\t0.5\n4\t0.4\n"


def test_a_resume_at_an_epochs_last_step_logs_its_validation_once(shard_dir, tmp_path) -> None:
    # The checkpoint at an epoch's last step is written before that epoch's validation; the resumed run validates
    # the step again, and the curve used to get the point twice.
    class Killed(Exception):
        pass

    def killed_after_validating(event: str, data: dict) -> None:
        if event == "epoch" and data["step"] == 3:
            raise Killed

    p = replace(BASE, max_steps=6, checkpoint_every=3, val_every_steps=1, log_every=0)  # 12 photos: 3 steps an epoch
    reports = tmp_path / "run" / "reports"
    with pytest.raises(Killed):
        train(shard_dir, tmp_path / "model", MODEL, p, SEED, callbacks=(TrainReport(reports), killed_after_validating))
    assert load_checkpoint(tmp_path / "model")["history"] == []  # the checkpoint came before the validation
    result = train(shard_dir, tmp_path / "model", MODEL, p, SEED, callbacks=(TrainReport(reports),))
    assert [h["step"] for h in result["history"]] == [3, 6]
    for name in ("l1", "psnr_ab"):
        rows = (tmp_path / "run" / "dvclive" / "plots" / "metrics" / "val" / f"{name}.tsv").read_text().splitlines()
        assert [r.split("\t")[0] for r in rows] == ["step", "3", "6"]


def test_png_writer_round_trips_through_pil() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png_bytes(rgb)))), rgb)


def test_lr_warms_up_then_decays_by_cosine_to_five_percent() -> None:
    assert lr_factor(0.0, 0, 10) == pytest.approx(0.1)
    assert lr_factor(0.1, 9, 10) == pytest.approx(1.0)
    assert lr_factor(0.5, 50, 10) == pytest.approx(0.525)
    assert lr_factor(1.0, 100, 10) == pytest.approx(0.05)
    assert lr_factor(3.0, 300, 10) == pytest.approx(0.05)


def test_augment_is_a_function_of_its_seed() -> None:
    batch = np.random.default_rng(0).integers(0, 256, (4, 3, 16, 16), dtype=np.uint8)
    a = augment(batch, 8, np.random.default_rng([1, 0, 5]))
    b = augment(batch, 8, np.random.default_rng([1, 0, 5]))
    assert a.shape == (4, 3, 8, 8) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    full = augment(batch, 16, np.random.default_rng(3))
    assert all(np.array_equal(f, x) or np.array_equal(f, x[..., ::-1]) for f, x in zip(full, batch, strict=True))


def test_scaled_crops_shrink_like_area_averaging_and_vary_the_scale() -> None:
    lum, ab = torch.rand(6, 1, 32, 32), torch.rand(6, 2, 32, 32) * 2 - 1
    # The whole sample to 8 px: each output pixel is the mean of its 4×4 block, mirrored or not.
    sl, sab = scaled_crops(lum, ab, 8, 32, 1.0, np.random.default_rng(0))
    area = torch.nn.functional.interpolate(torch.cat([lum, ab], 1), size=(8, 8), mode="area")
    got = torch.cat([sl, sab], 1)
    for g, a in zip(got, area, strict=True):
        assert torch.allclose(g, a, atol=1e-5) or torch.allclose(g, a.flip(-1), atol=1e-5)
    assert not torch.allclose(got, area, atol=1e-5) and not torch.allclose(got, area.flip(-1), atol=1e-5)
    # With scale jitter the same seed gives the same crops, and different samples get different framings.
    a = scaled_crops(lum, ab, 8, 32, 0.3, np.random.default_rng([1, 0, 5]))
    b = scaled_crops(lum, ab, 8, 32, 0.3, np.random.default_rng([1, 0, 5]))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[1].shape == (6, 2, 8, 8)
    assert not torch.allclose(a[0], sl, atol=1e-3)


def test_the_bins_head_and_scale_jitter_train_and_export_a_model_that_colours(shard_dir, tmp_path) -> None:
    from chromify.ab_bins import smoothed_distribution, soft_cross_entropy
    from chromify.train.loop import bin_histogram_of

    mp = replace(MODEL, head="bins", temperature=0.38)
    p = replace(BASE, regression_weight=0.0, rebalance=1.0, scale_min=0.5, resolution=32, max_steps=60,
                val_every_steps=1000)
    result = train(shard_dir, tmp_path, mp, p, SEED)
    assert result["step"] == 60
    model, config = load_model(tmp_path)
    assert config["model"]["head"] == "bins" and config["size"] == 32
    # On training photos the model beats the best L-blind guess, the training set's colour distribution itself.
    train_set = ShardSet(shard_dir / "train")
    lum, ab_truth = to_model_tensors(train_set.gather(np.arange(len(train_set))))
    lum, ab_truth = at_resolution(lum, ab_truth, 32)
    index, weight = model.bins.soft_encode(ab_truth * 128.0)
    prior = torch.from_numpy(smoothed_distribution(bin_histogram_of(train_set, mp.bin_grid))).log()
    with torch.no_grad():
        ab, logits = model(lum, with_logits=True)
    blind = soft_cross_entropy(prior[None, :, None, None].expand_as(logits), index, weight).item()
    assert soft_cross_entropy(logits, index, weight).item() < blind - 0.1
    assert ab.shape == (len(train_set), 2, 32, 32) and ab.abs().max() < 1.0
    assert ab.abs().mean() > 0.01  # not gray: the annealed mean commits to colours


def test_the_decode_chosen_on_validation_is_exported_and_scores_as_evaluation_does(shard_dir, tmp_path,
                                                                                   capfd) -> None:
    from chromify.decode_search import candidates
    from chromify.evaluate import predict_split, score
    from chromify.lab import dequantise_lab

    mp = replace(MODEL, head="bins", temperature=0.38, prior_correction=0.5)
    p = replace(BASE, regression_weight=0.0, rebalance=1.0, resolution=32, max_steps=40, val_every_steps=1000,
                decode_search=True, decode_min_psnr_gain_db=-3.0, decode_search_min_photos=4)
    result = train(shard_dir, tmp_path / "model", mp, p, SEED, callbacks=(TrainReport(tmp_path / "reports"),))
    found = json.loads((tmp_path / "reports" / "decode_search.json").read_text())
    rows, chosen = found["rows"], found["chosen"]
    assert found["images"] == 4 and len(rows) == len(candidates(bins_head=True))
    # The rule (tests/test_decode_search.py): nearest the truth's colourfulness above the floor, else best PSNR.
    above = [r for r in rows if r["psnr_gain_db"] >= p.decode_min_psnr_gain_db]
    if above:
        assert chosen in above and chosen["delta_cf"] == min(r["delta_cf"] for r in above)
    else:
        assert chosen["psnr_gain_db"] == max(r["psnr_gain_db"] for r in rows)
    assert len({(r["psnr_gain_db"], r["delta_cf"]) for r in rows}) > len(rows) // 2  # the decodes do differ
    config = json.loads((tmp_path / "model" / "config.json").read_text())["model"]
    assert {k: config[k] for k in ("temperature", "prior_correction", "chroma_gain")} == {
        k: chosen[k] for k in ("temperature", "prior_correction", "chroma_gain")}
    assert result["decode"]["delta_cf"] == chosen["delta_cf"]
    # The evaluate stage, loading the exported model, scores the validation photos as the search did.
    data = ShardSet(shard_dir / "val").all()
    lab = dequantise_lab(data.transpose(0, 2, 3, 1))
    model = score("m", lab, predict_split(tmp_path / "model", data, 4), None).summary
    gray = score("gray", lab, None, None).summary
    assert model["psnr"] - gray["psnr"] == pytest.approx(chosen["psnr_gain_db"], abs=0.02)
    assert model["delta_cf"] == pytest.approx(chosen["delta_cf"], abs=0.05)
    # Another floor re-decodes the finished run, as a `dvc repro` after editing params.yaml does: the same
    # weights, exported again in seconds with the decode the new rule picks (none reaches +50 dB: the best PSNR).
    weights = (tmp_path / "model" / "model.safetensors").read_bytes()
    capfd.readouterr()
    again = train(shard_dir, tmp_path / "model", mp, replace(p, decode_min_psnr_gain_db=50.0), SEED)
    assert "resuming at step 40" in capfd.readouterr().err
    assert again["step"] == 40 and (tmp_path / "model" / "model.safetensors").read_bytes() == weights
    best_psnr = max(rows, key=lambda r: r["psnr_gain_db"])
    assert again["decode"]["psnr_gain_db"] == pytest.approx(best_psnr["psnr_gain_db"])
    assert json.loads((tmp_path / "model" / "config.json").read_text())["model"]["chroma_gain"] == \
        best_psnr["chroma_gain"]


def test_the_decode_search_without_bins_scales_chroma_and_keeps_the_params_decode(shard_dir, tmp_path) -> None:
    from chromify.inference import Colorizer

    p = replace(BASE, max_steps=12, val_every_steps=1000, decode_search=True, decode_min_psnr_gain_db=-50.0,
                decode_search_min_photos=1)
    result = train(shard_dir, tmp_path, MODEL, p, SEED)
    config = json.loads((tmp_path / "config.json").read_text())["model"]
    assert config["temperature"] == MODEL.temperature and result["decode"]["temperature"] is None
    assert config["chroma_gain"] == result["decode"]["chroma_gain"] >= 1.0
    lum = torch.rand(2, 1, 32, 32)
    plain = Colorizer(tmp_path, device="cpu", chroma_gain=1.0).predict_ab(lum)
    bold = Colorizer(tmp_path, device="cpu", chroma_gain=3.0).predict_ab(lum)
    assert plain.abs().max() > 1.0  # ab units: something to scale
    assert torch.allclose(bold, (plain * 3.0).clamp(-128.0, 128.0), atol=1e-3)
    assert torch.allclose(Colorizer(tmp_path, device="cpu").predict_ab(lum), plain * config["chroma_gain"], atol=1e-3)


def test_too_few_validation_photos_keep_the_params_decode(shard_dir, tmp_path) -> None:
    mp = replace(MODEL, head="bins", temperature=0.6, prior_correction=0.3)
    p = replace(BASE, max_steps=6, val_every_steps=1000, decode_search=True, decode_search_min_photos=5)
    result = train(shard_dir, tmp_path / "model", mp, p, SEED, callbacks=(TrainReport(tmp_path / "reports"),))
    found = json.loads((tmp_path / "reports" / "decode_search.json").read_text())
    assert found["chosen"] is None and found["images"] == 4 and "fewer than" in found["note"]
    config = json.loads((tmp_path / "model" / "config.json").read_text())["model"]
    assert (config["temperature"], config["prior_correction"], config["chroma_gain"]) == (0.6, 0.3, 1.0)
    assert "decode" not in result


def test_keep_best_exports_the_weights_of_the_best_validation(shard_dir, tmp_path) -> None:
    # A high learning rate makes the validation score swing, so that the last step is not the best one; which lr
    # does that first is a matter of floating point, so a few are tried.
    for lr in (0.1, 0.2, 0.05):
        out = tmp_path / f"lr{lr}"
        result = train(shard_dir, out, MODEL, replace(BASE, keep_best=True, lr=lr, warmup_steps=0, max_steps=36,
                                                      val_every_steps=3), SEED)
        if result["exported_step"] != 36:
            break
    scores = [h["val_psnr_ab"] for h in result["history"]]
    assert result["exported_step"] < 36 and result["val_psnr_ab"] == pytest.approx(max(scores), abs=1e-6)
    model, _ = load_model(out)
    assert validate(model, ShardSet(shard_dir / "val"), "cpu")["val_psnr_ab"] == pytest.approx(max(scores), abs=1e-4)
    # The resumable checkpoint keeps the last weights (and the best ones beside them), not the exported ones.
    state = load_checkpoint(out)
    assert state["best"]["val_psnr_ab"] == pytest.approx(max(scores))
    assert any(not torch.equal(v, model.state_dict()[k]) for k, v in state["model"].items() if v.is_floating_point())
    # keep_best off: the same swinging run exports its last step's weights
    last = train(shard_dir, tmp_path / "last", MODEL, replace(BASE, keep_best=False, lr=lr, warmup_steps=0,
                                                              max_steps=36, val_every_steps=3), SEED)
    assert last["exported_step"] == 36
    exported, _ = load_model(tmp_path / "last")
    final = load_checkpoint(tmp_path / "last")["model"]
    assert all(torch.equal(v, final[k]) for k, v in exported.state_dict().items())


def test_an_epoch_budget_under_max_steps_runs_the_whole_schedule_and_the_adversarial_phase(shard_dir,
                                                                                         tmp_path) -> None:
    """epochs ends the run first (3 × 12 photos / 4 = 9 steps of max_steps 100): the schedule followed max_steps,
    so the run ended near its peak learning rate and the discriminator never joined."""
    rows = []
    p = replace(BASE, max_steps=100, epochs=3, warmup_steps=0, gan_weight=0.05, gan_start_fraction=0.5)
    result = train(shard_dir, tmp_path, MODEL, p, SEED,
                   callbacks=(lambda e, d: rows.append(d) if e == "step" else None,))
    assert result["step"] == len(rows) == 9
    assert rows[0]["lr"] > 0.9 * p.lr and rows[-1]["lr"] < 0.2 * p.lr
    assert [r["step"] for r in rows if "loss_adversarial" in r] == list(range(6, 10))


def test_a_time_budget_runs_the_whole_schedule_and_the_adversarial_phase(shard_dir, tmp_path) -> None:
    """The shipped params end training by time (max_steps 0): the lr's cosine and the GAN's start follow the
    clock then, or the lr would never decay and the discriminator never join."""
    rows = []
    p = replace(BASE, max_steps=0, max_minutes=0.08, epochs=100_000, log_every=1, val_every_steps=10_000,
                warmup_steps=0, gan_weight=0.05, gan_start_fraction=0.5, checkpoint_every=0)
    result = train(shard_dir, tmp_path, MODEL, p, SEED,
                   callbacks=(lambda e, d: rows.append(d) if e == "step" else None,))
    assert result["step"] == len(rows) > 10 and 4.0 < result["train_seconds"] < 30.0
    assert rows[0]["lr"] > 0.9 * p.lr and rows[-1]["lr"] < 0.2 * p.lr
    adversarial = [r["step"] for r in rows if "loss_adversarial" in r]
    # from half the budget on (in time: its steps, which also train the discriminator, are the slower ones)
    assert adversarial and adversarial[0] > 10 and adversarial == list(range(adversarial[0], len(rows) + 1))


def test_rebalancing_changes_what_the_bins_head_is_trained_on(shard_dir, tmp_path) -> None:
    """train.rebalance < 1 weighs the bins term by colour rarity; ignored, it would train exactly as 1 does."""
    first = {}
    for rebalance in (1.0, 0.5):
        rows = []
        train(shard_dir, tmp_path / str(rebalance), replace(MODEL, head="bins"),
              replace(BASE, max_steps=1, rebalance=rebalance, regression_weight=0.0), SEED,
              callbacks=(lambda e, d, rows=rows: rows.append(d) if e == "step" else None,))
        first[rebalance] = rows[0]["loss"]
    assert abs(first[0.5] - first[1.0]) > 1e-3 * first[1.0]


def test_with_ema_the_averaged_weights_are_exported(shard_dir, tmp_path) -> None:
    """Validation and keep_best judge the EMA model; exporting the raw weights would ship another model."""
    train(shard_dir, tmp_path, MODEL, replace(BASE, ema_decay=0.9, keep_best=False, max_steps=6, lr=0.01), SEED)
    exported, _ = load_model(tmp_path)
    state = load_checkpoint(tmp_path)
    averaged = {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}
    assert all(torch.equal(v, averaged[k]) for k, v in exported.state_dict().items())
    assert any(not torch.equal(v, state["model"][k]) for k, v in exported.state_dict().items() if v.is_floating_point())


def test_keep_best_with_a_discriminator_keeps_a_step_of_the_adversarial_phase(shard_dir, tmp_path) -> None:
    # The adversarial term costs PSNR, so the regression warm-up (steps 1-18) can validate best; exporting it would
    # be a model the discriminator never shaped. Which lr shows that first is a matter of floating point.
    for lr in (0.05, 0.02, 0.1):
        p = replace(BASE, keep_best=True, lr=lr, warmup_steps=0, max_steps=36, val_every_steps=3, gan_weight=30.0,
                    gan_start_fraction=0.5)
        result = train(shard_dir, tmp_path / f"lr{lr}", MODEL, p, SEED)
        warm_up = [h["val_psnr_ab"] for h in result["history"] if h["step"] <= 18]
        adversarial = [h["val_psnr_ab"] for h in result["history"] if h["step"] > 18]
        if max(warm_up) > max(adversarial):
            break
    assert max(warm_up) > max(adversarial)  # the case this is about
    assert result["exported_step"] > 18
    assert result["val_psnr_ab"] == pytest.approx(max(adversarial), abs=1e-6)


def test_prefetch_keeps_order_and_reraises_the_producers_error() -> None:
    assert list(prefetch(iter(range(50)), depth=3)) == list(range(50))

    def broken():
        yield 1
        raise OSError("shard gone")

    with pytest.raises(OSError, match="shard gone"):
        list(prefetch(broken()))


def test_a_checkpoint_written_with_other_params_is_not_resumed(shard_dir, tmp_path, capfd) -> None:
    p = replace(BASE, max_steps=2, log_every=0, val_every_steps=10_000)
    train(shard_dir, tmp_path, MODEL, p, SEED)
    capfd.readouterr()
    steps = []
    train(shard_dir, tmp_path, MODEL, replace(p, max_steps=3), SEED,
          callbacks=(lambda e, d: steps.append(d["resumed_from_step"]) if e == "start" else None,))
    assert steps == [0]
    err = capfd.readouterr().err.strip().splitlines()
    # It names what changed, so a setting changed by mistake can be set back to resume the run.
    assert len(err) == 1 and "another run's (train.max_steps 2 -> 3); starting fresh" in err[0]
    # Same params (a bookkeeping change aside): it resumes where the last run ended.
    train(shard_dir, tmp_path, MODEL, replace(p, max_steps=3, checkpoint_every=1), SEED,
          callbacks=(lambda e, d: steps.append(d["resumed_from_step"]) if e == "start" else None,))
    assert steps == [0, 3]


def test_new_training_data_starts_afresh_instead_of_resuming_the_old_run(shard_dir, tmp_path, capfd) -> None:
    data = tmp_path / "processed"
    shutil.copytree(shard_dir, data)
    p = replace(BASE, max_steps=2, log_every=0, val_every_steps=10_000)
    train(data, tmp_path / "run", MODEL, p, SEED)
    index = data / "train" / "index.json"
    index.write_text(index.read_text() + "\n")  # re-preprocessed: any other index is other data
    capfd.readouterr()
    steps = []
    train(data, tmp_path / "run", MODEL, p, SEED,
          callbacks=(lambda e, d: steps.append(d["resumed_from_step"]) if e == "start" else None,))
    assert steps == [0] and "another run's (the training or validation data); starting fresh" in capfd.readouterr().err


def test_a_new_validation_split_or_a_pretrained_file_found_later_starts_afresh(shard_dir, tmp_path, monkeypatch,
                                                                              capfd) -> None:
    """Validation picks the exported weights (keep_best): a finished run resumed on another validation split
    compared the old split's best score with the new split's. A pretrained file added to the hub cache after a run
    resumed the run that trained without it."""
    from chromify.train.checkpoint import fingerprint_inputs, what_changed

    data = tmp_path / "processed"
    shutil.copytree(shard_dir, data)
    p = replace(BASE, max_steps=2, log_every=0, val_every_steps=10_000)
    train(data, tmp_path / "run", MODEL, p, SEED)
    index = data / "val" / "index.json"
    index.write_text(index.read_text() + "\n")  # another validation split, the same training photos
    capfd.readouterr()
    steps = []
    train(data, tmp_path / "run", MODEL, p, SEED,
          callbacks=(lambda e, d: steps.append(d["resumed_from_step"]) if e == "start" else None,))
    assert steps == [0] and "another run's (the training or validation data); starting fresh" in capfd.readouterr().err

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    perceptual = replace(BASE, perceptual_weight=0.1)
    without = fingerprint_inputs(MODEL, perceptual, SEED, 1, "index-a")
    cache = tmp_path / "torch" / "hub" / "checkpoints"  # torch.hub.get_dir()/checkpoints
    cache.mkdir(parents=True)
    (cache / "vgg16-397923af.pth").write_bytes(b"")  # its name is what the fingerprint records
    found = fingerprint_inputs(MODEL, perceptual, SEED, 1, "index-a")
    assert what_changed(without, found) == ["the pretrained weights found {} -> {'vgg16': 'vgg16-397923af.pth'}"]
    assert fingerprint_inputs(MODEL, BASE, SEED, 1, "index-a")["weights"] == {}  # not used: not recorded


def test_every_param_that_decides_the_weights_is_in_the_fingerprint() -> None:
    """Changing any model or train param that is not bookkeeping (or the seed, world size, data) starts afresh;
    the bookkeeping ones, listed here on purpose, keep the checkpoint."""
    import dataclasses

    from chromify.train.checkpoint import fingerprint_inputs, params_fingerprint, what_changed

    bookkeeping = {"out_dir", "checkpoint_every", "log_every", "val_every_steps", "num_threads", "decode_search",
                   "decode_min_psnr_gain_db", "decode_search_min_photos"}

    def other(params, name):
        """params with `name` moved to another valid value."""
        value = getattr(params, name)
        if isinstance(value, bool):
            tries = [not value]
        elif isinstance(value, (int, float)):
            tries = [value + 1, value * 0.5 + 0.1, value * 2 + 1]
        else:
            tries = ["unet_b", "group", "transposed", "bins", "regression", "huber", f"{value}-other"]
        for v in tries:
            if v != value:
                try:
                    return replace(params, **{name: type(value)(v)})
                except (ConfigError, ValueError):
                    continue
        raise AssertionError(f"no other valid value for {name}")

    base = params_fingerprint(MODEL, BASE, SEED, 1, "index-a")
    inputs = fingerprint_inputs(MODEL, BASE, SEED, 1, "index-a")
    for f in dataclasses.fields(BASE):
        moved = params_fingerprint(MODEL, other(BASE, f.name), SEED, 1, "index-a")
        assert (moved == base) == (f.name in bookkeeping), f.name
        changed = what_changed(inputs, fingerprint_inputs(MODEL, other(BASE, f.name), SEED, 1, "index-a"))
        assert [c.split()[0] for c in changed] == ([] if f.name in bookkeeping else [f"train.{f.name}"])
    for f in dataclasses.fields(MODEL):
        assert params_fingerprint(other(MODEL, f.name), BASE, SEED, 1, "index-a") != base, f.name
        changed = what_changed(inputs, fingerprint_inputs(other(MODEL, f.name), BASE, SEED, 1, "index-a"))
        assert [c.split()[0] for c in changed] == [f"model.{f.name}"]
    assert what_changed(inputs, fingerprint_inputs(MODEL, BASE, SEED + 1, 2, "index-b")) == [
        f"base.seed {SEED} -> {SEED + 1}", "the number of processes 1 -> 2", "the training or validation data"]
    assert len({base, params_fingerprint(MODEL, BASE, SEED + 1, 1, "index-a"),
                params_fingerprint(MODEL, BASE, SEED, 2, "index-a"),
                params_fingerprint(MODEL, BASE, SEED, 1, "index-b")}) == 4


# The subprocess hides the optional packages, as on the bare GPU box (torch, numpy, pyarrow): the loop and its
# reports must work without them. At step `block_at` it says "ready" and waits for a line on stdin, so the test
# can signal it at an exact step.
RUNNER = textwrap.dedent("""
    import sys
    for name in ("dvclive", "matplotlib", "torchvision", "kfp", "dvc", "skimage"):
        sys.modules[name] = None
    from chromify.config import load_params
    from chromify.train.loop import train
    from chromify.train.report import TrainReport

    params_path, data_dir, out_dir, block_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

    def control(event, d):
        if event == "start":
            print("start", d["resumed_from_step"], flush=True)
        if event == "step" and d["step"] == block_at:
            print("ready", flush=True)
            sys.stdin.readline()

    p = load_params(params_path)
    report = TrainReport(out_dir + "/reports", dvclive_dir=out_dir + "/dvclive")
    train(data_dir, out_dir + "/model", p.model, p.train, p.base.seed, callbacks=(report, control))
    print("done", flush=True)
""")


def write_params(path: Path, mp: ModelParams, p: TrainParams) -> Path:
    params = Params(model=mp, train=p)
    params = replace(params, base=replace(params.base, seed=SEED))
    raw = params.to_dict()
    path.write_text(yaml.safe_dump({k: raw[k] for k in ("base", "model", "train")}))
    return path


def start(tmp_path: Path, name: str, params: Path, shard_dir: Path, block_at: int) -> subprocess.Popen:
    # One file per run: three runs start at once, and rewriting a shared one (truncate, then write) while another
    # run's Python was reading it gave that run an empty script, which exits 0 having printed nothing.
    script = tmp_path / f"runner-{name}-{block_at}.py"
    script.write_text(RUNNER)
    return subprocess.Popen([sys.executable, str(script), str(params), str(shard_dir), str(tmp_path / name),
                             str(block_at)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_for(proc: subprocess.Popen, word: str) -> list[str]:
    lines = []
    for line in proc.stdout:
        lines.append(line.strip())
        if line.startswith(word):
            return lines
    raise AssertionError(f"the run ended before {word!r} (exit {proc.wait()}): {lines} {proc.stderr.read()[-2000:]}")


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    exported = load_file(run_dir / "model" / "model.safetensors")
    raw = {f"raw.{k}": v for k, v in load_checkpoint(run_dir / "model")["model"].items()}
    return {**exported, **raw}


def test_resume_after_sigterm_or_kill_9_reaches_the_uninterrupted_weights(shard_dir, tmp_path) -> None:
    # Everything that carries state across a resume is on: EMA, the discriminator (it joins at step 5),
    # the colourfulness term, mid-epoch positions (3 batches an epoch, checkpoints every 4 steps).
    p = replace(BASE, max_steps=10, checkpoint_every=4, batch_size=4, ema_decay=0.8, colourfulness_weight=0.5,
                gan_weight=0.05, gan_start_fraction=0.5, val_every_steps=3)
    params = write_params(tmp_path / "params.yaml", MODEL, p)
    term = start(tmp_path, "term", params, shard_dir, block_at=6)
    kill = start(tmp_path, "kill", params, shard_dir, block_at=6)
    ctrl_c = start(tmp_path, "ctrl_c", params, shard_dir, block_at=6)

    events: list[tuple[str, dict]] = []  # the uninterrupted reference, in this process meanwhile
    train(shard_dir, tmp_path / "ref" / "model", MODEL, p, SEED, callbacks=(lambda e, d: events.append((e, d)),))
    adversarial = [d["step"] for e, d in events if e == "step" and "loss_adversarial" in d]
    assert adversarial == [6, 7, 8, 9, 10]  # pure regression for the first half of the budget

    wait_for(term, "ready")
    term.send_signal(signal.SIGTERM)
    term.stdin.write("go\n")
    term.stdin.flush()
    code, _, err = finish(term)
    assert code == 143, err
    assert "stopped by SIGTERM at step 6" in err
    wait_for(ctrl_c, "ready")
    ctrl_c.send_signal(signal.SIGINT)  # Ctrl-C saves too: it used to end the run where it stood, steps lost
    ctrl_c.stdin.write("go\n")
    ctrl_c.stdin.flush()
    code, _, err = finish(ctrl_c)
    assert code == 130 and "stopped by SIGINT at step 6" in err, err
    assert load_checkpoint(tmp_path / "ctrl_c" / "model")["schedule"]["step"] == 6
    wait_for(kill, "ready")
    kill.kill()  # SIGKILL between the checkpoints at steps 4 and 8
    finish(kill)
    assert load_checkpoint(tmp_path / "term" / "model")["schedule"]["step"] == 6
    assert load_checkpoint(tmp_path / "kill" / "model")["schedule"]["step"] == 4

    resumed = [start(tmp_path, name, params, shard_dir, block_at=0) for name in ("term", "kill")]
    for proc, step in zip(resumed, (6, 4), strict=True):
        code, out, err = finish(proc)
        assert code == 0, err
        assert out.splitlines()[0] == f"start {step}" and out.splitlines()[-1] == "done"
        assert "no dvclive" in err  # the optional packages were hidden, and said so in one line

    reference = final_weights(tmp_path / "ref")
    for name in ("term", "kill"):
        got = final_weights(tmp_path / name)
        assert got.keys() == reference.keys()
        for key, value in reference.items():
            torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-6, msg=f"{name}: {key}")
        history = json.loads((tmp_path / name / "reports" / "train_history.json").read_text())
        assert [e["step"] for e in history["epochs"]] == [3, 6, 9]
        # The curves cover the whole run, not only the steps since the resume.
        assert [s["step"] for s in history["steps"]] == [d["step"] for e, d in events if e == "step"]


def test_two_process_ddp_on_cpu_trains_and_writes_exactly_one_model(shard_dir, tmp_path) -> None:
    p = replace(BASE, batch_size=2, checkpoint_every=2)
    params = write_params(tmp_path / "params.yaml", MODEL, p)
    out = tmp_path / "model"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "chromify.cli", "train", "--params", str(params), "--data", str(shard_dir), "--out", str(out),
         "--reports", str(tmp_path / "reports"), "--dry-run"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)  # only rank 0 prints, as only it validates and writes
    assert result["step"] == 5  # --dry-run: five steps, the ranks in step
    torch.manual_seed(SEED)  # the trainer's initial weights
    initial = get_model(MODEL.arch, **asdict(MODEL)).state_dict()
    assert load_checkpoint(out)["schedule"]["step"] == 5
    assert sorted(p.name for p in out.iterdir()) == [CHECKPOINT, "config.json", "model.safetensors", "params.json"]
    model, _ = load_model(out)
    # the five steps moved every convolution of the model rank 0 wrote away from where training started
    convs = [k for k, v in initial.items() if k.endswith(".weight") and v.ndim == 4]
    assert convs and all(not torch.allclose(model.state_dict()[k], initial[k]) for k in convs)
    assert model(torch.rand(1, 1, SIZE, SIZE)).abs().max() < 1
    assert load_checkpoint(out)["fingerprint"] != ""
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == [
        "decode_search.json", "train_curves.png", "train_grid.png", "train_history.json"]
    assert json.loads((tmp_path / "dvclive" / "metrics.json").read_text())["step"] == 5


def tree(root: Path) -> dict[str, bytes]:
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()}


def test_a_second_trainer_on_a_held_folder_stops_at_once_and_a_kill_9_frees_it(shard_dir, tmp_path) -> None:
    # Two trainers on one folder used to replace each other's checkpoint, model and curves. The first here is a
    # real run, paused at step 3 after its checkpoint at step 2.
    p = replace(BASE, max_steps=6, checkpoint_every=2, val_every_steps=10_000)
    params = write_params(tmp_path / "params.yaml", MODEL, p)
    first = start(tmp_path, "run", params, shard_dir, block_at=3)
    wait_for(first, "ready")
    out, before = tmp_path / "run" / "model", tree(tmp_path / "run")
    cli = [sys.executable, "-m", "chromify.cli", "train", "--params", str(params), "--data", str(shard_dir),
           "--out", str(out), "--reports", str(tmp_path / "run" / "reports")]  # the first's reports and dvclive too
    second = subprocess.run(cli, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert (second.returncode, second.stderr) == (
        2, f"chromify: error: {out}: another training holds this folder (pid {first.pid}); wait for it to end or "
           "train into another folder\n")
    assert tree(tmp_path / "run") == before

    first.kill()  # the kernel drops the lock with the process; the lock file stays behind
    finish(first)
    again = start(tmp_path, "run", params, shard_dir, block_at=0)
    code, stdout, err = finish(again)
    assert code == 0, err
    assert stdout.splitlines()[0] == "start 2" and stdout.splitlines()[-1] == "done", stdout + err[-2000:]
    assert sorted(f.name for f in out.iterdir()) == [CHECKPOINT, "config.json", "model.safetensors"]


def _two_ranks(shard_dir: Path, tmp_path: Path, out: Path) -> list[tuple[int, str]]:
    """(exit code, stderr) of a two-rank dry run on `out`, the ranks started by hand as torchrun would start them
    but without its agent, which kills the other ranks once one fails: so each rank's own ending shows."""
    import socket

    params = write_params(tmp_path / "params.yaml", MODEL, replace(BASE, batch_size=2))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cli = [sys.executable, "-m", "chromify.cli", "train", "--params", str(params), "--data", str(shard_dir),
           "--out", str(out), "--reports", str(tmp_path / "reports"), "--dry-run"]
    ranks = [subprocess.Popen(cli, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
                                   "MASTER_PORT": str(port), "WORLD_SIZE": "2", "RANK": str(rank),
                                   "LOCAL_RANK": str(rank)})
             for rank in (0, 1)]
    errs = [rank.communicate(timeout=120)[1] for rank in ranks]
    return [(rank.returncode, err) for rank, err in zip(ranks, errs, strict=True)]


def test_a_ddp_job_on_a_held_folder_stops_on_every_rank_with_one_line(shard_dir, tmp_path) -> None:
    # Only rank 0 locks; rank 1 used to carry on into its first collective with a rank 0 that had gone, and end in
    # a traceback.
    from chromify.train.checkpoint import lock_out_dir

    out = tmp_path / "model"
    with lock_out_dir(out):
        line = (f"chromify: error: {out}: another training holds this folder (pid {os.getpid()}); wait for it to "
                "end or train into another folder\n")
        assert _two_ranks(shard_dir, tmp_path, out) == [(2, line), (2, line)]
        assert [f.name for f in out.iterdir()] == [".train.lock"] and not (tmp_path / "reports").exists()
    assert not any(out.iterdir())  # the lock file goes with the lock


def test_a_ddp_job_whose_rank_0_cannot_lock_stops_on_every_rank_with_one_line(shard_dir, tmp_path) -> None:
    # Not held but unopenable (a folder where the lock file goes; a read-only or full disk ends the same way):
    # rank 1 used to die in gloo ("Connection reset by peer") with a traceback.
    out = tmp_path / "model"
    (out / ".train.lock").mkdir(parents=True)
    (rank0, err0), (rank1, err1) = _two_ranks(shard_dir, tmp_path, out)
    assert (rank0, err0.count("\n"), rank1) == (2, 1, 2)
    assert str(out / ".train.lock") in err0 and "Is a directory" in err0
    assert err1 == f"chromify: error: {out}: rank 0 cannot lock this folder (its error says why)\n"
    assert not (tmp_path / "reports").exists()


def test_a_ddp_job_signalled_mid_run_leaves_its_checkpoint_though_torchrun_kills_the_last_rank(shard_dir,
                                                                                               tmp_path) -> None:
    # Rank 1 used to exit as soon as the ranks agreed to stop; torchrun answers the first exit by SIGTERM-ing the
    # rest, and rank 0, its handlers already restored, died mid-save: every step since the last checkpoint lost.
    # This test plays torchrun's part; a 1 s sleep before the real save stands in for a large checkpoint's write.
    import socket

    script = tmp_path / "rank.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        from dataclasses import replace
        import chromify.train.loop as loop
        from chromify.config import ModelParams, TrainParams
        write = loop.save_checkpoint
        loop.save_checkpoint = lambda *a, **k: (time.sleep(1.0), write(*a, **k))
        def progress(event, data):
            if event == "step":
                print("step", data["step"], flush=True)
        p = TrainParams(**{asdict(replace(BASE, max_steps=100_000, checkpoint_every=0, val_every_steps=100_000,
                                          log_every=1, batch_size=2))!r})
        loop.train({str(shard_dir)!r}, sys.argv[1], ModelParams(**{asdict(MODEL)!r}), p, seed={SEED},
                   callbacks=(progress,))
    """))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "model"
    ranks = [subprocess.Popen([sys.executable, str(script), str(out)], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
                                   "MASTER_PORT": str(port), "WORLD_SIZE": "2", "RANK": str(rank),
                                   "LOCAL_RANK": str(rank)})
             for rank in (0, 1)]
    try:
        first = ranks[0].stdout.readline()
        assert first.startswith("step"), ranks[0].communicate()[1][-2000:]
        ranks[1].send_signal(signal.SIGTERM)  # a preempted node: one rank signalled, both stop at a step boundary
        ranks[1].wait(timeout=120)
        ranks[0].send_signal(signal.SIGTERM)  # torchrun, on seeing a worker exit
        rest, err0 = ranks[0].communicate(timeout=120)
    finally:
        for rank in ranks:
            rank.kill()
    # Rank 0 exits 143 itself, or, when torchrun's SIGTERM comes after its handlers were given back (checkpoint
    # written and said), dies of it (-15): either way only after the save, which is what this test is about.
    assert ranks[1].returncode == 143 and ranks[0].returncode in (143, -signal.SIGTERM), err0[-2000:]
    steps = [int(line.split()[1]) for line in (first + rest).splitlines() if line.startswith("step")]
    assert f"stopped by SIGTERM at step {steps[-1]}; the checkpoint in {out} resumes the run" in err0
    assert load_checkpoint(out)["schedule"]["step"] == steps[-1] > 0


def test_a_gan_run_below_the_patchgans_smallest_side_is_refused_before_its_first_step(shard_dir, tmp_path) -> None:
    # It used to train the whole warm-up, then die with a torch ValueError when the discriminator joined, and again
    # at the same point on every resume.
    p = replace(BASE, resolution=16, gan_weight=0.1)
    with pytest.raises(ConfigError, match=r"^train.gan_weight: the PatchGAN needs images of at least 24 px, and this "
                                          r"run trains at 16 px \(train.resolution, train.crop\)$"):
        train(shard_dir, tmp_path / "model", MODEL, p, seed=SEED)
    assert not (tmp_path / "model" / CHECKPOINT).exists()


def test_compile_without_a_compiler_is_refused_in_one_line_before_its_first_step(shard_dir, tmp_path,
                                                                                monkeypatch) -> None:
    # The images carry no compiler: train.compile (which params.yaml calls worth it on GPU) died at the first step
    # in Inductor's InvalidCxxCompiler traceback on CPU, and would in Triton's "Failed to find C compiler" on CUDA.
    from chromify.train.loop import compiler_check

    bare = tmp_path / "bin"
    bare.mkdir()
    monkeypatch.setenv("PATH", str(bare))
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.delenv("CC", raising=False)
    with pytest.raises(ConfigError, match=r"^train.compile needs a C\+\+ compiler on this machine and no g\+\+ on "
                                          r"PATH: install one, or set train.compile: false$"):
        train(shard_dir, tmp_path / "model", MODEL, replace(BASE, compile=True), seed=SEED)
    assert not (tmp_path / "model" / CHECKPOINT).exists()
    with pytest.raises(ConfigError, match=r"^train.compile needs a C compiler on this machine and no gcc or clang "):
        compiler_check(cuda=True)
    monkeypatch.setenv("CXX", "/nowhere/g++ -O2")
    with pytest.raises(ConfigError, match=r"and \$CXX \(/nowhere/g\+\+\) is not on PATH: "):
        compiler_check(cuda=False)
    monkeypatch.delenv("CXX")
    for name in ("g++", "clang"):  # what each compiler looks for, found
        (bare / name).write_text("#!/bin/sh\n")
        (bare / name).chmod(0o755)
    compiler_check(cuda=False)
    compiler_check(cuda=True)


def test_a_batch_that_leaves_batchnorm_one_value_a_channel_is_refused_before_its_first_step(shard_dir,
                                                                                          tmp_path) -> None:
    # A batch of 1 at a 1x1 bottleneck: torch's ValueError at the first step, in a traceback.
    p = replace(BASE, batch_size=1, resolution=4)
    with pytest.raises(ConfigError, match=r"^a batch of 1 at 4 px leaves BatchNorm one value a channel at the 1x1 "
                                          r"bottleneck: raise train.batch_size \(per process\) or the training "
                                          r"size, or set model.norm: group$"):
        train(shard_dir, tmp_path / "model", MODEL, p, seed=SEED)
    assert not (tmp_path / "model" / CHECKPOINT).exists()
    # Group norm has no batch statistics: the same run trains.
    assert train(shard_dir, tmp_path / "group", replace(MODEL, norm="group"), replace(p, max_steps=2),
                 seed=SEED)["step"] == 2
    # resnet18_unet's encoder is torchvision's ResNet-18: BatchNorm under any model.norm, so group is no way out
    # (it was not checked, and the advice above led to the traceback)
    from chromify.train.loop import checked_model

    resnet = replace(MODEL, arch="resnet18_unet", depth=5, norm="group", head="regression")
    with pytest.raises(ConfigError, match=r"^a batch of 1 at 32 px leaves BatchNorm one value a channel at the 1x1 "
                                          r"bottleneck: raise train.batch_size \(per process\) or the training size "
                                          r"\(resnet18_unet's encoder keeps BatchNorm whatever model.norm says\)$"):
        checked_model(resnet, replace(BASE, batch_size=1, resolution=32), 64, 64, 1)


def test_a_signal_during_the_last_epochs_validation_still_stops_the_run(shard_dir, tmp_path, monkeypatch) -> None:
    # The flag was read only before the next batch, and after the last epoch there is none: the run went on through
    # the decode search and the export, and exited 0 as if never asked to stop.
    import signal

    import chromify.train.loop as loop

    def validate_then_ctrl_c(*args, **kwargs):
        result = validate(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)  # the run's own handler takes it (Ctrl-C, mid-validation)
        return result

    monkeypatch.setattr(loop, "validate", validate_then_ctrl_c)
    p = replace(BASE, epochs=1, max_steps=0)
    with pytest.raises(SystemExit) as stopped:
        train(shard_dir, tmp_path / "model", MODEL, p, seed=SEED)
    assert stopped.value.code == 130
    assert (tmp_path / "model" / CHECKPOINT).exists() and not (tmp_path / "model" / "model.safetensors").exists()
    monkeypatch.setattr(loop, "validate", validate)
    resumed = train(shard_dir, tmp_path / "model", MODEL, p, seed=SEED)  # the re-run finishes from the checkpoint
    assert resumed["epochs"] == 1 and (tmp_path / "model" / "model.safetensors").exists()


def test_an_export_cut_between_its_two_files_is_refused_at_load(tmp_path) -> None:
    # New weights beside the previous export's config.json (Ctrl-C between the two writes) loaded as the old
    # architecture's model, or failed with a state-dict mismatch that said nothing of why.
    import torch
    from safetensors.torch import save

    from chromify.errors import ModelLoadError
    from chromify.models import get_model
    from chromify.train.checkpoint import export_model

    small = get_model("unet_s", base_width=4, depth=2)
    export_model(tmp_path, small, {"arch": "unet_s", "model": {"base_width": 4, "depth": 2}, "size": 32})
    loaded, config = load_model(tmp_path)
    assert len(config["weights_sha256"]) == 64
    torch.manual_seed(1)
    other = get_model("unet_s", base_width=4, depth=2)  # same shapes, other values: only the hash can tell
    (tmp_path / "model.safetensors").write_bytes(save({k: v.contiguous() for k, v in other.state_dict().items()}))
    with pytest.raises(ModelLoadError, match=r"model.safetensors is not the one config.json was written with \(an "
                                             r"export that was cut short\?\); re-run training to export again$"):
        load_model(tmp_path)


def test_the_resolved_params_are_written_while_the_lock_is_held(shard_dir, tmp_path, monkeypatch) -> None:
    # params.json went in after train() had let the folder go: a second training could take it in between and
    # find the first run's params in its folder.
    from chromify import stages
    from chromify.config import Params
    from chromify.errors import OutputBusyError
    from chromify.train.checkpoint import lock_out_dir

    held: list[bool] = []
    save = stages.save_params

    def save_and_look(params: Params, path: Path) -> None:
        try:
            with lock_out_dir(path.parent):
                held.append(False)
        except OutputBusyError:
            held.append(True)
        save(params, path)

    monkeypatch.setattr(stages, "save_params", save_and_look)
    params = Params(model=MODEL, train=replace(BASE, max_steps=2, val_every_steps=10_000, log_every=0))
    stages.run_train(replace(params, base=replace(params.base, seed=SEED)), shard_dir, tmp_path / "model",
                     tmp_path / "reports")
    assert held == [True]
    assert json.loads((tmp_path / "model" / "params.json").read_text())["train"]["max_steps"] == 2


def test_a_flipped_byte_inside_a_checkpoint_is_one_line_naming_it(trained, shard_dir, tmp_path) -> None:
    # torch's zip reader checks no CRC: a flipped byte in a tensor used to load as a wrong weight, silently.
    from chromify.errors import DataError

    good = (trained["root"] / "model" / CHECKPOINT).read_bytes()
    damaged = bytearray(good)
    damaged[len(good) // 2] ^= 0x10
    path = tmp_path / "model" / CHECKPOINT
    path.parent.mkdir()
    path.write_bytes(damaged)
    why = (f"{path}: unreadable checkpoint (checksum mismatch: its bytes changed after it was written); "
           "delete it to train from scratch")
    with pytest.raises(DataError) as caught:
        load_checkpoint(path.parent)
    assert str(caught.value) == why
    with pytest.raises(DataError) as caught:  # training stops on it rather than resume from it or train over it
        train(shard_dir, path.parent, MODEL, BASE, SEED)
    assert str(caught.value) == why
    assert tree(path.parent) == {CHECKPOINT: bytes(damaged)}


def test_a_checkpoint_without_a_checksum_trains_afresh_and_says_so(trained, shard_dir, tmp_path, capfd) -> None:
    # A bare torch file, as checkpoints were written before they carried a checksum. That code's fingerprint
    # differs from this code's anyway, so it could not resume; it is not read unverified either.
    state = load_checkpoint(trained["root"] / "model")
    out = tmp_path / "model"
    out.mkdir()
    torch.save(state, out / CHECKPOINT)
    assert load_checkpoint(out) is None
    capfd.readouterr()
    starts: list[int] = []
    p = replace(BASE, max_steps=2, log_every=0, val_every_steps=10_000)
    train(shard_dir, out, MODEL, p, SEED, callbacks=(lambda e, d: starts.append(d["resumed_from_step"])
                                                     if e == "start" else None,))
    assert starts == [0] and "of another format" in capfd.readouterr().err
    assert load_checkpoint(out)["schedule"]["step"] == 2
