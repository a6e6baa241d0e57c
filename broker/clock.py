"""The broker's time: milliseconds since the epoch, without the wall clock's steps.

Visibility deadlines, delays, retention periods and deduplication windows are kept as epoch
milliseconds, because they must outlive a restart (a monotonic clock starts again at each
boot), and SentTimestamp, ApproximateFirstReceiveTimestamp and SNS's Timestamp are epoch
milliseconds by definition. Taking each reading from ``time.time()`` let a step of the system
clock act on every timer at once: NTP correcting a clock, a virtual machine moved to another
host or ``date -s`` one hour forward made every in-flight message visible again (a FIFO
group's next message went to a second consumer while the first still worked on the one
before), ended every delay and deleted messages that had not lived their retention period;
one hour back hid every in-flight message for an hour more.

:class:`Clock` advances with a clock that never steps (``CLOCK_BOOTTIME``: monotonic, and
counting the time the machine is suspended, which did pass for the messages) and follows the
wall clock by slewing towards it, at most ``SLEW`` (5 %) of the time elapsed, as chrony and
ntpd correct an offset: after a step of the wall clock a 600-second visibility timeout lasts
570 to 630 seconds, not 0 or 4,200, and the timestamps are back on the wall clock within 20
times the step (an hour after a 3-minute step). A wall clock more than ``MAX_SLEWED_MS`` (an
hour) away is followed at once: a clock that far off was wrong (a machine started with no
real-time clock, say), not being corrected, and the timestamps must not stay that far off.
Both ways: a clock started years ahead and set right again goes back with it.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Final

SLEW: Final = 0.05  # the most the broker's time gains or loses on the steady clock
MAX_SLEWED_MS: Final = 3_600_000.0  # a wall clock further away is followed at once


def steady_clock() -> Callable[[], float]:
    """Seconds of a clock that never steps, counting suspended time where Linux has one: a
    C function to call, no Python frame around it (the clock is read for every request)."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    if boottime is not None:
        return functools.partial(time.clock_gettime, boottime)
    return time.monotonic


class Clock:
    """Epoch milliseconds at the steady clock's rate, within 5 %; they go back only when the
    wall clock goes back more than an hour. Read it from one thread (the broker's trio
    thread): two readings at once could lose the time between them, until slewed back."""

    __slots__ = ("_ms", "_steady", "_steady_at", "_wall")

    def __init__(
        self,
        wall: Callable[[], float] | None = None,
        steady: Callable[[], float] | None = None,
    ) -> None:
        """Start at the wall clock's time.

        Args:
            wall: seconds since the epoch (the system clock, which may step); None:
                ``time.time``, looked up at each reading (tests replace it).
            steady: seconds of a clock that never steps, any origin; None: ``steady_clock()``.
        """
        self._wall = wall
        self._steady = steady_clock() if steady is None else steady
        self._steady_at = self._steady()
        self._ms = (time.time() if wall is None else wall()) * 1000

    def __call__(self) -> int:
        """The time now, in milliseconds since the epoch."""
        steady = self._steady()
        elapsed = (steady - self._steady_at) * 1000
        if elapsed < 0:
            elapsed = 0.0
        ms = self._ms + elapsed
        wall = self._wall
        gap = (time.time() if wall is None else wall()) * 1000 - ms
        limit = elapsed * SLEW
        # Within the slew the wall clock is taken as it is (the common case: no step);
        # beyond an hour too; in between, the broker's time gains or loses ``limit``.
        if gap > limit:
            ms += gap if gap > MAX_SLEWED_MS else limit
        elif gap < -limit:
            ms += gap if gap < -MAX_SLEWED_MS else -limit
        else:
            ms += gap
        self._steady_at = steady
        self._ms = ms
        return int(ms)
