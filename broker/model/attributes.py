"""GetQueueAttributes rendering and the CreateQueue "same attributes" rule."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple

from broker.model import strict_json
from broker.model.errors import QUEUE_ALREADY_EXISTS, SqsError, unknown_attribute
from broker.model.settings import (
    COMPUTED_ATTRIBUTES,
    SETTABLE_ATTRIBUTES,
    QueueSettings,
    parse_create,
    render_redrive_allow_policy,
    render_redrive_policy,
)

# The order AWS lists them in for "All".
ALL_ATTRIBUTES: tuple[str, ...] = (
    "QueueArn",
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
    "CreatedTimestamp",
    "LastModifiedTimestamp",
    "VisibilityTimeout",
    "MaximumMessageSize",
    "MessageRetentionPeriod",
    "DelaySeconds",
    "ReceiveMessageWaitTimeSeconds",
    "Policy",
    "RedrivePolicy",
    "RedriveAllowPolicy",
    "KmsMasterKeyId",
    "KmsDataKeyReusePeriodSeconds",
    "SqsManagedSseEnabled",
    "FifoQueue",
    "ContentBasedDeduplication",
    "DeduplicationScope",
    "FifoThroughputLimit",
)
assert set(ALL_ATTRIBUTES) == SETTABLE_ATTRIBUTES | COMPUTED_ATTRIBUTES

# Attributes whose values are JSON documents: CreateQueue compares them as documents.
JSON_ATTRIBUTES = frozenset({"Policy", "RedrivePolicy", "RedriveAllowPolicy"})


class QueueCounts(NamedTuple):
    """The Approximate* counts of a queue at one instant."""

    visible: int
    in_flight: int
    delayed: int


class QueueFacts(NamedTuple):
    """What GetQueueAttributes reports beyond the settings; the caller supplies it."""

    queue_arn: str
    created_at_ms: int
    modified_at_ms: int
    counts: QueueCounts


def render_attributes(
    settings: QueueSettings, names: Iterable[str], facts: QueueFacts
) -> dict[str, str]:
    """Answer GetQueueAttributes.

    Attributes that do not apply (FIFO attributes of a standard queue, a Policy never set, the
    KMS attributes of a queue without a KMS key) are left out, as AWS leaves them out.

    Args:
        settings: the queue's settings.
        names: the requested names; ``All`` means every attribute.
        facts: the ARN, timestamps and counts.

    Returns:
        Attribute name -> value, every value a string.

    Raises:
        SqsError: ``InvalidAttributeName`` for a name SQS does not know.
    """
    requested: list[str] = []
    for name in names:
        if name == "All":
            requested.extend(ALL_ATTRIBUTES)
        elif name in SETTABLE_ATTRIBUTES or name in COMPUTED_ATTRIBUTES:
            requested.append(name)
        else:
            raise unknown_attribute(name)
    result: dict[str, str] = {}
    for name in requested:
        value = _computed_value(name, facts)
        if value is None and _applies(settings, name):
            value = setting_value(settings, name)
        if value is not None:
            result[name] = value
    return result


def _computed_value(name: str, facts: QueueFacts) -> str | None:
    match name:
        case "QueueArn":
            return facts.queue_arn
        case "ApproximateNumberOfMessages":
            return str(facts.counts.visible)
        case "ApproximateNumberOfMessagesNotVisible":
            return str(facts.counts.in_flight)
        case "ApproximateNumberOfMessagesDelayed":
            return str(facts.counts.delayed)
        case "CreatedTimestamp":
            return str(facts.created_at_ms // 1000)
        case "LastModifiedTimestamp":
            return str(facts.modified_at_ms // 1000)
    return None


def _applies(settings: QueueSettings, name: str) -> bool:
    if name in ("FifoQueue", "ContentBasedDeduplication", "DeduplicationScope"):
        return settings.fifo
    if name == "FifoThroughputLimit":
        return settings.fifo
    if name in ("KmsMasterKeyId", "KmsDataKeyReusePeriodSeconds"):
        return settings.kms_master_key_id is not None
    return True


def setting_value(settings: QueueSettings, name: str) -> str | None:
    """Render one settable attribute as GetQueueAttributes would, or None when it is unset.

    Args:
        settings: the queue's settings.
        name: a settable attribute name.

    Returns:
        The value as a string, or None for an unset optional attribute.
    """
    values: dict[str, str | None] = {
        "VisibilityTimeout": str(settings.visibility_timeout),
        "MaximumMessageSize": str(settings.maximum_message_size),
        "MessageRetentionPeriod": str(settings.message_retention_period),
        "DelaySeconds": str(settings.delay_seconds),
        "ReceiveMessageWaitTimeSeconds": str(settings.receive_message_wait_time_seconds),
        "Policy": settings.policy,
        "RedrivePolicy": (
            render_redrive_policy(settings.redrive_policy) if settings.redrive_policy else None
        ),
        "RedriveAllowPolicy": (
            render_redrive_allow_policy(settings.redrive_allow_policy)
            if settings.redrive_allow_policy
            else None
        ),
        "KmsMasterKeyId": settings.kms_master_key_id,
        "KmsDataKeyReusePeriodSeconds": str(settings.kms_data_key_reuse_period_seconds),
        "SqsManagedSseEnabled": _bool(settings.sqs_managed_sse_enabled),
        "FifoQueue": _bool(settings.fifo),
        "ContentBasedDeduplication": _bool(settings.content_based_deduplication),
        "DeduplicationScope": settings.deduplication_scope,
        "FifoThroughputLimit": settings.fifo_throughput_limit,
    }
    return values[name]


def _bool(value: bool) -> str:
    return "true" if value else "false"


def check_create_matches(existing: QueueSettings, attributes: Mapping[str, str]) -> None:
    """Apply the CreateQueue rule for a name that already exists.

    CreateQueue is idempotent: it returns the existing queue when every attribute in the
    request has the value the queue already has, and refuses otherwise. A JSON-valued
    attribute (Policy, RedrivePolicy, RedriveAllowPolicy) has the same value when it parses
    to the same document: whitespace and key order do not count (tools that manage queues
    re-render their JSON as they please).

    Args:
        existing: the settings of the queue with that name.
        attributes: the Attributes of the CreateQueue request.

    Raises:
        SqsError: ``QueueAlreadyExists`` naming the first differing attribute, or the
            validation error of a bad attribute.
    """
    requested = parse_create(attributes)
    for name in attributes:
        if _comparable(requested, name) != _comparable(existing, name):
            raise SqsError(
                QUEUE_ALREADY_EXISTS,
                "A queue already exists with the same name and a different value for "
                f"attribute {name}",
            )


def _comparable(settings: QueueSettings, name: str) -> object:
    """A setting's value as CreateQueue compares it: JSON documents parsed, the rest as text."""
    value = setting_value(settings, name)
    if value is not None and name in JSON_ATTRIBUTES:
        return strict_json.loads(value)  # valid JSON: parse_create checked it
    return value
