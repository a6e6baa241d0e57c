"""Topic settings: the name rules and the attribute map of CreateTopic / Set/GetTopicAttributes.

The result is a frozen :class:`TopicSettings` the store persists as JSON, the same pattern as
:mod:`broker.model.settings` for queues. Subscription attributes live in
:mod:`broker.model.subscriptions`. Attribute names, ranges and defaults come from the botocore
SNS model's documentation of CreateTopic and SetTopicAttributes (botocore 1.44.8); error
messages from AWS where recorded (``"Invalid parameter: Topic Name"``, ``"Invalid parameter:
AttributeName"``), otherwise in AWS's ``Invalid parameter: <Name>: <reason>`` form.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal, NamedTuple

import msgspec

from broker.model import strict_json
from broker.model.delivery_policy import (
    TopicDeliveryPolicy,
    parse_topic_delivery_policy,
    render_topic_effective,
)
from broker.model.policy import topic_policy_problem, unreadable_condition
from broker.model.sns_errors import attribute_error, invalid_parameter

FIFO_SUFFIX: Final = ".fifo"
# CreateTopic: "Topic names must be made up of only uppercase and lowercase ASCII letters,
# numbers, underscores, and hyphens, and must be between 1 and 256 characters long"; a FIFO
# topic's name ends in .fifo, which counts towards the 256.
MAX_TOPIC_NAME_LENGTH: Final = 256
_TOPIC_NAME = re.compile(r"[A-Za-z0-9_-]+")

# MaximumMessageSize: "Valid values are 1024 to 1048576 (1 MiB). The default is 262144".
MESSAGE_SIZE_RANGE: Final = (1_024, 1_048_576)
DEFAULT_MAXIMUM_MESSAGE_SIZE: Final = 262_144
# large-message-payloads: a topic above 256 KiB "supports up to 100 total subscriptions" of
# Firehose, SQS and Lambda only; more, or another protocol, is an InvalidParameter. AWS's
# exact message text is not documented: Wharf's names the rule.
MAX_LARGE_MESSAGE_SUBSCRIPTIONS: Final = 100
LARGE_MESSAGE_PROTOCOLS: Final = frozenset({"sqs", "lambda", "firehose"})

# <Protocol>{Success,Failure}Feedback* : stored and echoed; Wharf writes no CloudWatch Logs.
FEEDBACK_ATTRIBUTES: Final = frozenset(
    f"{protocol}{suffix}"
    for protocol in ("Application", "Firehose", "HTTP", "Lambda", "SQS")
    for suffix in ("SuccessFeedbackRoleArn", "SuccessFeedbackSampleRate", "FailureFeedbackRoleArn")
)
# ArchivePolicy's MessageRetentionPeriod, in days (stored and echoed: Wharf archives nothing).
ARCHIVE_RETENTION_DAYS: Final = (1, 365)
FIFO_ONLY_ATTRIBUTES: Final = frozenset(
    {"ContentBasedDeduplication", "FifoThroughputScope", "ArchivePolicy"}
)
SETTABLE_ATTRIBUTES: Final = frozenset(
    {
        "DeliveryPolicy",
        "DisplayName",
        "MaximumMessageSize",
        "Policy",
        "SignatureVersion",
        "TracingConfig",
        "KmsMasterKeyId",
        *FIFO_ONLY_ATTRIBUTES,
        *FEEDBACK_ATTRIBUTES,
    }
)
CREATE_ONLY_ATTRIBUTES: Final = frozenset({"FifoTopic"})
COMPUTED_ATTRIBUTES: Final = frozenset(
    {
        "TopicArn",
        "Owner",
        "SubscriptionsConfirmed",
        "SubscriptionsPending",
        "SubscriptionsDeleted",
        "EffectiveDeliveryPolicy",
    }
)

SignatureVersion = Literal["1", "2"]
TracingConfig = Literal["PassThrough", "Active"]
FifoThroughputScope = Literal["Topic", "MessageGroup"]


class TopicSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Every settable attribute of a topic, validated. None means "never set" (not rendered)."""

    fifo: bool = False
    display_name: str = ""
    policy: str | None = None  # None: AWS's default policy, rendered with the topic's ARN
    delivery_policy: str | None = None  # as set; parsed form in delivery_policy_parsed
    delivery_policy_parsed: TopicDeliveryPolicy | None = None
    maximum_message_size: int | None = None
    signature_version: SignatureVersion | None = None
    tracing_config: TracingConfig | None = None
    kms_master_key_id: str | None = None
    content_based_deduplication: bool = False
    fifo_throughput_scope: FifoThroughputScope | None = None
    archive_policy: str | None = None
    feedback: tuple[tuple[str, str], ...] = ()

    @property
    def effective_signature_version(self) -> SignatureVersion:
        """The version envelopes are signed with: AWS's default is 1."""
        return self.signature_version or "1"

    @property
    def effective_maximum_message_size(self) -> int:
        """The Publish size limit in bytes (256 KiB unless raised)."""
        return self.maximum_message_size or DEFAULT_MAXIMUM_MESSAGE_SIZE


