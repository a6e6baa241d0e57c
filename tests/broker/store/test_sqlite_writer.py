"""The writer thread: group commit, failure isolation, housekeeping, checkpoints."""

import contextlib
import os
import sqlite3
import stat
import threading
import time

import pytest
import trio

from broker.model.mutations import QueuePurged
from broker.model.settings import QueueSettings
from broker.store import sqlite_writer
from broker.store.base import HistogramRecorder, StoreError
from broker.store.sqlite import SqliteStore
from broker.store.sqlite_apply import reclaim_step
from tests.support.broker import BrokerThread, broker_config
from tests.support.mutations import inserted


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


async def test_a_store_failed_by_sqlite_itself_says_why(store, monkeypatch):
    """SQLite rolls the whole transaction back on some errors (a full disk, an I/O error):
    the store fails with that error, not with the ROLLBACK that then has nothing to undo
    (found by a report-only hunt: "cannot rollback - no transaction is active")."""
    queue = await store.create_queue("q", QueueSettings(), {}, 0)
    applying = sqlite_writer.apply_mutations

    def fill_the_disk(connection, *args):
        applying(connection, *args)
        connection.execute("ROLLBACK")  # what SQLite did on SQLITE_FULL
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(sqlite_writer, "apply_mutations", fill_the_disk)
    with pytest.raises(StoreError, match="database or disk is full"):
        await store.commit([inserted(queue.queue_id, 1)])
    with pytest.raises(StoreError, match="the store failed earlier: database or disk is full"):
        await store.commit([inserted(queue.queue_id, 2)])


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

    monkeypatch.setattr(sqlite_writer, "reclaim_step", counted_step)
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
        assert len(steps) >= 2_000 // sqlite_writer.RECLAIM_ROWS
        assert set(steps) == {sqlite_writer.RECLAIM_ROWS}
        assert writer.execute("SELECT count(*) FROM messages").fetchone() == (0,)
        assert writer.execute("PRAGMA freelist_count").fetchone() == (0,)
        assert writer.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL for commits
    finally:
        writer.close()


async def test_an_idle_writer_checkpoints_the_wal_into_the_file(store):
    queue = await store.create_queue("q", QueueSettings(), {}, 0)
    size = store.path.stat().st_size
    # ~2 MiB: below SQLite's automatic checkpoint threshold, so only the writer's own copies it.
    await store.commit([inserted(queue.queue_id, seq, "x" * 4_000) for seq in range(1, 501)])
    for _ in range(1_000):
        if store.path.stat().st_size > size + 1_000_000:
            return
        await trio.sleep(0.02)
    raise AssertionError("the WAL was not checkpointed into the file")


async def test_a_writer_never_idle_still_checkpoints_between_commits(store):
    queue = await store.create_queue("q", QueueSettings(), {}, 0)
    size = store.path.stat().st_size
    seq = 0
    for _ in range(300):  # a commit every few ms: never CHECKPOINT_SECONDS without one
        await store.commit([inserted(queue.queue_id, seq + i, "x" * 4_000) for i in range(1, 6)])
        seq += 5
        if store.path.stat().st_size > size + 1_000_000:
            break
        await trio.sleep(0.005)
    else:
        raise AssertionError("the WAL was not checkpointed while commits went on")
    # One connection writes and checkpoints (the WAL-reset race needs two): no other thread.
    assert not [t for t in threading.enumerate() if t.name == "wharf-store-checkpoint"]


def test_a_new_store_and_its_wal_are_the_owners_only_in_a_directory_made_0755(tmp_path):
    # A data directory made by hand (mkdir: 0755) and a broker started from a shell (umask
    # 022): the store holds every message of the queues stored in clear.
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)
    data_dir.chmod(0o755)
    before = os.umask(0o022)
    try:
        with BrokerThread(broker_config(data_dir)) as broker:
            sqs = broker.client()
            url = sqs.create_queue(QueueName="q", Attributes={"SqsManagedSseEnabled": "false"})
            sqs.send_message(QueueUrl=url["QueueUrl"], MessageBody="in clear")
            modes = {
                name: stat.S_IMODE((data_dir / name).stat().st_mode)
                for name in ("wharf.sqlite3", "wharf.sqlite3-wal", "wharf.sqlite3-shm")
            }
    finally:
        os.umask(before)
    assert modes == dict.fromkeys(modes, 0o600)


def test_a_commit_of_seconds_is_measured_not_capped_at_one_second():
    """histogram_quantile() never answers above the highest finite bucket: with 1 s the top
    one, a disk whose commits took 4 s read as a p99 of 1 s. A commit of seconds (a degraded
    disk, a large checkpoint) lands in a finite bucket of wharf_store_commit_duration_seconds."""
    recorder = HistogramRecorder(sqlite_writer.COMMIT_SECONDS_BOUNDS)
    recorder.observe(4.0)
    observed = recorder.snapshot()
    finite = dict(zip(observed.bounds, observed.cumulative_counts, strict=False))
    holding = [bound for bound, count in finite.items() if count == 1]
    assert holding[:1] == [5.0]  # the 2.5 s bucket holds none, the 5 s one the 4 s commit
