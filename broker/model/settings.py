"""Queue settings: parse and validate the attribute map of CreateQueue and SetQueueAttributes.

The result is a frozen :class:`QueueSettings`; the store persists it as JSON. Rendering the
values back for GetQueueAttributes lives in :mod:`broker.model.attributes`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

import msgspec

from broker.model.errors import (
    INVALID_ATTRIBUTE_NAME,
    SqsError,
    invalid_attribute_value,
    invalid_parameter,
    unknown_attribute,
)
from broker.model.names import parse_queue_arn
from broker.model.policy import check_policy

# (minimum, maximum, default) of each integer attribute, as the SQS API reference gives them.
INTEGER_RANGES: dict[str, tuple[int, int, int]] = {
    "VisibilityTimeout": (0, 43_200, 30),
    "MessageRetentionPeriod": (60, 1_209_600, 345_600),
    "MaximumMessageSize": (1_024, 1_048_576, 1_048_576),
    "DelaySeconds": (0, 900, 0),
    "ReceiveMessageWaitTimeSeconds": (0, 20, 0),
    "KmsDataKeyReusePeriodSeconds": (60, 86_400, 300),
}
MAX_RECEIVE_COUNT_RANGE = (1, 1_000)
MAX_REDRIVE_ALLOW_SOURCES = 10  # AWS: "You can specify up to 10 source queue ARNs"

FIFO_ONLY_ATTRIBUTES = frozenset(
    {"FifoQueue", "ContentBasedDeduplication", "DeduplicationScope", "FifoThroughputLimit"}
)
SETTABLE_ATTRIBUTES = frozenset(
    {
        *INTEGER_RANGES,
        "RedrivePolicy",
        "RedriveAllowPolicy",
        "Policy",
        "KmsMasterKeyId",
        "SqsManagedSseEnabled",
        *FIFO_ONLY_ATTRIBUTES,
    }
)
# Listed by GetQueueAttributes but never accepted by CreateQueue or SetQueueAttributes.
COMPUTED_ATTRIBUTES = frozenset(
    {
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
        "CreatedTimestamp",
        "LastModifiedTimestamp",
        "QueueArn",
    }
)

DeduplicationScope = Literal["queue", "messageGroup"]
FifoThroughputLimit = Literal["perQueue", "perMessageGroupId"]
RedrivePermission = Literal["allowAll", "denyAll", "byQueue"]


class RedrivePolicy(msgspec.Struct, frozen=True, kw_only=True):
    """Where a message goes after too many receives."""

    dead_letter_target_arn: str
    max_receive_count: int


class RedriveAllowPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """Which source queues may use this queue as their dead-letter queue."""

    permission: RedrivePermission
    source_queue_arns: tuple[str, ...] = ()

    def allows(self, source_arn: str) -> bool:
        """Tell whether ``source_arn`` may name this queue as its dead-letter target."""
        if self.permission == "byQueue":
            return source_arn in self.source_queue_arns
        return self.permission == "allowAll"


class QueueSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Every settable attribute of a queue, validated, with AWS's defaults."""

    fifo: bool = False
    visibility_timeout: int = 30
    message_retention_period: int = 345_600
    maximum_message_size: int = 1_048_576
    delay_seconds: int = 0
    receive_message_wait_time_seconds: int = 0
    redrive_policy: RedrivePolicy | None = None
    redrive_allow_policy: RedriveAllowPolicy | None = None
    policy: str | None = None
    content_based_deduplication: bool = False
    deduplication_scope: DeduplicationScope = "queue"
    fifo_throughput_limit: FifoThroughputLimit = "perQueue"
    kms_master_key_id: str | None = None
    kms_data_key_reuse_period_seconds: int = 300
    # AWS turned SSE-SQS on by default for new queues in 2022.
    sqs_managed_sse_enabled: bool = True


_INTEGER_FIELDS = {
    "VisibilityTimeout": "visibility_timeout",
    "MessageRetentionPeriod": "message_retention_period",
    "MaximumMessageSize": "maximum_message_size",
    "DelaySeconds": "delay_seconds",
    "ReceiveMessageWaitTimeSeconds": "receive_message_wait_time_seconds",
    "KmsDataKeyReusePeriodSeconds": "kms_data_key_reuse_period_seconds",
}


def parse_create(attributes: Mapping[str, str]) -> QueueSettings:
    """Validate the Attributes of a CreateQueue request.

    ``FifoQueue`` picks the queue type; the name rules that depend on it are checked by
    :func:`broker.model.names.validate_queue_name`.

    Args:
        attributes: attribute name -> value, as sent.

    Returns:
        The queue's settings.

    Raises:
        SqsError: with AWS's code and message for the first bad attribute.
    """
    raw_fifo = attributes.get("FifoQueue")
    fifo = raw_fifo is not None and _parse_bool("FifoQueue", raw_fifo)
    return _apply(QueueSettings(fifo=fifo), attributes, creating=True)