def check_large_messages(maximum_message_size: int, protocols: Iterable[str]) -> None:
    """Check the rule for topics above 256 KiB against the topic's subscriptions' protocols.

    Args:
        maximum_message_size: the topic's effective MaximumMessageSize.
        protocols: the protocol of every subscription the topic would have, pending included.

    Raises:
        SnsError: ``InvalidParameter`` when the topic is above 256 KiB and would have more than
            100 subscriptions, or one whose protocol is not SQS, Lambda or Firehose.
    """
    if maximum_message_size <= DEFAULT_MAXIMUM_MESSAGE_SIZE:
        return
    count = 0
    for protocol in protocols:
        count += 1
        if protocol not in LARGE_MESSAGE_PROTOCOLS:
            raise invalid_parameter(
                f"Protocol Reason: a topic whose MaximumMessageSize is above "
                f"{DEFAULT_MAXIMUM_MESSAGE_SIZE} bytes delivers to sqs, lambda and firehose "
                f"subscriptions only, not {protocol}"
            )
    if count > MAX_LARGE_MESSAGE_SUBSCRIPTIONS:
        raise invalid_parameter(
            f"Subscriptions Reason: a topic whose MaximumMessageSize is above "
            f"{DEFAULT_MAXIMUM_MESSAGE_SIZE} bytes may have at most "
            f"{MAX_LARGE_MESSAGE_SUBSCRIPTIONS} subscriptions"
        )


class TopicFacts(NamedTuple):
    """What GetTopicAttributes reports beyond the settings; the caller supplies it."""

    topic_arn: str
    owner: str
    subscriptions_confirmed: int
    subscriptions_pending: int
    subscriptions_deleted: int = 0


def validate_topic_name(name: str, *, fifo: bool) -> None:
    """Check a CreateTopic name against AWS's rules for the topic type.

    Args:
        name: the requested name.
        fifo: whether ``FifoTopic=true`` was given.

    Raises:
        SnsError: ``InvalidParameter`` "Invalid parameter: Topic Name" (AWS's message), also
            for a ``.fifo`` name without FifoTopic and the reverse.
    """
    stem = name.removesuffix(FIFO_SUFFIX)
    valid = (
        0 < len(name) <= MAX_TOPIC_NAME_LENGTH
        and _TOPIC_NAME.fullmatch(stem) is not None
        and name.endswith(FIFO_SUFFIX) == fifo
    )
    if not valid:
        raise invalid_parameter("Topic Name")


