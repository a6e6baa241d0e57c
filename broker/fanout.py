"""Publish: pick the subscriptions, build each distinct body once, and commit all of it at once.

One publish (or one PublishBatch) becomes one ``store.commit``: the ``MessageInserted`` records
of every matching SQS subscription's queue (made by the queue's own index, exactly as a
SendMessage would), the outbox rows of every matching HTTP/S subscription, and a FIFO topic's
deduplication entry and sequence counter. The model work and the ``commit`` call happen in one
trio step, so a Publish that returned 200 is on disk for every subscriber, the queue inserts
become receivable only once durable, and FIFO group order carries into FIFO queues.

Bodies: the envelope is signed once per distinct message text (``MessageStructure=json`` can
give each protocol its own); it differs per subscription only by ``UnsubscribeURL``, which is
not signed, so it is encoded once and the URL spliced in. Raw deliveries take the text as is.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, NamedTuple, Protocol

from broker.model.errors import SqsError
from broker.model.messages import AttributeValue, SendRequest, message_size
from broker.model.mutations import Mutation
from broker.model.publishing import (
    Original,
    PreparedMessage,
    TopicDeduplication,
    sequence_number,
)
from broker.model.sns_mutations import (
    HttpDelivery,
    HttpDeliveryQueued,
    MessageType,
    SnsMutation,
    TopicDeduplicationRecorded,
    TopicSequenceRaised,
)
from broker.registry import QueueRegistry, now_ms
from broker.sns_keys import SigningKeys
from broker.store.base import Store
from broker.topic_state import Subscription, Topic
from monitoring.logging import EventLog
from proto.aws import sns_envelope
from proto.aws.sns_envelope import EnvelopeError

_URL_SLOT: Final = '\n  "UnsubscribeURL" : ""'  # a line only encode() writes, never inside a value


class DeliveryTracker(Protocol):
    """What the publisher needs of the HTTP/S delivery worker."""

    def next_id(self) -> int:
        """A delivery id no live outbox row has."""

    def track(self, delivery: HttpDelivery) -> None:
        """Take a durable outbox row into the worker's schedule."""


_second: list[tuple[int, str]] = [(-1, "")]  # the last second rendered, and its text


def _timestamp(now: int) -> str:
    """``format_timestamp``, rendering the date and time once per second (a publish hot path)."""
    seconds, millis = divmod(now, 1000)
    cached, text = _second[0]
    if cached != seconds:
        text = sns_envelope.format_timestamp(seconds * 1000)[:-5]  # without ".mmmZ"
        _second[0] = (seconds, text)
    return f"{text}.{millis:03d}Z"


class PublishResult(NamedTuple):
    """What Publish answers: the MessageId, and a FIFO topic's SequenceNumber."""

    message_id: str
    sequence_number: str | None


class Batch:
    """The mutations of one commit and what must wait until they are durable."""

    __slots__ = ("after", "mutations")

    def __init__(self) -> None:
        self.mutations: list[Mutation | SnsMutation] = []
        self.after: list[Callable[[], None]] = []

    def on_durable(self) -> None:
        for callback in self.after:
            callback()


