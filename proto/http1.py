"""HTTP/1.1 helpers around h11 for a proxy: hop-by-hop headers, X-Forwarded-* (and ALB's
30-address limit), trace ids, and the desync classification of requests.

h11 parses and frames; these functions only look at what it parsed (header lists of
``(lower-case name, value)`` bytes pairs, as h11's events iterate) and at the raw bytes of a
request head, which h11 normalises before anyone else can see them (it joins obs-folded
lines and merges repeated identical Content-Length headers).

Desync classification follows ALB's ``desync_mitigation_mode`` (built on AWS's
http-desync-guardian): every request is *compliant*, *acceptable*, *ambiguous* or *severe*,
with the reason names ALB writes in its access log. What happens to it is the ``action`` of
the :class:`Verdict`; this module implements ALB's *defensive* mode, made stricter where a
header could frame the body differently for the target than for us (two Content-Length
headers, Content-Length with Transfer-Encoding, obs-fold, names that normalise to a framing
header): those are refused, as HAProxy does, rather than forwarded and the connection closed.

Nothing here does I/O or reads a clock: the time and random bytes of a trace id are
arguments.
"""

from __future__ import annotations

import ast
import enum
import ipaddress
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Final, Literal, NamedTuple

import h11

# h11's chunk-header grammar and the reader matching it (private): install_chunk_header_pattern.
from h11 import _abnf, _readers

# h11's container of parsed fields (private, but what its events keep): events built from
# fields h11 normalised already take it as they are (parsed_headers).
from h11._headers import Headers

# h11's receive buffer (private), what a body reader reads from: _StrictChunkedReader.
from h11._receivebuffer import ReceiveBuffer

Header = tuple[bytes, bytes]
XffMode = Literal["append", "preserve", "remove"]


# RFC 9110 §7.6.1 and RFC 2616 §13.5.1: meaningful for one connection only, never forwarded.
# Transfer-Encoding is hop-by-hop too, but it is h11's framing instruction: the shell hands
# it to h11, which frames the next hop itself (re-chunking, or close-delimited for HTTP/1.0).
HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)
# A client may name any header in Connection to have it dropped; never these, or a request
# could lose its framing or its Host on the way to the target (a classic desync trick).
NEVER_DROPPED: Final = frozenset({b"content-length", b"transfer-encoding", b"host"})

FORWARDED_FOR: Final = b"x-forwarded-for"
FORWARDED_PROTO: Final = b"x-forwarded-proto"
FORWARDED_PORT: Final = b"x-forwarded-port"
TRACE_ID: Final = b"x-amzn-trace-id"
TRACE_ID_BYTES: Final = 12  # 24 hex digits, as AWS's trace ids
# load-balancer-request-tracing: "If the HTTP headers are greater than 7 KB, the load balancer
# rewrites the X-Amzn-Trace-Id header with a Root field."
TRACE_ROOT_ONLY_HEAD_BYTES: Final = 7 * 1024


def header_list(headers: Iterable[Header]) -> list[Header]:
    """A plain list of ``(lower-case name, value)`` pairs from h11's ``Headers``.

    h11's ``Headers`` is a ``Sequence`` whose iteration goes through the generic
    ``Sequence.__iter__`` (one ``__getitem__`` call building a tuple per item); a proxy
    walks every header list several times per request, so it reads h11's stored
    ``(raw name, name, value)`` triples once instead, falling back to iteration for any
    other iterable (or an h11 without that attribute).
    """
    full = getattr(headers, "_full_items", None)
    if isinstance(full, list):
        return [(name, value) for _, name, value in full]
    return list(headers)


def origin_form(
    target: bytes, headers: list[Header], method: bytes = b"GET"
) -> tuple[bytes, list[Header]] | None:
    """An absolute-form request (``GET http://host/path``) as origin-form, with its Host.

    RFC 9112 §3.2.2: a proxy ignores the received Host of such a request and sends the
    request-target's authority as Host instead, so the target serves the host the rules
    routed on. Userinfo (``user@``) is dropped, as RFC 9110 §4.2.4 asks.

    Returns:
        The origin-form target (``/`` when the URI has no path; ``*`` for an OPTIONS whose
        URI has neither path nor query, which RFC 9112 §3.2.4 requires of the last proxy:
        ``/`` would ask about another resource than the server as a whole) and the headers
        with the one Host first; None for any other form (origin, authority, asterisk), or
        an ``http(s)`` URI without a host, which the caller refuses.
    """
    scheme, separator, rest = target.partition(b"://")
    if not separator or scheme.lower() not in (b"http", b"https"):
        return None
    end = len(rest)
    for delimiter in b"/?":  # the authority ends at the path or the query
        found = rest.find(delimiter)
        if 0 <= found < end:
            end = found
    authority = rest[:end].rpartition(b"@")[2]
    if not authority:
        return None
    path = rest[end:]
    if not path and method == b"OPTIONS":
        path = b"*"
    elif not path.startswith(b"/"):
        path = b"/" + path
    return path, [(b"host", authority)] + [h for h in headers if h[0] != b"host"]


# RFC 9112 3.2.3: authority-form = uri-host ":" port, the port required.
_AUTHORITY_FORM: Final = re.compile(rb"(\[[^\]]*\]|[^:\[\]]+):([0-9]{1,5})")


def is_authority_form(target: bytes) -> bool:
    """Whether ``target`` is ``host:port`` and nothing else: a valid host (a name, an IPv4
    address or a bracketed IPv6 one) and a port from 1 to 65535 (RFC 9110 9.3.6: a server
    MUST reject a CONNECT to an empty or invalid port)."""
    match = _AUTHORITY_FORM.fullmatch(target)
    return match is not None and 1 <= int(match.group(2)) <= 65535 and is_valid_host(match.group(1))


