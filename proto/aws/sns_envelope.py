"""The SNS delivery envelope: the JSON an SQS queue or HTTP endpoint receives.

Sans-I/O: the caller supplies the time, ids, URLs and the :class:`Signer`; nothing here reads a
clock, a file or the network. One exception type, :class:`EnvelopeError`; signing and
verification live in :mod:`proto.aws.sns_signature`.

Sources (AWS SNS Developer Guide, ``sns-message-and-json-formats``, ``http-header``,
``sns-verify-signature-of-message``, ``sns-large-payload-raw-message-delivery``,
``sns-message-attributes``):

- Field sets and order are AWS's, as in its examples: Notification is ``Type, MessageId,
  TopicArn, Subject?, Message, Timestamp, SignatureVersion, Signature, SigningCertURL,
  UnsubscribeURL, MessageAttributes?``; the confirmations are ``Type, MessageId, Token,
  TopicArn, Message, SubscribeURL, Timestamp, SignatureVersion, Signature, SigningCertURL``.
- The layout is AWS's too (``"Key" : value`` lines, two-space indent, attributes one per line),
  checked against real SNS deliveries quoted in public repositories.
- FIFO topics deliver a ``SequenceNumber`` after ``MessageId`` and no signature fields
  (LocalStack's AWS-validated SQS-FIFO snapshots); MessageGroupId and MessageDeduplicationId
  travel as SQS message system attributes, not in the body.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any, Final

from proto.aws.sns_signature import (
    NOTIFICATION,
    SUBSCRIPTION_CONFIRMATION,
    UNSUBSCRIBE_CONFIRMATION,
    Signer,
    sign,
    string_to_sign,
)
from proto.errors import ProtocolError

__all__ = [
    "DELIVERY_SETTING_PREFIXES",
    "MAX_RAW_SQS_ATTRIBUTES",
    "NOTIFICATION",
    "SUBSCRIPTION_CONFIRMATION",
    "UNSUBSCRIBE_CONFIRMATION",
    "EnvelopeError",
    "Signer",
    "content_deduplication_id",
    "decode",
    "encode",
    "envelope_attributes",
    "format_timestamp",
    "http_headers",
    "notification",
    "notification_string_to_sign",
    "raw_sqs_attributes",
    "subscribe_url",
    "subscription_confirmation",
    "unsubscribe_confirmation",
    "unsubscribe_url",
]

MESSAGE_TYPES: Final = (NOTIFICATION, SUBSCRIPTION_CONFIRMATION, UNSUBSCRIBE_CONFIRMATION)

# sns-message-attributes.md: "For SQS subscriptions, a maximum of 10 message attributes can be
# sent when Raw Message Delivery is enabled ... Messages with more than 10 message attributes
# directed towards Raw Message Delivery enabled Amazon SQS subscriptions will be discarded as
# client side errors."
MAX_RAW_SQS_ATTRIBUTES: Final = 10

# The message attributes AWS defines as per-message settings of SMS and mobile push deliveries
# (sms_preferences.md: "override some of these settings for a single message when you use the
# Publish action"; sns-ttl.md): published to topics like any attribute, meaningless to a queue.
DELIVERY_SETTING_PREFIXES: Final = ("AWS.SNS.SMS.", "AWS.SNS.MOBILE.", "AWS.MM.SMS.")

USER_AGENT: Final = "Amazon Simple Notification Service Agent"  # http-header.md example
DEFAULT_CONTENT_TYPE: Final = "text/plain; charset=UTF-8"


class EnvelopeError(ProtocolError):
    """An envelope that cannot be built, parsed or verified."""


def format_timestamp(epoch_ms: int) -> str:
    """Render a time the way SNS does: ISO 8601 UTC with milliseconds, ``2012-05-02T00:54:06.655Z``.

    Args:
        epoch_ms: milliseconds since the Unix epoch.

    Returns:
        The timestamp text.
    """
    seconds, millis = divmod(epoch_ms, 1000)
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{millis:03d}Z"


def subscribe_url(base_url: str, topic_arn: str, token: str) -> str:
    """The confirmation link AWS puts in ``SubscribeURL`` (the ARN unescaped, as AWS sends it)."""
    return f"{base_url.rstrip('/')}/?Action=ConfirmSubscription&TopicArn={topic_arn}&Token={token}"


def unsubscribe_url(base_url: str, subscription_arn: str) -> str:
    """The link AWS puts in a Notification's ``UnsubscribeURL``."""
    return f"{base_url.rstrip('/')}/?Action=Unsubscribe&SubscriptionArn={subscription_arn}"


