"""The SQLite store: group commit, cancellation, failure isolation, reclaim, kill -9."""

import contextlib
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgspec
import pytest
import trio
import trio.lowlevel
import trio.testing

from broker.model import new_index
from broker.model.messages import SendRequest
from broker.model.mutations import (
    MessageDeleted,
    MessageDelivered,
    MessageMoved,
    QueuePurged,
    VisibilityChanged,
)
from broker.model.settings import QueueSettings
from broker.model.signing import Signer
from broker.store import sqlite as sqlite_store
from broker.store.base import StoredMessage, StoreError
from broker.store.sqlite import SqliteStore
from broker.store.sqlite_apply import reclaim_step
from broker.store.sqlite_cache import CACHE_ENTRY_OVERHEAD
from tests.support.mutations import inserted

REPO = Path(__file__).resolve().parents[3]
CRASH_CHILD = REPO / "tests" / "support" / "store_crash_child.py"


async def wait_until_reclaimed(store: SqliteStore) -> None:
    """The writer reclaims while idle; give it up to 20 seconds."""
    for _ in range(1_000):
        if store.statistics().reclaiming_queues == 0:
            return
        await trio.sleep(0.02)
    raise AssertionError("purged rows were not reclaimed")


def free_pages(store: SqliteStore) -> int:
    with contextlib.closing(sqlite3.connect(store.path)) as connection:
        count: int = connection.execute("PRAGMA freelist_count").fetchone()[0]
        return count


async def wait_until_vacuumed(store: SqliteStore) -> None:
    """After reclaiming, the writer gives free pages back while idle; up to 20 seconds."""
    for _ in range(1_000):
        if free_pages(store) == 0:
            return
        await trio.sleep(0.02)
    raise AssertionError(f"{free_pages(store)} free pages were not given back")


def checkpoint(store: SqliteStore) -> None:
    """Copy the whole WAL into the file now (the store's checkpoint thread does it paced).

    Busy while that thread checkpoints at the same moment: then again, a little later.
    """
    with contextlib.closing(sqlite3.connect(store.path)) as connection:
        for _ in range(200):
            busy, _, _ = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if busy == 0:
                return
            time.sleep(0.01)
        raise AssertionError("the WAL stayed busy")


@pytest.fixture
async def store(tmp_path):
    store = SqliteStore(tmp_path)
    await store.open()
    yield store
    await store.aclose()


async def test_concurrent_callers_share_commits(store):
    queue = await store.create_queue("q", QueueSettings(), {}, 0)
    before = store.statistics()
    callers = 300
    async with trio.open_nursery() as nursery:
        for seq in range(1, callers + 1):
            nursery.start_soon(store.commit, [inserted(queue.queue_id, seq)])
    after = store.statistics()
    commits = after.commits - before.commits
    assert after.mutations - before.mutations == callers
    assert commits < callers / 2, "callers waiting together should share fsyncs"
    assert after.mutations_per_commit.count == after.commits
    assert len(await store.read_messages(queue.queue_id, range(1, callers + 1))) == callers


async def test_commits_land_in_call_order(store):
    queue = await store.create_queue("q", QueueSettings(), {}, 0)
    order: list[int] = []
    async with trio.open_nursery() as nursery:
        for seq in range(1, 50):
            nursery.start_soon(
                store.commit, [inserted(queue.queue_id, seq)], lambda seq=seq: order.append(seq)
            )
            await trio.lowlevel.checkpoint()
    assert order == sorted(order)


async def test_a_cancelled_caller_still_gets_its_batch_committed(store):
    queue = await store.create_queue("q", QueueSettings(), {}, 0)
    durable = trio.Event()
    with trio.CancelScope() as scope:
        scope.cancel()  # cancelled before it even waits
        await store.commit([inserted(queue.queue_id, 1)], durable.set)
    with trio.fail_after(5):
        await durable.wait()
    await store.commit([inserted(queue.queue_id, 2)])
    assert len(await store.read_messages(queue.queue_id, [1, 2])) == 2


