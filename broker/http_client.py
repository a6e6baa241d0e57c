"""Outbound HTTP/1.1 POSTs to subscriber endpoints: h11 over trio streams, TLS, keep-alive.

Every wait the endpoint controls has a bound: connecting (TCP plus TLS handshake) has the
connect timeout, sending the request and reading the whole response the response timeout.
Whatever the endpoint does (refuses, resets, hangs, answers garbage or an endless body) ends
in an :class:`Outcome`, never an exception: the delivery worker decides what it means.

Idle keep-alive connections are kept per origin and reused for a few seconds. One the server
has closed is noticed before reuse (it reads as EOF; urllib3 checks the same way); if a send
still fails on a reused connection, nothing reached the server, and if a reused connection
ends (EOF or reset) before any byte of the response, the server closed it as the request
arrived (RFC 9112 9.3.1: the usual sign that it was not processed, which browsers retry): the
request goes once more on a fresh connection. Any other failure after the request was sent
counts as a failed attempt: the server may have processed it, and SNS deliveries are
at-least-once (which also covers the rare server that processed a request, then closed
without an answer).

Endpoint host names are looked up by :class:`NameLookups` (installed as the run's hostname
resolver by the delivery worker), on threads of their own: never on trio's default thread
limiter, which the store's reads and ``/metrics`` share.

An endpoint URL's ``user:password@`` answers the endpoint's 401 (Basic or Digest, as
:mod:`proto.http_auth` decides): one post may then send up to ``MAX_AUTH_ROUNDS`` requests,
each with the timeouts above.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import socket
import ssl
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple
from urllib.parse import quote, unquote, urlsplit

import h11
import trio

from monitoring import fastio
from proto.http1 import is_valid_host
from proto.http_auth import BasicScheme, Credentials, DigestSession, answer_challenges, is_stale

# RFC 3986's reserved and unreserved characters and '%': kept as they are in a request target.
_URI_CHARACTERS: Final = "!#$%&'()*+,/:;=?@[]~-._"
MAX_RESPONSE_BODY: Final = 64 * 1024  # read (and discard) this much; a longer body closes
MAX_IDLE_PER_ORIGIN: Final = 16
# Idle connections older than this are closed, not reused: below the shortest common server
# keep-alive timeout (Node.js: 5 s), so the server rarely closes one under our feet.
IDLE_SECONDS: Final = 4.0
RECEIVE_BYTES: Final = 65536
# After a reset seen by the reader, how long the upload gets to end before the request's
# fate (sent whole or not) is decided; a broken connection ends it within a round trip.
UPLOAD_SETTLE_SECONDS: Final = 1.0
# Endpoints whose authentication scheme is remembered (then sent without waiting for a 401).
MAX_REMEMBERED_SCHEMES: Final = 4096
# Requests one post may send while answering 401s: the first, the answer, and one more for
# a remembered Digest nonce the server has since let expire.
MAX_AUTH_ROUNDS: Final = 3
# Name lookups in flight at once. A lookup against a DNS server that does not answer blocks
# its thread for 10 s or more (glibc's defaults), and nothing can end it sooner.
LOOKUP_THREADS: Final = 16


class Outcome(NamedTuple):
    """How one POST went: a status, or why there is none.

    Attributes:
        status: the response status, or None when no complete response arrived.
        error: ``connect``, ``timeout``, ``reset``, ``protocol`` (garbage), ``tls`` or
            ``invalid-url``; ``local`` when the broker itself could not open a socket (out
            of descriptors or memory): no attempt reached the endpoint. None with a status.
        detail: a short human-readable reason for logs and dead letters.
    """

    status: int | None
    error: str | None = None
    detail: str = ""

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def retryable(self) -> bool:
        """Server-side trouble worth retrying: no response, 5xx, or 429 (throttled).

        Other 4xx answers are client-side errors SNS does not retry: the endpoint refuses
        the message, and a retry would be refused the same way (AWS, sns-dead-letter-queues).
        """
        if self.status is None:
            return self.error != "invalid-url"
        return self.status >= 500 or self.status == 429


@dataclass(frozen=True, slots=True)
class Target:
    """Where a POST goes: origin, request target, Host header, the URL's credentials."""

    scheme: str
    host: str
    port: int
    target: str
    host_header: str
    credentials: Credentials | None

    @property
    def origin(self) -> tuple[str, str, int]:
        return self.scheme, self.host, self.port


