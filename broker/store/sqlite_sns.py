"""The SNS half of the SQLite store: topic rows, SNS mutations as SQL, and loading at start.

Tables (created in schema version 3, :mod:`broker.store.sqlite_schema`): ``topics`` (with
each topic's SubscriptionsDeleted count from version 8), ``subscriptions`` (one msgspec-JSON
record each; from version 7 also the unsubscribed ones kept for their restore links),
``sns_outbox`` (HTTP/S deliveries owed, with their attempt counts and due times) and
``sns_deduplication`` (FIFO topics' 5-minute window).

Functions here run inside the writer's transaction (mutations, topic changes) or a reader's
snapshot (loading); :mod:`broker.store.sqlite` owns the threads.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import msgspec

from broker.model.messages import AttributeValue
from broker.model.sns_mutations import (
    HttpDeliveryFinished,
    HttpDeliveryQueued,
    HttpDeliveryRescheduled,
    SubscriptionDeleted,
    SubscriptionRecord,
    SubscriptionSaved,
    TopicDeduplicationExpired,
    TopicDeduplicationRecorded,
    TopicSequenceRaised,
)
from broker.model.topics import TopicSettings
from broker.store.base import (
    HttpPayload,
    LoadedSns,
    LoadedTopic,
    PendingHttpDelivery,
    TopicDeduplicationEntry,
    TopicRecord,
)

_SETTINGS_DECODER: Final = msgspec.json.Decoder(TopicSettings)
_SUBSCRIPTION_DECODER: Final = msgspec.json.Decoder(SubscriptionRecord)
_HEADERS_DECODER: Final = msgspec.json.Decoder(list[tuple[str, str]])
_ATTRIBUTES_ENCODER: Final = msgspec.msgpack.Encoder()
_ATTRIBUTES_DECODER: Final = msgspec.msgpack.Decoder(dict[str, AttributeValue])

_SAVE_SUBSCRIPTION: Final = (
    "INSERT OR REPLACE INTO subscriptions (subscription_id, topic_id, record) VALUES (?, ?, ?)"
)
_DELETE_SUBSCRIPTION: Final = "DELETE FROM subscriptions WHERE subscription_id = ?"
# SubscriptionDeleted also forgets the unsubscribed rows kept for their restore links (they
# were counted when they were unsubscribed); only a live row's deletion is an Unsubscribe.
_COUNT_UNSUBSCRIBE: Final = """
    UPDATE topics SET subscriptions_deleted = subscriptions_deleted + 1
    WHERE topic_id = (
        SELECT topic_id FROM subscriptions
        WHERE subscription_id = ?
            AND json_extract(CAST(record AS TEXT), '$.unsubscribed') IS NOT 1
    )
"""
# An UnsubscribeConfirmation is owed to the endpoint even once the subscription is gone;
# notifications are not, nor SubscriptionConfirmations, whose token died with it.
_DROP_OWED: Final = (
    "DELETE FROM sns_outbox WHERE subscription_id = ? AND message_type != 'UnsubscribeConfirmation'"
)
_QUEUE_DELIVERY: Final = """
    INSERT INTO sns_outbox (delivery_id, subscription_id, topic_id, message_type, endpoint,
        attempts, first_attempt_at, next_attempt_at, published_at, headers,
        dead_letter_attributes, body)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
_RESCHEDULE: Final = (
    "UPDATE sns_outbox SET attempts = ?, first_attempt_at = ?, next_attempt_at = ? "
    "WHERE delivery_id = ?"
)
_FINISH: Final = "DELETE FROM sns_outbox WHERE delivery_id = ?"
_DEDUP_RECORD: Final = (
    "INSERT OR REPLACE INTO sns_deduplication (topic_id, key, message_id, sequence_number, "
    "expires_at) VALUES (?, ?, ?, ?, ?)"
)
_DEDUP_EXPIRE: Final = "DELETE FROM sns_deduplication WHERE topic_id = ? AND expires_at <= ?"
_RAISE_SEQ: Final = "UPDATE topics SET next_seq = max(next_seq, ?) WHERE topic_id = ?"


def _saved(m: SubscriptionSaved) -> tuple[Any, ...]:
    record = m.subscription
    return (record.subscription_id, record.topic_id, msgspec.json.encode(record))


def _queued(m: HttpDeliveryQueued) -> tuple[Any, ...]:
    d = m.delivery
    attributes = (
        _ATTRIBUTES_ENCODER.encode(d.dead_letter_attributes) if d.dead_letter_attributes else None
    )
    return (
        d.delivery_id,
        d.subscription_id,
        d.topic_id,
        d.message_type,
        d.endpoint,
        d.attempts,
        d.first_attempt_at,
        d.next_attempt_at,
        d.published_at,
        msgspec.json.encode(d.headers),
        attributes,
        d.body.encode("utf-8", "surrogatepass"),
    )


def _apply_deleted(connection: sqlite3.Connection, batch: Sequence[Any]) -> None:
    # One at a time: each deletion is counted against the row as the one before left it.
    for mutation in batch:
        row = (mutation.subscription_id,)
        connection.execute(_COUNT_UNSUBSCRIBE, row)
        connection.execute(_DELETE_SUBSCRIPTION, row)
        connection.execute(_DROP_OWED, row)


def _simple(sql: str, row: Callable[[Any], tuple[Any, ...]]) -> Callable[..., None]:
    def apply(connection: sqlite3.Connection, batch: Sequence[Any]) -> None:
        connection.executemany(sql, map(row, batch))

    return apply


