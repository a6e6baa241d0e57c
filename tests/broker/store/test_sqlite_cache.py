"""The body cache: inserts and read-ahead within the budget, always equal to the model.

The state machine plays the store's part: every batch is tracked (the model's view), becomes
durable later (the file's view), and read-aheads take their snapshot of the file at any
moment between their start and their end -- the race the replay exists for.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import msgspec
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from broker.model.mutations import (
    MessageDeleted,
    MessageDelivered,
    MessageInserted,
    MessageMoved,
    QueuePurged,
)
from broker.store import sqlite_cache
from broker.store.base import AnyMutation, StoredMessage
from broker.store.sqlite_cache import (
    CACHE_ENTRY_OVERHEAD,
    BodyCache,
    ReadAhead,
    cache_cost,
    replay,
)

MESSAGE_ID = "0b7b1c4e-1d2f-4a6b-8c9d-0e1f2a3b4c5d"
Key = tuple[int, int]


def inserted(queue_id: int, seq: int, body: str | None = None) -> MessageInserted:
    return MessageInserted(
        queue_id=queue_id,
        seq=seq,
        message_id=MESSAGE_ID,
        body=body if body is not None else f"body {queue_id}/{seq}",
        attributes={},
        sent_at=1,
        visible_at=1,
        group_id=None,
        deduplication_id=None,
        sender_id="AIDA",
        trace_header=None,
    )


def stored(m: MessageInserted) -> StoredMessage:
    """The message as the file (and so a receive) shows it right after its insert."""
    return StoredMessage(
        seq=m.seq,
        message_id=m.message_id,
        body=m.body,
        attributes=m.attributes,
        sent_at=m.sent_at,
        first_received_at=None,
        group_id=m.group_id,
        deduplication_id=m.deduplication_id,
        sender_id=m.sender_id,
        trace_header=m.trace_header,
        dead_letter_source_arn=None,
    )


def delivered(queue_id: int, seq: int, at: int) -> MessageDelivered:
    return MessageDelivered(
        queue_id=queue_id, seq=seq, visible_at=at + 30, receive_count=1, received_at=at
    )


def apply(rows: dict[Key, StoredMessage], batch: Sequence[AnyMutation]) -> None:
    """What a batch does to messages: the model's view (and the file's, purges aside)."""
    for m in batch:
        if isinstance(m, MessageInserted):
            rows[(m.queue_id, m.seq)] = stored(m)
        elif isinstance(m, MessageDelivered):
            row = rows.get((m.queue_id, m.seq))
            if row is not None and row.first_received_at is None:
                rows[(m.queue_id, m.seq)] = msgspec.structs.replace(
                    row, first_received_at=m.received_at
                )
        elif isinstance(m, MessageDeleted):
            rows.pop((m.queue_id, m.seq), None)
        elif isinstance(m, MessageMoved):
            source = rows.pop((m.source_queue_id, m.source_seq), None)
            if source is not None:
                rows[(m.target_queue_id, m.target_seq)] = msgspec.structs.replace(
                    source, seq=m.target_seq, dead_letter_source_arn=m.source_arn
                )
        elif isinstance(m, QueuePurged):
            for key in [k for k in rows if k[0] == m.queue_id and k[1] < m.below_seq]:
                del rows[key]


# ---------------------------------------------------------------------- examples


def filled(budget: int, count: int, queue_id: int = 1) -> BodyCache:
    cache = BodyCache(budget)
    for seq in range(1, count + 1):
        batch = [inserted(queue_id, seq)]
        cache.track(batch, {})
        cache.settled(batch)
    return cache


def file_rows(queue_id: int, seqs: Sequence[int]) -> list[StoredMessage]:
    return [stored(inserted(queue_id, seq)) for seq in seqs]


def test_read_ahead_rows_are_served_once_then_leave():
    cache = BodyCache(1 << 20)
    reading = cache.start_read_ahead(1, [10])
    assert reading is not None
    assert (reading.after, reading.max_rows) == (10, sqlite_cache.READ_AHEAD_ROWS)
    assert cache.finish_read_ahead(reading, file_rows(1, range(11, 21))) == 10
    assert cache.is_read_ahead((1, 11))
    found, missing = cache.lookup(1, [11, 12, 30])
    assert [m.seq for m in found] == [11, 12]
    assert missing == [30]
    # Taken by that receive: a later receive of the same message reads the file.
    assert cache.lookup(1, [11]) == ([], [11])
    assert (
        cache.bytes
        == cache.ahead_bytes
        == sum(cache_cost(m.body, m.attributes) for m in file_rows(1, range(13, 21)))
    )


def test_an_insert_with_its_body_md5_keeps_it_through_its_first_receive():
    cache = BodyCache()
    with_md5 = msgspec.structs.replace(inserted(1, 1), body_md5="5d41402abc4b2a76b9719d911017c592")
    cache.track([with_md5, inserted(1, 2)], {})
    cache.track([delivered(1, 1, at=5), delivered(1, 2, at=5)], {})
    first, second = cache.lookup(1, [1, 2])[0]
    assert first.body_md5 == "5d41402abc4b2a76b9719d911017c592"
    assert first.first_received_at == 5
    assert second.body_md5 is None  # not given: a receive computes it
    assert second == msgspec.structs.replace(stored(inserted(1, 2)), first_received_at=5)


def test_inserted_messages_stay_after_a_receive():
    cache = filled(1 << 20, 3)
    assert [m.seq for m in cache.lookup(1, [1, 2])[0]] == [1, 2]
    assert [m.seq for m in cache.lookup(1, [1, 2])[0]] == [1, 2]


def test_a_full_budget_keeps_the_head_of_a_queues_own_backlog():
    one = cache_cost("body 1/10", {})
    cache = filled(4 * one, 10)  # room for four: the first four stay, the rest are not kept
    assert sorted(cache.cached_keys()) == [(1, 1), (1, 2), (1, 3), (1, 4)]
    assert cache.bytes <= cache.budget
    found, missing = cache.lookup(1, range(1, 11))
    assert [m.seq for m in found] == [1, 2, 3, 4]
    assert missing == [5, 6, 7, 8, 9, 10]
    # Once the head is received and deleted, there is room for the queue's next sends again.
    deleted = [MessageDeleted(queue_id=1, seq=seq) for seq in (1, 2)]
    cache.track(deleted, {})
    batch = [inserted(1, 11), inserted(1, 12)]
    cache.track(batch, {})
    assert sorted(cache.cached_keys()) == [(1, 3), (1, 4), (1, 11), (1, 12)]


def test_another_queues_sends_push_out_the_oldest_of_a_full_budget():
    one = cache_cost("body 1/10", {})
    cache = filled(4 * one, 10)  # queue 1's backlog holds the budget: seqs 1-4
    for seq in (1, 2):
        batch = [inserted(2, seq)]
        cache.track(batch, {})
        cache.settled(batch)
    assert sorted(cache.cached_keys()) == [(1, 3), (1, 4), (2, 1), (2, 2)]
    # Queue 1's oldest held (3) is still older than queue 2's: a send of queue 1 is not kept.
    cache.track([inserted(1, 11)], {})
    assert (1, 11) not in cache.cached_keys()
    assert (1, 3) in cache.cached_keys()


def test_a_fan_out_to_backlogged_queues_keeps_each_ones_head():
    one = cache_cost("body 1/1", {})
    cache = BodyCache(4 * one)
    for seq in range(1, 5):  # a publish to two queues, four times: the budget holds two each
        batch = [inserted(1, seq), inserted(2, seq)]
        cache.track(batch, {})
        cache.settled(batch)
    assert sorted(cache.cached_keys()) == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert cache.held_bytes(1) == cache.held_bytes(2) == 2 * one


def test_a_fan_out_that_fills_the_budget_mid_publish_pushes_no_head_out():
    one = cache_cost("body 1/1", {})
    cache = BodyCache(7 * one)  # full in the middle of the third publish to three queues
    for seq in range(1, 8):
        batch = [inserted(queue, seq) for queue in (1, 2, 3)]
        cache.track(batch, {})
        cache.settled(batch)
    # Queue 1 got one more in before the budget filled. Queues 2 and 3, one message short of
    # it, do not push its head out (nor then each other's, in turn, copy after copy).
    assert sorted(cache.cached_keys()) == [
        (1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (3, 1), (3, 2)
    ]  # fmt: skip


def test_no_read_ahead_when_off_in_flight_or_at_the_cached_part():
    assert BodyCache(0).start_read_ahead(1, [1]) is None
    cache = filled(1 << 20, 20)
    assert cache.start_read_ahead(1, [5]) is None  # seq 6 is in memory already
    reading = cache.start_read_ahead(1, [25])
    assert reading is not None
    assert cache.reading(1) is reading
    assert cache.start_read_ahead(1, [40]) is None  # one per queue at a time
    assert cache.start_read_ahead(2, [40]) is not None  # other queues go their own way
    cache.finish_read_ahead(reading, [])
    assert cache.reading(1) is None
    assert cache.start_read_ahead(1, [40]) is not None


def test_a_miss_behind_what_was_read_ahead_reads_alone():
    cache = BodyCache(1 << 20)
    reading = cache.start_read_ahead(1, [10])
    assert reading is not None
    cache.finish_read_ahead(reading, file_rows(1, range(11, 31)))
    cache.lookup(1, range(11, 31))  # the receives took them all
    assert cache.start_read_ahead(1, [15]) is None  # back from a visibility timeout
    assert cache.start_read_ahead(1, [30]) is None
    assert cache.start_read_ahead(1, [31]) is not None  # the fresh ones, past them


def test_a_read_ahead_starts_after_the_missing_seqs():
    cache = BodyCache(1 << 20)
    reading = cache.start_read_ahead(1, [3, 5, 4])
    assert reading is not None
    assert reading.after == 5


def test_read_ahead_takes_a_quarter_of_the_budget_and_pushes_out_old_inserts():
    one = cache_cost("body 1/101", {})
    cache = filled(8 * one, 8)
    reading = cache.start_read_ahead(1, [100])
    assert reading is not None
    kept = cache.finish_read_ahead(reading, file_rows(1, range(101, 111)))
    assert kept == 2  # the first ones: the next receives take them
    assert cache.ahead_bytes <= cache.ahead_budget == 2 * one
    assert cache.bytes <= cache.budget
    assert [m.seq for m in cache.lookup(1, range(101, 111))[0]] == [101, 102]
    assert [m.seq for m in cache.lookup(1, range(1, 9))[0]] == [3, 4, 5, 6, 7, 8]


def test_a_queue_keeps_a_bounded_read_ahead_part(monkeypatch):
    monkeypatch.setattr(sqlite_cache, "READ_AHEAD_QUEUE_ROWS", 4)
    cache = BodyCache(1 << 20)
    for after in (0, 10):
        reading = cache.start_read_ahead(1, [after])
        assert reading is not None
        cache.finish_read_ahead(reading, file_rows(1, range(after + 1, after + 6)))
    other = cache.start_read_ahead(2, [0])
    assert other is not None
    cache.finish_read_ahead(other, file_rows(2, [1, 2]))
    ahead = sorted(k for k in cache.cached_keys() if cache.is_read_ahead(k))
    assert ahead == [(1, 11), (1, 12), (1, 13), (1, 14), (2, 1), (2, 2)]


def test_a_message_larger_than_the_read_ahead_share_is_not_kept():
    cache = BodyCache(4 * (CACHE_ENTRY_OVERHEAD + 100))
    reading = cache.start_read_ahead(1, [0])
    assert reading is not None
    assert (
        cache.finish_read_ahead(reading, [*file_rows(1, [1]), stored(inserted(1, 2, "x" * 200))])
        == 1
    )
    assert cache.cached_keys() == [(1, 1)]


def test_covers_the_rows_it_reads():
    reading = ReadAhead(1, 10, 256, 1 << 20, [])
    assert reading.covers([11, 20])
    assert not reading.covers([10, 11])
    assert not reading.covers([300])


# ---------------------------------------------------------------------- the race, by hand


def test_a_delete_tracked_while_the_read_runs_is_not_resurrected():
    cache = filled(1 << 20, 0)
    reading = cache.start_read_ahead(1, [0])
    assert reading is not None
    snapshot = file_rows(1, [1, 2, 3])  # the reader thread read these ...
    cache.track([MessageDeleted(queue_id=1, seq=2)], {})  # ... as the trio thread deleted one
    cache.finish_read_ahead(reading, snapshot)
    assert sorted(cache.cached_keys()) == [(1, 1), (1, 3)]


def test_a_receive_not_yet_durable_when_the_read_began_keeps_its_timestamp():
    cache = BodyCache(1 << 20)
    receive = [delivered(1, 5, at=777)]
    cache.track(receive, {})  # queued (commit_later), not yet on disk
    reading = cache.start_read_ahead(1, [4])
    assert reading is not None
    cache.settled(receive)  # durable now, but the snapshot may be older
    cache.finish_read_ahead(reading, file_rows(1, [5, 6]))
    message = cache.get((1, 5))
    assert message is not None
    assert message.first_received_at == 777


def test_a_purge_while_the_read_runs_keeps_none_of_the_purged():
    cache = BodyCache(1 << 20)
    reading = cache.start_read_ahead(1, [0])
    assert reading is not None
    cache.track([QueuePurged(queue_id=1, below_seq=3)], {})
    cache.finish_read_ahead(reading, file_rows(1, [1, 2, 3]))
    assert cache.cached_keys() == [(1, 3)]


def test_the_cached_copy_wins_over_a_row_read():
    cache = filled(1 << 20, 0)
    reading = cache.start_read_ahead(1, [0])
    assert reading is not None
    batch = [inserted(1, 1, "newer"), delivered(1, 1, at=5)]
    cache.track(batch, {})
    cache.finish_read_ahead(reading, [stored(inserted(1, 1, "older"))])
    message = cache.get((1, 1))
    assert message is not None
    assert (message.body, message.first_received_at) == ("newer", 5)
    assert not cache.is_read_ahead((1, 1))


def test_a_failed_batch_forgets_its_inserts():
    cache = BodyCache(1 << 20)
    batch = [inserted(1, 1)]
    cache.track(batch, {})
    cache.settled(batch, failed=True)
    assert cache.cached_keys() == []
    assert cache.bytes == 0


def test_sealed_inserts_are_not_cached():
    cache = BodyCache(1 << 20)
    cache.track([inserted(1, 1), inserted(2, 1)], {1: object()})
    assert cache.cached_keys() == [(2, 1)]


# ---------------------------------------------------------------------- properties

mutation_on_queue_1 = st.one_of(
    st.builds(delivered, st.just(1), st.integers(1, 8), st.integers(1, 1_000)),
    st.builds(MessageDeleted, queue_id=st.just(1), seq=st.integers(1, 8)),
    st.builds(
        MessageMoved,
        source_queue_id=st.just(1),
        source_seq=st.integers(1, 8),
        target_queue_id=st.just(2),
        target_seq=st.integers(1, 8),
        enqueued_at=st.none(),
        visible_at=st.just(0),
        source_arn=st.just("arn"),
    ),
    st.builds(QueuePurged, queue_id=st.just(1), below_seq=st.integers(1, 9)),
    st.builds(delivered, st.just(2), st.integers(1, 8), st.integers(1, 1_000)),
)


@given(
    first_received=st.lists(st.none() | st.integers(1, 1_000), min_size=8, max_size=8),
    batch=st.lists(mutation_on_queue_1, max_size=12),
    split=st.integers(0, 12),
)
def test_replay_is_idempotent_over_any_prefix_already_in_the_rows(first_received, batch, split):
    """A snapshot holding the first ``split`` mutations, then all of them replayed, ends as
    the rows with all of them applied once: what the snapshot held does not matter."""
    rows = {
        seq: msgspec.structs.replace(stored(inserted(1, seq)), first_received_at=at)
        for seq, at in enumerate(first_received, start=1)
    }
    once = dict(rows)
    replay(batch, 1, once)
    twice = dict(rows)
    replay(batch[:split], 1, twice)
    replay(batch, 1, twice)
    assert twice == once
    expected = {(1, seq): m for seq, m in rows.items()}
    apply(expected, batch)
    assert once == {seq: m for (queue, seq), m in expected.items() if queue == 1}


class CacheMachine(RuleBasedStateMachine):
    """Two queues; sends, receives, deletes, dead-letter moves, purges; commits that become
    durable later; read-aheads whose snapshot is taken at any moment while they run.

    ``model`` is what the model says every live message is; ``file`` what is durable (purged
    rows stay until reclaimed). The cache must agree with ``model`` at every step.
    """

    def __init__(self) -> None:
        super().__init__()
        self.cache = BodyCache(0)
        self.model: dict[Key, StoredMessage] = {}
        self.file: dict[Key, StoredMessage] = {}
        self.purge_mark = {1: 0, 2: 0}
        self.next_seq = {1: 1, 2: 1}
        self.pending: deque[list[AnyMutation]] = deque()
        self.reads: list[tuple[ReadAhead, list[StoredMessage] | None]] = []
        self.clock = 1_000

    @initialize(
        entries=st.sampled_from([3, 8, 40, 10_000]), restored=st.integers(0, 4), data=st.data()
    )
    def start(self, entries: int, restored: int, data: st.DataObject) -> None:
        self.cache = BodyCache(entries * cache_cost("body 1/10", {}))
        for seq in range(1, restored + 1):
            message = inserted(1, seq)
            apply(self.model, [message])
            apply(self.file, [message])
            if data.draw(st.booleans()):  # some were received before the restart
                apply(self.model, [delivered(1, seq, at=7)])
                apply(self.file, [delivered(1, seq, at=7)])
        self.next_seq[1] = restored + 1  # restored messages are read ahead like any others

    def _commit(self, batch: list[AnyMutation]) -> None:
        self.cache.track(batch, {})
        apply(self.model, batch)
        self.pending.append(batch)

    def _live(self, queue_id: int) -> list[int]:
        return sorted(seq for (queue, seq) in self.model if queue == queue_id)

    @rule(queue_id=st.sampled_from([1, 2]), count=st.integers(1, 4))
    def send(self, queue_id: int, count: int) -> None:
        first = self.next_seq[queue_id]
        self.next_seq[queue_id] += count
        self._commit([inserted(queue_id, seq) for seq in range(first, first + count)])

    @rule(queue_id=st.sampled_from([1, 2]), data=st.data())
    def receive(self, queue_id: int, data: st.DataObject) -> None:
        live = self._live(queue_id)
        if not live:
            return
        seqs = data.draw(st.lists(st.sampled_from(live), min_size=1, max_size=4, unique=True))
        self.clock += 1
        self._commit([delivered(queue_id, seq, self.clock) for seq in seqs])
        found, missing = self.cache.lookup(queue_id, seqs)
        for message in found:
            assert message == self.model[(queue_id, message.seq)]
        assert {m.seq for m in found} | set(missing) == set(seqs)

    @rule(queue_id=st.sampled_from([1, 2]), data=st.data())
    def delete(self, queue_id: int, data: st.DataObject) -> None:
        live = self._live(queue_id)
        if live:
            seq = data.draw(st.sampled_from(live))
            self._commit([MessageDeleted(queue_id=queue_id, seq=seq)])

    @rule(queue_id=st.sampled_from([1, 2]), data=st.data())
    def move_to_the_other_queue(self, queue_id: int, data: st.DataObject) -> None:
        live = self._live(queue_id)
        if not live:
            return
        target = 3 - queue_id
        target_seq = self.next_seq[target]
        self.next_seq[target] += 1
        move = MessageMoved(
            source_queue_id=queue_id,
            source_seq=data.draw(st.sampled_from(live)),
            target_queue_id=target,
            target_seq=target_seq,
            enqueued_at=None,
            visible_at=0,
            source_arn=f"arn:{queue_id}",
        )
        self._commit([move])

    @rule(queue_id=st.sampled_from([1, 2]))
    def purge(self, queue_id: int) -> None:
        self._commit([QueuePurged(queue_id=queue_id, below_seq=self.next_seq[queue_id])])

    @precondition(lambda self: bool(self.pending))
    @rule()
    def becomes_durable(self) -> None:
        batch = self.pending.popleft()
        for m in batch:
            if isinstance(m, QueuePurged):
                self.purge_mark[m.queue_id] = max(self.purge_mark[m.queue_id], m.below_seq)
            else:
                apply(self.file, [m])
        self.cache.settled(batch)

    @rule(queue_id=st.sampled_from([1, 2]))
    def reclaim(self, queue_id: int) -> None:
        mark = self.purge_mark[queue_id]
        for key in [k for k in self.file if k[0] == queue_id and k[1] < mark]:
            del self.file[key]

    @rule(queue_id=st.sampled_from([1, 2]), seq=st.integers(0, 30))
    def start_read_ahead(self, queue_id: int, seq: int) -> None:
        reading = self.cache.start_read_ahead(queue_id, [seq])
        if reading is not None:
            self.reads.append((reading, None))

    def _snapshot(self, reading: ReadAhead) -> list[StoredMessage]:
        """What the reader thread's query returns from the file as it is now."""
        queue_id, floor = reading.queue_id, self.purge_mark[reading.queue_id]
        seqs = sorted(
            seq
            for (queue, seq) in self.file
            if queue == queue_id and seq > reading.after and seq >= floor
        )
        return [self.file[(queue_id, seq)] for seq in seqs[: reading.max_rows]]

    @precondition(lambda self: bool(self.reads))
    @rule(data=st.data())
    def reader_takes_its_snapshot(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(0, len(self.reads) - 1))
        reading, rows = self.reads[index]
        if rows is None:
            self.reads[index] = (reading, self._snapshot(reading))

    @precondition(lambda self: bool(self.reads))
    @rule(data=st.data(), failed=st.booleans())
    def read_ahead_lands(self, data: st.DataObject, failed: bool) -> None:
        reading, rows = self.reads.pop(data.draw(st.integers(0, len(self.reads) - 1)))
        if rows is None:
            rows = self._snapshot(reading)
        self.cache.finish_read_ahead(reading, [] if failed else rows)

    @invariant()
    def the_cache_agrees_with_the_model(self) -> None:
        for key in self.cache.cached_keys():
            assert self.cache.get(key) == self.model.get(key), key

    @invariant()
    def the_cache_stays_within_its_budget(self) -> None:
        entries = [self.cache.get(key) for key in self.cache.cached_keys()]
        total = sum(cache_cost(m.body, m.attributes) for m in entries if m is not None)
        assert self.cache.bytes == total <= self.cache.budget
        assert self.cache.ahead_bytes <= self.cache.ahead_budget
        held: dict[int, int] = {}
        for key, m in zip(self.cache.cached_keys(), entries, strict=True):
            if m is not None and not self.cache.is_read_ahead(key):
                held[key[0]] = held.get(key[0], 0) + cache_cost(m.body, m.attributes)
        assert {q: self.cache.held_bytes(q) for q in held} == held
        assert sum(held.values()) + self.cache.ahead_bytes == self.cache.bytes


CacheMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)
TestCacheMachine = CacheMachine.TestCase


def test_without_the_replay_the_machine_finds_the_race(monkeypatch):
    """A control: the properties above fail on a cache that keeps rows as they were read."""
    monkeypatch.setattr(sqlite_cache, "replay", lambda batch, queue_id, by_seq: None)
    quick = settings(
        max_examples=1_000,
        stateful_step_count=60,
        deadline=None,
        database=None,
        phases=[Phase.generate],
    )
    with pytest.raises(AssertionError):
        run_state_machine_as_test(CacheMachine, settings=quick)
