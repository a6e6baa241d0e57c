"""Standard queues, checked against a dictionary-based reference model."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from broker.model.errors import (
    INVALID_PARAMETER_VALUE,
    MESSAGE_NOT_INFLIGHT,
    SqsError,
)
from broker.model.messages import SendRequest
from broker.model.mutations import MessageDeleted
from broker.model.outcomes import RestoredMessage
from broker.model.settings import QueueSettings
from broker.model.signing import Signer
from broker.model.standard import StandardIndex

SIGNER = Signer(b"test key, 32 bytes long........")
T0 = 1_700_000_000_000


def make(**settings: int) -> StandardIndex:
    return StandardIndex(
        queue_id=1,
        name="q",
        arn="arn:aws:sqs:us-east-1:123456789012:q",
        settings=QueueSettings(**settings),
        signer=SIGNER,
        purge_interval_ms=0,
    )


def test_returned_messages_go_before_fresh_ones():
    index = make(visibility_timeout=1)
    for body in "abc":
        index.send(T0, SendRequest(body=body)).on_durable()
    assert [d.seq for d in index.receive(T0, max_messages=2).deliveries] == [1, 2]
    later = index.receive(T0 + 1_000, max_messages=10).deliveries
    assert [(d.seq, d.receive_count) for d in later] == [(1, 2), (2, 2), (3, 1)]


def test_zero_visibility_timeout_leaves_the_message_visible():
    index = make()
    index.send(T0, SendRequest(body="a")).on_durable()
    first = index.receive(T0, max_messages=10, visibility_timeout=0).deliveries
    assert [d.seq for d in first] == [1]  # not twice in one receive
    assert index.counts(T0) == (1, 0, 0)
    assert [d.receive_count for d in index.receive(T0).deliveries] == [2]


def test_receive_cost_does_not_depend_on_depth():
    """A receive touches the messages it returns, not the queue behind them."""
    index = make()
    outcome = index.send_batch(T0, [SendRequest(body=str(i)) for i in range(50_000)])
    outcome.on_durable()
    received = index.receive(T0, max_messages=10)
    assert len(received.deliveries) == 10
    assert len(received.mutations) == 10


def refusal(call) -> SqsError | None:
    """Run ``call``; return the SqsError it raised, if any."""
    try:
        call()
    except SqsError as error:
        return error
    return None


@dataclass
class Ref:
    """The reference model's view of one message."""

    visible_at: int
    count: int = 0


class StandardQueueMachine(RuleBasedStateMachine):
    """Random sends, receives, deletes, visibility changes, purges and waits.

    The reference keeps every message in a dict and answers every question by scanning it.
    Order is not checked (standard queues promise none); everything else is.
    """

    handles = Bundle("handles")

    def __init__(self) -> None:
        super().__init__()
        self.index = make(visibility_timeout=5)
        self.now = T0
        self.ref: dict[int, Ref] = {}

    def visible(self) -> set[int]:
        return {seq for seq, m in self.ref.items() if m.visible_at <= self.now}

    @rule(count=st.integers(1, 4), delay=st.sampled_from([None, 0, 2]))
    def send(self, count, delay):
        outcome = self.index.send_batch(
            self.now, [SendRequest(body="m", delay_seconds=delay) for _ in range(count)]
        )
        outcome.on_durable()
        for result in outcome.results:
            assert not isinstance(result, SqsError)
            self.ref[result.seq] = Ref(visible_at=self.now + 1_000 * (delay or 0))

    @rule(target=handles, most=st.integers(1, 10), timeout=st.sampled_from([None, 0, 1, 30]))
    def receive(self, most, timeout):
        visible = self.visible()
        deliveries = self.index.receive(
            self.now, max_messages=most, visibility_timeout=timeout
        ).deliveries
        seqs = [d.seq for d in deliveries]
        assert len(set(seqs)) == len(seqs)
        assert set(seqs) <= visible
        assert len(seqs) == min(most, len(visible))
        window = 1_000 * (5 if timeout is None else timeout)
        for delivery in deliveries:
            message = self.ref[delivery.seq]
            message.count += 1
            message.visible_at = self.now + window
            assert delivery.receive_count == message.count
            assert (delivery.first_receive_at is not None) == (message.count == 1)
        return [(d.seq, d.receipt_handle, d.receive_count) for d in deliveries]

    @rule(batch=handles, pick=st.integers(0, 9))
    def delete(self, batch, pick):
        if not batch:
            return
        seq, handle, _ = batch[pick % len(batch)]
        self.index.delete(self.now, handle)
        self.ref.pop(seq, None)  # stale handles still delete on standard queues

    @rule(batch=handles, pick=st.integers(0, 9), timeout=st.integers(0, 20))
    def change_visibility(self, batch, pick, timeout):
        if not batch:
            return
        seq, handle, count = batch[pick % len(batch)]
        message = self.ref.get(seq)
        error = refusal(lambda: self.index.change_visibility(self.now, handle, timeout))
        if error is not None:
            if message is None:
                assert error.code == INVALID_PARAMETER_VALUE
            elif message.visible_at <= self.now:
                assert error.code == MESSAGE_NOT_INFLIGHT
            else:  # in flight under a later receive: only its own handle re-times it
                assert error.code == INVALID_PARAMETER_VALUE
                assert count != message.count
            return
        assert message is not None
        assert message.visible_at > self.now
        assert count == message.count
        message.visible_at = self.now + timeout * 1_000

    @rule(step=st.integers(0, 40_000))
    def wait(self, step):
        wakeup = self.index.next_wakeup(self.now)
        pending = [m.visible_at for m in self.ref.values() if m.visible_at > self.now]
        # The wake-up is never later than the first message that becomes visible.
        assert wakeup == (min(pending) if pending else None)
        self.now += step

    @precondition(lambda self: self.ref)
    @rule()
    def purge(self):
        self.index.purge(self.now)
        self.ref.clear()

    @invariant()
    def counts_match(self):
        visible = self.visible()
        in_flight = {s for s, m in self.ref.items() if m.count and m.visible_at > self.now}
        delayed = set(self.ref) - visible - in_flight
        assert self.index.counts(self.now) == (len(visible), len(in_flight), len(delayed))


StandardQueueMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None
)
TestStandardQueue = StandardQueueMachine.TestCase


RETENTION_S = 60  # the shortest MessageRetentionPeriod AWS allows

retention_steps = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.integers(1, 3), st.sampled_from([None, 0, 5, 45, 61, 300])),
        st.tuples(st.just("receive"), st.integers(1, 10), st.sampled_from([0, 5, 30, 120])),
        st.tuples(st.just("wait"), st.integers(0, 90), st.none()),
    ),
    max_size=40,
)


@given(retention_steps)
@settings(deadline=None)
def test_after_each_sweep_the_counts_are_those_of_the_unexpired_messages(steps):
    """Sends (with per-message delays), receives and time steps, in any order: after the
    retention sweep, the counts and the oldest message's age are what a brute-force look at
    the unexpired messages gives. Time moves in whole seconds, the retention timeline's
    grain, so "expired" is exact: sent at or before now less the retention period."""
    index = make(visibility_timeout=30, message_retention_period=RETENTION_S, delay_seconds=10)
    now = T0
    sent_at: dict[int, int] = {}
    visible_at: dict[int, int] = {}
    received: set[int] = set()
    for step, number, option in steps:
        if step == "send":
            outcome = index.send_batch(
                now, [SendRequest(body="m", delay_seconds=option) for _ in range(number)]
            )
            outcome.on_durable()
            for result in outcome.results:
                assert not isinstance(result, SqsError)
                sent_at[result.seq] = now
                visible_at[result.seq] = now + 1_000 * (10 if option is None else option)
        elif step == "receive":
            alive = {seq for seq, at in sent_at.items() if at > now - RETENTION_S * 1_000}
            ready = {seq for seq in alive if visible_at[seq] <= now}
            outcome = index.receive(now, max_messages=number, visibility_timeout=option)
            outcome.on_durable()
            seqs = [delivery.seq for delivery in outcome.deliveries]
            assert set(seqs) <= ready
            assert len(seqs) == min(number, len(ready))
            for seq in seqs:
                visible_at[seq] = now + option * 1_000
                received.add(seq)
        else:
            now += number * 1_000
        index.expire(now).on_durable()
        for seq in [seq for seq, at in sent_at.items() if at <= now - RETENTION_S * 1_000]:
            del sent_at[seq], visible_at[seq]
        visible = {seq for seq in sent_at if visible_at[seq] <= now}
        in_flight = {seq for seq in sent_at if visible_at[seq] > now and seq in received}
        delayed = set(sent_at) - visible - in_flight
        assert index.counts(now) == (len(visible), len(in_flight), len(delayed))
        assert index.oldest_enqueued_at(now) == min(sent_at.values(), default=None)


@pytest.mark.parametrize("elapsed", [0, 1_000])
def test_receive_count_across_many_cycles(elapsed):
    index = make(visibility_timeout=1)
    index.send(T0, SendRequest(body="a")).on_durable()
    for cycle in range(1, 6):
        (delivery,) = index.receive(T0 + cycle * 1_000, visibility_timeout=1).deliveries
        assert delivery.receive_count == cycle
    assert index.counts(T0 + 5_000 + elapsed) == ((1, 0, 0) if elapsed else (0, 1, 0))


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(1, 10)), max_size=20))
@settings(deadline=None)
def test_nothing_is_handed_out_twice_while_in_flight(steps):
    index = make(visibility_timeout=30)
    in_flight: set[int] = set()
    for sends, most in steps:
        for _ in range(sends):
            index.send(T0, SendRequest(body="m")).on_durable()
        for delivery in index.receive(T0, max_messages=most).deliveries:
            assert delivery.seq not in in_flight
            in_flight.add(delivery.seq)


