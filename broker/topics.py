"""The live topics and subscriptions: stored records, filter indexes, tokens, counters.

What :mod:`broker.registry` is for queues, this is for SNS. Topic changes (create, attributes,
tags, delete) are store jobs awaited before the topic changes in memory. Subscription changes
return their mutations instead: the caller (:mod:`broker.sns`) adds what goes with them (a
confirmation POST for the outbox) and commits all of it in the same trio step, so commits
reach the disk in the order memory changed.

Only confirmed subscriptions sit in a topic's :class:`SubscriptionFilterIndex`, so a publish
never even looks at a subscription that may not receive it.
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Final

import msgspec
import trio

from broker.http_client import parse_target
from broker.model.delivery_policy import EffectiveDeliveryPolicy
from broker.model.filter_policy import check_policy_quota
from broker.model.publishing import Original
from broker.model.sns_errors import (
    INVALID_PARAMETER,
    SnsError,
    attribute_error,
    invalid_parameter,
    not_found,
)
from broker.model.sns_mutations import (
    SnsMutation,
    SubscriptionDeleted,
    SubscriptionRecord,
    SubscriptionSaved,
    TopicDeduplicationExpired,
)
from broker.model.subscriptions import (
    SubscriptionContext,
    SubscriptionSettings,
    apply_update,
    effective_delivery,
    masked_endpoint,
    parse_subscribe,
)
from broker.model.topics import (
    TopicSettings,
    check_create_matches,
    check_large_messages,
    parse_create,
)
from broker.model.topics import apply_update as apply_topic_update
from broker.registry import EXPIRE_INTERVAL_SECONDS, now_ms
from broker.store.base import (
    PendingHttpDelivery,
    Store,
    TopicNameTaken,
    TopicRecord,
)
from broker.topic_state import Subscription, Topic
from monitoring.logging import EventLog
from proto.aws.arn import (
    ArnError,
    parse_queue_arn,
    parse_subscription_arn,
    parse_topic_arn,
    topic_arn,
)

SUPPORTED_PROTOCOLS: Final = frozenset({"sqs", "http", "https"})
# What AWS accepts but Wharf does not deliver to (issue 4: out of scope, answered clearly).
OUT_OF_SCOPE_PROTOCOLS: Final = frozenset(
    {"email", "email-json", "sms", "application", "lambda", "firehose"}
)
TOKEN_LIFETIME_MS: Final = 2 * 24 * 3600 * 1000  # ConfirmSubscription: "tokens valid 2 days"
_TOKEN: Final = re.compile(r"[0-9a-fA-F]+")  # what every confirmation token is
PENDING_SWEEP_EVERY: Final = 60  # expiry rounds between sweeps for expired pending subscriptions


class TopicRegistry:
    """Every live topic by name and ARN, every subscription by id and token."""

    def __init__(
        self,
        store: Store,
        *,
        region: str,
        account_id: str,
        log: EventLog,
        max_filter_policies: int = 200,
    ) -> None:
        self.store = store
        self.region = region
        self.account_id = account_id
        self.log = log
        self.max_filter_policies = max_filter_policies
        self._by_name: dict[str, Topic] = {}
        self._subscriptions: dict[str, Subscription] = {}
        self._tokens: dict[str, str] = {}  # confirmation token -> subscription id
        # UnsubscribeConfirmation's SubscribeURL restores the subscription until its token
        # expires: token -> the record, kept in the store too (``unsubscribed``).
        self._unsubscribed: dict[str, SubscriptionRecord] = {}
        self._restore_links: dict[str, str] = {}  # subscription id -> its token in _unsubscribed
        self._creating = trio.Lock()
        # Settings and tags are read, changed and written back across a store write: one
        # such change at a time, or concurrent ones undo each other (last writer wins).
        self._updating = trio.Lock()
        self.pending_deliveries: list[PendingHttpDelivery] = []  # found by load(), once

    def arn_of(self, name: str) -> str:
        return topic_arn(self.region, self.account_id, name)

    async def load(self) -> None:
        """Rebuild topics and subscriptions from the store (at start)."""
        loaded = await self.store.load_sns()
        by_id: dict[int, Topic] = {}
        for entry in loaded.topics:
            topic = Topic(entry.record, self.arn_of(entry.record.name))
            for dedup in entry.deduplication:
                original = Original(dedup.message_id, dedup.sequence_number)
                topic.deduplication.remember(dedup.key, original, dedup.expires_at)
            self._by_name[topic.name] = topic
            by_id[topic.record.topic_id] = topic
        for record in loaded.subscriptions:
            owner = by_id.get(record.topic_id)
            if owner is None:
                continue
            if record.unsubscribed:
                if record.token is not None:  # expired ones go at the next Unsubscribe
                    self._keep_restore_link(record.token, record)
                continue
            self._add_subscription(Subscription(record, owner))
        self.pending_deliveries = loaded.deliveries
        self.log.info(
            "topics.loaded",
            topics=len(self._by_name),
            subscriptions=len(self._subscriptions),
            pending_http_deliveries=len(loaded.deliveries),
        )

    # ------------------------------------------------------------------ lookups

    def __iter__(self) -> Iterator[Topic]:
        return iter(list(self._by_name.values()))

    def __len__(self) -> int:
        return len(self._by_name)

    def get(self, name: str) -> Topic | None:
        return self._by_name.get(name)

    def by_arn(self, arn: str) -> Topic | None:
        name = arn.rsplit(":", 1)[-1]
        topic = self._by_name.get(name)
        return topic if topic is not None and topic.arn == arn else None

    def require(self, arn: str | None, parameter: str = "TopicArn") -> Topic:
        """The topic an ARN names.

        Raises:
            SnsError: ``InvalidParameter`` for a malformed ARN or another region, ``NotFound``
                for an unknown topic.
        """
        if not arn:
            raise invalid_parameter(f"{parameter} Reason: no value for required parameter")
        topic = self.by_arn(arn)
        if topic is not None:
            return topic
        try:
            parsed = parse_topic_arn(arn)
        except ArnError:
            parts = len(arn.split(":"))
            if parts < 6:  # AWS names the ARN's shape only for this case
                raise invalid_parameter(
                    f"{parameter} Reason: An ARN must have at least 6 elements, not {parts}"
                ) from None
            raise invalid_parameter(parameter) from None
        if parsed.region != self.region:
            raise invalid_parameter(parameter)
        raise not_found("Topic")

    def subscription(self, arn: str | None) -> Subscription | None:
        """The subscription an ARN names, or None.

        Raises:
            SnsError: ``InvalidParameter`` for a missing or malformed ARN.
        """
        if not arn:
            raise invalid_parameter("SubscriptionArn Reason: no value for required parameter")
        try:
            parsed_topic, subscription_id = parse_subscription_arn(arn)
        except ArnError:
            parts = len(arn.split(":"))
            if parts < 6:  # AWS's wording for this case
                reason = f"An ARN must have at least 6 elements, not {parts}"
                raise invalid_parameter(f"SubscriptionArn Reason: {reason}") from None
            # A topic's ARN, or another of 6 elements or more: AWS names the id it lacks
            # (LocalStack's AWS-validated snapshot, invalid-unsubscribe-arn-3).
            raise invalid_parameter("SubscriptionId") from None
        found = self._subscriptions.get(subscription_id)
        if found is None or found.topic.arn != str(parsed_topic):
            return None
        return found

    def subscription_by_id(self, subscription_id: str) -> Subscription | None:
        return self._subscriptions.get(subscription_id)

    def delivery_policy(self, subscription_id: str) -> EffectiveDeliveryPolicy | None:
        """The effective delivery policy of a subscription, live or unsubscribed.

        An unsubscribed one's is what its record kept at Unsubscribe, combined with its
        topic's policy, so that its UnsubscribeConfirmation is retried as the subscription's
        own POSTs were (also after a restart: the record is stored for its restore link).
        None once nothing is left of the subscription (its topic deleted, its link expired).
        """
        live = self._subscriptions.get(subscription_id)
        if live is not None:
            return live.effective_delivery()
        token = self._restore_links.get(subscription_id)
        if token is None:
            return None
        record = self._unsubscribed[token]
        topic = self.topic_by_id(record.topic_id)
        if topic is None:
            return None
        topic_policy = topic.settings.delivery_policy_parsed
        return effective_delivery(record.settings, record.protocol, topic_policy)

    def require_subscription(self, arn: str | None) -> Subscription:
        found = self.subscription(arn)
        if found is None:
            raise not_found("Subscription")
        return found

    def subscriptions(self) -> list[Subscription]:
        """Every subscription, oldest first (ListSubscriptions' order)."""
        return sorted(
            self._subscriptions.values(),
            key=lambda s: (s.record.created_at, s.subscription_id),
        )

    def _add_subscription(self, subscription: Subscription) -> None:
        topic = subscription.topic
        topic.subscriptions[subscription.subscription_id] = subscription
        topic.index_subscription(subscription)
        self._subscriptions[subscription.subscription_id] = subscription
        if subscription.record.token is not None:
            self._tokens[subscription.record.token] = subscription.subscription_id

    def _drop_subscription(self, subscription: Subscription) -> None:
        topic = subscription.topic
        topic.subscriptions.pop(subscription.subscription_id, None)
        topic.index.remove(subscription.subscription_id)
        self._subscriptions.pop(subscription.subscription_id, None)
        token = subscription.record.token
        if token is not None:
            self._tokens.pop(token, None)

    # ------------------------------------------------------------------ topics

    async def create(
        self, name: str, attributes: Mapping[str, str], tags: Mapping[str, str], now: int
    ) -> Topic:
        """CreateTopic: a new topic, or the existing one when attributes and tags match."""
        try:
            arn = self.arn_of(name)
        except ArnError:  # not a topic name at all: parse_create's answer for a bad name
            raise invalid_parameter("Topic Name") from None
        settings = parse_create(name, attributes, topic_arn=arn)
        async with self._creating:
            existing = self._by_name.get(name)
            if existing is not None:
                check_create_matches(existing.settings, name, attributes, topic_arn=arn)
                if tags and any(existing.record.tags.get(k) != v for k, v in tags.items()):
                    raise invalid_parameter("Tags Reason: Topic already exists with different tags")
                return existing
            try:
                record = await self.store.create_topic(name, settings, tags, now)
            except TopicNameTaken:  # pragma: no cover - the lock serialises creates
                return self._by_name[name]
            topic = Topic(record, arn)
            self._by_name[name] = topic
        self.log.info("topic.created", topic=name, fifo=settings.fifo)
        return topic

    async def delete(self, topic: Topic) -> list[Subscription]:
        """DeleteTopic: the topic and its subscriptions; returns the subscriptions dropped."""
        if self._by_name.get(topic.name) is not topic:
            await self.store.settled()  # deleted by a call whose commit may be under way
            return []
        del self._by_name[topic.name]
        topic.deleted = True
        dropped = list(topic.subscriptions.values())
        for subscription in dropped:
            self._drop_subscription(subscription)
        await self.store.delete_topic(topic.record.topic_id)
        self.log.info("topic.deleted", topic=topic.name)
        return dropped

    async def set_attribute(self, topic: Topic, name: str, value: str, now: int) -> None:
        await self.update_settings(
            topic,
            lambda settings: apply_topic_update(settings, name, value, topic_arn=topic.arn),
            now,
        )

    async def update_settings(
        self, topic: Topic, change: Callable[[TopicSettings], TopicSettings], now: int
    ) -> None:
        """Store and apply ``change`` of the topic's current settings.

        In memory before the store write, as Subscribe's changes are, so that a Subscribe
        meanwhile is checked against them (an HTTP endpoint on a topic being raised past 256
        KiB); put back if the write fails.

        Raises:
            SnsError: what ``change`` raises; ``InvalidParameter`` when a MaximumMessageSize
                above 256 KiB does not suit the topic's subscriptions
                (:func:`check_large_messages`).
        """
        async with self._updating:
            settings = change(topic.settings)
            protocols = (s.protocol for s in topic.subscriptions.values())
            check_large_messages(settings.effective_maximum_message_size, protocols)
            before = topic.record
            self._apply_settings(
                topic, msgspec.structs.replace(before, settings=settings, modified_at=now)
            )
            try:
                await self.store.update_topic(topic.record.topic_id, settings, now)
            except Exception:
                self._apply_settings(topic, before)
                raise

    @staticmethod
    def _apply_settings(topic: Topic, record: TopicRecord) -> None:
        topic.record = record
        for subscription in topic.subscriptions.values():
            subscription.replace(subscription.record)  # the topic's DeliveryPolicy may differ

    async def update_tags(
        self, topic: Topic, change: Callable[[Mapping[str, str]], Mapping[str, str]]
    ) -> None:
        """Store and apply ``change`` of the topic's current tags (one change at a time)."""
        async with self._updating:
            tags = dict(change(topic.record.tags))
            await self.store.set_topic_tags(topic.record.topic_id, tags)
            topic.record = msgspec.structs.replace(topic.record, tags=tags)

    async def expire_forever(self) -> None:
        """Forget FIFO topics' deduplication ids past their 5 minutes, once a second, and
        delete unconfirmed subscriptions whose token expired, once a minute."""
        sweeps = 0
        while True:
            await trio.sleep(EXPIRE_INTERVAL_SECONDS)
            now = now_ms()
            mutations = self.expire_deduplication(now)
            sweeps += 1
            if sweeps % PENDING_SWEEP_EVERY == 0:
                mutations += self.expire_pending(now)
            if mutations:
                await self.store.commit(mutations)

    def expire_pending(self, now: int) -> list[SnsMutation]:
        """Delete the HTTP/S subscriptions still unconfirmed when their token expired.

        AWS: "Amazon SNS automatically deletes unconfirmed subscriptions after 48 hours"
        (the tokens' lifetime, so from the last SubscriptionConfirmation sent).
        """
        expired = [
            subscription
            for subscription_id in list(self._tokens.values())
            if (subscription := self._subscriptions.get(subscription_id)) is not None
            and subscription.record.pending
            and subscription.record.token_expires_at <= now
        ]
        mutations: list[SnsMutation] = []
        for subscription in expired:
            self._drop_subscription(subscription)
            subscription.topic.deleted_subscriptions += 1
            mutations.append(SubscriptionDeleted(subscription_id=subscription.subscription_id))
            self.log.info(
                "sns.unconfirmed_subscription_deleted",
                topic=subscription.topic.arn,
                subscription=subscription.arn,
                endpoint=masked_endpoint(subscription.endpoint),
            )
        return mutations

    def expire_deduplication(self, now: int) -> list[SnsMutation]:
        """Forget FIFO deduplication ids past their window; return what to commit."""
        return [
            TopicDeduplicationExpired(topic_id=topic.record.topic_id, now=now)
            for topic in self
            if topic.settings.fifo and topic.deduplication.expire(now)
        ]

    # ------------------------------------------------------------------ subscriptions

    def subscribe(
        self,
        topic: Topic,
        protocol: str,
        endpoint: str,
        attributes: Mapping[str, str],
        *,
        owner: str,
        principal: str | None = None,
        now: int,
    ) -> tuple[Subscription, list[SnsMutation]]:
        """Subscribe: a new subscription (pending for HTTP/S), or the identical existing one.

        Memory changes now; the caller commits the mutations returned in the same trio step:
        none for an existing confirmed subscription, a new token for a pending one (the
        caller then sends a new SubscriptionConfirmation). ``owner`` and ``principal`` are
        the subscribing account and IAM principal (None: the account's root).

        Raises:
            SnsError: AWS's errors for the protocol, endpoint or attributes.
        """
        self._check_endpoint(topic, protocol, endpoint)
        context = SubscriptionContext(protocol, endpoint, topic.settings.fifo, topic.arn)
        settings = parse_subscribe(attributes, context)
        for existing in topic.subscriptions.values():
            if existing.protocol == protocol and existing.endpoint == endpoint:
                if attributes and parse_subscribe(attributes, context) != _only(
                    existing.settings, attributes
                ):
                    raise attribute_error(
                        "Subscription already exists with different attributes",
                        in_attributes_map=True,
                    )
                if existing.record.pending:
                    return existing, self._reissue_token(existing, now)
                return existing, []
        if settings.filter_policy:
            self._check_filter_quota(topic)
        existing_protocols = (s.protocol for s in topic.subscriptions.values())
        check_large_messages(
            topic.settings.effective_maximum_message_size, [*existing_protocols, protocol]
        )
        http = protocol in ("http", "https")
        record = SubscriptionRecord(
            subscription_id=str(uuid.uuid4()),
            topic_id=topic.record.topic_id,
            protocol=protocol,
            endpoint=endpoint,
            settings=settings,
            owner=owner,
            principal=principal,
            pending=http,
            token=secrets.token_hex(64) if http else None,
            token_expires_at=now + TOKEN_LIFETIME_MS if http else 0,
            authenticated=not http,
            created_at=now,
        )
        subscription = Subscription(record, topic)
        self._add_subscription(subscription)
        return subscription, [SubscriptionSaved(subscription=record)]

    def _reissue_token(self, subscription: Subscription, now: int) -> list[SnsMutation]:
        """A repeated Subscribe of a pending subscription: a new token, for a new confirmation.

        AWS sends a fresh SubscriptionConfirmation each time, so an endpoint that missed the
        first one is not stuck. The record holds one token: the new one replaces the old.
        """
        old = subscription.record.token
        if old is not None:
            self._tokens.pop(old, None)
        token = secrets.token_hex(64)
        record = msgspec.structs.replace(
            subscription.record, token=token, token_expires_at=now + TOKEN_LIFETIME_MS
        )
        subscription.replace(record)
        self._tokens[token] = subscription.subscription_id
        return [SubscriptionSaved(subscription=record)]

    def _check_filter_quota(self, topic: Topic) -> None:
        """Refuse one more filter policy on ``topic`` once the topic or the account is full."""
        # Compiled policies, not stored texts: a "{}" kept by a broker before 3 Dec 2026
        # filters nothing and holds no slot.
        check_policy_quota(
            on_topic=sum(1 for s in topic.subscriptions.values() if s.policy is not None),
            in_account=sum(1 for s in self._subscriptions.values() if s.policy is not None),
            per_topic=self.max_filter_policies,
        )

    def _check_endpoint(self, topic: Topic, protocol: str, endpoint: str) -> None:
        if protocol in OUT_OF_SCOPE_PROTOCOLS:
            raise invalid_parameter(
                f"Protocol Reason: {protocol} subscriptions are out of scope for Wharf: it "
                "delivers to sqs, http and https only (no e-mail, SMS, mobile push, Lambda or "
                "Firehose)"
            )
        if protocol not in SUPPORTED_PROTOCOLS:
            raise invalid_parameter(f"Amazon SNS does not support this protocol string: {protocol}")
        if not endpoint:
            raise invalid_parameter("Endpoint Reason: no value for required parameter")
        if protocol != "sqs":
            if not endpoint.startswith(f"{protocol}://") or len(endpoint) <= len(protocol) + 3:
                raise invalid_parameter("Endpoint must match the specified protocol")
            if parse_target(endpoint) is None:
                # Refused here rather than accepted and retried for two days: no delivery
                # could ever reach it (no host, a port outside 1-65535, a name past DNS's).
                raise invalid_parameter(
                    "Endpoint Reason: not a URL deliveries can reach (a host, and a port "
                    "from 1 to 65535)"
                )
            if topic.settings.fifo:
                raise invalid_parameter(
                    "Protocol Reason: FIFO topics deliver to Amazon SQS queues only"
                )
            return
        try:
            queue = parse_queue_arn(endpoint)
        except ArnError:
            raise invalid_parameter("SQS endpoint ARN") from None
        if queue.account != self.account_id or queue.region != self.region:
            raise invalid_parameter(
                "SQS endpoint ARN Reason: the queue must be in this broker's account and region"
            )
        if queue.resource.endswith(".fifo") and not topic.settings.fifo:
            # AWS's message, prefix doubled, as LocalStack's AWS-validated snapshot records it.
            raise invalid_parameter(
                "Invalid parameter: Endpoint Reason: FIFO SQS Queues can not be subscribed to "
                "standard SNS topics"
            )

    def by_token(
        self, topic_arn_value: str, token: str, now: int
    ) -> Subscription | SubscriptionRecord:
        """The subscription a confirmation token names (or the unsubscribed one it restores).

        Raises:
            SnsError: ``InvalidParameter`` "Topic" or "Token", as AWS answers; "Invalid
                token" for one that is not hexadecimal, as no token is.
        """
        try:
            parse_topic_arn(topic_arn_value)
        except ArnError:
            raise invalid_parameter("Topic") from None
        if not _TOKEN.fullmatch(token):
            # LocalStack's AWS-validated snapshot (invalid-token): "randomtoken" gets this,
            # a well-formed token nobody was sent gets "Invalid parameter: Token".
            raise SnsError(INVALID_PARAMETER, "Invalid token")
        subscription_id = self._tokens.get(token)
        found: Subscription | SubscriptionRecord | None = (
            self._subscriptions.get(subscription_id) if subscription_id else None
        )
        if found is None:
            restorable = self._unsubscribed.get(token)
            if restorable is not None and restorable.token_expires_at > now:
                found = restorable
        if found is None:
            raise invalid_parameter("Token")
        record = found.record if isinstance(found, Subscription) else found
        topic = found.topic if isinstance(found, Subscription) else self._topic_by_id(record)
        if topic is None or topic.arn != topic_arn_value:
            raise invalid_parameter("Topic")
        if record.pending and record.token_expires_at <= now:
            raise invalid_parameter("Token")
        return found

    def _topic_by_id(self, record: SubscriptionRecord) -> Topic | None:
        return self.topic_by_id(record.topic_id)

    def topic_by_id(self, topic_id: int) -> Topic | None:
        """The live topic with this store id (a scan: for confirmations, not per delivery)."""
        return next((t for t in self if t.record.topic_id == topic_id), None)

    def confirm(
        self,
        found: Subscription | SubscriptionRecord,
        *,
        authenticated: bool,
        authenticate_on_unsubscribe: bool,
        now: int | None = None,
    ) -> tuple[Subscription, list[SnsMutation]]:
        """ConfirmSubscription: confirmed from now on (idempotent); restores an unsubscribed one.

        The restore link of a subscription that was never confirmed (Wharf sends none now, but
        a store written by an older broker may hold one) brings it back as it was: pending,
        with a new token valid from ``now`` (the clock's time when None), which the caller
        sends in a new SubscriptionConfirmation. Following a link is no confirmation: an
        endpoint that never confirmed does not become a confirmed subscription by it.
        """
        if isinstance(found, SubscriptionRecord):  # the UnsubscribeConfirmation's link
            assert found.token is not None
            topic = self._topic_by_id(found)
            assert topic is not None  # by_token checked it
            for live in topic.subscriptions.values():
                if live.protocol == found.protocol and live.endpoint == found.endpoint:
                    # Subscribed again since: one subscription per endpoint, as Subscribe
                    # keeps (a second would deliver every message twice). The link is used.
                    self._drop_restore_link(found.token)
                    return live, [SubscriptionDeleted(subscription_id=found.subscription_id)]
            protocols = [*(s.protocol for s in topic.subscriptions.values()), found.protocol]
            # Checked before the link is dropped: a refused restore can be tried again.
            check_large_messages(topic.settings.effective_maximum_message_size, protocols)
            self._drop_restore_link(found.token)
            if found.pending:
                issued = now_ms() if now is None else now
                pending = msgspec.structs.replace(
                    found,
                    unsubscribed=False,
                    token=secrets.token_hex(64),
                    token_expires_at=issued + TOKEN_LIFETIME_MS,
                )
                subscription = Subscription(pending, topic)
                self._add_subscription(subscription)
                return subscription, [SubscriptionSaved(subscription=pending)]
            # Confirmed as it was, with its AuthenticateOnUnsubscribe: confirming it again with
            # the unsigned link's request would drop that protection.
            restored = msgspec.structs.replace(found, unsubscribed=False)
            subscription = Subscription(restored, topic)
            self._add_subscription(subscription)
            return subscription, [SubscriptionSaved(subscription=restored)]
        if not found.record.pending:
            return found, []
        record = msgspec.structs.replace(
            found.record,
            pending=False,
            authenticated=authenticated,
            authenticate_on_unsubscribe=authenticate_on_unsubscribe,
        )
        found.replace(record)
        found.topic.index_subscription(found)
        return found, [SubscriptionSaved(subscription=record)]

    def unsubscribe(
        self, subscription: Subscription, now: int, *, restorable: bool = True
    ) -> list[SnsMutation]:
        """Unsubscribe: gone from now on; confirmed HTTP/S ones keep a token that restores them,
        and so do SQS ones when ``restorable`` (an Unsubscribe not by their owner's signature:
        the queue then gets an UnsubscribeConfirmation, broker.sns).

        The store's delete also drops what the outbox still owes the subscription (its
        notifications, its SubscriptionConfirmations), all but UnsubscribeConfirmations.
        """
        self._drop_subscription(subscription)
        subscription.topic.deleted_subscriptions += 1
        mutations: list[SnsMutation] = [
            SubscriptionDeleted(subscription_id=subscription.subscription_id)
        ]
        mutations += self._forget_old_unsubscribed(now)
        # Only a confirmed subscription gets a restore link, and so an UnsubscribeConfirmation
        # (broker.sns). AWS sends one "after an HTTP/HTTPS endpoint is unsubscribed from a
        # topic", its token there to "re-confirm the subscription" (Developer Guide, "HTTP/HTTPS
        # unsubscribe confirmation JSON format"), and never for a pending one, which AWS does
        # not let anyone delete: "you can't delete a subscription that's pending confirmation"
        # ("Deleting an Amazon SNS subscription and topic"). A link would let an endpoint that
        # never confirmed turn the subscription into a confirmed one.
        linked = subscription.protocol in ("http", "https") or (
            subscription.protocol == "sqs" and restorable
        )
        if linked and not subscription.record.pending:
            token = secrets.token_hex(64)
            kept = msgspec.structs.replace(
                subscription.record,
                token=token,
                token_expires_at=now + TOKEN_LIFETIME_MS,
                unsubscribed=True,
            )
            self._keep_restore_link(token, kept)
            # The row comes back marked, after the delete dropped what the outbox owed it.
            mutations.append(SubscriptionSaved(subscription=kept))
        return mutations

    def restore_token(self, subscription: Subscription) -> str | None:
        """The token an UnsubscribeConfirmation offers to restore ``subscription`` with."""
        return self._restore_links.get(subscription.subscription_id)

    def _keep_restore_link(self, token: str, record: SubscriptionRecord) -> None:
        self._unsubscribed[token] = record
        self._restore_links[record.subscription_id] = token

    def _drop_restore_link(self, token: str) -> SubscriptionRecord | None:
        record = self._unsubscribed.pop(token, None)
        if record is not None and self._restore_links.get(record.subscription_id) == token:
            del self._restore_links[record.subscription_id]
        return record

    def _forget_old_unsubscribed(self, now: int) -> list[SnsMutation]:
        """Drop the restore links that expired, from memory and (the returned deletes) the store."""
        stale = [t for t, r in self._unsubscribed.items() if r.token_expires_at <= now]
        return [
            SubscriptionDeleted(subscription_id=record.subscription_id)
            for token in stale
            if (record := self._drop_restore_link(token)) is not None
        ]

    def set_subscription_attribute(
        self, subscription: Subscription, name: str, value: str
    ) -> list[SnsMutation]:
        """SetSubscriptionAttributes; the filter index follows a new FilterPolicy at once."""
        settings = apply_update(subscription.settings, name, value, subscription.context)
        topic = subscription.topic
        newly_filtered = settings.filter_policy and subscription.policy is None
        if newly_filtered:
            self._check_filter_quota(topic)
        record = msgspec.structs.replace(subscription.record, settings=settings)
        subscription.replace(record)
        topic.index_subscription(subscription)
        return [SubscriptionSaved(subscription=record)]


def _only(settings: SubscriptionSettings, attributes: Mapping[str, str]) -> SubscriptionSettings:
    """``settings`` reduced to the attributes a repeated Subscribe names, for comparison."""
    defaults = SubscriptionSettings()
    kept = {
        "raw_message_delivery": "RawMessageDelivery",
        "filter_policy": "FilterPolicy",
        "filter_policy_scope": "FilterPolicyScope",
        "delivery_policy": "DeliveryPolicy",
        "delivery_policy_parsed": "DeliveryPolicy",
        "redrive_policy": "RedrivePolicy",
        "dead_letter_target_arn": "RedrivePolicy",
        "subscription_role_arn": "SubscriptionRoleArn",
        "replay_policy": "ReplayPolicy",
    }
    changes = {
        field: getattr(defaults, field)
        for field, attribute in kept.items()
        if attribute not in attributes
    }
    return msgspec.structs.replace(settings, **changes)
