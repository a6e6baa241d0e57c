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

A restart does not lose the slew: the broker saves its clock's last reading (``clock.json``
in the data directory, every ``SAVE_SECONDS`` and at the stop) with the steady clock's time
and the machine's boot id, and a start on the same boot goes on from there, so an offset
still being slewed away is not dropped at once. After a reboot (the steady clock starts
again) the system clock is taken as it is.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

import msgspec
import trio

from monitoring.durable import write_file
from monitoring.logging import EventLog

SLEW: Final = 0.05  # the most the broker's time gains or loses on the steady clock
MAX_SLEWED_MS: Final = 3_600_000.0  # a wall clock further away is followed at once
STATE_FILE: Final = "clock.json"
SAVE_SECONDS: Final = 10.0
BOOT_ID_FILE: Final = Path("/proc/sys/kernel/random/boot_id")


def steady_clock() -> Callable[[], float]:
    """Seconds of a clock that never steps, counting suspended time where Linux has one: a
    C function to call, no Python frame around it (the clock is read for every request)."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    if boottime is not None:
        return functools.partial(time.clock_gettime, boottime)
    return time.monotonic


class Clock:
    """Epoch milliseconds at the steady clock's rate, within 5 %; they go back only when the
    wall clock goes back more than an hour. Its state (the steady clock's time and the
    milliseconds then) is one tuple, read and replaced whole: readings from two threads at
    once each pair a reading with its own steady time, and no time is lost."""

    __slots__ = ("_state", "_steady", "_wall")

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
        self._state = (self._steady(), (time.time() if wall is None else wall()) * 1000)

    def __call__(self) -> int:
        """The time now, in milliseconds since the epoch."""
        steady_at, ms = self._state
        steady = self._steady()
        elapsed = (steady - steady_at) * 1000
        if elapsed < 0:
            elapsed = 0.0
        ms += elapsed
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
        self._state = (steady, ms)
        return int(ms)

    def reading(self) -> tuple[float, float]:
        """(steady seconds, epoch milliseconds) of a reading now, to go on from later."""
        self()
        return self._state

    def resume(self, steady_at: float, ms: float) -> bool:
        """Go on from a reading taken before a restart on this boot (:meth:`reading`): the
        time since then counts on the steady clock, and an offset still being slewed away
        goes on being slewed. False (nothing changed) for a reading from the steady
        clock's future, which is no reading of this boot's."""
        if not (math.isfinite(steady_at) and math.isfinite(ms)) or steady_at > self._steady():
            return False
        self._state = (steady_at, ms)
        return True


class SavedReading(msgspec.Struct, frozen=True):
    boot_id: str
    steady: float
    ms: float


def boot_id(path: Path = BOOT_ID_FILE) -> str | None:
    """This boot's id (None where the kernel gives none: then no reading is resumed)."""
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def resume_saved(clock: Clock, directory: Path, log: EventLog, boot: str | None) -> None:
    """Go on from the reading saved in ``directory`` if it was taken on this boot ``boot``."""
    path = directory / STATE_FILE
    try:
        saved = msgspec.json.decode(path.read_bytes(), type=SavedReading)
    except FileNotFoundError:
        return
    except (OSError, msgspec.DecodeError) as error:  # a damaged file: the wall clock, then
        log.warning("clock.reading_unreadable", file=str(path), reason=str(error))
        return
    if boot is None or saved.boot_id != boot or not clock.resume(saved.steady, saved.ms):
        return
    offset = clock() - time.time() * 1000
    if abs(offset) >= 1000:
        log.info("clock.resumed", offset_ms=int(offset))


def save(clock: Clock, directory: Path, boot: str | None) -> None:
    """Write the clock's reading now (blocking: a worker thread's, but for the last one)."""
    if boot is None:
        return
    steady, ms = clock.reading()
    data = msgspec.json.encode(SavedReading(boot_id=boot, steady=steady, ms=ms))
    write_file(directory / STATE_FILE, data, 0o600)


async def save_forever(
    clock: Clock, directory: Path, log: EventLog, boot: str | None, interval: float = SAVE_SECONDS
) -> None:
    """Save the clock's reading every ``interval`` seconds, and once more when cancelled (the
    stop), so that a restart, even after a crash, goes on from a recent one."""
    if boot is None:
        return
    try:
        while True:
            await trio.sleep(interval)
            steady, ms = clock.reading()
            data = msgspec.json.encode(SavedReading(boot_id=boot, steady=steady, ms=ms))
            try:
                await trio.to_thread.run_sync(write_file, directory / STATE_FILE, data, 0o600)
            except OSError as error:
                log.warning("clock.reading_not_saved", reason=str(error))
    finally:
        try:
            save(clock, directory, boot)  # a few hundred bytes: not worth a thread at the stop
        except OSError as error:
            log.warning("clock.reading_not_saved", reason=str(error))
