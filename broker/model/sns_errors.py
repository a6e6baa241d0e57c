"""The one error type of the SNS half of :mod:`broker.model`: an error that knows its wire answer.

The codes are SNS's query-protocol codes (SNS speaks only the query protocol), the ones the
botocore model's ``error`` traits name and :data:`proto.aws.sns_shapes.ERRORS` lists; the front
end turns an :class:`SnsError` into an ``AwsError`` with ``sns_error`` by shape name.
"""

from __future__ import annotations

from typing import Final

INVALID_PARAMETER: Final = "InvalidParameter"  # InvalidParameterException, 400
INVALID_PARAMETER_VALUE: Final = "ParameterValueInvalid"  # InvalidParameterValueException, 400
NOT_FOUND: Final = "NotFound"  # NotFoundException, 404
FILTER_POLICY_LIMIT_EXCEEDED: Final = "FilterPolicyLimitExceeded"  # 403

# code -> the modeled shape name the front end passes to ``sns_error``.
SHAPES: Final = {
    INVALID_PARAMETER: "InvalidParameterException",
    INVALID_PARAMETER_VALUE: "InvalidParameterValueException",
    NOT_FOUND: "NotFoundException",
    FILTER_POLICY_LIMIT_EXCEEDED: "FilterPolicyLimitExceededException",
}


class SnsError(Exception):
    """A request that SNS would refuse, with the answer SNS would give.

    Attributes:
        code: the AWS error code (query-protocol spelling, e.g. ``InvalidParameter``).
        message: AWS's message text, where known.
        status: the HTTP status AWS uses for this error.
    """

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status

    @property
    def shape(self) -> str:
        """The modeled error shape (``InvalidParameterException``...), for ``sns_error``."""
        return SHAPES.get(self.code, self.code)

    def __eq__(self, other: object) -> bool:
        # Batch results carry errors as values; comparing them by content keeps tests simple.
        if not isinstance(other, SnsError):
            return NotImplemented
        return (self.code, self.message, self.status) == (other.code, other.message, other.status)

    __hash__ = None  # type: ignore[assignment]


def invalid_parameter(detail: str) -> SnsError:
    """Build SNS's usual ``InvalidParameter`` error: "Invalid parameter: <detail>".

    Args:
        detail: what follows ``Invalid parameter:``, e.g. ``"AttributeName"`` or
            ``"FilterPolicy: Filter policy is too complex"``.

    Returns:
        The error.
    """
    return SnsError(INVALID_PARAMETER, f"Invalid parameter: {detail}")


def attribute_error(detail: str, *, in_attributes_map: bool) -> SnsError:
    """Build the error for a bad attribute, worded as the calling action words it.

    AWS words the same fault two ways (LocalStack snapshots recorded against AWS,
    ``test_sns_filter_policy.snapshot.json``): Subscribe and CreateTopic, which take an
    ``Attributes`` map, say "Invalid parameter: Attributes Reason: FilterPolicy: ..."; the
    Set*Attributes actions, which take one name and value, say "Invalid parameter: FilterPolicy:
    ...".

    Args:
        detail: the reason, starting with the attribute name (``"FilterPolicy: ..."``).
        in_attributes_map: True for Subscribe/CreateTopic, False for Set*Attributes.

    Returns:
        An ``InvalidParameter`` error.
    """
    prefix = "Attributes Reason: " if in_attributes_map else ""
    return invalid_parameter(prefix + detail)


def not_found(what: str) -> SnsError:
    """Build AWS's ``NotFound`` error, e.g. ``not_found("Topic")`` -> "Topic does not exist".

    Args:
        what: ``"Topic"`` or ``"Subscription"``.

    Returns:
        A 404 ``NotFound`` error.
    """
    return SnsError(NOT_FOUND, f"{what} does not exist", status=404)


def filter_policy_limit_exceeded() -> SnsError:
    """Build the error for a filter policy beyond the topic's quota (200 by default).

    The code and status are the model's (``FilterPolicyLimitExceededException``, 403); AWS's
    message text has not been recorded anywhere public, so this one is Wharf's.

    Returns:
        A 403 ``FilterPolicyLimitExceeded`` error.
    """
    return SnsError(FILTER_POLICY_LIMIT_EXCEEDED, "Filter policy limit exceeded", status=403)
