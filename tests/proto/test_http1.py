from __future__ import annotations

import re
import urllib.parse

import h11
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from proto.http1 import (
    BARE_LF_CHUNK_LINE,
    COMPLIANT,
    HOP_BY_HOP,
    Action,
    Classification,
    Forwarding,
    ServerConnection,
    XffMode,
    classify_head,
    classify_headers,
    classify_parse_error,
    classify_refused_head,
    client_address,
    connection_tokens,
    first_header,
    forwardable_framing,
    forwarded_for_overflow,
    forwarded_headers,
    has_request_target_form,
    head_end,
    header_list,
    install_chunk_header_pattern,
    install_strict_chunked_reader,
    is_authority_form,
    is_lookalike,
    is_trace_field,
    is_upgrade,
    is_valid_host,
    loggable_parse_error,
    names_a_host,
    new_trace_id,
    origin_form,
    parsed_headers,
    prepare_request,
    prepare_response,
    strip_hop_by_hop,
    trace_header,
    trace_root,
    upgrade_protocols,
    valid_switch,
    verdict,
    without_h2c,
)

TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12).map(str.encode)
VALUE = st.binary(max_size=20).map(lambda b: bytes(c for c in b if 0x21 <= c <= 0x7E))
HEADERS = st.lists(st.tuples(TOKEN, VALUE), max_size=12)


# Hop-by-hop headers --------------------------------------------------------------------------


def test_hop_by_hop_and_connection_listed_headers_are_removed():
    headers = [
        (b"host", b"a.example"),
        (b"connection", b"keep-alive, X-Secret"),
        (b"keep-alive", b"timeout=5"),
        (b"x-secret", b"1"),
        (b"te", b"trailers"),
        (b"upgrade", b"h2c"),
        (b"accept", b"*/*"),
    ]
    assert strip_hop_by_hop(headers) == [(b"host", b"a.example"), (b"accept", b"*/*")]


def test_connection_can_never_drop_framing_or_host():
    headers = [
        (b"host", b"a"),
        (b"content-length", b"3"),
        (b"connection", b"content-length, host, transfer-encoding"),
    ]
    assert strip_hop_by_hop(headers) == [(b"host", b"a"), (b"content-length", b"3")]


def test_upgrade_requests_keep_their_upgrade():
    headers = [(b"host", b"a"), (b"connection", b"Upgrade"), (b"upgrade", b"websocket")]
    assert is_upgrade(headers)
    assert strip_hop_by_hop(headers, upgrade=True) == [
        (b"host", b"a"),
        (b"upgrade", b"websocket"),
        (b"connection", b"upgrade"),
    ]
    assert not is_upgrade([(b"upgrade", b"websocket")])  # Connection must say so too


@given(HEADERS)
def test_stripping_leaves_no_hop_by_hop_header_and_is_idempotent(headers):
    once = strip_hop_by_hop(headers)
    listed = connection_tokens(headers) - {b"content-length", b"transfer-encoding", b"host"}
    assert all(name not in HOP_BY_HOP and name not in listed for name, _ in once)
    assert set(once) <= set(headers)
    assert strip_hop_by_hop(once) == once


def test_header_list_reads_h11_headers_in_order():
    request = h11.Request(
        method="GET", target="/", headers=[("Host", "a"), ("X-A", "1"), ("x-a", "2")]
    )
    assert header_list(request.headers) == [(b"host", b"a"), (b"x-a", b"1"), (b"x-a", b"2")]
    assert header_list([(b"a", b"b")]) == [(b"a", b"b")]


# X-Forwarded-* -------------------------------------------------------------------------------

INCOMING = [
    (b"host", b"a"),
    (b"x-forwarded-for", b"6.6.6.6"),
    (b"x-forwarded-proto", b"https"),
    (b"x-forwarded-port", b"443"),
]


def forwarding(mode: XffMode = "append", *, trusted: bool = False) -> Forwarding:
    return Forwarding(b"10.0.0.7", b"http", b"80", mode, trusted)


def test_untrusted_clients_cannot_claim_an_address_or_protocol():
    assert forwarded_headers(INCOMING, forwarding()) == [
        (b"host", b"a"),
        (b"x-forwarded-for", b"10.0.0.7"),
        (b"x-forwarded-proto", b"http"),
        (b"x-forwarded-port", b"80"),
    ]


def test_a_trusted_proxy_chain_is_extended_and_its_proto_kept():
    out = dict(forwarded_headers(INCOMING, forwarding(trusted=True)))
    assert out[b"x-forwarded-for"] == b"6.6.6.6, 10.0.0.7"
    assert out[b"x-forwarded-proto"] == b"https"
    assert out[b"x-forwarded-port"] == b"443"


def test_preserve_passes_a_trusted_chain_unchanged_and_remove_drops_it():
    preserved = dict(forwarded_headers(INCOMING, forwarding("preserve", trusted=True)))
    assert preserved[b"x-forwarded-for"] == b"6.6.6.6"
    assert b"x-forwarded-for" not in dict(forwarded_headers(INCOMING, forwarding("preserve")))
    removed = dict(forwarded_headers(INCOMING, forwarding("remove", trusted=True)))
    assert b"x-forwarded-for" not in removed
    assert removed[b"x-forwarded-proto"] == b"https"


def test_an_empty_trusted_x_forwarded_for_adds_no_empty_address():
    empty = [(b"host", b"a"), (b"x-forwarded-for", b"")]
    appended = dict(forwarded_headers(empty, forwarding(trusted=True)))
    assert appended[b"x-forwarded-for"] == b"10.0.0.7"
    preserved = dict(forwarded_headers(empty, forwarding("preserve", trusted=True)))
    assert b"x-forwarded-for" not in preserved


def test_client_addresses_as_x_forwarded_for_writes_them():
    assert client_address("10.0.0.1", 5, with_port=False) == b"10.0.0.1"
    assert client_address("10.0.0.1", 5, with_port=True) == b"10.0.0.1:5"
    assert client_address("2001:db8::1", 5, with_port=True) == b"[2001:db8::1]:5"
    assert client_address("::ffff:10.0.0.1", 5, with_port=False) == b"10.0.0.1"


@given(HEADERS, st.sampled_from(["append", "preserve", "remove"]))
def test_an_untrusted_peers_forwarded_values_never_pass(headers, mode):
    spoofed = [*headers, (b"x-forwarded-for", b"6.6.6.6"), (b"x-forwarded-proto", b"evil")]
    out = forwarded_headers(spoofed, forwarding(mode))
    assert (b"x-forwarded-for", b"6.6.6.6") not in out
    assert all(b"6.6.6.6" not in v for n, v in out if n == b"x-forwarded-for")
    assert [v for n, v in out if n == b"x-forwarded-proto"] == [b"http"]
    assert sum(n == b"x-forwarded-port" for n, _ in out) == 1


# Trace ids -----------------------------------------------------------------------------------

ID = new_trace_id(0x5F000000, bytes(range(12)))


def test_trace_ids_have_aws_format():
    assert ID == b"1-5f000000-000102030405060708090a0b"
    assert is_trace_field(b"Root=" + ID)
    with pytest.raises(ValueError, match="12 random bytes"):
        new_trace_id(0, b"short")


