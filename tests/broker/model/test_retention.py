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


@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("record"), st.integers(-1_500, 3_000)),
            st.tuples(st.just("drop"), st.integers(-2, 8)),  # past the last seq too
            st.tuples(st.just("clear"), st.just(0)),
        ),
        max_size=40,
    )
)
def test_a_time_joins_the_last_kept_bucket_when_its_second_is_not_later(steps):
    """record() by its rule: into the last bucket kept unless the time's second is later."""
    timeline = EnqueueTimeline()
    buckets: list[tuple[int, int]] = []  # the reference: (first seq, latest time) kept
    seq = 0
    now = 10_000
    for action, number in steps:
        if action == "record":
            seq += 1
            now += number
            timeline.record(seq, now)
            if buckets and now // 1_000 <= buckets[-1][1] // 1_000:
                buckets[-1] = (buckets[-1][0], max(buckets[-1][1], now))
            else:
                buckets.append((seq, now))
        elif action == "drop":
            below = max(0, seq - number)
            timeline.drop_below(below)
            while buckets and (
                (len(buckets) > 1 and buckets[1][0] <= below) or (len(buckets) == 1 and seq < below)
            ):
                buckets.pop(0)
        else:
            timeline.clear()
            buckets.clear()
        assert len(timeline) == len(buckets)
        for first, latest in buckets:
            assert timeline.time_of(first) == latest
