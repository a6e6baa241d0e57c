"""Turn model mutations into SQL, inside the writer's transaction.

Consecutive mutations of one kind go through one ``executemany`` of one (cached, prepared)
statement; order across kinds is kept, because it matters (insert before delete).

Sealing: the caller passes the key each queue's new messages are sealed with (resolved when
the commit was asked for); inserts into those queues store their body and attributes sealed,
with the key id in the row. A dead-letter move copies the row as it is (sealed or not), unless
the target queue seals and the row is in clear: then the copy is sealed on the way.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

import msgspec

from broker.model.dedup import DEDUPLICATION_WINDOW_MS
from broker.model.messages import AttributeValue
from broker.model.mutations import (
    DeduplicationExpired,
    DeduplicationRecorded,
    MessageDeleted,
    MessageDelivered,
    MessageInserted,
    MessageMoved,
    QueuePurged,
    ReceiveAttemptRecorded,
    VisibilityChanged,
)
from broker.store.base import AnyMutation
from broker.store.sealing import SealingKey, associated_data
from broker.store.sqlite_sns import APPLIERS as SNS_APPLIERS

ATTRIBUTES_ENCODER = msgspec.msgpack.Encoder()
ATTRIBUTES_DECODER = msgspec.msgpack.Decoder(dict[str, AttributeValue])
_JSON = msgspec.json.Encoder()  # receive attempts' seqs and deadlines

_INSERT = """
    INSERT INTO messages (queue_id, seq, message_id, visible_at, receive_count, received_at,
        first_received_at, enqueued_at, sent_at, group_id, deduplication_id, sender_id,
        trace_header, source_arn, attributes, body, key_id, body_md5)
    VALUES (?, ?, ?, ?, 0, 0, NULL, ?, ?, ?, ?, ?, ?, NULL, ?, ?, ?, ?)
"""
# The same row for a plain message (no attributes, group, deduplication id, trace header or
# seal; sent and enqueued at once): 7 parameters instead of 14, which is 1.4 us less per row
# (a third of the statement's cost without the fsync), and most messages are plain.
_INSERT_PLAIN = """
    INSERT INTO messages (queue_id, seq, message_id, visible_at, receive_count, received_at,
        first_received_at, enqueued_at, sent_at, group_id, deduplication_id, sender_id,
        trace_header, source_arn, attributes, body, key_id, body_md5)
    VALUES (?1, ?2, ?3, ?4, 0, 0, NULL, ?5, ?5, NULL, NULL, ?6, NULL, NULL, NULL, ?7, NULL, ?8)
"""
# A plain message without the body's MD5 (an SNS copy: nothing hashed it): NULL written in
# the statement, since a None parameter goes through the adapter lookup a bytes one does.
_INSERT_PLAIN_NO_MD5 = """
    INSERT INTO messages (queue_id, seq, message_id, visible_at, receive_count, received_at,
        first_received_at, enqueued_at, sent_at, group_id, deduplication_id, sender_id,
        trace_header, source_arn, attributes, body, key_id, body_md5)
    VALUES (?1, ?2, ?3, ?4, 0, 0, NULL, ?5, ?5, NULL, NULL, ?6, NULL, NULL, NULL, ?7, NULL, NULL)
"""
_DELIVERED = """
    UPDATE messages SET visible_at = ?, receive_count = ?, received_at = ?,
        first_received_at = coalesce(first_received_at, ?)
    WHERE queue_id = ? AND seq = ?
"""
_VISIBILITY = "UPDATE messages SET visible_at = ? WHERE queue_id = ? AND seq = ?"
_DELETE = "DELETE FROM messages WHERE queue_id = ? AND seq = ?"
# A FIFO message moved to its dead-letter queue (the only rows with a deduplication id) takes
# its message id, as text (``_uuid_text`` of sqlite_reads), for its MessageDeduplicationId.
# AWS ("Learn how to configure a dead-letter queue redrive"): "When a message is moved from a
# FIFO queue to a FIFO DLQ, the original message's deduplication ID will be replaced with the
# original message's ID", so that two messages that shared one stay two in the DLQ.
_MOVED_DEDUPLICATION_ID = """
    CASE WHEN deduplication_id IS NULL THEN NULL ELSE lower(
        substr(hex(message_id), 1, 8) || '-' || substr(hex(message_id), 9, 4) || '-'
        || substr(hex(message_id), 13, 4) || '-' || substr(hex(message_id), 17, 4) || '-'
        || substr(hex(message_id), 21)
    ) END
