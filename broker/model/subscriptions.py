"""Subscription settings: the Attributes of Subscribe and Set/GetSubscriptionAttributes.

Validates with AWS's messages (LocalStack's AWS-validated snapshots where recorded: the
FilterPolicy and FilterPolicyScope errors, the FIFO dead-letter rule) and keeps what the store
persists: the texts as set plus the parsed delivery policy. The compiled filter policy is built
from the stored text with :func:`compiled_filter` (once per subscription, by the topic's
:class:`~broker.model.filter_index.SubscriptionFilterIndex` owner).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Final, NamedTuple

import msgspec

from broker.model import strict_json
from broker.model.delivery_policy import (
    EffectiveDeliveryPolicy,
    SubscriptionDeliveryPolicy,
    TopicDeliveryPolicy,
    effective_policy,
    parse_subscription_delivery_policy,
    render_subscription_effective,
)
from broker.model.filter_policy import SCOPES, FilterPolicy, Scope, parse_filter_policy
from broker.model.sns_errors import attribute_error
from proto.aws.arn import ArnError, parse_arn, parse_queue_arn

SETTABLE_ATTRIBUTES: Final = frozenset(
    {
        "DeliveryPolicy",
        "FilterPolicy",
        "FilterPolicyScope",
        "RawMessageDelivery",
        "RedrivePolicy",
        "SubscriptionRoleArn",
        "ReplayPolicy",
    }
)
# The subscription types whose messages can be delivered raw (RawMessageDelivery doc).
RAW_PROTOCOLS: Final = frozenset({"sqs", "http", "https", "firehose"})
HTTP_PROTOCOLS: Final = frozenset({"http", "https"})
# An IAM role ARN's resource (IAM User Guide, "IAM identifiers" and "IAM object quotas"): an
# optional path of printable ASCII between slashes, then a name of up to 64 letters, digits
# and +=,.@_-.
_ROLE_RESOURCE: Final = re.compile(r"role/(?:[\x21-\x7e]{0,511}/)?[A-Za-z0-9+=,.@_-]{1,64}")


class SubscriptionSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Every settable attribute of a subscription, validated; texts kept as the client sent them."""

    raw_message_delivery: bool = False
    filter_policy: str | None = None
    filter_policy_scope: Scope = "MessageAttributes"
    delivery_policy: str | None = None
    delivery_policy_parsed: SubscriptionDeliveryPolicy | None = None
    redrive_policy: str | None = None
    dead_letter_target_arn: str | None = None
    subscription_role_arn: str | None = None
    replay_policy: str | None = None


class SubscriptionContext(NamedTuple):
    """What validation needs to know about the subscription besides its attributes."""

    protocol: str
    endpoint: str
    topic_fifo: bool
    topic_arn: str  # its dead-letter queue must be in the topic's account and region


class SubscriptionFacts(NamedTuple):
    """What GetSubscriptionAttributes reports beyond the settings; the caller supplies it."""

    subscription_arn: str
    topic_arn: str
    protocol: str
    endpoint: str
    owner: str
    pending_confirmation: bool
    confirmation_was_authenticated: bool
    principal: str | None = None


def parse_subscribe(
    attributes: Mapping[str, str], context: SubscriptionContext
) -> SubscriptionSettings:
    """Validate Subscribe's Attributes map.

    FilterPolicyScope is applied before FilterPolicy whatever their order in the map, so a
    body-scope policy can arrive in the same call as its scope.

    Args:
        attributes: attribute name -> value, as sent.
        context: the protocol, endpoint and whether the topic is FIFO.

    Returns:
        The subscription's settings.

    Raises:
        SnsError: ``InvalidParameter`` worded as AWS words Subscribe's errors ("Invalid
            parameter: Attributes Reason: ...").
    """
    settings = SubscriptionSettings()
    ordered = sorted(attributes.items(), key=lambda item: item[0] != "FilterPolicyScope")
    for name, value in ordered:
        settings = _apply(settings, name, value, context, in_map=True)
    return settings


def apply_update(
    current: SubscriptionSettings, name: str, value: str, context: SubscriptionContext
) -> SubscriptionSettings:
    """Validate one SetSubscriptionAttributes call and return the settings it produces.

    Args:
        current: the subscription's settings now.
        name: ``AttributeName``.
        value: ``AttributeValue`` (absent is passed as ``""``).
        context: the protocol, endpoint and whether the topic is FIFO.

    Returns:
        The new settings.

    Raises:
        SnsError: ``InvalidParameter`` ("Invalid parameter: ...").
    """
    return _apply(current, name, value, context, in_map=False)


