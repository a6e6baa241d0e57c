"""Publish: pick the subscriptions, build each distinct body once, and commit all of it at once.

One publish (or one PublishBatch) becomes one ``store.commit``: the ``MessageInserted`` records
of every matching SQS subscription's queue (made by the queue's own index, exactly as a
SendMessage would), the outbox rows of every matching HTTP/S subscription, and a FIFO topic's
deduplication entry and sequence counter. The model work and the ``commit`` call happen in one
trio step, so a Publish that returned 200 is on disk for every subscriber, the queue inserts
become receivable only once durable, and FIFO group order carries into FIFO queues.

Bodies (:mod:`broker.sns_bodies`): the envelope is signed once per distinct message text, in a
signing process when the broker has them (:mod:`broker.sns_signing`), and each subscription's
UnsubscribeURL line spliced in; raw deliveries take the text as is, with
the message attributes converted (and checked) once per message.

Copies: each SQS copy is one :meth:`~broker.model.index.QueueIndex.send_copy`, which checks
only the queue's own rules (size, type), the rules on the message alone being checked once per
message here; the copies of a commit gather in one :class:`~broker.model.outcomes.SentCopies`, so
what must wait for durability (making them receivable, one wake-up per queue; the counters) is
one callback per commit, not a send outcome and a callback per delivery.

Access: SNS sends to a queue only if the queue's policy lets ``sns.amazonaws.com`` send for
the topic (:mod:`broker.model.sns_to_sqs_access`, compiled once per policy and topic). A
refused delivery is a failed one, as any client-side error: to the subscription's dead-letter
queue if it has one, else dropped; it is logged when a subscription's refusal starts or
changes, and when its deliveries are allowed again, not once per message.

Message ids come from :func:`broker.frontend.request_ids` (a random prefix and a counter), not
``uuid.uuid4()``: its ``os.urandom`` releases the GIL, which lets the store's writer commit
every publish alone.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import msgspec

from broker.disk_space import DiskSpace
from broker.frontend import request_ids
from broker.model.errors import SqsError
from broker.model.filter_index import Selection
from broker.model.messages import (
    AttributeValue,
    SendRequest,
    message_size,
    replace_forbidden_characters,
    validate_message,
)
from broker.model.mutations import Mutation
from broker.model.outcomes import SentCopies
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
from broker.model.sns_to_sqs_access import Refusal
from broker.model.sns_to_sqs_access import refusal as sns_refusal
from broker.registry import Queue, QueueRegistry, now_ms
from broker.sns_bodies import Bodies
from broker.sns_keys import SigningKeys
from broker.sns_signing import EnvelopeSigning
from broker.store.base import Store
from broker.topic_state import Subscription, Topic
from monitoring.logging import EventLog
from proto.aws import sns_envelope
from proto.aws.sns_envelope import EnvelopeError

# What an envelope adds to the message it carries (ids, URLs, signature, timestamp), for the
# disk space a publish reserves before its bodies are built; its commit settles the exact bytes.
ENVELOPE_FIELDS_BYTES = 2048


class DeliveryTracker(Protocol):
    """What the publisher needs of the HTTP/S delivery worker."""

    def next_id(self) -> int:
        """A delivery id no live outbox row has."""

    def track(self, delivery: HttpDelivery) -> None:
        """Take a durable outbox row into the worker's schedule."""


class PublishResult(NamedTuple):
    """What Publish answers: the MessageId, and a FIFO topic's SequenceNumber."""

    message_id: str
    sequence_number: str | None


class _Plan(NamedTuple):
    """A message's envelopes, signed, and the subscriptions it matched."""

    bodies: Bodies
    selection: Selection[str]


class Batch:
    """The mutations of one commit and what must wait until they are durable.

    The copies sent to subscribed queues add their records to ``mutations`` and, through
    ``copies``, one activation per queue, rather than a send outcome and a callback each.
    """

    __slots__ = ("after", "copies", "mutations", "stored_bytes")

    def __init__(self) -> None:
        self.mutations: list[Mutation | SnsMutation] = []
        self.after: list[Callable[[], None]] = []
        self.copies = SentCopies(self.mutations)
        self.stored_bytes = 0  # bodies of the copies and outbox rows (for the disk alarm)

    def on_durable(self) -> None:
        self.copies.on_durable()
        for callback in self.after:
            callback()


