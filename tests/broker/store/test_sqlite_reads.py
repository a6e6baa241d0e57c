"""The reads: answered from the body cache, or from the file with the read-ahead of backlogs."""

import hashlib
import sqlite3
import threading
from pathlib import Path

import msgspec
import pytest
import trio
import trio.testing

from broker.model.mutations import (
    MessageDeleted,
    MessageDelivered,
    MessageMoved,
    QueuePurged,
    VisibilityChanged,
)
from broker.model.settings import QueueSettings
from broker.store import sqlite_reads, sqlite_writer
from broker.store.base import StoredMessage
from broker.store.sqlite import SqliteStore
from broker.store.sqlite_cache import CACHE_ENTRY_OVERHEAD
from tests.support.mutations import inserted

# ---------------------------------------------------------------------- answered from memory


def tamper_bodies(data_dir: Path, body: bytes) -> None:
    """Overwrite every stored body behind the store's back: reads that show it hit the file."""
    connection = sqlite3.connect(data_dir / "wharf.sqlite3", isolation_level=None)
    connection.execute("UPDATE messages SET body = ?", (body,))
    connection.close()


async def test_recent_messages_are_answered_from_memory_until_they_go(tmp_path):
    store = SqliteStore(tmp_path)
    await store.open()
    try:
        queue = await store.create_queue("q", QueueSettings(), {}, 0)
        qid = queue.queue_id
        await store.commit([inserted(qid, seq, f"body {seq}") for seq in (1, 2, 3)])
        tamper_bodies(tmp_path, b"from the file")
        assert [m.body for m in await store.read_messages(qid, [3, 1])] == ["body 3", "body 1"]
        await store.commit(
            [MessageDelivered(queue_id=qid, seq=2, visible_at=9, receive_count=1, received_at=7)]
        )
        (delivered,) = await store.read_messages(qid, [2])
        assert (delivered.body, delivered.first_received_at) == ("body 2", 7)
        await store.commit([MessageDeleted(queue_id=qid, seq=1)])
        assert await store.read_messages(qid, [1]) == []
        await store.commit([QueuePurged(queue_id=qid, below_seq=3)])
        # Purged rows stay in the file until reclaimed; only the cache forgot them at once.
        assert [m.body for m in await store.read_messages(qid, [2, 3])] == [
            "from the file",
            "body 3",
        ]
    finally:
        await store.aclose()


async def test_the_body_cache_keeps_a_backlogs_head_and_yields_to_other_queues(tmp_path):
    one = len("body 1") + CACHE_ENTRY_OVERHEAD
    store = SqliteStore(tmp_path, body_cache_bytes=2 * one)
    await store.open()
    try:
        queue = await store.create_queue("q", QueueSettings(), {}, 0)
        other = await store.create_queue("other", QueueSettings(), {}, 0)
        qid = queue.queue_id
        for seq in (1, 2, 3):
            await store.commit([inserted(qid, seq, f"body {seq}")])
        await store.commit([inserted(other.queue_id, 1, "body 1")])
        tamper_bodies(tmp_path, b"from the file")
        # The queue's own third send did not push its head out; the other queue's send took
        # the oldest's room.
        bodies = [m.body for m in await store.read_messages(qid, [1, 2, 3])]
        assert bodies == ["from the file", "body 2", "from the file"]
        assert [m.body for m in await store.read_messages(other.queue_id, [1])] == ["body 1"]
    finally:
        await store.aclose()


# ---------------------------------------------------------------------- read-ahead


def cost_of(body: str) -> int:
    return len(body) + CACHE_ENTRY_OVERHEAD


async def open_deep_queue(
    tmp_path: Path, count: int = 500, cached: int = 200
) -> tuple[SqliteStore, int]:
    """A queue of ``count`` messages none of which the cache holds: it has room for
    ``cached`` (its read-ahead share: a quarter of that), and another queue's later sends
    pushed out the ones it kept."""
    store = SqliteStore(tmp_path, body_cache_bytes=cached * cost_of("body 100"))
    await store.open()
    queue = await store.create_queue("q", QueueSettings(), {}, 0)
    qid = queue.queue_id
    await store.commit([inserted(qid, seq, f"body {seq}") for seq in range(1, count + 1)])
    filler = await store.create_queue("filler", QueueSettings(), {}, 0)
    await store.commit(
        [inserted(filler.queue_id, seq, f"body {seq}") for seq in range(1, cached + 1)]
    )
    return store, qid


