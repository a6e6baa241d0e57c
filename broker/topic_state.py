"""Live topic objects: a topic, its subscriptions, and their counters.

:class:`Topic` holds a topic's stored record, its subscriptions and the filter index over the
confirmed ones, its FIFO deduplication window and sequence counter; :class:`Subscription` a
subscription's record and compiled filter policy. :mod:`broker.topics` keeps them in step with
the store; :mod:`broker.fanout` and :mod:`broker.http_delivery` read them and count in
:class:`TopicStats`, which the metrics collector reads at scrape time.
"""

from __future__ import annotations

from typing import Final

from broker.model.delivery_policy import EffectiveDeliveryPolicy
from broker.model.filter_index import SubscriptionFilterIndex
from broker.model.filter_policy import FilterPolicy
from broker.model.publishing import TopicDeduplication
from broker.model.sns_mutations import SubscriptionRecord
from broker.model.sns_to_sqs_access import Refusal
from broker.model.subscriptions import (
    SubscriptionContext,
    SubscriptionFacts,
    SubscriptionSettings,
    compiled_filter,
    effective_delivery,
)
from broker.model.topics import TopicFacts, TopicSettings
from broker.store.base import HistogramRecorder, TopicRecord

# Delivery latency buckets (seconds): SQS deliveries take milliseconds, HTTP retries an hour.
LATENCY_BOUNDS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
)  # fmt: skip
PROTOCOLS: Final = ("sqs", "http", "https")


class TopicStats:
    """A topic's counters, read by the metrics collector at scrape time."""

    __slots__ = (
        "attempts",
        "confirmations",
        "delivered",
        "failed",
        "filtered_out",
        "latency",
        "published",
    )

    def __init__(self) -> None:
        self.published = 0
        self.filtered_out = 0
        self.delivered = dict.fromkeys(PROTOCOLS, 0)
        self.failed = dict.fromkeys(PROTOCOLS, 0)
        # Notification delivery attempts: one per SQS copy, one per HTTP/S POST (retries too).
        self.attempts = dict.fromkeys(PROTOCOLS, 0)
        # Subscription/UnsubscribeConfirmation POSTs: not deliveries, counted apart.
        self.confirmations = dict.fromkeys(PROTOCOLS, 0)
        self.latency = {protocol: HistogramRecorder(LATENCY_BOUNDS) for protocol in PROTOCOLS}

    def deliveries(self, protocol: str, *, ok: bool, count: int = 1, seconds: float = 0) -> None:
        """Count deliveries made, and failures (an SQS copy's, or one HTTP/S attempt's)."""
        (self.delivered if ok else self.failed)[protocol] += count
        if ok:
            self.latency[protocol].observe(seconds, count)


class Subscription:
    """One live subscription."""

    __slots__ = ("_effective", "arn", "envelope_tail", "policy", "record", "refused", "topic")

    def __init__(self, record: SubscriptionRecord, topic: Topic) -> None:
        self.record = record
        self.topic = topic
        self.arn = f"{topic.arn}:{record.subscription_id}"
        self.policy: FilterPolicy | None = compiled_filter(record.settings)
        self._effective: EffectiveDeliveryPolicy | None = None
        # (base URL, the envelope's UnsubscribeURL line for it, whether SQS allows its
        # characters): built once, spliced into every envelope it gets (broker.sns_bodies).
        self.envelope_tail: tuple[str, str, bool] | None = None
        # Why its queue's policy refuses SNS, as last logged by the fan-out (which logs the
        # changes only): None while deliveries are allowed.
        self.refused: Refusal | None = None

    @property
    def subscription_id(self) -> str:
        return self.record.subscription_id

    @property
    def protocol(self) -> str:
        return self.record.protocol

    @property
    def endpoint(self) -> str:
        return self.record.endpoint

    @property
    def settings(self) -> SubscriptionSettings:
        return self.record.settings

    @property
    def context(self) -> SubscriptionContext:
        topic = self.topic
        return SubscriptionContext(self.protocol, self.endpoint, topic.settings.fifo, topic.arn)

    def effective_delivery(self) -> EffectiveDeliveryPolicy:
        """The delivery policy its HTTP/S deliveries follow (topic's and its own, combined)."""
        if self._effective is None:
            topic_policy = self.topic.settings.delivery_policy_parsed
            self._effective = effective_delivery(self.settings, self.protocol, topic_policy)
        return self._effective

    def replace(self, record: SubscriptionRecord) -> None:
        self.record = record
        self.policy = compiled_filter(record.settings)
        self._effective = None

    def facts(self) -> SubscriptionFacts:
        record = self.record
        return SubscriptionFacts(
            subscription_arn=self.arn,
            topic_arn=self.topic.arn,
            protocol=record.protocol,
            endpoint=record.endpoint,
            owner=record.owner,
            pending_confirmation=record.pending,
            confirmation_was_authenticated=record.authenticated,
            principal=record.principal or f"arn:aws:iam::{record.owner}:root",
        )


class Topic:
    """One live topic with its subscriptions."""

    __slots__ = (
        "arn",
        "deduplication",
        "deleted",
        "deleted_subscriptions",
        "index",
        "next_seq",
        "record",
        "stats",
        "subscriptions",
    )

    def __init__(self, record: TopicRecord, arn: str) -> None:
        self.record = record
        self.arn = arn
        self.subscriptions: dict[str, Subscription] = {}
        self.index: SubscriptionFilterIndex[str] = SubscriptionFilterIndex()  # confirmed only
        self.deduplication = TopicDeduplication()
        self.next_seq = record.next_seq
        self.stats = TopicStats()
        self.deleted = False
        # From the stored count; the store raises it in each Unsubscribe's commit too.
        self.deleted_subscriptions = record.subscriptions_deleted

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def settings(self) -> TopicSettings:
        return self.record.settings

    def facts(self, owner: str) -> TopicFacts:
        pending = sum(s.record.pending for s in self.subscriptions.values())
        return TopicFacts(
            topic_arn=self.arn,
            owner=owner,
            subscriptions_confirmed=len(self.subscriptions) - pending,
            subscriptions_pending=pending,
            subscriptions_deleted=self.deleted_subscriptions,
        )

    def index_subscription(self, subscription: Subscription) -> None:
        if subscription.record.pending:
            self.index.remove(subscription.subscription_id)
        else:
            self.index.add(subscription.subscription_id, subscription.policy)