async def test_a_failing_job_fails_alone_and_the_next_commit_sees_the_failure(store):
    queue = await store.create_queue("q", QueueSettings(), {}, 0)
    await store.commit([inserted(queue.queue_id, 1)])
    results: dict[str, object] = {}

    async def attempt(name, mutations):
        try:
            await store.commit(mutations)
            results[name] = "ok"
        except StoreError as error:
            results[name] = error

    async with trio.open_nursery() as nursery:
        nursery.start_soon(attempt, "duplicate", [inserted(queue.queue_id, 1)])
        nursery.start_soon(attempt, "fine", [inserted(queue.queue_id, 2)])
    assert results["fine"] == "ok"
    assert isinstance(results["duplicate"], StoreError)
    assert store.statistics().failed_jobs == 1


async def test_a_failing_job_among_many_that_share_a_commit_fails_alone(store):
    # Jobs that share a commit are applied together first; one failure makes the writer
    # apply them again one savepoint each, so only the failing job's caller sees an error.
    queue = await store.create_queue("q", QueueSettings(), {}, 0)
    await store.commit([inserted(queue.queue_id, 1)])
    results: dict[int, object] = {}

    async def attempt(seq):
        try:
            await store.commit([inserted(queue.queue_id, seq)])
            results[seq] = "ok"
        except StoreError as error:
            results[seq] = error

    async with trio.open_nursery() as nursery:
        for seq in [2, 3, 4, 1, 5, 6, 7]:  # 1 is a duplicate
            nursery.start_soon(attempt, seq)
    assert isinstance(results.pop(1), StoreError)
    assert results == dict.fromkeys(range(2, 8), "ok")
    assert store.statistics().failed_jobs == 1
    stored = await store.read_messages(queue.queue_id, range(1, 8))
    assert [m.seq for m in stored] == list(range(1, 8))


async def test_closing_flushes_queued_commits(tmp_path):
    store = SqliteStore(tmp_path)
    await store.open()
    queue = await store.create_queue("q", QueueSettings(), {}, 0)
    async with trio.open_nursery() as nursery:
        for seq in range(1, 20):
            nursery.start_soon(store.commit, [inserted(queue.queue_id, seq)])
        await trio.lowlevel.checkpoint()
        nursery.start_soon(store.aclose)
    reopened = SqliteStore(tmp_path)
    await reopened.open()
    (loaded,) = await reopened.load()
    assert len(loaded.messages) == 19
    await reopened.aclose()
    with pytest.raises(StoreError, match="not open"):
        await store.commit([])


async def test_purged_rows_are_reclaimed_and_the_file_stops_growing(store):
    queue = await store.create_queue("q", QueueSettings(), {}, 0)
    body = "x" * 4_000
    sizes = []
    seq = 0
    for _ in range(4):
        batch = []
        for _ in range(1_500):
            seq += 1
            batch.append(inserted(queue.queue_id, seq, body))
        await store.commit(batch)
        await store.commit([QueuePurged(queue_id=queue.queue_id, below_seq=seq + 1)])
        await wait_until_reclaimed(store)
        await wait_until_vacuumed(store)
        checkpoint(store)
        sizes.append(store.path.stat().st_size)
    assert sizes[-1] <= sizes[0] * 1.2, sizes
    assert sizes[-1] < len(body) * 1_500 / 2, sizes  # the purged rows' pages were given back


async def test_deleted_queue_rows_are_reclaimed(store):
    queue = await store.create_queue("q", QueueSettings(), {}, 0)
    await store.commit([inserted(queue.queue_id, seq) for seq in range(1, 100)])
    await store.delete_queue(queue.queue_id, deleted_at=1, forget_before=0)
    await wait_until_reclaimed(store)
    assert await store.read_messages(queue.queue_id, [1, 50]) == []
    assert await store.load() == []


