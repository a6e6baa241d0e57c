"""The admin listener: ``/metrics``, ``/healthz``, ``/readyz`` and routes a daemon mounts.

``/healthz`` answers 200 while the process can serve HTTP at all (liveness). ``/readyz``
answers 200 only once every listener is bound and until the daemon starts draining, so a load
balancer in front stops sending work before the process goes away.

Requests that change state (every method but GET and HEAD: ``POST /reload``, the balancer's
targets API) are served to loopback clients only, as the broker's anonymous API is: an admin
listener on a network address must not let anyone who reaches it redirect traffic or reload
the daemon. A client on this host connecting to one of the host's own addresses counts as
loopback (the kernel routes it over ``lo``, and drops packets from outside that claim a
local source address): a balancer worker forwarding a change to its siblings is one. With
``admin.token_file`` set, such requests need ``Authorization: Bearer <token>`` instead, from
every client, loopback included. Without a token, a loopback request a web browser marks as its
own (``Origin``, ``Sec-Fetch-*``) is refused too: any page the host's browser opens could post
a form to the admin port. So is one carrying ``x-amz-sns-message-type``: the broker's SNS
delivery, a loopback client acting for whoever subscribed the admin port's URL. And so is one
a reverse proxy relayed (``X-Forwarded-For``, ``X-Forwarded-Proto``, ``Forwarded``): a
listener of this host's balancer forwarding to the admin port would connect from loopback for
any client of that listener. Refusals are 403 with a JSON body in the targets API's shape.
Reads (``/metrics``, ``/healthz``, ``/readyz``, ``GET /targets``) stay open.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Final

import trio

from monitoring import fastio
from monitoring.configfile import ConfigError
from monitoring.httpserver import Refusal, Request, Response, serve_http
from monitoring.lifecycle import Frame, Listener, bind_tcp
from monitoring.safefile import FileTooLarge, NotRegularFile, read_regular_file
from monitoring.settings import AdminSettings, HttpLimits

Route = Callable[[Request], Awaitable[Response]]
# Admin requests are small: a route that needs a bigger body (a targets API) is still far below.
ADMIN_MAX_BODY_BYTES = 1 << 20
# A token is a line of text; anything longer is the wrong file, not a token.
MAX_TOKEN_FILE_BYTES: Final = 4096
# RFC 6750 §2.1 b64token: the characters a bearer token can be sent with.
_BEARER_TOKEN: Final = re.compile(rb"[A-Za-z0-9\-._~+/]+=*")
_TOKEN_KEY: Final = "`$.admin.token_file`"
_READ_ONLY_METHODS: Final = frozenset({"GET"})  # HEAD is answered as GET
_SNS_DELIVERY: Final = b"x-amz-sns-message-type"  # on every SNS delivery POST, AWS's and ours
# What a reverse proxy adds to a request it relays (wharf-balancer: X-Forwarded-*, as ALB);
# an operator's own call (curl, a deploy script) sends none of them.
_PROXY_HEADERS: Final = (b"x-forwarded-for", b"x-forwarded-proto", b"forwarded")


def read_admin_token(settings: AdminSettings) -> bytes | None:
    """The bearer token ``admin.token_file`` holds (surrounding whitespace stripped), or
    None when no file is set.

    Raises:
        ConfigError: naming the token file, the key and the reason (unreadable, not a
            regular file, empty, or not a bearer token's characters).
    """
    path = settings.token_file
    if not path:
        return None

    def refused(reason: str) -> ConfigError:
        return ConfigError(path, f"{reason} - at {_TOKEN_KEY}")

    try:
        data = read_regular_file(path, MAX_TOKEN_FILE_BYTES)
    except FileTooLarge:
        raise refused(f"over {MAX_TOKEN_FILE_BYTES} bytes: a token file holds one token") from None
    except NotRegularFile as exc:
        raise refused(str(exc.strerror)) from None
    except OSError as exc:
        raise refused(f"cannot read: {exc.strerror or exc}") from None
    token = data.strip()
    if not token:
        raise refused("the token file is empty")
    if _BEARER_TOKEN.fullmatch(token) is None:
        raise refused(
            "the token may hold only letters, digits and - . _ ~ + / (then = signs), as a "
            "bearer token is sent (RFC 6750); `openssl rand -hex 32` makes one"
        )
    return token


def _error(status: int, code: str, message: str) -> Response:
    """An admin error in the targets API's shape: ``{"error": code, "message": ...}``."""
    body = json.dumps({"error": code, "message": message}).encode()
    return Response(status, body, content_type="application/json")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address as accept() gives it) is a loopback address: 127.0.0.0/8,
    ::1, or an IPv4-mapped 127.x address (a dual-stack socket's view of an IPv4 client)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def from_this_host(peer: str, local: str) -> bool:
    """Whether a connection from ``peer`` accepted on ``local`` comes from this host: over
    loopback, or from one of the host's own addresses to itself (routed over ``lo``; Linux
    drops packets from outside that claim a local source address)."""
    return is_loopback(peer) or peer == local


class AdminServer:
    """Routes admin requests. ``routes`` maps (method, path) to a handler."""

    def __init__(self, frame: Frame, routes: Mapping[tuple[str, str], Route] | None = None) -> None:
        self._frame = frame
        self._routes: dict[tuple[str, str], Route] = {
            ("GET", "/metrics"): self._metrics,
            ("GET", "/healthz"): self._healthz,
            ("GET", "/readyz"): self._readyz,
        }
        self._routes.update(routes or {})
        self._token: bytes | None = None

    def mount(self, method: str, path: str, route: Route) -> None:
        self._routes[(method, path)] = route

    def require_token(self, token: bytes | None) -> None:
        """Serve requests that change state only with ``Authorization: Bearer <token>``
        (None: only to loopback clients)."""
        self._token = token

    async def handle(self, request: Request, *, local_client: bool | None = None) -> Response:
        """Answer ``request``; ``local_client``: whether it came from this host (None: its
        address says, loopback or not)."""
        method = request.method.decode("ascii", "replace")
        if method == "HEAD":
            method = "GET"
        if method not in _READ_ONLY_METHODS:
            refusal = self._refusal(request, local_client)
            if refusal is not None:
                return refusal
        path = request.path
        route = self._routes.get((method, path))
        if route is not None:
            return await route(request)
        allowed = sorted(m for (m, p) in self._routes if p == path)
        if "GET" in allowed:
            allowed.insert(allowed.index("GET") + 1, "HEAD")  # served as GET, above
        if allowed:
            refused = _error(405, "MethodNotAllowed", f"{path} takes {', '.join(allowed)}")
            refused.headers.append(("allow", ", ".join(allowed)))
            return refused
        return _error(404, "NotFound", f"no admin route at {path}")

    def _refusal(self, request: Request, local_client: bool | None) -> Response | None:
        """The 403 for a request that may not change state, or None to serve it."""
        token = self._token
        if token is None:
            local = local_client if local_client is not None else is_loopback(request.client[0])
            sns_delivery = request.header(_SNS_DELIVERY) is not None
            proxied = any(request.header(name) is not None for name in _PROXY_HEADERS)
            if local and not (request.from_a_browser or sns_delivery or proxied):
                return None
            if local and proxied:
                # A proxy on this host (a balancer listener forwarding to this port, say)
                # connects from loopback for a client that may be anywhere.
                reason = "relayed"
                message = (
                    "a request relayed by a proxy (X-Forwarded-For, X-Forwarded-Proto or "
                    "Forwarded) may not change state: the proxy's loopback address is not the "
                    "client's; call the admin listener directly, or set admin.token_file and "
                    "send the bearer token"
                )
            elif local and sns_delivery:
                # The broker's own SNS delivery, from this host for a remote caller: anyone
                # allowed to Subscribe could aim an http subscription at this port (its
                # SubscriptionConfirmation POST would reload the daemon).
                reason = "sns_delivery"
                message = (
                    "an SNS delivery (x-amz-sns-message-type) may not change state; set "
                    "admin.token_file and send the bearer token instead"
                )
            elif local:
                # A web page's form post to the admin port (cross-site request forgery: it
                # needs no CORS preflight) would register its own targets or reload.
                reason = "browser"
                message = (
                    "requests from a web browser (Origin or Sec-Fetch-* headers) may not "
                    "change state; set admin.token_file and send the bearer token instead"
                )
            else:
                reason = "not_loopback"
                message = (
                    "requests that change state are served to loopback clients only; set "
                    "admin.token_file to accept them from others with a bearer token"
                )
        else:
            presented = _bearer_token(request.header(b"authorization"))
            # compare_digest: the time taken says nothing about how much of a guess matched.
            if presented is not None and hmac.compare_digest(presented, token):
                return None
            reason = "no_token" if presented is None else "wrong_token"
            message = (
                "requests that change state need Authorization: Bearer <the token in "
                "admin.token_file>"
                if presented is None
                else "the bearer token is not the admin token"
            )
        self._frame.log.info(
            "admin.request_refused",
            client=request.client[0],
            method=request.method.decode("ascii", "replace"),
            path=request.path,
            reason=reason,
        )
        return _error(403, "AccessDenied", message)

    async def _metrics(self, request: Request) -> Response:
        accept = request.header(b"accept")
        accept_encoding = request.header(b"accept-encoding")
        exposition = await self._frame.metrics.render(
            accept.decode("latin-1") if accept else None,
            accept_encoding.decode("latin-1") if accept_encoding else None,
        )
        # Caches between scraper and daemon must key the answer on both negotiations.
        headers = [("vary", "Accept, Accept-Encoding")]
        if exposition.content_encoding is not None:
            headers.append(("content-encoding", exposition.content_encoding))
        return Response(200, exposition.body, content_type=exposition.content_type, headers=headers)

    async def _healthz(self, request: Request) -> Response:
        return Response(200, b"ok\n")

    async def _readyz(self, request: Request) -> Response:
        if self._frame.ready and not self._frame.draining.started:
            return Response(200, b"ready\n")
        return Response(503, b"not ready\n")


def _bearer_token(authorization: bytes | None) -> bytes | None:
    """The token of an ``Authorization: Bearer <token>`` header (scheme case-insensitive)."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    return token.strip()


async def open_admin_listener(
    frame: Frame, settings: AdminSettings, limits: HttpLimits, server: AdminServer
) -> Listener:
    """Bind the admin address and return its listener, ready for ``frame.serve_listeners``.

    Raises:
        ConfigError: ``admin.token_file`` cannot be used (see :func:`read_admin_token`).
    """
    server.require_token(read_admin_token(settings))
    frame.use_admin_token = server.require_token  # a reload's token applies at once
    sockets = await bind_tcp(settings.host, settings.port)

    async def handle_connection(stream: trio.SocketStream) -> None:
        addresses = fastio.accepted_addresses(stream.socket)
        if addresses is None:
            return  # reset before it was served: nothing to answer, nothing to log
        peer, local = addresses
        await serve_http(
            stream,
            partial(server.handle, local_client=from_this_host(str(peer[0]), str(local[0]))),
            limits,
            client=(str(peer[0]), int(peer[1])),
            draining=frame.draining,
            on_error=partial(_report_error, frame),
            max_body_bytes=ADMIN_MAX_BODY_BYTES,
            on_refusal=_refusal_response,
        )

    return Listener(
        "admin",
        sockets,
        handle_connection,
        max_connections=limits.max_connections,
        serves_the_drain=True,  # /readyz says 503 while the daemon drains
    )


def _refusal_response(refusal: Refusal) -> Response:
    """408 and 413 in the JSON shape of the admin's other errors, as the README promises."""
    if refusal.status == 413:
        message = f"the body is over the admin API's {refusal.max_body_bytes} bytes"
        return _error(413, "RequestEntityTooLarge", message)
    return _error(refusal.status, "RequestTimeout", refusal.message.strip())


def _report_error(frame: Frame, exc: BaseException) -> None:
    frame.log.exception("admin.handler_failed", exc)
    frame.metrics.handler_errors.labels("admin").inc()
