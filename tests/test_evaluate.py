"""Evaluation on tiny shards made here from scikit-image's photos: scoring is consistent, the gallery shows the
failures, the reports have a row per model, and FID/LPIPS are computed only from weights already on disk."""

import csv
import json
import re

import numpy as np
import pytest
import torch
from metric_references import reference_image_metrics
from PIL import Image
from safetensors.torch import load_file, save_file
from skimage import data as skdata

from chromify import evaluate as ev
from chromify.config import GateParams
from chromify.errors import DataError
from chromify.io import file_sha256
from chromify.lab import dequantise_lab, lab_to_rgb8, quantise_lab, rgb_to_lab
from chromify.metrics import PSNR_CAP_DB, colourfulness, psnr
from chromify.models import get_model
from chromify.shards import FORMAT
from chromify.train.checkpoint import export_model

SIZE = 32
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field")


def square(rgb: np.ndarray, size: int) -> np.ndarray:
    h, w, _ = rgb.shape
    s = min(h, w)
    crop = rgb[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
    return np.asarray(Image.fromarray(crop).resize((size, size), Image.BILINEAR))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """processed/test with one shard of the photos as 8-bit Lab, and its index, as preprocess writes them."""
    root = tmp_path_factory.mktemp("processed")
    split = root / "test"
    split.mkdir()
    samples = np.stack([quantise_lab(rgb_to_lab(square(getattr(skdata, n)(), SIZE))).transpose(2, 0, 1)
                        for n in PHOTOS])
    np.save(split / "test-0000.npy", samples)
    (split / "index.json").write_text(json.dumps({
        "format": FORMAT, "split": "test", "count": len(samples), "shape": [3, SIZE, SIZE], "dtype": "uint8",
        "shards": [{"file": "test-0000.npy", "count": len(samples), "sha256": file_sha256(split / "test-0000.npy")}],
    }))
    return root


@pytest.fixture(scope="module")
def lab_truth(data_dir):
    return dequantise_lab(np.load(data_dir / "test/test-0000.npy").transpose(0, 2, 3, 1))


def tiny_model(path, seed, size=SIZE):
    torch.manual_seed(seed)
    export_model(path, get_model("unet_s", base_width=4, depth=2),
                 {"arch": "unet_s", "model": {"base_width": 4, "depth": 2}, "size": size})
    return path


def test_a_test_shard_whose_bytes_changed_is_refused_not_scored(data_dir, tmp_path):
    """The gate judges scores of these bytes: one flipped byte in a sample is an error naming the shard, and no
    report is written (scored, it moved PSNR by 0.01 dB and passed unnoticed)."""
    import shutil

    copy = tmp_path / "processed"
    shutil.copytree(data_dir, copy)
    shard = copy / "test" / "test-0000.npy"
    data = bytearray(shard.read_bytes())
    data[-100] ^= 0x40
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError) as err:
        ev.evaluate(copy, tiny_model(tmp_path / "m", 0), None, GateParams(), tmp_path / "reports", batch_size=2)
    assert str(err.value) == (f"{shard}: checksum mismatch with the index (corrupt or partial shard); "
                              "re-run preprocess")
    assert not (tmp_path / "reports" / "metrics.json").exists()