"""
_MOVE = f"""
    INSERT INTO messages (queue_id, seq, message_id, visible_at, receive_count, received_at,
        first_received_at, enqueued_at, sent_at, group_id, deduplication_id, sender_id,
        trace_header, source_arn, attributes, body, key_id, body_md5)
    SELECT ?, ?, message_id, ?, receive_count, received_at, first_received_at,
        coalesce(?, enqueued_at), sent_at, group_id, {_MOVED_DEDUPLICATION_ID}, sender_id,
        trace_header, ?, attributes, body, key_id, body_md5
    FROM messages WHERE queue_id = ? AND seq = ?
"""
# The same move with the payload given: the clear row of the source, sealed for the target.
_MOVE_SEALED = f"""
    INSERT INTO messages (queue_id, seq, message_id, visible_at, receive_count, received_at,
        first_received_at, enqueued_at, sent_at, group_id, deduplication_id, sender_id,
        trace_header, source_arn, attributes, body, key_id)
    SELECT ?, ?, message_id, ?, receive_count, received_at, first_received_at,
        coalesce(?, enqueued_at), sent_at, group_id, {_MOVED_DEDUPLICATION_ID}, sender_id,
        trace_header, ?, ?, ?, ?
    FROM messages WHERE queue_id = ? AND seq = ?
"""
_PAYLOAD = (
    "SELECT message_id, attributes, body, key_id FROM messages WHERE queue_id = ? AND seq = ?"
)
_DEDUP_RECORD = (
    "INSERT OR REPLACE INTO deduplication (queue_id, key, seq, expires_at) VALUES (?, ?, ?, ?)"
)
_DEDUP_EXPIRE = "DELETE FROM deduplication WHERE queue_id = ? AND expires_at <= ?"
_PURGE = "UPDATE queues SET purged_below = max(purged_below, ?) WHERE queue_id = ?"
_NEXT_SEQ = "UPDATE queues SET next_seq = max(next_seq, ?) WHERE queue_id = ?"
_ATTEMPT_RECORD = (
    "INSERT OR REPLACE INTO receive_attempts (queue_id, attempt_id, seqs, deadlines, expires_at) "
    "VALUES (?, ?, ?, ?, ?)"
)
# Those whose 5 minutes ended by the time of the receive being recorded, or of the expiry
# pass that found them all ended (DeduplicationExpired): the table holds the last 5 minutes'
# attempts of each queue.
_ATTEMPT_EXPIRE = "DELETE FROM receive_attempts WHERE queue_id = ? AND expires_at <= ?"


def _inserted_rows(
    batch: Sequence[MessageInserted],
    keys: Mapping[int, SealingKey],
    next_seqs: dict[int, int],
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The ``_INSERT_PLAIN``, ``_INSERT_PLAIN_NO_MD5`` and ``_INSERT`` parameters of
    ``batch``; raises ``next_seqs`` past their seqs.

    One loop, no call per row but the encodings: an SNS fan-out brings a row per subscribed
    queue, and this runs in the writer thread, on the core the event loop needs.
    """
    plain = []
    plain_no_md5 = []
    full = []
    for m in batch:
        queue_id, seq = m.queue_id, m.seq
        key = keys.get(queue_id) if keys else None
        body_md5 = m.body_md5
        if (
            key is None
            and not m.attributes
            and m.group_id is None
            and m.deduplication_id is None
            and m.trace_header is None
        ):
            # bytearray, not bytes: Python 3.11's sqlite3 binds a bytes parameter only after
            # looking for an adapter (and formatting the AttributeError of a missing
            # __adapt__), ~0.3 us per parameter; a bytearray is bound at once, as the same BLOB.
            id_bytes = bytearray.fromhex(m.message_id.replace("-", ""))  # the UUID's 16 bytes
            body_bytes = bytearray(m.body, "utf-8")
            if body_md5 is None:
                plain_no_md5.append(
                    (queue_id, seq, id_bytes, m.visible_at, m.sent_at, m.sender_id, body_bytes)
                )
            else:
                plain.append(
                    (
                        queue_id,
                        seq,
                        id_bytes,
                        m.visible_at,
                        m.sent_at,
                        m.sender_id,
                        body_bytes,
                        bytearray.fromhex(body_md5),
                    )
                )
        else:
            message_id = bytes.fromhex(m.message_id.replace("-", ""))
            body = m.body.encode()
            attributes = ATTRIBUTES_ENCODER.encode(m.attributes) if m.attributes else None
            if key is not None:
                attributes, body = seal_payload(key, message_id, attributes, body)
                body_md5 = None  # see _add_body_md5s: no digest of a sealed body in the file
            full.append(
                (
                    queue_id,
                    seq,
                    message_id,
                    m.visible_at,
                    m.sent_at,
                    m.sent_at,
                    m.group_id,
                    m.deduplication_id,
                    m.sender_id,
                    m.trace_header,
                    attributes,
                    body,
                    key.key_id if key is not None else None,
                    bytes.fromhex(body_md5) if body_md5 is not None else None,
                )
            )
        if next_seqs.get(queue_id, 0) <= seq:
            next_seqs[queue_id] = seq + 1
    return plain, plain_no_md5, full