class Fanout:
    """Publishes to topics: SQS deliveries and HTTP/S outbox rows in one durable commit."""

    def __init__(
        self,
        store: Store,
        queues: QueueRegistry,
        keys: SigningKeys,
        *,
        signing: EnvelopeSigning,
        deliveries: DeliveryTracker,
        signature_version: str,
        cert_url_base: str,
        log: EventLog,
        disk: DiskSpace | None = None,
    ) -> None:
        """Wire the publisher.

        Args:
            store: the store to commit to.
            queues: the live queues (SQS subscriptions and dead-letter queues).
            keys: the envelope signing key.
            signing: where envelopes are signed ahead of the model step.
            deliveries: the HTTP/S delivery worker (:class:`broker.http_delivery.HttpDeliveries`):
                ``next_id()`` and ``track(delivery)``.
            signature_version: SignatureVersion of topics that set none.
            cert_url_base: base of SigningCertURL; empty: the request's base URL.
            log: the daemon's event log.
            disk: the disk alarm: each publish reserves the room its copies and outbox
                rows take until its commit is durable (:meth:`DiskSpace.reserve`).
        """
        self.store = store
        self.queues = queues
        self.keys = keys
        self.signing = signing
        self.deliveries = deliveries
        self.signature_version = signature_version
        self.cert_url_base = cert_url_base
        self.log = log
        self.disk = disk
        self._new_message_id = request_ids()

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
        """Publish validated messages; return once every delivery they make is durable.

        A standard topic's envelopes are signed first, for the subscriptions the messages
        match (:meth:`EnvelopeSigning.sign`: in a signing process, or here), and the
        model work and the commit then happen in one later trio step, as always. On the event
        loop, RSA signing releases the GIL (~250 µs); signing in the step that queues the
        commit let the store's writer thread take the GIL and commit each publish alone, at
        ~200 µs of writer CPU per commit. Signed a step ahead, the publishes that run together
        queue their commits back to back, and the writer takes them as one group. A
        subscription added while the signatures are made gets the next message (the publish
        is ordered before it); one removed meanwhile is skipped, as before.
        """
        now = now_ms()
        if topic.settings.fifo:  # unsigned envelopes; dedup and sequence in the model step
            plans = None
            selections = [_select(topic, message) for message in messages]
        else:
            plans = [
                self._plan(topic, message, self._new_message_id(), None, now, base_url)
                for message in messages
            ]
            selections = [plan.selection for plan in plans]
        # Before the signatures are awaited: the publishes admitted meanwhile count this one.
        reservation = self._reserve(messages, selections)
        try:
            if plans is not None:
                await self._sign(topic, plans, base_url)
            batch = Batch()
            if plans is None:
                results = [
                    self._publish_fifo(batch, topic, message, selection, now, base_url, sender_id)
                    for message, selection in zip(messages, selections, strict=True)
                ]
                seq = TopicSequenceRaised(topic_id=topic.record.topic_id, next_seq=topic.next_seq)
                batch.mutations.append(seq)
            else:
                results = [self._deliver(batch, topic, plan, now, sender_id) for plan in plans]
            if self.disk is not None:
                reservation = self.disk.settle(reservation, batch.stored_bytes)
            # Always commit, even with nothing to write: a duplicate then answers only once the
            # original it names is durable (commits complete in order).
            await self.store.commit(batch.mutations, batch.on_durable)
        finally:
            if self.disk is not None:
                self.disk.release(reservation)
        return results

    def _reserve(
        self, messages: Sequence[PreparedMessage], selections: Sequence[Selection[str]]
    ) -> int:
        """Reserve the disk space the messages' copies and outbox rows will take, estimated
        as each message whole for each subscription it matches, with an envelope's fields.

        Raises:
            AwsError: ``ServiceUnavailable``: the disk has no room for them.
        """
        disk = self.disk
        if disk is None or not disk.min_free_bytes:
            return 0
        estimate = sum(
            len(selection.matched) * (message.size + ENVELOPE_FIELDS_BYTES)
            for message, selection in zip(messages, selections, strict=True)
            if selection.matched
        )
        return disk.reserve(estimate)

    async def _sign(self, topic: Topic, plans: Sequence[_Plan], base_url: str) -> None:
        """Sign the planned envelopes ahead of the model step, then build them."""
        wanted = [
            (plan.bodies, text, payload)
            for plan in plans
            for text, payload in plan.bodies.to_sign()
        ]
        if wanted:
            signer = self.signer(topic, base_url)
            signatures = await self.signing.sign(signer, [payload for _, _, payload in wanted])
            for (bodies, text, _), signature in zip(wanted, signatures, strict=True):
                bodies.signed_by(text, signer, signature)
        for plan in plans:
            plan.bodies.build()

    def _plan(
        self,
        topic: Topic,
        message: PreparedMessage,
        message_id: str,
        sequence: str | None,
        now: int,
        base_url: str,
        selection: Selection[str] | None = None,
    ) -> _Plan:
        """Select the subscriptions (unless ``selection`` has them) and note the envelopes
        they get; changes nothing.

        A FIFO topic's envelopes, unsigned, are built here; a standard topic's once signed.
        """
        if selection is None:
            selection = _select(topic, message)
        bodies = Bodies(self.signer, topic, message, message_id, sequence, now, base_url)
        subscriptions = topic.subscriptions
        prepared: set[str] = set()  # protocols whose envelope is built: one text each
        for subscription_id in selection.matched:
            subscription = subscriptions.get(subscription_id)
            if subscription is None:
                continue
            record = subscription.record
            if record.pending or record.settings.raw_message_delivery:
                continue
            if record.protocol not in prepared:
                prepared.add(record.protocol)
                bodies.prepare(subscription)
        if sequence is not None:  # FIFO envelopes are not signed: built at once
            bodies.build()
        return _Plan(bodies, selection)

    def _publish_fifo(
        self,
        batch: Batch,
        topic: Topic,
        message: PreparedMessage,
        selection: Selection[str],
        now: int,
        base_url: str,
        sender_id: str,
    ) -> PublishResult:
        request = message.request
        message_id = self._new_message_id()
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
        plan = self._plan(topic, message, message_id, sequence, now, base_url, selection)
        return self._deliver(batch, topic, plan, now, sender_id)

    def _deliver(
        self, batch: Batch, topic: Topic, plan: _Plan, now: int, sender_id: str
    ) -> PublishResult:
        """Add every delivery of a planned message to ``batch`` (the model step)."""
        bodies, selection = plan
        topic.stats.published += 1
        topic.stats.filtered_out += selection.filtered_out
        delivered: list[tuple[Queue, int | None]] = []
        sqs_attempts = 0
        subscriptions = topic.subscriptions
        for subscription_id in selection.matched:
            subscription = subscriptions.get(subscription_id)
            if subscription is None or subscription.record.pending:
                continue
            if subscription.record.protocol == "sqs":
                sqs_attempts += 1  # delivered or failed at once: one attempt either way
                self._to_queue(batch, subscription, bodies, now, sender_id, delivered)
            else:
                self._to_endpoint(batch, subscription, bodies, now)
        if sqs_attempts:
            batch.after.append(lambda: _count_deliveries(topic, delivered, sqs_attempts, now))
        return PublishResult(bodies.message_id, bodies.sequence)

    # ------------------------------------------------------------------ SQS

    def _to_queue(
        self,
        batch: Batch,
        subscription: Subscription,
        bodies: Bodies,
        now: int,
        sender_id: str,
        delivered: list[tuple[Queue, int | None]],
    ) -> None:
        """Add the send of one delivery to ``batch``, exactly as a SendMessage would make it.

        The rules on the message alone are checked here, the attributes of raw deliveries once
        per message; the queue's own rules and the send itself are the model's
        (:meth:`~broker.model.index.QueueIndex.send_copy`).
        """
        request = bodies.message.request
        body, checked = bodies.checked_body(subscription)
        if not checked:
            # A raw copy with characters SQS would not store (NUL, U+FFFF...): replaced by
            # U+FFFD, as SQS does, rather than refused after Publish said 200 (lost).
            body, checked = replace_forbidden_characters(body), True
        record = subscription.record
        endpoint = record.endpoint
        queue = self.queues.by_arn(endpoint)
        fifo_queue = endpoint.endswith(".fifo")
        group_id = request.group_id if fifo_queue or not bodies.topic.settings.fifo else None
        deduplication_id = bodies.message.deduplication_id if fifo_queue else None
        raw = record.settings.raw_message_delivery
        if queue is not None:
            refused = sns_refusal(
                queue.settings.policy,
                topic_arn=bodies.topic.arn,
                queue_arn=queue.arn,
                subscriber=record.owner,
                now_ms=now,
            )
            if refused is not subscription.refused:
                self._note_access(subscription, refused)
            if refused is not None:
                attributes = _dead_letter_attributes(bodies) if raw else {}
                self._failed(
                    batch,
                    subscription,
                    body,
                    attributes,
                    group_id,
                    deduplication_id,
                    now,
                    refused.value,
                    log=False,  # _note_access logged the refusal once
                )
                return
        try:
            attributes = bodies.raw_attributes() if raw else {}
            if queue is None:
                raise SqsError("AWS.SimpleQueueService.NonExistentQueue", "no such queue")
            send = SendRequest(
                body=body,
                attributes=attributes,
                group_id=group_id,
                deduplication_id=deduplication_id,
                sender_id=sender_id,
            )
            index = queue.index
            self.store.check_sealing(index.settings)
            validate_message(send, characters_checked=checked, attributes_checked=True)
            if attributes:
                bodies.check_raw_attributes()
            size = message_size(send)
            added = index.send_copy(now, send, size, batch.copies)
            batch.stored_bytes += size
        except (SqsError, EnvelopeError) as error:
            reason = error.message if isinstance(error, SqsError) else str(error)
            attributes = _dead_letter_attributes(bodies) if raw else {}
            self._failed(
                batch, subscription, body, attributes, group_id, deduplication_id, now, reason
            )
            return
        # A copy the FIFO queue deduplicated is delivered (SQS said yes) but not sent to it.
        delivered.append((queue, size if added else None))

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
        *,
        log: bool = True,
    ) -> None:
        """A delivery that cannot be made: to the subscription's dead-letter queue, if any.

        SQS answers such client-side errors (deleted queue, access denied, oversized or
        invalid message) at once, so no retry could help; AWS moves them to the DLQ straight
        away. ``log``: log this failure (False: the caller logs such failures its own way).
        """
        topic = subscription.topic
        moved = self.dead_letter(
            batch, subscription, body, attributes, group_id, deduplication_id, now
        )
        if log:
            self.log.warning(
                "sns.delivery_failed",
                topic=topic.name,
                subscription=subscription.arn,
                reason=reason,
                dead_letter="moved" if moved else "none",
            )
        stats = topic.stats
        batch.after.append(lambda: stats.deliveries(subscription.protocol, ok=False))

    def _note_access(self, subscription: Subscription, refused: Refusal | None) -> None:
        """Log a subscription's refusal when it starts or changes, and its end."""
        subscription.refused = refused
        topic = subscription.topic
        if refused is None:
            self.log.info(
                "sns.delivery_allowed",
                topic=topic.name,
                subscription=subscription.arn,
                queue=subscription.endpoint,
            )
            return
        self.log.warning(
            "sns.delivery_refused",
            topic=topic.name,
            subscription=subscription.arn,
            queue=subscription.endpoint,
            reason=refused.value,
            dead_letter=subscription.settings.dead_letter_target_arn or "none",
        )

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
        return self._send_as_sns(
            batch,
            subscription,
            queue,
            SendRequest(
                body=body,
                attributes=dict(attributes),
                # A FIFO DLQ (FIFO topics' subscriptions) keeps the group; ids are made up if
                # the message had none, so a dead letter is never refused for lack of one.
                group_id=group_id or "sns-dead-letter",
                deduplication_id=deduplication_id,
            ),
            now,
            failure="sns.dead_letter_failed",
        )

    def _send_as_sns(
        self,
        batch: Batch,
        subscription: Subscription,
        queue: Queue,
        send: SendRequest,
        now: int,
        *,
        failure: str,
    ) -> bool:
        """Add to ``batch`` SNS's own send of ``send`` into ``queue`` for ``subscription``
        (a dead letter, an UnsubscribeConfirmation): only if the queue's policy lets SNS
        send there, as for notifications; as the account that subscribed (not the
        publisher: an HTTP delivery keeps none); with FIFO ids made up where the message
        has none. ``failure``: the event logged when it cannot be made.

        Returns:
            True if a send was added.
        """
        refused = sns_refusal(
            queue.settings.policy,
            topic_arn=subscription.topic.arn,
            queue_arn=queue.arn,
            subscriber=subscription.record.owner,
            now_ms=now,
        )
        if refused is not None:  # another account's subscription, say
            self.log.warning(failure, subscription=subscription.arn, reason=refused.value)
            return False
        fifo = queue.settings.fifo
        send = msgspec.structs.replace(
            send,
            group_id=send.group_id if fifo else None,
            deduplication_id=(send.deduplication_id or str(uuid.uuid4())) if fifo else None,
            sender_id=subscription.record.owner,
        )
        try:
            self.store.check_sealing(queue.settings)
            outcome = queue.index.send(now, send)
        except SqsError as error:
            self.log.warning(failure, subscription=subscription.arn, reason=error.message)
            return False
        batch.mutations.extend(outcome.mutations)
        batch.after.append(outcome.on_durable)
        batch.stored_bytes += len(send.body)
        return True

    # ------------------------------------------------------------------ HTTP/S

    def _to_endpoint(
        self, batch: Batch, subscription: Subscription, bodies: Bodies, now: int
    ) -> None:
        raw = subscription.settings.raw_message_delivery
        envelope = {"Type": "Notification", "MessageId": bodies.message_id}
        envelope["TopicArn"] = subscription.topic.arn
        content_type = subscription.effective_delivery().request.header_content_type
        headers = sns_envelope.http_headers(
            envelope, subscription_arn=subscription.arn, raw=raw, content_type=content_type
        )
        body = bodies.body(subscription)
        # A raw body has lost the attributes the envelope would carry: the dead letter keeps
        # them as SQS attributes, as a raw SQS delivery would have them.
        attributes = _dead_letter_attributes(bodies) if raw else {}
        self.queue_http(batch, subscription, "Notification", body, headers, now, attributes)

    def queue_http(
        self,
        batch: Batch,
        subscription: Subscription,
        message_type: MessageType,
        body: str,
        headers: list[tuple[str, str]],
        now: int,
        dead_letter_attributes: Mapping[str, AttributeValue] | None = None,
    ) -> None:
        """Add an outbox row for ``subscription`` to ``batch``; the worker takes it once durable.

        ``dead_letter_attributes``: the SQS attributes the message keeps if it ends in the
        subscription's dead-letter queue (raw deliveries: the published ones).
        """
        delivery = HttpDelivery(
            delivery_id=self.deliveries.next_id(),
            subscription_id=subscription.subscription_id,
            topic_id=subscription.topic.record.topic_id,
            message_type=message_type,
            endpoint=subscription.endpoint,
            headers=headers,
            body=body,
            dead_letter_attributes=dict(dead_letter_attributes or {}),
            published_at=now,
            next_attempt_at=now,
        )
        batch.mutations.append(HttpDeliveryQueued(delivery=delivery))
        batch.after.append(lambda: self.deliveries.track(delivery))
        batch.stored_bytes += len(body)

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
        body = sns_envelope.encode(envelope)
        if subscription.protocol == "sqs":
            self._confirmation_to_queue(batch, subscription, body, now)
            return
        headers = sns_envelope.http_headers(envelope, subscription_arn=subscription.arn)
        self.queue_http(batch, subscription, message_type, body, headers, now)

    def _confirmation_to_queue(
        self, batch: Batch, subscription: Subscription, body: str, now: int
    ) -> None:
        """Send an SQS subscription's UnsubscribeConfirmation into its queue, as a delivery
        (the queue's policy decides, as for notifications); a queue gone takes nothing."""
        queue = self.queues.by_arn(subscription.endpoint)
        if queue is None:
            return
        send = SendRequest(body=body, attributes={}, group_id="sns-unsubscribe-confirmation")
        self._send_as_sns(
            batch, subscription, queue, send, now, failure="sns.unsubscribe_confirmation_failed"
        )