def test_the_model_is_scored_at_the_size_it_was_trained_at(data_dir, tmp_path):
    """A model trained at half the stored size sees area-downscaled L, and its ab comes back bilinear, as in
    `chromify colorize`; at the stored size it would answer differently (and be scored on what it never saw)."""
    from chromify.inference import Colorizer

    model = tiny_model(tmp_path / "half", 3, size=SIZE // 2)
    data = np.load(data_dir / "test/test-0000.npy")
    got = ev.predict_split(model, data, batch_size=2)
    assert got.shape == (len(PHOTOS), SIZE, SIZE, 2)
    lum = torch.from_numpy(data[:, :1].astype(np.float32) / 255.0)
    col = Colorizer(model)
    small = col.predict_ab(torch.nn.functional.interpolate(lum, size=(SIZE // 2, SIZE // 2), mode="area"))
    want = torch.nn.functional.interpolate(small, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(got, want.permute(0, 2, 3, 1).numpy(), atol=1e-4)
    at_full = col.predict_ab(lum).permute(0, 2, 3, 1).numpy()
    assert np.abs(got - at_full).mean() > 1e-3


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    """An empty torch hub cache and no LPIPS file: nothing to find, and nothing may be downloaded."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv(ev.LPIPS_ENV, raising=False)


def test_gray_is_colourless_and_a_perfect_model_hits_the_psnr_cap(lab_truth):
    gray = ev.score("gray", lab_truth, None, None)
    perfect = ev.score("perfect", lab_truth, lab_truth[..., 1:], "perfect")
    assert all(r["colourfulness"] < 0.5 for r in gray.rows)  # ab = 0 is gray up to 8-bit rounding
    assert gray.summary["colourfulness_truth"] > 10.0
    assert gray.summary["delta_cf"] == pytest.approx(gray.summary["colourfulness_truth"], abs=0.5)
    assert all(r["psnr"] == PSNR_CAP_DB for r in perfect.rows)
    assert perfect.summary["delta_cf"] == pytest.approx(0.0, abs=1e-9)
    assert perfect.summary["delta_e2000"] == pytest.approx(0.0, abs=1e-6)
    assert perfect.summary["ssim"] == pytest.approx(1.0)
    # Both are scored against the same truth, and each number is the metric of the images the Scored holds.
    assert perfect.summary["colourfulness_truth"] == gray.summary["colourfulness_truth"]
    truth_rgb = perfect.images
    for i, row in enumerate(gray.rows):
        assert row["psnr"] == pytest.approx(psnr(gray.images[i], truth_rgb[i]))
        assert row["colourfulness"] == pytest.approx(colourfulness(gray.images[i]))
    assert 10.0 < gray.summary["psnr"] < 40.0


def test_each_model_is_scored_as_before_the_fast_path(lab_truth):
    """Several models scored against each truth in turn: every row is the one evaluate gave before its fast path
    (tests/metric_references.py, which shares no code with chromify.metrics), in the models' order."""
    truth_rgb = lab_to_rgb8(lab_truth)
    renderings = []
    for ab in (0.0, 0.5 * lab_truth[..., 1:], lab_truth[..., 1:][..., ::-1]):  # gray, washed out, a and b swapped
        pred_lab = lab_truth.copy()
        pred_lab[..., 1:] = ab
        renderings.append(lab_to_rgb8(pred_lab))
    for k, (pred_rgb, rows) in enumerate(zip(renderings, ev._image_rows(renderings, truth_rgb), strict=True)):
        want = [reference_image_metrics(pred, truth) for pred, truth in zip(pred_rgb, truth_rgb, strict=True)]
        assert rows == [pytest.approx(w, rel=1e-12, abs=1e-12) for w in want], f"model {k}"


def test_the_gallery_leads_with_the_worst_and_the_best_image(lab_truth, tmp_path):
    ab = lab_truth[..., 1:].copy()
    ab[3] = -ab[3]  # opposite hues: the worst
    ab[[0, 2, 4]] *= 0.5  # washed out: in between; image 1 stays perfect: the best
    candidate = ev.score("candidate", lab_truth, ab, "c")
    gray = ev.score("gray (ab = 0)", lab_truth, None, None)
    rows = ev.gallery_rows(candidate, 4, seed=0)
    assert list(rows)[:2] == [3, 1] and len(rows) == 4 and len(set(rows)) == 4
    assert rows[3].startswith("worst") and rows[1].startswith("best")
    assert ev.gallery_rows(candidate, 1, seed=0) == {3: rows[3]}

    page = tmp_path / "gallery.html"
    ev.write_gallery(page, lab_to_rgb8(lab_truth), [gray, candidate], rows, "t")
    text = page.read_text()
    assert "image 3: worst ΔE2000 of the candidate" in text and "image 1: best ΔE2000 of the candidate" in text
    assert text.index("image 3: worst") < text.index("image 1: best")
    assert re.search(r"<th>gray \(ab = 0\)</th><th>candidate</th><th>truth</th>", text)
    assert text.count("data:image/png;base64,") == 4 * 3


def test_a_model_that_gives_nan_is_refused_not_scored_as_black_photos(data_dir, tmp_path, no_weights):
    """NaN ab cast to pixels is black: scored so, a diverged model passed a lenient gate and became champion."""
    from chromify.errors import ModelLoadError

    model = tiny_model(tmp_path / "diverged", 1)
    weights = load_file(model / "model.safetensors")
    save_file({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in weights.items()},
              model / "model.safetensors")
    config = json.loads((model / "config.json").read_text())
    config["weights_sha256"] = file_sha256(model / "model.safetensors")  # intact files, broken weights
    (model / "config.json").write_text(json.dumps(config))
    lenient = GateParams(min_psnr_gain_db=-100.0, max_delta_cf=1000.0)
    with pytest.raises(ModelLoadError, match="the model produced non-finite colours") as err:
        ev.evaluate(data_dir, model, None, lenient, tmp_path / "reports", batch_size=2, gallery_size=2)
    assert str(model) in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "reports" / "gate.json").exists()


def test_evaluate_reports_three_models_and_skips_fid_lpips_without_weights(data_dir, tmp_path, no_weights):
    candidate, champion = tiny_model(tmp_path / "candidate", 1), tiny_model(tmp_path / "champion", 2)
    reports = tmp_path / "reports"
    gate = GateParams(min_psnr_gain_db=-100.0, max_delta_cf=1000.0, champion_psnr_tolerance_db=100.0,
                      champion_delta_cf_tolerance=1000.0)
    summary, decision = ev.evaluate(data_dir, candidate, champion, gate, reports, batch_size=2, gallery_size=3)

    metrics = json.loads((reports / "metrics.json").read_text())
    assert metrics["images"] == len(PHOTOS) and set(metrics) >= {"candidate", "gray", "champion"}
    assert metrics["fid"] is None and metrics["lpips"] is None
    assert [n.split(":")[0] for n in metrics["notes"]] == ["fid skipped", "lpips skipped"]
    assert all("never downloaded" in n for n in metrics["notes"])
    gate_json = json.loads((reports / "gate.json").read_text())
    assert gate_json["passed"] is decision.passed is True
    assert gate_json["champion_id"] == ev.model_id_of(champion) != gate_json["candidate_id"]
    # The champion checks measure the candidate against the champion's own scores, not its own.
    assert metrics["champion"]["psnr"] != metrics["candidate"]["psnr"]
    checks = {c["name"]: c for c in gate_json["checks"]}
    assert checks["psnr_vs_champion"]["value"] == pytest.approx(metrics["candidate"]["psnr"])
    assert checks["psnr_vs_champion"]["threshold"] == pytest.approx(metrics["champion"]["psnr"] - 100.0)
    assert checks["delta_cf_vs_champion"]["threshold"] == pytest.approx(metrics["champion"]["delta_cf"] + 1000.0)

    table = (reports / "metrics.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| model")]
    assert [r.split("|")[1].strip() for r in rows] == ["gray (ab = 0)", "candidate", "champion"]
    assert f"{summary['candidate']['psnr']:.2f}" in rows[1] and "Note: fid skipped" in table

    gallery = (reports / "gallery.html").read_text()
    assert "<th>gray (ab = 0)</th><th>candidate</th><th>champion</th><th>truth</th>" in gallery
    assert "Chromify: gray (ab = 0) | candidate | champion | truth" in gallery
    assert "worst ΔE2000" in gallery and "best ΔE2000" in gallery
    with open(reports / "eval_per_image.csv") as f:
        per_image = list(csv.DictReader(f))
    assert len(per_image) == 3 * len(PHOTOS)
    assert {r["model"] for r in per_image} == {"gray (ab = 0)", "candidate", "champion"}

    # Without a champion: two rows, and the gate has only the absolute checks.
    _, first = ev.evaluate(data_dir, candidate, None, gate, tmp_path / "first", batch_size=8, gallery_size=2)
    assert first.champion_id is None and len(first.checks) == 2
    first_rows = [line for line in (tmp_path / "first/metrics.md").read_text().splitlines()
                  if line.startswith("| ") and not line.startswith("| model")]
    assert len(first_rows) == 2
    first_gallery = (tmp_path / "first/gallery.html").read_text()
    assert "Chromify: gray (ab = 0) | candidate | truth" in first_gallery and "champion" not in first_gallery


def test_frechet_distance_matches_the_closed_form():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 6))
    b = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6)) * 0.7 + 1.5
    mu1, mu2, s1, s2 = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy_linalg.sqrtm(s1 @ s2).real)
    assert ev.frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert ev.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert ev.frechet_distance(a, a + 2.0) == pytest.approx(4.0 * 6, rel=1e-6)  # a shift moves only the means
    # Fewer images than dimensions (FID's usual case) takes the sample-space route: it agrees with the other.
    few_a, few_b = rng.normal(size=(7, 40)), rng.normal(size=(9, 40)) * 2.0
    ca, cb = few_a - few_a.mean(0), few_b - few_b.mean(0)
    assert ev.trace_sqrt_product_by_samples(ca, cb) == pytest.approx(ev.trace_sqrt_product_by_covariances(ca, cb),
                                                                     rel=1e-6)
    assert ev.frechet_distance(few_a, few_a) == pytest.approx(0.0, abs=1e-6)


