"""The awsJson 1.0 protocol as SQS speaks it: requests in, responses and errors out.

A request is ``POST`` with ``Content-Type: application/x-amz-json-1.0``, the action in
``X-Amz-Target: AmazonSQS.<Action>`` and the input as a JSON object (Smithy "AWS JSON 1.0
protocol"; botocore ``serialize.py`` ``JSONSerializer``). A success is the output as a JSON
object. An error is a JSON object with ``__type`` (the error shape, ``com.amazonaws.sqs#...``)
and ``message``; because SQS moved from the query protocol ("awsQueryCompatible"), an error also
carries ``x-amzn-query-error: <legacy code>;Sender|Receiver``, which botocore and the JS v3 SDK
read to report the code older clients saw (``AWS.SimpleQueueService.NonExistentQueue``) while
still raising the modeled exception (``QueueDoesNotExist``). See "Interpreting Amazon SQS JSON
API responses" in the SQS Developer Guide and botocore ``parsers.py``
``_do_query_compatible_error_parse``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

import msgspec

from proto.aws.errors import AwsError, common_error
from proto.aws.shapes import (
    DecodedRequest,
    EncodedResponse,
    Operation,
    Service,
    from_json,
    normalize_output,
)

__all__ = [
    "CONTENT_TYPE",
    "SQS_ERRORS",
    "decode_request",
    "encode_error",
    "encode_response",
    "sqs_error",
]

CONTENT_TYPE: Final = "application/x-amz-json-1.0"

# Every SQS error shape and the legacy query-protocol code and HTTP status it answers with:
# the Smithy model's ``aws.protocols#awsQueryError`` traits (as generated into
# aws-sdk-js-v3 clients/client-sqs/src/schemas/schemas_0.ts), which agree with the ``error``
# traits of botocore's last query-protocol SQS model (1.31.80) wherever both exist. Shapes
# without the trait answer with their own name and 400. botocore 1.44's JSON model keeps only
# the shape names, and tests/proto/aws/test_json_protocol.py checks that this table covers
# exactly those. All are client errors ("Sender").
SQS_ERRORS: Final[Mapping[str, tuple[str, int]]] = {
    "BatchEntryIdsNotDistinct": ("AWS.SimpleQueueService.BatchEntryIdsNotDistinct", 400),
    "BatchRequestTooLong": ("AWS.SimpleQueueService.BatchRequestTooLong", 400),
    "EmptyBatchRequest": ("AWS.SimpleQueueService.EmptyBatchRequest", 400),
    "InvalidAddress": ("InvalidAddress", 404),
    "InvalidAttributeName": ("InvalidAttributeName", 400),
    "InvalidAttributeValue": ("InvalidAttributeValue", 400),
    "InvalidBatchEntryId": ("AWS.SimpleQueueService.InvalidBatchEntryId", 400),
    "InvalidIdFormat": ("InvalidIdFormat", 400),
    "InvalidMessageContents": ("InvalidMessageContents", 400),
    "InvalidSecurity": ("InvalidSecurity", 403),
    "KmsAccessDenied": ("KMS.AccessDeniedException", 400),
    "KmsDisabled": ("KMS.DisabledException", 400),
    "KmsInvalidKeyUsage": ("KMS.InvalidKeyUsageException", 400),
    "KmsInvalidState": ("KMS.InvalidStateException", 400),
    "KmsNotFound": ("KMS.NotFoundException", 400),
    "KmsOptInRequired": ("KMS.OptInRequired", 403),
    "KmsThrottled": ("KMS.ThrottlingException", 400),
    "MessageNotInflight": ("AWS.SimpleQueueService.MessageNotInflight", 400),
    "OverLimit": ("OverLimit", 403),
    "PurgeQueueInProgress": ("AWS.SimpleQueueService.PurgeQueueInProgress", 403),
    "QueueDeletedRecently": ("AWS.SimpleQueueService.QueueDeletedRecently", 400),
    "QueueDoesNotExist": ("AWS.SimpleQueueService.NonExistentQueue", 400),
    "QueueNameExists": ("QueueAlreadyExists", 400),
    "ReceiptHandleIsInvalid": ("ReceiptHandleIsInvalid", 404),
    "RequestThrottled": ("RequestThrottled", 403),
    "ResourceNotFoundException": ("ResourceNotFoundException", 404),
    "TooManyEntriesInBatchRequest": ("AWS.SimpleQueueService.TooManyEntriesInBatchRequest", 400),
    "UnsupportedOperation": ("AWS.SimpleQueueService.UnsupportedOperation", 400),
}

_DECODER: Final = msgspec.json.Decoder()
# An escaped UTF-16 surrogate (``\ud800``-``\udfff``): RFC 8259 §8.2 lets a JSON string hold
# an unpaired one, and JavaScript's JSON.stringify writes one for a string that has it.
# msgspec refuses such text as malformed; the stdlib's decoder keeps the lone surrogate in
# the str, so that the service refuses it as it refuses any character it may not store.
_SURROGATE_ESCAPE: Final = re.compile(rb"\\u[dD][89abcdefABCDEF]")
_TARGET_HEADER: Final = "x-amz-target"
_ENCODER: Final = msgspec.json.Encoder()


def sqs_error(shape: str, message: str) -> AwsError:
    """Build the :class:`AwsError` for an SQS error shape, for either protocol.

    Args:
        shape: a key of :data:`SQS_ERRORS`, e.g. ``"QueueDoesNotExist"``.
        message: e.g. ``"The specified queue does not exist."``.

    Returns:
        The error with its legacy code, HTTP status and shape.

    Raises:
        KeyError: ``shape`` is not an SQS error shape (a bug in the caller).
    """
    code, status = SQS_ERRORS[shape]
    return AwsError(code, message, status=status, sender_fault=True, shape=shape)


def _operation(service: Service, action: str) -> Operation:
    operation = service.operations.get(action)
    if operation is None:
        raise common_error("InternalFailure", f"No such {service.name} action {action!r}.")
    return operation


def decode_request(
    service: Service, *, headers: Iterable[tuple[str | bytes, str | bytes]], body: bytes
) -> DecodedRequest:
    """Decode an awsJson 1.0 request into the action and its parameters.

    Parameters come back in the shape both protocol decoders share (blobs as ``bytes``);
    members the model does not know, and ``null`` members, are dropped. Required members are
    not checked here (see :func:`proto.aws.shapes.check_required`).

    Args:
        service: the service the request is for (``sqs_shapes.SQS``).
        headers: the request headers; only ``X-Amz-Target`` is read.
        body: the request body; empty means ``{}``.

    Returns:
        The action name and the decoded parameters.

    Raises:
        AwsError: ``MissingAction`` without an ``X-Amz-Target`` header; ``InvalidAction`` for
            a target that is not ``<prefix>.<known action>``; ``SerializationException`` for a
            body that is not a JSON object or does not fit the action's input shape.
    """
    targets = [
        (value.decode("latin-1") if isinstance(value, bytes) else value).strip()
        for name, value in headers
        # The length first (latin-1 keeps it): most names are not even 12 characters long.
        if len(name) == len(_TARGET_HEADER)
        and (name.decode("latin-1") if isinstance(name, bytes) else name).lower() == _TARGET_HEADER
    ]
    if not targets:
        raise common_error("MissingAction", "The request must contain the X-Amz-Target header.")
    prefix, _, action = targets[0].partition(".")
    if len(targets) > 1 or prefix != service.target_prefix or action not in service.operations:
        raise common_error(
            "InvalidAction", f"The action {targets[0]!r} is not valid for this web service."
        )
    try:
        data = _DECODER.decode(body) if body.strip() else {}
    except msgspec.DecodeError as exc:
        if _SURROGATE_ESCAPE.search(body) is None:
            raise common_error("SerializationException", f"Malformed JSON body: {exc}") from None
        data = _decode_with_lone_surrogates(body, exc)
    except RecursionError:  # msgspec's own depth limit
        raise common_error(
            "SerializationException", "Malformed JSON body: nested too deeply"
        ) from None
    params = from_json(service.operations[action].input, data, "")
    return DecodedRequest(action, params)


def _decode_with_lone_surrogates(body: bytes, refusal: msgspec.DecodeError) -> Any:
    """Decode, with the stdlib, a body that msgspec refused and that escapes a surrogate.

    The stdlib accepts what msgspec does, and more on three points, refused here as msgspec
    refuses them: a UTF-16 or UTF-32 body (it is given the body as UTF-8 text), ``NaN`` and
    ``Infinity``, and numbers beyond a double's range. A body it refuses too gets msgspec's
    reason, ``refusal``.
    """
    try:
        return json.loads(
            body.decode("utf-8"), parse_constant=_refuse_constant, parse_float=_finite_float
        )
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise common_error("SerializationException", f"Malformed JSON body: {refusal}") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    number = float(text)
    if math.isinf(number):
        raise ValueError("number out of range")
    return number


def plain_text(body: bytes) -> bool:
    """Tell whether every string ``body`` decodes to holds only ASCII from space up, tab, LF, CR.

    True when the body is ASCII and writes no ``\\u``, ``\\b`` or ``\\f`` escape: JSON allows no
    raw control character in a string, and the other escapes stand for ``"``, ``\\``, ``/``,
    LF, CR and tab. (False says nothing.) A SendMessageBatch of plain text is then known to
    hold only characters a message body may have, without a scan of each body.

    Args:
        body: an awsJson request body (one that decodes, or this does not matter).
    """
    if not body.isascii():
        return False
    if b"\\" not in body:  # no escape at all (a body without quotes or line breaks)
        return True
    return b"\\u" not in body and b"\\b" not in body and b"\\f" not in body


def _headers(request_id: str) -> list[tuple[str, str]]:
    return [("Content-Type", CONTENT_TYPE), ("x-amzn-RequestId", request_id)]


def encode_response(
    service: Service,
    action: str,
    result: Mapping[str, Any] | None,
    *,
    request_id: str,
    checked: bool = True,
) -> EncodedResponse:
    """Encode a handler's result as an awsJson 1.0 success response.

    Args:
        service: the service.
        action: the action that produced the result.
        result: the output values (``None`` or ``{}`` for actions with no output); ``bytes``
            values leave as base64 strings, ``None`` members are left out.
        request_id: goes in ``x-amzn-RequestId``.
        checked: False to encode ``result`` as it is, for a caller that builds it in the
            output shape's normal form already (no ``None`` members, ``bytes`` blobs), where
            the check would only copy it: the JSON is the same, since its member order does
            not matter to any JSON reader.

    Returns:
        Status 200, headers and body. Actions without an output get an empty body, as SQS
        sends ("an HTTP 200 response with an empty HTTP body", TagQueue API reference).

    Raises:
        AwsError: ``InternalFailure`` if the action is unknown or the result does not fit its
            output shape (a bug in the handler).
    """
    operation = _operation(service, action)
    if operation.output is None:
        if result:
            raise common_error("InternalFailure", f"{action} has no output, got {list(result)}.")
        return EncodedResponse(200, _headers(request_id), b"")
    value = normalize_output(operation.output, result or {}) if checked else result or {}
    return EncodedResponse(200, _headers(request_id), _encode(value))


def encode_error(service: Service, error: AwsError, *, request_id: str) -> EncodedResponse:
    """Encode an :class:`AwsError` as an awsJson 1.0 error response.

    Args:
        service: the service (its ``json_namespace`` prefixes ``__type``; a query-compatible
            service also gets ``x-amzn-query-error``).
        error: the error.
        request_id: goes in ``x-amzn-RequestId``.

    Returns:
        The error's status, headers and ``{"__type": ..., "message": ...}`` body.

    Raises:
        Nothing.
    """
    shape = f"{service.json_namespace}#{error.shape}" if service.json_namespace else error.shape
    headers = _headers(request_id)
    if service.query_compatible:
        headers.append(("x-amzn-query-error", f"{error.code};{error.fault}"))
    body = _encode({"__type": shape, "message": error.message})
    return EncodedResponse(error.status_hint, headers, body)


def _encode(value: Any) -> bytes:
    """``value`` as JSON; a lone surrogate in a str is written as its ``\\u`` escape.

    Only a request can bring one (see ``_SURROGATE_ESCAPE``), and answers echo what was
    refused (an error's message names the value, a batch entry's failure too): msgspec
    cannot write it, so the stdlib writes it back as the client escaped it.
    """
    try:
        return _ENCODER.encode(value)
    except UnicodeEncodeError:
        return json.dumps(msgspec.to_builtins(value), separators=(",", ":")).encode()
