"""The store contract, run against every implementation, plus the shared helpers."""

import pytest

from broker.model.messages import AttributeValue
from broker.model.mutations import (
    DeduplicationRecorded,
    MessageDelivered,
    MessageInserted,
    QueuePurged,
)
from broker.model.outcomes import RestoredMessage
from broker.model.settings import QueueSettings
from broker.store.base import (
    DeduplicationEntry,
    HistogramRecorder,
    MessageColumns,
    QueueNameTaken,
    Store,
)
from broker.store.sqlite import SqliteStore

MESSAGE_ID = "0b7b1c4e-1d2f-4a6b-8c9d-0e1f2a3b4c5d"


@pytest.fixture(params=["sqlite"])
async def store(request, tmp_path):
    implementation: Store = SqliteStore(tmp_path)
    await implementation.open()
    yield implementation
    await implementation.aclose()


async def reopen(store: Store, tmp_path) -> Store:
    await store.aclose()
    again = SqliteStore(tmp_path)
    await again.open()
    return again


def inserted(queue_id: int, seq: int, body: str = "b", **fields) -> MessageInserted:
    values = {
        "queue_id": queue_id,
        "seq": seq,
        "message_id": MESSAGE_ID,
        "body": body,
        "attributes": {},
        "sent_at": 1_000,
        "visible_at": 1_000,
        "group_id": None,
        "deduplication_id": None,
        "sender_id": "AIDA",
        "trace_header": None,
    }
    values.update(fields)
    return MessageInserted(**values)


async def test_queue_lifecycle(store, tmp_path):
    fifo = QueueSettings(fifo=True, delay_seconds=3)
    created = await store.create_queue("q.fifo", fifo, {"team": "a"}, 1_000)
    other = await store.create_queue("other", QueueSettings(), {}, 1_000)
    assert created.queue_id != other.queue_id
    with pytest.raises(QueueNameTaken):
        await store.create_queue("q.fifo", fifo, {}, 2_000)
    await store.update_queue(created.queue_id, QueueSettings(fifo=True), 3_000)
    await store.set_tags(created.queue_id, {"team": "b"})
    await store.delete_queue(other.queue_id, deleted_at=1_500, forget_before=0)
    store = await reopen(store, tmp_path)
    (loaded,) = await store.load()
    assert loaded.record.name == "q.fifo"
    assert loaded.record.settings == QueueSettings(fifo=True)
    assert loaded.record.tags == {"team": "b"}
    assert (loaded.record.created_at, loaded.record.modified_at) == (1_000, 3_000)
    again = await store.create_queue("other", QueueSettings(), {}, 4_000)
    assert again.queue_id > other.queue_id  # ids are never reused
    await store.aclose()


async def test_queue_deletions_are_kept_until_forgotten(store, tmp_path):
    for name, at in (("a", 1_000), ("b", 2_000), ("c", 3_000)):
        queue = await store.create_queue(name, QueueSettings(), {}, 0)
        await store.delete_queue(queue.queue_id, deleted_at=at, forget_before=1_500)
    again = await store.create_queue("b", QueueSettings(), {}, 0)
    await store.delete_queue(again.queue_id, deleted_at=4_000, forget_before=1_500)
    store = await reopen(store, tmp_path)
    # "a" was forgotten by the later deletions; "b" was deleted twice: its last time counts.
    assert await store.queue_deletions(0) == [("c", 3_000), ("b", 4_000)]
    assert await store.queue_deletions(3_500) == [("b", 4_000)]
    await store.aclose()


async def test_messages_round_trip(store, tmp_path):
    queue = await store.create_queue("q", QueueSettings(), {}, 0)
    attributes = {"n": AttributeValue("Number", "1"), "b": AttributeValue("Binary", None, b"\0")}
    done = []
    await store.commit(
        [
            inserted(queue.queue_id, 1, "first", attributes=attributes, trace_header="t"),
            inserted(queue.queue_id, 2, "second", group_id="g", deduplication_id="d"),
        ],
        on_durable=lambda: done.append(True),
    )
    assert done == [True]
    await store.commit(
        [
            MessageDelivered(
                queue_id=queue.queue_id, seq=2, visible_at=9_000, receive_count=1, received_at=5
            )
        ]
    )
    messages = await store.read_messages(queue.queue_id, [2, 3, 1])
    assert [m.seq for m in messages] == [2, 1]
    second, first = messages
    assert first.body == "first"
    assert first.attributes == attributes
    assert first.message_id == MESSAGE_ID
    assert first.trace_header == "t"
    assert (second.group_id, second.deduplication_id, second.first_received_at) == ("g", "d", 5)
    assert await store.read_messages(queue.queue_id, []) == []

    store = await reopen(store, tmp_path)
    (loaded,) = await store.load()
    assert list(loaded.messages) == [
        RestoredMessage(1, 1_000, 0, 0, 1_000, None),
        RestoredMessage(2, 9_000, 1, 5, 1_000, "g"),
    ]
    assert loaded.record.next_seq == 3
    await store.aclose()


async def test_purged_rows_and_deduplication_survive_a_restart_correctly(store, tmp_path):
    queue = await store.create_queue("q.fifo", QueueSettings(fifo=True), {}, 0)
    await store.commit(
        [
            inserted(queue.queue_id, 1, group_id="g"),
            inserted(queue.queue_id, 2, group_id="g"),
            DeduplicationRecorded(queue_id=queue.queue_id, key=b"k" * 16, seq=2, expires_at=99),
            QueuePurged(queue_id=queue.queue_id, below_seq=2),
        ]
    )
    store = await reopen(store, tmp_path)
    (loaded,) = await store.load()
    assert [m.seq for m in loaded.messages] == [2]
    assert loaded.deduplication == [DeduplicationEntry(b"k" * 16, 2, 99)]
    await store.aclose()


async def test_statistics_count_commits(store):
    queue = await store.create_queue("q", QueueSettings(), {}, 0)
    before = store.statistics()
    await store.commit([inserted(queue.queue_id, 1), inserted(queue.queue_id, 2)])
    after = store.statistics()
    assert after.commits == before.commits + 1
    assert after.mutations == before.mutations + 2
    assert after.commit_seconds.count == before.commit_seconds.count + 1
    assert after.pending_jobs == 0


def test_histogram_is_cumulative():
    recorder = HistogramRecorder([1, 10])
    for value in [0.5, 1, 5, 50]:
        recorder.observe(value)
    snapshot = recorder.snapshot()
    assert snapshot.cumulative_counts == (2, 3, 4)
    assert (snapshot.count, snapshot.total) == (4, 56.5)


def test_histogram_counts_repeated_observations_at_once():
    one_by_one, at_once = HistogramRecorder([1, 10]), HistogramRecorder([1, 10])
    for _ in range(3):
        one_by_one.observe(5)
    at_once.observe(5, 3)
    assert at_once.snapshot() == one_by_one.snapshot()


def test_message_columns_round_trip():
    columns = MessageColumns()
    messages = [RestoredMessage(1, 2, 3, 4, 5, "g"), RestoredMessage(9, 8, 7, 6, 5, None)]
    for message in messages:
        columns.append(message)
    assert len(columns) == 2
    assert list(columns) == messages