def stand_in_lpips_weights(tmp_path, monkeypatch) -> None:
    """Weights made here in the torch hub cache (`no_weights` points TORCH_HOME at it) and an LPIPS file, standing
    in for AlexNet's and LPIPS's, which cannot be downloaded in tests."""
    torch.manual_seed(0)
    checkpoints = tmp_path / "torch-home" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save({f"features.{k}": v for k, v in ev.alexnet_features().state_dict().items()},
               checkpoints / "alexnet-test0000.pth")
    linear = tmp_path / "alex.pth"
    torch.save({f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate((64, 192, 384, 256, 256))},
               linear)
    monkeypatch.setenv(ev.LPIPS_ENV, str(linear))


def test_lpips_is_computed_when_its_weights_are_on_disk(lab_truth, tmp_path, monkeypatch, no_weights):
    """Weights made here stand in for AlexNet's and LPIPS's (the real ones cannot be downloaded in tests)."""
    stand_in_lpips_weights(tmp_path, monkeypatch)

    net, note = ev.load_lpips()
    assert net is not None and note == ""
    truth = ev.score("perfect", lab_truth, lab_truth[..., 1:], "p")
    gray = ev.score("gray (ab = 0)", lab_truth, None, None)
    assert np.allclose(net(truth.images, truth.images), 0.0)
    far = net(gray.images, truth.images)
    assert far.shape == (len(PHOTOS),) and (far > 0).all()

    fid, lpips, notes = ev.perceptual_metrics(truth.images, [gray, truth])
    assert fid is None and [n.split(":")[0] for n in notes] == ["fid skipped"]
    assert lpips == {"gray (ab = 0)": pytest.approx(far.mean()), "perfect": pytest.approx(0.0, abs=1e-9)}
    table = ev.markdown_table([gray, truth], 40.0, {"LPIPS": lpips, "FID": fid}, notes)
    assert table.splitlines()[0].endswith("| ΔCF | LPIPS |") and "FID" not in table.splitlines()[0]


