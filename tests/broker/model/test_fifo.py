"""FIFO queues: group order and locking, deduplication, attempt ids; a reference model."""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from broker.model.errors import INVALID_PARAMETER_VALUE, MESSAGE_NOT_INFLIGHT, SqsError
from broker.model.fifo import FifoIndex
from broker.model.messages import SendRequest, sequence_number
from broker.model.mutations import (
    DeduplicationRecorded,
    MessageDelivered,
    MessageInserted,
    ReceiveAttemptRecorded,
    VisibilityChanged,
)
from broker.model.outcomes import RestoredMessage, SentMessage
from broker.model.settings import QueueSettings
from broker.model.signing import Signer

SIGNER = Signer(b"test key, 32 bytes long........")
T0 = 1_700_000_000_000
MINUTES_5 = 300_000


def make(**settings) -> FifoIndex:
    return FifoIndex(
        queue_id=1,
        name="q.fifo",
        arn="arn:aws:sqs:us-east-1:123456789012:q.fifo",
        settings=QueueSettings(fifo=True, content_based_deduplication=True, **settings),
        signer=SIGNER,
        purge_interval_ms=0,
    )


def send(index: FifoIndex, now: int, body: str, group: str, dedup: str | None = None):
    outcome = index.send(now, SendRequest(body=body, group_id=group, deduplication_id=dedup))
    outcome.on_durable()
    result = outcome.results[0]
    assert isinstance(result, SentMessage)
    return result


def seqs(outcome) -> list[int]:
    return [d.seq for d in outcome.deliveries]


def test_group_order_and_lock():
    index = make()
    for n in range(3):
        send(index, T0, f"a{n}", "A")
    send(index, T0, "b0", "B")
    first = index.receive(T0, max_messages=2)
    assert seqs(first) == [1, 2]  # one group first, in order
    assert seqs(index.receive(T0, max_messages=10)) == [4]  # A is locked
    assert seqs(index.receive(T0, max_messages=10)) == []
    index.delete(T0, first.deliveries[0].receipt_handle)
    assert seqs(index.receive(T0)) == []  # message 2 is still in flight
    index.delete(T0, first.deliveries[1].receipt_handle)
    assert seqs(index.receive(T0)) == [3]


def test_group_stays_locked_while_a_later_message_is_in_flight():
    index = make()
    send(index, T0, "a0", "A")
    send(index, T0, "a1", "A")
    first = index.receive(T0, max_messages=2).deliveries
    index.change_visibility(T0, first[0].receipt_handle, 0)
    assert index.counts(T0) == (1, 1, 0)
    assert seqs(index.receive(T0, max_messages=10)) == []  # a1 is still out
    index.delete(T0, first[1].receipt_handle)
    assert seqs(index.receive(T0, max_messages=10)) == [1]


def test_a_message_back_from_its_timeout_comes_first_again():
    index = make(visibility_timeout=1)
    send(index, T0, "a0", "A")
    send(index, T0, "a1", "A")
    assert seqs(index.receive(T0)) == [1]
    assert seqs(index.receive(T0 + 1_000, max_messages=10)) == [1, 2]


def test_batch_fills_from_several_groups_oldest_head_first():
    index = make()
    for body, group in [("b0", "B"), ("a0", "A"), ("b1", "B"), ("c0", "C")]:
        send(index, T0, body, group)
    assert seqs(index.receive(T0, max_messages=10)) == [1, 3, 2, 4]


def test_duplicate_send_returns_the_original():
    index = make()
    original = send(index, T0, "x", "A", dedup="d1")
    outcome = index.send(T0 + 1, SendRequest(body="y", group_id="B", deduplication_id="d1"))
    assert outcome.mutations == []
    assert outcome.results == [msgspec.structs.replace(original, duplicate=True)]
    assert original.sequence_number == sequence_number(original.seq)
    outcome.on_durable()
    assert index.counts(T0 + 1) == (1, 0, 0)
    # Content-based: the same body is the same id; the window outlives the message.
    handle = index.receive(T0).deliveries[0].receipt_handle
    index.delete(T0, handle)
    assert send(index, T0 + 2, "x", "A").duplicate is False  # no explicit id: content hash
    assert send(index, T0 + 3, "x", "A").duplicate is True
    assert send(index, T0 + MINUTES_5 + 2, "x", "A").duplicate is False