def count_file_reads(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """Record the seqs of every read of asked-for messages from the file."""
    reads: list[list[int]] = []
    real = sqlite_reads._read_messages

    def counted(connection, queue_id, seqs, sealer):  # type: ignore[no-untyped-def]
        reads.append(list(seqs))
        return real(connection, queue_id, seqs, sealer)

    monkeypatch.setattr(sqlite_reads, "_read_messages", counted)
    return reads


def hold_read_ahead(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """Make the next read-aheads stop, their rows read and their snapshot still open, until
    released: (has read, release)."""
    has_read, release = threading.Event(), threading.Event()
    real = sqlite_reads._read_ahead

    def held(connection, reading):  # type: ignore[no-untyped-def]
        rows = real(connection, reading)
        has_read.set()
        release.wait(10)
        return rows

    monkeypatch.setattr(sqlite_reads, "_read_ahead", held)
    return has_read, release


def bodies(messages: list[StoredMessage]) -> list[str]:
    return [m.body for m in messages]


async def test_a_deep_backlog_is_read_ahead_and_answered_from_memory(tmp_path, monkeypatch):
    reads = count_file_reads(monkeypatch)
    store, qid = await open_deep_queue(tmp_path)
    try:
        assert bodies(await store.read_messages(qid, range(1, 11))) == [
            f"body {seq}" for seq in range(1, 11)
        ]
        tamper_bodies(tmp_path, b"from the file")
        for first in (11, 21, 31):
            assert bodies(await store.read_messages(qid, range(first, first + 10))) == [
                f"body {seq}" for seq in range(first, first + 10)
            ]
        assert reads == [list(range(1, 11))]  # one trip to the file for 40 messages
        # A receive took them: one taken again (a redelivery) comes from the file.
        assert bodies(await store.read_messages(qid, [11])) == ["from the file"]
    finally:
        await store.aclose()


async def test_a_read_ahead_replays_what_happened_while_it_ran(tmp_path, monkeypatch):
    has_read, release = hold_read_ahead(monkeypatch)
    store, qid = await open_deep_queue(tmp_path)
    dead_letters = await store.create_queue("dlq", QueueSettings(), {}, 0)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.read_messages, qid, range(1, 11))
            assert await trio.to_thread.run_sync(has_read.wait, 10)
            # The reader holds rows 11... as they were; these become durable meanwhile.
            await store.commit(
                [
                    MessageDeleted(queue_id=qid, seq=12),
                    MessageDelivered(
                        queue_id=qid, seq=13, visible_at=9, receive_count=1, received_at=4242
                    ),
                    MessageMoved(
                        source_queue_id=qid,
                        source_seq=14,
                        target_queue_id=dead_letters.queue_id,
                        target_seq=1,
                        enqueued_at=None,
                        visible_at=0,
                        source_arn="arn:aws:sqs:us-east-1:000000000000:q",
                    ),
                ]
            )
            release.set()
        tamper_bodies(tmp_path, b"from the file")
        found = {m.seq: m for m in await store.read_messages(qid, [11, 12, 13, 14, 15])}
        assert sorted(found) == [11, 13, 15]  # deleted and moved ones stay gone
        assert [found[seq].body for seq in (11, 13, 15)] == ["body 11", "body 13", "body 15"]
        assert found[13].first_received_at == 4242
    finally:
        release.set()
        await store.aclose()


async def test_a_receive_queued_before_the_read_began_is_not_lost(tmp_path, monkeypatch):
    # The receive's commit is queued (commit_later) but not on disk when the reader takes
    # its snapshot: the row read shows no first receive, the cache must.
    store, qid = await open_deep_queue(tmp_path)
    writing, proceed = threading.Event(), threading.Event()
    real = sqlite_writer.apply_mutations

    def held(connection, mutations, *rest):  # type: ignore[no-untyped-def]
        if any(isinstance(m, MessageDelivered) for m in mutations):
            writing.set()
            proceed.wait(10)
        return real(connection, mutations, *rest)

    monkeypatch.setattr(sqlite_writer, "apply_mutations", held)
    try:
        store.commit_later(
            [MessageDelivered(queue_id=qid, seq=13, visible_at=9, receive_count=1, received_at=77)]
        )
        # Held back (write-behind) until a later commit touches the message: this one.
        store.commit_later([VisibilityChanged(queue_id=qid, seq=13, visible_at=9)])
        assert await trio.to_thread.run_sync(writing.wait, 10)
        await store.read_messages(qid, range(1, 11))  # reads 11... ahead meanwhile
        proceed.set()
        await store.commit([])  # durable after the receive
        tamper_bodies(tmp_path, b"from the file")
        (message,) = await store.read_messages(qid, [13])
        assert (message.body, message.first_received_at) == ("body 13", 77)
    finally:
        proceed.set()
        await store.aclose()


async def test_receives_wait_for_the_read_ahead_bringing_their_messages(tmp_path, monkeypatch):
    reads = count_file_reads(monkeypatch)
    has_read, release = hold_read_ahead(monkeypatch)
    store, qid = await open_deep_queue(tmp_path)
    results: dict[str, list[StoredMessage]] = {}

    async def receive(name: str, seqs: range) -> None:
        results[name] = await store.read_messages(qid, seqs)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive, "first", range(1, 11))
            assert await trio.to_thread.run_sync(has_read.wait, 10)
            nursery.start_soon(receive, "second", range(11, 21))
            await trio.testing.wait_all_tasks_blocked()
            assert "second" not in results
            release.set()
        assert bodies(results["second"]) == [f"body {seq}" for seq in range(11, 21)]
        assert reads == [list(range(1, 11))]
    finally:
        release.set()
        await store.aclose()


