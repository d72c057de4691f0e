"""The one seam through which layerq reads the time, so tests can move it."""

from __future__ import annotations

import time
from collections.abc import Callable

_clock: Callable[[], float] = time.time


def now() -> float:
    """Return the current wall-clock time in seconds since the epoch."""
    return _clock()


def set_clock(clock: Callable[[], float] | None) -> None:
    """Replace the clock (``None`` restores ``time.time``); for tests."""
    global _clock
    _clock = clock or time.time