def test_send_records_deduplication_durably():
    index = make()
    outcome = index.send(T0, SendRequest(body="x", group_id="A"))
    kinds = [type(m) for m in outcome.mutations]
    assert kinds == [MessageInserted, DeduplicationRecorded]
    (record,) = [m for m in outcome.mutations if isinstance(m, DeduplicationRecorded)]
    assert record.expires_at == T0 + MINUTES_5


def test_message_group_scope():
    index = make(deduplication_scope="messageGroup")
    assert not send(index, T0, "x", "A", dedup="d").duplicate
    assert not send(index, T0, "x", "B", dedup="d").duplicate
    assert send(index, T0, "x", "B", dedup="d").duplicate


def test_receive_request_attempt_id():
    index = make(visibility_timeout=10)
    send(index, T0, "a0", "A")
    send(index, T0, "a1", "A")
    first = index.receive(T0, max_messages=10, attempt_id="try-1")
    retry = index.receive(T0 + 5_000, max_messages=10, attempt_id="try-1")
    assert retry.deliveries == first.deliveries
    assert retry.mutations == [
        *(VisibilityChanged(queue_id=1, seq=seq, visible_at=T0 + 15_000) for seq in (1, 2)),
        ReceiveAttemptRecorded(
            queue_id=1,
            attempt_id="try-1",
            seqs=[1, 2],
            deadlines=[T0 + 15_000, T0 + 15_000],
            expires_at=T0 + MINUTES_5,
        ),
    ]
    index.change_visibility(T0 + 6_000, first.deliveries[1].receipt_handle, 20)
    # Modified: the retry is an ordinary receive (and the group is still locked).
    assert index.receive(T0 + 7_000, max_messages=10, attempt_id="try-1").deliveries == []
    with pytest.raises(SqsError) as raised:
        index.receive(T0, attempt_id="bad id")
    assert raised.value.code == INVALID_PARAMETER_VALUE


def restart(
    now: int,
    received: list,
    *,
    visibility_timeout: int = 10,
    changed: dict[int, int] | None = None,
    gone: tuple[int, ...] = (),
) -> FifoIndex:
    """The index a restart at ``now`` rebuilds from what the receives ``received`` stored:
    messages 1 and 2 of group A, 3 of group B, all sent at T0, the receive records and the
    attempts. ``changed``: seq -> a deadline a later visibility change stored; ``gone``:
    seqs deleted since."""
    mutations = [m for outcome in received for m in outcome.mutations]
    delivered = {m.seq: m for m in mutations if isinstance(m, MessageDelivered)}
    rows = []
    for seq in (1, 2, 3):
        group = "A" if seq < 3 else "B"
        record = delivered.get(seq)
        if seq in gone:
            continue
        if record is None:
            rows.append(RestoredMessage(seq, T0, 0, T0, T0, group))
            continue
        visible_at = (changed or {}).get(seq, record.visible_at)
        rows.append(RestoredMessage(seq, visible_at, record.receive_count, T0, T0, group))
    index = make(visibility_timeout=visibility_timeout)
    index.restore(rows, now)
    for m in mutations:
        if isinstance(m, ReceiveAttemptRecorded):
            index.restore_attempt(m.attempt_id, m.seqs, m.deadlines, m.expires_at, now)
    return index


def received_before_the_restart(visibility_timeout: int = 10) -> list:
    index = make(visibility_timeout=visibility_timeout)
    for body in ("a0", "a1", "b0"):
        send(index, T0, body, body[0].upper())
    return [
        index.receive(T0, max_messages=2, attempt_id="try-a"),
        index.receive(T0, max_messages=2, attempt_id="try-b"),
    ]


def test_a_receive_attempt_is_retried_after_a_restart():
    # The answer a crash cut off: its retry gets the same messages and receipt handles.
    lost = received_before_the_restart()
    assert [seqs(outcome) for outcome in lost] == [[1, 2], [3]]
    index = restart(T0 + 2_000, lost)
    retry = index.receive(T0 + 2_000, max_messages=2, attempt_id="try-a")
    assert seqs(retry) == [1, 2]
    assert [d.receipt_handle for d in retry.deliveries] == [
        d.receipt_handle for d in lost[0].deliveries
    ]
    assert [d.receive_count for d in retry.deliveries] == [1, 1]
    assert retry.mutations[-1] == ReceiveAttemptRecorded(
        queue_id=1,
        attempt_id="try-a",
        seqs=[1, 2],
        deadlines=[T0 + 12_000, T0 + 12_000],
        expires_at=T0 + MINUTES_5,
    )
    index.delete(T0 + 2_000, retry.deliveries[0].receipt_handle)  # the handles work
    assert seqs(index.receive(T0 + 2_000, max_messages=2, attempt_id="try-b")) == [3]


