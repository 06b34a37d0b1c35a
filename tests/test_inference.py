"""chromify.inference: the full-resolution merge against the reference path (torch + chromify.lab), real photos."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import data

from chromify.inference import Colorizer, bilinear_taps, fuse_conv_bn, merge_full_resolution
from chromify.lab import lab_to_rgb, rgb_to_lab

MODEL = {"arch": "unet_s", "base_width": 8, "depth": 3, "norm": "batch", "upsample": "bilinear", "pretrained": False}


def export_tiny_model(out: Path, seed: int = 0, diverged: bool = False) -> Path:
    """An untrained 3-level U-Net exported exactly as the trainer does (its BatchNorm given non-trivial stats);
    `diverged`: every weight NaN, as a training that blew up exports them."""
    from chromify.models import get_model
    from chromify.train.checkpoint import export_model

    torch.manual_seed(seed)
    model = get_model("unet_s", **MODEL)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    if diverged:
        with torch.no_grad():
            for param in model.parameters():
                param.fill_(float("nan"))
    export_model(out, model, {"format": "chromify-model-v1", "arch": "unet_s", "model": MODEL, "size": 64})
    return out


@pytest.fixture(scope="module")
def colorizer(tmp_path_factory) -> Colorizer:
    return Colorizer(export_tiny_model(tmp_path_factory.mktemp("model") / "tiny"), device="cpu")


def reference_merge(rgb: np.ndarray, ab_small: np.ndarray) -> np.ndarray:
    """The obvious full-size path: F.interpolate the ab, chromify.lab both ways."""
    ab = F.interpolate(torch.from_numpy(ab_small)[None], size=rgb.shape[:2], mode="bilinear", align_corners=False)
    lab = rgb_to_lab(rgb)
    lab[..., 1:] = ab[0].permute(1, 2, 0).numpy()
    return (lab_to_rgb(lab) * 255.0 + 0.5).astype(np.uint8)


@pytest.mark.parametrize(("src", "dst"), [(8, 64), (64, 8), (7, 7), (1, 5), (5, 1), (256, 3000)])
def test_bilinear_taps_match_torch(src: int, dst: int) -> None:
    x = torch.randn(1, 1, 1, src, dtype=torch.float64)
    i0, i1, w1 = bilinear_taps(src, dst)
    ours = x[0, 0, 0].numpy()[i0] * (1 - w1) + x[0, 0, 0].numpy()[i1] * w1
    theirs = F.interpolate(x, size=(1, dst), mode="bilinear", align_corners=False)[0, 0, 0].numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


@pytest.mark.parametrize("photo", ["astronaut", "chelsea", "coffee"])
def test_merge_matches_reference_within_one_level(photo: str) -> None:
    rgb = getattr(data, photo)()
    ab_small = np.random.default_rng(0).uniform(-110, 110, (2, 24, 40)).astype(np.float32)
    ours = merge_full_resolution(rgb, ab_small, strip_rows=37, workers=2)
    diff = np.abs(ours.astype(int) - reference_merge(rgb, ab_small))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_strips_and_workers_do_not_change_the_result() -> None:
    rgb = data.astronaut()
    ab_small = np.random.default_rng(1).uniform(-60, 60, (2, 32, 32)).astype(np.float32)
    whole = merge_full_resolution(rgb, ab_small, strip_rows=10_000)
    np.testing.assert_array_equal(merge_full_resolution(rgb, ab_small, strip_rows=1, workers=1), whole)
    np.testing.assert_array_equal(merge_full_resolution(rgb, ab_small, strip_rows=100, workers=3), whole)


def test_merge_keeps_the_original_lightness() -> None:
    """Detail comes from the full-resolution L: zero ab gives back the gray photo, any ab keeps its L."""
    gray = np.repeat(data.camera()[..., None], 3, axis=2)
    np.testing.assert_array_less(np.abs(merge_full_resolution(gray, np.zeros((2, 8, 8), np.float32)).astype(int)
                                        - gray), 2)
    coloured = merge_full_resolution(gray, np.full((2, 8, 8), 20.0, np.float32))
    lum_in, lum_out = rgb_to_lab(gray)[..., 0], rgb_to_lab(coloured)[..., 0]
    in_gamut = (lum_in > 10) & (lum_in < 90)  # clipping to sRGB may move L at the extremes
    assert np.abs(lum_in - lum_out)[in_gamut].mean() < 0.5


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_merge_refuses_non_finite_colours_by_name(bad: float) -> None:
    gray = np.full((40, 30, 3), 128, np.uint8)
    ab = np.zeros((2, 8, 8), np.float32)
    ab[1, 3, 4] = bad
    with pytest.raises(ValueError, match="ab_small holds non-finite values"):
        merge_full_resolution(gray, ab)


def test_fused_model_gives_the_same_output(colorizer: Colorizer) -> None:
    from chromify.train.checkpoint import load_model

    plain, _ = load_model(colorizer.model_dir)
    lum = torch.rand(2, 1, 64, 96)
    with torch.no_grad():
        np.testing.assert_allclose(plain(lum).numpy() * 128, colorizer.predict_ab(lum).numpy(), atol=1e-2)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fuse_conv_bn(plain).modules())


@pytest.mark.parametrize(("size", "expected"), [((640, 480), (88, 64)), ((480, 640), (64, 88)), ((64, 64), (64, 64)),
                                                ((3, 2), (96, 64)), ((10_000, 100), (256, 8))])
def test_render_shape(colorizer: Colorizer, size: tuple[int, int], expected: tuple[int, int]) -> None:
    """Short side to the render size, multiples of 2^depth, a panorama's long side capped at 4× the render size."""
    assert colorizer.render_shape(*size) == expected