async def test_housekeeping_goes_in_small_steps_and_stops_for_a_queued_job(tmp_path, monkeypatch):
    store = SqliteStore(tmp_path)
    await store.open()
    queue = await store.create_queue("q", QueueSettings(), {}, 0)
    await store.commit([inserted(queue.queue_id, seq, "x" * 1_000) for seq in range(1, 2_001)])
    await store.aclose()
    with contextlib.closing(sqlite3.connect(store.path)) as connection:
        connection.execute("UPDATE queues SET deleted = 1")
        connection.commit()
    # The writer's housekeeping, driven by hand: no writer thread is started.
    steps: list[int] = []

    def counted_step(connection: sqlite3.Connection, queue_id: int, limit: int) -> bool:
        steps.append(limit)
        return reclaim_step(connection, queue_id, limit)

    monkeypatch.setattr(sqlite_store, "reclaim_step", counted_step)
    housekeeper = SqliteStore(tmp_path)
    writer = housekeeper._open_writer()
    try:
        assert housekeeper.statistics().reclaiming_queues == 1
        job = object()
        housekeeper._jobs.put(job)  # a commit arrives: housekeeping stops after one step
        assert housekeeper._housekeep(writer) is job
        assert len(steps) == 1
        assert housekeeper._housekeep(writer) is None  # nothing queued: to the end
        assert housekeeper.statistics().reclaiming_queues == 0
        assert len(steps) >= 2_000 // sqlite_store.RECLAIM_ROWS
        assert set(steps) == {sqlite_store.RECLAIM_ROWS}
        assert writer.execute("SELECT count(*) FROM messages").fetchone() == (0,)
        assert writer.execute("PRAGMA freelist_count").fetchone() == (0,)
        assert writer.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL for commits
    finally:
        writer.close()


async def test_the_checkpoint_thread_copies_the_wal_into_the_file(store):
    queue = await store.create_queue("q", QueueSettings(), {}, 0)
    size = store.path.stat().st_size
    # ~2 MiB: below the writer's own checkpoint threshold, so only the thread copies it.
    await store.commit([inserted(queue.queue_id, seq, "x" * 4_000) for seq in range(1, 501)])
    for _ in range(1_000):
        if store.path.stat().st_size > size + 1_000_000:
            return
        await trio.sleep(0.02)
    raise AssertionError("the WAL was not checkpointed into the file")


def run_child_until_killed(data_dir: Path) -> dict[int, dict[int, tuple[int, str]]]:
    """Start the crash child, read 400 acknowledgements, SIGKILL it mid-stream.

    Returns:
        group -> number -> (seq, message id) of every acknowledged send.
    """
    acknowledged: dict[int, dict[int, tuple[int, str]]] = {}

    def note(line: str) -> None:
        group, number, seq, message_id = line.split()
        acknowledged.setdefault(int(group), {})[int(number)] = (int(seq), message_id)

    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    with subprocess.Popen(
        # -P: tests/support (the script's directory) has broker.py and http.py, which must not
        # shadow the broker package and the standard library's http.
        [sys.executable, "-P", str(CRASH_CHILD), str(data_dir)],
        stdout=subprocess.PIPE,
        env=environment,
        text=True,
    ) as child:
        assert child.stdout is not None
        deadline = time.monotonic() + 60
        count = 0
        while count < 400 and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            note(line)
            count += 1
        child.send_signal(signal.SIGKILL)
        # Lines written before the kill were acknowledged too.
        for line in child.stdout:
            if line.endswith("\n"):
                note(line)
    return acknowledged


