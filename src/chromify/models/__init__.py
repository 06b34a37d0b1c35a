"""A tiny registry of colorization architectures: L (B, 1, H, W) in [0, 1] → ab/128 (B, 2, H, W) in (-1, 1).

Every model ends in tanh, so predicted a and b stay within ±128 whatever the input (the 8-bit shards store
ab + 128 in [0, 255], so the target lies in [-1, 1) too). Every model has a `multiple` attribute: H and W must
divide by it (2^depth); models assert this rather than pad silently.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chromify.errors import ConfigError

_REGISTRY: dict[str, Callable[..., Any]] = {}


def register_model(name: str):
    def add(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return add


def list_models() -> list[str]:
    return sorted(_REGISTRY)


HEADS = ("regression", "bins")


def get_model(name: str, head: str = "regression", bin_grid: int = 10, temperature: float = 0.38, bin_stride: int = 1,
              prior_correction: float = 0.0, **kwargs: Any):
    """Build a registered architecture; keyword arguments override its defaults (unknown ones are ignored).

    `head="bins"` makes it predict a distribution over quantised ab (models/binned.py) instead of ab itself.
    """
    if name not in _REGISTRY:
        raise ConfigError(f"model.arch {name!r} is not one of: {', '.join(list_models())}")
    if head not in HEADS:
        raise ConfigError(f"model.head {head!r} is not one of: {', '.join(HEADS)}")
    try:
        if head == "regression":
            return _REGISTRY[name](**kwargs)
        from chromify.ab_bins import bin_centres
        from chromify.models.binned import BinnedColour

        net = _REGISTRY[name](**{**kwargs, "out_channels": len(bin_centres(bin_grid))})
        return BinnedColour(net, bin_grid, temperature, bin_stride, prior_correction)
    except ValueError as exc:  # a bad norm / upsample / depth / grid / temperature in params.yaml
        raise ConfigError(f"model {name!r}: {exc}") from None


from chromify.models import encdec, resnet_unet, unet  # noqa: E402,F401  (registers the families)