def _numbers(reports):
    metrics = json.loads((reports / "metrics.json").read_text())
    return {k: metrics[k] for k in ("candidate", "gray", "champion", "psnr_gain_db", "lpips", "fid")}


def test_evaluating_in_chunks_changes_no_number_and_holds_one_chunk(data_dir, tmp_path, monkeypatch, no_weights):
    """Chunks of 2 photos against one chunk of all 5: the same metrics, per-image rows, gallery and table; and the
    split is read a chunk (or the gallery's few batches) at a time, never whole."""
    from chromify.loader import ShardSet

    candidate, champion = tiny_model(tmp_path / "candidate", 1), tiny_model(tmp_path / "champion", 2)
    gate = GateParams(min_psnr_gain_db=-100.0, max_delta_cf=1000.0, champion_psnr_tolerance_db=100.0,
                      champion_delta_cf_tolerance=1000.0)
    whole, _ = ev.evaluate(data_dir, candidate, champion, gate, tmp_path / "whole", batch_size=2, gallery_size=3)
    gathered = []
    gather = ShardSet.gather
    monkeypatch.setattr(ShardSet, "gather", lambda self, idx, out=None: gathered.append(len(idx)) or
                        gather(self, idx, out))
    monkeypatch.setattr(ev, "EVAL_CHUNK", 2)
    chunked, _ = ev.evaluate(data_dir, candidate, champion, gate, tmp_path / "chunked", batch_size=2,
                             gallery_size=3)
    assert gathered[:3] == [2, 2, 1] and max(gathered) < len(PHOTOS)
    for model in ("candidate", "gray", "champion"):
        assert set(chunked[model]) == set(ev.GATE_METRICS)
        for k in ev.GATE_METRICS:
            assert chunked[model][k] == pytest.approx(whole[model][k], abs=1e-9, rel=0)
    assert _numbers(tmp_path / "chunked") == _numbers(tmp_path / "whole")
    for name in ("eval_per_image.csv", "gallery.html", "metrics.md"):
        assert (tmp_path / "chunked" / name).read_text() == (tmp_path / "whole" / name).read_text()
    # evaluate.gallery_size 0 (allowed): a gallery with no images, and nothing predicted again for it
    ev.evaluate(data_dir, candidate, None, gate, tmp_path / "none", batch_size=2, gallery_size=0)
    gallery = (tmp_path / "none" / "gallery.html").read_text()
    assert "<th>candidate</th>" in gallery and "data:image/png" not in gallery