def has_request_target_form(method: bytes, target: bytes) -> bool:
    """Whether ``target`` is in the one of RFC 9112 3.2's four forms that ``method`` may use.

    Origin-form (``/path?query``) and absolute-form (an ``http``/``https`` URI with an
    authority, which :func:`origin_form` rewrites) for every method but CONNECT;
    authority-form (``host:port``) for CONNECT alone, and CONNECT uses nothing else (3.2.3);
    asterisk-form (``*``) for OPTIONS alone (3.2.4). Anything else (``http:/admin``,
    ``x:/y``, ``host:443`` on a GET, ``CONNECT /x``) would reach a target verbatim with a
    path the rules never saw, or open a tunnel on an origin server's path: HAProxy answers
    400 to all of them. No form carries a fragment (``#``): the rules would skip it where
    the target may not (``/x#/../admin`` cleaned to ``/admin``), and ``#@`` in an
    absolute-form authority would name another Host; HAProxy refuses it too
    (CVE-2023-45539).
    """
    if b"#" in target:
        return False
    if method == b"CONNECT":
        return is_authority_form(target)
    if target[:1] == b"/":
        return True
    if target == b"*":
        return method == b"OPTIONS"
    return origin_form(target, []) is not None


class _FastHeaders(Headers):
    """h11's ``Headers``, iterated as a list is (not one ``__getitem__`` call per item)."""

    __slots__ = ()

    def __iter__(self) -> Iterator[Header]:
        return iter([(name, value) for _, name, value in self._full_items])


def parsed_headers(headers: list[Header]) -> Headers:
    """``headers`` as h11's ``Headers``, for an event built with ``_parsed=True``.

    Only for fields h11 normalised already (its parse of a message, lower-case names) and
    ones built here the same way: for those, the normalisation h11 applies to a plain list
    (lower-casing every name again, re-checking Content-Length and Transfer-Encoding) is
    the identity, and it runs for both heads of every proxied request. The container also
    iterates without ``Sequence.__iter__``, which h11 itself walks (Host counting).
    """
    return _FastHeaders([(name, name, value) for name, value in headers])


class ServerConnection(h11.Connection):
    """h11's server side, for a connection whose responses carry :func:`parsed_headers`.

    Before sending a response h11 fixes its framing and ``Connection`` fields: on a connection
    that closes (the client sent ``Connection: close``, or spoke HTTP/1.0) it rewrites
    ``Connection``, and for a body of unknown length it rewrites ``Transfer-Encoding`` and
    drops ``Content-Length``. Each rewrite normalises and validates every header of the
    head again (``set_comma_header``), and even a head it leaves alone is read twice for
    its framing. For a head from :func:`parsed_headers` (fields normalised already) this
    makes the same changes, in the same order, without those passes (the bytes on the wire
    and the state are checked against stock h11 by the tests); any other head gets h11's
    own.
    """

    def _clean_up_response_headers_for_sending(self, response: h11.Response) -> h11.Response:
        headers = response.headers
        if type(headers) is not _FastHeaders:
            return super()._clean_up_response_headers_for_sending(response)
        fields = headers._full_items
        chunked = has_length = False
        options: list[bytes] = []  # the Connection values
        for _, name, value in fields:
            if name == b"transfer-encoding":
                chunked = chunked or _has_token(value)
            elif name == b"content-length":
                has_length = has_length or _has_token(value)
            elif name == b"connection":
                options.append(value)
        method = self._request_method
        status = response.status_code
        # A HEAD's head is framed as its GET's would be (as h11 does).
        no_body = status in (204, 304) or (method == b"CONNECT" and 200 <= status < 300)
        need_close = False
        if not no_body and (chunked or not has_length):  # a body of unknown length
            fields = [f for f in fields if f[1] not in _FRAMING]
            version = self.their_http_version
            if version is None or version < b"1.1":
                need_close = method != b"HEAD"  # read until the close
            else:
                fields.append((b"Transfer-Encoding", b"transfer-encoding", b"chunked"))
        elif self._cstate.keep_alive:
            return response  # nothing to change: the common case
        if not self._cstate.keep_alive or need_close:
            if options == [b"close"]:  # what the proxy itself adds to a closing response
                tokens = {b"close"}
            else:
                tokens = set(connection_tokens((b"connection", value) for value in options))
                tokens.discard(b"keep-alive")
                tokens.add(b"close")
            fields = [field for field in fields if field[1] != b"connection"]
            fields += [(b"Connection", b"connection", token) for token in sorted(tokens)]
        return h11.Response(
            headers=_FastHeaders(fields),
            status_code=status,
            http_version=response.http_version,
            reason=response.reason,
            _parsed=True,
        )


def _has_token(value: bytes) -> bool:
    """Whether a comma-separated field value names anything (h11's ``get_comma_header``)."""
    return any(part.strip() for part in value.split(b","))


