"""The embedded store: one SQLite file, WAL, one writer thread doing group commit.

Writes. Callers (trio tasks) queue jobs; one dedicated thread takes every job pending
(after a fraction of a millisecond's wait when the previous group was shared, so that more
callers join), applies them in one transaction -- the commit jobs' mutations as one batch;
should a job fail, the transaction is rolled back and redone with a savepoint per job, so
one bad job fails alone -- commits with ``synchronous=FULL`` (fsync), then hands the results
back to the trio thread through the trio token, where each job's ``on_durable`` runs and its
waiter wakes. Many callers therefore share one fsync; none is answered before it.

Receive records (``commit_later`` batches of ``MessageDelivered``) are held back in the trio
thread for up to ``HOLD_SECONDS`` (:mod:`broker.store.write_behind`): a delete of the message
meanwhile makes the record moot, any other write that touches the message has it queued just
ahead of itself, and the writer, idle, wakes every ``HOLD_SECONDS`` to have the due ones
queued. The body cache treats a held batch as not yet durable until each of its records is
written or moot.

Reads run in trio worker threads on separate read-only connections; WAL lets them proceed
while the writer commits.

Housekeeping never holds a commit up for long. When the writer has been idle for
``IDLE_SECONDS`` it reclaims purged and deleted rows, then gives free pages back to the
filesystem, in small transactions (``RECLAIM_ROWS`` rows, ``VACUUM_PAGES`` pages: well under a
millisecond each, without an fsync: see :meth:`SqliteStore._housekeep`) with a pause between
them, and stops as soon as a job is queued: a commit waits for one such step at most.
Checkpoints (copying the WAL into the database file and syncing it) run in their own thread on
their own connection, so a commit never pays for one either; the writer checkpoints itself
only should that thread fall ``WRITER_CHECKPOINT_PAGES`` behind.

Body cache (:mod:`broker.store.sqlite_cache`). The bodies (and everything else a receive
returns) of recently inserted messages are kept in memory, up to ``body_cache_bytes`` (64 MiB
by default), until the message is deleted, moved or purged, or until newer messages of other
queues push it out (oldest insert first; a queue whose own older messages, or those of a queue
holding no more than it, fill the budget keeps them, the heads, rather than its newest): a
receive of cached messages is answered without a worker thread and a query. The cache follows
the mutations in call order, in the caller's trio step, so it always agrees with the model. A
backlog larger than the budget is read ahead: a receive that has to read its messages from the
file reads, in the same reader-thread trip, the next few hundred rows of the queue too, so the
receives after it are answered from memory; rows read in a worker thread are brought up to date
with the mutations their snapshot may lack before they enter the cache (see that module);
messages restored at start are read ahead too. Messages of queues sealed at rest are never
cached: every read of those opens them with their key, as the key's retirement requires, and
their clear text stays out of long-lived memory.

Encryption at rest (:mod:`broker.store.sealing`): the store keeps each live queue's settings,
and ``commit`` picks, in the caller's trio step, the key each inserted message is sealed with;
the writer thread seals, the reader threads open.
"""

from __future__ import annotations

import contextlib
import json
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import trio

from broker.model.mutations import MessageInserted, MessageMoved
from broker.model.outcomes import RestoredMessage
from broker.model.settings import QueueSettings
from broker.model.topics import TopicSettings
from broker.store import sqlite_moves, sqlite_sns
from broker.store.base import (
    AnyMutation,
    DeduplicationEntry,
    HistogramRecorder,
    HttpPayload,
    KeyUnavailable,
    LoadedQueue,
    LoadedSns,
    MessageColumns,
    QueueNameTaken,
    QueueRecord,
    Store,
    StoredMessage,
    StoredMoveTask,
    StoreError,
    StoreFailed,
    StoreStatistics,
    TopicNameTaken,
    TopicRecord,
)
from broker.store.lock import DataDirectoryLock
from broker.store.sealing import Sealer, SealingKey, associated_data
from broker.store.sqlite_apply import ATTRIBUTES_DECODER, apply_mutations, reclaim_step
from broker.store.sqlite_cache import (
    BODY_CACHE_BYTES,
    CACHE_ENTRY_OVERHEAD,
    BodyCache,
    ReadAhead,
)
from broker.store.sqlite_schema import configure, migrate
from broker.store.write_behind import Held, HeldBatch, WriteBehind, written