def test_trace_header_rules():
    assert trace_header(None, ID) == b"Root=" + ID
    other = b"Root=1-00000000-aaaaaaaaaaaaaaaaaaaaaaaa"
    # load-balancer-request-tracing: "Self=...;Root=...;CalledFrom=app", a Self updated.
    assert (
        trace_header(other + b";CalledFrom=app", ID)
        == b"Self=" + ID + b";" + other + b";CalledFrom=app"
    )
    assert trace_header(other + b";Self=old", ID) == other + b";Self=" + ID
    assert trace_header(b"Self=a;" + other + b";Self=b", ID) == b"Self=" + ID + b";" + other
    assert trace_header(b"CalledFrom=app", ID) == b"Root=" + ID + b";CalledFrom=app"
    long = other + b";Custom=" + b"y" * 2000
    assert trace_header(long, ID) == b"Self=" + ID + b";" + long  # kept: the head is small
    # In a head over 7 KB, only a Root, whatever the header held (AWS's rule).
    assert trace_header(other, ID, head_bytes=7 * 1024) == b"Self=" + ID + b";" + other
    assert trace_header(other, ID, head_bytes=7 * 1024 + 1) == b"Root=" + ID
    assert trace_root(other + b";Self=" + ID) == other


def test_a_self_field_is_updated_even_without_a_root():
    # load-balancer-request-tracing: "If the X-Amzn-Trace-Id header is present and has a
    # Self field, the load balancer updates the value of the Self field." With no Root, one
    # is added in front as for any header without one.
    client_self = b"Self=1-11111111-111111111111111111111111"
    assert (
        trace_header(client_self + b";CalledFrom=app", ID)
        == b"Root=" + ID + b";Self=" + ID + b";CalledFrom=app"
    )
    assert trace_header(b"A=1;" + client_self + b";Self=x", ID) == (
        b"Root=" + ID + b";A=1;Self=" + ID
    )


TRACE_FIELDS = st.lists(
    st.sampled_from(
        [
            b"Self=1-11111111-111111111111111111111111",
            b"Root=1-22222222-222222222222222222222222",
            b"Self=",
            b"CalledFrom=app",
            b" Self=x ",
        ]
    )
    | VALUE,
    max_size=5,
).map(b";".join)


@given(st.one_of(st.none(), TRACE_FIELDS), st.binary(min_size=12, max_size=12))
def test_no_client_self_field_is_ever_forwarded(existing, random):
    trace_id = new_trace_id(0x5F000000, random)
    value = trace_header(existing, trace_id)
    selves = [f for f in value.split(b";") if f.startswith(b"Self=")]
    assert selves in ([], [b"Self=" + trace_id])


@given(st.one_of(st.none(), VALUE), st.floats(0, 2**32 - 1), st.binary(min_size=12, max_size=12))
def test_a_forwarded_trace_header_always_has_one_well_formed_root(existing, now, random):
    trace_id = new_trace_id(now, random)
    value = trace_header(existing, trace_id)
    roots = [f for f in value.split(b";") if f.strip().startswith(b"Root=")]
    assert roots
    if not existing or b"Root=" not in existing:
        assert is_trace_field(roots[0])


# Desync classification -----------------------------------------------------------------------


def head(*lines: bytes, request_line: bytes = b"GET / HTTP/1.1") -> bytes:
    return b"\r\n".join([request_line, *lines]) + b"\r\n\r\n"


CLEAN = head(b"Host: a.example", b"Accept: */*")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (head(b"Host: a", b"X-A: b", b" folded"), "ObsFold"),
        (head(b"Host: a", b"\tX: y"), "ObsFold"),
        (head(b"Host: a", b"X: a\x00b"), "BadHeader"),
        (head(b"Host: a", b"X: a\rb"), "BadHeader"),
        (head(b"Host: a", b"X: a\x01b"), "BadHeader"),
        (head(b"Host: a", b"Content-Length: 5", b"Content-Length: 5"), "DuplicateContentLength"),
        # ALB's guardian parses one line's value as a number: a list is BadContentLength.
        (head(b"Host: a", b"Content-Length: 5, 5"), "BadContentLength"),
        (head(b"Host: a", b"Content-Length: 5,6"), "BadContentLength"),
        (head(b"Host: a", b"Content-Length: 5", b"content-length: 6"), "MultipleContentLength"),
        (
            head(b"Host: a", b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"),
            "MultipleTransferEncodingChunked",
        ),
        (head(b"Host: a", request_line=b"G(T / HTTP/1.1"), "BadMethod"),
        (head(b"Host: a", request_line=b"GET / HTTP/x"), "BadVersion"),
        (head(b"Host: a", request_line=b"GET /a\x7fb HTTP/1.1"), "BadUri"),
        (head(b"Host: a", request_line=b"GET  / HTTP/1.1"), "BadUri"),
    ],
)
def test_heads_that_h11_would_normalise_are_refused(raw, reason):
    found = classify_head(raw)
    assert found.reason == reason
    assert found.action is Action.REFUSE


def test_a_clean_head_is_compliant_and_obs_text_only_acceptable():
    assert classify_head(CLEAN) == COMPLIANT
    found = classify_head(head(b"Host: a", b"X: caf\xe9"))
    assert (found.classification, found.action) == (Classification.ACCEPTABLE, Action.ALLOW)
    assert classify_head(head(b"Host: a", request_line=b"GET / HTTP/1.2")).reason == (
        "NonCompliantVersion"
    )


@pytest.mark.parametrize(
    ("method", "headers", "reason", "action"),
    [
        (
            b"POST",
            [(b"content-length", b"5"), (b"transfer-encoding", b"chunked")],
            "BothTeClPresent",
            Action.REFUSE,
        ),
        (b"POST", [(b"content_length", b"5")], "SuspiciousHeader", Action.REFUSE),
        (b"POST", [(b"transfer---encoding", b"chunked")], "SuspiciousHeader", Action.REFUSE),
        (b"POST", [(b"content.length.", b"5")], "SuspiciousHeader", Action.REFUSE),
        (b"POST", [(b"content-lengths", b"5")], "", Action.ALLOW),
        (b"POST", [(b"content-length2", b"5")], "", Action.ALLOW),
        # Read as an unsigned 64-bit number by ALB's guardian; beyond it, a target may wrap.
        (b"POST", [(b"content-length", b"18446744073709551615")], "", Action.ALLOW),
        (
            b"POST",
            [(b"content-length", b"18446744073709551616")],
            "BadContentLength",
            Action.REFUSE,
        ),
        (b"POST", [(b"content-length", b"000000000000000000000005")], "", Action.ALLOW),
        (
            b"GET",
            [(b"content-length", b"5")],
            "UndefinedContentLengthSemantics",
            Action.CLOSE_AFTER,
        ),
        (b"HEAD", [(b"content-length", b"0")], "GetHeadZeroContentLength", Action.ALLOW),
        (
            b"GET",
            [(b"transfer-encoding", b"chunked")],
            "UndefinedTransferEncodingSemantics",
            Action.CLOSE_AFTER,
        ),
        (b"POST", [(b"content-length", b"5")], "", Action.ALLOW),
    ],
)
def test_header_semantics(method, headers, reason, action):
    found = classify_headers(method, headers)
    assert (found.reason, found.action) == (reason, action)


def test_chunked_in_an_http_1_0_request_is_undefined():
    chunked = [(b"transfer-encoding", b"chunked")]
    found = classify_headers(b"POST", chunked, b"1.0")
    assert (found.reason, found.action) == (
        "UndefinedTransferEncodingSemantics",
        Action.CLOSE_AFTER,
    )
    assert classify_headers(b"POST", chunked, b"1.1") == COMPLIANT


