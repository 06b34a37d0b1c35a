"""Progress that reads well where it lands: a live bar on a terminal, and in a log (Vertex AI, Kubeflow, CI,
`2> log`) a plain line every half minute, so a long stage is never minutes of silence nor a wall of carriage
returns."""

from __future__ import annotations

import sys
import time
from typing import TextIO

LOG_EVERY_S = 30.0  # seconds between two progress lines in a log


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or file-less stream
        return False


class LogClock:
    """True at most once every LOG_EVERY_S: when a log is due its next line."""

    def __init__(self) -> None:
        self.start = self._last = time.monotonic()

    def due(self) -> bool:
        now = time.monotonic()
        if now - self._last < LOG_EVERY_S:
            return False
        self._last = now
        return True


class Progress:
    """`done` of `total` units: `update(k)` as work finishes, `close()` at the end. Not `enabled`, or with nothing
    to do, it says nothing, so callers need no branch of their own."""

    def __init__(self, total: int, desc: str, unit: str = "img", initial: int = 0, stream: TextIO | None = None,
                 enabled: bool = True):
        self.enabled = enabled and total > initial
        self.stream = stream if stream is not None else sys.stderr
        self.total, self.desc, self.unit = total, desc, unit
        self.done = self._first = initial
        self._lines = 0
        self._clock = LogClock()
        self._bar = None
        if self.enabled and is_terminal(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=self.stream)

    def update(self, k: int = 1) -> None:
        self.done += k
        if self._bar is not None:
            self._bar.update(k)
        elif self.enabled and self._clock.due():
            self._line()

    def _line(self) -> None:
        if self.stream is None:  # no stderr at all (a detached process): print would write to stdout, the JSON's
            return
        rate = (self.done - self._first) / max(time.monotonic() - self._clock.start, 1e-9)
        share = 100.0 * self.done / self.total if self.total else 100.0
        print(f"chromify: {self.desc} {self.done:,}/{self.total:,} {self.unit} ({share:.0f} %), "
              f"{rate:,.1f} {self.unit}/s", file=self.stream, flush=True)
        self._lines += 1

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._lines:  # a log that had a first figure gets the last one too
            self._line()
