"""The SNS half of the SQLite store: topic rows, SNS mutations, loading, outbox payloads."""

from __future__ import annotations

import contextlib
import sqlite3

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from broker.model.messages import AttributeValue
from broker.model.settings import QueueSettings
from broker.model.sns_mutations import (
    HttpDelivery,
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
from broker.model.subscriptions import SubscriptionSettings
from broker.model.topics import TopicSettings
from broker.store.base import TopicNameTaken
from broker.store.sqlite import SqliteStore
from broker.store.sqlite_apply import apply_mutations
from broker.store.sqlite_schema import configure, migrate
from tests.support.mutations import inserted


async def reopened(store: SqliteStore) -> SqliteStore:
    await store.aclose()
    again = SqliteStore(store.path.parent)
    await again.open()
    return again


def subscription(topic_id: int, sub_id: str = "s1", **changes: object) -> SubscriptionRecord:
    fields: dict[str, object] = {
        "subscription_id": sub_id,
        "topic_id": topic_id,
        "protocol": "https",
        "endpoint": "https://example.com/hook",
        "settings": SubscriptionSettings(raw_message_delivery=True),
        "owner": "000000000000",
        "pending": True,
        "token": "ab" * 8,
        "created_at": 5,
    }
    fields.update(changes)
    return SubscriptionRecord(**fields)  # type: ignore[arg-type]


def delivery(delivery_id: int, topic_id: int, sub_id: str = "s1", kind: str = "Notification"):
    return HttpDelivery(
        delivery_id=delivery_id,
        subscription_id=sub_id,
        topic_id=topic_id,
        message_type=kind,  # type: ignore[arg-type]
        endpoint="https://example.com/hook",
        headers=[("x-amz-sns-message-type", kind)],
        body="b\u00e9" * 10,
        dead_letter_attributes={"a": AttributeValue("String", "v")},
        published_at=7,
        next_attempt_at=7,
    )


async def test_topics_are_created_updated_tagged_and_deleted(store: SqliteStore) -> None:
    record = await store.create_topic("t", TopicSettings(display_name="x"), {"k": "v"}, 1)
    with pytest.raises(TopicNameTaken):
        await store.create_topic("t", TopicSettings(), {}, 2)
    await store.update_topic(record.topic_id, TopicSettings(display_name="y"), 3)
    await store.set_topic_tags(record.topic_id, {"a": "b"})
    store = await reopened(store)
    try:
        (loaded,) = (await store.load_sns()).topics
        assert loaded.record.settings.display_name == "y"
        assert loaded.record.tags == {"a": "b"}
        assert loaded.record.modified_at == 3
        await store.delete_topic(record.topic_id)
        assert (await store.load_sns()).topics == []
        again = await store.create_topic("t", TopicSettings(), {}, 4)
        assert again.topic_id > record.topic_id  # ids are never reused
    finally:
        await store.aclose()


async def test_sns_mutations_round_trip_through_a_restart(store: SqliteStore) -> None:
    topic = await store.create_topic("t.fifo", TopicSettings(fifo=True), {}, 1)
    tid = topic.topic_id
    await store.commit(
        [
            SubscriptionSaved(subscription=subscription(tid)),
            SubscriptionSaved(subscription=subscription(tid, "s2", pending=False)),
            HttpDeliveryQueued(delivery=delivery(1, tid)),
            HttpDeliveryQueued(delivery=delivery(2, tid)),
            HttpDeliveryQueued(delivery=delivery(3, tid, "s2")),
            HttpDeliveryRescheduled(
                delivery_id=2, attempts=2, first_attempt_at=10, next_attempt_at=20
            ),
            HttpDeliveryFinished(delivery_id=3),
            TopicDeduplicationRecorded(
                topic_id=tid, key=b"k" * 16, message_id="m", sequence_number="1", expires_at=50
            ),
            TopicDeduplicationRecorded(
                topic_id=tid, key=b"j" * 16, message_id="n", sequence_number="2", expires_at=90
            ),
            TopicDeduplicationExpired(topic_id=tid, now=60),
            TopicSequenceRaised(topic_id=tid, next_seq=3),
            TopicSequenceRaised(topic_id=tid, next_seq=2),  # never lowers
        ]
    )
    store = await reopened(store)
    try:
        loaded = await store.load_sns()
        (entry,) = loaded.topics
        assert entry.record.next_seq == 3
        assert [(d.key, d.message_id, d.expires_at) for d in entry.deduplication] == [
            (b"j" * 16, "n", 90)
        ]
        assert [s.subscription_id for s in loaded.subscriptions] == ["s1", "s2"]
        assert loaded.subscriptions[0] == subscription(tid)
        assert [(d.delivery_id, d.attempts, d.next_attempt_at) for d in loaded.deliveries] == [
            (1, 0, 7),
            (2, 2, 20),
        ]
        payload = await store.read_http_payload(1)
        assert payload is not None
        assert payload.body == "b\u00e9" * 10
        assert payload.headers == [("x-amz-sns-message-type", "Notification")]
        assert payload.dead_letter_attributes == {"a": AttributeValue("String", "v")}
        assert await store.read_http_payload(3) is None
    finally:
        await store.aclose()


async def test_unsubscribe_keeps_only_unsubscribe_confirmations(store: SqliteStore) -> None:
    # A SubscriptionConfirmation's token dies with the subscription: its retries go too.
    tid = (await store.create_topic("t", TopicSettings(), {}, 1)).topic_id
    await store.commit(
        [
            SubscriptionSaved(subscription=subscription(tid)),
            HttpDeliveryQueued(delivery=delivery(1, tid)),
            HttpDeliveryQueued(delivery=delivery(2, tid, kind="SubscriptionConfirmation")),
            HttpDeliveryQueued(delivery=delivery(3, tid, kind="UnsubscribeConfirmation")),
            HttpDeliveryQueued(delivery=delivery(4, tid, "s2", kind="SubscriptionConfirmation")),
            SubscriptionDeleted(subscription_id="s1"),
            HttpDeliveryQueued(delivery=delivery(5, tid, kind="UnsubscribeConfirmation")),
        ]
    )
    loaded = await store.load_sns()
    assert loaded.subscriptions == []
    assert [(d.delivery_id, d.message_type) for d in loaded.deliveries] == [
        (3, "UnsubscribeConfirmation"),  # an earlier Unsubscribe's, still owed
        (4, "SubscriptionConfirmation"),  # another subscription's
        (5, "UnsubscribeConfirmation"),
    ]


async def test_a_publish_is_one_transaction_with_its_queue_inserts(store: SqliteStore) -> None:
    queue = await store.create_queue("q", QueueSettings(), {}, 1)
    tid = (await store.create_topic("t", TopicSettings(), {}, 1)).topic_id
    message = inserted(queue.queue_id, 1, "envelope")
    durable = trio.Event()
    await store.commit([message, HttpDeliveryQueued(delivery=delivery(1, tid))], durable.set)
    assert durable.is_set()
    (loaded,) = await store.load()
    assert len(loaded.messages) == 1
    assert len((await store.load_sns()).deliveries) == 1


async def test_deleting_a_topic_deletes_its_rows(store: SqliteStore) -> None:
    keep = (await store.create_topic("keep", TopicSettings(), {}, 1)).topic_id
    drop = (await store.create_topic("drop", TopicSettings(), {}, 1)).topic_id
    await store.commit(
        [
            SubscriptionSaved(subscription=subscription(keep, "a")),
            SubscriptionSaved(subscription=subscription(drop, "b")),
            HttpDeliveryQueued(delivery=delivery(1, keep, "a")),
            HttpDeliveryQueued(delivery=delivery(2, drop, "b")),
        ]
    )
    await store.delete_topic(drop)
    loaded = await store.load_sns()
    assert [t.record.name for t in loaded.topics] == ["keep"]
    assert [s.subscription_id for s in loaded.subscriptions] == ["a"]
    assert [d.delivery_id for d in loaded.deliveries] == [1]


async def test_unsubscribes_are_counted_per_topic_through_a_restart(store: SqliteStore) -> None:
    first = (await store.create_topic("first", TopicSettings(), {}, 1)).topic_id
    second = (await store.create_topic("second", TopicSettings(), {}, 1)).topic_id
    await store.commit(
        [
            SubscriptionSaved(subscription=subscription(first, "a", protocol="sqs")),
            SubscriptionSaved(subscription=subscription(first, "b", pending=False)),
            SubscriptionSaved(subscription=subscription(second, "c")),
            SubscriptionDeleted(subscription_id="a"),
            # Unsubscribe of an HTTP/S one: deleted, then kept for its restore link...
            SubscriptionDeleted(subscription_id="b"),
            SubscriptionSaved(subscription=subscription(first, "b", unsubscribed=True)),
        ]
    )
    # ... which, forgotten once expired, is not a second Unsubscribe; nor is an unknown id.
    await store.commit(
        [SubscriptionDeleted(subscription_id="b"), SubscriptionDeleted(subscription_id="x")]
    )
    store = await reopened(store)
    try:
        counts = {
            t.record.name: t.record.subscriptions_deleted for t in (await store.load_sns()).topics
        }
        assert counts == {"first": 2, "second": 0}
        # A topic deleted and created again with the same name counts from 0, as AWS's does.
        await store.delete_topic(first)
        again = await store.create_topic("first", TopicSettings(), {}, 2)
        assert again.subscriptions_deleted == 0
        counts = {
            t.record.name: t.record.subscriptions_deleted for t in (await store.load_sns()).topics
        }
        assert counts == {"second": 0, "first": 0}
    finally:
        await store.aclose()


# Subscription ids 0..3; id n belongs to topic 1 + n % 2.
saved = st.builds(
    lambda n, unsubscribed: SubscriptionSaved(
        subscription=subscription(1 + n % 2, str(n), unsubscribed=unsubscribed)
    ),
    st.integers(0, 3),
    st.booleans(),
)
deleted = st.builds(lambda n: SubscriptionDeleted(subscription_id=str(n)), st.integers(0, 3))


@given(commits=st.lists(st.lists(saved | deleted, max_size=8), max_size=4))
def test_the_count_is_the_deletions_of_live_rows_however_they_are_batched(commits):
    """Every deletion of a live row counts once against its topic; deleting a kept
    unsubscribed row or a missing one counts nothing, in whatever runs the mutations come."""
    expected = {1: 0, 2: 0}
    rows: dict[str, bool] = {}  # subscription id -> unsubscribed
    with contextlib.closing(sqlite3.connect(":memory:", isolation_level=None)) as connection:
        configure(connection, writer=True)
        migrate(connection)
        for topic_id in expected:
            connection.execute(
                "INSERT INTO topics (topic_id, name, settings, tags, created_at, modified_at) "
                "VALUES (?, ?, x'', '{}', 0, 0)",
                (topic_id, f"t{topic_id}"),
            )
        for mutations in commits:
            connection.execute("BEGIN")
            apply_mutations(connection, mutations, set())
            connection.execute("COMMIT")
            for mutation in mutations:
                if isinstance(mutation, SubscriptionSaved):
                    record = mutation.subscription
                    rows[record.subscription_id] = record.unsubscribed
                elif rows.pop(mutation.subscription_id, True) is False:
                    expected[1 + int(mutation.subscription_id) % 2] += 1
        found = dict(connection.execute("SELECT topic_id, subscriptions_deleted FROM topics"))
    assert found == expected


async def test_a_subscription_row_stored_before_principals_were_kept_still_loads(
    store: SqliteStore,
) -> None:
    topic = await store.create_topic("t", TopicSettings(), {}, 1)
    kept = subscription(topic.topic_id, principal="arn:aws:iam::000000000000:user/a")
    await store.commit([SubscriptionSaved(subscription=kept)])
    await store.aclose()
    with contextlib.closing(sqlite3.connect(store.path)) as connection, connection:
        connection.execute(
            "UPDATE subscriptions SET record = "
            "CAST(json_remove(CAST(record AS TEXT), '$.principal') AS BLOB)"
        )
    older = SqliteStore(store.path.parent)
    await older.open()
    try:
        (loaded,) = (await older.load_sns()).subscriptions
        assert loaded == subscription(topic.topic_id)  # principal None: the owner's root shown
    finally:
        await older.aclose()