def test_a_receive_attempt_whose_messages_changed_is_not_kept_by_a_restart():
    lost = received_before_the_restart()
    # Message 3's visibility was changed after the receive: its retry receives anew.
    index = restart(T0 + 2_000, lost, changed={3: T0 + 20_000})
    assert index.receive(T0 + 2_000, attempt_id="try-b").deliveries == []
    # Message 2 was deleted: the retry of its receive receives anew (message 1, a new handle).
    index = restart(T0 + 2_000, lost, gone=(2,))
    retry = index.receive(T0 + 2_000, max_messages=2, attempt_id="try-a")
    assert retry.deliveries == []  # group A is locked by message 1, received before
    assert index._attempts.keys() == {"try-b"}
    # Visible again by the restart (the timeout passed): nothing for a retry to return.
    assert restart(T0 + 11_000, lost)._attempts == {}


def test_a_receive_attempt_is_not_kept_past_its_5_minutes_by_a_restart():
    lost = received_before_the_restart(visibility_timeout=600)
    assert restart(T0 + MINUTES_5 - 1, lost, visibility_timeout=600)._attempts.keys() == {
        "try-a",
        "try-b",
    }
    index = restart(T0 + MINUTES_5, lost, visibility_timeout=600)
    assert index._attempts == {}
    assert index.receive(T0 + MINUTES_5, attempt_id="try-a").deliveries == []


def test_attempt_ids_time_out():
    index = make(visibility_timeout=600)
    send(index, T0, "a", "A")
    index.receive(T0, attempt_id="t")
    index.expire(T0 + MINUTES_5)
    assert index.receive(T0 + MINUTES_5 + 1, attempt_id="t").deliveries == []


def test_an_attempt_id_is_forgotten_once_a_retry_could_not_return_its_messages():
    # A consumer naming each receive (as retry-safe clients do) must not leave a record of
    # every receive of the last 5 minutes behind: only those a retry could still return.
    index = make(visibility_timeout=30)
    for n in range(100):
        send(index, T0, f"m{n}", "A")
        received = index.receive(T0, max_messages=10, attempt_id=f"deleted-{n}")
        index.delete(T0, received.deliveries[0].receipt_handle)
    send(index, T0, "last", "A")
    given_back = index.receive(T0, attempt_id="given-back")
    index.change_visibility(T0, given_back.deliveries[0].receipt_handle, 0)
    index.receive(T0, attempt_id="timed-out")
    index.expire(T0 + 30_000)  # its visibility timeout has passed
    index.receive(T0 + 30_000, visibility_timeout=0, attempt_id="nothing-in-flight")
    assert index._attempts == {}
    assert index._attempt_of == {}
    # One still in flight is kept, and its retry returns the same receive.
    kept = index.receive(T0 + 31_000, attempt_id="kept")
    assert index.receive(T0 + 32_000, attempt_id="kept").deliveries == kept.deliveries
    assert list(index._attempts) == ["kept"]


def test_a_delayed_message_ends_its_group_batch():
    index = make(delay_seconds=2)
    send(index, T0, "a0", "A")
    send(index, T0 + 1_500, "a1", "A")
    assert seqs(index.receive(T0 + 500, max_messages=10)) == []
    assert index.next_wakeup(T0 + 500) == T0 + 2_000
    assert seqs(index.receive(T0 + 2_000, max_messages=10, visibility_timeout=0)) == [1]
    assert seqs(index.receive(T0 + 3_500, max_messages=10)) == [1, 2]


# ---------------------------------------------------------------------- retroactive delays
# AWS, "Amazon SQS delay queues": "For FIFO queues, the per-queue delay setting is
# retroactive -- changing the setting affects the delay of messages already in the queue."


