import hashlib

from hypothesis import given
from hypothesis import strategies as st

from broker.model.dedup import DEDUPLICATION_WINDOW_MS, DeduplicationWindow, deduplication_key


def test_keys_depend_on_scope():
    assert deduplication_key("d", None) == deduplication_key("d", None)
    assert deduplication_key("d", "g1") != deduplication_key("d", "g2")
    assert deduplication_key("d", None) != deduplication_key("d", "g1")
    assert len(deduplication_key("x" * 128, None)) == 16  # fixed size whatever the id
    assert len(deduplication_key("x" * 128, "g" * 128)) == 32


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


# (per group?, group, id, time step): one send under the scope in force at that moment.
_SENDS = st.lists(
    st.tuples(st.booleans(), st.sampled_from("gh"), st.sampled_from("xy"), st.integers(0, 200_000)),
    max_size=40,
)


def _naive_duplicate(
    taken: list[tuple[int, bool, str, str, int]],
    per_group: bool,
    group: str,
    dedup_id: str,
    now: int,
) -> int | None:
    """The rule of broker.model.dedup, read from a list of (seq, per group?, group, id, sent at).

    A duplicate of the latest live send with the id and the same group, or where either send
    was queue-wide; a per-group send prefers its own group's original.
    """
    live = [t for t in taken if t[3] == dedup_id and t[4] + DEDUPLICATION_WINDOW_MS > now]
    if per_group:
        same_group = [t for t in live if t[1] and t[2] == group]
        live = same_group or [t for t in live if not t[1]]
    return live[-1][0] if live else None


@given(_SENDS)
def test_scope_changes_match_the_naive_rule(sends):
    window = DeduplicationWindow()
    taken: list[tuple[int, bool, str, str, int]] = []
    now = 0
    for seq, (per_group, group, dedup_id, step) in enumerate(sends):
        now += step
        key = deduplication_key(dedup_id, group if per_group else None)
        found = window.lookup(key, now)
        assert found == _naive_duplicate(taken, per_group, group, dedup_id, now)
        if found is None:
            window.remember(key, seq, now + DEDUPLICATION_WINDOW_MS)
            taken.append((seq, per_group, group, dedup_id, now))
        assert len(window) == sum(1 for t in taken if t[4] + DEDUPLICATION_WINDOW_MS > now)


@given(
    st.booleans(),
    st.booleans(),
    st.lists(st.tuples(st.booleans(), st.sampled_from("gh"), st.sampled_from("xy")), max_size=8),
    st.integers(0, DEDUPLICATION_WINDOW_MS - 1),
)
def test_no_scope_change_lets_the_same_group_and_id_through(
    first_per_group, last_per_group, others, later
):
    """Whatever sends and scope changes come between, (g, x) again within 5 minutes is a
    duplicate."""
    window = DeduplicationWindow()
    first = deduplication_key("x", "g" if first_per_group else None)
    window.remember(first, 0, DEDUPLICATION_WINDOW_MS)
    for seq, (per_group, group, dedup_id) in enumerate(others, start=1):
        key = deduplication_key(dedup_id, group if per_group else None)
        if window.lookup(key, 0) is None:
            window.remember(key, seq, DEDUPLICATION_WINDOW_MS)
    assert window.lookup(deduplication_key("x", "g" if last_per_group else None), later) is not None


@given(_SENDS, st.randoms(use_true_random=False))
def test_restored_entries_deduplicate_across_a_scope_change(sends, random):
    """Entries reloaded at start, in any order (the store's), follow the rule as live ones do."""
    live = DeduplicationWindow()
    taken: list[tuple[int, bool, str, str, int]] = []
    stored: dict[bytes, tuple[int, int]] = {}  # the store's rows: INSERT OR REPLACE by key
    now = 0
    for seq, (per_group, group, dedup_id, step) in enumerate(sends):
        now += step
        key = deduplication_key(dedup_id, group if per_group else None)
        if live.lookup(key, now) is None:
            live.remember(key, seq, now + DEDUPLICATION_WINDOW_MS)
            taken.append((seq, per_group, group, dedup_id, now))
            stored[key] = (seq, now + DEDUPLICATION_WINDOW_MS)
    rows = [(key, seq, expires_at) for key, (seq, expires_at) in stored.items() if expires_at > now]
    random.shuffle(rows)
    restored = DeduplicationWindow()
    for key, seq, expires_at in rows:
        restored.remember(key, seq, expires_at)
    for per_group in (False, True):
        for group in "gh":
            for dedup_id in "xy":
                key = deduplication_key(dedup_id, group if per_group else None)
                expected = _naive_duplicate(taken, per_group, group, dedup_id, now)
                assert (restored.lookup(key, now) is None) == (expected is None)
    # A row stored before keys began with the id's digest (16 bytes under either scope): a
    # messageGroup one is still found by its group under messageGroup scope after an upgrade.
    legacy = hashlib.blake2b(b"g\0z", digest_size=16).digest()
    restored.remember(legacy, 99, now + 1)
    assert restored.lookup(deduplication_key("z", "g"), now) == 99
    assert restored.lookup(deduplication_key("z", "h"), now) is None