@given(
    name=st.binary(min_size=1, max_size=24).map(bytes.lower)
    | st.lists(st.sampled_from([b"content", b"length", b"transfer", b"encoding", b"-", b"_", b"."]))
    .map(b"".join)
    .filter(bool)
)
@example(name=b"transfer_encoding")
@example(name=b"-content-length")
def test_a_lookalike_has_the_letters_of_a_framing_header_and_is_not_one(name):
    letters = bytes(b for b in name if chr(b).isascii() and chr(b).isalnum())
    expected = letters in (b"contentlength", b"transferencoding") and name not in (
        b"content-length",
        b"transfer-encoding",
    )
    assert is_lookalike(name) == expected


def h11_refusal(data: bytes) -> str:
    """The message h11 refuses ``data`` (a client's bytes) with."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    try:
        while conn.next_event() is not h11.NEED_DATA:
            pass
    except h11.RemoteProtocolError as refused:
        return str(refused)
    raise AssertionError(f"h11 accepted {data!r}")


@pytest.mark.parametrize(
    ("data", "logged"),
    [
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nCookie : AWSALB=SECRET\r\n\r\n",
            "illegal header line: field Cookie, 22 bytes",
        ),
        (b"GET / HTTP/1.1\r\nHost: a\r\nSECRET\r\n\r\n", "illegal header line: 6 bytes"),
        (b"GET /?k=\x01SECRET HTTP/1.1\r\nHost: a\r\n\r\n", "illegal request line: 24 bytes"),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabSECRET\r\n",
            "malformed chunk footer: 2 bytes",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n",
            "bad Content-Length",  # h11's own words: nothing quoted, kept as they are
        ),
    ],
)
def test_a_parse_error_is_logged_without_the_bytes_h11_quotes(data, logged):
    message = h11_refusal(data)
    assert loggable_parse_error(message) == logged
    assert "SECRET" not in loggable_parse_error(message)


def test_h11_parse_errors_map_to_alb_reasons():
    assert classify_parse_error("conflicting Content-Length headers").reason == (
        "MultipleContentLength"
    )
    assert classify_parse_error("illegal chunk header").reason == "BadTransferEncoding"
    assert classify_parse_error("Only Transfer-Encoding: chunked is supported").reason == (
        "BadTransferEncoding"
    )
    assert classify_parse_error("something new").action is Action.REFUSE
    # The raw head names the reason better than h11's message when it is complete.
    folded = head(b"Host: a", b" x")
    assert classify_parse_error("continuation line at start of headers", folded).reason == "ObsFold"
    assert verdict("BadHeader").classification is Classification.SEVERE


# Chunk headers: sizes at most 2^64-1, BWS before an extension (install_chunk_header_pattern)


def _first_chunk(role: type[h11.SERVER] | type[h11.CLIENT], size: bytes) -> h11.Data:
    """What h11 reads first of a chunked body whose first chunk header is ``size``, with
    three bytes of data and a pipelined request after them."""
    if role is h11.SERVER:  # a client's request
        conn = h11.Connection(h11.SERVER)
        start = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    else:  # a target's response
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method="GET", target="/", headers=[("host", "a")]))
        conn.send(h11.EndOfMessage())
        start = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    conn.receive_data(start + size + b"\r\nabc\r\n0\r\n\r\nGET /next HTTP/1.1\r\n\r\n")
    assert isinstance(conn.next_event(), h11.Request | h11.Response)
    event = conn.next_event()
    assert isinstance(event, h11.Data)
    assert event.chunk_start
    return event


@pytest.mark.parametrize("role", [h11.SERVER, h11.CLIENT])
@given(st.integers(1, 2**64 - 1) | st.integers(2**64, 2**80))
@example(2**64 - 1)
@example(2**64 + 3)  # the hunt's 10000000000000003: one chunk swallowing the next request
def test_chunk_sizes_beyond_64_bits_are_refused_both_ways(role, size: int) -> None:
    digits = b"%x" % size
    if size <= 2**64 - 1:
        _first_chunk(role, digits)
        return
    with pytest.raises(h11.RemoteProtocolError) as refused:
        _first_chunk(role, digits)
    # The listener's bad-chunk classification of h11's message.
    assert classify_parse_error(str(refused.value)).reason == "BadTransferEncoding"


@pytest.mark.parametrize("role", [h11.SERVER, h11.CLIENT])
def test_small_chunk_sizes_with_extensions_and_whitespace_still_read(role) -> None:
    for size in (b"3", b"003", b"3;name=value", b"3 ", b"0000000000000003"):
        assert _first_chunk(role, size).data == b"abc", size
    with pytest.raises(h11.RemoteProtocolError):  # 17 digits, if only zeros: refused
        _first_chunk(role, b"00000000000000003")


def test_the_chunk_bound_relies_on_h11_internals_that_are_still_there(monkeypatch) -> None:
    """Fails the day h11 renames what install_chunk_header_pattern patches: its reader's
    pattern global (read at each chunk header) and the grammar it is compiled from."""
    from h11 import _abnf, _readers

    assert "chunk_header_re" in _readers.ChunkedReader.__call__.__code__.co_names
    assert _abnf.chunk_size in _abnf.chunk_header
    extension = f"(?P<chunk_ext>{_abnf.chunk_ext})"
    assert _readers.chunk_header_re.pattern == _abnf.chunk_header.replace(
        _abnf.chunk_size, "[0-9A-Fa-f]{1,16}"
    ).replace(extension + "?", f"(?:[ \\t]*{extension})?").encode("ascii")
    install_chunk_header_pattern()  # installed once: a second call changes nothing
    assert _readers.chunk_header_re.pattern.count(b"{1,16}") == 1
    # An h11 whose reader is no longer built from that grammar stops the import loudly.
    monkeypatch.setattr(_readers, "chunk_header_re", re.compile(rb"(?P<chunk_size>\d+)\r\n"))
    with pytest.raises(RuntimeError, match="chunk reader changed"):
        install_chunk_header_pattern()


# RFC 9112 7.1.1: chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
_BWS = st.text(alphabet=" \t", max_size=3).map(str.encode)
_CHUNK_EXTENSIONS = st.lists(
    st.tuples(_BWS, TOKEN, _BWS, st.none() | st.tuples(_BWS, TOKEN | st.just(b'"quoted; v"'))),
    min_size=1,
    max_size=3,
).map(
    lambda exts: b"".join(
        before + b";" + after + name + (b"" if value is None else value[0] + b"=" + value[1])
        for before, name, after, value in exts
    )
)


@pytest.mark.parametrize("role", [h11.SERVER, h11.CLIENT])
@given(st.integers(0, 15).map(lambda zeros: b"0" * zeros + b"3"), _CHUNK_EXTENSIONS, _BWS)
@example(b"3", b" ;ext", b"")  # the hunt's "3 ;ext": refused as a desync attempt before
@example(b"3", b"\t; a = 1", b" ")
def test_whitespace_before_a_chunk_extension_is_read_both_ways(
    role, size: bytes, extensions: bytes, trailing: bytes
) -> None:
    header = size + extensions + trailing
    assert _first_chunk(role, header).data == b"abc", header


def _chunked_conn(role: type[h11.SERVER] | type[h11.CLIENT]) -> h11.Connection:
    """An h11 connection of ``role`` that has read a chunked message's head (a client's
    request, or a target's response) and now reads its body."""
    if role is h11.SERVER:
        conn = h11.Connection(h11.SERVER)
        conn.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    else:
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method="GET", target="/", headers=[("host", "a")]))
        conn.send(h11.EndOfMessage())
        conn.receive_data(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert isinstance(conn.next_event(), h11.Request | h11.Response)
    return conn


def _read_body(conn: h11.Connection, pieces: list[bytes]) -> bytes | None:
    """The body read from ``pieces`` fed one by one; None while it is incomplete."""
    body = b""
    for piece in pieces:
        conn.receive_data(piece)
        while (event := conn.next_event()) is not h11.NEED_DATA:
            if isinstance(event, h11.EndOfMessage):
                return body
            assert isinstance(event, h11.Data)
            body += event.data
    return None


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(cut, len(data)) for cut in cuts})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    return [piece for piece in pieces if piece]  # h11 reads b"" as the peer's EOF