def envelope_attributes(attributes: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, str]]:
    """Render Publish's message attributes as the envelope's ``MessageAttributes``.

    Args:
        attributes: name -> ``{"DataType", "StringValue" | "BinaryValue"}`` as decoded.

    Returns:
        name -> ``{"Type": DataType, "Value": text}``; binary values base64-encoded, as AWS
        sends them.

    Raises:
        EnvelopeError: an attribute has no DataType or no value.
    """
    rendered: dict[str, dict[str, str]] = {}
    for name, attribute in attributes.items():
        data_type = attribute.get("DataType")
        if not isinstance(data_type, str):
            raise EnvelopeError(f"message attribute {name!r} has no DataType")
        # The field the type names (Publish checks that one): a Binary attribute's
        # StringValue, sent beside its BinaryValue, is not its value.
        if data_type.startswith("Binary"):
            if attribute.get("BinaryValue") is None:
                raise EnvelopeError(f"message attribute {name!r} has no value")
            value = base64.b64encode(bytes(attribute["BinaryValue"])).decode("ascii")
        elif attribute.get("StringValue") is not None:
            value = str(attribute["StringValue"])
        else:
            raise EnvelopeError(f"message attribute {name!r} has no value")
        rendered[name] = {"Type": data_type, "Value": value}
    return rendered


