"""A tiny registry of colorization architectures: L (B, 1, H, W) in [0, 1] → ab/128 (B, 2, H, W) in (-1, 1).

Every model ends in tanh, so predicted a and b stay within ±128 whatever the input.
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
    """Build a registered architecture; keyword arguments override its defaults."""
    if name not in _REGISTRY:
        raise ConfigError(f"model.arch {name!r} is not one of: {', '.join(list_models())}")
    return _REGISTRY[name](**kwargs)


from chromify.models import encdec, unet  # noqa: E402,F401  (registers the families)
