"""Behaviour every queue type shares: sends, receives, handles, purge, retention, DLQ."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.model import QueueIndex, new_index
from broker.model.errors import (
    INVALID_PARAMETER_VALUE,
    MESSAGE_NOT_INFLIGHT,
    OVER_LIMIT,
    PURGE_QUEUE_IN_PROGRESS,
    RECEIPT_HANDLE_IS_INVALID,
    SqsError,
)
from broker.model.index import OVER_LIMIT_MESSAGE, resolve_wait_time
from broker.model.messages import SendRequest, message_size, validate_message
from broker.model.mutations import (
    MessageDeleted,
    MessageDelivered,
    MessageInserted,
    MessageMoved,
    QueuePurged,
    VisibilityChanged,
)
from broker.model.outcomes import SentCopies
from broker.model.settings import parse_create
from broker.model.signing import Signer
from broker.model.state import MAX_IN_FLIGHT_MESSAGES

SIGNER = Signer(b"test key, 32 bytes long........")
T0 = 1_700_000_000_000
ARN = "arn:aws:sqs:us-east-1:123456789012:"


def make(fifo: bool, queue_id: int = 1, wake=None, **attributes: str) -> QueueIndex:
    if fifo:
        attributes = {"FifoQueue": "true", "ContentBasedDeduplication": "true", **attributes}
    name = f"q{queue_id}.fifo" if fifo else f"q{queue_id}"
    return new_index(
        queue_id=queue_id,
        name=name,
        arn=ARN + name,
        settings=parse_create(attributes),
        signer=SIGNER,
        wake_receivers=wake,
    )


def send(index: QueueIndex, now: int, body: str, group: str = "g", **fields) -> int:
    group_id = group if index.settings.fifo else None
    outcome = index.send(now, SendRequest(body=body, group_id=group_id, **fields))
    outcome.on_durable()
    return outcome.results[0].seq


def receive(index: QueueIndex, now: int, **kwargs):
    outcome = index.receive(now, **kwargs)
    outcome.on_durable()
    return outcome


def refused(call) -> tuple[str, str]:
    with pytest.raises(SqsError) as raised:
        call()
    return raised.value.code, raised.value.message


both = pytest.mark.parametrize("fifo", [False, True], ids=["standard", "fifo"])


@both
def test_sends_become_receivable_only_when_durable(fifo):
    index = make(fifo)
    outcome = index.send(T0, SendRequest(body="hello", group_id="g" if fifo else None))
    (inserted,) = [m for m in outcome.mutations if isinstance(m, MessageInserted)]
    assert inserted.body == "hello"
    assert inserted.sent_at == T0 == inserted.visible_at
    assert outcome.results[0].message_id == inserted.message_id
    assert index.receive(T0).deliveries == []
    assert index.counts(T0) == (0, 0, 0)
    outcome.on_durable()
    assert index.counts(T0) == (1, 0, 0)
    assert [d.seq for d in index.receive(T0).deliveries] == [inserted.seq]


def test_a_send_can_skip_the_character_scan_the_caller_did():
    index = make(False)
    with pytest.raises(SqsError):
        index.send(T0, SendRequest(body="a\x01"))
    outcome = index.send(T0, SendRequest(body="a\x01"), characters_checked=True)
    assert outcome.results[0].seq == 1


@both
def test_receive_hides_the_message_until_its_visibility_timeout(fifo):
    index = make(fifo, VisibilityTimeout="10")
    seq = send(index, T0, "m")
    first = receive(index, T0).deliveries
    assert [(d.seq, d.receive_count, d.first_receive_at) for d in first] == [(seq, 1, T0)]
    assert receive(index, T0 + 9_999).deliveries == []
    assert index.counts(T0 + 9_999) == (0, 1, 0)
    assert index.next_wakeup(T0) == T0 + 10_000
    second = receive(index, T0 + 10_000, visibility_timeout=5)
    assert [(d.seq, d.receive_count, d.first_receive_at) for d in second.deliveries] == [
        (seq, 2, None)
    ]
    assert second.deliveries[0].receipt_handle != first[0].receipt_handle
    assert second.mutations == [
        MessageDelivered(
            queue_id=1, seq=seq, visible_at=T0 + 15_000, receive_count=2, received_at=T0 + 10_000
        )
    ]


@both
def test_receive_parameters_are_checked(fifo):
    index = make(fifo)
    assert refused(lambda: index.receive(T0, max_messages=11)) == (
        INVALID_PARAMETER_VALUE,
        "Value 11 for parameter MaxNumberOfMessages is invalid. "
        "Reason: Must be between 1 and 10, if provided.",
    )
    assert refused(lambda: index.receive(T0, visibility_timeout=43_201))[0] == (
        INVALID_PARAMETER_VALUE
    )


def test_wait_time_resolution():
    settings = parse_create({"ReceiveMessageWaitTimeSeconds": "7"})
    assert resolve_wait_time(settings, None) == 7
    assert resolve_wait_time(settings, 0) == 0
    assert refused(lambda: resolve_wait_time(settings, 21)) == (
        INVALID_PARAMETER_VALUE,
        "Value 21 for parameter WaitTimeSeconds is invalid. "
        "Reason: Must be >= 0 and <= 20, if provided.",
    )


@both
def test_delete(fifo):
    index = make(fifo)
    seq = send(index, T0, "m")
    handle = receive(index, T0).deliveries[0].receipt_handle
    assert index.delete(T0, handle).mutations == [MessageDeleted(queue_id=1, seq=seq)]
    assert index.counts(T0) == (0, 0, 0)
    assert index.delete(T0, handle).mutations == []  # already gone: quiet success
    assert receive(index, T0 + 60_000).deliveries == []


@both
def test_invalid_handles(fifo):
    index = make(fifo)
    other = make(fifo, queue_id=2)
    send(other, T0, "m")
    foreign = receive(other, T0).deliveries[0].receipt_handle
    for handle in ["garbage", foreign, SIGNER.receipt_handle(1, 99, 1, T0)]:
        assert refused(lambda handle=handle: index.delete(T0, handle)) == (
            RECEIPT_HANDLE_IS_INVALID,
            f'The input receipt handle "{handle}" is not a valid receipt handle.',
        )
        assert refused(lambda handle=handle: index.change_visibility(T0, handle, 1))[0] == (
            RECEIPT_HANDLE_IS_INVALID
        )


@both
def test_change_visibility(fifo):
    index = make(fifo)
    send(index, T0, "m")
    handle = receive(index, T0).deliveries[0].receipt_handle
    change = index.change_visibility(T0 + 1_000, handle, 60)
    assert change.mutations == [VisibilityChanged(queue_id=1, seq=1, visible_at=T0 + 61_000)]
    assert receive(index, T0 + 60_999).deliveries == []
    assert index.next_wakeup(T0 + 2_000) == T0 + 61_000
    index.change_visibility(T0 + 2_000, handle, 0)
    assert index.counts(T0 + 2_000) == (1, 0, 0)
    assert refused(lambda: index.change_visibility(T0 + 2_000, handle, 10)) == (
        MESSAGE_NOT_INFLIGHT,
        "The message referred to isn't in flight.",
    )
    again = receive(index, T0 + 2_000).deliveries[0].receipt_handle
    assert refused(lambda: index.change_visibility(T0 + 3_000, again, 43_200)) == (
        INVALID_PARAMETER_VALUE,
        "Value 43200 for parameter VisibilityTimeout is invalid. Reason: Total "
        "VisibilityTimeout for the message is beyond the limit [43200 seconds].",
    )
    assert refused(lambda: index.change_visibility(T0, again, -1))[0] == INVALID_PARAMETER_VALUE
    index.delete(T0 + 3_000, again)
    assert refused(lambda: index.change_visibility(T0 + 3_000, again, 5)) == (
        INVALID_PARAMETER_VALUE,
        f"Value {again} for parameter ReceiptHandle is invalid. Reason: Message does not "
        "exist or is not available for visibility timeout change.",
    )


@both
def test_a_tampered_handle_of_a_message_in_flight_is_refused(fifo):
    # The body of the handle still names the message in flight; only the MAC differs, which
    # the check of a handle that is not the very string issued must catch.
    index = make(fifo)
    send(index, T0, "m")
    handle = receive(index, T0).deliveries[0].receipt_handle
    for position in (28, 40, 49):  # characters of the MAC (the body's are the first 28)
        flipped = "A" if handle[position] != "A" else "Q"
        tampered = handle[:position] + flipped + handle[position + 1 :]
        assert refused(lambda tampered=tampered: index.delete(T0, tampered))[0] == (
            RECEIPT_HANDLE_IS_INVALID
        )
        assert refused(lambda tampered=tampered: index.change_visibility(T0, tampered, 5))[0] == (
            RECEIPT_HANDLE_IS_INVALID
        )
    assert index.delete(T0, handle).mutations == [MessageDeleted(queue_id=1, seq=1)]


@both
def test_a_handle_whose_receive_timed_out_is_checked_in_full(fifo):
    # No longer in flight, the message forgets its handle; the handle is then judged as any
    # other: a standard queue deletes with it, a FIFO queue refuses it as expired.
    index = make(fifo, VisibilityTimeout="1")
    send(index, T0, "m")
    handle = receive(index, T0).deliveries[0].receipt_handle
    if fifo:
        assert refused(lambda: index.delete(T0 + 1_000, handle))[0] == INVALID_PARAMETER_VALUE
    else:
        assert index.delete(T0 + 1_000, handle).mutations == [MessageDeleted(queue_id=1, seq=1)]


def test_standard_stale_handle_still_deletes():
    index = make(False, VisibilityTimeout="1")
    send(index, T0, "m")
    stale = receive(index, T0).deliveries[0].receipt_handle
    receive(index, T0 + 1_000)
    assert index.delete(T0 + 1_000, stale).mutations == [MessageDeleted(queue_id=1, seq=1)]


def test_fifo_stale_or_expired_handle_is_refused():
    index = make(True, VisibilityTimeout="1")
    send(index, T0, "m")
    handle = receive(index, T0).deliveries[0].receipt_handle
    expired = (
        INVALID_PARAMETER_VALUE,
        f"Value {handle} for parameter ReceiptHandle is invalid. "
        "Reason: The receipt handle has expired.",
    )
    assert refused(lambda: index.delete(T0 + 1_000, handle)) == expired
    receive(index, T0 + 1_000)
    assert refused(lambda: index.delete(T0 + 1_000, handle)) == expired
    assert refused(lambda: index.change_visibility(T0 + 1_000, handle, 5))[1] == expired[1]


def test_standard_stale_handle_cannot_retime_the_next_receive():
    # Consumer A's lease lapses and B receives the message: A's handle must neither release
    # B's message (0) nor extend B's lease, as SQS refuses it.
    index = make(False, VisibilityTimeout="1")
    send(index, T0, "m")
    stale = receive(index, T0).deliveries[0].receipt_handle
    (current,) = receive(index, T0 + 1_000, visibility_timeout=300).deliveries
    for timeout in (0, 600):
        assert refused(
            lambda timeout=timeout: index.change_visibility(T0 + 2_000, stale, timeout)
        ) == (
            INVALID_PARAMETER_VALUE,
            f"Value {stale} for parameter ReceiptHandle is invalid. Reason: Message does not "
            "exist or is not available for visibility timeout change.",
        )
    assert index.counts(T0 + 2_000) == (0, 1, 0)
    assert receive(index, T0 + 2_000).deliveries == []
    assert index.change_visibility(T0 + 2_000, current.receipt_handle, 0).mutations == [
        VisibilityChanged(queue_id=1, seq=1, visible_at=T0 + 2_000)
    ]
    assert index.counts(T0 + 2_000) == (1, 0, 0)


@both
def test_purge_drops_everything_and_is_rate_limited(fifo):
    index = make(fifo)
    send(index, T0, "a")
    send(index, T0, "b", group="h")
    receive(index, T0)
    pending = index.send(T0, SendRequest(body="c", group_id="g" if fifo else None))
    purge = index.purge(T0)
    assert purge.mutations == [QueuePurged(queue_id=1, below_seq=4)]
    pending.on_durable()  # committed before the purge, so purged by it
    assert index.counts(T0) == (0, 0, 0)
    assert receive(index, T0 + 100_000).deliveries == []
    assert refused(lambda: index.purge(T0 + 59_999)) == (
        PURGE_QUEUE_IN_PROGRESS,
        f"Only one PurgeQueue operation on {index.name} is allowed every 60 seconds.",
    )
    index.purge(T0 + 60_000)
    send(index, T0 + 60_000, "d")
    assert index.counts(T0 + 60_000) == (1, 0, 0)


@both
def test_retention(fifo):
    index = make(fifo, MessageRetentionPeriod="60")
    send(index, T0, "old")
    send(index, T0 + 30_000, "new", group="other")
    assert index.expire(T0 + 59_999).mutations == []
    expired = index.expire(T0 + 61_000)
    assert [m.seq for m in expired.mutations if isinstance(m, MessageDeleted)] == [1]
    assert index.counts(T0 + 61_000) == (1, 0, 0)
    outcome = receive(index, T0 + 91_000)  # "new" has expired too; the receive drops it
    assert outcome.deliveries == []
    assert outcome.mutations == [MessageDeleted(queue_id=1, seq=2)]
    assert index.counts(T0 + 91_000) == (0, 0, 0)


def deleted_seqs(change) -> list[int]:
    return sorted(m.seq for m in change.mutations if isinstance(m, MessageDeleted))


@both
def test_retention_reaches_received_messages(fifo):
    """In flight or visible again after a receive: expired by the sweep, not by a receive."""
    index = make(fifo, MessageRetentionPeriod="60")
    send(index, T0, "in flight", group="A")
    send(index, T0, "returned", group="B")
    send(index, T0 + 30_000, "young", group="C")
    assert [d.seq for d in receive(index, T0, visibility_timeout=600).deliveries] == [1]
    assert [d.seq for d in receive(index, T0 + 1_000, visibility_timeout=1).deliveries] == [2]
    assert index.counts(T0 + 59_000) == (2, 1, 0)
    assert index.expire(T0 + 59_999).mutations == []
    assert deleted_seqs(index.expire(T0 + 61_000)) == [1, 2]
    assert index.counts(T0 + 61_000) == (1, 0, 0)
    assert index.oldest_enqueued_at(T0 + 61_000) == T0 + 30_000
    assert deleted_seqs(index.expire(T0 + 91_000)) == [3]
    assert index.counts(T0 + 91_000) == (0, 0, 0)
    assert index.next_wakeup(T0 + 91_000) is None


@both
def test_an_expired_in_flight_message_is_gone_for_its_handle(fifo):
    index = make(fifo, MessageRetentionPeriod="60")
    send(index, T0, "m")
    (delivery,) = receive(index, T0, visibility_timeout=600).deliveries
    index.expire(T0 + 61_000)
    assert index.delete(T0 + 62_000, delivery.receipt_handle).mutations == []
    code, _ = refused(lambda: index.change_visibility(T0 + 62_000, delivery.receipt_handle, 5))
    assert code == INVALID_PARAMETER_VALUE
    assert receive(index, T0 + 700_000).deliveries == []


@both
def test_retention_reaches_messages_moved_into_a_dead_letter_queue(fifo):
    """A standard DLQ counts retention from the original send; a FIFO one from the move."""
    dlq = make(fifo, queue_id=2, MessageRetentionPeriod="60")
    policy = json.dumps({"deadLetterTargetArn": dlq.arn, "maxReceiveCount": 1})
    source = make(fifo, RedrivePolicy=policy)
    send(source, T0, "poison")
    receive(source, T0, visibility_timeout=0, dead_letter=dlq)
    outcome = receive(source, T0 + 40_000, dead_letter=dlq)  # moved at T0 + 40 s
    assert [type(m) for m in outcome.mutations] == [MessageMoved]
    (moved,) = outcome.mutations
    assert dlq.counts(T0 + 40_000) == (1, 0, 0)
    assert dlq.expire(T0 + 59_999).mutations == []
    if fifo:
        assert dlq.expire(T0 + 99_999).mutations == []
        assert deleted_seqs(dlq.expire(T0 + 100_000)) == [moved.target_seq]
    else:
        assert deleted_seqs(dlq.expire(T0 + 61_000)) == [moved.target_seq]
    assert dlq.counts(T0 + 100_000) == (0, 0, 0)


@both
def test_retention_of_received_messages_is_bounded_per_call(fifo):
    index = make(fifo, MessageRetentionPeriod="60")
    for n in range(25):
        send(index, T0, f"m{n}", group=f"g{n}")
    for _ in range(3):
        receive(index, T0, max_messages=10, visibility_timeout=600)
    assert index.counts(T0) == (0, 25, 0)
    rounds = [deleted_seqs(index.expire(T0 + 61_000, limit=10)) for _ in range(4)]
    assert [len(r) for r in rounds] == [10, 10, 5, 0]
    assert sorted(seq for r in rounds for seq in r) == list(range(1, 26))
    assert index.counts(T0 + 61_000) == (0, 0, 0)


@both
def test_retention_bookkeeping_does_not_pile_up_behind_a_long_lived_message(fifo):
    """Deleted messages leave entries to skip in the retention heaps; they are rebuilt."""
    index = make(fifo)
    send(index, T0, "stays", group="stays")
    receive(index, T0, visibility_timeout=43_200)
    for n in range(5_000):
        send(index, T0, f"m{n}", group=f"g{n}")
        (delivery,) = receive(index, T0).deliveries
        index.delete(T0, delivery.receipt_handle)
    assert len(index._received) == 1
    assert len(index._received_by_seq) + len(index._received_by_time) <= 2 + 1024


def test_standard_queue_delays_are_not_retroactive():
    """AWS: "For standard queues, the per-queue delay setting is not retroactive"."""
    index = make(False, DelaySeconds="60")
    send(index, T0, "delayed")
    send(index, T0, "on time", delay_seconds=0)
    index.update_settings(parse_create({}), T0 + 1_000)
    assert index.counts(T0 + 1_000) == (1, 0, 1)
    assert index.next_wakeup(T0 + 1_000) == T0 + 60_000
    index.update_settings(parse_create({"DelaySeconds": "900"}), T0 + 2_000)
    assert index.counts(T0 + 2_000) == (1, 0, 1)
    assert sorted(d.seq for d in receive(index, T0 + 60_000, max_messages=10).deliveries) == [
        1,
        2,
    ]


def test_delays_per_queue_and_per_message():
    index = make(False, DelaySeconds="5")
    send(index, T0, "queue delay")
    send(index, T0, "own delay", delay_seconds=0)
    send(index, T0, "longer", delay_seconds=20)
    assert index.counts(T0) == (1, 0, 2)
    assert index.next_wakeup(T0) == T0 + 5_000
    assert [d.seq for d in receive(index, T0, max_messages=10).deliveries] == [2]
    assert [d.seq for d in receive(index, T0 + 5_000, max_messages=10).deliveries] == [1]
    assert index.next_wakeup(T0 + 5_000) == T0 + 20_000


def test_fifo_uses_the_queue_delay():
    index = make(True, DelaySeconds="3")
    send(index, T0, "a")
    assert index.counts(T0) == (0, 0, 1)
    assert receive(index, T0 + 2_999).deliveries == []
    assert len(receive(index, T0 + 3_000).deliveries) == 1


@both
def test_receivers_are_woken_by_sends_and_visibility_changes(fifo):
    wakes = []
    index = make(fifo, wake=lambda: wakes.append(1))
    outcome = index.send(T0, SendRequest(body="m", group_id="g" if fifo else None))
    assert wakes == []
    outcome.on_durable()
    assert len(wakes) == 1
    handle = receive(index, T0).deliveries[0].receipt_handle
    index.change_visibility(T0, handle, 0).on_durable()
    assert len(wakes) == 2


@both
def test_receivers_are_woken_when_retention_frees_a_message_or_room(fifo):
    """An in-flight message past its retention period goes: on a FIFO queue the next of its
    group becomes receivable, on a standard one at its in-flight limit there is room again.
    Long polls must hear of it as they hear of a delete (once the deletion is durable)."""
    wakes = []
    attributes = {"MessageRetentionPeriod": "60"}
    if fifo:
        attributes |= {"FifoQueue": "true", "ContentBasedDeduplication": "true"}
    index = new_index(
        queue_id=1,
        name="q.fifo" if fifo else "q",
        arn=ARN + ("q.fifo" if fifo else "q"),
        settings=parse_create(attributes),
        signer=SIGNER,
        wake_receivers=lambda: wakes.append(1),
        in_flight_limit=1,
    )
    send(index, T0, "head")
    assert len(receive(index, T0, visibility_timeout=600).deliveries) == 1
    send(index, T0 + 30_000, "next")
    assert receive(index, T0 + 50_000).deliveries == []  # group locked / limit reached
    wakes.clear()
    assert index.expire(T0 + 59_999).mutations == []
    expired = index.expire(T0 + 61_000)
    assert deleted_seqs(expired) == [1]
    assert wakes == []  # not before the deletion is durable
    expired.on_durable()
    assert wakes == [1]
    assert [d.seq for d in receive(index, T0 + 61_000).deliveries] == [2]
    wakes.clear()
    index.expire(T0 + 62_000).on_durable()  # nothing gone: nobody to wake
    assert wakes == []


@both
def test_dead_letter_after_max_receive_count(fifo):
    dlq = make(fifo, queue_id=2)
    policy = json.dumps({"deadLetterTargetArn": dlq.arn, "maxReceiveCount": 2})
    source = make(fifo, VisibilityTimeout="1", RedrivePolicy=policy)
    send(source, T0, "poison")
    for attempt in range(2):
        assert len(receive(source, T0 + attempt * 1_000, dead_letter=dlq).deliveries) == 1
    assert receive(source, T0 + 2_000).deliveries  # no DLQ at hand: delivered again
    outcome = source.receive(T0 + 3_000, dead_letter=dlq)
    assert outcome.deliveries == []
    (move,) = outcome.mutations
    assert isinstance(move, MessageMoved)
    assert (move.source_queue_id, move.source_seq, move.target_queue_id) == (1, 1, 2)
    assert move.source_arn == source.arn
    assert move.enqueued_at == (T0 + 3_000 if fifo else None)  # FIFO restarts retention
    assert source.counts(T0 + 3_000) == (0, 0, 0)
    assert dlq.counts(T0 + 3_000) == (0, 0, 0)
    outcome.on_durable()
    (moved,) = receive(dlq, T0 + 3_000).deliveries
    assert (moved.seq, moved.receive_count) == (move.target_seq, 4)
    assert moved.first_receive_at is None  # the source's first receive stands


@both
def test_closed_queue_drops_late_activations(fifo):
    index = make(fifo)
    outcome = index.send(T0, SendRequest(body="m", group_id="g" if fifo else None))
    index.close()
    outcome.on_durable()
    assert index.counts(T0) == (0, 0, 0)


@both
def test_batch_reports_each_entry(fifo):
    index = make(fifo)
    group = "g" if fifo else None
    outcome = index.send_batch(
        T0, [SendRequest(body="ok", group_id=group), SendRequest(body="", group_id=group)]
    )
    assert outcome.results[0].seq == 1
    assert isinstance(outcome.results[1], SqsError)
    with pytest.raises(SqsError):
        index.send(T0, SendRequest(body="", group_id=group))


@given(
    fifo=st.booleans(),
    sends=st.lists(st.integers(0, 3), min_size=1, max_size=30),
    batch=st.integers(1, 10),
)
@settings(deadline=None)
def test_draining_returns_every_message_exactly_once(fifo, sends, batch):
    """Whatever the delays, receive-and-delete until empty yields each message once."""
    index = make(fifo, VisibilityTimeout="600")
    sent = []
    for number, delay in enumerate(sends):
        extra = {} if fifo else {"delay_seconds": delay}
        sent.append(send(index, T0, f"m{number}", group=f"g{number % 3}", **extra))
    received = []
    now = T0 + 3_000
    while True:
        outcome = receive(index, now, max_messages=batch)
        if not outcome.deliveries:
            break
        assert len(outcome.deliveries) <= batch
        for delivery in outcome.deliveries:
            received.append(delivery.seq)
            index.delete(now, delivery.receipt_handle)
    assert sorted(received) == sorted(sent)
    assert index.counts(now) == (0, 0, 0)


# ---------------------------------------------------------------------- copies (SNS fan-out)

copy_requests = st.lists(
    st.builds(
        SendRequest,
        body=st.sampled_from(["", "a", "b", "x" * 1100, "bell\x07"]),
        group_id=st.sampled_from([None, "g", "h", "bad group!"]),
        deduplication_id=st.sampled_from([None, "d1", "d2"]),
        delay_seconds=st.sampled_from([None, 0, 5, 901]),
        sender_id=st.just("me"),
    ),
    max_size=12,
)


def copy_outcome(index: QueueIndex, now: int, request: SendRequest, copies: SentCopies) -> object:
    """send_copy as the fan-out calls it: the message's own rules, then the queue's."""
    try:
        validate_message(request)
        index.send_copy(now, request, message_size(request), copies)
    except SqsError as error:
        return (error.code, error.message)
    return None


@given(
    fifo=st.booleans(), requests=copy_requests, settings_size=st.sampled_from(["1024", "262144"])
)
@settings(deadline=None)
def test_a_copy_is_what_send_makes(fifo, requests, settings_size):
    """send_copy accepts, refuses and records exactly what send does, one request at a time."""
    attributes = {"MaximumMessageSize": settings_size}
    sent, copied = make(fifo, **attributes), make(fifo, **attributes)
    copies = SentCopies()
    expected = []
    durable = []  # both sides become durable at the same moment, as in one commit
    for offset, request in enumerate(requests):
        now = T0 + offset * 1000
        # The same clock on both sides: send() moves its queue's clock before it validates,
        # while the fan-out validates a message once, before any queue sees it. Without
        # this, a delayed message activated with the others could count as delayed on one
        # side only, and come back in another (equally valid) order.
        sent.counts(now)
        copied.counts(now)
        try:
            outcome = sent.send(now, request)
        except SqsError as error:
            wanted: object = (error.code, error.message)
        else:
            wanted = None
            expected.extend(outcome.mutations)
            durable.append(outcome.on_durable)
        assert copy_outcome(copied, now, request, copies) == wanted
    assert copies.mutations == expected
    for on_durable in durable:
        on_durable()
    copies.on_durable()
    later = T0 + 1_000_000
    assert sent.counts(later) == copied.counts(later)
    drained = [receive(index, later, max_messages=10).deliveries for index in (sent, copied)]
    assert drained[0] == drained[1]


def test_copies_become_receivable_together_once_durable():
    woken = []
    queues = [make(False, queue_id=n, wake=lambda n=n: woken.append(n)) for n in (1, 2)]
    copies = SentCopies()
    for index in [*queues, queues[0]]:
        index.send_copy(T0, SendRequest(body="m"), 1, copies)
    assert [type(m) for m in copies.mutations] == [MessageInserted] * 3
    assert all(index.counts(T0) == (0, 0, 0) for index in queues)
    copies.on_durable()
    assert [index.counts(T0) for index in queues] == [(2, 0, 0), (1, 0, 0)]
    assert woken == [1, 2]  # one wake-up per queue, however many copies it took
    copies.on_durable()  # once only
    assert [index.counts(T0).visible for index in queues] == [2, 1]


def test_a_fifo_duplicate_copy_adds_nothing():
    index = make(True)
    copies = SentCopies()
    request = SendRequest(body="m", group_id="g", deduplication_id="d")
    index.send_copy(T0, request, 1, copies)
    index.send_copy(T0 + 1, request, 1, copies)
    assert [type(m).__name__ for m in copies.mutations] == [
        "MessageInserted",
        "DeduplicationRecorded",
    ]
    copies.on_durable()
    assert index.counts(T0 + 1) == (1, 0, 0)


# ---------------------------------------------------------------------- the in-flight limit


def limited(fifo: bool, limit: int) -> QueueIndex:
    attributes = {"FifoQueue": "true", "ContentBasedDeduplication": "true"} if fifo else {}
    name = "limited.fifo" if fifo else "limited"
    return new_index(
        queue_id=1,
        name=name,
        arn=ARN + name,
        settings=parse_create(attributes),
        signer=SIGNER,
        in_flight_limit=limit,
    )


def test_the_default_limit_is_aws_quota():
    assert MAX_IN_FLIGHT_MESSAGES == 120_000
    with pytest.raises(ValueError):
        limited(False, 0)


@both
def test_receives_stop_at_the_in_flight_limit(fifo):
    index = limited(fifo, 3)
    for number in range(5):
        send(index, T0, f"m{number}", group=f"g{number}")  # FIFO: five receivable groups
    first = receive(index, T0, max_messages=10)
    assert len(first.deliveries) == 3  # capped: only 3 may be in flight
    assert index.counts(T0) == (2, 3, 0)
    assert receive(index, T0, max_messages=10).deliveries == []
    if fifo:  # AWS: "Amazon SQS does not return an error" for FIFO queues
        index.check_in_flight_limit(long_poll=False)
    else:  # short polls get OverLimit, 403
        with pytest.raises(SqsError) as raised:
            index.check_in_flight_limit(long_poll=False)
        assert (raised.value.code, raised.value.status) == (OVER_LIMIT, 403)
        assert raised.value.message == OVER_LIMIT_MESSAGE
    index.check_in_flight_limit(long_poll=True)  # long polls: no messages, no error
    # A delete makes room for exactly one more.
    index.delete(T0, first.deliveries[0].receipt_handle)
    assert len(receive(index, T0, max_messages=10).deliveries) == 1
    assert index.counts(T0).in_flight == 3
    # A visibility timeout that passes makes room too (the queue's default: 30 s).
    later = T0 + 30_001
    assert index.counts(later).in_flight == 0
    assert len(receive(index, later, max_messages=10).deliveries) == 3
    assert index.counts(later).in_flight == 3


@both
def test_visibility_timeout_zero_receives_are_not_capped(fifo):
    index = limited(fifo, 1)
    for number in range(3):
        send(index, T0, f"m{number}", group=f"g{number}")
    assert len(receive(index, T0, max_messages=10).deliveries) == 1
    peeked = receive(index, T0, max_messages=10, visibility_timeout=0).deliveries
    assert len(peeked) == 2  # nothing goes in flight, so the limit does not apply
    assert index.counts(T0).in_flight == 1


@settings(max_examples=60)
@given(
    fifo=st.booleans(),
    limit=st.integers(1, 6),
    steps=st.lists(
        st.tuples(st.sampled_from(["receive", "delete", "wait"]), st.integers(1, 10)),
        max_size=25,
    ),
)
def test_never_more_in_flight_than_the_limit(fifo, limit, steps):
    index = limited(fifo, limit)
    now = T0
    for number in range(12):
        send(index, now, f"m{number}", group=f"g{number % 4}")
    handles: list[str] = []
    for action, amount in steps:
        if action == "receive":
            outcome = receive(index, now, max_messages=amount, visibility_timeout=5)
            handles += [d.receipt_handle for d in outcome.deliveries]
        elif action == "delete" and handles:
            try:
                index.delete(now, handles.pop(amount % len(handles)))
            except SqsError:
                assert fifo  # a FIFO handle whose visibility timeout has passed
        else:
            now += amount * 1_000
        in_flight = index.counts(now).in_flight
        assert in_flight <= limit
        if in_flight < limit:
            index.check_in_flight_limit(long_poll=False)
