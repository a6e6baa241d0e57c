"""The HTTP listener: one task per client connection, requests handled in order.

Per connection (h11 server side)::

    wait for a request (idle timeout; cancelled at once when the daemon drains)
    read its head (header timeout, size and count limits) -> classify (desync) -> route
    forward | redirect | fixed-response      (balancer.listeners.forward for forwards)
    metrics + access log line
    keep-alive: next cycle; pipelined requests already buffered are served in order

A request runs on the runtime snapshot that is current when its head is complete and
keeps it to the end; the next request on the same connection takes the then current one.
The TLS shell hands its decrypted stream to :meth:`HttpListenerHandler.serve`.

What the client sees from the balancer itself: 400 for a malformed or refused (desync)
request, then close; 408 when the head or body does not arrive in time; 400 for a
request line, head or header count over the limits; 502/503/504 from the forward path;
463 (ALB's) when a trusted proxy's X-Forwarded-For lists more than 30 addresses; 405 to
TRACE, and to a CONNECT routed to a redirect or a 2xx fixed response; 502
(``Draining``) to a request still in flight when a drain's grace period ends (SIGTERM, or
its listener removed by a reload: the frame cancels the connection); and a silent close
when the client idles out. A client that goes away before its response is
logged with ALB's 460. Every desync refusal is logged at info (``http.desync_refused``)
with its classification, whether h11 or :mod:`proto.http1` refused it.
"""

from __future__ import annotations

import time
from typing import Final

import h11
import trio

from balancer.access_log import AccessEntry
from balancer.config import AccessLog, FixedResponse, Forward, Redirect
from balancer.listeners.exchange import (
    MAX_DISCARD_BYTES,
    Client,
    ClientGone,
    ClientInfo,
    Exchange,
    ListenerServices,
    respond,
)
from balancer.listeners.forward import BadRequestBody, forward, is_trusted, linger_if_unread
from balancer.listeners.http_metrics import NO_GROUP
from balancer.rules import RequestView, redirect_status, render_redirect
from balancer.runtime import ListenerRuntime, Snapshot
from balancer.upstream import tune_socket
from monitoring import fastio
from proto.http1 import (
    CLASSIFIED_NAMES,
    LOOKALIKE_MIN_LENGTH,
    TRACE_ID,
    Action,
    Classification,
    Verdict,
    classify_head,
    classify_headers,
    classify_parse_error,
    first_header,
    forwarded_for_overflow,
    head_end,
    header_list,
    is_lookalike,
    loggable_parse_error,
    names_a_host,
    origin_form,
    parsed_headers,
    trace_header,
)

# Extra connections accepted past the listener's limit only to be answered 503 and closed,
# so an overloaded listener says so instead of leaving clients in the backlog.
REJECT_HEADROOM: Final = 64
WRITE_TIMEOUT_SECONDS: Final = 10.0  # bound on writing the balancer's own short answers
# Bound on writing the 502 of a request cut when a drain's grace period ends: the stop is
# waiting (a client that reads nothing must not hold it up).
CUT_ANSWER_SECONDS: Final = 1.0
# What a request cycle leaves the connection to do: serve the next request, drop the rest
# of this one's body first, or close.
_NEXT: Final = 0
_DISCARD: Final = 1
_STOP: Final = 2


