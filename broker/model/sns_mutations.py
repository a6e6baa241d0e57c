"""SNS store records and mutations: the durable facts of subscriptions, deliveries and FIFO topics.

The counterpart of :mod:`broker.model.mutations` for the SNS half. A publish commits, in one
transaction, the ``MessageInserted`` records of its SQS deliveries together with the records
here (HTTP outbox rows, a FIFO topic's deduplication entry and sequence counter), so a Publish
that returned 200 is on disk for every subscriber, or not at all.

Times are milliseconds since the epoch. Topics are named by the store's integer id (a deleted
and re-created topic is another topic); subscriptions by the id that ends their ARN.
"""

from __future__ import annotations

from typing import Final, Literal

import msgspec

from broker.model.messages import AttributeValue
from broker.model.subscriptions import SubscriptionSettings

MessageType = Literal["Notification", "SubscriptionConfirmation", "UnsubscribeConfirmation"]
MESSAGE_TYPES: Final[tuple[MessageType, ...]] = (
    "Notification",
    "SubscriptionConfirmation",
    "UnsubscribeConfirmation",
)


class SubscriptionRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A subscription as stored.

    Attributes:
        subscription_id: the last field of the subscription ARN.
        topic_id: the store's id of its topic.
        protocol: ``sqs``, ``http`` or ``https``.
        endpoint: the queue ARN or the URL.
        settings: the validated attributes.
        owner: the account that subscribed.
        principal: the IAM principal that called Subscribe (SubscriptionPrincipal); None in
            rows stored before it was kept, which report their owner account's root.
        pending: PendingConfirmation: HTTP/S subscriptions until confirmed.
        token: the confirmation token while one is outstanding (kept after confirmation, so a
            repeated ConfirmSubscription answers the same ARN, as AWS does).
        token_expires_at: when the token stops confirming (AWS: after two days).
        authenticated: ConfirmationWasAuthenticated.
        authenticate_on_unsubscribe: Unsubscribe needs a signed request (set at confirmation).
        created_at: when Subscribe created it; orders listings.
        unsubscribed: kept after Unsubscribe only so that the token its
            UnsubscribeConfirmation carries can restore it (until ``token_expires_at``), also
            after a restart; no deliveries, not listed.
    """

    subscription_id: str
    topic_id: int
    protocol: str
    endpoint: str
    settings: SubscriptionSettings
    owner: str
    principal: str | None = None
    pending: bool = False
    token: str | None = None
    token_expires_at: int = 0
    authenticated: bool = False
    authenticate_on_unsubscribe: bool = False
    created_at: int = 0
    unsubscribed: bool = False


class HttpDelivery(msgspec.Struct, frozen=True, kw_only=True):
    """One POST an HTTP/S endpoint is owed: the outbox row.

    Attributes:
        delivery_id: unique among live rows.
        subscription_id: whose delivery this is (its lane; its delivery policy).
        topic_id: the topic, for metrics and for clean-up when the topic goes.
        message_type: Notification or one of the confirmations.
        endpoint: the URL, kept here because confirmations outlive their subscription.
        headers: the x-amz-sns-* headers and Content-Type, User-Agent.
        body: the envelope, or the raw message.
        dead_letter_attributes: the SQS attributes the message carries into the subscription's
            dead-letter queue (the published attributes, for raw delivery).
        published_at: the publish time; delivery latency is measured from it.
        attempts: attempts made so far.
        first_attempt_at: when the first attempt started (the retry window counts from it).
        next_attempt_at: when the next attempt is due.
    """

    delivery_id: int
    subscription_id: str
    topic_id: int
    message_type: MessageType
    endpoint: str
    headers: list[tuple[str, str]]
    body: str
    dead_letter_attributes: dict[str, AttributeValue] = {}
    published_at: int
    attempts: int = 0
    first_attempt_at: int | None = None
    next_attempt_at: int


class SubscriptionSaved(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """A subscription is created or changed (confirmed, attributes set): insert or replace."""

    subscription: SubscriptionRecord


class SubscriptionDeleted(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Unsubscribe (or expiry): the subscription and what the outbox owes it are gone,
    Notifications and SubscriptionConfirmations alike (their token died with it).

    Its UnsubscribeConfirmations still pending (one queued in the same commit) are kept: they
    are owed to the endpoint whatever becomes of the subscription.
    """

    subscription_id: str


class HttpDeliveryQueued(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """A POST is owed; the delivery worker takes it once the commit is durable."""

    delivery: HttpDelivery


class HttpDeliveryRescheduled(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """An attempt failed and the delivery policy allows another one at ``next_attempt_at``."""

    delivery_id: int
    attempts: int
    first_attempt_at: int
    next_attempt_at: int


class HttpDeliveryFinished(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Delivered, dead-lettered or given up: the row is gone."""

    delivery_id: int


class TopicDeduplicationRecorded(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """A FIFO topic's deduplication id is taken until ``expires_at`` by the named publish."""

    topic_id: int
    key: bytes
    message_id: str
    sequence_number: str
    expires_at: int


class TopicDeduplicationExpired(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Every deduplication entry of the topic that expires at or before ``now`` is gone."""

    topic_id: int
    now: int


class TopicSequenceRaised(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """A FIFO topic handed out sequence numbers below ``next_seq``; never reuse them."""

    topic_id: int
    next_seq: int


SnsMutation = (
    SubscriptionSaved
    | SubscriptionDeleted
    | HttpDeliveryQueued
    | HttpDeliveryRescheduled
    | HttpDeliveryFinished
    | TopicDeduplicationRecorded
    | TopicDeduplicationExpired
    | TopicSequenceRaised
)
SNS_MUTATION_TYPES: Final = (
    SubscriptionSaved,
    SubscriptionDeleted,
    HttpDeliveryQueued,
    HttpDeliveryRescheduled,
    HttpDeliveryFinished,
    TopicDeduplicationRecorded,
    TopicDeduplicationExpired,
    TopicSequenceRaised,
)
