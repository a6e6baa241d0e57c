"""The hypothesis strategies of the target-side fuzz test (tests/support/target_fuzz.py):
what a hostile target answers a proxied request with, as a :class:`Script` that knows what
the balancer may make of it; and :func:`script_of` for hand-written, pinned examples.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from hypothesis import strategies as st

from tests.support.target_fuzz import (
    BODY_STALL,
    HEAD_LIMIT,
    HEAD_STALL,
    SHORT_PAUSE,
    TAG,
    Case,
    ClientRequest,
    End,
    Script,
    Validity,
)

Draw = Callable[..., Any]
REASONS = [b"OK", b"Whatever", b"", b"caf\xe9 ok", b"Not Found Here"]
STATUSES = [200, 200, 200, 201, 202, 204, 206, 301, 304, 400, 403, 404, 418, 429, 500, 503]
EXTRAS = [
    b"Content-Type: text/plain",
    b"Cache-Control: no-cache",
    b"Set-Cookie: a=b; Path=/",
    b"Server: hostile/1",
    b"Connection: keep-alive",
    b"Vary: Accept-Encoding",
    b"Date: Mon, 01 Jan 2024 00:00:00 GMT",
]
INTERIMS = {
    100: b"HTTP/1.1 100 Continue\r\n\r\n",
    102: b"HTTP/1.1 102 Processing\r\n\r\n",
    103: b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n\r\n",
}


def chunked(content: bytes, sizes: list[int], exts: list[bytes], trailers: bytes) -> bytes:
    out, pos, i = b"", 0, 0
    while pos < len(content):
        size = sizes[i % len(sizes)] if sizes else len(content)
        piece = content[pos : pos + size]
        ext = exts[i % len(exts)] if exts else b""
        out += b"%x%s\r\n%s\r\n" % (len(piece), ext, piece)
        pos += len(piece)
        i += 1
    return out + b"0\r\n" + trailers + b"\r\n"


@dataclass
class _Draft:
    """A response being built: its head lines, framed body and what it means."""

    status_line: bytes
    headers: list[bytes]
    body: bytes
    content: bytes
    status: int
    framing: str
    validity: Validity = "valid"
    ambiguous: bool = False
    eol: bytes = b"\r\n"
    message_end_delta: int | None = 0  # body bytes past the message (<0), None: close


def _head_mutation(draw: Draw, d: _Draft) -> str:
    kind = draw(
        st.sampled_from(
            [
                *("version", "status", "separator", "reason", "obs-fold", "bare LF"),
                *("control byte", "bad field", "huge head", "many fields", "garbage"),
                *("101", "leading fold"),
            ]
        )
    )
    if kind == "version":
        version, validity = draw(
            st.sampled_from(
                [
                    (b"HTTP/1.0", "lenient"),
                    (b"HTTP/2.0", "lenient"),
                    (b"HTTP/1.2", "lenient"),
                    (b"HTTP/1", "head-invalid"),
                    (b"http/1.1", "head-invalid"),
                    (b"HTX/1.1", "head-invalid"),
                    (b"HTTP/11", "head-invalid"),
                    (b"HTTP/1.1\x00", "head-invalid"),
                ]
            )
        )
        d.status_line = version + d.status_line[8:]
        d.validity = validity
    elif kind == "status":
        codes: list[tuple[bytes, Validity]] = [
            (b"600", "lenient"),
            (b"999", "lenient"),
        ]
        if d.status in (204, 304):  # another code would change the framing
            codes = []
        code, validity = draw(
            st.sampled_from(
                [
                    *codes,
                    (b"20", "head-invalid"),
                    (b"2000", "head-invalid"),
                    (b"abc", "head-invalid"),
                    (b"099", "head-invalid"),
                    (b"000", "head-invalid"),
                    (b"-20", "head-invalid"),
                ]
            )
        )
        d.status_line = b"HTTP/1.1 " + code + d.status_line[12:]
        d.validity = validity
        if validity == "lenient":
            d.status = int(code)
    elif kind == "separator":
        d.status_line = draw(
            st.sampled_from(
                [
                    d.status_line.replace(b" ", b"\t", 1),
                    d.status_line.replace(b" ", b"  ", 1),
                    b" " + d.status_line,
                ]
            )
        )
        d.validity = "head-invalid"
    elif kind == "reason":
        reason, validity = draw(
            st.sampled_from(
                [
                    (b"", "valid"),  # "HTTP/1.1 200 " is valid: an empty reason
                    (None, "lenient"),  # no SP after the code
                    (b"O\x01K", "lenient"),
                    (b"\x80\xff", "valid"),
                    (b"O\x00K", "head-invalid"),
                    (b"O\rK", "head-invalid"),
                ]
            )
        )
        code = d.status_line[:12]
        d.status_line = code if reason is None else code + b" " + reason
        d.validity = validity
    elif kind == "obs-fold":  # RFC 9112 5.2: replaced by SP, or 502
        at = draw(st.integers(1, len(d.headers)))  # never into X-Tf-Id (the first)
        fold = draw(st.sampled_from([b" folded", b"\tfolded", b"  x: y"]))
        d.headers[at:at] = [b"X-Fold: a", fold]
        d.validity = "lenient"
    elif kind == "leading fold":
        d.headers.insert(0, b" folded")
        d.validity = "head-invalid"
    elif kind == "bare LF":
        if draw(st.booleans()):
            d.eol = b"\n"
        else:
            at = draw(st.integers(0, len(d.headers) - 1))
            d.headers[at] = d.headers[at] + b"\nX-Lf: 1"
        d.validity = "lenient"
    elif kind == "control byte":
        byte, validity = draw(
            st.sampled_from(
                [
                    (b"\x00", "head-invalid"),
                    (b"\r", "head-invalid"),
                    (b"\x01", "lenient"),
                    (b"\x1b", "lenient"),
                    (b"\x7f", "lenient"),
                    (b"\x0b", "lenient"),
                ]
            )
        )
        at = draw(st.integers(0, len(d.headers)))
        d.headers.insert(at, b"X-Ctl: a" + byte + b"b")
        d.validity = validity
    elif kind == "bad field":
        line = draw(
            st.sampled_from(
                [b"X-A : a", b"X-A\t: a", b"X-No-Colon", b": empty", b"X\xffA: 1", b"X A: 1"]
            )
        )
        at = draw(st.integers(0, len(d.headers)))
        d.headers.insert(at, line)
        d.validity = "head-invalid"
    elif kind == "huge head":
        size = draw(st.sampled_from([20_000, HEAD_LIMIT + 100, 100_000, 300_000]))
        d.headers.append(b"X-Big: " + b"b" * size)
        if size > HEAD_LIMIT:
            d.validity = "head-invalid"
    elif kind == "many fields":
        count = draw(st.sampled_from([100, 500]))
        d.headers += [b"X-Many-%d: v" % i for i in range(count)]
        if count * 16 > HEAD_LIMIT:
            d.validity = "head-invalid"
    elif kind == "garbage":
        d.status_line = draw(
            st.sampled_from([b"garbage", b"\x16\x03\x01\x02\x00", b"HTTP/1.1", b"", b"200 OK"])
        )
        d.validity = "head-invalid"
    elif kind == "101":  # switching protocols for a client that never asked
        d.status_line = b"HTTP/1.1 101 Switching Protocols"
        d.headers += [b"Upgrade: websocket", b"Connection: upgrade"]
        d.validity = "head-invalid"
    return kind


def _framing_mutation(draw: Draw, d: _Draft, bodiless: bool) -> str:
    plain = [h for h in d.headers if not h.lower().startswith((b"content-length", b"transfer"))]
    n = len(d.content)
    kind = draw(
        st.sampled_from(["duplicate CL", "conflicting CL", "bad CL", "TE and CL", "bad TE", "TE"])
    )
    if kind == "duplicate CL":
        lines = draw(
            st.sampled_from(
                [
                    [b"Content-Length: %d" % n] * 2,
                    [b"Content-Length: %d, %d" % (n, n)],
                    [b"Content-Length: 00%d" % n],
                ]
            )
        )
        d.headers, d.body, d.framing = plain + lines, b"" if bodiless else d.content, "length"
        d.validity = "lenient"
    elif kind == "conflicting CL":
        lines = draw(
            st.sampled_from(
                [
                    [b"Content-Length: %d" % n, b"Content-Length: %d" % (n + 1)],
                    [b"Content-Length: %d, %d" % (n, n + 1)],
                ]
            )
        )
        d.headers, d.body, d.framing = plain + lines, b"" if bodiless else d.content, "length"
        d.validity = "head-invalid"
    elif kind == "bad CL":
        value = draw(
            st.sampled_from([b"+%d" % n, b"-1", b"0x%x" % n, b"%da" % n, b"", b"1e3", b"9" * 30])
        )
        d.headers, d.body, d.framing = [*plain, b"Content-Length: " + value], d.content, "length"
        d.validity = "head-invalid"
    elif kind == "TE and CL":  # RFC 9112 6.3: TE wins, CL must not go on
        body = b"" if bodiless else chunked(d.content, [], [], b"")
        lines = [b"Transfer-Encoding: chunked", b"Content-Length: %d" % (len(body) + 3)]
        if draw(st.booleans()):
            lines.reverse()
        d.headers, d.body, d.framing = plain + lines, body, "chunked"
        d.validity, d.ambiguous = "lenient", True
    elif kind == "bad TE":
        value = draw(
            st.sampled_from(
                [b"gzip, chunked", b"identity", b"chunked, chunked", b"chunked;q=1", b"xchunked"]
            )
        )
        body = b"" if bodiless else chunked(d.content, [], [], b"")
        d.headers, d.body, d.framing = [*plain, b"Transfer-Encoding: " + value], body, "chunked"
        d.validity = "lenient" if value == b"gzip, chunked" else "head-invalid"
    else:
        value = draw(st.sampled_from([b"Chunked", b"CHUNKED", b" chunked "]))
        body = b"" if bodiless else chunked(d.content, [], [], b"")
        d.headers, d.body, d.framing = [*plain, b"Transfer-Encoding: " + value], body, "chunked"
    return kind


def _body_mutation(draw: Draw, d: _Draft) -> str:
    n = len(d.content)
    plain = [h for h in d.headers if not h.lower().startswith((b"content-length", b"transfer"))]
    kinds = ["short body", "long body"]
    if d.framing == "chunked":
        kinds += ["bad chunk size", "chunk too big", "no chunk CRLF", "no last chunk"]
        kinds += ["bad trailer", "size OWS"]
    kind = draw(st.sampled_from(kinds))
    if kind == "short body":  # fewer bytes than declared: can only be cut
        more = draw(st.integers(1, 1000))
        d.headers, d.body, d.framing = (
            [*plain, b"Content-Length: %d" % (n + more)],
            d.content,
            "length",
        )
        d.validity = "body-invalid"
    elif kind == "long body":  # more than declared: the rest was never asked for
        declared = draw(st.integers(13, n)) if n > 13 else n
        d.headers = [*plain, b"Content-Length: %d" % declared]
        d.body, d.framing = d.content, "length"
        d.content = d.content[:declared]
        d.message_end_delta = declared - n
    te = [*plain, b"Transfer-Encoding: chunked"]
    size = b"%x" % n
    if kind == "bad chunk size":
        bad = draw(st.sampled_from([b"zz", b"-1", b"0x5", b"5 5", b"", b"+5", b"f" * 21]))
        d.headers, d.body, d.validity = (
            te,
            bad + b"\r\n" + d.content + b"\r\n0\r\n\r\n",
            "body-invalid",
        )
    elif kind == "chunk too big":
        big = b"%x" % (n + draw(st.integers(1, 5000)))
        d.headers, d.body, d.validity = te, big + b"\r\n" + d.content, "body-invalid"
    elif kind == "no chunk CRLF":
        d.headers, d.body = te, size + b"\r\n" + d.content + b"XY0\r\n\r\n"
        d.validity = "body-invalid"
    elif kind == "no last chunk":
        d.headers, d.body = te, size + b"\r\n" + d.content + b"\r\n"
        d.validity = "body-invalid"
    elif kind == "bad trailer":
        d.headers, d.body = te, size + b"\r\n" + d.content + b"\r\n0\r\nno colon\r\n\r\n"
        d.validity = "body-invalid"
    elif kind == "size OWS":  # RFC 9112 7.1.1 has BWS only before a chunk extension
        d.headers, d.body = te, size + b"  \r\n" + d.content + b"\r\n0\r\n\r\n"
        d.validity = "lenient"
    return kind


@st.composite
def client_requests(draw: Draw) -> ClientRequest:
    method = draw(st.sampled_from([b"GET", b"GET", b"HEAD", b"POST", b"PUT", b"DELETE"]))
    if method not in (b"POST", b"PUT"):
        return ClientRequest(method)
    body = draw(st.sampled_from([b"", b"hello", b"x" * 5000, b"u" * 300_000]))
    return ClientRequest(method, body, expect=bool(body) and draw(st.integers(0, 4)) == 0)


@st.composite
def scripts(draw: Draw, request: ClientRequest) -> Script:
    status = draw(st.sampled_from(STATUSES))
    bodiless = request.method == b"HEAD" or status in (204, 304)
    reason = draw(st.sampled_from(REASONS))
    extras = draw(st.lists(st.sampled_from(EXTRAS), max_size=3, unique=True))
    payload = draw(
        st.binary(max_size=300)
        | st.sampled_from([b"", b"\r\n\r\nHTTP/1.1 200 OK\r\n\r\n"])
        | st.sampled_from([70_000, 200_000]).map(lambda n: b"z" * n)
    )
    content = b"" if status in (204, 304) else b"id:" + TAG + b";" + payload
    framing = draw(st.sampled_from(["length", "length", "chunked", "close"]))
    headers = [b"X-Tf-Id: " + TAG, *extras]
    body = b"" if bodiless else content
    if framing == "length":
        if status != 204:
            headers.append(b"Content-Length: %d" % len(content))
    elif framing == "chunked":
        sizes = draw(st.lists(st.integers(12, 70_000), max_size=3))  # TAG whole
        exts = draw(st.lists(st.sampled_from([b"", b";a=b", b';q="x;y"', b"; e"]), max_size=2))
        trailers = draw(st.sampled_from([b"", b"X-Trailer: t\r\n", b"Content-Length: 9\r\n"]))
        headers.append(draw(st.sampled_from([b"Transfer-Encoding: chunked"])))
        body = b"" if bodiless else chunked(content, sizes, exts, trailers)
    d = _Draft(b"HTTP/1.1 %d %s" % (status, reason), headers, body, content, status, framing)
    mutation = draw(st.sampled_from(["none", "none", "none", "head", "framing", "body"]))
    label = f"{framing}"
    if mutation == "head":
        label += " " + _head_mutation(draw, d)
    elif mutation == "framing":
        label += " " + _framing_mutation(draw, d, bodiless)
    elif mutation == "body" and not bodiless and d.content and framing != "close":
        label += " " + _body_mutation(draw, d)
    eol = d.eol
    head = d.status_line + eol + b"".join(h + eol for h in d.headers) + eol
    interims = tuple(draw(st.lists(st.sampled_from(sorted(INTERIMS)), max_size=3)))
    prefix = b"".join(INTERIMS[code] for code in interims)
    if bodiless:
        d.body = b""
    data = prefix + head + d.body
    head_end = len(prefix) + len(head)
    message_end: int | None = len(data) + (d.message_end_delta or 0)
    if bodiless:
        message_end = head_end
    elif d.framing == "close" or d.validity == "body-invalid":
        message_end = None if d.framing == "close" else message_end
    extra = b""
    if (
        message_end is not None
        and d.framing != "close"
        and d.validity != "body-invalid"  # its missing bytes would come from them
        and draw(st.integers(0, 5)) == 0
    ):
        extra = draw(
            st.sampled_from(
                [
                    b"garbage after the response",
                    b"\r\n",
                    b"HTTP/1.1 200 OK\r\nX-Tf-Id: unasked\r\nContent-Length: 7\r\n\r\nunasked",
                    b"HTTP/1.1 103 Early Hints\r\n\r\n",
                ]
            )
        )
        label += " + extra"
    data += extra
    # How it ends: kept open, closed, reset or drained; sometimes cut short anywhere.
    ends: list[End] = ["keep", "keep", "close", "reset", "linger"]
    if d.framing == "close" and not bodiless:
        ends = ["close", "close", "reset"]
    end = draw(st.sampled_from(ends))
    cut = None
    if draw(st.integers(0, 3)) == 0:
        cut = draw(st.integers(0, len(data)))
        label += " cut"
        if end == "keep" and draw(st.integers(0, 2)) > 0:
            end = "close"  # a stall to the timeout costs a second; keep those rarer
    pauses: list[tuple[int, float]] = []
    trickle = draw(st.sampled_from(["none"] * 6 + ["within", "within", "head", "body"]))
    # Never between a response and bytes after it: those may come after the next request
    # went out on the connection, and then no proxy can tell them from its response.
    last = len(data) - 1 if not extra or message_end is None else message_end - 1
    if trickle == "within":
        offsets = draw(st.sets(st.integers(1, max(1, last)), min_size=1, max_size=3))
        pauses = [(o, SHORT_PAUSE) for o in sorted(offsets)]
    elif trickle == "head" and head_end > 0:
        pauses = [(draw(st.integers(0, head_end - 1)), HEAD_STALL)]
    elif trickle == "body" and message_end is not None and message_end > head_end + 1:
        pauses = [(draw(st.integers(head_end + 1, message_end - 1)), BODY_STALL)]
    if pauses:
        label += f" trickle {trickle}"
    read_body = not request.body or draw(st.integers(0, 2)) > 0
    if not read_body:
        label += " early"
    return Script(
        data,
        label,
        d.validity,
        d.status,
        d.content,
        interims,
        head_end,
        message_end,
        big_head=len(head) > HEAD_LIMIT,
        ambiguous=d.ambiguous,
        pauses=tuple(pauses),
        cut=cut,
        end=end,
        read_body=read_body,
    )


@st.composite
def cases(draw: Draw) -> Case:
    request = draw(client_requests())
    return Case(request, draw(scripts(request)))


def script_of(response: bytes, **options: Any) -> Script:
    """A hand-written script for a pinned example: a valid response, by default."""
    head_end = response.index(b"\r\n\r\n") + 4
    found = re.match(rb"HTTP/1\.[01] (\d{3})", response)
    status = int(found.group(1)) if found else None
    values: dict[str, Any] = {
        "label": "pinned",
        "validity": "valid",
        "status": status,
        "content": response[head_end:],
        "head_end": head_end,
        "message_end": len(response),
    }
    values.update(options)
    return replace(Script(response, **values))
