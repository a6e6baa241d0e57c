"""SNS store records and mutations: tagged, frozen, and lossless through msgspec."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.model.messages import AttributeValue
from broker.model.sns_mutations import (
    MESSAGE_TYPES,
    SNS_MUTATION_TYPES,
    HttpDelivery,
    HttpDeliveryFinished,
    HttpDeliveryQueued,
    HttpDeliveryRescheduled,
    SnsMutation,
    SubscriptionDeleted,
    SubscriptionRecord,
    SubscriptionSaved,
    TopicDeduplicationExpired,
    TopicDeduplicationRecorded,
    TopicSequenceRaised,
)
from broker.model.subscriptions import SubscriptionSettings

ids = st.integers(min_value=1, max_value=2**62)
times = st.integers(min_value=0, max_value=2**45)
text = st.text(max_size=20)

records = st.builds(
    SubscriptionRecord,
    subscription_id=st.uuids().map(str),
    topic_id=ids,
    protocol=st.sampled_from(["sqs", "http", "https"]),
    endpoint=text,
    settings=st.builds(SubscriptionSettings, raw_message_delivery=st.booleans()),
    owner=st.just("000000000000"),
    principal=st.none() | st.just("arn:aws:iam::000000000000:user/u"),
    pending=st.booleans(),
    token=st.none() | st.text(alphabet="0123456789abcdef", min_size=1, max_size=16),
    token_expires_at=times,
    authenticated=st.booleans(),
    authenticate_on_unsubscribe=st.booleans(),
    created_at=times,
)
deliveries = st.builds(
    HttpDelivery,
    delivery_id=ids,
    subscription_id=st.uuids().map(str),
    topic_id=ids,
    message_type=st.sampled_from(MESSAGE_TYPES),
    endpoint=text,
    headers=st.lists(st.tuples(text, text), max_size=3),
    body=st.text(),
    dead_letter_attributes=st.dictionaries(
        text, st.builds(AttributeValue, st.just("String"), text), max_size=2
    ),
    published_at=times,
    attempts=st.integers(min_value=0, max_value=100),
    first_attempt_at=st.none() | times,
    next_attempt_at=times,
)
mutations = st.one_of(
    st.builds(SubscriptionSaved, subscription=records),
    st.builds(SubscriptionDeleted, subscription_id=text),
    st.builds(HttpDeliveryQueued, delivery=deliveries),
    st.builds(
        HttpDeliveryRescheduled,
        delivery_id=ids,
        attempts=st.integers(0, 100),
        first_attempt_at=times,
        next_attempt_at=times,
    ),
    st.builds(HttpDeliveryFinished, delivery_id=ids),
    st.builds(
        TopicDeduplicationRecorded,
        topic_id=ids,
        key=st.binary(min_size=16, max_size=16),
        message_id=st.uuids().map(str),
        sequence_number=st.integers(0, 10**19).map(str),
        expires_at=times,
    ),
    st.builds(TopicDeduplicationExpired, topic_id=ids, now=times),
    st.builds(TopicSequenceRaised, topic_id=ids, next_seq=ids),
)


@given(mutations)
def test_every_mutation_round_trips_through_msgpack(mutation: SnsMutation) -> None:
    encoded = msgspec.msgpack.encode(mutation)
    assert msgspec.msgpack.decode(encoded, type=SnsMutation) == mutation


@given(records)
def test_subscription_records_round_trip_through_json(record: SubscriptionRecord) -> None:
    # The store keeps one JSON document per subscription.
    assert msgspec.json.decode(msgspec.json.encode(record), type=SubscriptionRecord) == record


def test_the_type_tuple_lists_every_member_of_the_union() -> None:
    assert set(SNS_MUTATION_TYPES) == set(SnsMutation.__args__)  # type: ignore[attr-defined]


def test_records_are_frozen() -> None:
    delivery = HttpDeliveryFinished(delivery_id=1)
    with pytest.raises(AttributeError):
        delivery.delivery_id = 2  # type: ignore[misc]