_CHUNKS = st.lists(st.binary(min_size=1, max_size=12), max_size=4)
_CUTS = st.lists(st.integers(0, 200), max_size=6)


@pytest.mark.parametrize("role", [h11.SERVER, h11.CLIENT])
@given(_CHUNKS, _CUTS)
def test_a_chunked_body_in_any_pieces_reads_as_sent(role, chunks, cuts) -> None:
    # Chunk data may hold LFs and a CRLF may be split between reads: nothing of that is a
    # bare LF ending a chunk line.
    encoded = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    assert _read_body(_chunked_conn(role), _split(encoded, cuts)) == b"".join(chunks)


@pytest.mark.parametrize("role", [h11.SERVER, h11.CLIENT])
@given(_CHUNKS, st.data(), _CUTS, st.booleans())
@example([b"abc"], None, [], True)  # the hunt's 3\nabc\n0\n\n: a 408 after the body timeout
def test_a_chunk_line_ended_by_a_bare_lf_is_refused_at_once(
    role, chunks, data, cuts, all_bare: bool
) -> None:
    lines = [b"%x\r\n" % len(c) for c in chunks] + [b"0\r\n"]
    bare = len(lines) - 1 if data is None else data.draw(st.integers(0, len(lines) - 1))
    lines[bare] = lines[bare].replace(b"\r\n", b"\n")
    encoded = b"".join(line + c + b"\r\n" for line, c in zip(lines, chunks, strict=False))
    encoded += lines[-1] + b"\r\n"
    if all_bare:  # every line ends in LF: no CRLF would ever have come (the hunt's body)
        encoded = encoded.replace(b"\r\n", b"\n")
    with pytest.raises(h11.RemoteProtocolError) as refused:
        _read_body(_chunked_conn(role), _split(encoded, cuts))
    # What the listener logs it as (h11's own refusals of a bare LF after data included).
    assert classify_parse_error(str(refused.value)).reason == "BadTransferEncoding"


def test_a_bare_lf_chunk_line_is_refused_before_any_crlf_arrives() -> None:
    conn = _chunked_conn(h11.SERVER)
    conn.receive_data(b"3\nabc\n0\n\n")
    with pytest.raises(h11.RemoteProtocolError, match="bare LF") as refused:
        conn.next_event()
    assert str(refused.value) == BARE_LF_CHUNK_LINE
    assert classify_parse_error(BARE_LF_CHUNK_LINE) == verdict("BadTransferEncoding")


def test_the_strict_chunked_reader_relies_on_h11_internals_that_are_still_there(
    monkeypatch,
) -> None:
    """Fails the day h11 changes what install_strict_chunked_reader patches: the table its
    connections build body readers from, and the reader's state attributes."""
    from h11 import _readers

    from proto import http1

    assert _readers.READERS[h11.SEND_BODY]["chunked"] is http1._StrictChunkedReader
    state = set(vars(_readers.ChunkedReader()))
    assert state == {"_bytes_in_chunk", "_bytes_to_discard", "_reading_trailer"}
    install_strict_chunked_reader()  # installed once: a second call changes nothing
    assert _readers.READERS[h11.SEND_BODY]["chunked"] is http1._StrictChunkedReader
    monkeypatch.setitem(_readers.READERS[h11.SEND_BODY], "chunked", lambda: None)
    with pytest.raises(RuntimeError, match="readers changed"):
        install_strict_chunked_reader()


@pytest.mark.parametrize("role", [h11.SERVER, h11.CLIENT])
@pytest.mark.parametrize("header", [b"3 x", b"3 3", b"3 =a", b" 3", b"3\v;a", b"3 ;a\nb"])
def test_whitespace_in_a_chunk_header_other_than_bws_is_still_refused(role, header) -> None:
    with pytest.raises(h11.RemoteProtocolError) as refused:
        _first_chunk(role, header)
    assert classify_parse_error(str(refused.value)).reason == "BadTransferEncoding"


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ((b"Content-Length: 1", b"Content-Length: 2"), "MultipleContentLength"),
        ((b"X-A: a\x00b",), "BadHeader"),
        ((b"X-A: a\rb",), "BadHeader"),
        ((b"Transfer-Encoding : chunked",), "SuspiciousHeader"),
        ((b"Content-Length\t: 3",), "SuspiciousHeader"),
        ((b"X-Other : 1",), "BadHeader"),
        ((b"Content-Length: 1x",), "BadContentLength"),
        ((b"Content-Length: -1",), "BadContentLength"),
        ((b"Transfer-Encoding: gzip, chunked",), "BadTransferEncoding"),
        ((b"Transfer-Encoding: identity",), "BadTransferEncoding"),
    ],
)
def test_heads_h11_refuses_are_classified_from_their_bytes(fields, reason):
    raw = head(b"Host: x", *fields)
    server = h11.Connection(h11.SERVER)
    server.receive_data(raw)
    with pytest.raises(h11.RemoteProtocolError):
        server.next_event()  # h11 refuses each of them itself
    found = classify_refused_head(raw)
    assert (found.reason, found.action) == (reason, Action.REFUSE)
    # The bytes decide, whatever h11's message says.
    assert classify_parse_error("an unrelated message", raw) == found


FRAMING_NAMES = st.sampled_from(["content-length", "transfer-encoding", "x-a", "host"])
FRAMING_VALUES = st.sampled_from(["0", "12", "chunked", "Chunked ", "a", "1,1", "1 2"])


@given(st.lists(st.tuples(FRAMING_NAMES, FRAMING_VALUES), max_size=6))
def test_the_extra_checks_never_fire_on_a_head_h11_accepts(fields):
    raw = (
        b"POST / HTTP/1.1\r\n"
        + b"".join(b"%s: %s\r\n" % (n.encode(), v.encode()) for n, v in fields)
        + b"\r\n"
    )
    server = h11.Connection(h11.SERVER)
    server.receive_data(raw)
    try:
        event = server.next_event()
    except h11.RemoteProtocolError:
        assert classify_parse_error("x", raw).action is Action.REFUSE
        return
    assert isinstance(event, h11.Request)
    by_head = classify_head(raw)
    expected = by_head if by_head.action is Action.REFUSE else COMPLIANT
    assert classify_refused_head(raw) == expected


