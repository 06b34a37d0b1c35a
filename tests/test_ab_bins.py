"""chromify.ab_bins and the bins head: the bin set, soft encoding round trips, annealed mean, rebalancing."""

from __future__ import annotations

import math
from dataclasses import asdict

import numpy as np
import pytest
import torch
from skimage import data

from chromify import ab_bins, lab
from chromify.config import ModelParams, TrainParams
from chromify.errors import ConfigError
from chromify.inference import Colorizer
from chromify.models import get_model, list_models
from chromify.train import losses
from chromify.train.checkpoint import export_model, load_model

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "colorwheel")


def photo_ab(name: str) -> torch.Tensor:
    """A real photo's ab in ab units, (1, 2, H, W)."""
    rgb = getattr(data, name)()[..., :3][::4, ::4]
    return torch.from_numpy(lab.rgb_to_lab(rgb)[..., 1:]).permute(2, 0, 1)[None].float()


def test_bins_cover_the_srgb_gamut_and_nothing_far_outside() -> None:
    centres = ab_bins.bin_centres(10)
    assert 280 < len(centres) < 330  # Zhang et al. keep 313 at this spacing
    assert (centres % 10 == 0).all()
    # Every 8-bit colour (every 5th level) lies within half a cell diagonal of some centre ...
    levels = np.arange(0, 256, 5, dtype=np.uint8)
    rgb = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 3)
    ab = lab.rgb_to_lab(rgb)[:, 1:]
    nearest = np.sqrt(((ab[:, None] - centres[None]) ** 2).sum(-1)).min(1)
    assert nearest.max() <= 5 * math.sqrt(2) + 1e-3
    # ... and no centre sits in a corner of the plane no sRGB colour reaches.
    assert not any((c == [-110, -110]).all() or (c == [110, 110]).all() for c in centres)


@pytest.mark.parametrize("name", PHOTOS)
def test_soft_encoding_round_trips_and_the_nearest_bin_is_within_the_bin_size(name: str) -> None:
    bins = ab_bins.ABBins(10)
    ab = photo_ab(name)
    index, weight = bins.soft_encode(ab)
    assert index.shape == weight.shape == (1, 4, *ab.shape[-2:])
    torch.testing.assert_close(weight.sum(1), torch.ones_like(weight[:, 0]))
    # Decoding the soft target as a distribution (its mean) gives the truth back ...
    centres = bins.centres[index]  # (1, 4, H, W, 2)
    decoded = (weight[..., None] * centres).sum(1).permute(0, 3, 1, 2)
    assert (decoded - ab).abs().max() < 0.01
    # ... and the hard label's centre is never further than half the cell's diagonal.
    hard = bins.centres[bins.nearest(ab)].permute(0, 3, 1, 2)
    assert (hard - ab).norm(dim=1).max() <= 10 / math.sqrt(2) + 1e-4


def test_annealed_mean_is_the_mean_at_t1_and_moves_to_the_mode_as_t_falls() -> None:
    bins = ab_bins.ABBins(10)
    q = len(bins)
    red = int(np.argmin(np.abs(bins.centres.numpy() - [60, 40]).sum(1)))
    blue = int(np.argmin(np.abs(bins.centres.numpy() - [10, -60]).sum(1)))
    probs = torch.full((q,), 1e-6)
    probs[red], probs[blue] = 0.6, 0.4  # a red-or-blue object: the mean is a dull purple
    logits = probs.log()[None, :, None, None]
    mean = bins.decode(logits, 1.0)[0, :, 0, 0]
    torch.testing.assert_close(mean, (probs[:, None] * bins.centres).sum(0) / probs.sum(), atol=0.05, rtol=0)
    chroma = [bins.decode(logits, t)[0, :, 0, 0].norm().item() for t in (1.0, 0.38, 0.1)]
    assert chroma[0] < chroma[1] < chroma[2]
    torch.testing.assert_close(bins.decode(logits, 0.01)[0, :, 0, 0], bins.centres[red], atol=0.01, rtol=0)


