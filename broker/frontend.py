"""The API front end: HTTP request -> service, protocol, caller, action -> HTTP response.

One listener serves SQS in both of its wire protocols: awsJson1_0 (``X-Amz-Target:
AmazonSQS.<Action>``, what current SDKs send) and the query protocol (``Action=...`` form
posts or GET query strings, what older SDKs send, possibly to the queue URL's path). Every
failure leaves in the shape its protocol expects, so SDKs raise the exception they would
raise against AWS.
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
import time
from collections.abc import Callable
from typing import Final, Protocol

from broker.auth import Authenticator, Caller
from broker.metrics import BrokerMetrics
from broker.model.errors import SqsError
from broker.registry import QUEUE_DOES_NOT_EXIST
from broker.sqs import RequestContext, SqsApi
from broker.store.base import StoreFailed
from monitoring.httpserver import Request, Response
from monitoring.logging import EventLog
from monitoring.settings import url_host_port
from proto.aws import json_protocol, query_protocol
from proto.aws.errors import COMMON_ERRORS, AwsError, common_error
from proto.aws.shapes import EncodedResponse, Service, check_required, normalize_output
from proto.aws.sqs_shapes import SQS

JSON_TARGET_PREFIX: Final = "AmazonSQS."
NON_EXISTENT_QUEUE: Final = "AWS.SimpleQueueService.NonExistentQueue"
QUEUE_DOES_NOT_EXIST_QUERY: Final = "The specified queue does not exist for this wsdl version."
# A form's ``Action`` field, read from the raw bytes to label a request refused before its
# decoding named the action (operation names are plain letters, never percent-encoded).
_FORM_ACTION: Final = re.compile(rb"(?:^|&)Action=([A-Za-z]{1,64})(?=&|$)")
_SHAPE_OF_LEGACY_CODE: Final = {
    code: shape for shape, (code, _status) in json_protocol.SQS_ERRORS.items()
}


def aws_error(error: SqsError) -> AwsError:
    """The wire form of a model error: its JSON shape found from its legacy query code.

    A modelled shape answers with the model's HTTP status (ReceiptHandleIsInvalid: 404), so
    the table in ``json_protocol`` is the one place that decides it.
    """
    shape = _SHAPE_OF_LEGACY_CODE.get(error.code)
    status = error.status
    if shape is None:
        shape = COMMON_ERRORS[error.code][0] if error.code in COMMON_ERRORS else error.code
    else:
        status = json_protocol.SQS_ERRORS[shape][1]
    return AwsError(
        error.code,
        error.message,
        status=status,
        sender_fault=error.sender_fault,
        shape=shape,
    )


def request_ids() -> Callable[[], str]:
    """A source of request ids: UUID-shaped, unique, and cheap.

    ``uuid.uuid4()`` per request reads ``os.urandom``, which releases the GIL, so every id
    handed the GIL to the store's writer thread and the event loop waited to get it back.
    These ids are 74 random bits per source followed by a 48-bit counter that starts
    at a random value: distinct for 2**48 requests, unrelated across processes and restarts,
    and rendered in the version-4 layout (``xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx``).
    """
    bits = secrets.randbits(74)
    # 32 + 16 bits, the version nibble, 12 bits, the variant (10xx), 14 bits.
    prefix = (
        f"{bits >> 48:08x}-{(bits >> 32) & 0xFFFF:04x}-4{(bits >> 20) & 0xFFF:03x}-"
        f"{0x8000 | ((bits >> 6) & 0x3FFF):04x}-"
    )
    counter = itertools.count(secrets.randbits(47))
    return lambda: f"{prefix}{next(counter) & 0xFFFF_FFFF_FFFF:012x}"


# The message actions' results are built in their output shape's normal form by sqs.py
# (_send_result, _message, _handle_batch), and answering them is most of the broker's work:
# their JSON answers skip the output check, 1 µs of the ~40 µs a received and deleted message
# costs. The test suite sets WHARF_CHECK_OUTPUTS=1, which checks them too and so proves the
# claim for every result the tests produce: a result that is not in normal form answers 500.
UNCHECKED_OUTPUTS: Final = frozenset(
    {
        "SendMessage",
        "SendMessageBatch",
        "ReceiveMessage",
        "DeleteMessageBatch",
        "ChangeMessageVisibilityBatch",
    }
)
CHECK_EVERY_OUTPUT: Final = os.environ.get("WHARF_CHECK_OUTPUTS") == "1"
_SEND_ACTIONS: Final = frozenset({"SendMessage", "SendMessageBatch"})


def _check_normal_form(service: Service, action: str, result: dict[str, object] | None) -> None:
    output = service.operations[action].output
    if output is not None and result and normalize_output(output, result) != result:
        raise common_error("InternalFailure", f"{action}'s result is not in normal form.")


class _Codec:
    """One wire protocol's encoders, bound to SQS."""

    def __init__(self, name: str, service: Service, *, json: bool) -> None:
        self.name = name
        self.service = service
        self.json = json

    def response(self, action: str, result: dict[str, object] | None, rid: str) -> EncodedResponse:
        if not self.json:
            return query_protocol.encode_response(self.service, action, result, request_id=rid)
        if action in UNCHECKED_OUTPUTS:
            if CHECK_EVERY_OUTPUT:
                _check_normal_form(self.service, action, result)
            return json_protocol.encode_response(
                self.service, action, result, request_id=rid, checked=False
            )
        return json_protocol.encode_response(self.service, action, result, request_id=rid)

    def error(self, error: AwsError, rid: str) -> EncodedResponse:
        if self.json:
            return json_protocol.encode_error(self.service, error, request_id=rid)
        if error.code == NON_EXISTENT_QUEUE and error.message == QUEUE_DOES_NOT_EXIST:
            # The query protocol's own wording, which older SDKs' users match on.
            error = AwsError(
                error.code,
                QUEUE_DOES_NOT_EXIST_QUERY,
                status=error.status_hint,
                sender_fault=error.sender_fault,
                shape=error.shape,
            )
        return query_protocol.encode_error(self.service, error, request_id=rid)


