"""What a sender submits, and the SendMessage rules that depend on nothing but the request
and the queue's settings: body characters, size, message attributes, FIFO parameters."""

from __future__ import annotations

import decimal
import hashlib
import re
from collections.abc import Sequence
from typing import Final

import msgspec

from broker.model.errors import (
    INVALID_MESSAGE_CONTENTS,
    INVALID_PARAMETER_VALUE,
    MISSING_PARAMETER,
    SqsError,
    invalid_parameter,
)
from broker.model.names import validate_fifo_id
from broker.model.settings import INTEGER_RANGES, QueueSettings

MAX_MESSAGE_ATTRIBUTES = 10  # SQS quota: 10 message attributes per message
MAX_ATTRIBUTE_NAME_LENGTH = 256
MAX_ATTRIBUTE_TYPE_LENGTH = 256
SEQUENCE_NUMBER_BASE = 10**19  # renders every SequenceNumber with 20 digits, as AWS's look

# SendMessage: "#x9 | #xA | #xD | #x20 to #xD7FF | #xE000 to #xFFFD | #x10000 to #x10FFFF".
_FORBIDDEN_BODY_CHARACTER = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# How SQS's refusals spell that set (its production InvalidMessageContents message).
_ALLOWED_CHARACTERS = "#x9 | #xA | #xD | [#x20-#xD7FF] | [#xE000-#xFFFD] | [#x10000-#x10FFFF]"
# The allowed ASCII characters as bytes: deleting them from an ASCII body leaves nothing iff
# the body is valid (a C loop, ~5x faster than the regex on bodies with line breaks).
_ALLOWED_ASCII: bytes = bytes([0x09, 0x0A, 0x0D, *range(0x20, 0x80)])
_ATTRIBUTE_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,256}")
_ATTRIBUTE_TYPE = re.compile(r"(String|Number|Binary)(\..+)?", re.DOTALL)
_NUMBER_TEXT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NUMBER_DIGITS_MAX = 38  # AWS: "up to 38 digits of precision"
# AWS: "it can be between 10^-128 and 10^+126": a magnitude, either sign (DynamoDB's number
# type, whose words these are, says so outright: 1E-130 to 9.99E+125, and the negatives).
_NUMBER_SMALLEST = decimal.Decimal("1e-128")
_NUMBER_LARGEST = decimal.Decimal("1e126")


class AttributeValue(msgspec.Struct, frozen=True, array_like=True):
    """One message attribute: its DataType and its String or Binary value."""

    data_type: str
    string_value: str | None = None
    binary_value: bytes | None = None


class SendRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One message to send (a SendMessage call or one SendMessageBatch entry)."""

    body: str
    attributes: dict[str, AttributeValue] = {}
    delay_seconds: int | None = None
    group_id: str | None = None
    deduplication_id: str | None = None
    trace_header: str | None = None
    sender_id: str = ""
    # MD5OfMessageBody, when the caller has it already (it answers the send with it): carried
    # to the store (its body cache and the row), so that receives do not hash the body again.
    body_md5: str | None = None


def body_characters_allowed(body: str) -> bool:
    """True if every character of ``body`` is one a message body may hold (True when empty).

    A character rule, so a text made of allowed parts is allowed: SNS checks an envelope's
    parts once per message instead of every subscription's copy.
    """
    # ASCII (O(1) to tell) is checked bytewise: 0.7 us for 1 KiB, where isprintable() took
    # 2.6 us and the regex 4 us; anything else by the regex.
    if body.isascii():
        return not body.encode("ascii").translate(None, _ALLOWED_ASCII)
    return _FORBIDDEN_BODY_CHARACTER.search(body) is None


def replace_forbidden_characters(text: str) -> str:
    """``text`` with each character a message may not hold replaced by U+FFFD, as SQS
    stores a body that has some (SendMessage's documentation since 2024)."""
    return _FORBIDDEN_BODY_CHARACTER.sub("\ufffd", text)


def validate_send(
    settings: QueueSettings, request: SendRequest, *, characters_checked: bool = False
) -> None:
    """Apply SendMessage's rules for one message.

    Args:
        settings: the destination queue's settings.
        request: the message.
        characters_checked: the caller has checked the body with
            :func:`body_characters_allowed` already; skip that scan.

    Raises:
        SqsError: with AWS's code and message for the first rule broken.
    """
    validate_message(request, characters_checked=characters_checked)
    validate_for_queue(settings, request, message_size(request))


def validate_message(
    request: SendRequest, *, characters_checked: bool = False, attributes_checked: bool = False
) -> None:
    """Apply the SendMessage rules that look at the message alone (:func:`validate_send`'s first).

    Args:
        request: the message.
        characters_checked: as for :func:`validate_send`.
        attributes_checked: the caller has checked ``request.attributes`` with
            :func:`validate_message_attributes` already (SNS: once for every copy).

    Raises:
        SqsError: with AWS's code and message for the first rule broken.
    """
    if not request.body:
        raise SqsError(MISSING_PARAMETER, "The request must contain the parameter MessageBody.")
    if not characters_checked and not body_characters_allowed(request.body):
        raise SqsError(
            INVALID_MESSAGE_CONTENTS,
            f"Invalid binary character '{_first_forbidden(request.body)}' was found in the "
            f"message body, the set of allowed characters is {_ALLOWED_CHARACTERS}.",
        )
    if not attributes_checked and request.attributes:  # most messages have none
        validate_message_attributes(request.attributes)
    trace_header = request.trace_header
    if trace_header is not None and _FORBIDDEN_BODY_CHARACTER.search(trace_header) is not None:
        raise _forbidden_in_attribute("AWSTraceHeader", trace_header)


def validate_for_queue(settings: QueueSettings, request: SendRequest, size: int) -> None:
    """Apply the SendMessage rules that depend on the queue (:func:`validate_send`'s last).

    Args:
        settings: the destination queue's settings.
        request: the message, which :func:`validate_message` accepted.
        size: ``message_size(request)``.

    Raises:
        SqsError: with AWS's code and message for the first rule broken.
    """
    if size > settings.maximum_message_size:
        raise SqsError(
            INVALID_PARAMETER_VALUE,
            "One or more parameters are invalid. Reason: Message must be shorter than "
            f"{settings.maximum_message_size} bytes.",
        )
    if settings.fifo:
        _validate_fifo_send(settings, request)
        return
    if request.deduplication_id is not None:
        raise invalid_parameter(
            "MessageDeduplicationId",
            request.deduplication_id,
            "The request include parameter that is not valid for this queue type",
        )
    if request.group_id is not None:
        # Fair queues (2025): standard queues accept a MessageGroupId and return it.
        validate_fifo_id(request.group_id, "MessageGroupId")
    if request.delay_seconds is not None:
        low, high, _ = INTEGER_RANGES["DelaySeconds"]
        if not low <= request.delay_seconds <= high:
            raise invalid_parameter(
                "DelaySeconds",
                request.delay_seconds,
                f"DelaySeconds must be >= {low} and <= {high}",
            )


# AWS's words for a FIFO send without its ids (SendMessage and each SendMessageBatch entry).
GROUP_ID_MISSING: Final = "The request must contain the parameter MessageGroupId."
DEDUPLICATION_ID_MISSING: Final = (
    "The queue should either have ContentBasedDeduplication enabled or "
    "MessageDeduplicationId provided explicitly"
)


def refuse_incomplete_fifo_batch(settings: QueueSettings, requests: Sequence[SendRequest]) -> None:
    """SendMessageBatch to a FIFO queue: an entry without a MessageGroupId, or without a
    MessageDeduplicationId where the queue has no content-based deduplication, fails the
    whole request, as SQS answers it (400 InvalidParameterValue, nothing sent): sending the
    batch's other entries would give them sequence numbers ahead of a neighbour the
    producer will send again.

    Raises:
        SqsError: InvalidParameterValue for the first such entry.
    """
    if not settings.fifo:
        return
    for request in requests:
        if request.group_id is None:
            raise SqsError(INVALID_PARAMETER_VALUE, GROUP_ID_MISSING)
        if request.deduplication_id is None and not settings.content_based_deduplication:
            raise SqsError(
                INVALID_PARAMETER_VALUE,
                DEDUPLICATION_ID_MISSING,
            )


def _validate_fifo_send(settings: QueueSettings, request: SendRequest) -> None:
    if request.delay_seconds:
        raise invalid_parameter(
            "DelaySeconds",
            request.delay_seconds,
            "The request include parameter that is not valid for this queue type",
        )
    if request.group_id is None:
        raise SqsError(MISSING_PARAMETER, GROUP_ID_MISSING)
    validate_fifo_id(request.group_id, "MessageGroupId")
    if request.deduplication_id is not None:
        validate_fifo_id(request.deduplication_id, "MessageDeduplicationId")
    elif not settings.content_based_deduplication:
        raise SqsError(
            INVALID_PARAMETER_VALUE,
            DEDUPLICATION_ID_MISSING,
        )


def validate_message_attributes(attributes: dict[str, AttributeValue]) -> None:
    """Check message attribute names, types and values.

    Args:
        attributes: name -> value.

    Raises:
        SqsError: ``InvalidParameterValue`` with AWS's message.
    """
    if len(attributes) > MAX_MESSAGE_ATTRIBUTES:
        raise SqsError(
            INVALID_PARAMETER_VALUE,
            f"Number of message attributes [{len(attributes)}] exceeds the allowed maximum "
            f"[{MAX_MESSAGE_ATTRIBUTES}].",
        )
    for name, value in attributes.items():
        _validate_attribute_name(name)
        if (
            len(value.data_type) > MAX_ATTRIBUTE_TYPE_LENGTH
            or not _ATTRIBUTE_TYPE.fullmatch(value.data_type)
            # a custom type's label is stored and sent back too
            or _FORBIDDEN_BODY_CHARACTER.search(value.data_type) is not None
        ):
            raise SqsError(
                INVALID_PARAMETER_VALUE,
                f"The type of message (user) attribute '{name}' is invalid. You must use only "
                "the following supported type prefixes: Binary, Number, String.",
            )
        if value.data_type.startswith("Binary"):
            if not value.binary_value:
                raise _empty_attribute(name, "Binary")
        elif not value.string_value:
            raise _empty_attribute(name, "String")
        elif _FORBIDDEN_BODY_CHARACTER.search(value.string_value) is not None:
            raise _forbidden_in_attribute(name, value.string_value)
        elif value.data_type.startswith("Number") and not is_number_value(value.string_value):
            raise SqsError(
                INVALID_PARAMETER_VALUE,
                f"Can't cast the value of message (user) attribute '{name}' to a number.",
            )


def _forbidden_in_attribute(name: str, value: str) -> SqsError:
    return SqsError(
        INVALID_PARAMETER_VALUE,
        f"Invalid binary character '{_first_forbidden(value)}' was found in the message "
        f"attribute '{name}' value, the set of allowed characters is {_ALLOWED_CHARACTERS}.",
    )


def _first_forbidden(text: str) -> str:
    """The first character of ``text`` a message may not hold, as SQS names it: ``#xFFFF``."""
    match = _FORBIDDEN_BODY_CHARACTER.search(text)
    assert match is not None, "called on a text with a forbidden character"
    return f"#x{ord(match.group()):X}"


def _validate_attribute_name(name: str) -> None:
    lowered = name.lower()
    valid = (
        _ATTRIBUTE_NAME.fullmatch(name) is not None
        and not lowered.startswith(("aws.", "amazon."))
        and not name.startswith(".")
        and not name.endswith(".")
        and ".." not in name
    )
    if not valid:
        raise SqsError(
            INVALID_PARAMETER_VALUE,
            f"Message (user) attribute name '{name}' is invalid. The attribute name can contain "
            "A-Z, a-z, 0-9, underscore (_), hyphen (-), and period (.) characters.",
        )


def _empty_attribute(name: str, kind: str) -> SqsError:
    return SqsError(
        INVALID_PARAMETER_VALUE,
        f"Message (user) attribute '{name}' must contain a non-empty value of type '{kind}'.",
    )


def is_number_value(text: str) -> bool:
    """Whether ``text`` is a valid value of a Number message attribute (SQS and SNS alike).

    Decimal() alone also takes " 1", "1_000", "١٢" and "Infinity"; a Number attribute is a
    plain decimal numeral (as Java's BigDecimal reads it, less non-ASCII digits). Precision
    counts significant digits: "1.000" has one (SQS: "Leading and trailing zeroes are
    trimmed"). Only the check trims them: the value stays as sent, which the sender's
    MD5OfMessageAttributes covers.
    """
    if not _NUMBER_TEXT.fullmatch(text):
        return False
    try:
        number = decimal.Decimal(text)
    except decimal.InvalidOperation:
        return False
    if not number.is_finite():
        return False
    # The digits as written (string methods: a value may be a mebibyte long), less its zeros
    # at both ends, wherever the point is: "1" + "0" * 40 and "0.0001" have one.
    mantissa = text.lower().partition("e")[0]
    significant = mantissa.lstrip("+-").replace(".", "").strip("0")
    magnitude = abs(number)
    in_range = not magnitude or _NUMBER_SMALLEST <= magnitude <= _NUMBER_LARGEST
    return len(significant) <= _NUMBER_DIGITS_MAX and in_range


def message_size(request: SendRequest) -> int:
    """Count a message's bytes the way MaximumMessageSize counts them: body plus attributes.

    Args:
        request: the message.

    Returns:
        UTF-8 bytes of the body, plus each attribute's name, data type and value.
    """
    body = request.body
    # "surrogatepass": a lone surrogate (from a JSON \u escape) counts its 3 bytes here and
    # is refused by validate_message, which callers may run after this.
    size = len(body) if body.isascii() else len(body.encode(errors="surrogatepass"))
    if not request.attributes:  # most messages have none
        return size
    for name, value in request.attributes.items():
        size += len(name.encode(errors="surrogatepass"))
        size += len(value.data_type.encode(errors="surrogatepass"))
        if value.string_value is not None:
            size += len(value.string_value.encode(errors="surrogatepass"))
        if value.binary_value is not None:
            size += len(value.binary_value)
    return size


def content_deduplication_id(body: str) -> str:
    """Return the deduplication id ContentBasedDeduplication derives: SHA-256 hex of the body."""
    return hashlib.sha256(body.encode()).hexdigest()


def sequence_number(seq: int) -> str:
    """Render a message's SequenceNumber (FIFO queues) from its per-queue seq."""
    return str(SEQUENCE_NUMBER_BASE + seq)