def test_evaluate_scores_as_score_does_on_the_whole_split(data_dir, lab_truth, tmp_path, monkeypatch, no_weights):
    """The streamed pass gives the numbers of `score` on the whole split at once (the pre-streaming evaluate)."""
    candidate = tiny_model(tmp_path / "candidate", 1)
    gate = GateParams(min_psnr_gain_db=-100.0, max_delta_cf=1000.0, champion_psnr_tolerance_db=100.0,
                      champion_delta_cf_tolerance=1000.0)
    monkeypatch.setattr(ev, "EVAL_CHUNK", 1)
    summary, _ = ev.evaluate(data_dir, candidate, None, gate, tmp_path / "r", batch_size=1, gallery_size=2)
    data = np.load(data_dir / "test/test-0000.npy")
    want = {"candidate": ev.score("candidate", lab_truth, ev.predict_split(candidate, data, 1), None).summary,
            "gray": ev.score("gray", lab_truth, None, None).summary}
    for model, scores in want.items():
        for k, v in scores.items():
            assert summary[model][k] == pytest.approx(v, abs=1e-9, rel=0), (model, k)


def test_lpips_in_chunks_matches_lpips_on_the_whole_split(data_dir, tmp_path, monkeypatch, no_weights):
    """Per-image distances are kept and averaged at the end; only AlexNet's float32 batches (2 against 5 images)
    differ, which moves the last bits (~1e-10 here), so this compares to 1e-6 rather than exactly."""
    stand_in_lpips_weights(tmp_path, monkeypatch)
    candidate = tiny_model(tmp_path / "candidate", 1)
    gate = GateParams(min_psnr_gain_db=-100.0, max_delta_cf=1000.0, champion_psnr_tolerance_db=100.0,
                      champion_delta_cf_tolerance=1000.0)
    whole, _ = ev.evaluate(data_dir, candidate, None, gate, tmp_path / "whole", batch_size=2, gallery_size=2)
    monkeypatch.setattr(ev, "EVAL_CHUNK", 2)
    chunked, _ = ev.evaluate(data_dir, candidate, None, gate, tmp_path / "chunked", batch_size=2, gallery_size=2)
    assert set(whole["lpips"]) == {"gray (ab = 0)", "candidate"} and whole["lpips"]["gray (ab = 0)"] > 0
    assert chunked["lpips"] == {k: pytest.approx(v, rel=1e-6) for k, v in whole["lpips"].items()}
    assert chunked["notes"] == whole["notes"] and [n.split(":")[0] for n in whole["notes"]] == ["fid skipped"]