def delay(index: FifoIndex, now: int, seconds: int) -> None:
    settings = msgspec.structs.replace(index.settings, delay_seconds=seconds)
    index.update_settings(settings, now)


def test_a_shorter_queue_delay_frees_messages_already_sent():
    index = make(delay_seconds=60)
    send(index, T0, "a0", "A")
    send(index, T0 + 30_000, "a1", "A")
    send(index, T0 + 30_000, "b0", "B")
    assert index.counts(T0 + 45_000) == (0, 0, 3)
    delay(index, T0 + 45_000, 40)  # a0 was due at T0 + 40 s, the others at T0 + 70 s
    assert index.counts(T0 + 45_000) == (1, 0, 2)
    assert index.next_wakeup(T0 + 45_000) == T0 + 70_000
    assert seqs(index.receive(T0 + 45_000, max_messages=10)) == [1]
    delay(index, T0 + 50_000, 0)
    assert index.counts(T0 + 50_000) == (2, 1, 0)
    assert index.next_wakeup(T0 + 50_000) == T0 + 75_000  # a0's visibility timeout (30 s)
    assert seqs(index.receive(T0 + 50_000, max_messages=10)) == [3]  # A is locked by a0


def test_a_longer_queue_delay_hides_messages_not_yet_received():
    index = make()
    send(index, T0, "a0", "A")
    send(index, T0 + 5_000, "b0", "B")
    send(index, T0 + 5_000, "c0", "C")
    (returned,) = index.receive(T0 + 5_000, visibility_timeout=0).deliveries  # a0, received
    assert returned.seq == 1
    delay(index, T0 + 10_000, 60)
    assert index.counts(T0 + 10_000) == (1, 0, 2)  # received once: not delayed again
    assert index.next_wakeup(T0 + 10_000) == T0 + 65_000
    assert seqs(index.receive(T0 + 10_000, max_messages=10, visibility_timeout=0)) == [1]
    assert seqs(index.receive(T0 + 64_999, max_messages=10, visibility_timeout=0)) == [1]
    assert seqs(index.receive(T0 + 65_000, max_messages=10)) == [1, 2, 3]


def test_a_send_committed_across_a_delay_change_gets_the_new_delay():
    index = make(delay_seconds=60)
    outcome = index.send(T0, SendRequest(body="a0", group_id="A"))
    delay(index, T0 + 1_000, 0)  # while the insert is being committed
    outcome.on_durable()
    assert seqs(index.receive(T0 + 1_000)) == [1]
    outcome = index.send(T0 + 2_000, SendRequest(body="b0", group_id="B"))
    delay(index, T0 + 3_000, 10)
    outcome.on_durable()
    assert index.counts(T0 + 3_000) == (0, 1, 1)
    assert index.next_wakeup(T0 + 3_000) == T0 + 12_000


def test_changing_the_delay_back_restores_the_due_times():
    index = make(delay_seconds=30)
    send(index, T0, "a0", "A")
    delay(index, T0 + 1_000, 900)
    delay(index, T0 + 2_000, 30)
    assert index.next_wakeup(T0 + 2_000) == T0 + 30_000
    assert seqs(index.receive(T0 + 29_999)) == []
    assert seqs(index.receive(T0 + 30_000)) == [1]


@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("send"), st.sampled_from("AB")),
            st.tuples(st.just("delay"), st.sampled_from([0, 1, 5, 30])),
            st.tuples(st.just("wait"), st.integers(0, 3_000)),
        ),
        max_size=40,
    )
)
@settings(deadline=None)
def test_fresh_messages_are_due_at_their_send_plus_the_current_delay(script):
    """Never early; late by less than a second at most (the timeline dates visible ones)."""
    index = make()
    now = T0
    sent: list[int] = []
    current = 0
    for step, (action, value) in enumerate(script):
        if action == "send":
            send(index, now, f"{step}", str(value))
            sent.append(now)
        elif action == "delay":
            delay(index, now, int(value))
            current = int(value) * 1_000
        else:
            now += int(value)
        delayed = index.counts(now).delayed
        surely_due = sum(at + current <= now - 1_000 for at in sent)
        due = sum(at + current <= now for at in sent)
        assert len(sent) - due <= delayed <= len(sent) - surely_due


RETENTION_S = 60  # the shortest MessageRetentionPeriod AWS allows