FILE_NAME = "wharf.sqlite3"
IDLE_SECONDS = 0.05  # writer idle this long before it reclaims space (see the docstring)
# Group commit under concurrency: when the last group held more than one job, others are
# likely on their way, so the writer lets them gather this long before it takes what is
# queued (unless plenty already is). A lone caller never waits: its group held one job.
GATHER_SECONDS = 0.0003
GATHER_ENOUGH = 16  # jobs already queued: commit at once
# Rows deleted per reclaim transaction and free pages returned to the filesystem per vacuum
# transaction: well under 1 ms each on a quiet machine (2,000 rows and an fsync took 8-60 ms,
# and a send arriving meanwhile waited for all of it: send->receive p99 of 30-165 ms). On a
# loaded machine a step's wall time is mostly waiting for the CPU, so smaller is better.
RECLAIM_ROWS = 128
VACUUM_PAGES = 64
HOUSEKEEPING_PAUSE = 0.001  # between housekeeping steps (see SqliteStore._housekeep)
CHECKPOINT_SECONDS = 0.25  # the checkpoint thread runs at most this often, after commits
CHECKPOINT_ROUNDS = 4  # checkpoints in a row, each for what was committed during the last
# The writer's own (automatic) checkpoint: only when the checkpoint thread falls this far
# behind (pages of 4 KiB: 64 MiB of WAL). SQLite's default, 1,000, put a checkpoint of ~4 MiB
# inside whichever commit crossed it.
WRITER_CHECKPOINT_PAGES = 16_384
MAX_READERS = 4  # read connections kept open; one per concurrent reader thread
# Receive records held back (broker/store/write_behind.py): written at the latest this long
# after the receive, or once this many are held, unless a delete makes them moot first.
HOLD_SECONDS = 1.0
HOLD_RECORDS = 20_000
COMMIT_SECONDS_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
MUTATIONS_PER_COMMIT_BOUNDS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000)

_SETTINGS_DECODER = msgspec.json.Decoder(QueueSettings)
_T = TypeVar("_T")


class _Job:
    """One caller's unit of work for the writer thread.

    A :meth:`SqliteStore.commit` job also carries its mutations and sealing keys, so that the
    writer can apply a run of such jobs as one batch (``apply`` does the same for one job).
    """

    __slots__ = (
        "apply",
        "done",
        "error",
        "keys",
        "mutations",
        "on_durable",
        "result",
        "size",
        "waited",
    )

    def __init__(
        self,
        apply: Callable[[sqlite3.Connection], Any],
        on_durable: Callable[[], None] | None,
        size: int,
        mutations: list[AnyMutation] | None = None,
        keys: dict[int, SealingKey] | None = None,
    ) -> None:
        self.apply = apply
        self.on_durable = on_durable
        self.size = size
        self.mutations = mutations
        self.keys = keys
        self.done = trio.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.waited = True  # False: nobody waits (commit_later); a failure is then fatal


_STOP = object()