# mutation type -> apply(connection, consecutive mutations of that type)
APPLIERS: Final[Mapping[type, Callable[[sqlite3.Connection, Sequence[Any]], None]]] = {
    SubscriptionSaved: _simple(_SAVE_SUBSCRIPTION, _saved),
    SubscriptionDeleted: _apply_deleted,
    HttpDeliveryQueued: _simple(_QUEUE_DELIVERY, _queued),
    HttpDeliveryRescheduled: _simple(
        _RESCHEDULE,
        lambda m: (m.attempts, m.first_attempt_at, m.next_attempt_at, m.delivery_id),
    ),
    HttpDeliveryFinished: _simple(_FINISH, lambda m: (m.delivery_id,)),
    TopicDeduplicationRecorded: _simple(
        _DEDUP_RECORD,
        lambda m: (m.topic_id, m.key, m.message_id, m.sequence_number, m.expires_at),
    ),
    TopicDeduplicationExpired: _simple(_DEDUP_EXPIRE, lambda m: (m.topic_id, m.now)),
    TopicSequenceRaised: _simple(_RAISE_SEQ, lambda m: (m.next_seq, m.topic_id)),
}


# ---------------------------------------------------------------------- topics


def insert_topic(
    connection: sqlite3.Connection,
    name: str,
    settings: TopicSettings,
    tags: Mapping[str, str],
    now: int,
) -> int:
    """Insert a topic row; return its id (``sqlite3.IntegrityError`` if the name is live)."""
    cursor = connection.execute(
        "INSERT INTO topics (name, settings, tags, created_at, modified_at) VALUES (?, ?, ?, ?, ?)",
        (name, msgspec.json.encode(settings), json.dumps(dict(tags)), now, now),
    )
    assert cursor.lastrowid is not None
    return cursor.lastrowid


def update_topic(
    connection: sqlite3.Connection, topic_id: int, settings: TopicSettings, now: int
) -> None:
    connection.execute(
        "UPDATE topics SET settings = ?, modified_at = ? WHERE topic_id = ?",
        (msgspec.json.encode(settings), now, topic_id),
    )


def set_topic_tags(connection: sqlite3.Connection, topic_id: int, tags: Mapping[str, str]) -> None:
    connection.execute(
        "UPDATE topics SET tags = ? WHERE topic_id = ?", (json.dumps(dict(tags)), topic_id)
    )


def delete_topic(connection: sqlite3.Connection, topic_id: int) -> None:
    """Delete a topic with its subscriptions, pending deliveries and deduplication entries."""
    for table in ("sns_outbox", "sns_deduplication", "subscriptions", "topics"):
        connection.execute(f"DELETE FROM {table} WHERE topic_id = ?", (topic_id,))


# ---------------------------------------------------------------------- reads


def load_sns(connection: sqlite3.Connection) -> LoadedSns:
    """Read every topic, subscription and pending delivery (without payloads)."""
    topics = []
    for row in connection.execute(
        "SELECT topic_id, name, settings, tags, created_at, modified_at, next_seq, "
        "subscriptions_deleted FROM topics ORDER BY topic_id"
    ).fetchall():
        topic_id, name, settings, tags, created_at, modified_at, next_seq, deleted = row
        record = TopicRecord(
            topic_id=topic_id,
            name=name,
            settings=_SETTINGS_DECODER.decode(settings),
            tags=json.loads(tags),
            created_at=created_at,
            modified_at=modified_at,
            next_seq=next_seq,
            subscriptions_deleted=deleted,
        )
        deduplication = [
            TopicDeduplicationEntry(key, message_id, sequence_number, expires_at)
            for key, message_id, sequence_number, expires_at in connection.execute(
                "SELECT key, message_id, sequence_number, expires_at FROM sns_deduplication "
                "WHERE topic_id = ? ORDER BY expires_at",
                (topic_id,),
            )
        ]
        topics.append(LoadedTopic(record, deduplication))
    subscriptions = [
        _SUBSCRIPTION_DECODER.decode(record)
        for (record,) in connection.execute("SELECT record FROM subscriptions ORDER BY rowid")
    ]
    deliveries = [
        PendingHttpDelivery(
            delivery_id=row[0],
            subscription_id=row[1],
            topic_id=row[2],
            message_type=row[3],
            endpoint=row[4],
            attempts=row[5],
            first_attempt_at=row[6],
            next_attempt_at=row[7],
            published_at=row[8],
        )
        for row in connection.execute(
            "SELECT delivery_id, subscription_id, topic_id, message_type, endpoint, attempts, "
            "first_attempt_at, next_attempt_at, published_at FROM sns_outbox "
            "ORDER BY delivery_id"
        )
    ]
    return LoadedSns(topics, subscriptions, deliveries)


def read_http_payload(connection: sqlite3.Connection, delivery_id: int) -> HttpPayload | None:
    """The headers, body and dead-letter attributes of one pending delivery, if still there."""
    row = connection.execute(
        "SELECT headers, body, dead_letter_attributes FROM sns_outbox WHERE delivery_id = ?",
        (delivery_id,),
    ).fetchone()
    if row is None:
        return None
    headers, body, attributes = row
    return HttpPayload(
        headers=_HEADERS_DECODER.decode(headers),
        body=bytes(body).decode("utf-8", "surrogatepass"),
        dead_letter_attributes=_ATTRIBUTES_DECODER.decode(attributes) if attributes else {},
    )