@given(
    st.lists(
        st.tuples(
            st.sampled_from([b"x-forwarded-for", b"x-a"]),
            st.lists(st.sampled_from([b"10.0.0.1", b"::1", b""]), min_size=1, max_size=40).map(
                b", ".join
            ),
        ),
        max_size=4,
    )
)
def test_forwarded_for_overflow_counts_every_listed_address(headers):
    listed = sum(len(v.split(b",")) for n, v in headers if n == b"x-forwarded-for")
    assert forwarded_for_overflow(headers) is (listed > 30)


def test_thirty_forwarded_addresses_pass_and_thirty_one_do_not():
    chain = b", ".join(b"10.0.0.%d" % i for i in range(30))
    assert not forwarded_for_overflow([(b"x-forwarded-for", chain)])
    assert forwarded_for_overflow([(b"x-forwarded-for", chain), (b"x-forwarded-for", b"1.2.3.4")])


def test_head_end_finds_the_blank_line_as_h11_does():
    assert head_end(CLEAN) == len(CLEAN)
    assert head_end(b"GET / HTTP/1.1\nHost: a\n\nbody") == len(b"GET / HTTP/1.1\nHost: a\n\n")
    assert head_end(b"GET / HTTP/1.1\r\nHost: a\r\n") == -1


@given(st.binary(max_size=300))
@example(b"\r\n\r\n")
@example(b"GET / HTTP/1.1\r\n\r\n")
def test_classification_is_total(raw):
    found = classify_head(raw)
    assert found.action in Action
    assert classify_parse_error("x", raw).action is Action.REFUSE
    assert classify_refused_head(raw).action in (Action.REFUSE, Action.ALLOW)


FIELD_NAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=10)
FIELD_VALUE = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789 /.-=", max_size=20).map(
    str.strip
)


@given(st.lists(st.tuples(FIELD_NAME, FIELD_VALUE), max_size=10))
def test_heads_h11_writes_are_compliant_and_parse_back(fields):
    fields = [(n, v) for n, v in fields if n not in ("host", "content", "transfer")]
    raw = h11.Connection(h11.CLIENT).send(
        h11.Request(method="GET", target="/x?y=1", headers=[("host", "a"), *fields])
    )
    assert raw is not None
    assert classify_head(raw) == COMPLIANT
    server = h11.Connection(h11.SERVER)
    server.receive_data(raw)
    event = server.next_event()
    assert isinstance(event, h11.Request)
    assert classify_headers(event.method, header_list(event.headers)) == COMPLIANT


@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                [
                    b"host",
                    b"connection",
                    b"upgrade",
                    b"keep-alive",
                    b"x-forwarded-for",
                    b"x-forwarded-proto",
                    b"x-forwarded-port",
                    b"x-amzn-trace-id",
                    b"expect",
                    b"x-a",
                    b"content-length",
                ]
            ),
            st.sampled_from(
                [b"1", b"x-a", b"upgrade", b"Root=1-00000000-aaaaaaaaaaaaaaaaaaaaaaaa"]
            ),
        ),
        max_size=10,
    ),
    st.sampled_from(["append", "preserve", "remove"]),
    st.booleans(),
    st.booleans(),
)
def test_the_one_pass_preparation_equals_the_composition(headers, mode, trusted, upgrade):
    fwd = Forwarding(b"10.0.0.7", b"http", b"80", mode, trusted)
    got, trace = prepare_request(headers, fwd, ID, upgrade=upgrade, default_host=b"lb:80")
    steps = forwarded_headers(strip_hop_by_hop(headers, upgrade=upgrade), fwd)
    traces = [v for n, v in steps if n == b"x-amzn-trace-id"]
    expected = [(n, v) for n, v in steps if n not in (b"x-amzn-trace-id", b"expect")]
    expected.append((b"x-amzn-trace-id", trace_header(traces[0] if traces else None, ID)))
    if not any(n == b"host" for n, _ in expected):
        expected.insert(0, (b"host", b"lb:80"))
    assert got == expected
    assert trace == expected[-1][1]


# ------------------------------------------------------------------ framing passed on


@pytest.mark.parametrize("status", [204, 100, 103])
def test_a_204_or_1xx_loses_both_framing_fields(status):
    headers = [(b"x-a", b"1"), (b"transfer-encoding", b"chunked"), (b"content-length", b"3")]
    assert forwardable_framing(status, headers) == [(b"x-a", b"1")]
    assert forwardable_framing(status, [(b"content-length", b"0")]) == []


def test_transfer_encoding_wins_over_content_length():
    headers = [(b"content-length", b"3"), (b"x-a", b"1"), (b"transfer-encoding", b"chunked")]
    assert forwardable_framing(200, headers) == [(b"x-a", b"1"), (b"transfer-encoding", b"chunked")]
    assert forwardable_framing(304, headers) == [(b"x-a", b"1"), (b"transfer-encoding", b"chunked")]


def test_one_framing_field_is_passed_on():
    length = [(b"content-length", b"3"), (b"x-a", b"1")]
    assert forwardable_framing(200, length) is length
    assert forwardable_framing(304, length) is length


FRAMING = st.sampled_from([b"content-length", b"transfer-encoding"])
FRAMED_HEADERS = st.lists(st.tuples(TOKEN | FRAMING, VALUE), max_size=12)


@given(st.integers(100, 599), FRAMED_HEADERS)
def test_never_both_fields_and_nothing_else_touched(status, headers):
    kept = forwardable_framing(status, headers)
    names = {name for name, _ in kept}
    assert not {b"content-length", b"transfer-encoding"} <= names
    if status == 204 or status < 200:
        assert not names & {b"content-length", b"transfer-encoding"}
    others = [(n, v) for n, v in headers if n not in (b"content-length", b"transfer-encoding")]
    assert [(n, v) for n, v in kept if n not in (b"content-length", b"transfer-encoding")] == others
    if status >= 200 and status != 204:  # Transfer-Encoding stays but on a 1xx or 204
        assert [h for h in kept if h[0] == b"transfer-encoding"] == [
            h for h in headers if h[0] == b"transfer-encoding"
        ]
    if status >= 200 and status != 204 and not any(n == b"transfer-encoding" for n, _ in headers):
        assert kept == headers


# ------------------------------------------------------------------ switching protocols


def test_upgrade_protocols_are_listed_lower_case_in_order():
    headers = [(b"upgrade", b"WebSocket, foo/1 ,,"), (b"x-a", b"1"), (b"upgrade", b"h2c")]
    assert upgrade_protocols(headers) == [b"websocket", b"foo/1", b"h2c"]
    assert upgrade_protocols([(b"connection", b"upgrade")]) == []


@pytest.mark.parametrize(
    ("offered", "answered", "valid"),
    [
        (b"websocket", b"websocket", True),
        (b"websocket", b"WebSocket", True),  # protocol names compare case-insensitively
        (b"h2c, websocket", b"websocket", True),
        (b"websocket", None, False),  # RFC 9110 7.8: a 101 MUST say what it switches to
        (b"websocket", b"", False),
        (b"websocket", b"h2c", False),  # only to a protocol the client offered
        (b"websocket", b"websocket, h2c", False),
        (None, b"websocket", False),
    ],
)
def test_a_101_must_name_an_offered_protocol(offered, answered, valid):
    request = [(b"connection", b"upgrade")] + ([(b"upgrade", offered)] if offered else [])
    response = [(b"connection", b"upgrade")] + ([(b"upgrade", answered)] if answered else [])
    assert valid_switch(request, response) is valid