def restored(*seqs: int, delayed: int | None = None) -> StandardIndex:
    """An index restored at ``T0`` with these messages never received (``delayed`` too,
    until T0 + 9 s)."""
    index = make(visibility_timeout=30)
    messages = [RestoredMessage(seq, T0 - 1, 0, 0, T0 - 5_000, None) for seq in seqs]
    if delayed is not None:
        messages.append(RestoredMessage(delayed, T0 + 9_000, 0, 0, T0 - 5_000, None))
    index.restore(sorted(messages), T0)
    return index


def test_a_first_receive_lost_in_a_crash_still_lets_its_handle_delete():
    """The consumer's handle names a receive the store lost (written behind): the message
    came back fresh, and a delete with that handle deletes it (the row now, the deque entry
    when it surfaces)."""
    index = restored(1, 2, 3)
    forgotten = SIGNER.receipt_handle(1, 2, 1, T0 - 3_000)
    change = index.delete(T0, forgotten)
    assert change.mutations == [MessageDeleted(queue_id=1, seq=2)]
    assert index.delete(T0, forgotten).mutations == []  # once
    assert [d.seq for d in index.receive(T0, max_messages=10).deliveries] == [1, 3]
    assert index.counts(T0) == (0, 2, 0)


def test_a_receive_a_crash_forgot_and_the_next_one_hold_different_handles():
    """The process before the crash handed out serial 1 and the store never heard of it; the
    restarted one hands out serial 1 again. The two consumers' handles differ, and the first
    one's ChangeMessageVisibility cannot release the second one's lease."""
    forgotten = SIGNER.receipt_handle(1, 1, 1, T0 - 3_000)  # before the crash
    index = restored(1)
    (delivery,) = index.receive(T0, max_messages=1).deliveries
    assert delivery.receipt_handle != forgotten
    assert refusal(lambda: index.change_visibility(T0, forgotten, 0)) is not None
    assert index.counts(T0) == (0, 1, 0)  # still the second consumer's
    assert index.receive(T0, max_messages=1).deliveries == []
    index.change_visibility(T0, delivery.receipt_handle, 0)  # its own handle works
    assert index.counts(T0) == (1, 0, 0)


def test_a_forgotten_receive_stays_refused_once_the_next_one_is_on_record():
    """The receive a crash forgot (serial 1 at T0 - 3 s), then the next run's receive (serial
    1 again, at T0 - 1 s) made durable, then another restart: the store knows the second
    receive only by its count and time, and the first consumer's handle must still not move
    the second one's lease (found by a report-only hunt: it released it)."""
    forgotten = SIGNER.receipt_handle(1, 1, 1, T0 - 3_000)
    current = SIGNER.receipt_handle(1, 1, 1, T0 - 1_000)
    index = make(visibility_timeout=30)
    index.restore([RestoredMessage(1, T0 + 299_000, 1, T0 - 1_000, T0 - 5_000, None)], T0)
    assert refusal(lambda: index.change_visibility(T0, forgotten, 0)) is not None
    assert index.counts(T0) == (0, 1, 0)
    index.change_visibility(T0, current, 0)  # the second consumer's own handle works
    assert index.counts(T0) == (1, 0, 0)


def test_handles_that_name_no_lost_receive_delete_nothing():
    index = restored(1, 2, delayed=4)
    index.send(T0, SendRequest(body="after the restart")).on_durable()  # seq 5
    (delivery,) = index.receive(T0, max_messages=1).deliveries
    assert index.delete(T0, delivery.receipt_handle).mutations == [
        MessageDeleted(queue_id=1, seq=1)
    ]
    for seq, serial in ((5, 1), (4, 1), (2, 2)):
        # sent since the restart; delayed (never received); a later receive's
        assert index.delete(T0, SIGNER.receipt_handle(1, seq, serial, T0)).mutations == []
    # Gone since the restart: the index cannot tell it from a lost receive without a lookup,
    # and deletes the row again (a no-op); nothing else changes.
    assert index.delete(T0, delivery.receipt_handle).mutations == [
        MessageDeleted(queue_id=1, seq=1)
    ]
    assert index.counts(T0) == (2, 0, 1)
    assert [d.seq for d in index.receive(T0, max_messages=10).deliveries] == [2, 5]


@given(st.sets(st.integers(1, 30), max_size=30), st.sets(st.integers(1, 30), max_size=30))
def test_lost_receives_deleted_never_come_back_and_the_rest_all_do(present, deleted):
    index = restored(*present)
    deleted = {seq for seq in deleted if seq <= max(present, default=0)}  # issued handles only
    for seq in deleted:
        index.delete(T0, SIGNER.receipt_handle(1, seq, 1, T0 - 3_000))
    received = [d.seq for d in index.receive(T0, max_messages=10).deliveries]
    while True:
        more = index.receive(T0, max_messages=10).deliveries
        if not more:
            break
        received += [d.seq for d in more]
    assert received == sorted(present - deleted)
    assert index.counts(T0) == (0, len(present - deleted), 0)
