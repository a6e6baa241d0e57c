"""At most one log line per cause and interval, for conditions that recur many times a
second while they last (descriptors exhausted, a full disk): the first occurrence is
reported at once, the rest of the interval is counted, and the next report says how many
were held back. nginx and HAProxy report such conditions once, not per event.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Final

DEFAULT_INTERVAL_SECONDS: Final = 60.0


class Throttle:
    """Admits one report per key every ``interval`` seconds and counts the others."""

    __slots__ = ("_clock", "_held", "_interval", "_last")

    def __init__(
        self,
        interval: float = DEFAULT_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._interval = interval
        self._clock = clock
        self._last: dict[Hashable, float] = {}
        self._held: dict[Hashable, int] = {}

    def admit(self, key: Hashable = None) -> int | None:
        """None when this occurrence should not be reported; else the number of occurrences
        of ``key`` held back since the last one reported (0 for the first)."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._held.pop(key, 0)
