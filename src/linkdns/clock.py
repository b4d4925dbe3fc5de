"""A monotonic clock the tests can move forward (TTL ageing, prefetch, serve-stale)."""

from __future__ import annotations

import time


class Clock:
    """``now()`` is time.monotonic() plus an offset that ``advance()`` adds to."""

    __slots__ = ("offset",)

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.monotonic() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds
