"""chromify.models: every registered architecture trains a step; pretrained weights come only from the local cache."""

from __future__ import annotations

import pytest
import torch

from chromify.errors import ConfigError
from chromify.models import get_model, list_models, register_model

SMALL = {"base_width": 8, "depth": 3}  # every family takes these; 32 px divides by 2^3


@pytest.mark.parametrize("arch", list_models())
def test_every_model_runs_forward_and_backward(arch: str) -> None:
    torch.manual_seed(0)
    model = get_model(arch, **SMALL).to(memory_format=torch.channels_last)
    lum = torch.rand(2, 1, 32, 32).contiguous(memory_format=torch.channels_last)
    ab = model(lum)
    assert ab.shape == (2, 2, 32, 32)
    assert ab.abs().max() < 1.0  # tanh: a and b stay within ±128
    assert model.multiple == 8
    (ab - 0.3).abs().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{arch}: no usable gradient for {name}"


@pytest.mark.parametrize("arch", ["unet_s", "encdec_s"])
@pytest.mark.parametrize("norm,upsample", [("group", "transposed"), ("none", "bilinear")])
def test_unet_options_build_and_keep_shapes(arch: str, norm: str, upsample: str) -> None:
    model = get_model(arch, base_width=4, depth=2, norm=norm, upsample=upsample)
    assert model(torch.rand(1, 1, 16, 24)).shape == (1, 2, 16, 24)


def test_sizes_that_do_not_divide_are_refused_not_padded() -> None:
    model = get_model("unet_s", **SMALL)
    with pytest.raises(AssertionError, match="divide by 8"):
        model(torch.rand(1, 1, 36, 32))


def test_bad_names_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unet_s"):
        get_model("unet_xl")
    with pytest.raises(ConfigError, match="norm"):
        get_model("unet_s", norm="layer")
    with pytest.raises(ConfigError, match="depth"):
        get_model("resnet18_unet", depth=6)
    with pytest.raises(ValueError, match="already registered"):
        register_model("unet_s")(lambda **_: None)


def test_resnet18_unet_takes_imagenet_weights_only_from_the_local_hub_cache(tmp_path, monkeypatch, capfd) -> None:
    from torchvision.models import resnet18

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_download(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)

    get_model("resnet18_unet", pretrained=True)  # no file: random init and a note, no download
    assert "no resnet18-*.pth" in capfd.readouterr().err

    torch.manual_seed(1)
    reference = resnet18(weights=None)
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(reference.state_dict(), folder / "resnet18-0123abcd.pth")  # torchvision's file naming

    loaded = get_model("resnet18_unet", depth=5, pretrained=True)
    torch.testing.assert_close(loaded.encoder[4][1].conv2.weight, reference.layer4[1].conv2.weight)
    torch.testing.assert_close(loaded.encoder[0][1].running_var, reference.bn1.running_var)
    # RGB weights summed into the one L input channel: a gray image gives the same response.
    torch.testing.assert_close(loaded.encoder[0][0].weight, reference.conv1.weight.sum(1, keepdim=True))
    fresh = get_model("resnet18_unet", depth=5, pretrained=False)
    assert not torch.equal(fresh.encoder[4][1].conv2.weight, reference.layer4[1].conv2.weight)


@pytest.mark.parametrize("arch", ["unet_s", "unet_b"])
def test_the_unet_decoder_sees_the_encoders_features_at_each_level(arch: str) -> None:
    """The skips are what make it a U-Net: each decoder block's input ends with the encoder's output at its
    resolution (without them the shapes would not change, and colour would bleed across edges)."""
    model = get_model(arch, base_width=4, depth=3).eval()
    seen: dict[str, torch.Tensor] = {}
    for name, module in [("stem", model.stem), *((f"down{i}", d) for i, d in enumerate(model.downs))]:
        module.register_forward_hook(lambda m, i, out, name=name: seen.__setitem__(name, out))
    for k, dec in enumerate(model.decs):
        dec.register_forward_pre_hook(lambda m, args, k=k: seen.__setitem__(f"dec{k}", args[0]))
    with torch.no_grad():
        model(torch.rand(1, 1, 32, 32))
    encoder = ["down1", "down0", "stem"]  # the decoder goes back up: H/4, H/2, H
    for k, name in enumerate(encoder):
        width = seen[name].shape[1]
        torch.testing.assert_close(seen[f"dec{k}"][:, width:], seen[name], rtol=0, atol=0)