PROTOCOL = st.sampled_from([b"websocket", b"WebSocket", b"h2c", b"foo/1", b"TLS/1.0"])


@given(st.lists(PROTOCOL, max_size=4), st.lists(PROTOCOL, max_size=4))
def test_a_switch_is_valid_exactly_when_it_names_some_offered_protocols_only(offered, answered):
    request = [(b"upgrade", b", ".join(offered))]
    response = [(b"upgrade", b", ".join(answered))]
    lower = {p.lower() for p in offered}
    expected = bool(answered) and all(p.lower() in lower for p in answered)
    assert valid_switch(request, response) is expected


RESPONSE_HEADERS = st.lists(
    st.tuples(
        st.sampled_from(
            [
                b"connection",
                b"keep-alive",
                b"upgrade",
                b"x-a",
                b"x-b",
                b"content-length",
                b"transfer-encoding",
                b"set-cookie",
            ]
        ),
        st.sampled_from([b"1", b"x-a", b"keep-alive, x-b", b"close", b"content-length"]),
    ),
    max_size=10,
)


@given(st.sampled_from([100, 101, 103, 200, 204, 304, 404, 502]), RESPONSE_HEADERS)
@example(200, [(b"content-length", b"1"), (b"transfer-encoding", b"chunked")])
@example(200, [(b"connection", b"x-a"), (b"connection", b"x-b"), (b"x-a", b"1"), (b"x-b", b"1")])
def test_the_one_pass_response_preparation_equals_the_composition(status, headers):
    got, framed_twice = prepare_response(status, headers)
    assert got == forwardable_framing(status, strip_hop_by_hop(headers))
    names = {name for name, _ in headers}
    assert framed_twice == ({b"content-length", b"transfer-encoding"} <= names)


def test_a_parsed_response_is_prepared_from_h11s_headers():
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("host", "a")]))
    client.receive_data(
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-A\r\nX-A: 1\r\nKeep-Alive: timeout=5\r\n"
        b"Content-Length: 2\r\nX-B: 2\r\n\r\nok"
    )
    response = client.next_event()
    assert isinstance(response, h11.Response)
    got, framed_twice = prepare_response(response.status_code, response.headers)
    assert got == [(b"content-length", b"2"), (b"x-b", b"2")]
    assert not framed_twice


@given(HEADERS)
def test_parsed_headers_are_what_h11_would_make_of_the_list(headers):
    fields = [(name, value) for name, value in headers if name not in NOT_LISTED]
    fields.insert(0, (b"host", b"a"))
    built = h11.Request(method=b"GET", target=b"/", headers=parsed_headers(fields), _parsed=True)
    plain = h11.Request(method=b"GET", target=b"/", headers=fields, _parsed=True)
    assert list(built.headers) == list(plain.headers) == fields
    assert built.headers.raw_items() == plain.headers.raw_items()
    assert len(built.headers) == len(fields)
    assert built.headers[0] == (b"host", b"a")
    wire = h11.Connection(h11.CLIENT).send(built)
    assert wire == h11.Connection(h11.CLIENT).send(plain)


NOT_LISTED = (b"content-length", b"transfer-encoding", b"host")  # host: added once


# ServerConnection: h11's server side, but cheaper on connections that close -------------------

SENT_HEADERS = st.lists(
    st.one_of(
        st.tuples(st.sampled_from([b"x-a", b"server", b"set-cookie"]), VALUE),
        st.tuples(
            st.just(b"connection"),
            st.sampled_from(
                [b"close", b"keep-alive", b"Keep-Alive, X-A", b"upgrade", b"x-b,  ,close"]
            ),
        ),
    ),
    max_size=8,
)
RESPONSE_FRAMING = st.sampled_from(
    [
        [],
        [(b"content-length", b"0")],
        [(b"content-length", b"17")],
        [(b"transfer-encoding", b"chunked")],
    ]
)  # as h11 parses a target's head (one Content-Length, or chunked, lower-case) or we build one
REQUESTS = st.sampled_from(
    [
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        b"HEAD / HTTP/1.1\r\nHost: a\r\nConnection: Keep-Alive, close\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
        b"HEAD / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
        b"CONNECT a:443 HTTP/1.0\r\n\r\n",
    ]
)


def _head_sent(connection: h11.Connection, request: bytes, response: h11.Response) -> bytes:
    connection.receive_data(request)
    assert isinstance(connection.next_event(), h11.Request)
    return connection.send(response) or b""


@given(REQUESTS, st.sampled_from([200, 201, 204, 304, 404]), SENT_HEADERS, RESPONSE_FRAMING)
@example(
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    200,
    [(b"connection", b"upgrade"), (b"x-a", b"1"), (b"connection", b"Keep-Alive, X-A")],
    [(b"content-length", b"17")],
)
def test_the_server_connection_sends_what_h11_sends(request, status, headers, framing):
    fields = headers + framing
    response = h11.Response(status_code=status, headers=parsed_headers(fields), _parsed=True)
    ours = ServerConnection(h11.SERVER)
    theirs = h11.Connection(h11.SERVER)
    assert _head_sent(ours, request, response) == _head_sent(theirs, request, response)
    assert ours.our_state == theirs.our_state


def test_a_closing_response_framed_by_length_is_not_validated_again(monkeypatch):
    """The saving itself: h11 would normalise and validate the whole head a second time."""
    import h11._headers

    calls = []
    validate = h11._headers.normalize_and_validate
    monkeypatch.setattr(
        h11._headers, "normalize_and_validate", lambda *a, **k: calls.append(1) or validate(*a, **k)
    )
    fields = [(b"server", b"nginx"), (b"content-length", b"2"), (b"connection", b"close")]
    response = h11.Response(status_code=200, headers=parsed_headers(fields), _parsed=True)
    request = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    head = _head_sent(ServerConnection(h11.SERVER), request, response)
    assert (
        head == b"HTTP/1.1 200 \r\nserver: nginx\r\ncontent-length: 2\r\nConnection: close\r\n\r\n"
    )
    assert calls == []
    _head_sent(h11.Connection(h11.SERVER), request, response)
    assert calls  # the check can fail: stock h11 does call it


@pytest.mark.parametrize(
    ("request_head", "framing", "expected"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", (b"content-length", b"2"), b"content-length: 2"),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            (b"transfer-encoding", b"chunked"),
            b"Transfer-Encoding: chunked",
        ),
    ],
)
def test_a_kept_alive_response_is_not_validated_again(monkeypatch, request_head, framing, expected):
    import h11._headers

    calls = []
    validate = h11._headers.normalize_and_validate
    monkeypatch.setattr(
        h11._headers, "normalize_and_validate", lambda *a, **k: calls.append(1) or validate(*a, **k)
    )
    response = h11.Response(
        status_code=200, headers=parsed_headers([(b"server", b"nginx"), framing]), _parsed=True
    )
    head = _head_sent(ServerConnection(h11.SERVER), request_head, response)
    assert head == b"HTTP/1.1 200 \r\nserver: nginx\r\n" + expected + b"\r\n\r\n"
    assert calls == []


