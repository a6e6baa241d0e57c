"""The SNS API (2010-03-31) actions Wharf serves, as shapes, and SNS's error codes.

SNS speaks only the query protocol (its model says ``"protocols": ["query"]``): lists are
wrapped in ``member`` elements, maps in ``entry`` elements with ``key``/``value`` (``Name`` /
``Value`` for message attributes). Everything here comes from botocore's SNS model
(``botocore/data/sns/2010-03-31/service-2.json``) and ``tests/proto/aws/test_sns_shapes.py``
checks it member by member, names included, and the error table against the model's ``error``
traits.

Mobile push, SMS and data-protection actions are left out on purpose: Wharf answers them with
``InvalidAction`` (see the research notes, aws-messaging.md §1.3).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from proto.aws.errors import AwsError, common_error
from proto.aws.shapes import (
    BLOB,
    BOOLEAN,
    STRING,
    Item,
    ListOf,
    MapOf,
    MissingPath,
    Operation,
    Service,
    Structure,
    member,
)

__all__ = ["ERRORS", "OPERATIONS", "SNS", "sns_error"]

_TOPIC_ARN: Final = member(STRING, required=True)
_SUBSCRIPTION_ARN: Final = member(STRING, required=True)
_ATTRIBUTES: Final = MapOf(STRING)
_TAGS: Final = ListOf(
    Structure({"Key": member(STRING, required=True), "Value": member(STRING, required=True)})
)
_MESSAGE_ATTRIBUTES: Final = MapOf(
    Structure(
        {
            "DataType": member(STRING, required=True),
            "StringValue": member(STRING),
            "BinaryValue": member(BLOB),
        }
    ),
    key_wire="Name",
    value_wire="Value",
)
_SUBSCRIPTIONS: Final = Structure(
    {
        "Subscriptions": member(
            ListOf(
                Structure(
                    {
                        "SubscriptionArn": member(STRING),
                        "Owner": member(STRING),
                        "Protocol": member(STRING),
                        "Endpoint": member(STRING),
                        "TopicArn": member(STRING),
                    }
                )
            )
        ),
        "NextToken": member(STRING),
    }
)
_SUBSCRIPTION_ARN_RESULT: Final = Structure({"SubscriptionArn": member(STRING)})
_SET_ATTRIBUTE: Final = {
    "AttributeName": member(STRING, required=True),
    "AttributeValue": member(STRING),
}


def _op(
    name: str, input_shape: Structure, output_shape: Structure | None = None
) -> tuple[str, Operation]:
    return name, Operation(name, input_shape, output_shape)


OPERATIONS: Final[Mapping[str, Operation]] = dict(
    [
        _op(
            "AddPermission",
            Structure(
                {
                    "TopicArn": _TOPIC_ARN,
                    "Label": member(STRING, required=True),
                    "AWSAccountId": member(ListOf(STRING), required=True),
                    "ActionName": member(ListOf(STRING), required=True),
                }
            ),
        ),
        _op(
            "ConfirmSubscription",
            Structure(
                {
                    "TopicArn": _TOPIC_ARN,
                    "Token": member(STRING, required=True),
                    "AuthenticateOnUnsubscribe": member(STRING),
                }
            ),
            _SUBSCRIPTION_ARN_RESULT,
        ),
        _op(
            "CreateTopic",
            Structure(
                {
                    "Name": member(STRING, required=True),
                    "Attributes": member(_ATTRIBUTES),
                    "Tags": member(_TAGS),
                    "DataProtectionPolicy": member(STRING),
                }
            ),
            Structure({"TopicArn": member(STRING)}),
        ),
        _op("DeleteTopic", Structure({"TopicArn": _TOPIC_ARN})),
        _op(
            "GetSubscriptionAttributes",
            Structure({"SubscriptionArn": _SUBSCRIPTION_ARN}),
            Structure({"Attributes": member(_ATTRIBUTES)}),
        ),
        _op(
            "GetTopicAttributes",
            Structure({"TopicArn": _TOPIC_ARN}),
            Structure({"Attributes": member(_ATTRIBUTES)}),
        ),
        _op("ListSubscriptions", Structure({"NextToken": member(STRING)}), _SUBSCRIPTIONS),
        _op(
            "ListSubscriptionsByTopic",
            Structure({"TopicArn": _TOPIC_ARN, "NextToken": member(STRING)}),
            _SUBSCRIPTIONS,
        ),
        _op(
            "ListTagsForResource",
            Structure({"ResourceArn": member(STRING, required=True)}),
            Structure({"Tags": member(_TAGS)}),
        ),
        _op(
            "ListTopics",
            Structure({"NextToken": member(STRING)}),
            Structure(
                {
                    "Topics": member(ListOf(Structure({"TopicArn": member(STRING)}))),
                    "NextToken": member(STRING),
                }
            ),
        ),
        _op(
            "Publish",
            Structure(
                {
                    "TopicArn": member(STRING),
                    "TargetArn": member(STRING),
                    "PhoneNumber": member(STRING),
                    "Message": member(STRING, required=True),
                    "Subject": member(STRING),
                    "MessageStructure": member(STRING),
                    "MessageAttributes": member(_MESSAGE_ATTRIBUTES),
                    "MessageDeduplicationId": member(STRING),
                    "MessageGroupId": member(STRING),
                }
            ),
            Structure({"MessageId": member(STRING), "SequenceNumber": member(STRING)}),
        ),
        _op(
            "PublishBatch",
            Structure(
                {
                    "TopicArn": _TOPIC_ARN,
                    "PublishBatchRequestEntries": member(
                        ListOf(
                            Structure(
                                {
                                    "Id": member(STRING, required=True),
                                    "Message": member(STRING, required=True),
                                    "Subject": member(STRING),
                                    "MessageStructure": member(STRING),
                                    "MessageAttributes": member(_MESSAGE_ATTRIBUTES),
                                    "MessageDeduplicationId": member(STRING),
                                    "MessageGroupId": member(STRING),
                                }
                            )
                        ),
                        required=True,
                    ),
                }
            ),
            Structure(
                {
                    "Successful": member(
                        ListOf(
                            Structure(
                                {
                                    "Id": member(STRING),
                                    "MessageId": member(STRING),
                                    "SequenceNumber": member(STRING),
                                }
                            )
                        )
                    ),
                    "Failed": member(
                        ListOf(
                            Structure(
                                {
                                    "Id": member(STRING, required=True),
                                    "Code": member(STRING, required=True),
                                    "Message": member(STRING),
                                    "SenderFault": member(BOOLEAN, required=True),
                                }
                            )
                        )
                    ),
                }
            ),
        ),
        _op(
            "RemovePermission",
            Structure({"TopicArn": _TOPIC_ARN, "Label": member(STRING, required=True)}),
        ),
        _op(
            "SetSubscriptionAttributes",
            Structure({"SubscriptionArn": _SUBSCRIPTION_ARN, **_SET_ATTRIBUTE}),
        ),
        _op("SetTopicAttributes", Structure({"TopicArn": _TOPIC_ARN, **_SET_ATTRIBUTE})),
        _op(
            "Subscribe",
            Structure(
                {
                    "TopicArn": _TOPIC_ARN,
                    "Protocol": member(STRING, required=True),
                    "Endpoint": member(STRING),
                    "Attributes": member(_ATTRIBUTES),
                    "ReturnSubscriptionArn": member(BOOLEAN),
                }
            ),
            _SUBSCRIPTION_ARN_RESULT,
        ),
        _op(
            "TagResource",
            Structure(
                {"ResourceArn": member(STRING, required=True), "Tags": member(_TAGS, required=True)}
            ),
            Structure({}),
        ),
        _op("Unsubscribe", Structure({"SubscriptionArn": _SUBSCRIPTION_ARN})),
        _op(
            "UntagResource",
            Structure(
                {
                    "ResourceArn": member(STRING, required=True),
                    "TagKeys": member(ListOf(STRING), required=True),
                }
            ),
            Structure({}),
        ),
    ]
)

# Every SNS error shape: (query error code, HTTP status, sender fault), from the model's
# ``error`` traits. The JSON shape name is the key; SNS has no JSON protocol, but botocore maps
# the query code back to the modeled exception (client.exceptions.NotFoundException).
ERRORS: Final[Mapping[str, tuple[str, int, bool]]] = {
    "AuthorizationErrorException": ("AuthorizationError", 403, True),
    "BatchEntryIdsNotDistinctException": ("BatchEntryIdsNotDistinct", 400, True),
    "BatchRequestTooLongException": ("BatchRequestTooLong", 400, True),
    "ConcurrentAccessException": ("ConcurrentAccess", 400, True),
    "EmptyBatchRequestException": ("EmptyBatchRequest", 400, True),
    "EndpointDisabledException": ("EndpointDisabled", 400, True),
    "FilterPolicyLimitExceededException": ("FilterPolicyLimitExceeded", 403, True),
    "InternalErrorException": ("InternalError", 500, False),
    "InvalidBatchEntryIdException": ("InvalidBatchEntryId", 400, True),
    "InvalidParameterException": ("InvalidParameter", 400, True),
    "InvalidParameterValueException": ("ParameterValueInvalid", 400, True),
    "InvalidSecurityException": ("InvalidSecurity", 403, True),
    "InvalidStateException": ("InvalidState", 400, True),
    "KMSAccessDeniedException": ("KMSAccessDenied", 400, True),
    "KMSDisabledException": ("KMSDisabled", 400, True),
    "KMSInvalidStateException": ("KMSInvalidState", 400, True),
    "KMSNotFoundException": ("KMSNotFound", 400, True),
    "KMSOptInRequired": ("KMSOptInRequired", 403, True),
    "KMSThrottlingException": ("KMSThrottling", 400, True),
    "NotFoundException": ("NotFound", 404, True),
    "OptedOutException": ("OptedOut", 400, True),
    "PlatformApplicationDisabledException": ("PlatformApplicationDisabled", 400, True),
    "ReplayLimitExceededException": ("ReplayLimitExceeded", 403, True),
    "ResourceNotFoundException": ("ResourceNotFound", 404, True),
    "StaleTagException": ("StaleTag", 400, True),
    "SubscriptionLimitExceededException": ("SubscriptionLimitExceeded", 403, True),
    "TagLimitExceededException": ("TagLimitExceeded", 400, True),
    "TagPolicyException": ("TagPolicy", 400, True),
    "ThrottledException": ("Throttled", 429, True),
    "TooManyEntriesInBatchRequestException": ("TooManyEntriesInBatchRequest", 400, True),
    "TopicLimitExceededException": ("TopicLimitExceeded", 403, True),
    "UserErrorException": ("UserError", 400, True),
    "ValidationException": ("ValidationException", 400, True),
    # No error trait in the model: botocore falls back to the shape name; Smithy marks it a
    # client error.
    "VerificationException": ("VerificationException", 400, True),
}


def sns_error(shape: str, message: str) -> AwsError:
    """Build the :class:`AwsError` for an SNS error shape.

    Args:
        shape: a key of :data:`ERRORS`, e.g. ``"NotFoundException"``.
        message: the message, e.g. ``"Topic does not exist"``.

    Returns:
        The error with SNS's code, status and fault.

    Raises:
        KeyError: ``shape`` is not an SNS error shape (a bug in the caller).
    """
    code, status, sender_fault = ERRORS[shape]
    return AwsError(code, message, status=status, sender_fault=sender_fault, shape=shape)


def _missing_parameter(missing: Sequence[MissingPath]) -> AwsError:
    # SNS validates input the coral way: "1 validation error detected: Value null at
    # 'messageAttributes.attr1.member.dataType' failed to satisfy constraint: Member must not
    # be null", and "publishBatchRequestEntries.1.member.messageAttributes..." (LocalStack
    # SNS snapshot, recorded against AWS): member names in lowerCamelCase, a list element or
    # map value as its index or key and "member". Every violation is named, "; " between
    # them ("3 validation errors detected: ...", an AWS SDK exception's text).
    violations = [
        f"Value null at '{_coral_path(path)}' failed to satisfy constraint: Member must not be null"
        for path in missing
    ]
    count = len(violations)
    return common_error(
        "ValidationError",
        f"{count} validation error{'s' if count > 1 else ''} detected: {'; '.join(violations)}",
    )


def _coral_path(path: MissingPath) -> str:
    parts: list[str] = []
    for step in path:
        if isinstance(step, Item):
            parts += [step.key, "member"]
        else:
            parts.append(step[:1].lower() + step[1:])
    return ".".join(parts)


def _invalid_parameter(path: str, value: str) -> AwsError:
    return sns_error("InvalidParameterException", f"Invalid parameter: {path}")


SNS: Final = Service(
    name="sns",
    api_version="2010-03-31",
    xml_namespace="http://sns.amazonaws.com/doc/2010-03-31/",
    operations=OPERATIONS,
    missing_parameter=_missing_parameter,
    invalid_parameter=_invalid_parameter,
)
