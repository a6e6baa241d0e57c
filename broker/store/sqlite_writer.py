"""The store's writes: one writer thread doing group commit, the write-behind of receive
records, housekeeping, and checkpoints.

:class:`SqliteWriter` is the write side of :class:`~broker.store.sqlite.SqliteStore`, kept
apart so that it reads in one sitting. It is a mixin, not an object of its own: its methods run
on the store itself, so a commit passes through no extra object or call on its way to the
writer. It owns (and sets up in ``__init__``) the state its threads share with the trio thread;
the store's path and body cache are the store's.

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

Housekeeping never holds a commit up for long. When the writer has been idle for
``IDLE_SECONDS`` it reclaims purged and deleted rows, then gives free pages back to the
filesystem, in small transactions (``RECLAIM_ROWS`` rows, ``VACUUM_PAGES`` pages: well under a
millisecond each, without an fsync: see :meth:`SqliteWriter._housekeep`) with a pause between
them, and stops as soon as a job is queued: a commit waits for one such step at most.
Checkpoints (copying the WAL into the database file and syncing it) run on the writer's own
connection, between commits: when the writer has had nothing to do for ``CHECKPOINT_SECONDS``
after a write, or, under steady load, once every ``CHECKPOINT_SECONDS`` right after a commit
(its callers are already told). Never on a connection of their own, in a thread of their own,
as they once did: SQLite up to 3.51.2 (Debian 12 ships 3.40.1) has a race between a checkpoint
and another connection's commit that resets the WAL, which can corrupt the database file
(sqlite.org/wal.html, "the WAL-reset bug"; fixed in 3.51.3), and back-to-back checkpoints
beside a busy writer are exactly its conditions. With one connection doing both, they never
overlap. The price: a commit can wait for a checkpoint of the last ``CHECKPOINT_SECONDS`` of
writes (in bench/README.md's A/B, 8% of the throughput of batched sends on a noisy VM; none
measurable at the store alone).
"""

from __future__ import annotations

import contextlib
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from broker.store.base import (
    AnyMutation,
    HistogramRecorder,
    StoreError,
    StoreFailed,
    StoreStatistics,
)
from broker.store.sealing import SealingKey
from broker.store.sqlite_apply import apply_mutations, reclaim_step
from broker.store.sqlite_cache import BodyCache
from broker.store.sqlite_schema import configure, migrate
from broker.store.write_behind import Held, HeldBatch, WriteBehind, written

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
HOUSEKEEPING_PAUSE = 0.001  # between housekeeping steps (see SqliteWriter._housekeep)
CHECKPOINT_SECONDS = 0.25  # the writer checkpoints at most this often (see the module doc)
# SQLite's automatic checkpoint, a backstop: only should the WAL reach this many pages (of
# 4 KiB: 64 MiB) between two of the writer's own. SQLite's default, 1,000, put a checkpoint of
# ~4 MiB inside whichever commit crossed it.
WRITER_CHECKPOINT_PAGES = 16_384
# Receive records held back (broker/store/write_behind.py): written at the latest this long
# after the receive, or once this many are held, unless a delete makes them moot first.
HOLD_SECONDS = 1.0
HOLD_RECORDS = 20_000
# Up to 30 s: histogram_quantile() answers at most the top finite bound, and a commit on a
# degraded disk or with a large checkpoint takes seconds.
COMMIT_SECONDS_BOUNDS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
MUTATIONS_PER_COMMIT_BOUNDS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000)