class _Bodies:
    """The bodies of one published message, built lazily, once per distinct form."""

    def __init__(
        self,
        fanout: Fanout,
        topic: Topic,
        message: PreparedMessage,
        message_id: str,
        sequence: str | None,
        now: int,
        base_url: str,
    ) -> None:
        self.fanout = fanout
        self.topic = topic
        self.message = message
        self.message_id = message_id
        self.sequence = sequence
        self.timestamp = _timestamp(now)
        self.base_url = base_url
        self._templates: dict[str, tuple[str, str]] = {}

    def body(self, subscription: Subscription) -> str:
        text = self.message.message_for(subscription.protocol)
        if subscription.settings.raw_message_delivery:
            return text
        template = self._templates.get(text)
        if template is None:
            template = self._templates[text] = self._template(text)
        prefix, suffix = template
        url = sns_envelope.unsubscribe_url(self.base_url, subscription.arn)
        return f'{prefix}\n  "UnsubscribeURL" : {json.dumps(url)}{suffix}'

    def _template(self, text: str) -> tuple[str, str]:
        request = self.message.request
        signer = (
            None if self.sequence is not None else self.fanout.signer(self.topic, self.base_url)
        )
        envelope = sns_envelope.notification(
            message_id=self.message_id,
            topic_arn=self.topic.arn,
            message=text,
            timestamp=self.timestamp,
            unsubscribe_url="",
            subject=request.subject,
            message_attributes=request.attributes,
            signer=signer,
            sequence_number=self.sequence,
        )
        prefix, found, suffix = sns_envelope.encode(envelope).partition(_URL_SLOT)
        assert found, "encode() writes UnsubscribeURL on a line of its own"
        return prefix, suffix


