"""Live topic objects: facts, the filter index of confirmed subscriptions, counters."""

from __future__ import annotations

import json

import msgspec

from broker.model.sns_mutations import SubscriptionRecord
from broker.model.subscriptions import SubscriptionSettings
from broker.model.topics import TopicSettings
from broker.store.base import TopicRecord
from broker.topic_state import PROTOCOLS, Subscription, Topic, TopicStats

ARN = "arn:aws:sns:us-east-1:000000000000:t"


def topic(subscriptions_deleted: int = 0, **settings: object) -> Topic:
    record = TopicRecord(
        topic_id=1,
        name="t",
        settings=TopicSettings(**settings),  # type: ignore[arg-type]
        tags={},
        created_at=0,
        modified_at=0,
        next_seq=7,
        subscriptions_deleted=subscriptions_deleted,
    )
    return Topic(record, ARN)


def subscription(owner: Topic, sub_id: str, **fields: object) -> Subscription:
    record = SubscriptionRecord(
        subscription_id=sub_id,
        topic_id=1,
        protocol=str(fields.pop("protocol", "https")),
        endpoint="https://h/",
        settings=SubscriptionSettings(**fields),  # type: ignore[arg-type]
        owner="000000000000",
    )
    made = Subscription(record, owner)
    owner.subscriptions[sub_id] = made
    owner.index_subscription(made)
    return made


def test_facts_count_confirmed_and_pending() -> None:
    owner = topic()
    subscription(owner, "a")
    pending = subscription(owner, "b")
    pending.replace(msgspec.structs.replace(pending.record, pending=True))
    owner.index_subscription(pending)
    facts = owner.facts("000000000000")
    assert (facts.subscriptions_confirmed, facts.subscriptions_pending) == (1, 1)
    assert owner.index.match({}, "m").matched == ("a",)  # pending ones are not indexed
    assert owner.next_seq == 7


def test_the_deleted_count_goes_on_from_the_stored_one() -> None:
    owner = topic(subscriptions_deleted=2)
    assert owner.facts("000000000000").subscriptions_deleted == 2
    owner.deleted_subscriptions += 1
    assert owner.facts("000000000000").subscriptions_deleted == 3


def test_a_new_filter_policy_is_compiled_and_indexed() -> None:
    owner = topic()
    made = subscription(owner, "a", filter_policy=json.dumps({"k": ["v"]}))
    assert made.policy is not None
    assert owner.index.match({}, "m").matched == ()
    made.replace(msgspec.structs.replace(made.record, settings=SubscriptionSettings()))
    owner.index_subscription(made)
    assert owner.index.match({}, "m").matched == ("a",)
    assert made.arn == f"{ARN}:a"
    assert made.facts().subscription_arn == made.arn


def test_the_principal_defaults_to_the_owner_root_for_records_stored_without_one() -> None:
    made = subscription(topic(), "a")
    assert made.facts().principal == "arn:aws:iam::000000000000:root"
    named = msgspec.structs.replace(made.record, principal="arn:aws:iam::000000000000:user/u")
    made.replace(named)
    assert made.facts().principal == "arn:aws:iam::000000000000:user/u"


def test_the_effective_delivery_policy_follows_topic_and_subscription() -> None:
    owner = topic()
    made = subscription(owner, "a")
    assert made.effective_delivery().retry.num_retries == 3  # AWS's default for HTTP/S
    assert made.effective_delivery() is made.effective_delivery()  # computed once
    assert subscription(owner, "q", protocol="sqs").effective_delivery().max_retry_seconds is None


def test_stats_count_by_protocol_with_latencies() -> None:
    stats = TopicStats()
    assert set(stats.delivered) == set(PROTOCOLS)
    stats.deliveries("sqs", ok=True, count=2, seconds=0.003)
    stats.deliveries("http", ok=False)
    assert stats.delivered["sqs"] == 2
    assert stats.failed["http"] == 1
    assert stats.attempts == stats.confirmations == dict.fromkeys(PROTOCOLS, 0)
    assert stats.latency["sqs"].snapshot().count == 2
    assert stats.latency["http"].snapshot().count == 0