class Job:
    """One caller's unit of work for the writer thread.

    A :meth:`~broker.store.sqlite.SqliteStore.commit` job also carries its mutations and sealing
    keys, so that the writer can apply a run of such jobs as one batch (``apply`` does the same
    for one job).
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


STOP = object()


class SqliteWriter:
    """The write side of :class:`~broker.store.sqlite.SqliteStore` (see the module docstring)."""

    path: Path
    _cache: BodyCache

    def __init__(self) -> None:
        self._held = WriteBehind(HOLD_SECONDS, HOLD_RECORDS)
        self._jobs: queue.SimpleQueue[Job | object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._writer: sqlite3.Connection | None = None
        self._failure: BaseException | None = None  # the first; set through _fail only
        self._failed = trio.Event()
        self._to_reclaim: set[int] = set()
        self._vacuum_due = False  # free pages to give back once reclaiming is done
        self._wal_dirty = False  # the writer wrote since its last checkpoint (its thread only)
        self._truncate_wal = threading.Event()  # give_back_wal_space asked for it
        self._commits = 0
        self._mutations = 0
        self._failed_jobs = 0
        self._pending = 0
        self._last_job: Job | None = None  # the newest queued; jobs complete in queue order
        self._commit_seconds = HistogramRecorder(COMMIT_SECONDS_BOUNDS)
        self._per_commit = HistogramRecorder(MUTATIONS_PER_COMMIT_BOUNDS)

    # ------------------------------------------------------------------ failure, the connection

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
        # A new store is the owner's only, whatever the umask and the directory's mode (one
        # made by hand, 0755): SQLite would create it 0644, and its -wal and -shm files take
        # the store file's mode. (Any other failure: SQLite's open says what is wrong.)
        with contextlib.suppress(OSError):
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        configure(connection, writer=True)
        migrate(connection)
        connection.execute(f"PRAGMA wal_autocheckpoint = {WRITER_CHECKPOINT_PAGES}")
        rows = connection.execute(
            "SELECT queue_id FROM queues WHERE deleted = 1 OR purged_below > 0"
        ).fetchall()
        self._to_reclaim.update(queue_id for (queue_id,) in rows)
        return connection

    # ------------------------------------------------------------------ the job queue

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
    ) -> Job:
        """Hand a job to the writer, now, in the caller's step: commits land in call order."""
        self._check_writable()
        if mutations is None and self._held:
            # Not a plain commit (a queue operation, a backup): the file is brought up to date.
            self._write_held(self._held.take_all())
        job = Job(apply, on_durable, size, mutations, keys)
        self._pending += 1
        self._jobs.put(job)
        self._last_job = job
        return job

    async def settled(self) -> None:
        """See :meth:`Store.settled`."""
        job = self._last_job
        if job is not None and not job.done.is_set():
            await job.done.wait()
        if self._failure is not None:
            raise StoreFailed(f"the store failed: {self._failure}") from self._failure

    def _check_writable(self) -> None:
        if self._failure is not None:
            raise StoreFailed(f"the store failed earlier: {self._failure}") from self._failure
        if self._thread is None:
            raise StoreError("the store is not open")

    async def _wait(self, job: Job) -> Any:
        await job.done.wait()
        if job.error is not None:
            if self._failure is not None:
                raise StoreFailed(f"the write failed: {job.error}") from job.error
            raise StoreError(f"the write failed: {job.error}") from job.error
        return job.result

    # ------------------------------------------------------------------ write-behind

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

    # ------------------------------------------------------------------ the writer thread

    def _run_writer(self) -> None:
        connection = self._writer
        assert connection is not None
        last_group = 1
        checkpointed_at = time.monotonic()
        while True:
            housekeeping = bool(self._to_reclaim or self._vacuum_due)
            # Idle, the writer still wakes every HOLD_SECONDS: receive records may be held
            # (they queue no job), and the trio thread is asked to write the due ones.
            idle = IDLE_SECONDS if housekeeping else HOLD_SECONDS
            if self._wal_dirty or self._truncate_wal.is_set():
                idle = min(idle, CHECKPOINT_SECONDS)
            try:
                first = self._jobs.get(timeout=idle)
            except queue.Empty:
                if self._wal_dirty or self._truncate_wal.is_set():
                    self._checkpoint(connection)
                    checkpointed_at = time.monotonic()
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
            # This thread alone takes jobs: what empty() denies is there (no Empty raised).
            while not self._jobs.empty():
                jobs.append(self._jobs.get_nowait())
            work = [job for job in jobs if isinstance(job, Job)]
            last_group = len(work)
            if work:
                self._commit_group(connection, work)
                now = time.monotonic()
                if now - checkpointed_at >= CHECKPOINT_SECONDS:  # never idle: between commits
                    self._checkpoint(connection)
                    checkpointed_at = now
            if len(work) < len(jobs):
                return  # STOP: everything queued before it is committed

    def _commit_group(self, connection: sqlite3.Connection, jobs: list[Job]) -> None:
        started = time.perf_counter()
        try:
            if self._failure is not None:
                raise StoreFailed(f"the store failed earlier: {self._failure}") from self._failure
            connection.execute("BEGIN IMMEDIATE")
            try:
                self._apply_together(connection, jobs)
            except Exception:
                # SQLite may roll the whole transaction back itself (a full disk, an I/O
                # error): then no job can succeed, and that error, not a failed ROLLBACK's,
                # is what the store failed of.
                if not connection.in_transaction:
                    raise
                # Some job failed: start again, each job in a savepoint, so it fails alone.
                connection.execute("ROLLBACK")
                connection.execute("BEGIN IMMEDIATE")
                for job in jobs:
                    job.result = None
                    connection.execute("SAVEPOINT job")
                    try:
                        job.result = job.apply(connection)
                    except Exception as error:
                        if not connection.in_transaction:
                            raise
                        connection.execute("ROLLBACK TO job")
                        job.error = error
                    connection.execute("RELEASE job")
            connection.execute("COMMIT")
            self._wal_dirty = True
        except Exception as error:
            # The transaction is lost; memory may be ahead of the disk. Fail closed.
            self._fail(error)
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
            for job in jobs:
                job.error = job.error or error
        elapsed = time.perf_counter() - started
        size = 0
        failed = 0
        for job in jobs:
            if job.error is None:
                size += job.size
            else:
                failed += 1
        self._commits += 1
        self._mutations += size
        self._failed_jobs += failed
        self._commit_seconds.observe(elapsed)
        self._per_commit.observe(size)
        assert self._token is not None
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self._complete, jobs)

    def _apply_together(self, connection: sqlite3.Connection, jobs: list[Job]) -> None:
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

    def _complete(self, jobs: list[Job]) -> None:
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

    def _housekeep(self, connection: sqlite3.Connection) -> Job | object | None:
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
                self._wal_dirty = True
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

    # ------------------------------------------------------------------ checkpoints

    def _checkpoint(self, connection: sqlite3.Connection) -> None:
        """Copy the committed WAL frames into the database file, on the writer's connection.

        PASSIVE: frames a reader's snapshot still needs stay in the WAL (and the WAL dirty, so
        the next round copies them). TRUNCATE when the disk alarm asked for the WAL's space
        back. A failed checkpoint loses nothing (the frames stay in the WAL): it is only tried
        again later.
        """
        mode = "PASSIVE"
        if self._truncate_wal.is_set():
            self._truncate_wal.clear()
            mode = "TRUNCATE"
        try:
            _, log, copied = connection.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        except sqlite3.Error:
            return
        self._wal_dirty = copied < log

    def wal_bytes(self) -> int:
        """The size of the WAL file: pages checkpoints may still copy into the database file,
        and room the WAL keeps for reuse; the disk alarm counts all of it as taken."""
        try:
            # os.stat of a str: a Path built per call cost 5 us, and every Publish asks.
            return os.stat(f"{self.path}-wal").st_size
        except FileNotFoundError:
            return 0

    def give_back_wal_space(self) -> None:
        """Ask the writer to copy the whole WAL into the database file and truncate it
        (``wal_checkpoint(TRUNCATE)``) at its next checkpoint: what the disk alarm does when
        room is short. A WAL otherwise keeps its size (up to ``journal_size_limit``) for
        reuse."""
        self._truncate_wal.set()

    # ------------------------------------------------------------------ statistics

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
