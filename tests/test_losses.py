"""chromify.train.losses on hand-made cases and a real photo: values, gradients, and the optional terms' switches."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage import data

from chromify import lab
from chromify.config import TrainParams
from chromify.errors import ConfigError
from chromify.train import losses


def photo_lab(size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """The astronaut as model tensors: L/100 (1, 1, S, S) and ab/128 (1, 2, S, S)."""
    rgb = data.astronaut()[::16, ::16][:size, :size]
    lab_img = torch.from_numpy(lab.rgb_to_lab(rgb)).permute(2, 0, 1)[None].float()
    return lab_img[:, :1] / 100.0, lab_img[:, 1:] / 128.0


def vgg_cache(root, monkeypatch) -> None:
    """A vgg16-*.pth with random weights in a temp TORCH_HOME: the perceptual term's loading path, offline."""
    monkeypatch.setenv("TORCH_HOME", str(root))
    folder = root / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(losses.VGGFeatures().state_dict(), folder / "vgg16-00000000.pth")


def test_regression_values_on_hand_made_cases() -> None:
    target = torch.zeros(1, 2, 4, 4)
    assert losses.regression_loss(target, target) == 0.0
    assert losses.regression_loss(target + 0.1, target).item() == pytest.approx(0.1)
    beta = losses.HUBER_BETA
    # Huber: quadratic (e²/2β) below β, linear (|e| − β/2) above it.
    assert losses.regression_loss(target + 0.01, target, "huber").item() == pytest.approx(0.01**2 / (2 * beta))
    assert losses.regression_loss(target - 0.5, target, "huber").item() == pytest.approx(0.5 - beta / 2)
    # L2: the mean squared error.
    assert losses.regression_loss(target + 0.1, target, "l2").item() == pytest.approx(0.01)
    with pytest.raises(ConfigError, match="expected l1, huber or l2"):
        losses.regression_loss(target, target, "cross-entropy")


def test_colourfulness_is_larger_for_a_saturated_image_than_a_gray_one() -> None:
    _, ab = photo_lab()
    gray = torch.zeros_like(ab)
    assert losses.colourfulness(gray).item() == pytest.approx(0.0, abs=1e-3)
    assert losses.colourfulness(ab).item() > 0.1
    assert losses.colourfulness(2 * ab).item() > losses.colourfulness(ab).item()
    uniform = torch.tensor([0.3, -0.4]).view(1, 2, 1, 1).expand(1, 2, 8, 8)
    assert losses.colourfulness(uniform).item() == pytest.approx(0.5, abs=1e-4)  # √(0.3² + 0.4²)


def test_colourfulness_loss_pushes_a_dull_prediction_towards_the_truths_chroma() -> None:
    _, ab = photo_lab()
    dull = (0.3 * ab).requires_grad_()
    assert losses.colourfulness_loss(ab, ab).item() == pytest.approx(0.0, abs=1e-6)
    loss = losses.colourfulness_loss(dull, ab)
    loss.backward()
    stepped = dull.detach() - 10.0 * dull.grad
    assert losses.colourfulness(stepped).item() > losses.colourfulness(dull.detach()).item()
    # Per image: a vivid image does not excuse a dull one next to it.
    pair_pred = torch.cat([2 * ab, 0 * ab])
    assert losses.colourfulness_loss(pair_pred, torch.cat([ab, ab])).item() > 0.5 * losses.colourfulness(ab).item()


def test_differentiable_lab_to_rgb_agrees_with_chromify_lab() -> None:
    rgb = data.coffee()[::20, ::20]
    lab_img = lab.rgb_to_lab(rgb)
    lum = torch.from_numpy(lab_img[..., 0] / 100.0)[None, None].float()
    ab = torch.from_numpy(lab_img[..., 1:] / 128.0).permute(2, 0, 1)[None].float()
    ours = losses.lab_to_rgb(lum, ab)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(ours, lab.lab_to_rgb(lab_img), atol=3e-3)