def connection_tokens(headers: Iterable[Header]) -> frozenset[bytes]:
    """The lower-case options of every ``Connection`` header (``close``, ``upgrade``...)."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    tokens.discard(b"")
    return frozenset(tokens)


def strip_hop_by_hop(headers: Iterable[Header], *, upgrade: bool = False) -> list[Header]:
    """The headers without hop-by-hop ones, including those ``Connection`` names.

    Args:
        headers: h11's parsed headers (lower-case names).
        upgrade: keep ``Connection: upgrade`` and ``Upgrade`` (a WebSocket handshake being
            forwarded, whose upgrade the next hop must see).
    """
    headers = header_list(headers)
    listed: frozenset[bytes] | set[bytes] = _EMPTY
    for name, _ in headers:
        if name == b"connection":
            listed = connection_tokens(headers) - NEVER_DROPPED
            break
    kept: list[Header] = []
    for name, value in headers:
        if name in HOP_BY_HOP or name in listed:
            if upgrade and name == b"upgrade":
                kept.append((name, value))
            continue
        kept.append((name, value))
    if upgrade:
        kept.append((b"connection", b"upgrade"))
    return kept


def forwardable_framing(status: int, headers: list[Header]) -> list[Header]:
    """A target's response headers without framing fields a proxy must not pass on.

    - A 1xx or a 204 carries neither Content-Length nor Transfer-Encoding (RFC 9110 8.6,
      RFC 9112 6.1): a client that does not special-case them would wait for, or read the
      next response as, the body those fields announce.
    - A response framed by both is read by Transfer-Encoding, and its Content-Length must be
      removed before forwarding (RFC 9112 6.3 item 3); otherwise the client may frame it by
      the other field than the proxy did.

    Args:
        status: the response's status code.
        headers: its headers as h11 parsed them (lower-case names).
    """
    names = {name for name, _ in headers}
    if status == 204 or status < 200:
        dropped: tuple[bytes, ...] = (b"content-length", b"transfer-encoding")
    elif b"transfer-encoding" in names:
        dropped = (b"content-length",)
    else:
        return headers
    if not names.intersection(dropped):
        return headers
    return [(name, value) for name, value in headers if name not in dropped]


# RFC 9110 7.2: Host = uri-host [ ":" port ], uri-host being RFC 3986's IP-literal, IPv4
# address or reg-name (unreserved, pct-encoded and sub-delims characters; empty is allowed).
_HOST_VALUE: Final = re.compile(
    rb"(?:\[[0-9A-Fa-f:.]+(?:%25[A-Za-z0-9._~%-]+)?\]|[A-Za-z0-9._~!$&'()*+,;=%-]*)(?::[0-9]*)?"
)


def is_valid_host(value: bytes) -> bool:
    """Whether a Host header's value is an authority; RFC 9112 3.2 answers any other with 400.

    h11 checks only that there is exactly one Host: a value such as ``evil.test/x?`` would
    otherwise reach rules, redirects' Location and logs as if it were a host name. A
    bracketed literal must be an IPv6 address (RFC 3986 3.2.2) and a port at most 65535, so
    that a URL built from the value (a queue URL, a redirect) always parses.
    """
    if _HOST_VALUE.fullmatch(value) is None:
        return False
    if value[:1] == b"[":
        literal, _, after = value[1:].partition(b"]")
        port = after[1:]
        try:
            ipaddress.IPv6Address(literal.partition(b"%25")[0].decode("ascii"))
        except ValueError:
            return False
    else:
        port = value.partition(b":")[2]  # a reg-name or IPv4 address holds no colon
    return not port or int(port) <= 65535


def names_a_host(value: bytes) -> bool:
    """Whether a Host header's value is an authority (:func:`is_valid_host`) with a host in
    it: not empty, and not a port alone (``:80``).

    RFC 9110 4.2.1 and 4.2.2: "A sender MUST NOT generate an "http" URI with an empty host
    identifier" (nor an "https" one), and a recipient rejects one as invalid. RFC 9112 3.3:
    an origin-form request whose Host is empty has a target URI with an empty authority, which
    a server may reject. A proxy that takes such a Host on builds ``https://:443/...``
    redirects and routes on a host nobody named.
    """
    return value[:1] not in (b"", b":") and is_valid_host(value)


def first_header(headers: Iterable[Header], name: bytes) -> bytes | None:
    """The value of the first header named ``name`` (lower-case, as h11 gives names)."""
    for key, value in headers:
        if key == name:
            return value
    return None


def prepare_response(status: int, headers: Iterable[Header]) -> tuple[list[Header], bool]:
    """A target's response headers as the client gets them, in one pass.

    The same list as ``forwardable_framing(status, strip_hop_by_hop(headers))``, and whether
    the response was framed by both Transfer-Encoding and Content-Length (which a proxy
    must not trust its next exchange on that connection to). This runs for every
    proxied response.
    """
    fields = header_list(headers)
    listed: frozenset[bytes] | set[bytes] = _EMPTY
    tokens_read = has_length = has_chunked = False
    for name, _ in fields:
        if name == b"connection":
            if not tokens_read:
                listed = connection_tokens(fields) - NEVER_DROPPED
                tokens_read = True
        elif name == b"content-length":
            has_length = True
        elif name == b"transfer-encoding":
            has_chunked = True
    dropped: frozenset[bytes] = HOP_BY_HOP
    if status == 204 or status < 200:
        if has_length or has_chunked:
            dropped = HOP_BY_HOP | _FRAMING
    elif has_chunked and has_length:
        dropped = HOP_BY_HOP | _LENGTH
    if listed:
        dropped = dropped | listed
    return [field for field in fields if field[0] not in dropped], has_chunked and has_length


_FRAMING: Final = frozenset({b"content-length", b"transfer-encoding"})
_LENGTH: Final = frozenset({b"content-length"})


def is_upgrade(headers: Iterable[Header]) -> bool:
    """Whether a request asks to switch protocols (``Connection: upgrade`` + ``Upgrade``)."""
    headers = list(headers)
    for name, _ in headers:
        if name == b"connection":
            break
    else:
        return False  # nearly every request: no Connection header, no tokens to read
    return b"upgrade" in connection_tokens(headers) and any(n == b"upgrade" for n, _ in headers)


def upgrade_protocols(headers: Iterable[Header]) -> list[bytes]:
    """The protocols every ``Upgrade`` header lists, lower-case, in order (``websocket``,
    ``h2c``, ``foo/1``); empty members are skipped."""
    protocols: list[bytes] = []
    for name, value in headers:
        if name == b"upgrade":
            protocols.extend(p.strip().lower() for p in value.split(b",") if p.strip())
    return protocols


H2C: Final = b"h2c"
_H2C_ONLY: Final = frozenset({b"http2-settings"})


def without_h2c(headers: list[Header]) -> list[Header]:
    """A request's headers with its offer to switch to h2c withdrawn.

    RFC 9113 3.1 deprecates the h2c upgrade, and ALB's one HTTP/1.1 upgrade is WebSocket. A
    proxy that passes it on lets the target turn the connection into a tunnel through which
    later requests skip the listener's rules ("h2c smuggling"). So the ``h2c`` token leaves
    ``Upgrade`` (the field goes when nothing is left), ``HTTP2-Settings`` goes, and so do
    their tokens in ``Connection``, ``upgrade`` too once no protocol is offered: the request
    goes on as a plain one, and a 101 for it is one nobody asked for. Other upgrades
    (WebSocket) are left as they are. The list itself is returned when there is no h2c.
    """
    offered = upgrade_protocols(headers)
    if H2C not in offered:
        return headers
    remaining = [protocol for protocol in offered if protocol != H2C]
    dropped = _H2C_ONLY if remaining else _H2C_ONLY | {b"upgrade"}
    kept: list[Header] = []
    for name, value in headers:
        if name == b"upgrade":
            tokens = [t.strip() for t in value.split(b",")]
            tokens = [t for t in tokens if t and t.lower() != H2C]
            if tokens:
                kept.append((name, b", ".join(tokens)))
        elif name == b"http2-settings":
            continue
        elif name == b"connection":
            tokens = [t.strip() for t in value.split(b",")]
            tokens = [t for t in tokens if t and t.lower() not in dropped]
            if tokens:
                kept.append((name, b", ".join(tokens)))
        else:
            kept.append((name, value))
    return kept


def valid_switch(request_headers: Iterable[Header], response_headers: Iterable[Header]) -> bool:
    """Whether a 101 may be passed on for this request: it names the protocol(s) it switches
    to (RFC 9110 7.8: its sender MUST send Upgrade), each one the request offered."""
    chosen = upgrade_protocols(response_headers)
    return bool(chosen) and set(chosen) <= set(upgrade_protocols(request_headers))


# ---------------------------------------------------------------------------------------------
# X-Forwarded-* (ALB x-forwarded-headers.md).


def client_address(ip: str, port: int, *, with_port: bool) -> bytes:
    """The client as X-Forwarded-For lists it: ``ip`` or ``ip:port`` (``[ip]:port`` for IPv6).

    An IPv4 client seen through a dual-stack socket (``::ffff:a.b.c.d``) is written as IPv4.
    """
    if ip.startswith("::ffff:") and "." in ip:
        ip = ip[7:]
    if not with_port:
        return ip.encode("ascii")
    return (f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}").encode("ascii")


class Forwarding(NamedTuple):
    """What the X-Forwarded-* headers say about one client connection."""

    client: bytes  # from client_address()
    proto: bytes  # b"http" or b"https": the client-to-balancer protocol
    port: bytes  # the port the client connected to
    mode: XffMode = "append"
    trusted: bool = False  # the peer is a trusted proxy: its X-Forwarded-* are kept


def forwarded_headers(headers: Iterable[Header], forwarding: Forwarding) -> list[Header]:
    """Apply X-Forwarded-For / -Proto / -Port to a request's headers.

    From an untrusted peer every incoming X-Forwarded-* header is dropped: a client could
    otherwise claim any address. From a trusted proxy they are kept, X-Forwarded-For is
    extended (append) or passed unchanged (preserve), and -Proto/-Port keep the proxy's
    values when it sent them. ``remove`` drops X-Forwarded-For whoever sent it.
    """
    kept: list[Header] = []
    chain: list[bytes] = []
    proto: bytes | None = None
    port: bytes | None = None
    for name, value in headers:
        if name == FORWARDED_FOR:
            if forwarding.trusted and value:  # an empty line adds no address
                chain.append(value)
        elif name == FORWARDED_PROTO:
            if forwarding.trusted and proto is None:
                proto = value
        elif name == FORWARDED_PORT:
            if forwarding.trusted and port is None:
                port = value
        else:
            kept.append((name, value))
    if forwarding.mode == "append":
        chain.append(forwarding.client)
    if chain and forwarding.mode != "remove":
        kept.append((FORWARDED_FOR, b", ".join(chain)))
    kept.append((FORWARDED_PROTO, proto or forwarding.proto))
    kept.append((FORWARDED_PORT, port or forwarding.port))
    return kept


# ALB's routing.http.drop_invalid_header_fields.enabled: a valid field name matches this.
VALID_FIELD_NAME: Final = re.compile(rb"[-A-Za-z0-9]+")


def valid_fields(headers: Sequence[Header]) -> list[Header]:
    """The headers whose names match ALB's ``[-A-Za-z0-9]+`` (what its
    ``drop_invalid_header_fields`` keeps): ``X_Forwarded_For`` or ``X.Real.IP`` go, which
    CGI-style servers (WSGI, PHP, Rack) would read as ``X-Forwarded-For`` / ``X-Real-IP``.
    The list itself is returned when every name is valid."""
    if all(VALID_FIELD_NAME.fullmatch(name) for name, _ in headers):
        return headers if isinstance(headers, list) else list(headers)
    return [field for field in headers if VALID_FIELD_NAME.fullmatch(field[0])]


def prepare_request(
    headers: Sequence[Header],
    forwarding: Forwarding,
    trace_id: bytes,
    *,
    upgrade: bool = False,
    default_host: bytes = b"",
    head_bytes: int = 0,
) -> tuple[list[Header], bytes]:
    """A request's headers as the next hop gets them, in one pass.

    The same result as :func:`strip_hop_by_hop`, then :func:`forwarded_headers`, then
    ``Expect`` dropped (the proxy adds ``100-continue`` back only when its client is waiting
    for it and a body follows, which h11's state tells), the trace header replaced
    by :func:`trace_header` at the end (``head_bytes``: the size of the request's head), and a
    Host added first when there was none (an HTTP/1.0 request). One loop instead of four:
    this runs for every proxied request.

    Returns:
        The headers and the trace header's value.
    """
    listed: frozenset[bytes] | set[bytes] = _EMPTY
    for name, _ in headers:
        if name == b"connection":
            listed = connection_tokens(headers) - NEVER_DROPPED
            break
    trusted = forwarding.trusted
    kept: list[Header] = []
    chain: list[bytes] = []
    proto: bytes | None = None
    port: bytes | None = None
    existing: bytes | None = None
    has_host = False
    for name, value in headers:
        if name in HOP_BY_HOP or name in listed:
            if upgrade and name == b"upgrade":
                kept.append((name, value))
        elif name == FORWARDED_FOR:
            if trusted and value:  # an empty line adds no address
                chain.append(value)
        elif name == FORWARDED_PROTO:
            if trusted and proto is None:
                proto = value
        elif name == FORWARDED_PORT:
            if trusted and port is None:
                port = value
        elif name == TRACE_ID:
            if existing is None:
                existing = value
        elif name == b"expect":
            continue
        else:
            if name == b"host":
                has_host = True
            kept.append((name, value))
    if upgrade:
        kept.append((b"connection", b"upgrade"))
    mode = forwarding.mode
    if mode == "append":
        chain.append(forwarding.client)
    if chain and mode != "remove":
        kept.append((FORWARDED_FOR, b", ".join(chain)))
    kept.append((FORWARDED_PROTO, proto or forwarding.proto))
    kept.append((FORWARDED_PORT, port or forwarding.port))
    trace = trace_header(existing, trace_id, head_bytes=head_bytes)
    kept.append((TRACE_ID, trace))
    if not has_host and default_host:
        kept.insert(0, (b"host", default_host))
    return kept, trace


_EMPTY: Final[frozenset[bytes]] = frozenset()


# ---------------------------------------------------------------------------------------------
# Trace ids (load-balancer-request-tracing.md): Root=1-<8 hex epoch seconds>-<24 hex>.

_TRACE_FIELD = re.compile(rb"^(Root|Self)=1-[0-9a-f]{8}-[0-9a-f]{24}$")


def new_trace_id(now: float, random_bytes: bytes) -> bytes:
    """``1-<time>-<id>``: epoch seconds as 8 hex digits, then 24 hex digits of randomness.

    Raises:
        ValueError: ``random_bytes`` is not 12 bytes.
    """
    if len(random_bytes) != TRACE_ID_BYTES:
        raise ValueError(f"a trace id needs {TRACE_ID_BYTES} random bytes")
    return b"1-%08x-%s" % (int(now) & 0xFFFFFFFF, random_bytes.hex().encode("ascii"))


def trace_header(existing: bytes | None, trace_id: bytes, *, head_bytes: int = 0) -> bytes:
    """The X-Amzn-Trace-Id value to forward.

    Absent, or in a request head of more than 7 KB (``head_bytes``): ``Root=<id>``.
    Otherwise ALB's rules (load-balancer-request-tracing), other fields kept:

    - "If the X-Amzn-Trace-Id header is present and has a Self field, the load balancer
      updates the value of the Self field": it becomes ``Self=<id>``, where the first one
      was (one Self is left), whether or not there is a Root.
    - With a Root and no Self: ``Self=<id>`` inserted first (``Self=..;Root=..``).
    - Without a Root: a fresh ``Root=<id>`` in front of what was there.
    """
    if not existing or head_bytes > TRACE_ROOT_ONLY_HEAD_BYTES:
        return b"Root=" + trace_id
    fields = [f.strip() for f in existing.split(b";") if f.strip()]
    has_root = any(f.startswith(b"Root=") for f in fields)
    own = b"Self=" + trace_id
    selves = [i for i, f in enumerate(fields) if f.startswith(b"Self=")]
    if selves:  # one Self, where the first was
        fields = [own if i == selves[0] else f for i, f in enumerate(fields)]
        fields = [f for i, f in enumerate(fields) if i not in selves[1:]]
    elif has_root:
        fields.insert(0, own)
    if not has_root:
        fields.insert(0, b"Root=" + trace_id)
    return b";".join(fields)


def trace_root(value: bytes) -> bytes:
    """The Root field of a trace header (what the access log's ``trace_id`` shows)."""
    for field in value.split(b";"):
        field = field.strip()
        if field.startswith(b"Root="):
            return field
    return value


def is_trace_field(field: bytes) -> bool:
    """Whether ``field`` is a well-formed ``Root=`` or ``Self=`` field (for tests and logs)."""
    return _TRACE_FIELD.match(field) is not None


# ---------------------------------------------------------------------------------------------
# Desync classification (ALB desync mitigation, defensive mode).


class Classification(enum.IntEnum):
    """ALB's classes, in increasing order of danger."""

    COMPLIANT = 0
    ACCEPTABLE = 1
    AMBIGUOUS = 2
    SEVERE = 3

    @property
    def label(self) -> str:
        """The access log's spelling: ``Compliant``, ``Acceptable``..."""
        return self.name.capitalize()


class Action(enum.Enum):
    """What the listener does with a classified request."""

    ALLOW = "allow"
    CLOSE_AFTER = "close_after"  # serve it, then close the client and target connections
    REFUSE = "refuse"  # answer 400 and close the client connection


class Verdict(NamedTuple):
    classification: Classification
    reason: str  # ALB's classification_reason, or "" when compliant
    action: Action


COMPLIANT: Final = Verdict(Classification.COMPLIANT, "", Action.ALLOW)

# Reason -> (class, what defensive mode does). ALB's names; ObsFold is ours (ALB's guardian
# reports folded lines under its header rules; naming it plainly helps an operator).
_REASONS: Final[dict[str, tuple[Classification, Action]]] = {
    "BadContentLength": (Classification.SEVERE, Action.REFUSE),
    "BadHeader": (Classification.SEVERE, Action.REFUSE),
    "BadTransferEncoding": (Classification.SEVERE, Action.REFUSE),
    "BadUri": (Classification.SEVERE, Action.REFUSE),
    "BadMethod": (Classification.SEVERE, Action.REFUSE),
    "BadVersion": (Classification.SEVERE, Action.REFUSE),
    "MultipleContentLength": (Classification.SEVERE, Action.REFUSE),
    "MultipleTransferEncodingChunked": (Classification.SEVERE, Action.REFUSE),
    "ObsFold": (Classification.SEVERE, Action.REFUSE),
    # Ambiguous for ALB (served, then closed); refused here because the target could frame
    # the body differently than h11 did.
    "BothTeClPresent": (Classification.AMBIGUOUS, Action.REFUSE),
    "DuplicateContentLength": (Classification.AMBIGUOUS, Action.REFUSE),
    "SuspiciousHeader": (Classification.AMBIGUOUS, Action.REFUSE),
    "AmbiguousUri": (Classification.AMBIGUOUS, Action.CLOSE_AFTER),
    "UndefinedContentLengthSemantics": (Classification.AMBIGUOUS, Action.CLOSE_AFTER),
    "UndefinedTransferEncodingSemantics": (Classification.AMBIGUOUS, Action.CLOSE_AFTER),
    "GetHeadZeroContentLength": (Classification.ACCEPTABLE, Action.ALLOW),
    "NonCompliantHeader": (Classification.ACCEPTABLE, Action.ALLOW),
    "NonCrLfLineTermination": (Classification.ACCEPTABLE, Action.ALLOW),
    "NonCompliantVersion": (Classification.ACCEPTABLE, Action.ALLOW),
}
REASONS: Final = frozenset(_REASONS)


def verdict(reason: str) -> Verdict:
    """The verdict for one of ALB's reason names (``KeyError`` for an unknown name)."""
    classification, action = _REASONS[reason]
    return Verdict(classification, reason, action)


# The end of a head, as h11 finds it: a blank line, CRLF or bare LF.
_HEAD_END = re.compile(rb"\n\r?\n")
# Anything in a head beyond printable ASCII, SP, HTAB and CRLF line ends. One search of a
# compiled pattern keeps the clean case (nearly every request) fast.
_SUSPECT = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\xff]|\r(?!\n)|\n[ \t]")
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # HTAB is the only control allowed
_FRAMING_LINE = re.compile(rb"\n(content-length|transfer-encoding)[ \t]*:([^\r\n]*)", re.IGNORECASE)
_METHOD = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]")
# A first line that _classify_request_line finds compliant (a token method other than
# CONNECT, an origin-form target of visible ASCII but "#", or HTAB, HTTP/1.0 or 1.1), ended by CRLF
# or LF: nearly every request's, checked in one match instead of a split and five.
_PLAIN_REQUEST_LINE = re.compile(
    rb"(?!CONNECT )[-!#$%&'*+.^_`|~0-9A-Za-z]+ /[\t\x21-\x22\x24-\x7e]* HTTP/1\.[01]\r?\n"
)
_FRAMING_NAMES = frozenset({b"content-length", b"transfer-encoding"})
# A name with the letters of a framing header and other punctuation (Content_Length,
# Transfer--Encoding) is one to a lenient server, which maps '_' to '-' as CGI does or
# skips what is not a letter: ALB's guardian calls those names SuspiciousHeader.
_FRAMING_LETTERS = frozenset({b"contentlength", b"transferencoding"})
_NOT_ALPHANUMERIC = bytes(b for b in range(256) if not chr(b).isascii() or not chr(b).isalnum())
LOOKALIKE_MIN_LENGTH: Final = len(b"contentlength")  # shorter names cannot be one
# Every name classify_headers looks at, but for lookalikes (see is_lookalike).
CLASSIFIED_NAMES: Final = _FRAMING_NAMES
# The largest Content-Length ALB's guardian parses: it reads the value as an unsigned
# 64-bit number, and a larger one (which a target may wrap around) is BadContentLength.
MAX_CONTENT_LENGTH: Final = 2**64 - 1
# The largest chunk size h11 reads (16 hex digits): 2^64-1, as for Content-Length.
MAX_CHUNK_SIZE_DIGITS: Final = 16


def install_chunk_header_pattern() -> None:
    """Replace h11's chunk-header pattern (both ways) with RFC 9112 7.1's, sizes bounded.

    - At most 16 hex digits (2^64-1). h11 0.16 reads up to 20, so ``10000000000000003`` is
      one chunk of 2^64+3 bytes that swallows whatever follows (the next pipelined request,
      or response) while a next hop that wraps sizes at 64 bits reads a 3-byte chunk:
      request smuggling through a proxy chain. HAProxy answers 400 to such a request and 502
      to such a response. A size written with more digits is refused even when its leading
      ones are zeros.
    - Whitespace before an extension's ``;`` (``3 ;name``): RFC 9112 7.1.1 writes
      ``chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )`` and
      HAProxy skips it; h11 allows whitespace only before the CRLF. Extensions are dropped
      (h11 re-chunks the body for the next hop), so accepting it frames nothing differently.

    Everything else is h11's grammar (extensions, trailing whitespace). A refused header
    makes h11 raise its usual ``illegal chunk header``, which the listener refuses as a bad
    chunk size (BadTransferEncoding) and the forward path as an invalid response. h11
    frames every body here and nothing re-frames one by hand, so the pattern is replaced
    once per process (every h11 connection shares it).

    This leans on two h11 internals: ``h11._abnf.chunk_header`` (the pattern's source) and
    the module global ``h11._readers.chunk_header_re`` that ``ChunkedReader`` matches each
    chunk header with. If a future h11 moves either, this raises at import rather than let
    the bound lapse silently (tests/proto/test_http1.py checks the behaviour as well).
    """
    source = _abnf.chunk_header.encode("ascii")
    extension = b"(?P<chunk_ext>%s)" % _abnf.chunk_ext.encode("ascii")
    narrowed = source.replace(
        _abnf.chunk_size.encode("ascii"), b"[0-9A-Fa-f]{1,%d}" % MAX_CHUNK_SIZE_DIGITS
    ).replace(extension + b"?", b"(?:[ \\t]*%s)?" % extension)  # BWS before the ";"
    installed = getattr(getattr(_readers, "chunk_header_re", None), "pattern", None)
    if installed == narrowed:
        return
    reader = getattr(_readers, "ChunkedReader", None)
    uses = reader is not None and "chunk_header_re" in reader.__call__.__code__.co_names
    if source.count(extension + b"?") != 1 or narrowed == source or installed != source or not uses:
        raise RuntimeError("h11's chunk reader changed: proto.http1 cannot bound chunk sizes")
    _readers.chunk_header_re = re.compile(narrowed)


install_chunk_header_pattern()


# The state ChunkedReader keeps (private): _StrictChunkedReader reads it to know that it waits
# for a chunk header.
_CHUNKED_READER_STATE: Final = frozenset(
    {"_bytes_in_chunk", "_bytes_to_discard", "_reading_trailer"}
)
BARE_LF_CHUNK_LINE: Final = "illegal chunk header: a chunk line must end with CRLF, not a bare LF"


class _StrictChunkedReader(_readers.ChunkedReader):
    """h11's chunked-body reader, refusing a chunk-size line ended by a bare LF at once.

    RFC 9112 7.1 ends chunk-size lines (and chunk data) with CRLF; 2.2 allows a bare LF only
    in a head. h11 looks for CRLF alone, so ``3\\nabc\\n0\\n\\n`` left it waiting for
    more, the request held until its body timeout (a 408, the target holding half a request
    meanwhile). While a chunk header is awaited nothing has been taken out of the buffer since
    the last CRLF, so a LF in it ends the line without its CR: refused now, with the message
    ``illegal chunk header`` that the listener classifies (BadTransferEncoding) and the
    forward path takes as an invalid response. (A bare LF after chunk data is refused by h11
    itself: ``malformed chunk footer``. Trailer lines are field lines, which may end in LF.)
    """

    def __call__(self, buf: ReceiveBuffer) -> h11.Data | h11.EndOfMessage | None:
        event = super().__call__(buf)
        if (
            event is None
            and not self._bytes_in_chunk
            and not self._bytes_to_discard
            and not self._reading_trailer
            and b"\n" in bytes(buf)
        ):
            raise h11.RemoteProtocolError(BARE_LF_CHUNK_LINE)
        return event


def install_strict_chunked_reader() -> None:
    """Make every h11 connection read chunked bodies with :class:`_StrictChunkedReader`.

    h11 builds a body's reader from ``h11._readers.READERS[SEND_BODY]["chunked"]`` (a dict its
    connections share), and the strict reader reads ``ChunkedReader``'s private state: if a
    future h11 changes either, this raises at import rather than let bare LFs hang requests
    again silently (tests/proto/test_http1.py checks the behaviour as well).
    """
    readers = getattr(_readers, "READERS", {}).get(h11.SEND_BODY)
    if not isinstance(readers, dict):
        raise RuntimeError("h11's readers changed: proto.http1 cannot refuse bare-LF chunk lines")
    installed = readers.get("chunked")
    if installed is _StrictChunkedReader:
        return
    if installed is not _readers.ChunkedReader or set(vars(installed())) != _CHUNKED_READER_STATE:
        raise RuntimeError("h11's readers changed: proto.http1 cannot refuse bare-LF chunk lines")
    readers["chunked"] = _StrictChunkedReader


install_strict_chunked_reader()


def is_lookalike(name: bytes) -> bool:
    """Whether a lower-case header name reads as Content-Length or Transfer-Encoding once
    its punctuation is ignored, without being one of them."""
    return (
        len(name) >= LOOKALIKE_MIN_LENGTH
        and name not in _FRAMING_NAMES
        and name.translate(None, _NOT_ALPHANUMERIC) in _FRAMING_LETTERS
    )


def head_end(buffer: bytes | bytearray) -> int:
    """The index just past the blank line that ends a head in ``buffer``, or -1."""
    found = _HEAD_END.search(buffer)
    return -1 if found is None else found.end()


def _worst(a: Verdict, b: Verdict) -> Verdict:
    return b if b.classification > a.classification else a


def classify_head(head: bytes | bytearray, *, framing: bool = True) -> Verdict:
    """Classify the raw bytes of one request head (request line to blank line).

    Looks only at what h11 would hide: folded lines, control and non-ASCII bytes, repeated
    Content-Length lines, malformed request lines. Header semantics (both TE and CL, CL on
    a GET) are :func:`classify_headers`'s.

    Args:
        head: the head's bytes.
        framing: look for repeated Content-Length / Transfer-Encoding lines. The shell
            skips it when h11 parsed no such header (so none can be repeated).
    """
    head = bytes(head)
    found = _SUSPECT.search(head)
    line_end = head.find(b"\n")
    if _PLAIN_REQUEST_LINE.match(head) is not None:
        result = COMPLIANT  # what _classify_request_line says of it, in one match
    else:
        request_line = head[: line_end if line_end >= 0 else len(head)].removesuffix(b"\r")
        result = _classify_request_line(request_line)
    if found is not None:
        result = _worst(result, _classify_suspect(head, max(line_end, 0)))
    if head.count(b"\n") != head.count(b"\r\n"):  # a line ended by LF alone (h11 takes it)
        result = _worst(result, verdict("NonCrLfLineTermination"))
    if not framing:
        return result
    lines = [m.group(1).lower() for m in _FRAMING_LINE.finditer(head)]
    if lines.count(b"content-length") > 1:
        values = {m.group(2).strip() for m in _FRAMING_LINE.finditer(head)}
        reason = "MultipleContentLength" if len(values) > 1 else "DuplicateContentLength"
        result = _worst(result, verdict(reason))
    elif b"content-length" in lines:
        value = next(m.group(2) for m in _FRAMING_LINE.finditer(head))
        if b"," in value:  # not a number: ALB's guardian reads "5, 5" as BadContentLength
            result = _worst(result, verdict("BadContentLength"))
    if lines.count(b"transfer-encoding") > 1:
        result = _worst(result, verdict("MultipleTransferEncodingChunked"))
    return result


def _classify_request_line(line: bytes) -> Verdict:
    parts = line.split(b" ")
    if len(parts) != 3:
        return verdict("BadUri")
    method, target, version = parts
    if not _METHOD.fullmatch(method):
        return verdict("BadMethod")
    if not _VERSION.fullmatch(version):
        return verdict("BadVersion")
    if _CONTROL.search(target) or not has_request_target_form(method, target):
        return verdict("BadUri")
    if version not in (b"HTTP/1.0", b"HTTP/1.1"):
        return verdict("NonCompliantVersion")
    if not target.isascii():
        return verdict("AmbiguousUri")
    return COMPLIANT


def _classify_suspect(head: bytes, fields_start: int) -> Verdict:
    fields = head[fields_start:]
    if re.search(rb"\n[ \t]+\S", fields):
        return verdict("ObsFold")
    if re.search(rb"\n[ \t]*\r?\n(?!$)", fields):
        return verdict("ObsFold")  # a whitespace-only line inside the head folds as well
    if b"\0" in fields or re.search(rb"\r(?!\n)", fields):
        return verdict("BadHeader")
    if _CONTROL.search(fields.replace(b"\r\n", b"").replace(b"\n", b"")):
        return verdict("BadHeader")
    if not fields.isascii():
        return verdict("NonCompliantHeader")
    return COMPLIANT


def classify_headers(
    method: bytes, headers: Sequence[Header], http_version: bytes = b"1.1"
) -> Verdict:
    """Classify what h11 parsed: framing headers and their meaning for this method and
    version."""
    has_cl = has_te = False
    length = b""
    result = COMPLIANT
    for name, value in headers:
        if name == b"content-length":
            has_cl, length = True, value
        elif name == b"transfer-encoding":
            has_te = True
        elif is_lookalike(name):
            result = _worst(result, verdict("SuspiciousHeader"))
    if has_cl and has_te:
        return _worst(result, verdict("BothTeClPresent"))
    if has_cl and len(length) > 19 and int(length) > MAX_CONTENT_LENGTH:
        return _worst(result, verdict("BadContentLength"))
    if has_te and http_version == b"1.0":  # chunked is HTTP/1.1's: undefined in 1.0
        result = _worst(result, verdict("UndefinedTransferEncodingSemantics"))
    if method in (b"GET", b"HEAD"):
        if has_te:
            result = _worst(result, verdict("UndefinedTransferEncodingSemantics"))
        elif has_cl:
            zero = length.strip(b"0") == b""
            reason = "GetHeadZeroContentLength" if zero else "UndefinedContentLengthSemantics"
            result = _worst(result, verdict(reason))
    return result


# Header fields of a head h11 refused, for the checks it makes before classify_head could.
_FIELD = re.compile(rb"\n([^:\r\n]*):([^\r\n]*)")
_CHUNKED_ONLY = re.compile(rb"[ \t]*chunked[ \t]*", re.IGNORECASE)


def classify_refused_head(head: bytes | bytearray) -> Verdict:
    """Classify the complete head of a request h11 refused, from its bytes alone.

    :func:`classify_head` first (folding, control bytes, repeated lengths), then what h11
    checks that it does not: a name with whitespace before its colon (``SuspiciousHeader``
    when it would read as a framing header once trimmed, else ``BadHeader``), a
    Content-Length that is not digits (``BadContentLength``), a Transfer-Encoding other than
    ``chunked`` (``BadTransferEncoding``).

    Returns:
        A refusing verdict, or :data:`COMPLIANT` when the bytes show nothing (the caller
        falls back to h11's message).
    """
    head = bytes(head)
    result = classify_head(head)
    if result.action is Action.REFUSE:
        return result
    for match in _FIELD.finditer(head):
        raw_name, value = match.group(1), match.group(2).strip(b" \t")
        name = raw_name.strip(b" \t").lower()
        if raw_name != raw_name.rstrip(b" \t") or not raw_name or raw_name[:1] in b" \t":
            framing = name in _FRAMING_NAMES or is_lookalike(name)
            result = _worst(result, verdict("SuspiciousHeader" if framing else "BadHeader"))
        elif name == b"content-length":
            if not all(part.strip(b" \t").isdigit() for part in value.split(b",")):
                result = _worst(result, verdict("BadContentLength"))
        elif name == b"transfer-encoding" and not _CHUNKED_ONLY.fullmatch(value):
            result = _worst(result, verdict("BadTransferEncoding"))
    return result if result.action is Action.REFUSE else COMPLIANT


# h11's RemoteProtocolError messages -> ALB reasons, for requests h11 refused before their
# head was complete (or for what the head's bytes do not show).
_H11_MESSAGES: Final = (
    ("conflicting content-length", "MultipleContentLength"),
    ("bad content-length", "BadContentLength"),
    ("transfer-encoding", "BadTransferEncoding"),
    ("chunk", "BadTransferEncoding"),
    ("illegal request line", "BadUri"),
    ("illegal header line", "BadHeader"),
    ("continuation line", "ObsFold"),
    ("illegal target", "BadUri"),
    ("illegal method", "BadMethod"),
    ("host", "BadHeader"),
)


def classify_parse_error(message: str, head: bytes | bytearray | None = None) -> Verdict:
    """The verdict for a request h11 could not parse (always refused).

    The raw head, when complete, names the reason (:func:`classify_refused_head`);
    otherwise h11's message does.
    """
    if head is not None:
        found = classify_refused_head(head)
        if found.action is Action.REFUSE:
            return found
    lowered = message.lower()
    for needle, reason in _H11_MESSAGES:
        if needle in lowered:
            return verdict(reason)
    return Verdict(Classification.SEVERE, "BadHeader", Action.REFUSE)


# h11 quotes the line it could not parse as a bytes repr ("illegal header line:
# bytearray(b'...')", "illegal chunk header: b'...'"): a client's header value or body bytes.
_QUOTED_BYTES: Final = re.compile(r"""(?:bytearray\()?b(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")
_LOGGED_FIELD_NAME: Final = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")


def loggable_parse_error(message: str) -> str:
    """h11's reason for refusing a request, fit for a log: which rule broke, without the bytes.

    What h11 quotes of the request is replaced by its length, and for a header line by its
    field name as well when that is a token (``Authorization : ...`` names Authorization):
    never a field value or body bytes, which may carry credentials or personal data. A
    message quoting nothing is h11's (or :data:`BARE_LF_CHUNK_LINE`'s) own words, kept.
    """
    found = _QUOTED_BYTES.search(message)
    if found is None:
        return message
    rule = message[: found.start()].rstrip(": ")
    literal = found.group().removeprefix("bytearray(")
    try:
        quoted = ast.literal_eval(literal)
    except (SyntaxError, ValueError):
        return rule
    parts = [f"{len(quoted)} bytes"]
    if rule == "illegal header line" and b":" in quoted:
        name = quoted.partition(b":")[0].rstrip(b" \t")
        if _LOGGED_FIELD_NAME.fullmatch(name):
            parts.insert(0, f"field {name.decode('ascii')}")
    return f"{rule}: {', '.join(parts)}"


# ---------------------------------------------------------------------------------------------
# ALB's 463: an X-Forwarded-For chain longer than it accepts.

# ALB answers 463 when X-Forwarded-For lists more than 30 addresses (ALB troubleshooting,
# "HTTP 463"); a chain that long is a loop between proxies or a client stuffing the header.
MAX_FORWARDED_FOR_ADDRESSES: Final = 30


def forwarded_for_overflow(headers: Iterable[Header]) -> bool:
    """Whether the X-Forwarded-For headers together list more than 30 addresses.

    Entries are counted as ALB does, by commas across every X-Forwarded-For line; an
    empty entry counts too (it is still an element of the list).
    """
    count = 0
    for name, value in headers:
        if name == FORWARDED_FOR:
            count += value.count(b",") + 1
            if count > MAX_FORWARDED_FOR_ADDRESSES:
                return True
    return False