async def test_a_queue_deleted_during_a_read_ahead_keeps_nothing_in_memory(tmp_path, monkeypatch):
    has_read, release = hold_read_ahead(monkeypatch)
    store, qid = await open_deep_queue(tmp_path)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.read_messages, qid, range(1, 11))
            assert await trio.to_thread.run_sync(has_read.wait, 10)
            await store.delete_queue(qid, deleted_at=1, forget_before=0)
            release.set()
        tamper_bodies(tmp_path, b"from the file")
        assert "body 11" not in bodies(await store.read_messages(qid, [11]))
    finally:
        release.set()
        await store.aclose()


async def test_messages_restored_at_start_are_read_ahead(tmp_path, monkeypatch):
    store = SqliteStore(tmp_path)
    await store.open()
    queue = await store.create_queue("q", QueueSettings(), {}, 0)
    qid = queue.queue_id
    await store.commit([inserted(qid, seq, f"body {seq}") for seq in range(1, 51)])
    await store.aclose()
    reads = count_file_reads(monkeypatch)
    store = SqliteStore(tmp_path)
    await store.open()
    try:
        await store.load()
        assert bodies(await store.read_messages(qid, range(1, 11)))[0] == "body 1"
        tamper_bodies(tmp_path, b"from the file")
        # A deep backlog restored at start drains from memory like one sent since.
        assert bodies(await store.read_messages(qid, [11])) == ["body 11"]
        assert reads == [list(range(1, 11))]
    finally:
        await store.aclose()


async def test_body_md5s_come_back_from_the_file_alone_and_through_the_read_ahead(tmp_path):
    digest = {seq: hashlib.md5(f"body {seq}".encode()).hexdigest() for seq in range(1, 31)}
    store = SqliteStore(tmp_path)
    await store.open()
    queue = await store.create_queue("q", QueueSettings(), {}, 0)
    qid = queue.queue_id
    await store.commit(
        [
            msgspec.structs.replace(inserted(qid, seq, f"body {seq}"), body_md5=digest[seq])
            for seq in range(1, 31)
        ]
    )
    await store.aclose()
    store = SqliteStore(tmp_path)  # a restart: the file is the only copy
    await store.open()
    try:
        await store.load()
        first = await store.read_messages(qid, range(1, 11))  # from the file; reads ahead
        second = await store.read_messages(qid, range(11, 21))  # from the read-ahead
        assert [m.body_md5 for m in [*first, *second]] == [digest[s] for s in range(1, 21)]
    finally:
        await store.aclose()


async def test_purged_rows_awaiting_reclaim_are_not_read_ahead(tmp_path):
    store, qid = await open_deep_queue(tmp_path)
    try:
        await store.commit([QueuePurged(queue_id=qid, below_seq=100)])
        await store.read_messages(qid, [5])  # reads ahead from the purge mark on
        tamper_bodies(tmp_path, b"from the file")
        assert "body 50" not in bodies(await store.read_messages(qid, [50]))
        assert bodies(await store.read_messages(qid, [100])) == ["body 100"]
    finally:
        await store.aclose()


# ---------------------------------------------------------------------- read connections


async def test_reads_need_no_new_file_descriptor_after_the_store_opened(tmp_path, monkeypatch):
    # A daemon out of descriptors (thousands of client connections) cannot open a connection:
    # the reads must still work, as a receive has marked its messages received before it reads.
    store = SqliteStore(tmp_path, body_cache_bytes=0)  # every read goes to the file
    await store.open()
    try:
        queue = await store.create_queue("q", QueueSettings(), {}, 0)
        await store.commit([inserted(queue.queue_id, seq, f"body {seq}") for seq in (1, 2)])

        def out_of_descriptors(*args: object, **kwargs: object) -> sqlite3.Connection:
            raise sqlite3.OperationalError("unable to open database file")

        monkeypatch.setattr(sqlite3, "connect", out_of_descriptors)
        async with trio.open_nursery() as nursery:  # as many at once as there are readers
            for _ in range(sqlite_reads.MAX_READERS):
                nursery.start_soon(store.read_messages, queue.queue_id, [1, 2])
        bodies = [m.body for m in await store.read_messages(queue.queue_id, [2, 1])]
        assert bodies == ["body 2", "body 1"]
    finally:
        await store.aclose()
