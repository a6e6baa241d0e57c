"""Rebuilding an index from stored metadata, and the timer bookkeeping behind it."""

from hypothesis import given
from hypothesis import strategies as st

from broker.model import new_index
from broker.model.dedup import deduplication_key
from broker.model.messages import SendRequest
from broker.model.outcomes import RestoredMessage
from broker.model.settings import QueueSettings
from broker.model.signing import Signer

SIGNER = Signer(b"test key, 32 bytes long........")
T0 = 1_700_000_000_000


def make(fifo: bool, **settings):
    return new_index(
        queue_id=7,
        name="q.fifo" if fifo else "q",
        arn="arn:aws:sqs:us-east-1:123456789012:q",
        settings=QueueSettings(fifo=fifo, content_based_deduplication=fifo, **settings),
        signer=SIGNER,
    )


def stored(seq, visible_at=T0, count=0, received_at=0, enqueued_at=T0, group=None):
    return RestoredMessage(seq, visible_at, count, received_at, enqueued_at, group)


def test_restored_standard_queue_resumes_every_state():
    index = make(False)
    index.restore(
        [
            stored(3),  # visible, never received
            stored(5, visible_at=T0 + 9_000),  # delayed
            stored(8, visible_at=T0 + 4_000, count=2, received_at=T0 - 1_000),  # in flight
            stored(9, visible_at=T0 - 1, count=1, received_at=T0 - 31_000),  # back visible
        ],
        T0,
    )
    assert index.counts(T0) == (2, 1, 1)
    assert index.next_wakeup(T0) == T0 + 4_000
    first = index.receive(T0, max_messages=10).deliveries
    assert [(d.seq, d.receive_count) for d in first] == [(9, 2), (3, 1)]
    later = index.receive(T0 + 9_000, max_messages=10).deliveries
    assert [(d.seq, d.receive_count) for d in later] == [(8, 3), (5, 1)]
    # Seqs continue after the highest restored one.
    outcome = index.send(T0, SendRequest(body="x"))
    assert outcome.results[0].seq == 10


def test_restored_fifo_queue_keeps_group_locks_and_order():
    index = make(True)
    index.restore(
        [
            stored(1, visible_at=T0 + 5_000, count=1, received_at=T0, group="A"),
            stored(2, group="A"),
            stored(4, group="B"),
        ],
        T0,
    )
    assert [d.seq for d in index.receive(T0, max_messages=10).deliveries] == [4]
    assert [d.seq for d in index.receive(T0 + 5_000, max_messages=10).deliveries] == [1, 2]


def test_restored_deduplication_answers_with_the_original():
    index = make(True)
    key = deduplication_key("d", None)
    index.restore_deduplication(key, 41, T0 + 100)
    outcome = index.send(T0, SendRequest(body="x", group_id="A", deduplication_id="d"))
    assert outcome.results[0].seq == 41
    assert outcome.results[0].duplicate
    assert outcome.results[0].message_id == SIGNER.message_id(7, 41)
    fresh = index.send(T0 + 100, SendRequest(body="x", group_id="A", deduplication_id="d"))
    assert fresh.results[0].seq == 42


def test_restored_messages_expire_by_their_enqueue_time():
    index = make(False, message_retention_period=60)
    index.restore([stored(1, enqueued_at=T0 - 61_000), stored(2, enqueued_at=T0)], T0)
    expired = index.expire(T0)
    assert [m.seq for m in expired.mutations] == [1]


def test_restored_received_messages_expire_without_a_receive():
    for fifo in (False, True):
        index = make(fifo, message_retention_period=60)
        group = "g" if fifo else None
        index.restore(
            [
                # in flight, visible again, and moved in (its enqueue time is the move's)
                stored(1, T0 + 600_000, 1, T0 - 1_000, T0 - 61_000, group),
                stored(2, T0 - 1_000, 1, T0 - 2_000, T0 - 61_000, "h" if fifo else None),
                stored(3, T0 - 1_000, 4, T0 - 2_000, T0 - 30_000, "i" if fifo else None),
            ],
            T0,
        )
        assert index.counts(T0) == (2, 1, 0)
        assert sorted(m.seq for m in index.expire(T0).mutations) == [1, 2]
        assert index.counts(T0) == (1, 0, 0)
        assert [m.seq for m in index.expire(T0 + 30_000).mutations] == [3]
        assert index.counts(T0 + 30_000) == (0, 0, 0)


def test_a_restored_fifo_queue_delays_fresh_messages_by_its_delay_now():
    """The row's visible_at is the send's; a SetQueueAttributes since rewrote no row."""
    index = make(True, delay_seconds=60)
    index.restore(
        [
            stored(1, visible_at=T0 - 10_000, enqueued_at=T0 - 10_000, group="A"),  # was 0 s
            stored(2, visible_at=T0 + 900_000, enqueued_at=T0, group="B"),  # was 900 s
            stored(3, visible_at=T0, count=1, received_at=T0 - 1, enqueued_at=T0, group="C"),
        ],
        T0,
    )
    assert index.counts(T0) == (1, 0, 2)
    assert index.next_wakeup(T0) == T0 + 50_000
    assert [d.seq for d in index.receive(T0 + 50_000, max_messages=10).deliveries] == [1, 3]
    assert [d.seq for d in index.receive(T0 + 60_000, max_messages=10).deliveries] == [2]


def test_a_restored_standard_queue_keeps_each_message_delay():
    index = make(False, delay_seconds=60)
    index.restore([stored(1, visible_at=T0 + 5_000, enqueued_at=T0 - 10_000)], T0)
    assert index.next_wakeup(T0) == T0 + 5_000


def test_superseded_timers_do_not_wake_or_count():
    index = make(False)
    index.send(T0, SendRequest(body="x")).on_durable()
    handle = index.receive(T0, visibility_timeout=100).deliveries[0].receipt_handle
    index.change_visibility(T0, handle, 10)
    assert index.next_wakeup(T0) == T0 + 10_000
    index.delete(T0, handle)
    assert index.next_wakeup(T0) is None
    assert index.counts(T0 + 100_000) == (0, 0, 0)


@given(
    st.lists(
        st.tuples(st.integers(-5, 5), st.integers(0, 3)),  # (visible in s from now, count)
        max_size=30,
    )
)
def test_restored_counts_follow_the_stored_rows(rows):
    index = make(False)
    index.restore(
        [
            stored(seq, visible_at=T0 + offset * 1_000, count=count, received_at=T0)
            for seq, (offset, count) in enumerate(rows, start=1)
        ],
        T0,
    )
    visible = sum(offset <= 0 for offset, _ in rows)
    in_flight = sum(offset > 0 and count > 0 for offset, count in rows)
    delayed = sum(offset > 0 and count == 0 for offset, count in rows)
    assert index.counts(T0) == (visible, in_flight, delayed)