def apply_update(current: QueueSettings, attributes: Mapping[str, str]) -> QueueSettings:
    """Validate SetQueueAttributes and return the settings it produces.

    Args:
        current: the queue's settings now.
        attributes: attribute name -> value, as sent.

    Returns:
        The new settings (``current`` itself when nothing changes).

    Raises:
        SqsError: with AWS's code and message for the first bad attribute.
    """
    return _apply(current, attributes, creating=False)


def _apply(base: QueueSettings, attributes: Mapping[str, str], *, creating: bool) -> QueueSettings:
    changes: dict[str, Any] = {}
    for name, value in attributes.items():
        if name not in SETTABLE_ATTRIBUTES:
            raise unknown_attribute(name)
        if name in FIFO_ONLY_ATTRIBUTES and not base.fifo:
            if name in ("DeduplicationScope", "FifoThroughputLimit"):
                raise SqsError(
                    INVALID_ATTRIBUTE_NAME,
                    f"You can specify the {name} only when FifoQueue is set to true.",
                )
            raise unknown_attribute(name)
        if name in _INTEGER_FIELDS:
            changes[_INTEGER_FIELDS[name]] = _parse_integer(name, value)
        elif name == "FifoQueue":
            # The type is fixed at creation; "true" again is accepted and ignored.
            if not _parse_bool(name, value) and not creating:
                raise SqsError(
                    invalid_attribute_value(name).code,
                    f"Invalid value for the parameter {name}. "
                    "Reason: Modifying queue type is not supported.",
                )
        elif name == "ContentBasedDeduplication":
            changes["content_based_deduplication"] = _parse_bool(name, value)
        elif name == "SqsManagedSseEnabled":
            changes["sqs_managed_sse_enabled"] = _parse_bool(name, value)
        elif name == "DeduplicationScope":
            changes["deduplication_scope"] = _parse_choice(name, value, ("queue", "messageGroup"))
        elif name == "FifoThroughputLimit":
            changes["fifo_throughput_limit"] = _parse_choice(
                name, value, ("perQueue", "perMessageGroupId")
            )
        elif name == "RedrivePolicy":
            changes["redrive_policy"] = parse_redrive_policy(value)
        elif name == "RedriveAllowPolicy":
            changes["redrive_allow_policy"] = parse_redrive_allow_policy(value)
        elif name == "Policy":
            changes["policy"] = _parse_policy(value)
        elif name == "KmsMasterKeyId":
            changes["kms_master_key_id"] = value or None
    _settle_encryption(base, changes, explicit_sse="SqsManagedSseEnabled" in attributes)
    limit = changes.get("fifo_throughput_limit", base.fifo_throughput_limit)
    scope = changes.get("deduplication_scope", base.deduplication_scope)
    if limit == "perMessageGroupId" and scope != "messageGroup":
        # SetQueueAttributes: "The perMessageGroupId value is allowed only when the value for
        # DeduplicationScope is messageGroup." (checked on the settings the request leaves)
        raise SqsError(
            invalid_attribute_value("FifoThroughputLimit").code,
            "Invalid value for the parameter FifoThroughputLimit. Reason: perMessageGroupId "
            "is allowed only when DeduplicationScope is messageGroup.",
        )
    return msgspec.structs.replace(base, **changes) if changes else base


def _settle_encryption(base: QueueSettings, changes: dict[str, Any], *, explicit_sse: bool) -> None:
    """Keep SSE-KMS and SSE-SQS mutually exclusive, as AWS does."""
    kms_key = changes.get("kms_master_key_id", base.kms_master_key_id)
    sqs_managed = changes.get("sqs_managed_sse_enabled", base.sqs_managed_sse_enabled)
    if kms_key and sqs_managed:
        if explicit_sse:
            raise SqsError(
                INVALID_ATTRIBUTE_NAME,
                "You can use one type of server-side encryption (SSE) at one time. "
                "You can either enable KMS SSE or SQS SSE.",
            )
        # Naming a KMS key switches the queue from SSE-SQS to SSE-KMS.
        changes["sqs_managed_sse_enabled"] = False


def _parse_integer(name: str, value: str) -> int:
    low, high, _ = INTEGER_RANGES[name]
    if not value.isascii() or not value.isdigit():
        raise invalid_attribute_value(name)
    number = int(value)
    if not low <= number <= high:
        raise invalid_attribute_value(name)
    return number


def _parse_bool(name: str, value: str) -> bool:
    lowered = value.lower()
    if lowered not in ("true", "false"):
        raise invalid_attribute_value(name)
    return lowered == "true"


def _parse_choice(name: str, value: str, choices: tuple[str, ...]) -> Any:
    if value not in choices:
        raise invalid_attribute_value(name)
    return value


def _parse_policy(value: str) -> str | None:
    if not value:
        return None  # an empty Policy removes it
    check_policy(value)  # grammar, quotas and conditions, as AWS validates them on set
    return value


