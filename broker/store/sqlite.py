"""The embedded store: one SQLite file, WAL, one writer thread doing group commit.

:class:`SqliteStore` is the public class. Its two sides are mixins in their own modules, so
that each reads in one sitting and a request still goes through the store's own methods only:

- :mod:`broker.store.sqlite_writer`: the writer thread (job queue, group commit, fsync), the
  write-behind of receive records, housekeeping and checkpoints;
- :mod:`broker.store.sqlite_reads`: the reader threads and the read-ahead of deep backlogs.

The SQL lives in :mod:`~broker.store.sqlite_apply` (mutations), :mod:`~broker.store.sqlite_sns`,
:mod:`~broker.store.sqlite_moves` and :mod:`~broker.store.sqlite_schema`. This module keeps the
lifecycle (open, close), the queue, topic and move-task operations, and what ``commit`` and
``commit_later`` do in the caller's trio step before the writer sees a job: held receive
records settled, sealing keys picked, the body cache told.

Body cache (:mod:`broker.store.sqlite_cache`). The bodies (and everything else a receive
returns) of recently inserted messages are kept in memory, up to ``body_cache_bytes`` (64 MiB
by default), until the message is deleted, moved or purged, or until newer messages of other
queues push it out (oldest insert first; a queue whose own older messages, or those of a queue
holding no more than it, fill the budget keeps them, the heads, rather than its newest): a
receive of cached messages is answered without a worker thread and a query. The cache follows
the mutations in call order, in the caller's trio step, so it always agrees with the model. A
backlog larger than the budget is read ahead (see :mod:`broker.store.sqlite_reads`). Messages
of queues sealed at rest are never cached: every read of those opens them with their key, as
the key's retirement requires, and their clear text stays out of long-lived memory.

Encryption at rest (:mod:`broker.store.sealing`): the store keeps each live queue's settings,
and ``commit`` picks, in the caller's trio step, the key each inserted message is sealed with;
the writer thread seals, the reader threads open.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import msgspec
import trio

from broker.model.mutations import MessageInserted, MessageMoved
from broker.model.settings import QueueSettings
from broker.model.topics import TopicSettings
from broker.store import sqlite_moves, sqlite_sns
from broker.store.base import (
    AnyMutation,
    HttpPayload,
    KeyUnavailable,
    LoadedQueue,
    LoadedSns,
    QueueNameTaken,
    QueueRecord,
    Store,
    StoredMoveTask,
    StoreError,
    TopicNameTaken,
    TopicRecord,
)
from broker.store.lock import DataDirectoryLock
from broker.store.sealing import Sealer, SealingKey
from broker.store.sqlite_apply import apply_mutations
from broker.store.sqlite_cache import BODY_CACHE_BYTES, BodyCache
from broker.store.sqlite_reads import SqliteReads, holds_queues_or_topics, load_queues
from broker.store.sqlite_writer import STOP, Job, SqliteWriter
from broker.store.write_behind import WriteBehind

FILE_NAME = "wharf.sqlite3"


class SqliteStore(SqliteWriter, SqliteReads, Store):
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
        self._settings: dict[int, QueueSettings] = {}  # live queues, for sealing
        SqliteWriter.__init__(self)
        SqliteReads.__init__(self)

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Create or migrate the file and start the writer thread.

        Raises:
            DataDirectoryInUse: another broker has this data directory open.
        """
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.lock.acquire()
        try:
            self._writer = await trio.to_thread.run_sync(self._open_writer)
            try:
                await trio.to_thread.run_sync(self._open_readers)  # after the schema exists
            except BaseException:
                self._close_readers()
                self._writer.close()
                self._writer = None
                raise
        except BaseException:
            self.lock.release()
            raise
        self._token = trio.lowlevel.current_trio_token()
        self._thread = threading.Thread(target=self._run_writer, name="wharf-store-writer")
        self._thread.start()

    async def aclose(self) -> None:
        """Commit what is queued, stop the writer, close every connection."""
        thread = self._thread
        if thread is not None:
            if self._held and self._failure is None:
                self._write_held(self._held.take_all())
            self._jobs.put(STOP)
            await trio.to_thread.run_sync(thread.join)
            self._thread = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._close_readers()
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
    ) -> Job:
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

    # ------------------------------------------------------------------ loading

    async def holds_queues_or_topics(self) -> bool:
        """See :meth:`Store.holds_queues_or_topics`."""
        return await self._read(holds_queues_or_topics)

    async def load(self) -> list[LoadedQueue]:
        """See :meth:`Store.load`."""
        queues = await self._read(load_queues)
        for loaded in queues:
            self._settings[loaded.record.queue_id] = loaded.record.settings
            with contextlib.suppress(KeyUnavailable):  # reported on send, as AWS does
                self.sealer.key_for(loaded.record.settings)
        return queues