def test_rebalancing_weights_favour_rare_colours_and_average_to_one() -> None:
    hist = ab_bins.bin_histogram(photo_ab("coffee").numpy())
    assert hist.sum() == photo_ab("coffee")[0, 0].numel()
    w = ab_bins.rebalance_weights(hist, lam=0.5)
    p = hist / hist.sum()
    smoothed_p = np.exp(-((ab_bins.bin_centres()[:, None] - ab_bins.bin_centres()[None]) ** 2).sum(-1) / 50) @ p
    assert w[np.argmax(smoothed_p)] == w.min() and w[np.argmin(smoothed_p)] == w.max()
    assert w.max() / w.min() > 1.8
    # Expected weight under the smoothed distribution is 1, so the loss keeps its scale.
    assert float((w * smoothed_p / smoothed_p.sum()).sum()) == pytest.approx(1.0, rel=1e-4)
    np.testing.assert_allclose(ab_bins.rebalance_weights(hist, lam=1.0), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="λ"):
        ab_bins.rebalance_weights(hist, lam=1.5)


def test_soft_cross_entropy_is_smallest_at_the_target_and_its_gradient_flows() -> None:
    bins = ab_bins.ABBins(10)
    ab = photo_ab("astronaut")[..., :16, :16]
    index, weight = bins.soft_encode(ab)
    target = torch.zeros(1, len(bins), 16, 16).scatter_add_(1, index, weight)
    at_target = ab_bins.soft_cross_entropy(target.clamp_min(1e-9).log(), index, weight)
    uniform = ab_bins.soft_cross_entropy(torch.zeros_like(target), index, weight)
    entropy = -(target * target.clamp_min(1e-9).log()).sum(1).mean()
    assert at_target.item() == pytest.approx(entropy.item(), abs=1e-4)  # cross-entropy = entropy at the target
    assert uniform.item() == pytest.approx(math.log(len(bins)), rel=1e-5)
    logits = torch.zeros_like(target, requires_grad=True)
    rarity = torch.rand(1, 16, 16) + 0.5
    ab_bins.soft_cross_entropy(logits, index, weight, rarity).backward()
    # Descending the gradient raises the target bins' logits.
    assert (logits.grad.gather(1, index) * weight).sum() < 0


def test_bins_term_in_the_generator_loss_passes_gradient_to_the_logits() -> None:
    model = get_model("unet_s", base_width=4, depth=2, head="bins")
    rgb = data.astronaut()[::16, ::16][:32, :32]
    lab_img = torch.from_numpy(lab.rgb_to_lab(rgb)).permute(2, 0, 1)[None].float()
    lum, ab = lab_img[:, :1] / 100.0, lab_img[:, 1:] / 128.0
    weights = torch.ones(len(model.bins))
    criterion = losses.GeneratorLoss(TrainParams(regression_weight=0.0), model.bins, weights)
    pred, logits = model(lum, with_logits=True)
    terms = criterion(lum, pred, ab, None, logits)
    assert set(terms) == {"bins", "total"}
    assert terms["total"].item() == pytest.approx(terms["bins"].item()) and terms["bins"].item() > 0
    terms["total"].backward()
    assert model.net.head.weight.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="regression_weight"):
        losses.GeneratorLoss(TrainParams(regression_weight=0.0))


def test_the_rebalancing_weight_is_that_of_each_pixels_colour() -> None:
    """Zhang's rebalancing weighs a pixel by its colour's rarity: a target of one saturated colour whose bin weighs
    10 makes the term 10 × the unweighted one, and a gray target, whose bin weighs 1, leaves it as it was."""
    model = get_model("unet_s", base_width=4, depth=2, head="bins")
    lum = torch.rand(1, 1, 16, 16)
    _, logits = model(lum, with_logits=True)
    vivid = torch.tensor([60.0, 40.0])[None, :, None, None].expand(1, 2, 16, 16) / 128.0
    gray = torch.zeros(1, 2, 16, 16)
    weights = torch.ones(len(model.bins))
    weights[model.bins.nearest(torch.tensor([60.0, 40.0])[None, :, None, None])[0, 0, 0]] = 10.0
    p = TrainParams(regression_weight=0.0)
    plain, weighted = losses.GeneratorLoss(p, model.bins), losses.GeneratorLoss(p, model.bins, weights)
    with torch.no_grad():
        assert weighted(lum, vivid, vivid, None, logits)["bins"].item() == pytest.approx(
            10.0 * plain(lum, vivid, vivid, None, logits)["bins"].item(), rel=1e-5)
        assert weighted(lum, gray, gray, None, logits)["bins"].item() == pytest.approx(
            plain(lum, gray, gray, None, logits)["bins"].item(), rel=1e-5)


