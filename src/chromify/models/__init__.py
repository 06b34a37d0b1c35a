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


def get_model(name: str, **kwargs: Any):
    """Build a registered architecture; keyword arguments override its defaults (unknown ones are ignored)."""
    if name not in _REGISTRY:
        raise ConfigError(f"model.arch {name!r} is not one of: {', '.join(list_models())}")
    try:
        return _REGISTRY[name](**kwargs)
    except ValueError as exc:  # a bad norm / upsample / depth in params.yaml
        raise ConfigError(f"model {name!r}: {exc}") from None


from chromify.models import encdec, resnet_unet, unet  # noqa: E402,F401  (registers the families)
