"""What every benchmark script's command line shares: argument types that refuse bad values before any work, and
library errors as one line (`prog: error: …`), as quality.py and the chromify CLI give them."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path


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