@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("send"), st.integers(1, 3), st.sampled_from("ABC")),
            st.tuples(st.just("receive"), st.integers(1, 10), st.sampled_from([0, 5, 30, 120])),
            st.tuples(st.just("wait"), st.integers(0, 90), st.none()),
            st.tuples(st.just("delay"), st.sampled_from([0, 5, 45, 61, 300]), st.none()),
        ),
        max_size=40,
    ),
    st.sampled_from([0, 10, 61, 300]),
)
@settings(deadline=None)
def test_after_each_sweep_the_counts_are_those_of_the_unexpired_messages(steps, first_delay):
    """Sends, receives, queue delay changes (retroactive) and time steps, in any order:
    after the retention sweep, the counts and the oldest message's age are what a
    brute-force look at the unexpired messages gives, a delayed message included (a delay
    can outlast the retention period). Time moves in whole seconds, the timeline's grain."""
    index = make(message_retention_period=RETENTION_S, delay_seconds=first_delay)
    now = T0
    current = first_delay * 1_000
    sent_at: dict[int, int] = {}
    deadline: dict[int, int] = {}  # received messages: the end of their visibility timeout
    for step, number, option in steps:
        if step == "send":
            outcome = index.send_batch(
                now, [SendRequest(body=f"{now}-{i}", group_id=option) for i in range(number)]
            )
            outcome.on_durable()
            for result in outcome.results:
                assert isinstance(result, SentMessage)
                sent_at[result.seq] = now
        elif step == "receive":
            outcome = index.receive(now, max_messages=number, visibility_timeout=option)
            outcome.on_durable()
            for delivery in outcome.deliveries:
                assert sent_at[delivery.seq] > now - RETENTION_S * 1_000
                deadline[delivery.seq] = now + option * 1_000
        elif step == "delay":
            delay(index, now, number)
            current = number * 1_000
        else:
            now += number * 1_000
        index.expire(now).on_durable()
        for seq in [seq for seq, at in sent_at.items() if at <= now - RETENTION_S * 1_000]:
            del sent_at[seq]
            deadline.pop(seq, None)
        in_flight = {seq for seq in sent_at if deadline.get(seq, now) > now}
        delayed = {seq for seq, at in sent_at.items() if seq not in deadline and at + current > now}
        visible = set(sent_at) - in_flight - delayed
        assert index.counts(now) == (len(visible), len(in_flight), len(delayed))
        assert index.oldest_enqueued_at(now) == min(sent_at.values(), default=None)


@given(
    st.lists(st.tuples(st.sampled_from("ABC"), st.booleans()), min_size=1, max_size=40),
)
@settings(deadline=None)
def test_groups_deliver_in_send_order_and_one_at_a_time(script):
    """Sends interleaved with receives that sometimes delete, sometimes abandon."""
    index = make(visibility_timeout=1)
    sent: dict[str, list[int]] = {}
    done: dict[str, list[int]] = {}
    now = T0
    for step, (group, delete) in enumerate(script):
        sent.setdefault(group, []).append(send(index, now, f"{group}{step}", group).seq)
        outcome = index.receive(now, max_messages=3)
        for delivery in outcome.deliveries:
            owner = next(g for g, s in sent.items() if delivery.seq in s)
            progress = done.setdefault(owner, [])
            # The next message of the group is always the oldest one not yet done.
            assert delivery.seq == next(s for s in sent[owner] if s not in progress)
            if delete:
                index.delete(now, delivery.receipt_handle)
                progress.append(delivery.seq)
            else:
                break  # abandon the rest of the batch: they time out together
        now += 1_000 if not delete else 0
    for group, progress in done.items():
        assert progress == sent[group][: len(progress)]


def refusal(call) -> SqsError | None:
    """Run ``call``; return the SqsError it raised, if any."""
    try:
        call()
    except SqsError as error:
        return error
    return None


@dataclass
class Ref:
    group: str
    visible_at: int
    count: int = 0
    receive_id: int = 0  # which receive delivered it last


