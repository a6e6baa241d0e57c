import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.model.retention import EnqueueTimeline


def test_empty_timeline_expires_nothing():
    assert EnqueueTimeline().expired_below(10**15) == -1


def test_buckets_expire_whole_seconds():
    timeline = EnqueueTimeline()
    timeline.record(1, 1_000)
    timeline.record(2, 1_500)
    timeline.record(3, 2_100)
    assert len(timeline) == 2
    assert timeline.expired_below(1_499) == -1  # seq 2 of the first bucket is newer
    assert timeline.expired_below(1_500) == 3
    assert timeline.expired_below(2_100) == 4
    assert timeline.time_of(1) == 1_500
    assert timeline.time_of(3) == 2_100
    assert timeline.time_of(4) is None


def test_drop_keeps_the_floor():
    timeline = EnqueueTimeline()
    for seq in range(1, 5):
        timeline.record(seq, seq * 1_000)
    timeline.drop_below(3)
    assert len(timeline) == 2
    assert timeline.expired_below(0) == 3  # dropped seqs stay expired


def test_seqs_must_increase():
    timeline = EnqueueTimeline()
    timeline.record(5, 1)
    with pytest.raises(ValueError, match="recorded after"):
        timeline.record(5, 2)


@given(st.lists(st.integers(0, 3_000), min_size=1, max_size=50), st.integers(0, 200_000))
def test_never_expires_a_message_early(steps, cutoff):
    """Every seq below the boundary was enqueued at or before the cutoff."""
    timeline = EnqueueTimeline()
    times = []
    now = 0
    for seq, step in enumerate(steps, start=1):
        now += step
        timeline.record(seq, now)
        times.append(now)
    boundary = timeline.expired_below(cutoff)
    assert all(times[seq - 1] <= cutoff for seq in range(1, min(boundary, len(times) + 1)))
    # ...and it is late by at most one bucket (one second).
    assert all(
        seq < boundary for seq in range(1, len(times) + 1) if times[seq - 1] <= cutoff - 1_000
    )
