"""The broker's clock: epoch milliseconds that slew towards the wall clock, never step."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from broker.clock import MAX_SLEWED_MS, SLEW, Clock


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
