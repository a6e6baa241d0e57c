"""The store's write-behind of receive records: the bookkeeping alone, then through the store."""

from __future__ import annotations

import contextlib
import sqlite3
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.model.mutations import (
    MessageDeleted,
    MessageDelivered,
    MessageMoved,
    VisibilityChanged,
)
from broker.model.settings import QueueSettings
from broker.store import sqlite_writer as sqlite_store
from broker.store.base import AnyMutation
from broker.store.sqlite import SqliteStore
from broker.store.write_behind import HeldBatch, WriteBehind, written
from tests.support.mutations import inserted

# ---------------------------------------------------------------------- a reference table

Row = dict[str, Any]


def apply(table: dict[tuple[int, int], Row], mutation: AnyMutation) -> None:
    """What the SQL of broker/store/sqlite_apply.py does to a row, in a dict."""
    if isinstance(mutation, MessageDelivered):
        row = table.get((mutation.queue_id, mutation.seq))
        if row is not None:
            row["visible_at"] = mutation.visible_at
            row["receive_count"] = mutation.receive_count
            row["received_at"] = mutation.received_at
            row["first"] = row["first"] if row["first"] is not None else mutation.received_at
    elif isinstance(mutation, VisibilityChanged):
        row = table.get((mutation.queue_id, mutation.seq))
        if row is not None:
            row["visible_at"] = mutation.visible_at
    elif isinstance(mutation, MessageDeleted):
        table.pop((mutation.queue_id, mutation.seq), None)
    elif isinstance(mutation, MessageMoved):
        row = table.pop((mutation.source_queue_id, mutation.source_seq), None)
        if row is not None:  # the copy keeps the receive count and times of the source
            table[(mutation.target_queue_id, mutation.target_seq)] = dict(
                row, visible_at=mutation.visible_at
            )


def fresh_table(seqs: int) -> dict[tuple[int, int], Row]:
    row = {"visible_at": 0, "receive_count": 0, "received_at": 0, "first": None}
    return {(1, seq): dict(row) for seq in range(1, seqs + 1)}


def delivered(seq: int, count: int = 1, at: int = 100) -> MessageDelivered:
    return MessageDelivered(
        queue_id=1, seq=seq, visible_at=at + 30, receive_count=count, received_at=at
    )


# ---------------------------------------------------------------------- examples


def test_a_delete_makes_the_held_record_moot_and_settles_its_batch():
    behind = WriteBehind(1.0, 100)
    batch: list[AnyMutation] = [delivered(1), delivered(2)]
    assert behind.hold(batch, None, now=0.0) == []
    ahead, moot = behind.before([MessageDeleted(queue_id=1, seq=1)])
    assert (ahead, moot) == ([], [])  # the other record is still held
    ahead, moot = behind.before([MessageDeleted(queue_id=1, seq=2)])
    assert ahead == []
    assert [held.batch for held in moot] == [batch]
    assert len(behind) == 0


def test_a_visibility_change_has_the_record_written_ahead_of_it():
    behind = WriteBehind(1.0, 100)
    behind.hold([delivered(1), delivered(2)], None, now=0.0)
    ahead, moot = behind.before([VisibilityChanged(queue_id=1, seq=2, visible_at=5)])
    assert [record for record, _ in ahead] == [delivered(2)]
    assert moot == []
    assert written(ahead) == []  # seq 1 still held: the batch is not settled yet
    assert [record for record, _ in behind.take_all()] == [delivered(1)]


@pytest.mark.parametrize(
    "touch",
    [
        delivered(1, count=2, at=200),
        MessageMoved(
            source_queue_id=1,
            source_seq=1,
            target_queue_id=2,
            target_seq=1,
            enqueued_at=None,
            visible_at=0,
            source_arn="arn:aws:sqs:us-east-1:000000000000:q",
        ),
    ],
)
def test_a_redelivery_or_a_move_has_the_record_written_ahead(touch):
    behind = WriteBehind(1.0, 100)
    behind.hold([delivered(1)], None, now=0.0)
    ahead, _ = behind.before([touch])
    assert [record for record, _ in ahead] == [delivered(1)]


def test_other_mutations_leave_the_records_held():
    behind = WriteBehind(1.0, 100)
    behind.hold([delivered(1)], None, now=0.0)
    other = inserted(1, 9)
    assert behind.before([other, MessageDeleted(queue_id=2, seq=1)]) == ([], [])
    assert len(behind) == 1