def seal_payload(
    key: SealingKey | None, message_id: bytes, attributes: bytes | None, body: bytes
) -> tuple[bytes | None, bytes]:
    """Return (attributes, body) as stored: sealed with ``key``, or as they are without one."""
    if key is None:
        return attributes, body
    sealed_body = key.seal(body, associated_data(message_id, b"body"))
    if attributes is not None:
        attributes = key.seal(attributes, associated_data(message_id, b"attributes"))
    return attributes, sealed_body


def _delivered(m: MessageDelivered) -> tuple[Any, ...]:
    return (m.visible_at, m.receive_count, m.received_at, m.received_at, m.queue_id, m.seq)


def _visibility(m: VisibilityChanged) -> tuple[Any, ...]:
    return (m.visible_at, m.queue_id, m.seq)


def _deleted(m: MessageDeleted) -> tuple[Any, ...]:
    return (m.queue_id, m.seq)


def _dedup_recorded(m: DeduplicationRecorded) -> tuple[Any, ...]:
    return (m.queue_id, m.key, m.seq, m.expires_at)


def _purged(m: QueuePurged) -> tuple[Any, ...]:
    return (m.below_seq, m.queue_id)


def _apply_expiries(
    connection: sqlite3.Connection, expiries: Sequence[DeduplicationExpired]
) -> None:
    rows = [(m.queue_id, m.now) for m in expiries]
    connection.executemany(_DEDUP_EXPIRE, rows)
    connection.executemany(_ATTEMPT_EXPIRE, rows)


def _apply_attempts(
    connection: sqlite3.Connection, attempts: Sequence[ReceiveAttemptRecorded]
) -> None:
    connection.executemany(
        _ATTEMPT_EXPIRE,
        {(m.queue_id, m.expires_at - DEDUPLICATION_WINDOW_MS) for m in attempts},
    )
    connection.executemany(
        _ATTEMPT_RECORD,
        (
            (
                m.queue_id,
                m.attempt_id,
                _JSON.encode(m.seqs),
                _JSON.encode(m.deadlines),
                m.expires_at,
            )
            for m in attempts
        ),
    )


_SIMPLE: dict[type, tuple[str, Callable[[Any], tuple[Any, ...]]]] = {
    MessageDelivered: (_DELIVERED, _delivered),
    VisibilityChanged: (_VISIBILITY, _visibility),
    MessageDeleted: (_DELETE, _deleted),
    DeduplicationRecorded: (_DEDUP_RECORD, _dedup_recorded),
    QueuePurged: (_PURGE, _purged),
}