def _apply(
    settings: SubscriptionSettings,
    name: str,
    value: str,
    context: SubscriptionContext,
    *,
    in_map: bool,
) -> SubscriptionSettings:
    if name not in SETTABLE_ATTRIBUTES:
        raise attribute_error("AttributeName", in_attributes_map=in_map)
    change: dict[str, Any]
    match name:
        case "RawMessageDelivery":
            lowered = value.lower()
            if lowered not in ("true", "false"):
                detail = f"RawMessageDelivery: Invalid value [{value}]. Must be true or false."
                raise attribute_error(detail, in_attributes_map=in_map)
            if lowered == "true" and context.protocol not in RAW_PROTOCOLS:
                detail = (
                    f"Delivery protocol [{context.protocol}] does not support raw message delivery."
                )
                raise attribute_error(detail, in_attributes_map=in_map)
            change = {"raw_message_delivery": lowered == "true"}
        case "FilterPolicyScope":
            if value not in SCOPES:
                detail = (
                    f"FilterPolicyScope: Invalid value [{value}]. "
                    "Please use either MessageBody or MessageAttributes"
                )  # AWS-recorded
                raise attribute_error(detail, in_attributes_map=in_map)
            scope: Scope = "MessageBody" if value == "MessageBody" else "MessageAttributes"
            if settings.filter_policy:  # the policy must still be valid in its new scope
                parse_filter_policy(settings.filter_policy, scope, in_attributes_map=in_map)
            change = {"filter_policy_scope": scope}
        case "FilterPolicy":
            compiled = parse_filter_policy(
                value, settings.filter_policy_scope, in_attributes_map=in_map
            )
            # "{}" is AWS's documented way to remove a policy: none is kept (nor counted
            # against the topic's filter-policy quota).
            change = {"filter_policy": value if compiled is not None else None}
        case "DeliveryPolicy":
            parsed = parse_subscription_delivery_policy(value, in_attributes_map=in_map)
            change = {"delivery_policy": value or None, "delivery_policy_parsed": parsed}
        case "RedrivePolicy":
            target = _dead_letter_target(value, context, in_map)
            change = {"redrive_policy": value or None, "dead_letter_target_arn": target}
        case "SubscriptionRoleArn":
            change = {"subscription_role_arn": _role_arn(value, in_map)}
        case _:  # ReplayPolicy
            change = {"replay_policy": _replay_policy(value, context, in_map)}
    return msgspec.structs.replace(settings, **change)


def _role_arn(value: str, in_map: bool) -> str | None:
    """SubscriptionRoleArn: "a valid ARN" of the IAM role SNS assumes (stored and echoed:
    Wharf has no Firehose subscriptions to deliver with it). The wording is ours."""
    if not value:
        return None
    try:
        arn = parse_arn(value)
    except ArnError:
        arn = None
    if (
        arn is None
        or (arn.service, arn.region) != ("iam", "")
        or not arn.account
        or not _ROLE_RESOURCE.fullmatch(arn.resource)
    ):
        detail = "SubscriptionRoleArn: must be an IAM role ARN, arn:aws:iam::<account>:role/<name>"
        raise attribute_error(detail, in_attributes_map=in_map)
    return value


def _replay_policy(value: str, context: SubscriptionContext, in_map: bool) -> str | None:
    """ReplayPolicy: "apply only to FIFO topics", a JSON object (stored and echoed: Wharf
    keeps no archive to replay from). The wording is ours."""
    if not value:
        return None
    if not context.topic_fifo:
        detail = "ReplayPolicy: only subscriptions to FIFO topics replay messages"
        raise attribute_error(detail, in_attributes_map=in_map)
    try:
        document = strict_json.loads(value)
    except (ValueError, RecursionError):
        document = None
    if not isinstance(document, dict):
        raise attribute_error("ReplayPolicy: failed to parse JSON.", in_attributes_map=in_map)
    return value


