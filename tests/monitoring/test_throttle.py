from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from monitoring.throttle import Throttle


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_first_is_reported_the_rest_counted_until_the_interval_passes():
    clock = FakeClock()
    throttle = Throttle(60, clock)
    assert throttle.admit("emfile") == 0
    clock.now = 1
    assert throttle.admit("emfile") is None
    assert throttle.admit("emfile") is None
    assert throttle.admit("enospc") == 0  # another cause has its own interval
    clock.now = 60
    assert throttle.admit("emfile") == 2  # two held back since the last report
    assert throttle.admit("emfile") is None


@given(st.lists(st.floats(min_value=0, max_value=10, allow_nan=False), max_size=60))
def test_every_occurrence_is_reported_or_counted_exactly_once(gaps):
    clock = FakeClock()
    throttle = Throttle(3, clock)
    reported = held_reported = 0
    last_report: float | None = None
    for gap in gaps:
        clock.now += gap
        admitted = throttle.admit()
        if admitted is None:
            assert last_report is not None
            assert clock.now - last_report < 3
        else:
            assert last_report is None or clock.now - last_report >= 3
            reported += 1
            held_reported += admitted
            last_report = clock.now
    held_pending = throttle._held.get(None, 0)
    assert reported + held_reported + held_pending == len(gaps)