def apply_mutations(
    connection: sqlite3.Connection,
    mutations: Sequence[AnyMutation],
    purged: set[int],
    keys: Mapping[int, SealingKey] | None = None,
) -> None:
    """Apply ``mutations`` in order within the caller's transaction.

    Args:
        connection: the writer connection, inside a transaction.
        mutations: the records, in the order the model produced them.
        purged: receives the ids of queues whose purged rows now need reclaiming.
        keys: queue id -> the key its new messages are sealed with; absent: in clear.
    """
    keys = keys or {}
    next_seqs: dict[int, int] = {}
    for kind, run in itertools.groupby(mutations, key=type):
        batch = list(run)
        if kind is MessageMoved:
            _apply_moves(connection, batch, keys)  # type: ignore[arg-type]
        elif kind is MessageInserted:
            inserts = cast("list[MessageInserted]", batch)  # groupby: all of this kind
            plain, plain_no_md5, full = _inserted_rows(inserts, keys, next_seqs)
            if plain:
                connection.executemany(_INSERT_PLAIN, plain)
            if plain_no_md5:
                connection.executemany(_INSERT_PLAIN_NO_MD5, plain_no_md5)
            if full:
                connection.executemany(_INSERT, full)
            continue
        elif kind is DeduplicationExpired:
            _apply_expiries(connection, cast("list[DeduplicationExpired]", batch))
            continue
        elif kind is ReceiveAttemptRecorded:
            _apply_attempts(connection, cast("list[ReceiveAttemptRecorded]", batch))
            continue
        elif kind in SNS_APPLIERS:  # subscriptions, the HTTP outbox, FIFO topics
            SNS_APPLIERS[kind](connection, batch)
            continue
        else:
            sql, parameters = _SIMPLE[kind]
            connection.executemany(sql, map(parameters, batch))
        for mutation in batch:
            if isinstance(mutation, MessageMoved):
                _raise_next_seq(next_seqs, mutation.target_queue_id, mutation.target_seq)
            elif isinstance(mutation, QueuePurged):
                purged.add(mutation.queue_id)
    if next_seqs:
        # Persisting the counter keeps seqs (and so message ids) unique after a restart,
        # even when every message of the queue is gone.
        connection.executemany(_NEXT_SEQ, ((seq, queue) for queue, seq in next_seqs.items()))


def _raise_next_seq(next_seqs: dict[int, int], queue_id: int, seq: int) -> None:
    next_seqs[queue_id] = max(next_seqs.get(queue_id, 0), seq + 1)


def _apply_moves(
    connection: sqlite3.Connection, moves: Iterable[MessageMoved], keys: Mapping[int, SealingKey]
) -> None:
    for move in moves:
        head = (move.target_queue_id, move.target_seq, move.visible_at, move.enqueued_at)
        source = (move.source_queue_id, move.source_seq)
        key = keys.get(move.target_queue_id)
        row = connection.execute(_PAYLOAD, source).fetchone() if key is not None else None
        if row is not None and row[3] is None:
            message_id, attributes, body, _ = row
            attributes, body = seal_payload(key, message_id, attributes, body)
            assert key is not None
            payload = (attributes, body, key.key_id)
            connection.execute(_MOVE_SEALED, (*head, move.source_arn, *payload, *source))
        else:
            connection.execute(_MOVE, (*head, move.source_arn, *source))
        connection.execute(_DELETE, source)


def reclaim_step(connection: sqlite3.Connection, queue_id: int, limit: int) -> bool:
    """Delete up to ``limit`` purged rows of a purged or deleted queue, in the caller's
    transaction; return True when nothing is left to reclaim for it."""
    row = connection.execute(
        "SELECT purged_below, deleted FROM queues WHERE queue_id = ?", (queue_id,)
    ).fetchone()
    if row is None:
        return True
    purged_below, deleted = row
    below = 2**62 if deleted else purged_below
    removed = connection.execute(
        "DELETE FROM messages WHERE rowid IN "
        "(SELECT rowid FROM messages WHERE queue_id = ? AND seq < ? LIMIT ?)",
        (queue_id, below, limit),
    ).rowcount
    if removed < limit and deleted:
        connection.execute("DELETE FROM deduplication WHERE queue_id = ?", (queue_id,))
        connection.execute("DELETE FROM receive_attempts WHERE queue_id = ?", (queue_id,))
        connection.execute("DELETE FROM queues WHERE queue_id = ?", (queue_id,))
    return removed < limit