REQUEST_LINE_BYTES = st.sampled_from(
    [
        *(b"GET", b"POST", b"G(T", b"", b" ", b"/", b"/a?b=c", b"\t", b"\x7f", b"\x01"),
        *(b"\xe9", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1\r", b"\r", b"*"),
        *(b"http/1.1", b"CONNECT", b"OPTIONS", b"a.example:443", b"http://a/x", b"x:/y"),
    ]
)


@given(st.lists(REQUEST_LINE_BYTES, min_size=1, max_size=6), st.sampled_from([b" ", b""]))
@example([b"GET", b"/", b"HTTP/1.1"], b" ")
@example([b"GET", b"/\t", b"HTTP/1.0"], b" ")
@example([b"CONNECT", b"a.example:443", b"HTTP/1.1"], b" ")
@example([b"OPTIONS", b"*", b"HTTP/1.1"], b" ")
def test_the_plain_request_line_match_agrees_with_the_full_check(parts, separator):
    from proto.http1 import _PLAIN_REQUEST_LINE, _classify_request_line

    line = separator.join(parts)
    for end in (b"\r\n", b"\n"):
        plain = _PLAIN_REQUEST_LINE.match(line + end + b"Host: a\r\n\r\n") is not None
        if b"\n" not in line:
            full = _classify_request_line(line.removesuffix(b"\r")) == COMPLIANT
            if plain:
                assert full
            elif full:
                # The fast path takes origin-form lines only; CONNECT's authority, "*" and
                # absolute URIs take the full check (as does a line ended by a bare CR).
                target = line.split(b" ")[1] if line.count(b" ") == 2 else b""
                assert line.endswith(b"\r") or not target.startswith(b"/") or b"CONNECT" in line
        head = line + end + b"Host: a" + end + end
        if plain:
            # ALB's guardian: lines ended by LF alone are NonCrLfLineTermination (Acceptable).
            expected = COMPLIANT if end == b"\r\n" else verdict("NonCrLfLineTermination")
            assert classify_head(head, framing=False) == expected


def test_lines_ended_by_lf_alone_are_acceptable_and_served():
    found = classify_head(b"GET / HTTP/1.1\nHost: a\r\n\r\n")
    assert (found.reason, found.classification, found.action) == (
        "NonCrLfLineTermination",
        Classification.ACCEPTABLE,
        Action.ALLOW,
    )
    assert classify_head(b"GET / HTTP/1.1\r\nHost: a\nX: \x01\r\n\r\n").reason == "BadHeader"


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (b"http://a.example", b"*"),  # RFC 9112 3.2.4: the server as a whole
        (b"http://a.example:8080", b"*"),
        (b"http://a.example/", b"/"),  # a path of its own: that resource's options
        (b"http://a.example?q", b"/?q"),
    ],
)
def test_an_absolute_options_request_without_path_becomes_asterisk_form(
    target: bytes, expected: bytes
) -> None:
    rewritten = origin_form(target, [], b"OPTIONS")
    assert rewritten is not None
    assert rewritten[0] == expected
    other = origin_form(target, [], b"GET")  # the asterisk form is OPTIONS's alone
    assert other is not None
    assert other[0] == (b"/" if expected == b"*" else expected)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (b"http://a.example/p?q=1", (b"/p?q=1", b"a.example")),
        (b"https://a.example:8443", (b"/", b"a.example:8443")),
        (b"HTTP://a.example?x", (b"/?x", b"a.example")),
        (b"http://u:pw@a.example/p", (b"/p", b"a.example")),
        (b"http://[::1]:8080/p", (b"/p", b"[::1]:8080")),
        (b"http:///p", None),
        (b"ftp://a.example/p", None),
        (b"/p", None),
        (b"a.example:443", None),
        (b"*", None),
    ],
)  # fmt: skip
def test_origin_form(target: bytes, expected: tuple[bytes, bytes] | None) -> None:
    rewritten = origin_form(target, [(b"host", b"other"), (b"x-a", b"1")])
    if expected is None:
        assert rewritten is None
        return
    assert rewritten is not None
    path, headers = rewritten
    assert (path, headers) == (expected[0], [(b"host", expected[1]), (b"x-a", b"1")])


_AUTHORITIES = st.from_regex(rb"[a-z0-9.\-]{1,20}(:[0-9]{1,5})?", fullmatch=True)
_PATHS = st.from_regex(rb"(/[A-Za-z0-9._~%!$&'()*+,;=:@\-]*)*(\?[A-Za-z0-9=&%]*)?", fullmatch=True)


