"""The AWS error value that handlers raise and both protocol encoders render.

An :class:`AwsError` carries everything a response needs, so an encoder never looks anything up:

- ``code``: the error code the *query* protocol puts in ``<Code>`` and botocore reports as
  ``Error.Code`` (for SQS the legacy code, e.g. ``AWS.SimpleQueueService.NonExistentQueue``);
- ``shape``: the modeled error shape the *JSON* protocol puts in ``__type``
  (e.g. ``QueueDoesNotExist``); it equals ``code`` for errors that have no separate shape;
- ``status_hint``: the HTTP status; ``sender_fault``: ``Sender`` or ``Receiver`` in ``<Type>``
  and in the ``x-amzn-query-error`` header.

Service-specific tables build these values: ``proto.aws.json_protocol.sqs_error`` for SQS and
``proto.aws.sns_shapes.sns_error`` for SNS. The errors every AWS service shares (signature,
throttling, missing parameters) are in :data:`COMMON_ERRORS` here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from proto.errors import ProtocolError

__all__ = ["COMMON_ERRORS", "AwsError", "common_error"]


class AwsError(ProtocolError):
    """An error response, rendered by ``json_protocol.encode_error`` or ``query_protocol``.

    Attributes:
        code: the query-protocol error code (``Error.Code`` in botocore).
        message: the human-readable message.
        status_hint: the HTTP status code.
        sender_fault: True for ``Sender`` (client) faults, False for ``Receiver`` faults.
        shape: the JSON ``__type`` shape name (without namespace).
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int = 400,
        sender_fault: bool = True,
        shape: str | None = None,
    ) -> None:
        super().__init__(message, status_hint=status, code=code)
        self.sender_fault = sender_fault
        self.shape = shape or code

    @property
    def fault(self) -> str:
        """``Sender`` or ``Receiver``, the spelling both wire formats use."""
        return "Sender" if self.sender_fault else "Receiver"

    def __repr__(self) -> str:
        return (
            f"AwsError({self.code!r}, {self.message!r}, status={self.status_hint}, "
            f"sender_fault={self.sender_fault}, shape={self.shape!r})"
        )


# The errors "common to the API actions of all AWS services", with their HTTP status, from
# https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/CommonErrors.html.
# The value is (JSON shape name, HTTP status, sender fault). Three codes have a different shape
# name in SQS's JSON protocol (LocalStack SqsJsonResponseSerializer.JSON_TO_QUERY_ERROR_CODES,
# recorded against AWS): InvalidParameterValue, MissingParameter and AccessDenied.
# SignatureDoesNotMatch and UnknownOperationException are not on that page: the first is what
# SQS answers for a bad or expired signature (aws-sdk-js#401 quotes "SignatureDoesNotMatch:
# Signature expired: ..."); the second is the awsJson name for an unknown X-Amz-Target.
# AccessDenied is listed there with 400, but the service answers 403 Forbidden (the raw
# response in aws-sdk-php#1623; SDK v3's httpStatusCode 403 in island-is/island.is#7812),
# and clients treat a 403 as a permission problem not to retry.
COMMON_ERRORS: Final[Mapping[str, tuple[str, int, bool]]] = {
    "AccessDenied": ("AccessDeniedException", 403, True),
    "IncompleteSignature": ("IncompleteSignature", 400, True),
    "InternalFailure": ("InternalFailure", 500, False),
    "InvalidAction": ("UnknownOperationException", 400, True),
    "InvalidClientTokenId": ("InvalidClientTokenId", 403, True),
    "InvalidParameterCombination": ("InvalidParameterCombination", 400, True),
    "InvalidParameterValue": ("InvalidParameterValueException", 400, True),
    "InvalidQueryParameter": ("InvalidQueryParameter", 400, True),
    "MalformedQueryString": ("MalformedQueryString", 404, True),
    "MissingAction": ("UnknownOperationException", 400, True),
    "MissingAuthenticationToken": ("MissingAuthenticationToken", 403, True),
    "MissingParameter": ("MissingRequiredParameterException", 400, True),
    "NotAuthorized": ("NotAuthorized", 400, True),
    "OptInRequired": ("OptInRequired", 403, True),
    "RequestExpired": ("RequestExpired", 400, True),
    "SerializationException": ("SerializationException", 400, True),
    "ServiceUnavailable": ("ServiceUnavailable", 503, False),
    "SignatureDoesNotMatch": ("SignatureDoesNotMatch", 403, True),
    "ThrottlingException": ("ThrottlingException", 400, True),
    "ValidationError": ("ValidationError", 400, True),
}


def common_error(code: str, message: str) -> AwsError:
    """Build the :class:`AwsError` for one of the :data:`COMMON_ERRORS`.

    Args:
        code: a key of :data:`COMMON_ERRORS`, e.g. ``"MissingParameter"``.
        message: the message for the client.

    Returns:
        The error, with its JSON shape, status and fault filled in.

    Raises:
        KeyError: ``code`` is not a common error (a bug in the caller).
    """
    shape, status, sender_fault = COMMON_ERRORS[code]
    return AwsError(code, message, status=status, sender_fault=sender_fault, shape=shape)