def parse_create(name: str, attributes: Mapping[str, str], *, topic_arn: str) -> TopicSettings:
    """Validate CreateTopic's name and Attributes.

    Args:
        name: the topic name.
        attributes: attribute name -> value, as sent.
        topic_arn: the topic's ARN, the only Resource its Policy may name.

    Returns:
        The topic's settings.

    Raises:
        SnsError: ``InvalidParameter`` for the name or the first bad attribute.
    """
    raw_fifo = attributes.get("FifoTopic")
    fifo = raw_fifo is not None and _parse_bool("FifoTopic", raw_fifo, in_map=True)
    validate_topic_name(name, fifo=fifo)
    settings = TopicSettings(fifo=fifo)
    for attribute, value in attributes.items():
        if attribute == "FifoTopic":
            continue
        settings = _apply(settings, attribute, value, in_map=True, topic_arn=topic_arn)
    return settings


def apply_update(current: TopicSettings, name: str, value: str, *, topic_arn: str) -> TopicSettings:
    """Validate one SetTopicAttributes call and return the settings it produces.

    Args:
        current: the topic's settings now.
        name: ``AttributeName``.
        value: ``AttributeValue`` (absent is passed as ``""``).
        topic_arn: the topic's ARN, the only Resource its Policy may name.

    Returns:
        The new settings.

    Raises:
        SnsError: ``InvalidParameter``; FifoTopic cannot change ("Invalid parameter:
            AttributeName", as AWS answers).
    """
    if name in CREATE_ONLY_ATTRIBUTES:
        raise invalid_parameter("AttributeName")
    return _apply(current, name, value, in_map=False, topic_arn=topic_arn)


def _apply(
    settings: TopicSettings, name: str, value: str, *, in_map: bool, topic_arn: str
) -> TopicSettings:
    if name not in SETTABLE_ATTRIBUTES:
        raise attribute_error("AttributeName", in_attributes_map=in_map)
    if name in FIFO_ONLY_ATTRIBUTES and not settings.fifo:
        raise attribute_error(
            f"{name}: only FIFO topics have this attribute", in_attributes_map=in_map
        )
    change: dict[str, Any]
    match name:
        case "DisplayName":
            change = {"display_name": value}
        case "Policy":
            policy = _json_object(name, value, in_map)
            problem = topic_policy_problem(policy, topic_arn) if policy else None
            if problem is not None:  # as AWS: "Invalid parameter: Policy Error: ..."
                raise attribute_error(f"{name} Error: {problem}", in_attributes_map=in_map)
            error = unreadable_condition(policy) if policy else None
            if error is not None:  # a condition the evaluator would have to guess at
                raise attribute_error(f"{name}: {error}", in_attributes_map=in_map)
            change = {"policy": policy or None}
        case "DeliveryPolicy":
            parsed = parse_topic_delivery_policy(value, in_attributes_map=in_map)
            change = {"delivery_policy": value or None, "delivery_policy_parsed": parsed}
        case "MaximumMessageSize":
            change = {"maximum_message_size": _parse_size(value, in_map)}
        case "SignatureVersion":
            change = {"signature_version": _choice(name, value, ("1", "2"), in_map)}
        case "TracingConfig":
            tracing = _choice(name, value, ("PassThrough", "Active"), in_map)
            if tracing == "Active" and settings.fifo:  # X-Ray traces standard topics only
                detail = f"{name}: Active tracing is only supported on standard topics"
                raise attribute_error(detail, in_attributes_map=in_map)
            change = {"tracing_config": tracing}
        case "KmsMasterKeyId":
            change = {"kms_master_key_id": value or None}
        case "ContentBasedDeduplication":
            change = {"content_based_deduplication": _parse_bool(name, value, in_map=in_map)}
        case "FifoThroughputScope":
            scopes = ("Topic", "MessageGroup")
            change = {"fifo_throughput_scope": _choice(name, value, scopes, in_map)}
        case "ArchivePolicy":
            change = {"archive_policy": _archive_policy(value, in_map) or None}
        case _:  # the delivery-status feedback attributes
            if value and name.endswith("SampleRate") and not _is_percentage(value):
                detail = f"{name}: Invalid value [{value}]. Must be an integer from 0 to 100"
                raise attribute_error(detail, in_attributes_map=in_map)
            feedback = dict(settings.feedback)
            if value:
                feedback[name] = value
            else:
                feedback.pop(name, None)
            change = {"feedback": tuple(sorted(feedback.items()))}
    return msgspec.structs.replace(settings, **change)