@given(
    st.sampled_from([b"http", b"https", b"HTTP"]),
    _AUTHORITIES,
    _PATHS,
    st.lists(st.tuples(st.sampled_from([b"host", b"x-a", b"accept"]), st.binary(max_size=4))),
)
def test_origin_form_keeps_the_path_and_sends_the_authority_as_the_one_host(
    scheme: bytes, authority: bytes, path: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    rewritten = origin_form(scheme + b"://" + authority + path, headers)
    assert rewritten is not None
    target, sent = rewritten
    assert target == (path if path.startswith(b"/") else b"/" + path)
    assert [v for k, v in sent if k == b"host"] == [authority]
    assert sent[1:] == [h for h in headers if h[0] != b"host"]


# Request-target forms (RFC 9112 3.2) -----------------------------------------------------------


@pytest.mark.parametrize(
    "request_line",
    [
        b"GET http:/admin/secret HTTP/1.1",  # a scheme without an authority: no form at all
        b"GET x:/admin/secret HTTP/1.1",
        b"GET a:b/../admin/secret HTTP/1.1",
        b"GET example.com:443 HTTP/1.1",  # authority-form is CONNECT's alone
        b"POST example.com:443 HTTP/1.1",
        b"GET * HTTP/1.1",  # asterisk-form is OPTIONS's alone
        b"GET ftp://a.example/x HTTP/1.1",  # absolute-form here: http or https only
        b"GET http:///x HTTP/1.1",  # and with an authority
        b"GET admin HTTP/1.1",
        b"CONNECT /x HTTP/1.1",  # CONNECT uses authority-form only
        b"CONNECT http://a.example/ HTTP/1.1",
        b"CONNECT * HTTP/1.1",
        b"CONNECT a.example HTTP/1.1",  # no port
        b"CONNECT a.example: HTTP/1.1",
        b"CONNECT a.example:0 HTTP/1.1",
        b"CONNECT a.example:65536 HTTP/1.1",
        b"CONNECT :443 HTTP/1.1",
        b"CONNECT user@a.example:443 HTTP/1.1",
        b"CONNECT a.example:443/x HTTP/1.1",
        b"CONNECT [::1:443 HTTP/1.1",
        b"CONNECT [zz::1]:443 HTTP/1.1",
        b"GET x:/admin HTTP/1.2",  # a lenient version does not hide the target
        b"CONNECT /x HTTP/1.0",
        # RFC 9112 3.2: no request-target form has a fragment. The rules skip it, a target
        # that does not (Go's FileServer cleans /x#/../admin to /admin) serves what no rule
        # saw; HAProxy answers 400 to it since CVE-2023-45539.
        b"GET /x#/../admin HTTP/1.1",
        b"GET /# HTTP/1.1",
        b"GET http://a.example#@b.example/ HTTP/1.1",  # Host would be b.example
        b"GET http://a.example/x#y HTTP/1.1",
        b"OPTIONS *# HTTP/1.1",
    ],
)
def test_a_target_in_none_of_the_forms_its_method_may_use_is_a_bad_uri(request_line):
    found = classify_head(head(b"Host: a.example", request_line=request_line))
    assert (found.reason, found.classification, found.action) == (
        "BadUri",
        Classification.SEVERE,
        Action.REFUSE,
    )
    method, target, _ = request_line.split(b" ")
    assert not has_request_target_form(method, target)


@pytest.mark.parametrize(
    "request_line",
    [
        b"GET / HTTP/1.1",
        b"GET //a/../b?c=d HTTP/1.1",
        b"OPTIONS * HTTP/1.1",
        b"OPTIONS / HTTP/1.1",
        b"GET http://a.example/x?y HTTP/1.1",
        b"POST https://u@a.example:8443 HTTP/1.1",
        b"CONNECT a.example:443 HTTP/1.1",
        b"CONNECT 10.0.0.1:1 HTTP/1.1",
        b"CONNECT [::1]:65535 HTTP/1.1",
        b"CONNECT db.internal:5432 HTTP/1.0",
        b"connect /x HTTP/1.1",  # methods are case-sensitive: not CONNECT, a plain path
    ],
)
def test_targets_in_their_methods_forms_are_compliant(request_line):
    assert classify_head(head(b"Host: a.example", request_line=request_line)) == COMPLIANT


METHODS = st.sampled_from([b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"])


@given(METHODS, _PATHS.filter(lambda path: path.startswith(b"/")))
def test_every_origin_form_target_stays_compliant(method: bytes, path: bytes) -> None:
    line = method + b" " + path + b" HTTP/1.1"
    assert classify_head(head(b"Host: a.example", request_line=line)) == COMPLIANT


@given(METHODS | st.just(b"CONNECT"), st.from_regex(rb"[!-~]{1,30}", fullmatch=True))
def test_a_target_neither_origin_absolute_nor_asterisk_is_refused_but_for_connect(
    method: bytes, target: bytes
) -> None:
    """Anything without a leading "/" or "://" is in the authority-form at best, which only
    CONNECT may use (and CONNECT uses nothing else)."""
    line = method + b" " + target + b" HTTP/1.1"
    found = classify_head(head(b"Host: a.example", request_line=line))
    if method == b"CONNECT":
        assert (found == COMPLIANT) == is_authority_form(target)
    elif target[:1] != b"/" and b"://" not in target and (target, method) != (b"*", b"OPTIONS"):
        assert found.reason == "BadUri"


@given(_AUTHORITIES, st.integers(1, 65535))
def test_an_authority_with_a_port_is_connects_form(name: bytes, port: int) -> None:
    target = name.partition(b":")[0] + b":%d" % port
    assert has_request_target_form(b"CONNECT", target)
    assert not has_request_target_form(b"GET", target)


@given(st.ip_addresses(v=6), st.integers(0, 70000))
def test_a_bracketed_ipv6_authority_needs_a_port_from_1_to_65535(address, port):
    target = b"[%s]:%d" % (address.compressed.encode(), port)
    assert is_authority_form(target) == (1 <= port <= 65535)


def test_first_header_takes_the_first_of_its_name():
    headers = [(b"host", b"a"), (b"x", b"1"), (b"host", b"b")]
    assert first_header(headers, b"host") == b"a"
    assert first_header(headers, b"missing") is None


@pytest.mark.parametrize(
    "value",
    [b"example.com", b"example.com:8080", b"", b"127.0.0.1:80", b"[::1]:443", b"[fe80::1%25eth0]",
     b"a-b_c~d.example", b"xn--bcher-kva.example", b"ex%41mple.com", b"host:"],
)  # fmt: skip
def test_hosts_that_are_authorities_are_valid(value):
    assert is_valid_host(value)


@pytest.mark.parametrize(
    "value",
    [b"evil.test/x?", b"evil.test#", b"a b", b"user@host", b"host:80:80", b"[::1", b"h\"x",
     b"host:8o", b"<script>", b"::1:19904", b"[::1]x", b"[::1]:99999", b"example.com:65536",
     b"[:::1]", b"[1::2::3]", b"[12345::1]", b"[::1.2.3.4.5]", b"[1:2:3:4:5:6:7:8:9]"],
)  # fmt: skip
def test_hosts_that_are_not_authorities_are_refused(value):
    assert not is_valid_host(value)


@given(
    st.from_regex(rb"\A[a-z0-9-]{1,20}(\.[a-z0-9-]{1,20}){0,3}\Z"),
    st.none() | st.integers(0, 65535),
)
def test_dns_names_with_ports_are_valid(name, port):
    assert is_valid_host(name if port is None else name + b":%d" % port)


@given(st.ip_addresses(v=6), st.none() | st.integers(0, 65535))
def test_bracketed_ipv6_addresses_are_valid(address, port):
    value = b"[" + address.compressed.encode() + b"]"
    assert is_valid_host(value if port is None else value + b":%d" % port)


@pytest.mark.parametrize(
    ("value", "named"),
    [(b"", False), (b":", False), (b":80", False), (b"a", True), (b"a:", True),
     (b"[::1]", True), (b"[::1]:443", True), (b"127.0.0.1:80", True), (b"evil.test/x", False)],
)  # fmt: skip
def test_a_host_names_one_only_when_its_uri_host_is_not_empty(value, named):
    # RFC 9110 4.2.1: no http(s) URI with an empty host (the hunt's `https://:443/` redirect).
    assert names_a_host(value) is named


_HOST_VALUES = (
    st.from_regex(rb"\A[a-z0-9.-]{0,12}(:[0-9]{0,5})?\Z")
    | st.ip_addresses(v=6).map(lambda a: b"[%s]" % a.compressed.encode())
    | st.binary(max_size=16)
)


@given(_HOST_VALUES)
@example(b"")
@example(b":443")
def test_a_host_named_is_one_a_url_parser_finds_a_host_in(value: bytes) -> None:
    # urllib's reading of http://<value>/ is the oracle: a non-empty host name.
    if not is_valid_host(value):
        assert not names_a_host(value)
        return
    parsed = urllib.parse.urlsplit("http://" + value.decode("ascii") + "/")
    assert names_a_host(value) is bool(parsed.hostname)


# h2c is never offered to a target -----------------------------------------------------------


def test_an_h2c_offer_is_withdrawn_and_other_upgrades_are_kept():
    h2c = [
        (b"host", b"x"),
        (b"connection", b"Upgrade, HTTP2-Settings"),
        (b"upgrade", b"h2c"),
        (b"http2-settings", b"AAMAAABkAARAAAAAAAIAAAAA"),
    ]
    plain = without_h2c(h2c)
    assert plain == [(b"host", b"x")]  # Connection named nothing left
    assert not is_upgrade(plain)
    both = [
        (b"connection", b"keep-alive, Upgrade, HTTP2-Settings"),
        (b"upgrade", b"H2C, websocket"),
        (b"http2-settings", b"AAMA"),
        (b"sec-websocket-key", b"k"),
    ]
    kept = without_h2c(both)
    assert kept == [
        (b"connection", b"keep-alive, Upgrade"),
        (b"upgrade", b"websocket"),
        (b"sec-websocket-key", b"k"),
    ]
    assert is_upgrade(kept)
    # A 101 switching to h2c is then one the request never asked for.
    assert not valid_switch(kept, [(b"upgrade", b"h2c")])
    assert valid_switch(kept, [(b"upgrade", b"websocket")])
    websocket = [(b"connection", b"upgrade"), (b"upgrade", b"websocket")]
    assert without_h2c(websocket) is websocket  # untouched