class FifoQueueMachine(RuleBasedStateMachine):
    """The FIFO index against a reference that recomputes everything by scanning.

    The reference picks groups in the documented order (oldest head first, a group's
    consecutive visible messages in send order), so receives are compared exactly.
    """

    handles = Bundle("handles")

    def __init__(self) -> None:
        super().__init__()
        self.index = make(visibility_timeout=5)
        self.now = T0
        self.ref: dict[int, Ref] = {}
        self.current: dict[int, str] = {}  # seq -> the handle that may delete it
        self.receives = 0

    def in_flight(self, message: Ref) -> bool:
        return message.count > 0 and message.visible_at > self.now

    def expected_receive(self, most: int) -> list[int]:
        groups: dict[str, list[int]] = {}
        for seq in sorted(self.ref):
            groups.setdefault(self.ref[seq].group, []).append(seq)
        eligible = [
            members
            for members in groups.values()
            if not any(self.in_flight(self.ref[s]) for s in members)
        ]
        chosen: list[int] = []
        for members in sorted(eligible, key=lambda m: m[0]):
            for seq in members:
                if len(chosen) == most or self.ref[seq].visible_at > self.now:
                    break
                chosen.append(seq)
        return chosen

    @rule(group=st.sampled_from("ABC"), count=st.integers(1, 3))
    def send(self, group, count):
        outcome = self.index.send_batch(
            self.now,
            [SendRequest(body=f"{group}{self.now}{n}", group_id=group) for n in range(count)],
        )
        outcome.on_durable()
        for result in outcome.results:
            assert isinstance(result, SentMessage)
            assert not result.duplicate
            self.ref[result.seq] = Ref(group=group, visible_at=self.now)
        self.now += 1  # distinct bodies per millisecond: no content-based duplicates

    @rule(target=handles, most=st.integers(1, 10), timeout=st.sampled_from([None, 0, 2]))
    def receive(self, most, timeout):
        expected = self.expected_receive(most)
        outcome = self.index.receive(self.now, max_messages=most, visibility_timeout=timeout)
        assert seqs(outcome) == expected
        window = 1_000 * (5 if timeout is None else timeout)
        self.receives += 1
        for delivery in outcome.deliveries:
            message = self.ref[delivery.seq]
            message.count += 1
            message.visible_at = self.now + window
            message.receive_id = self.receives
            assert delivery.receive_count == message.count
            self.current[delivery.seq] = delivery.receipt_handle
        return [(d.seq, d.receipt_handle) for d in outcome.deliveries]

    @rule(batch=handles, pick=st.integers(0, 9))
    def delete(self, batch, pick):
        if not batch:
            return
        seq, handle = batch[pick % len(batch)]
        message = self.ref.get(seq)
        valid = message is not None and self.current.get(seq) == handle and self.in_flight(message)
        error = refusal(lambda: self.index.delete(self.now, handle))
        if error is not None:
            assert error.code == INVALID_PARAMETER_VALUE
            assert message is not None
            assert not valid
            return
        assert message is None or valid
        self.ref.pop(seq, None)

    @rule(batch=handles, pick=st.integers(0, 9), timeout=st.integers(0, 10))
    def change_visibility(self, batch, pick, timeout):
        if not batch:
            return
        seq, handle = batch[pick % len(batch)]
        message = self.ref.get(seq)
        error = refusal(lambda: self.index.change_visibility(self.now, handle, timeout))
        if error is not None:
            if message is not None and not self.in_flight(message):
                assert error.code == MESSAGE_NOT_INFLIGHT
            else:
                assert error.code == INVALID_PARAMETER_VALUE
                assert message is None or self.current[seq] != handle
            return
        assert message is not None
        assert self.in_flight(message)
        message.visible_at = self.now + timeout * 1_000

    @rule(step=st.integers(0, 8_000))
    def wait(self, step):
        self.now += step

    @rule()
    def purge(self):
        self.index.purge(self.now)
        self.ref.clear()

    @invariant()
    def counts_match(self):
        in_flight = sum(self.in_flight(m) for m in self.ref.values())
        assert self.index.counts(self.now) == (len(self.ref) - in_flight, in_flight, 0)

    @invariant()
    def never_two_in_flight_per_group_across_receives(self):
        # Several may share one receive; then nothing else of the group goes out until
        # they are all done: the in-flight messages of a group come from one receive.
        for group in "ABC":
            receives = {
                m.receive_id for m in self.ref.values() if m.group == group and self.in_flight(m)
            }
            assert len(receives) <= 1


FifoQueueMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None
)
TestFifoQueue = FifoQueueMachine.TestCase