def _dead_letter_target(value: str, context: SubscriptionContext, in_map: bool) -> str | None:
    # Messages from LocalStack's provider; the FIFO one is in its AWS-validated snapshot
    # (test_validations_for_fifo, "regular-queue-for-dlq-of-fifo-topic"), the standard one
    # is ours.
    if not value:
        return None
    try:
        document = json.loads(value)
    except (ValueError, RecursionError):
        document = None
    if not isinstance(document, dict):
        raise attribute_error("RedrivePolicy: failed to parse JSON.", in_attributes_map=in_map)
    target = document.get("deadLetterTargetArn")
    try:
        arn = parse_queue_arn(target) if isinstance(target, str) else None
    except ArnError:
        arn = None
    if arn is None:
        detail = "RedrivePolicy: deadLetterTargetArn is an invalid arn"
        raise attribute_error(detail, in_attributes_map=in_map)
    _, _, _, region, account, _ = context.topic_arn.split(":", 5)
    if (arn.region, arn.account) != (region, account):
        # "The Amazon SNS subscription and Amazon SQS queue must be under the same AWS
        # account and Region" (SNS dead-letter queues page): the broker could never write to
        # another, and the messages meant for it would be lost. The wording is ours.
        detail = (
            "RedrivePolicy: the dead-letter queue must be in the topic's account and region "
            f"({account}, {region})"
        )
        raise attribute_error(detail, in_attributes_map=in_map)
    fifo_subscription = context.topic_fifo and context.endpoint.endswith(".fifo")
    if fifo_subscription and not arn.resource.endswith(".fifo"):
        detail = (
            "RedrivePolicy: must use a FIFO queue as DLQ for a FIFO Subscription to a FIFO Topic."
        )
        raise attribute_error(detail, in_attributes_map=in_map)
    # The other half of "FIFO topic subscriptions use FIFO queues, and standard topic
    # subscriptions use standard queues" (SNS dead-letter queues page); the wording is ours.
    if not context.topic_fifo and arn.resource.endswith(".fifo"):
        detail = (
            "RedrivePolicy: must use a standard queue as DLQ for a subscription to a standard "
            "Topic."
        )
        raise attribute_error(detail, in_attributes_map=in_map)
    assert isinstance(target, str)
    return target


def masked_endpoint(endpoint: str) -> str:
    """An HTTP/S endpoint with the password of its ``user:password@`` shown as ``****``.

    ListSubscriptions(ByTopic) and the logs show endpoints this way: AWS hands out the full
    URL of an endpoint with credentials only through GetSubscriptionAttributes.
    """
    scheme, separator, rest = endpoint.partition("://")
    if not separator:
        return endpoint
    end = len(rest)
    for delimiter in "/?#":  # the authority ends at the path, query or fragment
        found = rest.find(delimiter)
        if 0 <= found < end:
            end = found
    userinfo, at, host = rest[:end].rpartition("@")
    user, colon, _ = userinfo.partition(":")
    if not at or not colon:
        return endpoint
    return f"{scheme}://{user}:****@{host}{rest[end:]}"


def compiled_filter(settings: SubscriptionSettings) -> FilterPolicy | None:
    """Compile a stored (already validated) filter policy for the topic's index.

    Args:
        settings: the subscription's settings.

    Returns:
        The compiled policy, or None when the subscription takes every message.
    """
    if not settings.filter_policy:
        return None
    return parse_filter_policy(
        settings.filter_policy, settings.filter_policy_scope, in_attributes_map=False, stored=True
    )


def effective_delivery(
    settings: SubscriptionSettings, protocol: str, topic: TopicDeliveryPolicy | None
) -> EffectiveDeliveryPolicy:
    """The delivery policy this subscription's deliveries follow."""
    return effective_policy(protocol, topic, settings.delivery_policy_parsed)


def render_attributes(
    settings: SubscriptionSettings, facts: SubscriptionFacts, topic: TopicDeliveryPolicy | None
) -> dict[str, str]:
    """Answer GetSubscriptionAttributes.

    FilterPolicyScope shows only once a FilterPolicy is set, as AWS shows it (AWS-recorded,
    ``test_set_subscription_filter_policy_scope``).

    Args:
        settings: the subscription's settings.
        facts: ARNs, protocol, endpoint, owner and confirmation state.
        topic: the topic's delivery policy, for EffectiveDeliveryPolicy.

    Returns:
        Attribute name -> value.
    """
    rendered = {
        "ConfirmationWasAuthenticated": _bool(facts.confirmation_was_authenticated),
        "Endpoint": facts.endpoint,
        "Owner": facts.owner,
        "PendingConfirmation": _bool(facts.pending_confirmation),
        "Protocol": facts.protocol,
        "RawMessageDelivery": _bool(settings.raw_message_delivery),
        "SubscriptionArn": facts.subscription_arn,
        "TopicArn": facts.topic_arn,
    }
    if facts.principal is not None:
        rendered["SubscriptionPrincipal"] = facts.principal
    if settings.filter_policy:
        rendered["FilterPolicy"] = settings.filter_policy
        rendered["FilterPolicyScope"] = settings.filter_policy_scope
    optional = {
        "DeliveryPolicy": settings.delivery_policy,
        "RedrivePolicy": settings.redrive_policy,
        "SubscriptionRoleArn": settings.subscription_role_arn,
        "ReplayPolicy": settings.replay_policy,
    }
    rendered.update({name: value for name, value in optional.items() if value is not None})
    if facts.protocol in HTTP_PROTOCOLS:
        effective = effective_delivery(settings, facts.protocol, topic)
        rendered["EffectiveDeliveryPolicy"] = render_subscription_effective(effective)
    return dict(sorted(rendered.items()))


def _bool(value: bool) -> str:
    return "true" if value else "false"
