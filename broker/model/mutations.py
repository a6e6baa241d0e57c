"""Store mutations: the durable facts each model operation produces.

The shell hands them to ``Store.commit`` and replies only after it returns. Records name
messages by ``(queue_id, seq)``; ``seq`` is a per-queue number that is never reused.
Times are milliseconds since the epoch.
"""

from __future__ import annotations

import msgspec

from broker.model.messages import AttributeValue


class MessageInserted(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """A sent message is stored (it becomes receivable once the commit is durable)."""

    queue_id: int
    seq: int
    message_id: str
    body: str
    attributes: dict[str, AttributeValue]
    sent_at: int
    visible_at: int
    group_id: str | None
    deduplication_id: str | None
    sender_id: str
    trace_header: str | None
    # The request's, if it had one; stored with the row unless sealed (see SendRequest).
    body_md5: str | None = None


class DeduplicationRecorded(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """A FIFO deduplication id is taken until ``expires_at`` (it outlives the message)."""

    queue_id: int
    key: bytes
    seq: int
    expires_at: int


class DeduplicationExpired(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Every deduplication entry and receive attempt (ReceiveRequestAttemptId) of the queue
    that expires at or before ``now`` is gone."""

    queue_id: int
    now: int


class MessageDelivered(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """A receive returned the message: it is in flight until ``visible_at``."""

    queue_id: int
    seq: int
    visible_at: int
    receive_count: int
    received_at: int


class VisibilityChanged(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """ChangeMessageVisibility (or a retried receive) moved the message's deadline."""

    queue_id: int
    seq: int
    visible_at: int


class MessageDeleted(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """The message is gone: deleted by a consumer or expired by retention."""

    queue_id: int
    seq: int


class MessageMoved(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """A message went to its dead-letter queue: one delete plus one insert, atomically.

    The store copies body, attributes, ids and timestamps from the source row, but for a FIFO
    message's MessageDeduplicationId: the copy's is the message id (as AWS does, so that
    messages that shared a deduplication id do not look like duplicates in the DLQ).
    """

    source_queue_id: int
    source_seq: int
    target_queue_id: int
    target_seq: int
    enqueued_at: int | None  # None: keep the source row's (standard queues)
    visible_at: int
    source_arn: str


class QueuePurged(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Every message of the queue with a seq below ``below_seq`` is gone."""

    queue_id: int
    below_seq: int


class ReceiveAttemptRecorded(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """A FIFO receive remembered under its ReceiveRequestAttemptId until ``expires_at``: the
    messages it returned (``seqs``) and their visibility deadlines then. Recorded again by
    each retry (the deadlines move), so that a retry after a restart finds them too."""

    queue_id: int
    attempt_id: str
    seqs: list[int]
    deadlines: list[int]
    expires_at: int


Mutation = (
    MessageInserted
    | DeduplicationRecorded
    | DeduplicationExpired
    | MessageDelivered
    | VisibilityChanged
    | MessageDeleted
    | MessageMoved
    | QueuePurged
    | ReceiveAttemptRecorded
)
