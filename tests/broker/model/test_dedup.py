from hypothesis import given
from hypothesis import strategies as st

from broker.model.dedup import DEDUPLICATION_WINDOW_MS, DeduplicationWindow, deduplication_key


def test_keys_depend_on_scope():
    assert deduplication_key("d", None) == deduplication_key("d", None)
    assert deduplication_key("d", "g1") != deduplication_key("d", "g2")
    assert deduplication_key("d", None) != deduplication_key("d", "g1")
    assert len(deduplication_key("x" * 128, "g")) == 16


def test_window_remembers_until_expiry():
    window = DeduplicationWindow()
    key = deduplication_key("d", None)
    window.remember(key, 7, expires_at=1000 + DEDUPLICATION_WINDOW_MS)
    assert window.lookup(key, 1000) == 7
    assert window.lookup(key, 999 + DEDUPLICATION_WINDOW_MS) == 7
    assert window.lookup(key, 1000 + DEDUPLICATION_WINDOW_MS) is None
    assert len(window) == 0


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 400_000)), max_size=60))
def test_window_matches_a_naive_model(events):
    """Events are (dedup id, time step); the first use within 5 minutes wins."""
    window = DeduplicationWindow()
    naive: dict[int, tuple[int, int]] = {}  # id -> (seq, sent at)
    now = 0
    for seq, (dedup_id, step) in enumerate(events):
        now += step
        key = deduplication_key(str(dedup_id), None)
        expected = naive.get(dedup_id)
        if expected is not None and expected[1] + DEDUPLICATION_WINDOW_MS <= now:
            expected = None
        found = window.lookup(key, now)
        assert found == (expected[0] if expected else None)
        if found is None:
            window.remember(key, seq, now + DEDUPLICATION_WINDOW_MS)
            naive[dedup_id] = (seq, now)