JSON_SQS = _Codec("json", SQS, json=True)
QUERY_SQS = _Codec("query", SQS, json=False)


class ServiceRouter(Protocol):
    """Another service on the same listener (:class:`broker.sns_http.SnsFrontend`)."""

    async def route(self, request: Request, authenticator: Authenticator) -> Response | None:
        """Answer the request if it is this service's, else return None."""


_API_METHODS: Final = frozenset({b"GET", b"POST"})


class Frontend:
    """Turns HTTP requests into SQS actions and their results back into HTTP responses.

    Requests the ``sns`` router claims (SigV4 scope ``sns``, SNS actions) are answered by it.
    """

    def __init__(
        self,
        *,
        sqs: SqsApi,
        authenticator: Authenticator,
        metrics: BrokerMetrics,
        log: EventLog,
        public_url: str,
        scheme: str = "http",
        new_request_id: Callable[[], str] | None = None,
        sns: ServiceRouter | None = None,
        admit: Callable[[str, int], None] | None = None,
    ) -> None:
        self.sqs = sqs
        self.sns = sns
        self.authenticator = authenticator
        self.metrics = metrics
        self.log = log
        self.public_url = public_url
        self.scheme = scheme  # of queue URLs built from the Host header: https behind TLS
        self._new_request_id = new_request_id or request_ids()
        self._admit = admit  # raises AwsError to refuse an action (broker.disk_space)

    async def handle(self, request: Request) -> Response:
        if request.method not in _API_METHODS:
            # AWS documents GET and POST for the query API (POST for JSON). A HEAD would run
            # its action and drop the answer (a ReceiveMessage hiding messages), and a
            # browser's CORS preflight (OPTIONS) would run the action it asks leave for.
            started = time.perf_counter()
            codec = JSON_SQS if request.header(b"x-amz-target") is not None else QUERY_SQS
            method = request.method.decode("latin-1")
            refusal = AwsError(
                "InvalidHttpMethod",
                f"The HTTP method {method} is not supported: the API takes GET and POST.",
                status=405,
            )
            request_id = self._new_request_id()
            response = http_response(codec.error(refusal, request_id))
            response.headers.append(("allow", "GET, POST"))
            # Counted as every answered request is (no action: "Unknown"), so HEAD probes or
            # a flood of preflights show on the dashboards.
            account_request(
                self.metrics, self.log, "sqs", "Unknown", 405, started, request, request_id, refusal
            )
            return response
        if self.sns is not None:
            routed = await self.sns.route(request, self.authenticator)
            if routed is not None:
                return routed
        started = time.perf_counter()
        request_id = self._new_request_id()
        target = request.header(b"x-amz-target")
        codec = JSON_SQS if target is not None else QUERY_SQS
        action = "Unknown"
        try:
            caller = self.authenticator.authenticate(
                request, region=self.sqs.registry.region, service="sqs"
            )
            action, params = self._decode(codec, request, target)
            if self._admit is not None:
                self._admit(action, len(request.body))
            context = RequestContext(
                base_url=self._base_url(request),
                caller=caller,
                action=action,
                path=request.path,
                # This listener's own TLS, not a header a client could set: a proxy that
                # terminates TLS in front of the broker makes every request look plain.
                secure=self.scheme == "https",
                source_ip=request.client[0],
                # A send's bodies are checked character by character, unless the JSON shows
                # them plain: one scan of the request instead (a batch holds ten bodies).
                plain_text=codec.json
                and action in _SEND_ACTIONS
                and json_protocol.plain_text(request.body),
                peer=request.peer,  # a long poll ends when its client goes
            )
            result = await self.sqs.handle(action, params, context)
            encoded = codec.response(action, result, request_id)
            failure = None
        except SqsError as error:
            failure = aws_error(error)
        except AwsError as error:
            failure = error
        except StoreFailed:
            # Logged once by the broker, which is stopping; SDKs retry a 503 elsewhere or later.
            failure = store_unavailable()
        except Exception as exc:
            # A bug: log it with the request id the client got, answer like AWS would.
            self.log.exception("api.handler_failed", exc, action=action, request_id=request_id)
            failure = common_error("InternalFailure", f"Internal error (request {request_id}).")
        if failure is not None:
            encoded = codec.error(failure, request_id)
            if action == "Unknown":
                # Refused before the decoding named it (a missing or malformed parameter, a
                # bad signature): still counted under the operation the request names.
                action = _named_action(codec, request, target)
        account_request(
            self.metrics,
            self.log,
            "sqs",
            action,
            encoded.status,
            started,
            request,
            request_id,
            failure,
        )
        return http_response(encoded)

    def _decode(
        self, codec: _Codec, request: Request, target_header: bytes | None
    ) -> tuple[str, dict[str, object]]:
        """The action and parameters; ``target_header``: the request's X-Amz-Target, if any."""
        if codec.json:
            target = (target_header or b"").decode("latin-1").strip()
            if not target.startswith(JSON_TARGET_PREFIX):
                raise common_error(
                    "InvalidAction", f"The action {target!r} is not valid for this web service."
                )
            decoded = json_protocol.decode_request(
                codec.service, headers=request.headers, body=request.body
            )
        else:
            decoded = query_protocol.decode_request(
                codec.service, body=request.body, query=request.query
            )
        params = dict(decoded.params)
        if "QueueUrl" not in params and request.path.count("/") == 2 and not codec.json:
            # Older SDKs post query requests to the queue URL itself instead of naming it.
            params["QueueUrl"] = self._base_url(request) + request.path
        operation = codec.service.operations[decoded.action]
        check_required(codec.service, operation.input, params)
        return decoded.action, params

    def _base_url(self, request: Request) -> str:
        if self.public_url:
            return self.public_url
        host = (request.header(b"host") or b"").decode("latin-1").strip()
        if not host and request.local is not None:  # HTTP/1.0 without Host: where it came
            host = url_host_port(*request.local)
        return f"{self.scheme}://{host or 'localhost'}"


