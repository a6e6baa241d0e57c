"""What the API listener answers for requests its HTTP server refuses (408, 413, 431, 503).

:func:`monitoring.httpserver.serve_http` refuses a request that stalls (408) or whose body is
over ``api.max_request_bytes`` (413) before any handler sees it; :class:`ApiRefusals` is its
``on_refusal`` hook on the API listener, so these answers look like AWS's:

- **413, body over the limit.** AWS answers this one from its HTTP front end, before SQS or SNS
  parse the request, and not in either protocol's shape: status 413 with the plain-text line
  ``HTTP content length exceeded 1662976 bytes.`` and no request id (aws-sdk-js#479,
  spring-cloud-aws#111 and #156, subscribepro-magento2-ext#280, the last one in 2024). We send
  the same line with our limit. SDKs report it as they report AWS's: botocore's JSON clients as
  an error with code ``413``, its query clients (and the JS and PHP SDKs) as a response they
  cannot parse. (A *message* over a queue's MaximumMessageSize is not this: the request is
  read and SendMessage answers ``InvalidParameterValue``.)
- **408, a request that stalls.** AWS documents no SQS or SNS answer (its servers just close
  such connections); the client gets an error in its protocol's shape with S3's code and
  message for the case, ``RequestTimeout``, which the AWS SDKs treat as transient and retry:
  JSON with ``x-amzn-query-error`` for awsJson requests (``X-Amz-Target``), an XML
  ``ErrorResponse`` in SNS's namespace for requests signed for ``sns``, and SQS's XML
  otherwise (also when the head had not arrived: the query protocol is the default).
- **431, a head over ``api.max_header_bytes``.** Neither SQS nor SNS documents one either: the
  same protocol-shaped error, with S3's code and message for it,
  ``RequestHeaderSectionTooLarge`` (a query string counts: it is in the head), so that every
  SDK reads it as an error rather than as a response it cannot parse.
- **503, no room for the body.** The request bodies all connections hold at once are bounded
  by ``api.max_buffered_request_bytes``; a request whose body does not fit is answered before
  it is read with ``ServiceUnavailable`` in the request's protocol, as AWS answers its own
  transient overloads: every AWS SDK retries it with backoff (botocore's legacy and standard
  modes retry 503 whatever the code).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from broker.frontend import http_response, request_ids
from monitoring.httpserver import Refusal, Response
from proto.aws import json_protocol, query_protocol, sigv4
from proto.aws.errors import AwsError, common_error
from proto.aws.sns_shapes import SNS
from proto.aws.sqs_shapes import SQS

TOO_LARGE_STATUS: Final = 413
REQUEST_TIMEOUT_CODE: Final = "RequestTimeout"
HEAD_TOO_LARGE_CODE: Final = "RequestHeaderSectionTooLarge"
HEAD_TOO_LARGE_MESSAGE: Final = "Your request header section exceeds the maximum allowed size."
REQUEST_TIMEOUT_MESSAGE: Final = (
    "Your socket connection to the server was not read from or written to within the timeout "
    "period."
)
NO_ROOM_MESSAGE: Final = (
    "The broker is receiving as many request bodies as it may hold at once; retry the request."
)


def too_large_body(max_body_bytes: int) -> bytes:
    """The line AWS's front end sends with its 413, for our limit."""
    return f"HTTP content length exceeded {max_body_bytes} bytes.\n".encode()


class ApiRefusals:
    """The ``on_refusal`` hook of the API listener (see the module docstring)."""

    def __init__(self, new_request_id: Callable[[], str] | None = None) -> None:
        """Create the hook.

        Args:
            new_request_id: source of request ids for the protocol-shaped errors.
        """
        self._new_request_id = new_request_id or request_ids()

    def __call__(self, refusal: Refusal) -> Response:
        """Return the answer to ``refusal``."""
        if refusal.status == TOO_LARGE_STATUS:
            return Response(TOO_LARGE_STATUS, too_large_body(refusal.max_body_bytes))
        if refusal.status == 503:
            error = common_error("ServiceUnavailable", NO_ROOM_MESSAGE)
        else:
            if refusal.status == 431:
                code, message = HEAD_TOO_LARGE_CODE, HEAD_TOO_LARGE_MESSAGE
            else:
                code, message = REQUEST_TIMEOUT_CODE, REQUEST_TIMEOUT_MESSAGE
            error = AwsError(code, message, status=refusal.status, sender_fault=True)
        request_id = self._new_request_id()
        if refusal.header(b"x-amz-target") is not None:
            encoded = json_protocol.encode_error(SQS, error, request_id=request_id)
        elif _signed_for_sns(refusal):
            encoded = query_protocol.encode_error(SNS, error, request_id=request_id)
        else:
            encoded = query_protocol.encode_error(SQS, error, request_id=request_id)
        return http_response(encoded)


def _signed_for_sns(refusal: Refusal) -> bool:
    query = (refusal.target or b"").partition(b"?")[2]
    try:
        scope = sigv4.peek_scope(headers=refusal.headers, query=query)
    except sigv4.SigV4Error:
        return False
    return scope is not None and scope.service == "sns"
