"""The one error type of :mod:`broker.model`: an SQS error that already knows its wire answer."""

from __future__ import annotations

# The codes are the query-protocol (legacy) codes, which botocore reports as ``Error.Code`` for
# both protocols; the front end maps each to its JSON ``__type`` shape name.
INVALID_ATTRIBUTE_NAME = "InvalidAttributeName"
INVALID_ATTRIBUTE_VALUE = "InvalidAttributeValue"
INVALID_PARAMETER_VALUE = "InvalidParameterValue"
MISSING_PARAMETER = "MissingParameter"
INVALID_MESSAGE_CONTENTS = "InvalidMessageContents"
RECEIPT_HANDLE_IS_INVALID = "ReceiptHandleIsInvalid"
MESSAGE_NOT_INFLIGHT = "AWS.SimpleQueueService.MessageNotInflight"
PURGE_QUEUE_IN_PROGRESS = "AWS.SimpleQueueService.PurgeQueueInProgress"
QUEUE_ALREADY_EXISTS = "QueueAlreadyExists"
QUEUE_DELETED_RECENTLY = "AWS.SimpleQueueService.QueueDeletedRecently"
OVER_LIMIT = "OverLimit"


class SqsError(Exception):
    """A request that SQS would refuse, with the answer SQS would give.

    Attributes:
        code: the AWS error code (query-protocol spelling, e.g. ``InvalidParameterValue``).
        message: AWS's message text, where known.
        status: the HTTP status AWS uses for this error.
        sender_fault: True when the client is to blame (``Sender``), False for ``Receiver``.
    """

    def __init__(
        self, code: str, message: str, status: int = 400, sender_fault: bool = True
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.sender_fault = sender_fault

    def __eq__(self, other: object) -> bool:
        # Batch results carry errors as values; comparing them by content keeps tests simple.
        if not isinstance(other, SqsError):
            return NotImplemented
        return (self.code, self.message, self.status, self.sender_fault) == (
            other.code,
            other.message,
            other.status,
            other.sender_fault,
        )

    __hash__ = None  # type: ignore[assignment]


def invalid_parameter(parameter: str, value: object, reason: str) -> SqsError:
    """Build AWS's usual "Value X for parameter P is invalid. Reason: R." error.

    Args:
        parameter: the request parameter, e.g. ``VisibilityTimeout``.
        value: the offending value, echoed as AWS echoes it.
        reason: the sentence after ``Reason:`` (without the final period).

    Returns:
        An ``InvalidParameterValue`` error.
    """
    return SqsError(
        INVALID_PARAMETER_VALUE,
        f"Value {value} for parameter {parameter} is invalid. Reason: {reason}.",
    )


def invalid_attribute_value(name: str) -> SqsError:
    """Build AWS's error for an out-of-range or malformed queue attribute value.

    Args:
        name: the attribute name.

    Returns:
        An ``InvalidAttributeValue`` error.
    """
    return SqsError(INVALID_ATTRIBUTE_VALUE, f"Invalid value for the parameter {name}.")


def unknown_attribute(name: str) -> SqsError:
    """Build AWS's error for an attribute name the queue does not have.

    Args:
        name: the attribute name as the client sent it.

    Returns:
        An ``InvalidAttributeName`` error.
    """
    return SqsError(INVALID_ATTRIBUTE_NAME, f"Unknown Attribute {name}.")