def test_records_fall_due_after_the_hold_time():
    behind = WriteBehind(1.0, 100)
    assert not behind.due(5.0)  # nothing held
    behind.hold([delivered(1)], None, now=0.0)
    assert not behind.due(0.999)
    assert behind.due(1.0)


def test_a_second_record_of_a_message_writes_the_first_before_it():
    behind = WriteBehind(1.0, 100)
    behind.hold([delivered(1)], None, now=0.0)
    first = behind.hold([delivered(1, count=2, at=200)], None, now=0.1)
    assert [record for record, _ in first] == [delivered(1)]
    assert [record for record, _ in behind.take_all()] == [delivered(1, count=2, at=200)]


def test_too_many_records_or_a_due_one_write_the_older_ones_out():
    behind = WriteBehind(1.0, 2)
    behind.hold([delivered(1), delivered(2)], None, now=0.0)
    out = behind.hold([delivered(3)], None, now=0.1)
    assert [record.seq for record, _ in out] == [1, 2]
    assert len(behind) == 1
    out = behind.hold([delivered(4)], None, now=1.5)  # the record of 3 is due
    assert [record.seq for record, _ in out] == [3]
    assert len(behind) == 1


def test_holdable_batches_are_receive_records_only():
    assert WriteBehind.holdable([delivered(1)])
    assert not WriteBehind.holdable([])
    assert not WriteBehind.holdable([delivered(1), MessageDeleted(queue_id=1, seq=1)])
    with pytest.raises(ValueError):
        WriteBehind(0, 1)


# ---------------------------------------------------------------------- the property

SEQS = 6
touches = st.one_of(
    st.builds(lambda seq: MessageDeleted(queue_id=1, seq=seq), st.integers(1, SEQS)),
    st.builds(
        lambda seq, at: VisibilityChanged(queue_id=1, seq=seq, visible_at=at),
        st.integers(1, SEQS),
        st.integers(0, 999),
    ),
    st.builds(
        lambda seq, count, at: delivered(seq, count, at),
        st.integers(1, SEQS),
        st.integers(1, 5),
        st.integers(0, 999),
    ),
    st.builds(
        lambda seq, target: MessageMoved(
            source_queue_id=1,
            source_seq=seq,
            target_queue_id=2,
            target_seq=target,
            enqueued_at=None,
            visible_at=7,
            source_arn="arn:aws:sqs:us-east-1:000000000000:q",
        ),
        st.integers(1, SEQS),
        st.integers(1, 1_000),
    ),
)
steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("receive"),
            st.lists(st.builds(delivered, st.integers(1, SEQS), st.integers(1, 5)), min_size=1),
        ),
        st.tuples(st.just("commit"), st.lists(touches, max_size=4)),
        st.tuples(st.just("wait"), st.floats(0, 2)),
    ),
    max_size=30,
)


@settings(max_examples=300)
@given(steps=steps, max_records=st.integers(1, 8))
def test_held_writes_leave_the_file_as_writing_everything_in_order_would(steps, max_records):
    # The file written with the write-behind (records dropped, delayed, or written ahead of a
    # commit) ends as the file written with every record at its place; every held batch is
    # settled exactly once, and only when none of its records is still to be written.
    behind = WriteBehind(1.0, max_records)
    in_order, with_behind = fresh_table(SEQS), fresh_table(SEQS)
    settled: list[HeldBatch] = []
    batches: list[HeldBatch] = []
    now = 0.0

    def write(mutations: list[AnyMutation]) -> None:
        for mutation in mutations:
            apply(with_behind, mutation)

    def write_held(records: list[tuple[MessageDelivered, HeldBatch]]) -> None:
        write([record for record, _ in records])
        settled.extend(written(records))

    for kind, value in steps:
        if kind == "wait":
            now += value
            continue
        for mutation in value:
            apply(in_order, mutation)
        if kind == "receive":
            write_held(behind.hold(list(value), None, now))
            batches.append(_batch_of(behind, value[-1]))
        else:
            ahead, moot = behind.before(value)
            if behind.due(now):
                ahead.extend(behind.take_all())
            write_held(ahead)
            settled.extend(moot)
            write(value)
    write_held(behind.take_all())
    assert with_behind == in_order
    assert len(settled) == len({id(held) for held in settled})  # never twice
    assert all(held.remaining == 0 for held in settled)
    assert {id(held) for held in batches} <= {id(held) for held in settled}