class SqliteStore(Store):
    """The SQLite implementation of :class:`~broker.store.base.Store`."""

    def __init__(
        self,
        data_dir: Path,
        *,
        sealer: Sealer | None = None,
        body_cache_bytes: int = BODY_CACHE_BYTES,
    ) -> None:
        """Remember where the file lives; :meth:`open` does the work.

        Args:
            data_dir: the broker's data directory; the file is ``wharf.sqlite3`` in it.
            sealer: the keys of encryption at rest; None stores every message in clear.
            body_cache_bytes: the budget of the body cache (0 turns it off).
        """
        self.path = Path(data_dir) / FILE_NAME
        self.lock = DataDirectoryLock(Path(data_dir))
        self.sealer = sealer or Sealer(None)
        self._cache = BodyCache(body_cache_bytes)
        self._held = WriteBehind(HOLD_SECONDS, HOLD_RECORDS)
        self._read_ahead_done: dict[int, trio.Event] = {}  # queue id -> its read-ahead landed
        self._settings: dict[int, QueueSettings] = {}  # live queues, for sealing
        self._jobs: queue.SimpleQueue[_Job | object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._writer: sqlite3.Connection | None = None
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._reader_slots = trio.Semaphore(MAX_READERS)
        self._failure: BaseException | None = None  # the first; set through _fail only
        self._failed = trio.Event()
        self._to_reclaim: set[int] = set()
        self._vacuum_due = False  # free pages to give back once reclaiming is done
        self._checkpointer: threading.Thread | None = None
        self._wal_written = threading.Event()  # set by the writer after each transaction
        self._truncate_wal = threading.Event()  # give_back_wal_space asked for it
        self._closing = threading.Event()
        self._commits = 0
        self._mutations = 0
        self._failed_jobs = 0
        self._pending = 0
        self._commit_seconds = HistogramRecorder(COMMIT_SECONDS_BOUNDS)
        self._per_commit = HistogramRecorder(MUTATIONS_PER_COMMIT_BOUNDS)

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Create or migrate the file and start the writer thread.

        Raises:
            DataDirectoryInUse: another broker has this data directory open.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock.acquire()
        try:
            self._writer = await trio.to_thread.run_sync(self._open_writer)
        except BaseException:
            self.lock.release()
            raise
        self._token = trio.lowlevel.current_trio_token()
        self._closing.clear()
        self._thread = threading.Thread(target=self._run_writer, name="wharf-store-writer")
        self._thread.start()
        self._checkpointer = threading.Thread(
            target=self._run_checkpointer, name="wharf-store-checkpoint"
        )
        self._checkpointer.start()

    async def wait_until_failed(self) -> BaseException:
        """See :meth:`Store.wait_until_failed`."""
        await self._failed.wait()
        assert self._failure is not None
        return self._failure

    def _fail(self, error: BaseException) -> None:
        """Record the store's first failure (from any thread) and wake the waiters for it."""
        if self._failure is not None:
            return
        self._failure = error
        token = self._token
        if token is not None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(self._failed.set)

    def _open_writer(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        configure(connection, writer=True)
        migrate(connection)
        connection.execute(f"PRAGMA wal_autocheckpoint = {WRITER_CHECKPOINT_PAGES}")
        rows = connection.execute(
            "SELECT queue_id FROM queues WHERE deleted = 1 OR purged_below > 0"
        ).fetchall()
        self._to_reclaim.update(queue_id for (queue_id,) in rows)
        return connection

    async def aclose(self) -> None:
        """Commit what is queued, stop the writer, close every connection."""
        thread = self._thread
        if thread is not None:
            if self._held and self._failure is None:
                self._write_held(self._held.take_all())
            self._jobs.put(_STOP)
            await trio.to_thread.run_sync(thread.join)
            self._thread = None
        checkpointer = self._checkpointer
        if checkpointer is not None:
            self._closing.set()
            self._wal_written.set()
            await trio.to_thread.run_sync(checkpointer.join)
            self._checkpointer = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        with self._readers_lock:
            for reader in self._readers:
                reader.close()
            self._readers.clear()
        self.lock.release()  # last: every connection to the file is closed

    # ------------------------------------------------------------------ writes

    async def commit(
        self, mutations: Sequence[AnyMutation], on_durable: Callable[[], None] | None = None
    ) -> None:
        """See :meth:`Store.commit`.

        Raises:
            KeyUnavailable: an inserted message's queue names a KMS key the key file lacks
                (callers prevent it with :meth:`check_sealing`); nothing was queued.
        """
        job = self._commit_job(mutations, on_durable)
        await self._wait(job)

    def commit_later(
        self, mutations: Sequence[AnyMutation], on_durable: Callable[[], None] | None = None
    ) -> None:
        """See :meth:`Store.commit_later`.

        Raises:
            KeyUnavailable: as :meth:`commit`; nothing was queued.
            StoreError: the store failed earlier, or is not open.
        """
        batch = list(mutations)
        if not WriteBehind.holdable(batch):
            self._commit_job(batch, on_durable).waited = False
            return
        # Receive records only: held back (see broker/store/write_behind.py).
        self._check_writable()
        if self._cache.budget:
            self._cache.track(batch, {})  # settled once every record is durable or moot
        first = self._held.hold(batch, on_durable, time.monotonic())
        if first:
            self._write_held(first)

    def _commit_job(
        self, mutations: Sequence[AnyMutation], on_durable: Callable[[], None] | None
    ) -> _Job:
        batch = list(mutations)
        if self._held:
            self._settle_held_records(batch)
        # Resolved now, in the caller's step: a reload of the key file or a settings change
        # after this point applies to later commits only.
        keys = self._sealing_keys(batch)
        job = self._queue(
            lambda connection: apply_mutations(connection, batch, self._to_reclaim, keys),
            on_durable,
            len(batch),
            mutations=batch,
            keys=keys,
        )
        if self._cache.budget:
            self._cache.track(batch, keys)
        return job

    def _settle_held_records(self, batch: list[AnyMutation]) -> None:
        """Before ``batch`` is queued: drop the held records of messages it deletes, queue
        those of messages it touches otherwise just ahead of it (and every one, when the
        oldest is due)."""
        held = self._held
        ahead, moot = held.before(batch)
        if held.due(time.monotonic()):
            ahead.extend(held.take_all())
        if ahead:
            self._write_held(ahead)
        for batch_held in moot:
            self._held_settled(batch_held)

    def _write_held(self, records: list[Held]) -> None:
        """Queue held records for the writer (in call order, as any commit)."""
        mutations: list[AnyMutation] = [record for record, _ in records]
        job = self._queue(
            lambda connection: apply_mutations(connection, mutations, self._to_reclaim),
            lambda: self._held_written(records),
            len(mutations),
            mutations=mutations,
            keys={},
        )
        job.waited = False

    def _held_written(self, records: list[Held]) -> None:
        for batch_held in written(records):
            self._held_settled(batch_held)

    def _held_settled(self, batch_held: HeldBatch) -> None:
        """Every record of a held batch is durable or moot: what waited for it may go on."""
        if self._cache.budget:
            self._cache.settled(batch_held.batch)
        if batch_held.on_durable is not None:
            try:
                batch_held.on_durable()
            except Exception as error:  # a bug in the caller's callback; nobody to tell
                self._fail(error)

    def _write_due(self) -> None:
        """Runs in the trio thread when the writer found nothing to do for ``HOLD_SECONDS``."""
        live = self._failure is None and self._thread is not None
        if live and self._held and self._held.due(time.monotonic()):
            self._write_held(self._held.take_all())

    def check_sealing(self, settings: QueueSettings) -> None:
        """See :meth:`Store.check_sealing`."""
        self.sealer.key_for(settings)

    def _sealing_keys(self, batch: list[AnyMutation]) -> dict[int, SealingKey]:
        keys: dict[int, SealingKey] = {}
        seen: set[int] = set()
        for mutation in batch:
            kind = type(mutation)  # exact types: a fifth of isinstance's cost, per mutation
            if kind is MessageInserted:
                assert isinstance(mutation, MessageInserted)
                queue_id, strict = mutation.queue_id, True
            elif kind is MessageMoved:
                assert isinstance(mutation, MessageMoved)
                # A dead-letter move must not fail inside a receive: a target whose KMS key
                # is missing keeps the row as its source stored it.
                queue_id, strict = mutation.target_queue_id, False
            else:
                continue
            settings = self._settings.get(queue_id)
            if queue_id in seen or settings is None:
                continue
            seen.add(queue_id)
            try:
                key = self.sealer.key_for(settings)
            except KeyUnavailable:
                if strict:
                    raise
                key = None
            if key is not None:
                keys[queue_id] = key
        return keys

    async def create_queue(
        self, name: str, settings: QueueSettings, tags: Mapping[str, str], now: int
    ) -> QueueRecord:
        """See :meth:`Store.create_queue`."""
        tags_copy = dict(tags)

        def insert(connection: sqlite3.Connection) -> int:
            cursor = connection.execute(
                "INSERT INTO queues (name, settings, tags, created_at, modified_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (name, msgspec.json.encode(settings), json.dumps(tags_copy), now, now),
            )
            assert cursor.lastrowid is not None
            return cursor.lastrowid

        try:
            queue_id = await self._submit(insert, None, 0)
        except StoreError as error:
            if isinstance(error.__cause__, sqlite3.IntegrityError):
                raise QueueNameTaken(f"a queue named {name!r} exists") from error
            raise
        self._settings[queue_id] = settings
        with contextlib.suppress(KeyUnavailable):  # AWS refuses a bad KMS key on send only
            self.sealer.key_for(settings)  # without a key file: warn now, not on a send
        return QueueRecord(
            queue_id=queue_id,
            name=name,
            settings=settings,
            tags=tags_copy,
            created_at=now,
            modified_at=now,
        )

    async def update_queue(self, queue_id: int, settings: QueueSettings, now: int) -> None:
        """See :meth:`Store.update_queue`."""
        encoded = msgspec.json.encode(settings)
        self._settings[queue_id] = settings  # before any later commit is queued
        await self._submit(
            lambda connection: connection.execute(
                "UPDATE queues SET settings = ?, modified_at = ? WHERE queue_id = ?",
                (encoded, now, queue_id),
            ),
            None,
            0,
        )

    async def set_tags(self, queue_id: int, tags: Mapping[str, str]) -> None:
        """See :meth:`Store.set_tags`."""
        encoded = json.dumps(dict(tags))
        await self._submit(
            lambda connection: connection.execute(
                "UPDATE queues SET tags = ? WHERE queue_id = ?", (encoded, queue_id)
            ),
            None,
            0,
        )

    async def delete_queue(self, queue_id: int, *, deleted_at: int, forget_before: int) -> None:
        """See :meth:`Store.delete_queue`."""
        self._settings.pop(queue_id, None)
        self._cache.drop_queue(queue_id)

        def mark(connection: sqlite3.Connection) -> None:
            connection.execute("UPDATE queues SET deleted = 1 WHERE queue_id = ?", (queue_id,))
            connection.execute(
                "INSERT OR REPLACE INTO queue_deletions (name, deleted_at) "
                "SELECT name, ? FROM queues WHERE queue_id = ?",
                (deleted_at, queue_id),
            )
            connection.execute("DELETE FROM queue_deletions WHERE deleted_at < ?", (forget_before,))
            self._to_reclaim.add(queue_id)

        await self._submit(mark, None, 0)

    async def queue_deletions(self, since: int) -> list[tuple[str, int]]:
        """See :meth:`Store.queue_deletions`."""

        def select(connection: sqlite3.Connection) -> list[tuple[str, int]]:
            return connection.execute(
                "SELECT name, deleted_at FROM queue_deletions WHERE deleted_at >= ? "
                "ORDER BY deleted_at",
                (since,),
            ).fetchall()

        return await self._read(select)

    # ------------------------------------------------------------------ SNS

    async def load_sns(self) -> LoadedSns:
        """See :meth:`Store.load_sns`."""
        return await self._read(sqlite_sns.load_sns)

    async def create_topic(
        self, name: str, settings: TopicSettings, tags: Mapping[str, str], now: int
    ) -> TopicRecord:
        """See :meth:`Store.create_topic`."""
        tags_copy = dict(tags)
        try:
            topic_id = await self._submit(
                lambda connection: sqlite_sns.insert_topic(
                    connection, name, settings, tags_copy, now
                ),
                None,
                0,
            )
        except StoreError as error:
            if isinstance(error.__cause__, sqlite3.IntegrityError):
                raise TopicNameTaken(f"a topic named {name!r} exists") from error
            raise
        return TopicRecord(
            topic_id=topic_id,
            name=name,
            settings=settings,
            tags=tags_copy,
            created_at=now,
            modified_at=now,
        )

    async def update_topic(self, topic_id: int, settings: TopicSettings, now: int) -> None:
        """See :meth:`Store.update_topic`."""
        await self._submit(
            lambda connection: sqlite_sns.update_topic(connection, topic_id, settings, now),
            None,
            0,
        )

    async def set_topic_tags(self, topic_id: int, tags: Mapping[str, str]) -> None:
        """See :meth:`Store.set_topic_tags`."""
        tags_copy = dict(tags)
        await self._submit(
            lambda connection: sqlite_sns.set_topic_tags(connection, topic_id, tags_copy),
            None,
            0,
        )

    async def delete_topic(self, topic_id: int) -> None:
        """See :meth:`Store.delete_topic`."""
        await self._submit(
            lambda connection: sqlite_sns.delete_topic(connection, topic_id), None, 0
        )

    async def read_http_payload(self, delivery_id: int) -> HttpPayload | None:
        """See :meth:`Store.read_http_payload`."""
        return await self._read(
            lambda connection: sqlite_sns.read_http_payload(connection, delivery_id)
        )

    # ------------------------------------------------------------------ move tasks

    async def load_move_tasks(self) -> list[StoredMoveTask]:
        """See :meth:`Store.load_move_tasks`."""
        return await self._read(sqlite_moves.load_move_tasks)

    async def save_move_task(self, task: StoredMoveTask, forget: Sequence[str] = ()) -> None:
        """See :meth:`Store.save_move_task`."""
        forgotten = list(forget)
        await self._submit(
            lambda connection: sqlite_moves.save_move_task(connection, task, forgotten), None, 0
        )

    async def _submit(
        self,
        apply: Callable[[sqlite3.Connection], Any],
        on_durable: Callable[[], None] | None,
        size: int,
        *,
        mutations: list[AnyMutation] | None = None,
        keys: dict[int, SealingKey] | None = None,
    ) -> Any:
        return await self._wait(self._queue(apply, on_durable, size, mutations, keys))

    def _queue(
        self,
        apply: Callable[[sqlite3.Connection], Any],
        on_durable: Callable[[], None] | None,
        size: int,
        mutations: list[AnyMutation] | None = None,
        keys: dict[int, SealingKey] | None = None,
    ) -> _Job:
        """Hand a job to the writer, now, in the caller's step: commits land in call order."""
        self._check_writable()
        if mutations is None and self._held:
            # Not a plain commit (a queue operation, a backup): the file is brought up to date.
            self._write_held(self._held.take_all())
        job = _Job(apply, on_durable, size, mutations, keys)
        self._pending += 1
        self._jobs.put(job)
        return job

    def _check_writable(self) -> None:
        if self._failure is not None:
            raise StoreFailed(f"the store failed earlier: {self._failure}") from self._failure
        if self._thread is None:
            raise StoreError("the store is not open")

    async def _wait(self, job: _Job) -> Any:
        await job.done.wait()
        if job.error is not None:
            if self._failure is not None:
                raise StoreFailed(f"the write failed: {job.error}") from job.error
            raise StoreError(f"the write failed: {job.error}") from job.error
        return job.result

    # ------------------------------------------------------------------ the writer thread

    def _run_writer(self) -> None:
        connection = self._writer
        assert connection is not None
        last_group = 1
        while True:
            housekeeping = bool(self._to_reclaim or self._vacuum_due)
            # Idle, the writer still wakes every HOLD_SECONDS: receive records may be held
            # (they queue no job), and the trio thread is asked to write the due ones.
            idle = IDLE_SECONDS if housekeeping else HOLD_SECONDS
            try:
                first = self._jobs.get(timeout=idle)
            except queue.Empty:
                if self._held:  # a length read across threads: stale, it costs a wake-up
                    assert self._token is not None
                    with contextlib.suppress(trio.RunFinishedError):
                        self._token.run_sync_soon(self._write_due)
                if not housekeeping:
                    continue
                taken = self._housekeep(connection)
                if taken is None:
                    continue
                first = taken
            if last_group > 1 and self._jobs.qsize() < GATHER_ENOUGH:
                time.sleep(GATHER_SECONDS)  # releases the GIL; puts do not wake it
            jobs = [first]
            while True:
                try:
                    jobs.append(self._jobs.get_nowait())
                except queue.Empty:
                    break
            work = [job for job in jobs if isinstance(job, _Job)]
            last_group = len(work)
            if work:
                self._commit_group(connection, work)
            if len(work) < len(jobs):
                return  # _STOP: everything queued before it is committed

    def _commit_group(self, connection: sqlite3.Connection, jobs: list[_Job]) -> None:
        started = time.perf_counter()
        try:
            if self._failure is not None:
                raise StoreFailed(f"the store failed earlier: {self._failure}") from self._failure
            connection.execute("BEGIN IMMEDIATE")
            try:
                self._apply_together(connection, jobs)
            except Exception:
                # Some job failed: start again, each job in a savepoint, so it fails alone.
                connection.execute("ROLLBACK")
                connection.execute("BEGIN IMMEDIATE")
                for job in jobs:
                    job.result = None
                    connection.execute("SAVEPOINT job")
                    try:
                        job.result = job.apply(connection)
                    except Exception as error:
                        connection.execute("ROLLBACK TO job")
                        job.error = error
                    connection.execute("RELEASE job")
            connection.execute("COMMIT")
            self._wal_written.set()
        except Exception as error:
            # The transaction is lost; memory may be ahead of the disk. Fail closed.
            self._fail(error)
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
            for job in jobs:
                job.error = job.error or error
        elapsed = time.perf_counter() - started
        size = sum(job.size for job in jobs if job.error is None)
        self._commits += 1
        self._mutations += size
        self._failed_jobs += sum(job.error is not None for job in jobs)
        self._commit_seconds.observe(elapsed)
        self._per_commit.observe(size)
        assert self._token is not None
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self._complete, jobs)

    def _apply_together(self, connection: sqlite3.Connection, jobs: list[_Job]) -> None:
        """Apply every job in the open transaction, without savepoints; raise if one fails.

        Consecutive commit jobs with the same sealing keys go through one
        :func:`apply_mutations` (the same statements as one call per job, with fewer and
        longer ``executemany`` runs). A failure leaves the transaction for the caller to roll
        back; every job can be applied again from the start (they only write rows).
        """
        start = 0
        while start < len(jobs):
            job = jobs[start]
            if job.mutations is None:
                job.result = job.apply(connection)
                start += 1
                continue
            run = [job.mutations]
            for other in jobs[start + 1 :]:
                if other.mutations is None or other.keys != job.keys:
                    break
                run.append(other.mutations)
            merged = run[0] if len(run) == 1 else [m for part in run for m in part]
            apply_mutations(connection, merged, self._to_reclaim, job.keys)
            start += len(run)

    def _complete(self, jobs: list[_Job]) -> None:
        """Runs in the trio thread: apply what waited for durability, wake the callers."""
        for job in jobs:
            self._pending -= 1
            if job.error is None and job.on_durable is not None:
                try:
                    job.on_durable()
                except Exception as error:  # a bug in the caller's callback; report it
                    job.error = error
            if job.mutations is not None and self._cache.budget:
                # The cache took the job's inserts in when it was queued; should the job have
                # failed, the file is the truth.
                self._cache.settled(job.mutations, failed=job.error is not None)
            if job.error is not None and not job.waited and self._failure is None:
                # Nobody can be told this write failed, and memory is ahead of the disk.
                self._fail(job.error)
            job.done.set()

    def _housekeep(self, connection: sqlite3.Connection) -> _Job | object | None:
        """Reclaim rows, then free pages, one small transaction after another, until done or
        until a job is queued; return that job (None when done). A commit waits for the step
        under way only.

        Between steps the writer waits ``HOUSEKEEPING_PAUSE`` for a job, which also leaves the
        CPU to the event loop: the broker runs on one core, and back-to-back steps took half
        of it while requests were being served.

        These transactions do not fsync (``synchronous=NORMAL``): on a loaded disk one fsync
        took 40-60 ms, and a commit queued behind it waited that long. Nothing is lost by it:
        a step lost in a crash is done again after the restart (deleted and purged queues are
        found again by :meth:`_open_writer`; a lost vacuum leaves the file larger), and the
        WAL stays ordered: the next commit's fsync (``FULL``) or checkpoint covers every frame
        written before it, so no later commit is durable without the steps before it.
        """
        if self._failure is not None:
            self._to_reclaim.clear()
            self._vacuum_due = False
            return None
        connection.execute("PRAGMA synchronous = NORMAL")
        try:
            while self._to_reclaim or self._vacuum_due:
                if self._to_reclaim:
                    self._reclaim(connection)
                else:
                    self._vacuum(connection)
                self._wal_written.set()
                with contextlib.suppress(queue.Empty):
                    return self._jobs.get(timeout=HOUSEKEEPING_PAUSE)
            return None
        finally:
            connection.execute("PRAGMA synchronous = FULL")

    def _reclaim(self, connection: sqlite3.Connection) -> None:
        queue_id = next(iter(self._to_reclaim))
        try:
            connection.execute("BEGIN IMMEDIATE")
            finished = reclaim_step(connection, queue_id, RECLAIM_ROWS)
            connection.execute("COMMIT")
            if finished:
                self._to_reclaim.discard(queue_id)
                self._vacuum_due = True
        except sqlite3.Error as error:
            self._fail(error)  # fail closed, and stop housekeeping
            self._to_reclaim.clear()
            self._vacuum_due = False
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")

    def _vacuum(self, connection: sqlite3.Connection) -> None:
        """Give up to ``VACUUM_PAGES`` free pages back to the filesystem (one transaction)."""
        try:
            before = connection.execute("PRAGMA freelist_count").fetchone()[0]
            if before:
                # executescript steps the pragma to its end; execute() frees one page a call.
                connection.executescript(f"PRAGMA incremental_vacuum({VACUUM_PAGES})")
            after = connection.execute("PRAGMA freelist_count").fetchone()[0]
            self._vacuum_due = 0 < after < before
        except sqlite3.Error as error:
            self._fail(error)
            self._vacuum_due = False

    # ------------------------------------------------------------------ the checkpoint thread

    def _run_checkpointer(self) -> None:
        """Copy committed WAL frames into the database file, off the writer's path.

        A PASSIVE checkpoint takes no lock the writer needs: commits go on appending to the
        WAL meanwhile. The writer starts the WAL over (writing it in place, not growing it)
        only when it finds every frame copied, so a checkpoint that copied many frames, while
        commits went on, is followed by quicker ones for what came in meanwhile, until one
        finds nothing new (at most ``CHECKPOINT_ROUNDS``). Paced by ``CHECKPOINT_SECONDS``;
        idle while nothing is written. A failed checkpoint loses nothing (the frames stay in
        the WAL), so it is only retried later.
        """
        connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            configure(connection, writer=False)
            while True:
                self._wal_written.wait()
                if self._closing.is_set():
                    return
                self._wal_written.clear()
                if self._truncate_wal.is_set():
                    self._truncate_wal.clear()
                    with contextlib.suppress(sqlite3.Error):
                        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                with contextlib.suppress(sqlite3.Error):
                    frames = -1
                    for _ in range(CHECKPOINT_ROUNDS):
                        _, log, copied = connection.execute(
                            "PRAGMA wal_checkpoint(PASSIVE)"
                        ).fetchone()
                        if log == frames or copied < log:  # nothing new, or readers hold some
                            break
                        frames = log
                if self._closing.wait(CHECKPOINT_SECONDS):
                    return
        finally:
            connection.close()

    def wal_bytes(self) -> int:
        """The size of the WAL file: pages checkpoints may still copy into the database file,
        and room the WAL keeps for reuse; the disk alarm counts all of it as taken."""
        try:
            return self.path.with_name(self.path.name + "-wal").stat().st_size
        except FileNotFoundError:
            return 0

    def give_back_wal_space(self) -> None:
        """Ask the checkpoint thread to copy the whole WAL into the database file and
        truncate it (``wal_checkpoint(TRUNCATE)``): what the disk alarm does when room is
        short. A WAL otherwise keeps its size (up to ``journal_size_limit``) for reuse."""
        self._truncate_wal.set()
        self._wal_written.set()

    # ------------------------------------------------------------------ reads

    async def load(self) -> list[LoadedQueue]:
        """See :meth:`Store.load`."""
        queues = await self._read(_load)
        for loaded in queues:
            self._settings[loaded.record.queue_id] = loaded.record.settings
            with contextlib.suppress(KeyUnavailable):  # reported on send, as AWS does
                self.sealer.key_for(loaded.record.settings)
        return queues

    async def read_messages(self, queue_id: int, seqs: Sequence[int]) -> list[StoredMessage]:
        """See :meth:`Store.read_messages`.

        Cached messages are answered from memory; only the others are read from the file
        (in a worker thread), and only when there are any -- together with the rows after
        them, read ahead into the cache for the receives to come (see the module docstring).
        A receive whose messages the queue's read-ahead in flight is bringing waits for it.
        """
        cache = self._cache
        found, missing = cache.lookup(queue_id, seqs)
        if not missing:
            return found
        reading = cache.reading(queue_id)
        if reading is not None and reading.covers(missing):
            await self._read_ahead_done[queue_id].wait()
            brought, missing = cache.lookup(queue_id, missing)
            found += brought
        read: list[StoredMessage] = []
        if missing:
            reading = (
                cache.start_read_ahead(queue_id, missing)
                if self._may_read_ahead(queue_id)
                else None
            )
            if reading is None:
                sealer = self.sealer
                read = await self._read(
                    lambda connection: _read_messages(connection, queue_id, missing, sealer)
                )
            else:
                read = await self._read_with_ahead(reading, missing)
        if not found:
            return read
        by_seq = {m.seq: m for m in (*found, *read)}
        return [by_seq[seq] for seq in seqs if seq in by_seq]

    def _may_read_ahead(self, queue_id: int) -> bool:
        """Tell whether the queue's messages may be read ahead: live and not sealed at rest."""
        settings = self._settings.get(queue_id)
        if settings is None:
            return False
        try:
            return self.sealer.key_for(settings) is None
        except KeyUnavailable:
            return False

    async def _read_with_ahead(self, reading: ReadAhead, missing: list[int]) -> list[StoredMessage]:
        """Read ``missing`` and, in the same trip, the rows ``reading`` plans; cache those."""
        queue_id, sealer = reading.queue_id, self.sealer
        done = self._read_ahead_done[queue_id] = trio.Event()
        ahead: list[StoredMessage] = []

        def both(connection: sqlite3.Connection) -> tuple[list[StoredMessage], list[StoredMessage]]:
            asked = _read_messages(connection, queue_id, missing, sealer)
            return asked, _read_ahead(connection, reading)

        try:
            read, ahead = await self._read(both)
        finally:
            # Also when the read failed or was cancelled: the next receive may start another.
            still_clear = self._may_read_ahead(queue_id)  # deleted or sealed meanwhile: keep none
            self._cache.finish_read_ahead(reading, ahead if still_clear else ())
            del self._read_ahead_done[queue_id]
            done.set()
        return read

    async def _read(self, query: Callable[[sqlite3.Connection], _T]) -> _T:
        async with self._reader_slots:
            return await trio.to_thread.run_sync(self._with_reader, query)

    def _with_reader(self, query: Callable[[sqlite3.Connection], _T]) -> _T:
        with self._readers_lock:
            reader = self._readers.pop() if self._readers else None
        if reader is None:
            reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            configure(reader, writer=False)
        try:
            reader.execute("BEGIN")  # one snapshot for the whole query
            try:
                return query(reader)
            finally:
                reader.execute("COMMIT")
        finally:
            with self._readers_lock:
                self._readers.append(reader)

    def statistics(self) -> StoreStatistics:
        """See :meth:`Store.statistics`."""
        return StoreStatistics(
            commits=self._commits,
            mutations=self._mutations,
            failed_jobs=self._failed_jobs,
            pending_jobs=self._pending,
            reclaiming_queues=len(self._to_reclaim),
            commit_seconds=self._commit_seconds.snapshot(),
            mutations_per_commit=self._per_commit.snapshot(),
        )


def _load(connection: sqlite3.Connection) -> list[LoadedQueue]:
    queues = []
    rows = connection.execute(
        "SELECT queue_id, name, settings, tags, created_at, modified_at, next_seq, purged_below "
        "FROM queues WHERE deleted = 0 ORDER BY queue_id"
    ).fetchall()
    for queue_id, name, settings, tags, created_at, modified_at, next_seq, purged_below in rows:
        record = QueueRecord(
            queue_id=queue_id,
            name=name,
            settings=_SETTINGS_DECODER.decode(settings),
            tags=json.loads(tags),
            created_at=created_at,
            modified_at=modified_at,
            next_seq=next_seq,
        )
        columns = MessageColumns()
        groups: dict[str, str] = {}  # one string object per group, however many messages
        for seq, visible_at, count, received_at, enqueued_at, group_id in connection.execute(
            "SELECT seq, visible_at, receive_count, received_at, enqueued_at, group_id "
            "FROM messages WHERE queue_id = ? AND seq >= ? ORDER BY seq",
            (queue_id, purged_below),
        ):
            if group_id is not None:
                group_id = groups.setdefault(group_id, group_id)
            columns.append(
                RestoredMessage(seq, visible_at, count, received_at, enqueued_at, group_id)
            )
        deduplication = [
            DeduplicationEntry(key, seq, expires_at)
            for key, seq, expires_at in connection.execute(
                "SELECT key, seq, expires_at FROM deduplication WHERE queue_id = ?", (queue_id,)
            )
        ]
        queues.append(LoadedQueue(record, columns, deduplication))
    return queues


def _uuid_text(raw: bytes) -> str:
    """``str(uuid.UUID(bytes=raw))``, for a message id read back, without building a UUID."""
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


_MESSAGE_COLUMNS = (
    "seq, message_id, body, attributes, sent_at, first_received_at, group_id, "
    "deduplication_id, sender_id, trace_header, source_arn, key_id, body_md5"
)


def _stored(row: tuple[Any, ...], sealer: Sealer | None) -> StoredMessage:
    """A row of ``_MESSAGE_COLUMNS`` as a receive returns it (opened, when sealed)."""
    seq, message_id, body, attributes, sent_at, first_received_at, *rest = row
    group_id, deduplication_id, sender_id, trace_header, source_arn, key_id, body_md5 = rest
    if key_id is not None:
        assert sealer is not None  # the read-ahead query reads clear rows only
        body = sealer.open(key_id, body, associated_data(message_id, b"body"))
        if attributes is not None:
            aad = associated_data(message_id, b"attributes")
            attributes = sealer.open(key_id, attributes, aad)
    return StoredMessage(
        seq=seq,
        message_id=_uuid_text(message_id),
        body=body.decode(),
        attributes=ATTRIBUTES_DECODER.decode(attributes) if attributes else {},
        sent_at=sent_at,
        first_received_at=first_received_at,
        group_id=group_id,
        deduplication_id=deduplication_id,
        sender_id=sender_id,
        trace_header=trace_header,
        dead_letter_source_arn=source_arn,
        body_md5=body_md5.hex() if body_md5 is not None else None,
    )


def _read_messages(
    connection: sqlite3.Connection, queue_id: int, seqs: list[int], sealer: Sealer
) -> list[StoredMessage]:
    placeholders = ",".join("?" * len(seqs))
    found = {}
    for row in connection.execute(
        f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE queue_id = ? AND seq IN ({placeholders})",
        (queue_id, *seqs),
    ):
        found[row[0]] = _stored(row, sealer)
    return [found[seq] for seq in seqs if seq in found]


def _read_ahead(connection: sqlite3.Connection, reading: ReadAhead) -> list[StoredMessage]:
    """The rows after ``reading.after``, in seq order, within its bounds: clear rows only,
    none below the purge mark (purged rows stay until reclaimed)."""
    rows: list[StoredMessage] = []
    total = 0
    cursor = connection.execute(
        f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE queue_id = ? AND seq > ? "
        "AND seq >= (SELECT purged_below FROM queues WHERE queue_id = ?) AND key_id IS NULL "
        "ORDER BY seq LIMIT ?",
        (reading.queue_id, reading.after, reading.queue_id, reading.max_rows),
    )
    try:
        for row in cursor:
            rows.append(_stored(row, None))
            total += CACHE_ENTRY_OVERHEAD + len(row[2])  # about what the cache counts
            if total >= reading.max_bytes:
                break
    finally:
        cursor.close()  # stopped early: finish the statement before the read's COMMIT
    return rows
