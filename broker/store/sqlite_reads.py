"""The store's reads: reader threads on read-only connections, and the read-ahead of backlogs.

:class:`SqliteReads` is the read side of :class:`~broker.store.sqlite.SqliteStore`, kept apart
so that it reads in one sitting; the queries it runs are this module's functions. It is a
mixin, not an object of its own: its methods run on the store itself, so a receive passes
through no extra object or call. It owns (and sets up in ``__init__``) the read connections
and the read-aheads in flight; the store's path, sealer, body cache and queue settings are the
store's.

Reads run in trio worker threads on separate read-only connections (``MAX_READERS``, all
opened with the store), each query in one snapshot; WAL lets them proceed while the writer
commits. Opened up front, not when first needed: a receive marks its messages received
before it reads them, and a daemon out of file descriptors (thousands of client
connections) could not open a connection then.

Read-ahead. A receive of messages the body cache (:mod:`broker.store.sqlite_cache`) holds is
answered from memory. A backlog larger than the cache's budget is read ahead: a receive that
has to read its messages from the file reads, in the same reader-thread trip, the next few
hundred rows of the queue too, so the receives after it are answered from memory; rows read in
a worker thread are brought up to date with the mutations their snapshot may lack before they
enter the cache (see that module); messages restored at start are read ahead too. Messages of
queues sealed at rest are never read ahead: every read of those opens them with their key.

A sealed row that cannot be opened (its key left the key file, its value fails
authentication) is set aside, not raised at once: the rest of the read goes on, and
:meth:`SqliteReads.read_messages` raises :class:`~broker.store.base.UnopenedMessages` with
what did open, so one such message cannot hide every other one of its queue.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import trio

from broker.model.outcomes import RestoredMessage
from broker.model.settings import QueueSettings
from broker.store.base import (
    DeduplicationEntry,
    KeyUnavailable,
    LoadedQueue,
    MessageColumns,
    QueueRecord,
    ReceiveAttemptEntry,
    SealingError,
    StoredMessage,
    UnopenedMessage,
    UnopenedMessages,
)
from broker.store.sealing import Sealer, associated_data
from broker.store.sqlite_apply import ATTRIBUTES_DECODER
from broker.store.sqlite_cache import CACHE_ENTRY_OVERHEAD, BodyCache, ReadAhead
from broker.store.sqlite_schema import configure

MAX_READERS = 4  # read connections kept open; one per concurrent reader thread

_SETTINGS_DECODER = msgspec.json.Decoder(QueueSettings)
_INTS = msgspec.json.Decoder(list[int])
_T = TypeVar("_T")
_Read = tuple[list[StoredMessage], list[UnopenedMessage]]  # what opened, what did not


class SqliteReads:
    """The read side of :class:`~broker.store.sqlite.SqliteStore` (see the module docstring)."""

    path: Path
    sealer: Sealer
    _cache: BodyCache
    _settings: dict[int, QueueSettings]

    def __init__(self) -> None:
        self._read_ahead_done: dict[int, trio.Event] = {}  # queue id -> its read-ahead landed
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._reader_slots = trio.Semaphore(MAX_READERS)

    def _open_readers(self) -> None:
        """Open every read connection (in a worker thread: opening reads the file).

        On a failure those opened stay in the pool, for :meth:`_close_readers`.
        """
        with self._readers_lock:
            while len(self._readers) < MAX_READERS:
                self._readers.append(self._new_reader())

    def _new_reader(self) -> sqlite3.Connection:
        reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            configure(reader, writer=False)
        except BaseException:
            reader.close()
            raise
        return reader

    async def read_messages(self, queue_id: int, seqs: Sequence[int]) -> list[StoredMessage]:
        """See :meth:`Store.read_messages`.

        Cached messages are answered from memory; only the others are read from the file
        (in a worker thread), and only when there are any -- together with the rows after
        them, read ahead into the cache for the receives to come (see the module docstring).
        A receive whose messages the queue's read-ahead in flight is bringing waits for it.

        Raises:
            UnopenedMessages: some messages could not be opened (with those that did).
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
        unopened: list[UnopenedMessage] = []
        if missing:
            reading = (
                cache.start_read_ahead(queue_id, missing)
                if self._may_read_ahead(queue_id)
                else None
            )
            if reading is None:
                sealer = self.sealer
                read, unopened = await self._read(
                    lambda connection: _read_messages(connection, queue_id, missing, sealer)
                )
            else:
                read, unopened = await self._read_with_ahead(reading, missing)
        if found:
            by_seq = {m.seq: m for m in (*found, *read)}
            read = [by_seq[seq] for seq in seqs if seq in by_seq]
        if unopened:
            raise UnopenedMessages(read, unopened)
        return read

    def _may_read_ahead(self, queue_id: int) -> bool:
        """Tell whether the queue's messages may be read ahead: live and not sealed at rest."""
        settings = self._settings.get(queue_id)
        if settings is None:
            return False
        try:
            return self.sealer.key_for(settings) is None
        except KeyUnavailable:
            return False

    async def _read_with_ahead(self, reading: ReadAhead, missing: list[int]) -> _Read:
        """Read ``missing`` and, in the same trip, the rows ``reading`` plans; cache those.

        A queue read ahead may still hold rows sealed earlier (before it turned encryption
        off, or the key file was removed): those are read, or set aside when they cannot be
        opened, as without a read-ahead; only the rows read ahead are all clear.
        """
        queue_id, sealer = reading.queue_id, self.sealer
        done = self._read_ahead_done[queue_id] = trio.Event()
        ahead: list[StoredMessage] = []

        def both(connection: sqlite3.Connection) -> tuple[_Read, list[StoredMessage]]:
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
        if reader is None:  # only if the store was not opened: open() opens MAX_READERS
            reader = self._new_reader()
        try:
            reader.execute("BEGIN")  # one snapshot for the whole query
            try:
                return query(reader)
            finally:
                reader.execute("COMMIT")
        finally:
            with self._readers_lock:
                self._readers.append(reader)

    def _close_readers(self) -> None:
        with self._readers_lock:
            for reader in self._readers:
                reader.close()
            self._readers.clear()