@pytest.mark.slow
async def test_nothing_acknowledged_is_lost_on_sigkill(tmp_path):
    """A child sends to a FIFO queue from 8 tasks and prints each acknowledged send; we
    kill it with SIGKILL mid-stream. Every acknowledged message must be there after a
    restart, each group in send order, with its deduplication id still remembered."""
    acknowledged = await trio.to_thread.run_sync(run_child_until_killed, tmp_path)
    assert sum(map(len, acknowledged.values())) >= 400, "the child did not get going"

    store = SqliteStore(tmp_path)
    await store.open()
    (loaded,) = await store.load()
    index = new_index(
        queue_id=loaded.record.queue_id,
        name=loaded.record.name,
        arn="arn:aws:sqs:us-east-1:000000000000:crash.fifo",
        settings=loaded.record.settings,
        signer=Signer(b"crash test key, 32 bytes long..."),
        next_seq=loaded.record.next_seq,
    )
    now = int(time.time() * 1000)
    index.restore(loaded.messages, now)
    for entry in loaded.deduplication:
        index.restore_deduplication(entry.key, entry.seq, entry.expires_at)

    stored_seqs = set(loaded.messages.seq)
    for group, sends in acknowledged.items():
        for number, (seq, _) in sends.items():
            assert seq in stored_seqs, f"acknowledged send {group}:{number} was lost"

    received: dict[int, list[int]] = {}
    while True:
        outcome = index.receive(now, max_messages=10)
        if not outcome.deliveries:
            break
        messages = await store.read_messages(
            loaded.record.queue_id, [d.seq for d in outcome.deliveries]
        )
        for message in messages:
            group, number = map(int, message.body.split(":"))
            received.setdefault(group, []).append(number)
        for delivery in outcome.deliveries:
            index.delete(now, delivery.receipt_handle)
    for group, sends in acknowledged.items():
        numbers = received[group]
        assert numbers == sorted(numbers), f"group {group} out of order"
        assert set(sends) <= set(numbers)

    group, sends = next(iter(acknowledged.items()))
    number, (seq, message_id) = next(iter(sends.items()))
    duplicate = index.send(
        now,
        SendRequest(body="again", group_id=f"g{group}", deduplication_id=f"{group}-{number}"),
    )
    assert duplicate.results[0].duplicate
    assert duplicate.results[0].message_id == message_id
    await store.aclose()


# ---------------------------------------------------------------------- body cache, commit_later


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


async def test_commit_later_keeps_call_order_with_commits(store):
    queue = await store.create_queue("q", QueueSettings(), {}, 0)
    order: list[int] = []
    store.commit_later([inserted(queue.queue_id, 1)], lambda: order.append(1))
    await store.commit([inserted(queue.queue_id, 2)], lambda: order.append(2))
    assert order == [1, 2]  # durable no later than the commit queued after it
    assert len(await store.read_messages(queue.queue_id, [1, 2])) == 2


async def test_a_failed_commit_later_fails_the_store_and_leaves_no_trace_in_memory(store):
    queue = await store.create_queue("q", QueueSettings(), {}, 0)
    await store.commit([inserted(queue.queue_id, 1, "first")])
    store.commit_later([inserted(queue.queue_id, 1, "second")])  # a duplicate: it fails
    await store.commit([inserted(queue.queue_id, 2)])
    with pytest.raises(StoreError):
        await store.commit([inserted(queue.queue_id, 3)])
    with pytest.raises(StoreError):
        store.commit_later([inserted(queue.queue_id, 3)])
    assert [m.body for m in await store.read_messages(queue.queue_id, [1])] == ["first"]


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
    real = sqlite_store._read_messages

    def counted(connection, queue_id, seqs, sealer):  # type: ignore[no-untyped-def]
        reads.append(list(seqs))
        return real(connection, queue_id, seqs, sealer)

    monkeypatch.setattr(sqlite_store, "_read_messages", counted)
    return reads


def hold_read_ahead(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """Make the next read-aheads stop, their rows read and their snapshot still open, until
    released: (has read, release)."""
    has_read, release = threading.Event(), threading.Event()
    real = sqlite_store._read_ahead

    def held(connection, reading):  # type: ignore[no-untyped-def]
        rows = real(connection, reading)
        has_read.set()
        release.wait(10)
        return rows

    monkeypatch.setattr(sqlite_store, "_read_ahead", held)
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
    real = sqlite_store.apply_mutations

    def held(connection, mutations, *rest):  # type: ignore[no-untyped-def]
        if any(isinstance(m, MessageDelivered) for m in mutations):
            writing.set()
            proceed.wait(10)
        return real(connection, mutations, *rest)

    monkeypatch.setattr(sqlite_store, "apply_mutations", held)
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