def test_perceptual_term_is_off_with_a_one_line_note_when_vgg_weights_are_missing(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    criterion = losses.GeneratorLoss(TrainParams(perceptual_weight=1.0, regression_weight=1.0))
    err = capfd.readouterr().err.strip().splitlines()
    assert criterion.vgg is None and len(err) == 1 and "vgg16-*.pth" in err[0]
    lum, ab = photo_lab()
    assert set(criterion(lum, ab, ab)) == {"regression", "total"}


def test_perceptual_loss_is_zero_on_the_truth_and_loads_vgg_from_the_local_cache(tmp_path, monkeypatch) -> None:
    vgg_cache(tmp_path, monkeypatch)
    vgg = losses.load_vgg_features()
    assert vgg is not None
    lum, ab = photo_lab()
    assert losses.perceptual_loss(vgg, lum, ab, ab).item() == pytest.approx(0.0, abs=1e-6)
    assert losses.perceptual_loss(vgg, lum, torch.zeros_like(ab), ab).item() > 0.0


def test_blind_discriminator_gives_log_2_on_both_sides() -> None:
    class Blind(torch.nn.Module):
        def forward(self, lum: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
            return torch.zeros(lum.shape[0], 1, 2, 2)

    lum, ab = photo_lab()
    assert losses.discriminator_loss(Blind(), lum, ab, ab).item() == pytest.approx(math.log(2))
    assert losses.generator_adversarial_loss(Blind(), lum, ab).item() == pytest.approx(math.log(2))


class Sure(torch.nn.Module):
    """A discriminator that knows: logit +5 for the real ab it is given, −5 for anything else."""

    def __init__(self, real_ab: torch.Tensor):
        super().__init__()
        self.real_ab = real_ab

    def forward(self, lum: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
        real = torch.tensor([float(torch.equal(a, self.real_ab[0])) for a in ab])
        return (10.0 * real - 5.0)[:, None, None, None].expand(-1, 1, 2, 2)


def test_a_discriminator_that_is_right_has_a_small_loss_and_the_generator_a_large_one() -> None:
    """The labels: real is 1 and fake 0 for D; G wants D to say 1 (swapping either trains the GAN backwards)."""
    lum, ab = photo_lab()
    fake = torch.zeros_like(ab)
    sure = Sure(ab)
    assert losses.discriminator_loss(sure, lum, ab, fake).item() == pytest.approx(math.log1p(math.exp(-5.0)), rel=1e-5)
    assert losses.generator_adversarial_loss(sure, lum, fake).item() == pytest.approx(math.log1p(math.exp(5.0)),
                                                                                     rel=1e-5)
    assert losses.generator_adversarial_loss(sure, lum, ab).item() < 0.01  # fooled: nothing left to gain


def test_patch_discriminator_scores_70px_patches() -> None:
    assert losses.PatchDiscriminator(width=8)(torch.rand(2, 1, 64, 64), torch.rand(2, 2, 64, 64)).shape == (2, 1, 6, 6)


def test_min_gan_side_is_the_patchgans_smallest_input() -> None:
    # training checks its side against MIN_GAN_SIDE before the first step: it must be the real boundary
    side = losses.MIN_GAN_SIDE
    disc = losses.PatchDiscriminator(width=8)
    assert disc(torch.rand(2, 1, side, side), torch.rand(2, 2, side, side)).shape == (2, 1, 1, 1)
    with pytest.raises(ValueError, match="more than 1 spatial element"):
        disc(torch.rand(2, 1, side - 8, side - 8), torch.rand(2, 2, side - 8, side - 8))


def test_the_discriminator_sees_l_on_the_same_centred_scale_as_ab() -> None:
    # L comes in as L/100 in [0, 1] and ab as ab/128 in (-1, 1): uncentred, black and white would sit on one side
    # of zero only, and the first layer's init would see a brightness offset it never sees in ab.
    disc = losses.PatchDiscriminator(width=8)
    seen: list[torch.Tensor] = []
    disc.net[0].register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    lum = torch.linspace(0, 1, 64).expand(1, 1, 64, 64)  # black to white across the image
    ab = torch.full((1, 2, 64, 64), 0.25)
    disc(lum, ab)
    first = seen[0]
    assert first.shape == (1, 3, 64, 64)
    assert (first[0, 0].min().item(), first[0, 0].max().item()) == pytest.approx((-1.0, 1.0))
    assert first[0, 0].mean().item() == pytest.approx(0.0, abs=1e-6)
    assert torch.equal(first[:, 1:], ab)  # ab unchanged


@pytest.mark.parametrize("term", ["l1", "huber", "colourfulness", "perceptual", "adversarial"])
def test_every_term_passes_gradient_to_the_prediction(term: str, tmp_path, monkeypatch) -> None:
    if term == "perceptual":
        vgg_cache(tmp_path, monkeypatch)
    p = TrainParams(loss="huber" if term == "huber" else "l1", regression_weight=1.0,
                    colourfulness_weight=float(term == "colourfulness"),
                    perceptual_weight=float(term == "perceptual"), gan_weight=float(term == "adversarial"))
    criterion = losses.GeneratorLoss(p)
    disc = losses.PatchDiscriminator(width=8).requires_grad_(False) if term == "adversarial" else None
    lum, ab = photo_lab()
    pred = (0.5 * ab).requires_grad_()
    terms = criterion(lum, pred, ab, disc)
    name = {"l1": "regression", "huber": "regression"}.get(term, term)
    weights = {"regression": 1.0, name: 1.0}
    assert terms["total"].item() == pytest.approx(sum(weights[k] * terms[k].item() for k in weights))
    (grad,) = torch.autograd.grad(terms[name], pred)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_discriminator_step_trains_d_and_leaves_the_generator_alone() -> None:
    disc = losses.PatchDiscriminator(width=8)
    lum, ab = photo_lab()
    fake = (0.5 * ab).requires_grad_()
    losses.discriminator_loss(disc, lum, ab, fake).backward()
    assert fake.grad is None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in disc.parameters())