def _select(topic: Topic, message: PreparedMessage) -> Selection[str]:
    return topic.index.match(message.request.attributes, message.messages["default"])


def _count_deliveries(
    topic: Topic, delivered: list[tuple[Queue, int | None]], attempts: int, published_at: int
) -> None:
    """Once a publish is durable: count its SQS attempts and deliveries, per queue and topic.

    ``delivered``: each copy's queue and size, None for a copy the FIFO queue deduplicated
    (a delivery of the topic's, but not a message sent to the queue).
    """
    topic.stats.attempts["sqs"] += attempts
    if not delivered:
        return
    for queue, size in delivered:
        if size is None:
            continue
        stats = queue.stats
        stats.sent += 1
        stats.bytes_sent += size
    seconds = max(0.0, (now_ms() - published_at) / 1000)  # the clock published_at is on
    topic.stats.deliveries("sqs", ok=True, count=len(delivered), seconds=seconds)


def _dead_letter_attributes(bodies: Bodies) -> dict[str, AttributeValue]:
    """The published attributes as SQS attributes, or none when SQS would refuse them.

    A dead letter without attributes beats none at all: the DLQ send validates them again.
    """
    try:
        attributes = bodies.raw_attributes()
        bodies.check_raw_attributes()
    except (SqsError, EnvelopeError):
        return {}
    return attributes


def _unsubscribe_confirmation(subscription_arn: str) -> Callable[..., dict[str, Any]]:
    def build(**fields: Any) -> dict[str, Any]:
        return sns_envelope.unsubscribe_confirmation(subscription_arn=subscription_arn, **fields)

    return build
