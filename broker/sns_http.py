"""SNS on the API listener: which requests are SNS's, who calls, the query wire, the certificate.

One listener serves SQS and SNS (ARCHITECTURE.md). :class:`SnsFrontend` claims a request when

- it is a GET of a signing certificate's path (``[sns] signing_cert_path``, or a
  SigningCertURL's: :class:`~broker.sns_keys.SigningKeys`);
- it is signed and its SigV4 credential scope names ``sns`` (an awsJson request, with
  ``X-Amz-Target``, too: it gets SNS's ``InvalidAction``, as SNS has no JSON protocol);
- it is unsigned, without ``X-Amz-Target``, and its ``Action`` is SNS's alone, or one both
  services have (AddPermission, RemovePermission) with a ``TopicArn``.

Anything else goes on to SQS. Unsigned ConfirmSubscription and Unsubscribe requests are let
through even when signatures are required: they are what a subscriber's GET of SubscribeURL
and UnsubscribeURL sends, and AWS accepts them (Unsubscribe unless the subscription was
confirmed with AuthenticateOnUnsubscribe). Errors leave in SNS's query-protocol XML shape.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final
from urllib.parse import unquote_plus

from broker.auth import Authenticator, Caller
from broker.frontend import account_request, http_response, request_ids, store_unavailable
from broker.metrics import BrokerMetrics
from broker.model.sns_errors import SnsError
from broker.sns import SnsApi, SnsContext
from broker.sns_keys import SigningKeys
from broker.store.base import StoreFailed
from monitoring.httpserver import Request, Response
from monitoring.logging import EventLog
from monitoring.settings import url_host_port
from proto.aws import query_protocol, sigv4
from proto.aws.errors import AwsError, common_error
from proto.aws.shapes import check_required
from proto.aws.sns_shapes import ERRORS, OPERATIONS, SNS, sns_error
from proto.aws.sqs_shapes import SQS

SHARED_ACTIONS: Final = frozenset(OPERATIONS) & frozenset(SQS.operations)
# The SNS API's actions Wharf leaves out (issue 4): mobile push, SMS and data protection.
OUT_OF_SCOPE_ACTIONS: Final = frozenset(
    {
        "CreatePlatformApplication",
        "CreatePlatformEndpoint",
        "DeleteEndpoint",
        "DeletePlatformApplication",
        "GetEndpointAttributes",
        "GetPlatformApplicationAttributes",
        "ListEndpointsByPlatformApplication",
        "ListPlatformApplications",
        "SetEndpointAttributes",
        "SetPlatformApplicationAttributes",
        "CheckIfPhoneNumberIsOptedOut",
        "GetSMSAttributes",
        "ListPhoneNumbersOptedOut",
        "OptInPhoneNumber",
        "SetSMSAttributes",
        "CreateSMSSandboxPhoneNumber",
        "DeleteSMSSandboxPhoneNumber",
        "GetSMSSandboxAccountStatus",
        "ListOriginationNumbers",
        "ListSMSSandboxPhoneNumbers",
        "VerifySMSSandboxPhoneNumber",
        "GetDataProtectionPolicy",
        "PutDataProtectionPolicy",
    }
)
SNS_ONLY_ACTIONS: Final = (frozenset(OPERATIONS) - SHARED_ACTIONS) | OUT_OF_SCOPE_ACTIONS
UNSIGNED_ACTIONS: Final = frozenset({"ConfirmSubscription", "Unsubscribe"})
PEM_CONTENT_TYPE: Final = "application/x-pem-file"
_PEEK_FIELDS: Final = 200  # Action and TopicArn come early; never parse a whole hostile body


def out_of_scope(action: str) -> AwsError:
    """The answer to an SNS action Wharf does not implement: clear, and AWS-shaped."""
    return common_error(
        "InvalidAction",
        f"The action {action} is out of scope for Wharf: it serves SNS topics with SQS and "
        "HTTP/HTTPS subscriptions; mobile push, SMS, e-mail and data-protection actions are "
        "not implemented.",
    )


def json_protocol_refusal(target: str) -> AwsError:
    """The answer to an awsJson request (``X-Amz-Target``) signed for SNS.

    SNS speaks only the query protocol (its botocore model declares no other); the request is
    SNS's all the same, so it gets SNS's error, not SQS's UnknownOperationException.
    """
    return common_error(
        "InvalidAction",
        f"The action {target} is not valid for this web service: SNS takes the query "
        "protocol (an Action parameter), not X-Amz-Target.",
    )


def wire_error(error: SnsError) -> AwsError:
    """The query-protocol error of a model error."""
    if error.shape in ERRORS:
        return sns_error(error.shape, error.message)
    return AwsError(error.code, error.message, status=error.status)


class SnsFrontend:
    """Claims and answers the API listener's SNS requests."""

    def __init__(
        self,
        api: SnsApi,
        keys: SigningKeys,
        *,
        metrics: BrokerMetrics,
        log: EventLog,
        region: str,
        public_url: str,
        scheme: str = "http",
        new_request_id: Callable[[], str] | None = None,
        admit: Callable[[str, int], None] | None = None,
    ) -> None:
        self.api = api
        self._admit = admit  # raises AwsError to refuse an action (broker.disk_space)
        self.keys = keys
        self.metrics = metrics
        self.log = log
        self.region = region
        self.public_url = public_url
        self.scheme = scheme
        # Not uuid4: its os.urandom releases the GIL mid-request (see request_ids).
        self._new_request_id = new_request_id or request_ids()

    async def route(self, request: Request, authenticator: Authenticator) -> Response | None:
        """Answer ``request`` if it is SNS's; None hands it on to SQS."""
        if request.method in (b"GET", b"HEAD"):
            certificate = self.keys.certificate_at(request.path)
            if certificate is not None:
                return Response(200, certificate, content_type=PEM_CONTENT_TYPE)
        try:
            scope = sigv4.peek_scope(headers=request.headers, query=request.query)
        except sigv4.SigV4Error:
            return None  # SQS answers the malformed signature as it always has
        action = ""
        if scope is not None:
            if scope.service != "sns":
                return None  # signed for SQS, X-Amz-Target (awsJson) or not
        elif request.header(b"x-amz-target") is not None:
            return None  # unsigned awsJson: SQS's protocol, as SNS has none
        else:
            fields = _peek(request)
            action = fields.get("Action", "")
            shared = action in SHARED_ACTIONS and "TopicArn" in fields
            if action not in SNS_ONLY_ACTIONS and not shared:
                return None
        return await self._handle(request, authenticator, action, signed=scope is not None)

    async def _handle(
        self, request: Request, authenticator: Authenticator, action: str, *, signed: bool
    ) -> Response:
        started = time.perf_counter()
        request_id = self._new_request_id()
        action = action or "Unknown"
        try:
            caller, authenticated = self._authenticate(request, authenticator, action, signed)
            target = request.header(b"x-amz-target")
            if target is not None:
                raise json_protocol_refusal(target.decode("latin-1"))
            try:
                decoded = query_protocol.decode_request(SNS, body=request.body, query=request.query)
            except AwsError as error:
                named = _peek(request).get("Action", "")
                if error.code == "InvalidAction" and named in OUT_OF_SCOPE_ACTIONS:
                    raise out_of_scope(named) from None
                raise
            action = decoded.action
            check_required(SNS, SNS.operations[action].input, decoded.params)
            if self._admit is not None:
                self._admit(action, len(request.body))
            context = SnsContext(
                base_url=self._base_url(request),
                caller=caller,
                action=action,
                authenticated=authenticated,
                secure=self.scheme == "https",
                source_ip=request.client[0],
            )
            result = await self.api.handle(action, decoded.params, context)
            encoded = query_protocol.encode_response(SNS, action, result, request_id=request_id)
            failure = None
        except SnsError as error:
            failure = wire_error(error)
        except AwsError as error:
            failure = error
        except StoreFailed:  # logged once by the broker, which is stopping
            failure = store_unavailable()
        except Exception as exc:
            # A bug: log it with the request id the client got, answer like AWS would.
            self.log.exception("api.handler_failed", exc, action=action, request_id=request_id)
            failure = sns_error("InternalErrorException", f"Internal error ({request_id}).")
        if failure is not None:
            encoded = query_protocol.encode_error(SNS, failure, request_id=request_id)
        account_request(
            self.metrics,
            self.log,
            "sns",
            action,
            encoded.status,
            started,
            request,
            request_id,
            failure,
        )
        return http_response(encoded)

    def _authenticate(
        self, request: Request, authenticator: Authenticator, action: str, signed: bool
    ) -> tuple[Caller, bool]:
        """The caller, and whether the request proved who it is (a signature)."""
        try:
            caller = authenticator.authenticate(request, region=self.region, service="sns")
        except sigv4.SigV4Error:
            if signed or action not in UNSIGNED_ACTIONS or _asks_protection(request, action):
                raise
            # A subscriber following SubscribeURL or UnsubscribeURL: no credentials, by design.
            anonymous = Caller.account_root(authenticator.account_id, service="sns", anonymous=True)
            return anonymous, False
        return caller, signed

    def _base_url(self, request: Request) -> str:
        if self.public_url:
            return self.public_url
        host = (request.header(b"host") or b"").decode("latin-1").strip()
        if not host and request.local is not None:  # HTTP/1.0 without Host: where it came
            host = url_host_port(*request.local)
        return f"{self.scheme}://{host or 'localhost'}"


def _asks_protection(request: Request, action: str) -> bool:
    """Whether an unsigned request is a ConfirmSubscription with AuthenticateOnUnsubscribe.

    "This call requires an AWS signature only when the AuthenticateOnUnsubscribe flag is set
    to true" (ConfirmSubscription): refused unsigned, not confirmed with the flag dropped, which
    would leave the endpoint owner believing its subscription protected.
    """
    if action != "ConfirmSubscription":
        return False
    return _peek(request).get("AuthenticateOnUnsubscribe", "").lower() == "true"


def _peek(request: Request) -> dict[str, str]:
    """The first form fields of an unsigned request (query string, then body), leniently.

    Bounded: only the first fields are split off, however large the body (``Action`` and
    ``TopicArn`` come first from every SDK).
    """
    fields: dict[str, str] = {}
    for source in (request.query, request.body):
        for part in source.split(b"&", _PEEK_FIELDS)[:_PEEK_FIELDS]:
            key, _, value = part.partition(b"=")
            name = unquote_plus(key.decode("utf-8", "replace"))
            fields.setdefault(name, unquote_plus(value.decode("utf-8", "replace")))
    return fields