class Fanout:
    """Publishes to topics: SQS deliveries and HTTP/S outbox rows in one durable commit."""

    def __init__(
        self,
        store: Store,
        queues: QueueRegistry,
        keys: SigningKeys,
        *,
        deliveries: DeliveryTracker,
        signature_version: str,
        cert_url_base: str,
        log: EventLog,
    ) -> None:
        """Wire the publisher.

        Args:
            store: the store to commit to.
            queues: the live queues (SQS subscriptions and dead-letter queues).
            keys: the envelope signing key.
            deliveries: the HTTP/S delivery worker (:class:`broker.http_delivery.HttpDeliveries`):
                ``next_id()`` and ``track(delivery)``.
            signature_version: SignatureVersion of topics that set none.
            cert_url_base: base of SigningCertURL; empty: the request's base URL.
            log: the daemon's event log.
        """
        self.store = store
        self.queues = queues
        self.keys = keys
        self.deliveries = deliveries
        self.signature_version = signature_version
        self.cert_url_base = cert_url_base
        self.log = log

    def signer(self, topic: Topic, base_url: str) -> sns_envelope.Signer:
        version = topic.settings.signature_version or self.signature_version
        return self.keys.signer("2" if version == "2" else "1", self.cert_url_base or base_url)

    async def publish(
        self,
        topic: Topic,
        messages: Sequence[PreparedMessage],
        *,
        base_url: str,
        sender_id: str,
    ) -> list[PublishResult]:
        """Publish validated messages; return once every delivery they make is durable."""
        batch = Batch()
        now = now_ms()
        results = [
            self._publish_one(batch, topic, message, now, base_url, sender_id)
            for message in messages
        ]
        if topic.settings.fifo:
            seq = TopicSequenceRaised(topic_id=topic.record.topic_id, next_seq=topic.next_seq)
            batch.mutations.append(seq)
        # Always commit, even with nothing to write: a duplicate then answers only once the
        # original it names is durable (commits complete in order).
        await self.store.commit(batch.mutations, batch.on_durable)
        return results

    def _publish_one(
        self,
        batch: Batch,
        topic: Topic,
        message: PreparedMessage,
        now: int,
        base_url: str,
        sender_id: str,
    ) -> PublishResult:
        request = message.request
        sequence = None
        message_id = str(uuid.uuid4())
        if topic.settings.fifo:
            assert message.deduplication_id is not None
            assert request.group_id is not None
            key = TopicDeduplication.key(message.deduplication_id, request.group_id, topic.settings)
            original = topic.deduplication.lookup(key, now)
            if original is not None:
                return PublishResult(original.message_id, original.sequence_number)
            sequence = sequence_number(topic.next_seq)
            topic.next_seq += 1
            expires_at = TopicDeduplication.expires_at(now)
            topic.deduplication.remember(key, Original(message_id, sequence), expires_at)
            batch.mutations.append(
                TopicDeduplicationRecorded(
                    topic_id=topic.record.topic_id,
                    key=key,
                    message_id=message_id,
                    sequence_number=sequence,
                    expires_at=expires_at,
                )
            )
        topic.stats.published += 1
        selection = topic.index.match(request.attributes, message.messages["default"])
        topic.stats.filtered_out += selection.filtered_out
        bodies = _Bodies(self, topic, message, message_id, sequence, now, base_url)
        for subscription_id in selection.matched:
            subscription = topic.subscriptions.get(subscription_id)
            if subscription is None or subscription.record.pending:
                continue
            if subscription.protocol == "sqs":
                self._to_queue(batch, subscription, bodies, now, sender_id)
            else:
                self._to_endpoint(batch, subscription, bodies, now)
        return PublishResult(message_id, sequence)

    # ------------------------------------------------------------------ SQS

    def _to_queue(
        self, batch: Batch, subscription: Subscription, bodies: _Bodies, now: int, sender_id: str
    ) -> None:
        topic = subscription.topic
        request = bodies.message.request
        body = bodies.body(subscription)
        queue = self.queues.by_arn(subscription.endpoint)
        fifo_queue = subscription.endpoint.endswith(".fifo")
        group_id = request.group_id if fifo_queue or not topic.settings.fifo else None
        deduplication_id = bodies.message.deduplication_id if fifo_queue else None
        try:
            attributes = (
                sqs_attributes(request.attributes)
                if subscription.settings.raw_message_delivery
                else {}
            )
            if queue is None:
                raise SqsError("AWS.SimpleQueueService.NonExistentQueue", "no such queue")
            send = SendRequest(
                body=body,
                attributes=attributes,
                group_id=group_id,
                deduplication_id=deduplication_id,
                sender_id=sender_id,
            )
            self.store.check_sealing(queue.settings)
            outcome = queue.index.send(now, send)
        except (SqsError, EnvelopeError) as error:
            reason = error.message if isinstance(error, SqsError) else str(error)
            self._failed(batch, subscription, body, {}, group_id, deduplication_id, now, reason)
            return
        batch.mutations.extend(outcome.mutations)
        batch.after.append(outcome.on_durable)
        stats = topic.stats

        def delivered() -> None:
            queue.stats.sent += 1
            queue.stats.bytes_sent += message_size(send)
            stats.deliveries("sqs", ok=True, seconds=max(0.0, time.time() - now / 1000))

        batch.after.append(delivered)

    def _failed(
        self,
        batch: Batch,
        subscription: Subscription,
        body: str,
        attributes: Mapping[str, AttributeValue],
        group_id: str | None,
        deduplication_id: str | None,
        now: int,
        reason: str,
    ) -> None:
        """A delivery that cannot be made: to the subscription's dead-letter queue, if any.

        SQS answers such client-side errors (deleted queue, oversized or invalid message) at
        once, so no retry could help; AWS moves them to the DLQ straight away.
        """
        topic = subscription.topic
        moved = self.dead_letter(
            batch, subscription, body, attributes, group_id, deduplication_id, now
        )
        self.log.warning(
            "sns.delivery_failed",
            topic=topic.name,
            subscription=subscription.arn,
            reason=reason,
            dead_letter="moved" if moved else "none",
        )
        stats = topic.stats
        batch.after.append(lambda: stats.deliveries(subscription.protocol, ok=False))

    def dead_letter(
        self,
        batch: Batch,
        subscription: Subscription,
        body: str,
        attributes: Mapping[str, AttributeValue],
        group_id: str | None,
        deduplication_id: str | None,
        now: int,
    ) -> bool:
        """Add the send of an undeliverable message into the subscription's RedrivePolicy DLQ.

        Returns:
            True if a send was added to ``batch``; False without a usable DLQ.
        """
        target = subscription.settings.dead_letter_target_arn
        queue = self.queues.by_arn(target) if target else None
        if queue is None:
            return False
        fifo = queue.settings.fifo
        send = SendRequest(
            body=body,
            attributes=dict(attributes),
            # A FIFO DLQ (FIFO topics' subscriptions) keeps the group; ids are made up if the
            # message had none, so a dead letter is never refused for lack of one.
            group_id=(group_id or "sns-dead-letter") if fifo else None,
            deduplication_id=(deduplication_id or str(uuid.uuid4())) if fifo else None,
        )
        try:
            self.store.check_sealing(queue.settings)
            outcome = queue.index.send(now, send)
        except SqsError as error:
            self.log.warning(
                "sns.dead_letter_failed", subscription=subscription.arn, reason=error.message
            )
            return False
        batch.mutations.extend(outcome.mutations)
        batch.after.append(outcome.on_durable)
        return True

    # ------------------------------------------------------------------ HTTP/S

    def _to_endpoint(
        self, batch: Batch, subscription: Subscription, bodies: _Bodies, now: int
    ) -> None:
        raw = subscription.settings.raw_message_delivery
        envelope = {"Type": "Notification", "MessageId": bodies.message_id}
        envelope["TopicArn"] = subscription.topic.arn
        content_type = subscription.effective_delivery().request.header_content_type
        headers = sns_envelope.http_headers(
            envelope, subscription_arn=subscription.arn, raw=raw, content_type=content_type
        )
        self.queue_http(
            batch, subscription, "Notification", bodies.body(subscription), headers, now
        )

    def queue_http(
        self,
        batch: Batch,
        subscription: Subscription,
        message_type: MessageType,
        body: str,
        headers: list[tuple[str, str]],
        now: int,
    ) -> None:
        """Add an outbox row for ``subscription`` to ``batch``; the worker takes it once durable."""
        delivery = HttpDelivery(
            delivery_id=self.deliveries.next_id(),
            subscription_id=subscription.subscription_id,
            topic_id=subscription.topic.record.topic_id,
            message_type=message_type,
            endpoint=subscription.endpoint,
            headers=headers,
            body=body,
            published_at=now,
            next_attempt_at=now,
        )
        batch.mutations.append(HttpDeliveryQueued(delivery=delivery))
        batch.after.append(lambda: self.deliveries.track(delivery))

    def confirmation(
        self,
        batch: Batch,
        subscription: Subscription,
        message_type: MessageType,
        token: str,
        base_url: str,
        now: int,
    ) -> None:
        """Queue the SubscriptionConfirmation (or UnsubscribeConfirmation) POST."""
        topic = subscription.topic
        build = (
            sns_envelope.subscription_confirmation
            if message_type == "SubscriptionConfirmation"
            else _unsubscribe_confirmation(subscription.arn)
        )
        envelope = build(
            message_id=str(uuid.uuid4()),
            topic_arn=topic.arn,
            token=token,
            subscribe_url=sns_envelope.subscribe_url(base_url, topic.arn, token),
            timestamp=sns_envelope.format_timestamp(now),
            signer=self.signer(topic, base_url),
        )
        headers = sns_envelope.http_headers(envelope, subscription_arn=subscription.arn)
        body = sns_envelope.encode(envelope)
        self.queue_http(batch, subscription, message_type, body, headers, now)


def _unsubscribe_confirmation(subscription_arn: str) -> Callable[..., dict[str, Any]]:
    def build(**fields: Any) -> dict[str, Any]:
        return sns_envelope.unsubscribe_confirmation(subscription_arn=subscription_arn, **fields)

    return build


def sqs_attributes(attributes: Mapping[str, Mapping[str, Any]]) -> dict[str, AttributeValue]:
    """The SQS message attributes of a raw delivery: the published ones, same names and types.

    Raises:
        EnvelopeError: more than 10 attributes (AWS discards such raw deliveries).
    """
    converted = sns_envelope.raw_sqs_attributes(attributes)
    return {
        name: AttributeValue(value["DataType"], value.get("StringValue"), value.get("BinaryValue"))
        for name, value in converted.items()
    }
