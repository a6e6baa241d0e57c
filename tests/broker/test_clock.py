"""The broker's clock: epoch milliseconds that slew towards the wall clock, never step."""

from __future__ import annotations

import io
import stat

import msgspec
import trio
from hypothesis import given
from hypothesis import strategies as st

from broker.clock import (
    MAX_SLEWED_MS,
    SLEW,
    STATE_FILE,
    Clock,
    SavedReading,
    resume_saved,
    save,
    save_forever,
)
from monitoring.logging import EventLog


class Clocks:
    """A wall clock and a steady clock that the test moves by hand."""

    def __init__(self, wall: float = 1_800_000_000.0) -> None:
        self.wall = wall
        self.steady = 50.0

    def tick(self, seconds: float) -> None:
        self.wall += seconds
        self.steady += seconds

    def clock(self) -> Clock:
        return Clock(wall=lambda: self.wall, steady=lambda: self.steady)


def test_it_reads_the_wall_clock_while_that_does_not_step():
    clocks = Clocks()
    clock = clocks.clock()
    assert clock() == 1_800_000_000_000
    clocks.tick(12.345)
    assert clock() == 1_800_000_012_345


def test_a_step_forward_is_slewed_in_and_not_taken_at_once():
    clocks = Clocks()
    clock = clocks.clock()
    clocks.wall += 1800  # NTP steps the system clock half an hour forward
    assert clock() == 1_800_000_000_000
    clocks.tick(600)  # a visibility timeout of 600 s lasts at least 600 / 1.05 s
    assert clock() == 1_800_000_000_000 + int(600_000 * (1 + SLEW))
    clocks.tick(1800 / SLEW)
    assert clock() == int(clocks.wall * 1000)  # caught up, and reading the wall clock again
    clocks.tick(1)
    assert clock() == int(clocks.wall * 1000)


def test_a_step_back_is_slewed_out_and_time_goes_on():
    clocks = Clocks()
    clock = clocks.clock()
    clocks.wall -= 1800
    clocks.tick(600)
    assert clock() == 1_800_000_000_000 + int(600_000 * (1 - SLEW))
    clocks.tick(1800 / SLEW)
    assert clock() == int(clocks.wall * 1000)


def test_a_wall_clock_more_than_an_hour_away_is_followed_at_once():
    clocks = Clocks()
    clock = clocks.clock()
    clocks.wall += 86_400 * 365  # started with no real-time clock, then set
    assert clock() == int(clocks.wall * 1000)
    clocks.wall -= MAX_SLEWED_MS / 1000 + 1
    assert clock() == int(clocks.wall * 1000)


@given(st.lists(st.tuples(st.floats(0, 10_000), st.floats(-3000, 3000)), max_size=30))
def test_within_an_hour_its_rate_stays_within_the_slew(moves: list[tuple[float, float]]):
    clocks = Clocks()
    clock = clocks.clock()
    last = clock()
    for elapsed, step in moves:
        clocks.tick(elapsed)
        clocks.wall += step
        if abs(clocks.wall * 1000 - (last + elapsed * 1000)) > MAX_SLEWED_MS - 10:
            clocks.wall = last / 1000 + elapsed  # keep to the range it slews
        now = clock()
        assert elapsed * 1000 * (1 - SLEW) - 2 <= now - last <= elapsed * 1000 * (1 + SLEW) + 2
        last = now


def test_a_restart_goes_on_with_the_slew_instead_of_dropping_it():
    """A restart while a step was being slewed away took the wall clock at once: a 600 s
    visibility deadline stored a minute after a 30-minute step ended at once (review)."""
    clocks = Clocks()
    before = clocks.clock()
    clocks.wall += 1800
    clocks.tick(60)
    deadline = before() + 600_000
    saved = before.reading()
    clocks.tick(5)  # the restart
    after = clocks.clock()
    fresh = clocks.clock()
    assert after.resume(*saved)
    assert deadline - fresh() < 0  # without the saved reading: visible again at once
    assert 500_000 < deadline - after() <= 600_000 - 5_000 * (1 - SLEW)
    clocks.tick(600)
    assert after() - before() in range(-2, 3)  # the same time as if it had never stopped


def test_a_reading_from_the_steady_clocks_future_is_not_resumed():
    clocks = Clocks()
    clock = clocks.clock()
    steady, ms = clock.reading()
    assert not clock.resume(steady + 1, ms)  # another boot's (its steady clock ran longer)
    assert not clock.resume(float("nan"), ms)
    assert clock() == int(clocks.wall * 1000)


def test_the_saved_reading_is_resumed_on_its_boot_only(tmp_path):
    clocks = Clocks()
    clock = clocks.clock()
    clocks.wall += 1800
    clocks.tick(60)
    save(clock, tmp_path, "boot-a")
    assert stat.S_IMODE((tmp_path / STATE_FILE).stat().st_mode) == 0o600
    log = EventLog("broker", stream=io.StringIO())
    for boot, resumed in (("boot-b", False), (None, False), ("boot-a", True)):
        restarted = clocks.clock()
        resume_saved(restarted, tmp_path, log, boot)
        assert (restarted() == clock()) is resumed, boot


def test_a_damaged_saved_reading_is_warned_of_and_the_wall_clock_taken(tmp_path):
    clocks = Clocks()
    (tmp_path / STATE_FILE).write_bytes(b"{not json")
    out = io.StringIO()
    clock = clocks.clock()
    resume_saved(clock, tmp_path, EventLog("broker", stream=out), "boot-a")
    assert "clock.reading_unreadable" in out.getvalue()
    assert clock() == int(clocks.wall * 1000)


async def test_the_reading_is_saved_while_running_and_at_the_stop(tmp_path):
    clocks = Clocks()
    clock = clocks.clock()
    log = EventLog("broker", stream=io.StringIO())
    with trio.move_on_after(0.05):
        await save_forever(clock, tmp_path, log, "boot-a", interval=0.01)
    saved = msgspec.json.decode((tmp_path / STATE_FILE).read_bytes(), type=SavedReading)
    assert (saved.boot_id, saved.ms) == ("boot-a", clocks.wall * 1000)