def parse_redrive_policy(value: str) -> RedrivePolicy | None:
    """Parse the RedrivePolicy JSON; an empty string removes the policy.

    Args:
        value: the attribute value as sent.

    Returns:
        The policy, or None for an empty value.

    Raises:
        SqsError: ``InvalidParameterValue`` with AWS's message.
    """
    if not value:
        return None
    document = _json_map("RedrivePolicy", value, "Redrive policy")
    for key in ("deadLetterTargetArn", "maxReceiveCount"):
        if key not in document:
            raise invalid_parameter(
                "RedrivePolicy",
                value,
                f"Redrive policy does not contain mandatory attribute: {key}",
            )
    target = document["deadLetterTargetArn"]
    if not isinstance(target, str) or parse_queue_arn(target) is None:
        raise invalid_parameter("RedrivePolicy", value, "Invalid value for deadLetterTargetArn")
    count = _receive_count(document["maxReceiveCount"])
    low, high = MAX_RECEIVE_COUNT_RANGE
    if count is None or not low <= count <= high:
        raise invalid_parameter(
            "RedrivePolicy",
            value,
            f"Invalid value for maxReceiveCount: {document['maxReceiveCount']}, "
            f"valid values are from {low} to {high} both inclusive",
        )
    return RedrivePolicy(dead_letter_target_arn=target, max_receive_count=count)


def _json_map(name: str, value: str, what: str) -> dict[str, Any]:
    """The JSON object ``value`` holds, or ``InvalidParameterValue`` as AWS words it."""
    try:
        document = json.loads(value)
    except (ValueError, RecursionError):  # RecursionError: nested past the parser's depth
        document = None
    if not isinstance(document, dict):
        raise invalid_parameter(name, value, f"{what} is not a valid JSON map")
    return document


def _receive_count(raw: object) -> int | None:
    # AWS accepts the count as a JSON number or as a string of digits.
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str) and raw.isascii() and raw.isdigit():
        return int(raw)
    return None


def parse_redrive_allow_policy(value: str) -> RedriveAllowPolicy | None:
    """Parse the RedriveAllowPolicy JSON; an empty string removes the policy.

    Args:
        value: the attribute value as sent.

    Returns:
        The policy, or None for an empty value.

    Raises:
        SqsError: ``InvalidParameterValue`` with AWS's message.
    """
    if not value:
        return None
    document = _json_map("RedriveAllowPolicy", value, "Redrive allow policy")
    permission = document.get("redrivePermission")
    if permission not in ("allowAll", "denyAll", "byQueue"):
        raise invalid_parameter("RedriveAllowPolicy", value, "Invalid value for redrivePermission")
    sources = document.get("sourceQueueArns", [])
    valid_sources = isinstance(sources, list) and all(
        isinstance(arn, str) and parse_queue_arn(arn) is not None for arn in sources
    )
    if not valid_sources:
        raise invalid_parameter("RedriveAllowPolicy", value, "Invalid value for sourceQueueArns")
    if permission == "byQueue" and not 1 <= len(sources) <= MAX_REDRIVE_ALLOW_SOURCES:
        raise invalid_parameter(
            "RedriveAllowPolicy",
            value,
            f"sourceQueueArns must contain 1 to {MAX_REDRIVE_ALLOW_SOURCES} queue ARNs "
            "when redrivePermission is byQueue",
        )
    if permission != "byQueue" and sources:
        raise invalid_parameter(
            "RedriveAllowPolicy",
            value,
            "sourceQueueArns can be specified only when redrivePermission is byQueue",
        )
    return RedriveAllowPolicy(permission=permission, source_queue_arns=tuple(sources))


def check_dead_letter_target(
    source: QueueSettings, source_arn: str, target: QueueSettings | None
) -> None:
    """Check a RedrivePolicy against its target queue (the caller looks the target up by ARN).

    Args:
        source: the settings of the queue that carries the policy.
        source_arn: that queue's ARN.
        target: the dead-letter queue's settings, or None when no queue has that ARN.

    Raises:
        SqsError: ``InvalidParameterValue`` when the target is missing, of the other queue
            type, or refuses this source in its RedriveAllowPolicy.
    """
    policy = source.redrive_policy
    if policy is None:
        return
    raw = render_redrive_policy(policy)
    if target is None:
        raise invalid_parameter("RedrivePolicy", raw, "Dead letter target does not exist")
    if target.fifo != source.fifo:
        raise invalid_parameter(
            "RedrivePolicy", raw, "Dead-letter queue must be same type of queue as the source"
        )
    allow = target.redrive_allow_policy
    if allow is not None and not allow.allows(source_arn):
        raise invalid_parameter(
            "RedrivePolicy",
            raw,
            f"Queue {source_arn} does not have permission to use "
            f"{policy.dead_letter_target_arn} as its dead-letter queue",
        )


def render_redrive_policy(policy: RedrivePolicy) -> str:
    """Render a RedrivePolicy the way GetQueueAttributes returns it."""
    return json.dumps(
        {
            "deadLetterTargetArn": policy.dead_letter_target_arn,
            "maxReceiveCount": policy.max_receive_count,
        },
        separators=(",", ":"),
    )


def render_redrive_allow_policy(policy: RedriveAllowPolicy) -> str:
    """Render a RedriveAllowPolicy the way GetQueueAttributes returns it."""
    document: dict[str, object] = {"redrivePermission": policy.permission}
    if policy.source_queue_arns:
        document["sourceQueueArns"] = list(policy.source_queue_arns)
    return json.dumps(document, separators=(",", ":"))