@pytest.mark.parametrize("shape", [(1, 1), (37, 53), (480, 64), (301, 299)])
def test_output_is_the_input_size(colorizer: Colorizer, shape: tuple[int, int]) -> None:
    rgb = np.random.default_rng(2).integers(0, 256, (*shape, 3), dtype=np.uint8)
    assert colorizer.colorize_rgb(rgb).shape == (*shape, 3)


def test_batch_equals_one_by_one(colorizer: Colorizer) -> None:
    photos = [data.astronaut(), data.coffee(), data.astronaut()[::-1].copy(), data.chelsea()]
    batched = colorizer.colorize_batch(photos)
    for photo, out in zip(photos, batched, strict=True):
        assert np.abs(out.astype(int) - colorizer.colorize_rgb(photo)).max() <= 1


def test_input_colour_is_ignored(colorizer: Colorizer) -> None:
    rgb = data.astronaut()
    gray = np.repeat(rgb_to_lab(rgb)[..., :1], 3, axis=2)
    gray[..., 1:] = 0
    gray_rgb = (lab_to_rgb(gray) * 255 + 0.5).astype(np.uint8)
    assert np.abs(colorizer.colorize_rgb(rgb).astype(int) - colorizer.colorize_rgb(gray_rgb)).mean() < 1.0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"prior_correction": float("nan")}, "prior correction must be a finite number, got nan"),
    ({"temperature": float("inf")}, "temperature must be a finite positive number, got inf"),
    ({"chroma_gain": 0.0}, "chroma gain must be a finite positive number, got 0.0"),
    ({"render_size": 100_000}, "render size 100000 is above 1024"),
])
def test_decode_and_render_values_are_checked_before_the_model_loads(kwargs: dict, message: str,
                                                                    tmp_path: Path) -> None:
    from chromify.errors import ConfigError

    # no model at tmp_path: the value is refused first, so a bad option costs nothing (and no 20 GB render)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        Colorizer(tmp_path / "no-model", **kwargs)


def test_decode_overrides_reach_the_prediction(tmp_path: Path) -> None:
    """`chromify colorize --chroma-gain/--temperature/--prior-correction` and the API's overrides act: a gain of 2
    doubles the ab (up to the clamp), a lower temperature is bolder, a prior correction changes the colours."""
    from chromify.models import get_model
    from chromify.train.checkpoint import export_model

    torch.manual_seed(1)
    model = get_model("unet_s", base_width=4, depth=2, head="bins", temperature=1.0)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)  # more confident logits than at initialisation, so the decodes differ clearly
        model.log_prior.copy_(torch.randn(len(model.bins)).log_softmax(0))  # a training set's colour prior
    mp = {"arch": "unet_s", "base_width": 4, "depth": 2, "head": "bins", "temperature": 1.0}
    out = tmp_path / "bins"
    export_model(out, model, {"arch": "unet_s", "model": mp, "size": 32})
    lum = torch.from_numpy(rgb_to_lab(data.astronaut()[::16, ::16])[..., 0][None, None] / 100.0).float()

    def ab(**kw) -> torch.Tensor:
        return Colorizer(out, device="cpu", **kw).predict_ab(lum)

    plain = ab()
    assert plain.abs().mean() > 1.0
    torch.testing.assert_close(ab(chroma_gain=2.0), (plain * 2.0).clamp(-128, 128), atol=1e-3, rtol=1e-4)
    assert ab(temperature=0.2).abs().mean() > 1.2 * plain.abs().mean()
    assert (ab(prior_correction=0.8) - plain).abs().mean() > 0.5


def test_a_diverged_model_is_refused_with_one_line_not_an_index_error(tmp_path: Path) -> None:
    """NaN colours must neither crash the merge's table lookups nor come out as pictures."""
    from chromify.colorize import colorize_paths
    from chromify.errors import ModelLoadError

    model = export_tiny_model(tmp_path / "diverged", diverged=True)
    photo = tmp_path / "chelsea.png"
    Image.fromarray(data.chelsea()).save(photo)
    refusal = f"{model}: the model produced non-finite colours"
    with pytest.raises(ModelLoadError, match=refusal) as err:
        colorize_paths([str(photo)], tmp_path / "out", model, device="cpu")  # `chromify colorize`
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    with pytest.raises(ModelLoadError, match=refusal):
        Colorizer(model, device="cpu").colorize_rgb(data.chelsea())  # `chromify serve`, per upload


@pytest.mark.parametrize(("edit", "said"), [
    (lambda c: [], "config.json is not an object with a 'model' object"),
    (lambda c: {**c, "model": [1]}, "config.json is not an object with a 'model' object"),
    (lambda c: {k: v for k, v in c.items() if k != "size"}, "config.json: 'size' None is not a positive whole number"),
    (lambda c: {**c, "size": "abc"}, "config.json: 'size' 'abc' is not a positive whole number"),
    (lambda c: {**c, "model": {**c["model"], "depth": "x"}}, "config.json: model.depth 'x' is not a whole number"),
    (lambda c: {**c, "model": {**c["model"], "chroma_gain": "x"}},
     "config.json: model.chroma_gain 'x' is not a finite number"),
])
def test_an_edited_config_json_is_one_line_in_every_reader(tiny_model_dir: Path, tmp_path: Path, edit, said) -> None:
    """An edited or foreign config.json was an AttributeError, KeyError, ValueError or TypeError traceback in
    colorize, serve and evaluate, which all load through load_model and Colorizer."""
    import json
    import shutil

    from chromify.errors import ModelLoadError

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(edit(config)))
    with pytest.raises(ModelLoadError, match=f"^{re.escape(f'{model}: cannot load model ({said})')}$"):
        Colorizer(model, device="cpu")
