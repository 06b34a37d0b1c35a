"""What every benchmark script's command line shares: argument types that refuse bad values before any work, and
library errors as one line (`prog: error: …`), as quality.py and the chromify CLI give them."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be >= 1")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text}: must be >= 0")
    return value


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text}: not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text}: must be a finite number")
    return value


def positive_float(text: str) -> float:
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text}: must be > 0")
    return value


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type for a whole number >= `low` (a size the code it feeds refuses below it)."""

    def at_least(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"{text}: must be >= {low}")
        return value

    at_least.__name__ = f"whole number >= {low}"
    return at_least


def unit_fraction(text: str) -> float:
    """A share of a set, in (0, 1]."""
    value = finite_float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text}: must be in (0, 1]")
    return value


def decode(text: str) -> tuple[float, ...]:
    """`T:β[:gain]`, a bins-head decode, refused by the rule chromify.inference.Colorizer applies when it loads the
    model (temperature and gain finite and > 0, prior correction finite), here before any work instead of after it."""
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise argparse.ArgumentTypeError(f"{text}: expected T:β or T:β:gain")
    values = tuple(finite_float(p) for p in parts)
    for name, value in (("temperature", values[0]), ("chroma gain", values[2] if len(values) > 2 else 1.0)):
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text}: {name} must be > 0")
    return values


def comma_list(item: Callable[[str], T], empty_ok: bool = False) -> Callable[[str], list[T]]:
    """An argparse type for `a,b,c`, each part read by the type `item`; empty parts are skipped."""

    def parse(text: str) -> list[T]:
        out = []
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            try:
                out.append(item(part))
            except ValueError:  # int("abc") and the like; argparse.ArgumentTypeError passes through as it is
                raise argparse.ArgumentTypeError(f"{part}: not a valid {item.__name__.replace('_', ' ')}") from None
        if not (out or empty_ok):
            raise argparse.ArgumentTypeError(f"{text!r}: expected a comma-separated list")
        return out

    return parse


def folder(text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: no such folder")
    return path


def run_main(main: Callable[[], None]) -> None:
    """Call `main`, turning the library's errors into one line and exit status 2."""
    from chromify.errors import ChromifyError

    try:
        main()
    except ChromifyError as exc:
        print(f"{Path(sys.argv[0]).name}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