class HttpListenerHandler:
    """Serves the connections of one HTTP listener (by name, across config generations)."""

    def __init__(self, services: ListenerServices) -> None:
        self.services = services
        # Cancel scopes of connections waiting for their next request: draining cancels
        # them all at once (a plain set: cheaper per request than Draining.idle()).
        self.idle: set[trio.CancelScope] = set()
        services.draining.on_start(self._close_idle)

    def _close_idle(self) -> None:
        for scope in list(self.idle):
            scope.cancel()

    async def handle(self, stream: trio.SocketStream) -> None:
        """The lifecycle frame's connection handler for a plain HTTP listener."""
        sock = stream.socket
        addresses = fastio.accepted_addresses(sock)
        if addresses is None:  # reset before it was served: nothing to answer or log
            self.services.stats.connection_not_served(self.services.name)  # but a TCP one
            return
        peer, local = addresses
        tune_socket(sock)
        info = ClientInfo(str(peer[0]), int(peer[1]), int(local[1]), local_ip=str(local[0]))
        await self.serve(stream, info)

    async def serve(
        self, stream: trio.abc.Stream, info: ClientInfo, *, counted: bool = False
    ) -> None:
        """Serve one connection's requests until it closes (TLS streams come in here).

        Args:
            counted: the connection is counted already (a TLS one is, from its TCP accept:
                ALB's ActiveConnectionCount and NewConnectionCount count TCP connections).
        """
        services = self.services
        listener = services.runtime.current.listeners.get(services.name)
        if listener is None:
            return  # the listener left the configuration; the app is closing its socket
        limits = listener.config.limits
        stats = services.stats
        client = Client(stream, info, limits.request_header_bytes)
        if stats.active.get(services.name, 0) - counted >= limits.connections:
            stats.rejected_connection(services.name)
            if not counted:  # a TLS connection was counted at its TCP accept
                stats.connection_not_served(services.name)
            with trio.move_on_after(WRITE_TIMEOUT_SECONDS):
                try:
                    await respond(client, None, 503, b"too many connections\n", close=True)
                except ClientGone:
                    pass
            # Answered as a request (ALB's HTTPCode_ELB_5XX_Count), so counted and logged as
            # one: nothing of it was read, the 503 is its bytes.
            _book_headless(
                services,
                client,
                listener.config.access_log,
                503,
                client.received,
                client.sent,
                error_reason="TooManyConnections",
                conn_trace_id=services.new_connection_trace_id(),
            )
            return
        if not counted:
            stats.connection_opened(services.name)
        try:
            await _Connection(services, client, self.idle).run()
        finally:
            if not counted:
                stats.connection_closed(services.name)


MAX_REDIRECT_URL_CHARS: Final = 8192  # ALB: "larger than 8K" fails the redirect
_LINE_ENDS: Final = (b"\r", b"\n")
# The body of a refusal found while reading a head, by error reason (else a size limit's).
_HEAD_REFUSALS: Final = {
    "UnsupportedHttpVersion": b"HTTP version not supported\n",
    "InvalidHostHeader": b"bad host header\n",
    "MethodNotAllowed": b"TRACE is not supported\n",
}