# Letters, digits, "-" and "_" (found in real names, if not in RFC 1123's) in dot-separated
# labels, one trailing dot allowed; the IDNA encoding has checked the labels' lengths.
_HOST_NAME: Final = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.?")


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def parse_target(url: str) -> Target | None:
    """Split an endpoint URL; None if it cannot be reached (no host, bad port, other scheme)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a port that is no number, or past 65535
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
        return None
    try:  # what the resolver and TLS will be given: a name past DNS's limits cannot be sent
        host = parts.hostname.encode("idna").decode("ascii")
    except UnicodeError:
        return None
    if not _HOST_NAME.fullmatch(host) and not _is_ip_literal(parts.hostname):
        return None  # a space, "<", '"' or "%00": no name a resolver could look up
    default = 443 if parts.scheme == "https" else 80
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    # Spaces, controls and non-ASCII cannot go on a request line: percent-encoded (UTF-8), as
    # browsers and requests send such URLs; what is already encoded stays as it is.
    target = quote(target, safe=_URI_CHARACTERS)
    host_header = parts.netloc.rpartition("@")[2]
    if not host_header.isascii():  # an internationalised name: its A-label form
        host_header = host + (f":{port}" if port is not None else "")
    if "%" in host and _is_ip_literal(host):
        # A zone id is "%25" and the zone in a URL (RFC 6874), "%" and the zone to the
        # resolver: given "fe80::1%25eth0" it looks up interface "25eth0", and fails. A bare
        # "%" (written before RFC 6874) is taken too; the Host header gets the RFC's form.
        address, _, zone = host.partition("%")
        if zone.startswith("25") and "%25" in parts.netloc:
            zone = unquote(zone[2:])
        host = f"{address}%{zone}"
        host_header = f"[{address}%25{quote(zone, safe='')}]" + (
            f":{port}" if port is not None else ""
        )
    if not is_valid_host(host_header.encode("ascii")):
        # urlsplit reads only what is inside "[...]": "[::1]junk:8080" would go to [::1]:8080
        # with that Host, and "[v1.x]" (RFC 3986's IPvFuture) to a DNS look-up of "v1.x".
        return None
    credentials = None
    if parts.username is not None:  # AWS honours https://user:password@host/ endpoints
        credentials = Credentials(unquote(parts.username), unquote(parts.password or ""))
    return Target(parts.scheme, host, port or default, target, host_header, credentials)


_Scheme = BasicScheme | DigestSession


class _Connection:
    __slots__ = ("h11", "idle_since", "stream")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)
        self.idle_since = 0.0


def _exhaustion(error: BaseException) -> str:
    """The innermost error that says what ran out (trio wraps it in "all attempts failed")."""
    if isinstance(error, OSError) and error.errno in fastio.LOCAL_EXHAUSTION:
        return str(error)
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            if fastio.is_local_exhaustion(inner):
                return _exhaustion(inner)
    cause = error.__cause__ or error.__context__
    return _exhaustion(cause) if cause is not None else str(error)


class _Failure(Exception):
    def __init__(
        self, error: str, detail: str, *, before_sent: bool = False, unanswered: bool = False
    ) -> None:
        super().__init__(detail)
        self.error = error
        self.detail = detail
        self.before_sent = before_sent  # the request never fully left: safe to send again
        self.unanswered = unanswered  # the connection ended before any byte of a response


class _Lookup:
    """One getaddrinfo thread and its answer, shared by whoever waits for that name."""

    __slots__ = ("addresses", "done", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.addresses: Any = None
        self.error: BaseException | None = None


class NameLookups(trio.abc.HostnameResolver):
    """getaddrinfo on threads of its own: at most ``threads`` at once, one per name.

    A caller stops waiting when its cancel scope says (the connect timeout), but the lookup's
    thread runs until getaddrinfo returns. Trio's own resolver runs it on the default thread
    limiter, which keeps the token until then: enough unresolvable endpoint names took every
    token, and the store's reads, ``/metrics`` and every delivery whose body must be read
    back waited with them. Here a lookup holds a slot of its own limiter until its thread
    ends, and callers asking for a name already being looked up share that lookup, so one
    dead name holds one slot however many deliveries want it.
    """

    def __init__(self, threads: int = LOOKUP_THREADS) -> None:
        self.limiter = trio.CapacityLimiter(threads)
        self._lookups: dict[tuple[Any, ...], _Lookup] = {}

    async def getaddrinfo(
        self,
        host: bytes | None,
        port: bytes | str | int | None,
        family: int = 0,
        type: int = 0,  # noqa: A002 - trio.abc.HostnameResolver names it so
        proto: int = 0,
        flags: int = 0,
    ) -> Any:
        key = (host, port, family, type, proto, flags)
        lookup = self._lookups.get(key)
        if lookup is None:
            lookup = self._lookups[key] = _Lookup()
            try:
                await self.limiter.acquire_on_behalf_of(lookup)
            except BaseException:  # cancelled before its thread started: others may wait on it
                del self._lookups[key]
                lookup.error = socket.gaierror(socket.EAI_AGAIN, "name lookup not started")
                lookup.done.set()
                raise
            self._start(key, lookup)
        await lookup.done.wait()
        if isinstance(lookup.error, socket.gaierror):
            raise socket.gaierror(*lookup.error.args)  # a fresh one per caller
        if lookup.error is not None:
            raise lookup.error
        return lookup.addresses

    async def getnameinfo(
        self, sockaddr: tuple[str, int] | tuple[str, int, int, int], flags: int
    ) -> tuple[str, str]:
        return await trio.to_thread.run_sync(
            socket.getnameinfo, sockaddr, flags, limiter=self.limiter, abandon_on_cancel=True
        )

    def _start(self, key: tuple[Any, ...], lookup: _Lookup) -> None:
        token = trio.lowlevel.current_trio_token()

        def deliver(result: Any) -> None:  # in the thread, once it ended
            try:
                token.run_sync_soon(self._finish, key, lookup, result)
            except trio.RunFinishedError:
                pass  # the daemon stopped meanwhile: nobody waits any more

        # socket.getaddrinfo looked up at each call: tests replace it with a slow resolver.
        trio.lowlevel.start_thread_soon(
            lambda: socket.getaddrinfo(*key), deliver, name=f"getaddrinfo {key[0]!r}"
        )

    def _finish(self, key: tuple[Any, ...], lookup: _Lookup, result: Any) -> None:
        # ``result``: an outcome.Outcome (trio's dependency), unwrapped without naming it.
        self.limiter.release_on_behalf_of(lookup)
        if self._lookups.get(key) is lookup:
            del self._lookups[key]
        try:
            lookup.addresses = result.unwrap()
        except BaseException as error:  # getaddrinfo's failure, handed to its callers
            lookup.error = error
        lookup.done.set()


class HttpClient:
    """POSTs with timeouts and a small keep-alive pool per origin."""

    def __init__(
        self,
        *,
        connect_timeout: float,
        response_timeout: float,
        ca_file: str = "",
        user_agent: str = "Amazon Simple Notification Service Agent",
    ) -> None:
        self.connect_timeout = connect_timeout
        self.response_timeout = response_timeout
        self.user_agent = user_agent
        self.ssl_context = ssl.create_default_context(cafile=ca_file or None)
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._schemes: OrderedDict[tuple[tuple[str, str, int], Credentials | None], _Scheme]
        self._schemes = OrderedDict()
        self.name_lookups = NameLookups()

    async def post(self, url: str, headers: Sequence[tuple[str, str]], body: bytes) -> Outcome:
        """POST ``body`` to ``url``; never raises for anything the endpoint does."""
        target = parse_target(url)
        if target is None:
            return Outcome(None, "invalid-url", f"not an http(s) URL with a host: {url}")
        try:
            return Outcome(await self._authenticated(target, headers, body))
        except _Failure as failure:
            return Outcome(None, failure.error, failure.detail)

    async def _authenticated(
        self, target: Target, headers: Sequence[tuple[str, str]], body: bytes
    ) -> int:
        """Send the request, answering a 401 with the URL's credentials as AWS does: Basic or
        Digest, whichever the endpoint asks for. The scheme that got through is remembered
        per endpoint and sent up front next time; Digest keeps counting its nonce."""
        credentials = target.credentials
        key = (target.origin, credentials)
        scheme = self._schemes.get(key) if credentials is not None else None
        answered = False  # sent an answer to a challenge this endpoint gave for this request
        for _ in range(MAX_AUTH_ROUNDS):
            authorization = None
            if scheme is not None:
                cnonce = secrets.token_hex(16)
                authorization = scheme.authorization("POST", target.target, body, cnonce)
            status, challenges = await self._send(target, headers, body, authorization)
            if status != 401 or credentials is None:
                if scheme is not None:
                    self._remember(key, scheme)
                return status
            if answered and not is_stale(challenges):
                break  # the endpoint refused the credentials themselves
            fresh = answer_challenges(challenges, credentials)
            if fresh is None or (isinstance(fresh, BasicScheme) and fresh == scheme):
                break  # nothing it asks for can be answered, or the same answer failed
            scheme, answered = fresh, True
        self._schemes.pop(key, None)
        return 401

    def _remember(
        self, key: tuple[tuple[str, str, int], Credentials | None], scheme: _Scheme
    ) -> None:
        self._schemes[key] = scheme
        self._schemes.move_to_end(key)
        if len(self._schemes) > MAX_REMEMBERED_SCHEMES:
            self._schemes.popitem(last=False)

    async def _send(
        self,
        target: Target,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        authorization: str | None,
    ) -> tuple[int, list[str]]:
        """One request on a pooled or fresh connection: (status, a 401's challenges)."""
        for fresh in (False, True):
            connection = None if fresh else await self._checkout(target)
            reused = connection is not None
            try:
                if connection is None:
                    connection = await self._connect(target)
                status, reusable, challenges = await self._exchange(
                    connection, target, headers, body, authorization
                )
            except _Failure as failure:
                if connection is not None:
                    await _close(connection)
                if reused and (failure.before_sent or failure.unanswered):
                    continue  # the server closed the idle connection first: not processed
                raise
            except BaseException:  # cancelled (shutdown) mid-exchange: do not leak the socket
                if connection is not None:
                    await _close(connection)
                raise
            if reusable:
                await self._checkin(target, connection)
            else:
                await _close(connection)
            return status, challenges
        raise AssertionError("unreachable: the second try uses a fresh connection")

    async def _checkout(self, target: Target) -> _Connection | None:
        idle = self._idle.get(target.origin)
        now = trio.current_time()
        while idle:
            connection = idle.pop()
            if now - connection.idle_since < IDLE_SECONDS and not _dropped(connection):
                return connection
            await _close(connection)  # stale, or the server closed it (urllib3's check)
        if idle is not None and self._idle.get(target.origin) is idle:
            del self._idle[target.origin]  # empty: an origin with no connection is forgotten
        return None

    async def _checkin(self, target: Target, connection: _Connection) -> None:
        idle = self._idle.setdefault(target.origin, [])
        if len(idle) >= MAX_IDLE_PER_ORIGIN:
            await _close(connection)
            return
        connection.h11.start_next_cycle()
        connection.idle_since = trio.current_time()
        idle.append(connection)

    async def _connect(self, target: Target) -> _Connection:
        with trio.move_on_after(self.connect_timeout):
            try:
                stream: trio.abc.Stream = await trio.open_tcp_stream(target.host, target.port)
            except OSError as error:
                if fastio.is_local_exhaustion(error):  # the broker's fault, not the endpoint's
                    raise _Failure("local", f"cannot open a socket: {_exhaustion(error)}") from None
                raise _Failure("connect", f"connect failed: {error}") from None
            except ValueError as error:  # a name the resolver refuses (UnicodeError...)
                raise _Failure("invalid-url", f"cannot resolve this host: {error}") from None
            connected = False
            try:
                if target.scheme == "https":
                    secured = trio.SSLStream(stream, self.ssl_context, server_hostname=target.host)
                    try:
                        await secured.do_handshake()
                    except (trio.BrokenResourceError, ssl.SSLError) as error:
                        cause = error.__cause__ or error
                        raise _Failure("tls", f"TLS failed: {cause}") from None
                    stream = secured
                connected = True
                return _Connection(stream)
            finally:
                if not connected:  # a failed or timed-out handshake: the socket must not leak
                    await trio.aclose_forcefully(stream)
        raise _Failure("timeout", f"connect timed out after {self.connect_timeout} s")

    async def _exchange(
        self,
        connection: _Connection,
        target: Target,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        authorization: str | None,
    ) -> tuple[int, bool, list[str]]:
        """Send the request and read the response; return (status, connection reusable,
        the ``WWW-Authenticate`` values of a 401).

        The response is read while the request is still going out: an endpoint may answer
        before it has read the body (a proxy's 413 or 401, then a close) and stop reading,
        and that answer is the outcome -- not a reset, nor a timeout of two peers each
        waiting for the other to read.
        """
        request_headers = [
            ("Host", target.host_header),
            ("Content-Length", str(len(body))),
            *[(name, value) for name, value in headers if name.lower() != "user-agent"],
            ("User-Agent", self.user_agent),
        ]
        if authorization is not None:
            request_headers.append(("Authorization", authorization))
        conn = connection.h11
        try:
            head = h11.Request(method="POST", target=target.target, headers=request_headers)
        except (h11.LocalProtocolError, UnicodeError) as error:  # parse_target prevents it
            raise _Failure("invalid-url", f"cannot send to this URL: {error}") from None
        data = conn.send(head)
        data += conn.send(h11.Data(data=body)) or b""
        data += conn.send(h11.EndOfMessage()) or b""
        upload = _Upload(connection.stream, data)
        reading = _Reading()
        result: tuple[int, bool, list[str]] | _Failure | None = None
        with trio.move_on_after(self.response_timeout):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(upload.run)
                try:
                    result = await _read_response(conn, connection.stream, reading)
                except _Failure as failure:
                    result = failure
                except h11.RemoteProtocolError as error:
                    if reading.received == 0:  # h11's word for an EOF before the response
                        detail = "connection closed before a response"
                        result = _Failure("reset", detail, unanswered=True)
                    else:
                        result = _Failure("protocol", f"invalid response: {error}")
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as error:
                    # Whether the request may go again on a fresh connection depends on how
                    # its upload ended, which a broken connection decides at once.
                    with trio.move_on_after(UPLOAD_SETTLE_SECONDS):
                        await upload.finished.wait()
                    result = _Failure(
                        "reset",
                        f"connection reset: {error}",
                        before_sent=upload.failed,
                        unanswered=reading.received == 0,
                    )
                nursery.cancel_scope.cancel()  # an answer before the whole request: stop
        if result is None:
            raise _Failure("timeout", f"no complete response within {self.response_timeout} s")
        if isinstance(result, _Failure):
            raise result
        status, reusable, challenges = result
        return status, reusable and upload.done, challenges

    async def close_idle(self) -> int:
        """Close the idle connections too old to be reused or closed by their server, and
        forget the origins left without any; return how many were closed.

        A checkout only looks at its own origin's connections: without this, an endpoint
        that gets no further delivery (unsubscribed, its topic deleted) kept its keep-alive
        sockets open for as long as the broker ran, in CLOSE_WAIT once the server hung up,
        one descriptor per connection for every endpoint that ever came and went.
        """
        now = trio.current_time()
        stale: list[_Connection] = []
        for origin, connections in list(self._idle.items()):
            kept = [c for c in connections if now - c.idle_since < IDLE_SECONDS and not _dropped(c)]
            stale.extend(c for c in connections if c not in kept)
            connections[:] = kept  # in place: a checkout closing stale ones holds this list
            if not kept:
                del self._idle[origin]
        for connection in stale:
            await _close(connection)
        return len(stale)

    async def keep_closing_idle(self) -> None:
        """Run :meth:`close_idle` every ``IDLE_SECONDS`` until cancelled."""
        while True:
            await trio.sleep(IDLE_SECONDS)
            await self.close_idle()

    async def aclose(self) -> None:
        """Close every idle connection."""
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                await _close(connection)


def _dropped(connection: _Connection) -> bool:
    """Whether an idle connection is readable: EOF or a reset (servers say nothing unasked)."""
    stream: trio.abc.Stream = connection.stream
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    if not isinstance(stream, trio.SocketStream):
        return False
    try:
        return fastio.readable_now(stream.socket.fileno())
    except (OSError, ValueError):  # closed meanwhile: fileno() is -1
        return True


async def _close(connection: _Connection) -> None:
    with trio.move_on_after(1):  # a TLS close_notify must not wait on a stalled peer
        await trio.aclose_forcefully(connection.stream)


class _Upload:
    """The request's bytes going out, beside the response being read; a failed send is the
    reader's to report (it sees the reset, or reads the answer that came before it)."""

    __slots__ = ("data", "done", "failed", "finished", "stream")

    def __init__(self, stream: trio.abc.Stream, data: bytes) -> None:
        self.stream = stream
        self.data = data
        self.done = False  # every byte went out
        self.failed = False  # the send itself failed: the request did not leave whole
        self.finished = trio.Event()

    async def run(self) -> None:
        try:
            await self.stream.send_all(self.data)
            self.done = True
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.failed = True
        finally:
            self.finished.set()


class _Reading:
    """How much of the response arrived (read by the caller when reading failed)."""

    __slots__ = ("received",)

    def __init__(self) -> None:
        self.received = 0


async def _read_response(
    conn: h11.Connection, stream: trio.abc.Stream, reading: _Reading
) -> tuple[int, bool, list[str]]:
    """Read one response; return (status, connection reusable as far as reading goes, the
    ``WWW-Authenticate`` values of a 401)."""
    status = 0
    received = 0
    challenges: list[str] = []
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            chunk = bytes(await stream.receive_some(RECEIVE_BYTES))
            reading.received += len(chunk)
            conn.receive_data(chunk)
        elif isinstance(event, h11.Response):
            status = event.status_code
            if status == 401:
                challenges = [
                    value.decode("latin-1")
                    for name, value in event.headers
                    if name == b"www-authenticate"
                ]
        elif isinstance(event, h11.Data):
            received += len(event.data)
            if received > MAX_RESPONSE_BODY:
                return status, False, challenges  # the status is known; drop the rest
        elif isinstance(event, h11.EndOfMessage):
            # Bytes past the response (already read) would be taken for the next delivery's
            # response: such a connection is not reused. Bytes still in the socket make it
            # readable, which the checkout sees.
            reusable = (
                conn.our_state is h11.DONE
                and conn.their_state is h11.DONE
                and not any(conn.trailing_data)
            )
            return status, reusable, challenges
        elif isinstance(event, h11.ConnectionClosed):
            unanswered = reading.received == 0
            raise _Failure("reset", "connection closed before a response", unanswered=unanswered)
