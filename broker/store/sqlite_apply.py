"""Turn model mutations into SQL, inside the writer's transaction.

Consecutive mutations of one kind go through one ``executemany`` of one (cached, prepared)
statement; order across kinds is kept, because it matters (insert before delete).
"""

from __future__ import annotations

import itertools
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgspec

from broker.model.messages import AttributeValue
from broker.model.mutations import (
    DeduplicationExpired,
    DeduplicationRecorded,
    MessageDeleted,
    MessageDelivered,
    MessageInserted,
    MessageMoved,
    Mutation,
    QueuePurged,
    VisibilityChanged,
)

ATTRIBUTES_ENCODER = msgspec.msgpack.Encoder()
ATTRIBUTES_DECODER = msgspec.msgpack.Decoder(dict[str, AttributeValue])

_INSERT = """
    INSERT INTO messages (queue_id, seq, message_id, visible_at, receive_count, received_at,
        first_received_at, enqueued_at, sent_at, group_id, deduplication_id, sender_id,
        trace_header, source_arn, attributes, body)
    VALUES (?, ?, ?, ?, 0, 0, NULL, ?, ?, ?, ?, ?, ?, NULL, ?, ?)
"""
_DELIVERED = """
    UPDATE messages SET visible_at = ?, receive_count = ?, received_at = ?,
        first_received_at = coalesce(first_received_at, ?)
    WHERE queue_id = ? AND seq = ?
"""
_VISIBILITY = "UPDATE messages SET visible_at = ? WHERE queue_id = ? AND seq = ?"
_DELETE = "DELETE FROM messages WHERE queue_id = ? AND seq = ?"
_MOVE = """
    INSERT INTO messages (queue_id, seq, message_id, visible_at, receive_count, received_at,
        first_received_at, enqueued_at, sent_at, group_id, deduplication_id, sender_id,
        trace_header, source_arn, attributes, body)
    SELECT ?, ?, message_id, ?, receive_count, received_at, first_received_at,
        coalesce(?, enqueued_at), sent_at, group_id, deduplication_id, sender_id,
        trace_header, ?, attributes, body
    FROM messages WHERE queue_id = ? AND seq = ?
"""
_DEDUP_RECORD = (
    "INSERT OR REPLACE INTO deduplication (queue_id, key, seq, expires_at) VALUES (?, ?, ?, ?)"
)
_DEDUP_EXPIRE = "DELETE FROM deduplication WHERE queue_id = ? AND expires_at <= ?"
_PURGE = "UPDATE queues SET purged_below = max(purged_below, ?) WHERE queue_id = ?"
_NEXT_SEQ = "UPDATE queues SET next_seq = max(next_seq, ?) WHERE queue_id = ?"


def _inserted(m: MessageInserted) -> tuple[Any, ...]:
    attributes = ATTRIBUTES_ENCODER.encode(m.attributes) if m.attributes else None
    return (
        m.queue_id,
        m.seq,
        uuid.UUID(m.message_id).bytes,
        m.visible_at,
        m.sent_at,
        m.sent_at,
        m.group_id,
        m.deduplication_id,
        m.sender_id,
        m.trace_header,
        attributes,
        m.body.encode(),
    )


def _delivered(m: MessageDelivered) -> tuple[Any, ...]:
    return (m.visible_at, m.receive_count, m.received_at, m.received_at, m.queue_id, m.seq)


def _visibility(m: VisibilityChanged) -> tuple[Any, ...]:
    return (m.visible_at, m.queue_id, m.seq)


def _deleted(m: MessageDeleted) -> tuple[Any, ...]:
    return (m.queue_id, m.seq)


def _dedup_recorded(m: DeduplicationRecorded) -> tuple[Any, ...]:
    return (m.queue_id, m.key, m.seq, m.expires_at)


def _dedup_expired(m: DeduplicationExpired) -> tuple[Any, ...]:
    return (m.queue_id, m.now)


def _purged(m: QueuePurged) -> tuple[Any, ...]:
    return (m.below_seq, m.queue_id)


_SIMPLE: dict[type, tuple[str, Callable[[Any], tuple[Any, ...]]]] = {
    MessageInserted: (_INSERT, _inserted),
    MessageDelivered: (_DELIVERED, _delivered),
    VisibilityChanged: (_VISIBILITY, _visibility),
    MessageDeleted: (_DELETE, _deleted),
    DeduplicationRecorded: (_DEDUP_RECORD, _dedup_recorded),
    DeduplicationExpired: (_DEDUP_EXPIRE, _dedup_expired),
    QueuePurged: (_PURGE, _purged),
}


def apply_mutations(
    connection: sqlite3.Connection, mutations: Sequence[Mutation], purged: set[int]
) -> None:
    """Apply ``mutations`` in order within the caller's transaction.

    Args:
        connection: the writer connection, inside a transaction.
        mutations: the records, in the order the model produced them.
        purged: receives the ids of queues whose purged rows now need reclaiming.
    """
    next_seqs: dict[int, int] = {}
    for kind, run in itertools.groupby(mutations, key=type):
        batch = list(run)
        if kind is MessageMoved:
            _apply_moves(connection, batch)  # type: ignore[arg-type]
        else:
            sql, parameters = _SIMPLE[kind]
            connection.executemany(sql, map(parameters, batch))
        for mutation in batch:
            if isinstance(mutation, MessageInserted):
                _raise_next_seq(next_seqs, mutation.queue_id, mutation.seq)
            elif isinstance(mutation, MessageMoved):
                _raise_next_seq(next_seqs, mutation.target_queue_id, mutation.target_seq)
            elif isinstance(mutation, QueuePurged):
                purged.add(mutation.queue_id)
    if next_seqs:
        # Persisting the counter keeps seqs (and so message ids) unique after a restart,
        # even when every message of the queue is gone.
        connection.executemany(_NEXT_SEQ, ((seq, queue) for queue, seq in next_seqs.items()))


def _raise_next_seq(next_seqs: dict[int, int], queue_id: int, seq: int) -> None:
    next_seqs[queue_id] = max(next_seqs.get(queue_id, 0), seq + 1)


def _apply_moves(connection: sqlite3.Connection, moves: Iterable[MessageMoved]) -> None:
    for move in moves:
        connection.execute(
            _MOVE,
            (
                move.target_queue_id,
                move.target_seq,
                move.visible_at,
                move.enqueued_at,
                move.source_arn,
                move.source_queue_id,
                move.source_seq,
            ),
        )
        connection.execute(_DELETE, (move.source_queue_id, move.source_seq))


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
        connection.execute("DELETE FROM queues WHERE queue_id = ?", (queue_id,))
    return removed < limit