def _is_cancellation(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(trio.Cancelled)[1] is None
    return isinstance(exc, trio.Cancelled)


class _Connection:
    """One client connection's request loop.

    Each request cycle runs under a cancel scope, from the idle wait for its first byte to
    its last response byte: its deadline moves from the idle timeout to the header timeout
    to the request's own phases (``Exchange.wait_for``), and ``phase`` says which wait a
    timeout cut, once the scope has unwound. Requests that follow one another without
    trouble share one scope (moving a deadline costs less than entering and leaving a
    scope); a timeout ends the connection, and a cycle that must leave the scope (a body
    to drop, a deadline that passed just after its wait ended) takes a fresh one.
    """

    __slots__ = (
        "client",
        "ex",
        "head_start",
        "idle",
        "opened",
        "phase",
        "served",
        "services",
        "trace_id",
    )

    def __init__(
        self, services: ListenerServices, client: Client, idle: set[trio.CancelScope]
    ) -> None:
        self.services = services
        self.client = client
        self.idle = idle
        self.phase = "idle"  # before an Exchange exists: idle, then header
        self.head_start = 0  # where the head being read began in client.received
        self.ex: Exchange | None = None  # the current cycle's request, once its head is read
        self.served = 0
        self.opened = client.now()  # for the client keepalive duration
        # ALB's conn_trace_id: one per client connection, on every request line it carries.
        self.trace_id = services.new_connection_trace_id()

    async def run(self) -> None:
        try:
            await self._serve()
        except BaseException as exc:
            # The frame cancels every connection left when a drain's grace period ends
            # (SIGTERM, or this listener removed by a reload): a request still in flight is
            # answered, logged and counted as cut, then the cancellation goes on. A tunnel's
            # cancellation comes out of its pumps' nursery as a group of them.
            ex = self.ex
            if ex is not None and self.services.draining.started and _is_cancellation(exc):
                await self._cut_by_drain(ex)
            raise

    async def _serve(self) -> None:
        client = self.client  # client.conn is replaced when empty lines are skipped
        while True:
            scope = trio.CancelScope()
            step = _STOP
            with scope:
                while True:
                    step = await self._cycle(scope)
                    if step != _NEXT:
                        break
                    client.conn.start_next_cycle()
                    if scope.cancel_called:
                        # A deadline passed after the last wait had ended: that request is
                        # served, and the next one gets a scope of its own.
                        break
            ex = self.ex
            if scope.cancelled_caught:  # a deadline, or draining during the idle wait
                if ex is None:  # cut while reading the head
                    if self.phase == "header":
                        await self._head_timed_out()
                    return
                await self._timed_out(ex)  # the connection closes after it
                self.served += 1
                self._finish(ex)
                return
            if step == _STOP:
                return
            if step == _DISCARD:
                assert ex is not None
                try:
                    kept = await self._discard_body(ex)
                finally:
                    self._finish(ex)  # booked now: ALB counts the dropped body's bytes
                if not kept:
                    return
                client.conn.start_next_cycle()

    async def _cycle(self, scope: trio.CancelScope) -> int:
        """Read and answer one request: _NEXT when the connection may carry another,
        _DISCARD when it may once the rest of the request body is dropped, else _STOP."""
        services = self.services
        listener = services.runtime.current.listeners.get(services.name)
        if listener is None:
            return _STOP  # the listener left the configuration
        scope.deadline = self.client.now() + listener.config.idle_timeout_seconds
        self.phase = "idle"
        self.ex = None
        try:
            ex = await self._read_request(scope, listener)
        except ClientGone:
            return _STOP
        if ex is None:
            return _STOP
        self.ex = ex
        try:
            await self._handle(ex)
        except ClientGone:  # gone while we answered it ourselves (a refusal, a 400)
            ex.close_after = True
        self.served += 1
        step = self._reusable(ex)
        if step == _STOP:
            # Closing with unread bytes would reset the connection, and a client still
            # uploading could lose the answer: a lingering close first.
            await linger_if_unread(self.client, ex)
        if step != _DISCARD:  # else booked once the rest of its body is dropped
            self._finish(ex, closing=step == _STOP)
        return step

    # Reading a request ---------------------------------------------------------------------

    async def _read_request(
        self, scope: trio.CancelScope, listener: ListenerRuntime
    ) -> Exchange | None:
        """The next request's head, or None when the connection should close."""
        client = self.client
        conn = client.conn
        config = listener.config
        raw = conn.trailing_data[0]  # a pipelined request's first bytes, usually b""
        # Where this request's bytes begin in the client's count: ALB's processed and
        # received bytes include the request line and headers.
        start_received = client.received - len(raw)
        if raw[:1] in _LINE_ENDS:
            raw = client.skip_empty_lines(raw)
            conn = client.conn
        while not raw:
            # Nothing of the next request yet: the idle timeout runs, and draining closes
            # the connection at once (no work is lost). A connection accepted just before
            # the stop still has its first request answered; one whose request was in
            # flight when the stop began closes now instead of waiting for another.
            if self.served and self.services.draining.started:
                return None
            self.idle.add(scope)
            try:
                raw = await client.receive_next(checkpoint=self.served > 0)
            finally:
                self.idle.discard(scope)
            if not raw:
                return None
            if raw[:1] in _LINE_ENDS:  # counted as this request's bytes, as ALB would
                raw = client.skip_empty_lines(raw)
                conn = client.conn
            else:
                conn.receive_data(raw)
        self.phase = "header"
        self.head_start = start_received
        timed = False
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                if not conn.trailing_data[1]:  # else the client hung up mid-head: no attack
                    await self._refuse_unparsed(listener, exc, raw, start_received)
                return None
            if event is h11.NEED_DATA:
                if not timed:  # a head in pieces: the header timeout runs from now
                    scope.deadline = trio.current_time() + config.timeouts.request_header_seconds
                    timed = True
                data = await client.receive()
                conn.receive_data(data)
                raw += data
                continue
            if isinstance(event, h11.Request):
                # The request runs on the generation current now that its head is here
                # (a reload may have happened while the connection idled).
                current = self.services.runtime.current
                listener = current.listeners.get(self.services.name, listener)
                return self._exchange(scope, current, listener, event, raw, start_received)
            return None  # ConnectionClosed: the client is done

    def _exchange(
        self,
        guard: trio.CancelScope,
        snapshot: Snapshot,
        listener: ListenerRuntime,
        request: h11.Request,
        raw: bytes | bytearray,
        start_received: int,
    ) -> Exchange:
        services = self.services
        limits = listener.config.limits
        headers = header_list(request.headers)
        # The request line as the client sent it (without CRLF), before an absolute-form
        # target is rewritten to the shorter origin-form one.
        line_bytes = len(request.method) + len(request.target) + 10
        # The headers the client sent: a Host the balancer adds below (an HTTP/1.0 request
        # without one) is not the client's to count against limits.header_count.
        header_count = len(headers)
        if request.target[:1] != b"/" and b"://" in request.target:
            # An absolute-form target; any other URI (ftp://, http:///x) is in none of the
            # request-target forms, which classify_head below refuses (BadUri).
            rewritten = origin_form(request.target, headers, request.method)
            if rewritten is not None:
                target, headers = rewritten
                request = h11.Request(
                    method=request.method,
                    target=target,
                    headers=parsed_headers(headers),
                    http_version=request.http_version,
                    _parsed=True,  # h11 parsed the target's bytes and every field already
                )
        elif request.http_version == b"1.0" and first_header(headers, b"host") is None:
            # As ALB: a Host of the balancer's own address, for the rules, redirects and logs.
            headers.insert(0, (b"host", self.client.host_header))
        has_framing = classified = False
        host = b""
        for name, value in headers:
            if name == b"host":
                host = value
            elif name in CLASSIFIED_NAMES or (
                len(name) >= LOOKALIKE_MIN_LENGTH and is_lookalike(name)
            ):
                classified = True
                if name == b"content-length" or name == b"transfer-encoding":
                    has_framing = True
        end = head_end(raw)
        head = raw[: end if end >= 0 else len(raw)]
        verdict = classify_head(head, framing=has_framing)
        if classified:  # without any of these names, classify_headers finds nothing
            by_headers = classify_headers(request.method, headers, request.http_version)
            if by_headers.classification > verdict.classification:
                verdict = by_headers
        ex = Exchange(
            snapshot,
            listener,
            request,
            started=self.client.now(),
            client=self.client,
            guard=guard,
            headers=headers,
            verdict=verdict,
            start_received=start_received,
        )
        ex.head_bytes = len(head)
        # ALB answers 400 to every request over its size limits (not 414 or 431).
        if len(head) > limits.request_header_bytes:
            ex.error_reason = "RequestHeaderTooLarge"
            ex.status = 400
        elif line_bytes > limits.request_line_bytes:
            ex.error_reason = "RequestLineTooLong"
            ex.status = 400
        elif len(head) > limits.header_field_bytes and any(
            len(name) + len(value) + 2 > limits.header_field_bytes for name, value in headers
        ):  # no field can be longer than the whole head: most requests skip the scan
            ex.error_reason = "HeaderFieldTooLarge"
            ex.status = 400
        elif header_count > limits.header_count:
            ex.error_reason = "TooManyHeaders"
            ex.status = 400
        elif request.http_version[:2] != b"1.":  # 1.2 and on read as 1.1 (RFC 9110 2.5)
            # An HTTP/2 preface (PRI * HTTP/2.0) or a major version this server does not
            # speak: RFC 9110 6.2 and 15.6.6, not a request to pass on as HTTP/1.1.
            ex.error_reason = "UnsupportedHttpVersion"
            ex.status = 505
        elif not names_a_host(host):
            # RFC 9112 3.2: a Host that is no authority; RFC 9110 4.2.1 and RFC 9112 3.3: an
            # empty one (or a port alone) names no host for an http(s) URI, so neither the
            # rules nor a redirect's Location could have one.
            ex.error_reason = "InvalidHostHeader"
            ex.status = 400
        elif request.method == b"TRACE":
            # ALB: "HTTP 405: Method not allowed - The client used the TRACE method, which is
            # not supported" (a target's echo would hand a page its cookies: cross-site tracing).
            ex.error_reason = "MethodNotAllowed"
            ex.status = 405
        if verdict.classification is not Classification.COMPLIANT:
            # "refused" says what the client got: a request answered here with an error
            # (an HTTP/3.0 head's 505, a limit's 400) was not passed on either.
            services.stats.desync_request(
                services.name,
                verdict.classification.label,
                verdict.reason,
                refused=verdict.action is Action.REFUSE or ex.status != 0,
            )
        return ex

    async def _refuse_unparsed(
        self,
        listener: ListenerRuntime,
        exc: h11.RemoteProtocolError,
        raw: bytes | bytearray,
        start_received: int,
    ) -> None:
        """A request h11 could not parse: 400 (as ALB, also for a head too large), counted
        and logged.

        Its bytes are counted as any other request's: what was read of it (the connection
        closes, so all of it) and the 400 sent (:func:`_book_headless`).
        """
        services, client = self.services, self.client
        start_sent = client.sent
        end = head_end(raw)
        verdict = classify_parse_error(str(exc), raw[:end] if end >= 0 else None)
        status = 400
        if exc.error_status_hint != 431:
            services.stats.desync_request(
                services.name, verdict.classification.label, verdict.reason, refused=True
            )
            self._log_refusal(verdict, detail=str(exc))
        else:  # a head over the size limit: no desync, and clients cause it at will
            services.log.debug(
                "http.request_refused",
                listener=services.name,
                client=self.client.info.ip,
                reason=verdict.reason,
                detail=loggable_parse_error(str(exc)),
            )
        await self._answer(None, status, b"bad request\n")
        _book_headless(
            services,
            client,
            listener.config.access_log,
            status,
            client.received - start_received,
            client.sent - start_sent,
            error_reason="MalformedRequest",
            conn_trace_id=self.trace_id,
            verdict=verdict,
        )

    async def _head_timed_out(self) -> None:
        """408 to a head that did not arrive within the header timeout, counted and logged
        as any request the balancer answers (ALB's HTTPCode_ELB_4XX_Count counts incomplete
        requests); its bytes are all that was read since it began (the connection closes)."""
        services, client = self.services, self.client
        listener = services.runtime.current.listeners.get(services.name)
        start_sent = client.sent
        await self._answer(None, 408, b"request header timeout\n")
        _book_headless(
            services,
            client,
            None if listener is None else listener.config.access_log,  # None: reloaded away
            408,
            client.received - self.head_start,
            client.sent - start_sent,
            error_reason="RequestHeaderTimeout",
            conn_trace_id=self.trace_id,
        )

    async def _answer(self, ex: Exchange | None, status: int, body: bytes) -> None:
        """A short answer that ends the connection, bounded in time."""
        with trio.move_on_after(WRITE_TIMEOUT_SECONDS):
            try:
                await respond(self.client, ex, status, body, close=True)
            except ClientGone:
                pass

    # Serving a request ---------------------------------------------------------------------

    async def _handle(self, ex: Exchange) -> None:
        """Answer one request (inside its cycle's scope)."""
        services, client = self.services, self.client
        if ex.status:  # over a limit or not servable, found while reading the head
            ex.close_after = True
            body = _HEAD_REFUSALS.get(ex.error_reason or "", b"request too large\n")
            await respond(client, ex, ex.status, body)
            return
        if ex.verdict.action is Action.REFUSE:
            ex.error_reason = "DesyncRefused"
            ex.close_after = True
            self._log_refusal(ex.verdict)
            await respond(client, ex, 400, b"bad request\n")
            return
        listener = ex.listener
        if (
            ex.verdict.action is Action.CLOSE_AFTER
            or services.draining.started
            # ALB's HTTP client keepalive duration: once it has elapsed, the next request
            # is still served, and its response closes the connection gracefully.
            or ex.started - self.opened >= listener.config.client_keep_alive_seconds
        ):
            ex.close_after = True
        if listener.trusted_proxies and self._forwarded_for_overflow(ex):
            # ALB's 463. Only a trusted proxy's chain is forwarded (anyone else's is
            # dropped), so only that one can grow without bound on its way to a target.
            ex.error_reason = "ForwardedForTooLong"
            await respond(client, ex, 463, b"too many addresses in X-Forwarded-For\n")
            return
        if listener.default_only:
            match = listener.rules.default
        else:
            match = listener.rules.match(_view(ex, listener), client.address)
        ex.rule = match.priority
        action = match.action
        try:
            if isinstance(action, Forward):
                await forward(services, client, ex, action)
            elif ex.request.method == b"CONNECT" and _refuses_connect(action):
                await self._refuse_connect(ex, action)
            elif isinstance(action, Redirect):
                await self._redirect(ex, action, _view(ex, listener))
            elif isinstance(action, FixedResponse):
                await self._fixed(ex, action)
        except ClientGone:
            if not ex.response_started:
                ex.status = 460  # ALB: the client closed before the response
            ex.close_after = True
        except BadRequestBody as exc:
            await self._refuse_body(ex, str(exc))

    def _forwarded_for_overflow(self, ex: Exchange) -> bool:
        listener = ex.listener
        if listener.config.x_forwarded_for == "remove":
            return False  # the header goes nowhere
        return is_trusted(self.client.address, listener) and forwarded_for_overflow(ex.headers)

    def _reusable(self, ex: Exchange) -> int:
        """Whether the connection may carry the next request after this one (_NEXT), once
        the rest of this one's body is dropped (_DISCARD), or not (_STOP)."""
        if ex.close_after or ex.upgraded:
            return _STOP
        conn = self.client.conn
        if conn.our_state is not h11.DONE:
            return _STOP
        if conn.their_state is not h11.DONE:
            return _DISCARD
        return _NEXT

    async def _refuse_body(self, ex: Exchange, detail: str) -> None:
        """A body h11 could not frame (bad chunk sizes...): a desync attempt, refused."""
        services = self.services
        ex.verdict = classify_parse_error(detail)
        ex.error_reason = "MalformedRequestBody"
        ex.close_after = True
        services.stats.desync_request(
            services.name, ex.verdict.classification.label, ex.verdict.reason, refused=True
        )
        self._log_refusal(ex.verdict, detail)  # h11's words: which rule of the framing broke
        await respond(self.client, ex, 400, b"bad request\n")

    async def _timed_out(self, ex: Exchange) -> None:
        """A deadline of the request passed; ``ex.phase`` says which wait it cut."""
        ex.close_after = True
        if ex.cut_off:  # the target's deregistration delay ended (balancer.listeners.cutoffs)
            ex.error_reason = "TargetDeregistered"
            if not ex.response_started:
                await self._answer(ex, 502, b"bad gateway\n")  # sends nothing mid-response
        elif ex.response_started:
            # Mid-response: all that can be done is to close.
            stalled = "ClientWriteTimeout" if ex.phase == "client_write" else "IdleTimeout"
            ex.error_reason = ex.error_reason or stalled
        elif ex.phase == "target_write":
            # The target stopped taking the request body: its stall, not the client's.
            ex.error_reason = "TargetResponseTimeout"
            await self._answer(ex, 504, b"target response timeout\n")
        elif ex.phase == "body":
            ex.error_reason = "RequestBodyTimeout"
            await self._answer(ex, 408, b"request body timeout\n")
        elif await self.client.left():
            # ALB's 460: the client gave up before the target answered; not the target's 504.
            ex.status = 460
        else:
            ex.error_reason = "TargetResponseTimeout"
            await self._answer(ex, 504, b"target response timeout\n")

    async def _cut_by_drain(self, ex: Exchange) -> None:
        """``ex`` was in flight when its listener's grace period ended: as a deregistration
        cut (``TargetDeregistered``), a 502 if no response had begun (written in a shielded,
        short try: the cancellation is under way), logged with ``Draining``."""
        ex.close_after = True
        if not ex.cut_off:  # else its target's deregistration delay ended first
            ex.error_reason = "Draining"
        if not ex.response_started:
            with trio.move_on_after(CUT_ANSWER_SECONDS, shield=True):
                try:
                    await respond(self.client, ex, 502, b"bad gateway\n", close=True)
                except ClientGone:
                    pass
            ex.status = ex.status or 502  # the client got it, or nothing (as ALB logs 502)
        self.served += 1
        self._finish(ex)

    async def _refuse_connect(self, ex: Exchange, action: Redirect | FixedResponse) -> None:
        """405 to a CONNECT that reached a redirect or a 2xx fixed response (_refuses_connect).

        The ``Allow`` field a 405 must carry (RFC 9110 15.5.6) is empty: a ``host:port``
        target names a tunnel, not a resource, and no method is served on it here.
        """
        ex.actions = "redirect" if isinstance(action, Redirect) else "fixed-response"
        ex.error_reason = "MethodNotAllowed"
        await respond(self.client, ex, 405, _CONNECT_REFUSED, headers=(("allow", ""),))

    async def _redirect(self, ex: Exchange, action: Redirect, view: RequestView) -> None:
        location = render_redirect(
            action, view, protocol=ex.listener.protocol, port=self.client.info.local_port
        )
        ex.actions = "redirect"
        if len(location) > MAX_REDIRECT_URL_CHARS:
            # ALB completes no redirect whose Location passes 8K, and counts it
            # (HTTP_Redirect_Url_Limit_Exceeded_Count): clients and proxies refuse such lines.
            self.services.stats.redirect_url_too_long(self.services.name)
            ex.error_reason = "RedirectUrlTooLong"
            await respond(self.client, ex, 500, b"redirect URL too long\n")
            return
        ex.redirect_url = location
        self.services.stats.redirect(self.services.name)
        await respond(self.client, ex, redirect_status(action), headers=(("location", location),))

    async def _fixed(self, ex: Exchange, action: FixedResponse) -> None:
        ex.actions = "fixed-response"
        self.services.stats.fixed_response(self.services.name)
        await respond(
            self.client,
            ex,
            action.status_code,
            action.message_body.encode(),
            content_type=action.content_type,
        )

    async def _discard_body(self, ex: Exchange) -> bool:
        """Read and drop the rest of a request body the balancer answered without."""
        conn = self.client.conn
        dropped = 0
        timeout = ex.listener.config.timeouts.request_body_seconds
        while dropped <= MAX_DISCARD_BYTES:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:
                return False
            if event is h11.NEED_DATA:
                with trio.move_on_after(timeout) as scope:
                    data = await self.client.receive()
                if scope.cancelled_caught or not data:
                    return False
                conn.receive_data(data)
            elif isinstance(event, h11.Data):
                dropped += len(event.data)
            else:
                return isinstance(event, h11.EndOfMessage)
        return False

    # Accounting ----------------------------------------------------------------------------

    def _finish(self, ex: Exchange, *, closing: bool = False) -> None:
        self.ex = None  # booked: a drain's cut (run) must not book it again
        services, client = self.services, self.client
        name = services.name
        group = ex.group or NO_GROUP
        stats = services.stats
        by_target = ex.target_status is not None and ex.status == ex.target_status
        rule = "-" if ex.rule is None else "default" if ex.rule == 0 else str(ex.rule)
        stats.request(name, rule, group, ex.status or 460, by_target=by_target)
        if ex.response_at is not None and ex.sent_at is not None:
            stats.target_response(name, group, ex.response_at - ex.sent_at)
        # Bytes of a pipelined next request, read with this one's, are the next one's; on a
        # connection that closes now there is no next one, and they were read all the same.
        last = ex.upgraded or ex.close_after or closing
        ahead = 0 if last else len(client.conn.trailing_data[0])
        received = client.received - ahead - ex.start_received
        sent = client.sent - ex.start_sent
        # A tunnel counted its bytes as they moved: the rest of them now.
        stats.processed(name, received - ex.counted_received, sent - ex.counted_sent)
        settings = ex.listener.config.access_log
        if settings.enabled:  # else there is no writer to get
            writer = services.access_logs.get(settings)
            if writer is not None:
                writer.write(self._entry(ex, received, sent))

    def _trace(self, ex: Exchange, wall: float) -> bytes:
        """The request's X-Amzn-Trace-Id: ALB gives every request one as it arrives, so a
        request answered by the balancer itself (redirect, fixed response, 4xx/5xx) is
        logged with its own too, the client's Root kept (a fresh Root alone past 7 KB of
        head, as a forwarded request's)."""
        if ex.trace is None:
            own = self.services.new_trace_id(wall)
            existing = first_header(ex.headers, TRACE_ID)
            ex.trace = trace_header(existing, own, head_bytes=ex.head_bytes)
        return ex.trace

    def _entry(self, ex: Exchange, received: int, sent: int) -> AccessEntry:
        info = self.client.info
        request = ex.request
        now_wall = time.time()
        now = trio.current_time()
        created = now_wall - (now - ex.started)
        url = request_url(
            info.scheme, first_header(ex.headers, b"host"), request.target, info.local_port
        )
        version = request.http_version.decode("ascii", "replace")
        target = ex.target.target_id if ex.target is not None else None
        sent_at, response_at = ex.sent_at, ex.response_at
        kind = info.scheme if not ex.upgraded else ("wss" if info.scheme == "https" else "ws")
        user_agent = first_header(ex.headers, b"user-agent")
        return AccessEntry(
            type=kind,
            time=now_wall,
            elb=self.services.name,
            client_ip=info.ip,
            client_port=info.port,
            target=target,
            request_processing_time=None if sent_at is None else sent_at - ex.started,
            target_processing_time=(
                None if sent_at is None or response_at is None else response_at - sent_at
            ),
            # ALB: from the target's response head to the start of the response to the
            # client (not its end: a long download is not the balancer's time).
            response_processing_time=(
                None if response_at is None else (ex.relayed_at or now) - response_at
            ),
            elb_status_code=ex.status or 460,
            target_status_code=ex.target_status,
            received_bytes=received,
            sent_bytes=sent,
            request=f"{request.method.decode('latin-1')} {url} HTTP/{version}",
            user_agent=user_agent.decode("latin-1") if user_agent else None,
            ssl_cipher=info.tls_cipher,
            ssl_protocol=info.tls_protocol,
            target_group=ex.group,
            trace_id=self._trace(ex, now_wall).decode("ascii", "replace"),
            domain_name=info.sni,
            chosen_cert=info.certificate,
            matched_rule_priority=ex.rule,
            request_creation_time=created,
            actions_executed=ex.actions or None,
            redirect_url=ex.redirect_url,
            error_reason=ex.error_reason,
            classification=(
                None
                if ex.verdict.classification is Classification.COMPLIANT
                else ex.verdict.classification.label
            ),
            classification_reason=ex.verdict.reason or None,
            conn_trace_id=self.trace_id,
        )

    def _log_refusal(self, verdict: Verdict, detail: str | None = None) -> None:
        """Log a desync refusal; ``detail`` is h11's message, whose quoted request bytes
        (a header value, body bytes) are kept out of the log."""
        services = self.services
        services.log.info(
            "http.desync_refused",
            listener=services.name,
            client=self.client.info.ip,
            classification=verdict.classification.label,
            reason=verdict.reason,
            detail=None if detail is None else loggable_parse_error(detail),
        )


def _book_headless(
    services: ListenerServices,
    client: Client,
    access_log: AccessLog | None,
    status: int,
    received: int,
    sent: int,
    *,
    error_reason: str,
    conn_trace_id: str,
    verdict: Verdict | None = None,
) -> None:
    """Count and log the balancer's answer to a request without a parsed head (malformed,
    stalled, or past the connection limit): an ELB 4xx/5xx, its bytes in ProcessedBytes,
    and an access-log line (with ``verdict``'s classification for a malformed one).

    There is no request line to log; ALB writes its own URL between a method and a version
    of ``-`` (``"- http://<its name>:80- -"``), which keeps the field's three parts that ALB
    log parsers (Athena's table) read.
    """
    stats = services.stats
    stats.request(services.name, "-", NO_GROUP, status, by_target=False)
    stats.processed(services.name, received, sent)
    writer = None if access_log is None else services.access_logs.get(access_log)
    if writer is None:
        return
    now = time.time()
    info = client.info
    own_url = f"{info.scheme}://{client.host_header.decode('ascii')}"
    writer.write(
        AccessEntry(
            type=info.scheme,
            time=now,
            elb=services.name,
            client_ip=info.ip,
            client_port=info.port,
            elb_status_code=status,
            received_bytes=received,
            sent_bytes=sent,
            request=f"- {own_url}- -",
            # The handshake finished: the TLS fields are logged as for any request.
            ssl_cipher=info.tls_cipher,
            ssl_protocol=info.tls_protocol,
            domain_name=info.sni,
            chosen_cert=info.certificate,
            request_creation_time=now,
            classification=None if verdict is None else verdict.classification.label,
            classification_reason=None if verdict is None else verdict.reason,
            error_reason=error_reason,
            conn_trace_id=conn_trace_id,
        )
    )


def request_url(scheme: str, host: bytes | None, target: bytes, port: int) -> str:
    """The access log's URL: ``scheme://host:port/path?query``, always with a port.

    ALB writes the port even when it is the scheme's default: the Host header's name with
    the port the client connected to, or an absolute-form target's own authority (its
    port added when it has none).
    """
    text = target.decode("latin-1")
    if not text.startswith("/"):
        scheme_part, sep, rest = text.partition("://")
        if not sep:
            return text  # authority-form (CONNECT) or "*": as sent
        authority, slash, path = rest.partition("/")
        if not _has_port(authority):
            authority = f"{_without_empty_port(authority)}:{port}"
        return f"{scheme_part}://{authority}{slash}{path}"
    name = _without_empty_port((host or b"-").decode("latin-1"))
    if _has_port(name):
        name = name.rpartition(":")[0]
    return f"{scheme}://{name}:{port}{text}"


def _has_port(authority: str) -> bool:
    """Whether ``host:port`` / ``[v6]:port`` names a port (a bare IPv6 literal does not)."""
    head, colon, tail = authority.rpartition(":")
    return bool(colon) and tail.isdigit() and (not head.startswith("[") or head.endswith("]"))


def _without_empty_port(authority: str) -> str:
    """``example.com:`` -> ``example.com`` (an empty port, RFC 3986 3.2.3); else as given."""
    if authority.endswith(":") and (not authority.startswith("[") or authority.endswith("]:")):
        return authority[:-1]
    return authority


_CONNECT_REFUSED: Final = b"CONNECT is not supported by this listener's action\n"


def _refuses_connect(action: Redirect | FixedResponse) -> bool:
    """Whether the balancer's own answer to a CONNECT routed to ``action`` must be a 405.

    A 2xx to CONNECT says that the tunnel is open (RFC 9110 9.3.6), which a fixed response
    cannot honour (h11 takes it as a protocol switch and refuses the body: the client got
    nothing, logged as a 460). A redirect would be built from a ``host:port`` target, which
    has no path to keep. A 4xx or 5xx fixed response is an ordinary refusal and goes out as
    configured.
    """
    return isinstance(action, Redirect) or 200 <= action.status_code < 300


def _view(ex: Exchange, listener: ListenerRuntime) -> RequestView:
    """What the rules see. Header values are decoded only when some rule reads headers."""
    request = ex.request
    if listener.rules.needs_headers:
        return RequestView.from_h11(request.method, request.target, ex.headers)
    host = first_header(ex.headers, b"host") or b""
    return RequestView.from_target(
        request.method.decode("latin-1"),
        request.target.decode("latin-1"),
        (("host", host.decode("latin-1")),),
    )