def _named_action(codec: _Codec, request: Request, target: bytes | None) -> str:
    """The SQS operation a request names (its X-Amz-Target, else its form's ``Action``), or
    ``Unknown``: the metric's label for a request refused before it was decoded. Only the
    model's operation names, so a client cannot add label values."""
    name = ""
    if codec.json:
        prefix, _, name = (target or b"").decode("latin-1").strip().partition(".")
        if prefix + "." != JSON_TARGET_PREFIX:
            return "Unknown"
    else:
        for source in (request.query, request.body):
            found = _FORM_ACTION.search(source)
            if found is not None:
                name = found[1].decode("ascii")
                break
    return name if name in codec.service.operations else "Unknown"


def store_unavailable() -> AwsError:
    """The answer to a request the failed store cannot serve (see ``StoreFailed``)."""
    return common_error(
        "ServiceUnavailable",
        "The broker's store failed and the broker is restarting; retry the request.",
    )


def account_request(
    metrics: BrokerMetrics,
    log: EventLog,
    service: str,
    action: str,
    status: int,
    started: float,
    request: Request,
    request_id: str,
    failure: AwsError | None,
) -> None:
    """Count an answered API request, and log it at debug level (one line per request)."""
    seconds = time.perf_counter() - started
    metrics.observe_request(service, action, status, seconds)
    if log.enabled("debug"):
        log.debug(
            "api.request",
            service=service,
            action=action,
            status=status,
            error=None if failure is None else failure.code,
            request_id=request_id,
            client=request.client[0],
            duration_ms=round(seconds * 1000, 3),
        )


def caller_summary(caller: Caller) -> str:
    return "anonymous" if caller.anonymous else caller.principal_arn


def http_response(encoded: EncodedResponse) -> Response:
    """An encoded AWS response as the HTTP server sends it (Content-Type kept apart)."""
    content_type = ""
    headers: list[tuple[str, str]] = []
    for name, value in encoded.headers:
        if name.lower() == "content-type":
            content_type = value
        else:
            headers.append((name, value))
    return Response(encoded.status, encoded.body, content_type=content_type, headers=headers)