def holds_queues_or_topics(connection: sqlite3.Connection) -> bool:
    """Whether a live queue or a topic is stored (see :meth:`Store.holds_queues_or_topics`)."""
    row = connection.execute(
        "SELECT EXISTS (SELECT 1 FROM queues WHERE deleted = 0) OR EXISTS (SELECT 1 FROM topics)"
    ).fetchone()
    return bool(row[0])


def load_queues(connection: sqlite3.Connection) -> list[LoadedQueue]:
    """Every live queue: its record, its messages' metadata (no bodies) and its deduplication
    entries, as :meth:`~broker.store.sqlite.SqliteStore.load` returns them."""
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
                # Soonest expiry first: the window keeps its entries in that order
                # (ScopedWindow.remember), and an entry out of it would stay taken longer.
                "SELECT key, seq, expires_at FROM deduplication WHERE queue_id = ? "
                "ORDER BY expires_at",
                (queue_id,),
            )
        ]
        attempts = [
            ReceiveAttemptEntry(attempt_id, _INTS.decode(seqs), _INTS.decode(deadlines), expires_at)
            for attempt_id, seqs, deadlines, expires_at in connection.execute(
                "SELECT attempt_id, seqs, deadlines, expires_at FROM receive_attempts "
                "WHERE queue_id = ? ORDER BY expires_at",
                (queue_id,),
            )
        ]
        queues.append(LoadedQueue(record, columns, deduplication, attempts))
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
) -> _Read:
    """The rows of ``seqs`` that opened, and those that did not (both in ``seqs`` order)."""
    placeholders = ",".join("?" * len(seqs))
    found: dict[int, StoredMessage] = {}
    unopened: dict[int, UnopenedMessage] = {}
    for row in connection.execute(
        f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE queue_id = ? AND seq IN ({placeholders})",
        (queue_id, *seqs),
    ):
        seq = row[0]
        try:
            found[seq] = _stored(row, sealer)
        except (KeyUnavailable, SealingError) as error:
            key_id = row[11]  # only a sealed row fails to open: it names its key
            unopened[seq] = UnopenedMessage(
                seq=seq, message_id=_uuid_text(row[1]), key_id=key_id, error=error
            )
    return (
        [found[seq] for seq in seqs if seq in found],
        [unopened[seq] for seq in seqs if seq in unopened],
    )


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
