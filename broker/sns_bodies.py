"""The bodies one published message gives its subscribers, each distinct one built once.

The envelope is signed once per distinct message text (``MessageStructure=json`` can give each
protocol its own); it differs per subscription only by ``UnsubscribeURL``, which is not signed,
so it is encoded once and each subscription's URL line (built once per subscription and kept
on it) spliced in. Raw deliveries take the text as is, with the message attributes converted
(and checked for SQS) once per message. :mod:`broker.fanout` sends them.

Signatures: :meth:`Bodies.prepare` notes which texts get an envelope; the publisher has their
strings to sign (:meth:`Bodies.to_sign`) signed where it can, a signing process
(:mod:`broker.sns_signing`), and hands back each signature with the signer that made it
(:meth:`Bodies.signed_by`). An envelope built without one is signed as it is built.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, Final

from broker.model.errors import SqsError
from broker.model.messages import (
    AttributeValue,
    body_characters_allowed,
    replace_forbidden_characters,
    validate_message_attributes,
)
from broker.model.publishing import PreparedMessage
from broker.topic_state import Subscription, Topic
from proto.aws import sns_envelope

_URL_SLOT: Final = '\n  "UnsubscribeURL" : ""'  # a line only encode() writes, never inside a value
_second: list[tuple[int, str]] = [(-1, "")]  # the last second rendered, and its text


def timestamp(now: int) -> str:
    """``format_timestamp``, rendering the date and time once per second (a publish hot path)."""
    seconds, millis = divmod(now, 1000)
    cached, text = _second[0]
    if cached != seconds:
        text = sns_envelope.format_timestamp(seconds * 1000)[:-5]  # without ".mmmZ"
        _second[0] = (seconds, text)
    return f"{text}.{millis:03d}Z"


class Bodies:
    """The bodies of one published message, built lazily, once per distinct form."""

    def __init__(
        self,
        signer: Callable[[Topic, str], sns_envelope.Signer],
        topic: Topic,
        message: PreparedMessage,
        message_id: str,
        sequence: str | None,
        now: int,
        base_url: str,
    ) -> None:
        """Hold what the bodies are built from; nothing is built yet.

        Args:
            signer: the signer of a topic's envelopes for a base URL (``Fanout.signer``),
                asked only when an envelope is built for a standard topic.
            topic: the topic published to.
            message: the validated message.
            message_id: its MessageId.
            sequence: a FIFO topic's SequenceNumber (FIFO envelopes are not signed).
            now: the publish time (the envelope's Timestamp).
            base_url: the base of UnsubscribeURL (and SigningCertURL by default).
        """
        self._signer = signer
        self.topic = topic
        self.message = message
        self.message_id = message_id
        self.sequence = sequence
        self.timestamp = timestamp(now)
        self.base_url = base_url
        self._templates: dict[str, tuple[str, str, bool]] = {}
        self._wanted: dict[str, None] = {}  # texts that get an envelope, in order
        self._signatures: dict[str, tuple[sns_envelope.Signer, str]] = {}
        self._raw_allowed: dict[str, bool] = {}
        self._raw_attributes: dict[str, AttributeValue] | None = None
        self._raw_attributes_error: SqsError | None = None
        self._raw_attributes_checked = False

    def prepare(self, subscription: Subscription) -> None:
        """Note the envelope ``subscription`` will get, if it gets one (built later)."""
        if not subscription.settings.raw_message_delivery:
            self._wanted[self.message.message_for(subscription.protocol)] = None

    def to_sign(self) -> list[tuple[str, bytes]]:
        """The prepared texts whose envelope needs a signature, with the bytes to sign.

        Empty for a FIFO topic: its envelopes are not signed.
        """
        if self.sequence is not None:
            return []
        subject = self.message.request.subject
        return [
            (
                text,
                sns_envelope.notification_string_to_sign(
                    message_id=self.message_id,
                    topic_arn=self.topic.arn,
                    message=text,
                    timestamp=self.timestamp,
                    subject=subject,
                ),
            )
            for text in self._wanted
            if text not in self._signatures and text not in self._templates
        ]

    def signed_by(self, text: str, signer: sns_envelope.Signer, signature: str) -> None:
        """Take ``signer``'s signature of ``text``'s string to sign (from :meth:`to_sign`)."""
        self._signatures[text] = (signer, signature)

    def build(self) -> None:
        """Build every prepared envelope now, signed ahead or here.

        Raises:
            EnvelopeError: a message attribute is malformed (before any delivery is made).
        """
        for text in self._wanted:
            self._envelope(text)

    def body(self, subscription: Subscription) -> str:
        return self.checked_body(subscription)[0]

    def checked_body(self, subscription: Subscription) -> tuple[str, bool]:
        """The body ``subscription`` gets, and whether SQS allows all its characters.

        Checked once per message text, envelope template and subscription URL line, not per
        delivery (``characters_checked`` of :func:`broker.model.messages.validate_message`).
        """
        record = subscription.record
        text = self.message.message_for(record.protocol)
        if record.settings.raw_message_delivery:
            allowed = self._raw_allowed.get(text)
            if allowed is None:
                allowed = self._raw_allowed[text] = body_characters_allowed(text)
            return text, allowed
        # What _envelope and _url_tail return, without their calls once built (per delivery).
        template = self._templates.get(text)
        if template is None:
            template = self._envelope(text)
        prefix, suffix, allowed = template
        tail = subscription.envelope_tail
        if tail is None or tail[0] != self.base_url:
            tail = self._url_tail(subscription)
        return prefix + tail[1] + suffix, allowed and tail[2]

    def _envelope(self, text: str) -> tuple[str, str, bool]:
        template = self._templates.get(text)
        if template is None:
            prefix, suffix = self._template(text)
            allowed = body_characters_allowed(prefix) and body_characters_allowed(suffix)
            if not allowed:  # U+FFFF and the like: JSON escapes keep the copy storable
                prefix = sns_envelope.escape_unstorable(prefix)
                suffix = sns_envelope.escape_unstorable(suffix)
                allowed = body_characters_allowed(prefix) and body_characters_allowed(suffix)
            template = self._templates[text] = (prefix, suffix, allowed)
        return template

    def raw_attributes(self) -> dict[str, AttributeValue]:
        """The SQS attributes of a raw delivery, converted once per message (shared, unchanged).

        Raises:
            EnvelopeError: as :func:`sqs_attributes`.
        """
        if self._raw_attributes is None:
            self._raw_attributes = sqs_attributes(self.message.request.attributes)
        return self._raw_attributes

    def check_raw_attributes(self) -> None:
        """:func:`validate_message_attributes` on :meth:`raw_attributes`, once per message.

        Raises:
            SqsError: as :func:`validate_message_attributes`, for every raw delivery.
        """
        if not self._raw_attributes_checked:
            try:
                validate_message_attributes(self.raw_attributes())
            except SqsError as error:
                self._raw_attributes_error = error
            self._raw_attributes_checked = True
        if self._raw_attributes_error is not None:
            raise self._raw_attributes_error

    def _url_tail(self, subscription: Subscription) -> tuple[str, str, bool]:
        """The subscription's URL line for this base URL, and whether SQS allows it: (base
        URL, line, allowed), built once and kept on the subscription."""
        cached = subscription.envelope_tail
        if cached is None or cached[0] != self.base_url:
            url = sns_envelope.unsubscribe_url(self.base_url, subscription.arn)
            line = f'\n  "UnsubscribeURL" : {json.dumps(url)}'
            cached = (self.base_url, line, body_characters_allowed(line))
            subscription.envelope_tail = cached
        return cached

    def _template(self, text: str) -> tuple[str, str]:
        request = self.message.request
        signature: str | None = None
        signer: sns_envelope.Signer | None = None
        if self.sequence is None:
            made = self._signatures.get(text)
            if made is None:  # a text no one signed ahead: signed here, as it is built
                signer = self._signer(self.topic, self.base_url)
            else:  # the signer that made it: a SignatureVersion set since is for later messages
                signer, signature = made
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
            signature=signature,
        )
        prefix, found, suffix = sns_envelope.encode(envelope).partition(_URL_SLOT)
        assert found, "encode() writes UnsubscribeURL on a line of its own"
        return prefix, suffix


def sqs_attributes(attributes: Mapping[str, Mapping[str, Any]]) -> dict[str, AttributeValue]:
    """The SQS message attributes of a raw delivery: the published ones, same names and types.

    Raises:
        EnvelopeError: more than 10 attributes (AWS discards such raw deliveries).
    """
    converted = sns_envelope.raw_sqs_attributes(attributes)
    return {
        name: AttributeValue(
            value["DataType"], _storable(value.get("StringValue")), value.get("BinaryValue")
        )
        for name, value in converted.items()
    }


def _storable(text: str | None) -> str | None:
    """A string attribute value as SQS stores it (characters it may not hold become U+FFFD)."""
    if text is None or body_characters_allowed(text):
        return text
    return replace_forbidden_characters(text)