def _parse_bool(name: str, value: str, *, in_map: bool) -> bool:
    lowered = value.lower()
    if lowered not in ("true", "false"):
        detail = f"{name}: Invalid value [{value}]. Must be true or false."
        raise attribute_error(detail, in_attributes_map=in_map)
    return lowered == "true"


def _choice(name: str, value: str, choices: tuple[str, ...], in_map: bool) -> Any:
    if value not in choices:
        allowed = " or ".join(choices)
        detail = f"{name}: Invalid value [{value}]. Please use {allowed}"
        raise attribute_error(detail, in_attributes_map=in_map)
    return value


def _parse_size(value: str, in_map: bool) -> int:
    low, high = MESSAGE_SIZE_RANGE
    if not (value.isascii() and value.isdigit() and low <= int(value) <= high):
        detail = f"MaximumMessageSize: Invalid value [{value}]. Must be between {low} and {high}"
        raise attribute_error(detail, in_attributes_map=in_map)
    return int(value)


def _json_object(name: str, value: str, in_map: bool) -> str:
    if not value:
        return ""
    try:
        document = strict_json.loads(value)
    except (ValueError, RecursionError):
        document = None
    if not isinstance(document, dict):
        raise attribute_error(f"{name}: failed to parse JSON.", in_attributes_map=in_map)
    return value


def _archive_policy(value: str, in_map: bool) -> str:
    """A FIFO topic's ArchivePolicy: ``{}`` (none) or a MessageRetentionPeriod of 1-365 days."""
    text = _json_object("ArchivePolicy", value, in_map)
    if not text:
        return ""
    policy = json.loads(text)
    period = policy.get("MessageRetentionPeriod")
    if not policy.keys() <= {"MessageRetentionPeriod"} or (
        policy and not _days_in_range(period, ARCHIVE_RETENTION_DAYS)
    ):
        low, high = ARCHIVE_RETENTION_DAYS
        detail = (
            f"ArchivePolicy: Invalid value [{value}]. Must be {{}} or "
            f'{{"MessageRetentionPeriod": <days from {low} to {high}>}}'
        )
        raise attribute_error(detail, in_attributes_map=in_map)
    return text


def _days_in_range(period: object, bounds: tuple[int, int]) -> bool:
    if isinstance(period, str) and period.isascii() and period.isdigit():
        period = int(period)
    return type(period) is int and bounds[0] <= period <= bounds[1]


def _is_percentage(value: str) -> bool:
    return value.isascii() and value.isdigit() and int(value) <= 100


def check_create_matches(
    existing: TopicSettings, name: str, attributes: Mapping[str, str], *, topic_arn: str
) -> None:
    """Apply CreateTopic's idempotency rule: same name and same attributes returns the topic.

    Args:
        existing: the settings of the topic that already has this name.
        name: the name again.
        attributes: the Attributes of the repeated CreateTopic.
        topic_arn: the topic's ARN.

    Raises:
        SnsError: the attributes differ ("Invalid parameter: Attributes Reason: Topic already
            exists with different attributes").
    """
    requested = parse_create(name, attributes, topic_arn=topic_arn)
    for attribute in attributes:
        if attribute != "FifoTopic" and _comparable(requested, attribute) != _comparable(
            existing, attribute
        ):
            raise attribute_error(
                "Topic already exists with different attributes", in_attributes_map=True
            )


# Attributes whose values are JSON documents: CreateTopic compares them as documents, so that
# a tool re-rendering them (other whitespace, other key order) re-applies without an error.
_JSON_ATTRIBUTES: Final = frozenset({"Policy", "DeliveryPolicy", "ArchivePolicy"})


# What a topic that never set these has, as the API reference documents ("If the API
# response does not include the SignatureVersion attribute, it means that the
# SignatureVersion for the topic has value 1", ...): a repeated CreateTopic naming the
# default asks for what the topic already has.
_DEFAULTS: Final = {
    "SignatureVersion": "1",
    "TracingConfig": "PassThrough",
    "MaximumMessageSize": "262144",
    "FifoThroughputScope": "Topic",
}


