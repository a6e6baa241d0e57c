"""Publish and PublishBatch rules that depend only on the request and the topic's settings.

Pure: validates a message once (subject, size, message attributes, ``MessageStructure=json``,
the FIFO parameters) and answers, per subscriber protocol, which text that subscriber gets.
The FIFO topic's deduplication window lives here too; the shell owns the clock and the store.

Messages are LocalStack's AWS-validated ones where it has them (``provider.py``:
``"Invalid parameter: Empty message"``, ``"Invalid parameter: Message too long"``, the FIFO and
``MessageStructure`` messages, the message-attribute checks); the rest follow SNS's
``Invalid parameter: <what>`` pattern.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Final, NamedTuple

import msgspec

from broker.model import strict_json
from broker.model.dedup import DEDUPLICATION_WINDOW_MS, ScopedWindow, deduplication_key
from broker.model.messages import is_number_value
from broker.model.sns_errors import INVALID_PARAMETER_VALUE, SnsError, invalid_parameter
from broker.model.topics import TopicSettings
from proto.aws.sns_envelope import DELIVERY_SETTING_PREFIXES, content_deduplication_id

MAX_SUBJECT_LENGTH: Final = 100  # Publish: "less than 100 characters"; 100 is accepted (lenient)
MAX_ATTRIBUTE_NAME_BYTES: Final = 256
SEQUENCE_NUMBER_BASE: Final = 10**19  # 20 digits, as AWS's SequenceNumbers look
# Publish: "alphanumeric and punctuation characters", 1 to 128 (the SQS rule SNS passes on).
_FIFO_ID: Final = re.compile(r"[0-9A-Za-z!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~]{1,128}")
_ATTRIBUTE_NAME: Final = re.compile(r"[A-Za-z0-9_.\-]+")
# Anything after the dot, spaces first included ("String.  prefixed." is accepted on AWS:
# LocalStack's AWS-validated test_message_attributes_prefixes), as SQS's own rule reads it.
_ATTRIBUTE_TYPE: Final = re.compile(r"(String|Number|Binary)(\..+)?", re.DOTALL)
_RESERVED_NAME_PREFIXES: Final = ("aws.", "amazon.")
# Publish: "no line breaks or control characters": every Unicode control (Cc: C0, DEL, C1,
# NEL U+0085 among them) and the line and paragraph separators.
_SUBJECT_FORBIDDEN: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
MAX_ATTRIBUTE_TYPE_BYTES: Final = 256


class PublishRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One message to publish: a Publish call or a PublishBatch entry, as decoded.

    ``attributes`` keeps the decoded shape (name -> ``DataType`` and ``StringValue`` or
    ``BinaryValue``) that filter policies and the envelope read.
    """

    message: str
    subject: str | None = None
    structure: str | None = None
    attributes: dict[str, dict[str, Any]] = {}
    group_id: str | None = None
    deduplication_id: str | None = None


class PreparedMessage(NamedTuple):
    """A validated message, ready for fan-out.

    Attributes:
        request: what was published.
        messages: protocol -> text for ``MessageStructure=json``; only ``"default"`` otherwise.
        deduplication_id: a FIFO topic's effective id (explicit or content-based), else None.
        size: :func:`publish_size` of the request, as checked against the topic's limit.
    """

    request: PublishRequest
    messages: Mapping[str, str]
    deduplication_id: str | None
    size: int

    def message_for(self, protocol: str) -> str:
        """The text a subscriber of ``protocol`` gets: its own entry, even an empty one (the
        Publish reference: "the empty string, "", is allowed"), else ``default``."""
        messages = self.messages
        own = messages.get(protocol)
        return messages["default"] if own is None else own