@pytest.mark.parametrize("arch", list_models())
def test_every_arch_takes_the_bins_head_and_keeps_the_model_contract(arch: str) -> None:
    model = get_model(arch, base_width=8, depth=3, head="bins", temperature=0.5)
    lum = torch.rand(2, 1, 32, 32)
    ab, logits = model(lum, with_logits=True)
    assert ab.shape == (2, 2, 32, 32) and logits.shape == (2, len(model.bins), 32, 32)
    assert ab.abs().max() < 1.0 and model.multiple == 8
    torch.testing.assert_close(model(lum), ab)


def test_a_bins_model_exports_and_loads_with_its_temperature(tmp_path) -> None:
    mp = ModelParams(base_width=4, depth=2, head="bins", temperature=0.25, bin_stride=2)
    torch.manual_seed(0)
    model = get_model(mp.arch, **asdict(mp)).eval()
    model.start_at_prior(ab_bins.bin_histogram(photo_ab("coffee").numpy()))
    export_model(tmp_path, model, {"arch": mp.arch, "model": asdict(mp), "size": 32})
    loaded, config = load_model(tmp_path)
    assert loaded.temperature == 0.25 and config["model"]["head"] == "bins"
    lum = torch.rand(1, 1, 32, 32)
    torch.testing.assert_close(loaded(lum), model(lum))
    # The colorizer can be made bolder or safer than the model's own temperature, and says so for other models.
    photo = data.chelsea()[:64, :64]

    def chroma(**decode) -> float:
        out = Colorizer(tmp_path, device="cpu", **decode).colorize_rgb(photo)
        return float(np.hypot(*lab.rgb_to_lab(out)[..., 1:].transpose(2, 0, 1)).mean())

    assert chroma(temperature=0.1) > chroma(temperature=1.0) + 1.0
    assert abs(chroma(temperature=1.0, prior_correction=1.0) - chroma(temperature=1.0)) > 1.0
    regression_dir = tmp_path / "regression"
    small = {"base_width": 4, "depth": 2}
    export_model(regression_dir, get_model("unet_s", **small), {"arch": "unet_s", "model": small, "size": 32})
    with pytest.raises(ConfigError, match="bins head"):
        Colorizer(regression_dir, device="cpu", temperature=0.5)


def test_prior_correction_divides_the_training_prior_out_of_the_decode() -> None:
    model = get_model("unet_s", base_width=4, depth=2, head="bins", bin_stride=2, temperature=1.0).eval()
    hist = ab_bins.bin_histogram(photo_ab("coffee").numpy())
    model.start_at_prior(hist)
    with torch.no_grad():
        model.net.head[-1].weight.zero_()  # logits = the bias = log p̃: the model predicts the prior everywhere
        lum = torch.rand(1, 1, 16, 16)
        prior = torch.from_numpy(ab_bins.smoothed_distribution(hist)).double()
        as_prior = model(lum)[0, :, 0, 0] * 128
        model.prior_correction = 1.0  # p / p̃: nothing left but a uniform distribution over the bins
        flat = model(lum)[0, :, 0, 0] * 128
    centres = model.bins.centres.double()
    torch.testing.assert_close(as_prior.double(), (prior[:, None] * centres).sum(0) / prior.sum(), atol=0.05, rtol=0)
    torch.testing.assert_close(flat.double(), centres.mean(0), atol=0.05, rtol=0)


def test_bad_head_grid_or_temperature_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="head"):
        get_model("unet_s", head="mixture")
    with pytest.raises(ConfigError, match="grid"):
        get_model("unet_s", head="bins", bin_grid=7)
    with pytest.raises(ConfigError, match="temperature"):
        get_model("unet_s", head="bins", temperature=0.0)