def _comparable(settings: TopicSettings, name: str) -> object:
    value = setting_value(settings, name)
    if value is None:
        value = _DEFAULTS.get(name)
    if value is not None and name in _JSON_ATTRIBUTES:
        try:
            return strict_json.loads(value)
        except ValueError:  # kept as sent where no check required JSON: compare the text
            return value
    return value


def default_policy(topic_arn: str, owner: str) -> str:
    """AWS's default topic access policy (only the owner may use the topic)."""
    actions = [
        "SNS:GetTopicAttributes",
        "SNS:SetTopicAttributes",
        "SNS:AddPermission",
        "SNS:RemovePermission",
        "SNS:DeleteTopic",
        "SNS:Subscribe",
        "SNS:ListSubscriptionsByTopic",
        "SNS:Publish",
    ]
    statement = {
        "Sid": "__default_statement_ID",
        "Effect": "Allow",
        "Principal": {"AWS": "*"},
        "Action": actions,
        "Resource": topic_arn,
        "Condition": {"StringEquals": {"AWS:SourceOwner": owner}},
    }
    document = {"Version": "2008-10-17", "Id": "__default_policy_ID", "Statement": [statement]}
    return json.dumps(document, separators=(",", ":"))


def setting_value(settings: TopicSettings, name: str) -> str | None:
    """The text GetTopicAttributes shows for a settable attribute, or None when not shown.

    Args:
        settings: the topic's settings.
        name: a settable attribute name.

    Returns:
        The value as a string, None when the attribute was never set (AWS leaves it out).
    """
    match name:
        case "DisplayName":
            return settings.display_name
        case "Policy":
            return settings.policy
        case "DeliveryPolicy":
            return settings.delivery_policy
        case "MaximumMessageSize":
            size = settings.maximum_message_size
            return None if size is None else str(size)
        case "SignatureVersion":
            return settings.signature_version
        case "TracingConfig":
            return settings.tracing_config
        case "KmsMasterKeyId":
            return settings.kms_master_key_id
        case "FifoTopic":
            return "true" if settings.fifo else None
        case "ContentBasedDeduplication":
            return (
                ("true" if settings.content_based_deduplication else "false")
                if settings.fifo
                else None
            )
        case "FifoThroughputScope":
            return settings.fifo_throughput_scope
        case "ArchivePolicy":
            return settings.archive_policy
    return dict(settings.feedback).get(name)


def render_attributes(settings: TopicSettings, facts: TopicFacts) -> dict[str, str]:
    """Answer GetTopicAttributes.

    Args:
        settings: the topic's settings.
        facts: the ARN, owner and subscription counts.

    Returns:
        Attribute name -> value; attributes never set are left out, as AWS leaves them out.
    """
    rendered = {
        "TopicArn": facts.topic_arn,
        "Owner": facts.owner,
        "Policy": settings.policy or default_policy(facts.topic_arn, facts.owner),
        "SubscriptionsConfirmed": str(facts.subscriptions_confirmed),
        "SubscriptionsPending": str(facts.subscriptions_pending),
        "SubscriptionsDeleted": str(facts.subscriptions_deleted),
        "EffectiveDeliveryPolicy": render_topic_effective(settings.delivery_policy_parsed),
    }
    for name in _shown(settings):
        value = setting_value(settings, name)
        if value is not None:
            rendered[name] = value
    return rendered


def _shown(settings: TopicSettings) -> Iterable[str]:
    yield from ("DisplayName", "DeliveryPolicy", "MaximumMessageSize", "SignatureVersion")
    yield from ("TracingConfig", "KmsMasterKeyId", "FifoTopic", "ContentBasedDeduplication")
    yield from ("FifoThroughputScope", "ArchivePolicy")
    yield from (name for name, _ in settings.feedback)