def prepare(settings: TopicSettings, request: PublishRequest) -> PreparedMessage:
    """Validate one message for a topic, in the order AWS checks.

    Args:
        settings: the topic's settings (type, size limit, content-based deduplication).
        request: the message.

    Returns:
        The message with its per-protocol texts and effective deduplication id.

    Raises:
        SnsError: ``InvalidParameter`` or ``ParameterValueInvalid`` with AWS's message.
    """
    if request.subject is not None:
        check_subject(request.subject)
    if not request.message:
        raise invalid_parameter("Empty message")
    check_attributes(request.attributes)
    size = publish_size(request)
    if size > settings.effective_maximum_message_size:
        raise invalid_parameter("Message too long")
    deduplication_id = _check_fifo(settings, request)
    if request.structure is None:
        return PreparedMessage(request, {"default": request.message}, deduplication_id, size)
    if request.structure != "json":
        raise invalid_parameter("MessageStructure")
    messages = structured_messages(request.message)
    return PreparedMessage(request, messages, deduplication_id, size)


def check_subject(subject: str) -> None:
    """Publish's Subject: printable text without line breaks, at most 100 characters.

    Raises:
        SnsError: "Invalid parameter: Subject".
    """
    if not subject or len(subject) > MAX_SUBJECT_LENGTH or _SUBJECT_FORBIDDEN.search(subject):
        raise invalid_parameter("Subject")


def structured_messages(text: str) -> dict[str, str]:
    """Parse a ``MessageStructure=json`` message: protocol -> text, with ``default`` required.

    Members whose value is not a string are ignored, as SNS ignores them.

    Raises:
        SnsError: the text is not a JSON object, repeats a key ("Duplicate keys are not
            allowed", the Publish reference; json.loads would keep the last one silently),
            or has no string ``default``.
    """
    try:
        document = strict_json.loads(text, unique_keys=True)
    except (ValueError, RecursionError):
        document = None
    if not isinstance(document, dict):
        raise invalid_parameter("Message Structure - JSON message body failed to parse")
    messages = {key: value for key, value in document.items() if isinstance(value, str)}
    if "default" not in messages:
        raise invalid_parameter("Message Structure - No default entry in JSON message body")
    return messages


def _check_fifo(settings: TopicSettings, request: PublishRequest) -> str | None:
    if not settings.fifo:
        if request.deduplication_id is not None:
            raise invalid_parameter(
                "MessageDeduplicationId Reason: The request includes MessageDeduplicationId "
                "parameter that is not valid for this topic type"
            )
        if request.group_id is not None:  # forwarded to standard queues (fair queues)
            _check_fifo_id("MessageGroupId", request.group_id)
        return None
    if not request.group_id:
        raise invalid_parameter("The MessageGroupId parameter is required for FIFO topics")
    _check_fifo_id("MessageGroupId", request.group_id)
    if request.deduplication_id is not None:
        _check_fifo_id("MessageDeduplicationId", request.deduplication_id)
        return request.deduplication_id
    if not settings.content_based_deduplication:
        raise invalid_parameter(
            "The topic should either have ContentBasedDeduplication enabled or "
            "MessageDeduplicationId provided explicitly"
        )
    return content_deduplication_id(request.message)


def _check_fifo_id(name: str, value: str) -> None:
    if _FIFO_ID.fullmatch(value) is None:
        raise invalid_parameter(
            f"{name} Reason: {name} can only include alphanumeric and punctuation characters. "
            "1 to 128 in length."
        )


def check_attributes(attributes: Mapping[str, Mapping[str, Any]]) -> None:
    """Check message attribute names, types and values (SNS's rules, AWS's messages).

    Raises:
        SnsError: ``ParameterValueInvalid`` for the first bad attribute.
    """
    for name, attribute in attributes.items():
        _check_attribute_name(name)
        data_type = str(attribute.get("DataType") or "")
        if len(data_type.encode()) > MAX_ATTRIBUTE_TYPE_BYTES:
            raise _bad_value(
                f"The message attribute '{name}' has a type longer than "
                f"{MAX_ATTRIBUTE_TYPE_BYTES} bytes."
            )
        if not _ATTRIBUTE_TYPE.fullmatch(data_type):
            raise _bad_value(
                f"The message attribute '{name}' has an invalid message attribute type, the set "
                "of supported type prefixes is Binary, Number, and String."
            )
        binary = data_type.startswith("Binary")
        field = "BinaryValue" if binary else "StringValue"
        value = attribute.get(field)
        if value is None and attribute.get("StringValue" if binary else "BinaryValue"):
            kind = "Binary" if binary else "String"
            raise _bad_value(
                f"The message attribute '{name}' with type '{data_type}' must use field '{kind}'."
            )
        if not value:
            raise _bad_value(
                f"The message attribute '{name}' must contain non-empty message attribute value "
                f"for message attribute type '{data_type}'."
            )
        if data_type == "Number" or data_type.startswith("Number."):
            if not is_number_value(str(value)):
                raise _bad_value(f"Could not cast message attribute '{name}' value to number.")
        elif data_type == "String.Array" and not _is_array(str(value)):
            raise _bad_value(
                f"The message attribute '{name}' with type 'String.Array' has an invalid value: "
                "it must be a JSON array."
            )