def raw_sqs_attributes(attributes: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Turn SNS message attributes into the SQS message attributes of a raw delivery.

    With RawMessageDelivery an SQS subscriber gets the bare message, and the SNS attributes
    become SQS attributes with the same name, DataType and value (sns-large-payload-raw-message-
    delivery.md). ``String.Array`` stays a String type with the custom label ``Array``, which
    SQS accepts as is.

    Args:
        attributes: the published attributes, name -> DataType and StringValue/BinaryValue.

    Returns:
        name -> ``{"DataType", "StringValue" | "BinaryValue"}`` for SendMessage.

    The SMS and mobile push settings (``DELIVERY_SETTING_PREFIXES``) are left out: SQS
    refuses names that start with ``AWS.``, and they set nothing for a queue.

    Raises:
        EnvelopeError: more than 10 attributes (AWS discards such raw deliveries as client
            errors) or an attribute without a DataType or value.
    """
    if any(name.startswith(DELIVERY_SETTING_PREFIXES) for name in attributes):
        attributes = {
            name: attribute
            for name, attribute in attributes.items()
            if not name.startswith(DELIVERY_SETTING_PREFIXES)
        }
    if len(attributes) > MAX_RAW_SQS_ATTRIBUTES:
        raise EnvelopeError(
            f"raw delivery to SQS carries at most {MAX_RAW_SQS_ATTRIBUTES} message attributes, "
            f"the message has {len(attributes)}"
        )
    converted: dict[str, dict[str, Any]] = {}
    for name, attribute in attributes.items():
        data_type = attribute.get("DataType")
        if not isinstance(data_type, str):
            raise EnvelopeError(f"message attribute {name!r} has no DataType")
        if data_type.startswith("Binary"):  # the field the type names, as above
            if attribute.get("BinaryValue") is None:
                raise EnvelopeError(f"message attribute {name!r} has no value")
            converted[name] = {
                "DataType": data_type,
                "BinaryValue": bytes(attribute["BinaryValue"]),
            }
        elif attribute.get("StringValue") is not None:
            converted[name] = {"DataType": data_type, "StringValue": attribute["StringValue"]}
        else:
            raise EnvelopeError(f"message attribute {name!r} has no value")
    return converted


def content_deduplication_id(message: str) -> str:
    """The MessageDeduplicationId of a FIFO topic with ContentBasedDeduplication.

    The CreateTopic reference: "Amazon SNS uses a SHA-256 hash to generate the
    MessageDeduplicationId using the body of the message (but not the attributes of the
    message)".

    Args:
        message: the published message.

    Returns:
        64 lowercase hex digits.
    """
    return hashlib.sha256(message.encode("utf-8", "surrogatepass")).hexdigest()


def notification(
    *,
    message_id: str,
    topic_arn: str,
    message: str,
    timestamp: str,
    unsubscribe_url: str,
    subject: str | None = None,
    message_attributes: Mapping[str, Mapping[str, Any]] | None = None,
    signer: Signer | None = None,
    sequence_number: str | None = None,
    signature: str | None = None,
) -> dict[str, Any]:
    """Build a ``Notification`` envelope, in AWS's field order.

    Args:
        message_id: the published message's id (the same on every retry).
        topic_arn: the topic.
        message: the message for this subscriber's protocol.
        timestamp: from :func:`format_timestamp`, the publish time.
        unsubscribe_url: from :func:`unsubscribe_url`.
        subject: the Subject, left out when None.
        message_attributes: the published attributes; left out when empty (AWS omits the
            field, and SDKs choke on an empty map).
        signer: signs standard-topic envelopes; None leaves the signature fields out.
        sequence_number: a FIFO topic's SequenceNumber; FIFO envelopes are not signed.
        signature: ``signer``'s signature of :func:`notification_string_to_sign` for these
            fields, made elsewhere (a signing process); None: signed here.

    Returns:
        The envelope, ready for :func:`encode`.

    Raises:
        EnvelopeError: a message attribute is malformed.
    """
    envelope: dict[str, Any] = {"Type": NOTIFICATION, "MessageId": message_id}
    if sequence_number is not None:
        envelope["SequenceNumber"] = sequence_number
    envelope["TopicArn"] = topic_arn
    if subject is not None:
        envelope["Subject"] = subject
    envelope["Message"] = message
    envelope["Timestamp"] = timestamp
    if signer is not None and sequence_number is None:
        _add_signature(envelope, signer, signature)
    envelope["UnsubscribeURL"] = unsubscribe_url
    if message_attributes:
        envelope["MessageAttributes"] = envelope_attributes(message_attributes)
    return envelope


def notification_string_to_sign(
    *, message_id: str, topic_arn: str, message: str, timestamp: str, subject: str | None = None
) -> bytes:
    """What a standard topic's :func:`notification` with these fields has signed.

    Returns:
        The bytes to sign with the topic's key, for ``notification(signature=...)``.
    """
    fields = {"Type": NOTIFICATION, "MessageId": message_id, "TopicArn": topic_arn}
    if subject is not None:
        fields["Subject"] = subject
    fields["Message"] = message
    fields["Timestamp"] = timestamp
    return string_to_sign(fields)


def subscription_confirmation(
    *,
    message_id: str,
    topic_arn: str,
    token: str,
    subscribe_url: str,
    timestamp: str,
    signer: Signer | None = None,
) -> dict[str, Any]:
    """Build the ``SubscriptionConfirmation`` an HTTP/S endpoint receives after Subscribe.

    Args:
        message_id: a fresh id.
        topic_arn: the topic.
        token: the confirmation token (ConfirmSubscription's ``Token``).
        subscribe_url: from :func:`subscribe_url`.
        timestamp: from :func:`format_timestamp`.
        signer: the topic's signer, or None.

    Returns:
        The envelope.
    """
    message = (
        f"You have chosen to subscribe to the topic {topic_arn}.\n"
        "To confirm the subscription, visit the SubscribeURL included in this message."
    )
    return _confirmation(
        SUBSCRIPTION_CONFIRMATION,
        message_id,
        topic_arn,
        token,
        message,
        subscribe_url,
        timestamp,
        signer,
    )


def unsubscribe_confirmation(
    *,
    message_id: str,
    topic_arn: str,
    subscription_arn: str,
    token: str,
    subscribe_url: str,
    timestamp: str,
    signer: Signer | None = None,
) -> dict[str, Any]:
    """Build the ``UnsubscribeConfirmation`` an HTTP/S endpoint receives after Unsubscribe.

    Args:
        message_id: a fresh id.
        topic_arn: the topic.
        subscription_arn: the subscription just removed (named in the message text).
        token: a token that re-confirms the subscription.
        subscribe_url: from :func:`subscribe_url`, to restore the subscription.
        timestamp: from :func:`format_timestamp`.
        signer: the topic's signer, or None.

    Returns:
        The envelope.
    """
    message = (
        f"You have chosen to deactivate subscription {subscription_arn}.\n"
        "To cancel this operation and restore the subscription, visit the SubscribeURL "
        "included in this message."
    )
    return _confirmation(
        UNSUBSCRIBE_CONFIRMATION,
        message_id,
        topic_arn,
        token,
        message,
        subscribe_url,
        timestamp,
        signer,
    )


def _confirmation(
    message_type: str,
    message_id: str,
    topic_arn: str,
    token: str,
    message: str,
    url: str,
    timestamp: str,
    signer: Signer | None,
) -> dict[str, Any]:
    envelope: dict[str, Any] = {
        "Type": message_type,
        "MessageId": message_id,
        "Token": token,
        "TopicArn": topic_arn,
        "Message": message,
        "SubscribeURL": url,
        "Timestamp": timestamp,
    }
    if signer is not None:
        _add_signature(envelope, signer)
    return envelope


def _add_signature(envelope: dict[str, Any], signer: Signer, signature: str | None = None) -> None:
    envelope["SignatureVersion"] = signer.version
    if signature is None:
        signature = sign(string_to_sign(envelope), signer.key, signer.version)
    envelope["Signature"] = signature
    envelope["SigningCertURL"] = signer.cert_url


def encode(envelope: Mapping[str, Any]) -> str:
    """Serialize an envelope in SNS's own layout.

    Args:
        envelope: from :func:`notification` and friends.

    Returns:
        The JSON text: one ``"Key" : value`` line per field, two-space indent, each message
        attribute on its own line in compact form, non-ASCII left as is (Jackson's output).
    """
    lines = []
    for name, value in envelope.items():
        if name == "MessageAttributes":
            rendered = ",\n".join(
                f"    {_json(attribute)} : "
                f'{{"Type":{_json(fields["Type"])},"Value":{_json(fields["Value"])}}}'
                for attribute, fields in value.items()
            )
            text = "{\n" + rendered + "\n  }"
        else:
            text = _json(value)
        lines.append(f"  {_json(name)} : {text}")
    return "{\n" + ",\n".join(lines) + "\n}"


def escape_unstorable(encoded: str) -> str:
    """JSON text with the characters an SQS message body may not hold (U+FFFE, U+FFFF, lone
    surrogates) written as ``\\u`` escapes: the same document to a JSON reader (and the
    same signature, which covers values, not their spelling), storable in a queue. The
    caller runs it only on text that failed SQS's character check: a rare case, and a scan
    of every envelope would cost more than the rest of building it."""
    return _UNSTORABLE.sub(lambda found: f"\\u{ord(found[0]):04x}", encoded)


_UNSTORABLE: Final = re.compile("[\ud800-\udfff\ufffe\uffff]")


# One encoder for every value: json.dumps with options builds a new JSONEncoder per call,
# which costs more than encoding a short string.
_json: Final = json.JSONEncoder(ensure_ascii=False).encode


def decode(text: str | bytes) -> dict[str, Any]:
    """Parse an envelope an endpoint received (the counterpart of :func:`encode`).

    Args:
        text: the request body.

    Returns:
        The envelope's fields.

    Raises:
        EnvelopeError: not a JSON object, or no known ``Type``.
    """
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        raise EnvelopeError("the SNS envelope is not JSON") from None
    if not isinstance(document, dict) or document.get("Type") not in MESSAGE_TYPES:
        raise EnvelopeError("the body is not an SNS envelope (no known Type)")
    return document


def http_headers(
    envelope: Mapping[str, Any],
    *,
    subscription_arn: str | None,
    raw: bool = False,
    content_type: str = DEFAULT_CONTENT_TYPE,
) -> list[tuple[str, str]]:
    """The SNS-specific headers of the POST that carries an envelope (or a raw message).

    Args:
        envelope: the envelope (for a raw delivery, the envelope that was not sent).
        subscription_arn: the subscription; AWS sends it on Notification and
            UnsubscribeConfirmation, not on SubscriptionConfirmation (the subscription has no
            ARN yet).
        raw: RawMessageDelivery is on; adds ``x-amz-sns-rawdelivery: true``.
        content_type: the DeliveryPolicy's ``headerContentType``.

    Returns:
        ``(name, value)`` pairs; the shell adds Host and Content-Length.
    """
    message_type = str(envelope["Type"])
    headers = [
        ("x-amz-sns-message-type", message_type),
        ("x-amz-sns-message-id", str(envelope["MessageId"])),
        ("x-amz-sns-topic-arn", str(envelope["TopicArn"])),
    ]
    if subscription_arn is not None and message_type != SUBSCRIPTION_CONFIRMATION:
        headers.append(("x-amz-sns-subscription-arn", subscription_arn))
    if message_type == NOTIFICATION:
        headers.append(("x-amz-sns-rawdelivery", "true" if raw else "false"))
    headers.append(("Content-Type", content_type))
    headers.append(("User-Agent", USER_AGENT))
    return headers