def _batch_of(behind: WriteBehind, record: MessageDelivered) -> HeldBatch:
    for held_record, held, _ in behind._records.values():
        if held_record is record:
            return held
    raise AssertionError("the newest record is held")


# ---------------------------------------------------------------------- through the store


def row(store: SqliteStore, queue_id: int, seq: int) -> tuple[int, int | None] | None:
    """(receive_count, first_received_at) as the file has it (the WAL included)."""
    with contextlib.closing(sqlite3.connect(store.path)) as connection:
        found = connection.execute(
            "SELECT receive_count, first_received_at FROM messages WHERE queue_id = ? AND seq = ?",
            (queue_id, seq),
        ).fetchone()
        return None if found is None else (found[0], found[1])


def record_writes(monkeypatch: pytest.MonkeyPatch) -> list[AnyMutation]:
    writes: list[AnyMutation] = []
    real = sqlite_store.apply_mutations

    def recording(connection, mutations, *rest):  # type: ignore[no-untyped-def]
        writes.extend(mutations)
        return real(connection, mutations, *rest)

    monkeypatch.setattr(sqlite_store, "apply_mutations", recording)
    return writes


async def open_with_messages(tmp_path, seqs: int = 3) -> tuple[SqliteStore, int]:
    store = SqliteStore(tmp_path)
    await store.open()
    queue = await store.create_queue("q", QueueSettings(), {}, 0)
    await store.commit([inserted(queue.queue_id, seq, f"body {seq}") for seq in range(1, seqs + 1)])
    return store, queue.queue_id


def received(queue_id: int, seq: int, count: int = 1, at: int = 100) -> MessageDelivered:
    return MessageDelivered(
        queue_id=queue_id, seq=seq, visible_at=at + 30, receive_count=count, received_at=at
    )


async def test_a_receive_then_delete_never_writes_the_receive(tmp_path, monkeypatch):
    writes = record_writes(monkeypatch)
    store, qid = await open_with_messages(tmp_path)
    settled = trio.Event()
    try:
        store.commit_later([received(qid, 1), received(qid, 2)], settled.set)
        await store.commit(
            [MessageDeleted(queue_id=qid, seq=1), MessageDeleted(queue_id=qid, seq=2)]
        )
        assert settled.is_set()  # both records moot: what waited on them went on
        assert not any(isinstance(m, MessageDelivered) for m in writes)
        assert row(store, qid, 1) is None
        assert row(store, qid, 3) == (0, None)
    finally:
        await store.aclose()


async def test_a_held_receive_reaches_the_file_within_the_hold_time(tmp_path, monkeypatch):
    monkeypatch.setattr(sqlite_store, "HOLD_SECONDS", 0.05)
    store, qid = await open_with_messages(tmp_path)
    try:
        store.commit_later([received(qid, 1)])
        assert row(store, qid, 1) == (0, None)  # held
        # The writer's idle wake-up brings it out: no other traffic is needed.
        for _ in range(1_000):
            if row(store, qid, 1) == (1, 100):
                break
            await trio.sleep(0.01)
        assert row(store, qid, 1) == (1, 100)
    finally:
        await store.aclose()


async def test_held_receives_are_written_at_close(tmp_path):
    store, qid = await open_with_messages(tmp_path)
    store.commit_later([received(qid, 2)])
    await store.aclose()
    reopened = SqliteStore(tmp_path)
    await reopened.open()
    try:
        assert row(reopened, qid, 2) == (1, 100)
    finally:
        await reopened.aclose()


async def test_a_redelivery_is_durable_with_the_first_receive_before_it(tmp_path):
    store, qid = await open_with_messages(tmp_path)
    try:
        store.commit_later([received(qid, 3, count=1, at=100)])
        await store.commit([received(qid, 3, count=2, at=500)])
        assert row(store, qid, 3) == (2, 100)  # first receive time from the held record
        (message,) = await store.read_messages(qid, [3])
        assert message.first_received_at == 100
    finally:
        await store.aclose()


async def test_a_queue_operation_brings_the_file_up_to_date_first(tmp_path):
    store, qid = await open_with_messages(tmp_path)
    try:
        store.commit_later([received(qid, 1)])
        await store.create_queue("other", QueueSettings(), {}, 0)
        assert row(store, qid, 1) == (1, 100)
    finally:
        await store.aclose()