def _check_attribute_name(name: str) -> None:
    if not name:
        raise _bad_value("The message attribute name must not be empty.")
    if len(name.encode()) > MAX_ATTRIBUTE_NAME_BYTES:
        raise _bad_value("Length of message attribute name must be less than 256 bytes.")
    if name.lower().startswith(_RESERVED_NAME_PREFIXES) and not name.startswith(
        DELIVERY_SETTING_PREFIXES
    ):
        raise _bad_value(
            f"The message attribute name '{name}' is reserved: names starting with 'AWS.' or "
            "'Amazon.' (in any case) are AWS's."
        )
    if name.startswith("."):
        raise _bad_value("Invalid message attribute name starting with character '.' was found.")
    if name.endswith("."):
        raise _bad_value("Invalid message attribute name ending with character '.' was found.")
    for character in name:
        if _ATTRIBUTE_NAME.fullmatch(character) is None:
            raise _bad_value(
                f"Invalid non-alphanumeric character '#x{ord(character):X}' was found in the "
                "message attribute name. Can only include alphanumeric characters, hyphens, "
                "underscores, or dots."
            )
    if ".." in name:
        raise _bad_value("Message attribute name can not have successive '.' character.")


def _bad_value(message: str) -> SnsError:
    return SnsError(INVALID_PARAMETER_VALUE, message)


def _is_array(text: str) -> bool:
    try:
        return isinstance(json.loads(text), list)
    except (ValueError, RecursionError):
        return False


def publish_size(request: PublishRequest) -> int:
    """Bytes that count towards MaximumMessageSize: message plus attribute names, types, values."""
    size = len(request.message.encode("utf-8", "surrogatepass"))
    for name, attribute in request.attributes.items():
        size += len(name.encode()) + len(str(attribute.get("DataType") or "").encode())
        value = attribute.get("StringValue")
        if value is not None:
            size += len(str(value).encode("utf-8", "surrogatepass"))
        binary = attribute.get("BinaryValue")
        if binary is not None:
            size += len(bytes(binary))
    return size


def sequence_number(seq: int) -> str:
    """A FIFO topic's SequenceNumber for its ``seq``-th publish (20 digits)."""
    return str(SEQUENCE_NUMBER_BASE + seq)


class Original(NamedTuple):
    """The publish a deduplication id belongs to: what a duplicate is answered with."""

    message_id: str
    sequence_number: str


class TopicDeduplication(ScopedWindow[Original]):
    """A FIFO topic's deduplication window: ids taken in the last 5 minutes, at topic level.

    Separate from any subscribed queue's own window (LocalStack PR #8145): a duplicate is
    answered with the original's MessageId and SequenceNumber and delivered to nobody. A
    FifoThroughputScope change frees no id early (see :mod:`broker.model.dedup`).
    """

    __slots__ = ()

    @staticmethod
    def key(deduplication_id: str, group_id: str, settings: TopicSettings) -> bytes:
        """The key of a deduplication id: per group when FifoThroughputScope is MessageGroup."""
        per_group = settings.fifo_throughput_scope == "MessageGroup"
        return deduplication_key(deduplication_id, group_id if per_group else None)

    @staticmethod
    def expires_at(now: int) -> int:
        """The end of the window of an id taken at ``now``."""
        return now + DEDUPLICATION_WINDOW_MS
