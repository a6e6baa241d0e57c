"""wharf-balancer's target side against a hostile target that answers with hypothesis-made
bytes, on real sockets.

Each example sends one request through the balancer to a raw TCP target that answers it
with a drawn script (tests/support/target_fuzz.py): a valid response of any framing, or one
mutated in its status line, header fields, framing or body; 1xx responses before it; bytes
nobody asked for after it; cut short and closed or reset at any byte, trickled within or
past the timeouts, or sent before the request body was read. Whatever it is, the client
gets one well-formed HTTP/1.1 response in time: the target's (right status and body, and
its own request's id) or the balancer's 502/504; a response can only be cut short when the
target broke it. Nothing is logged at level=error, and a well-behaved exchange right after
(on the same client connection when it stays open) gets its own answer, never on a target
connection that carried a broken exchange.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, event, example, given, settings

from tests.support.http_fuzz import FuzzBalancer, parse_responses
from tests.support.http_fuzz import send as send_raw
from tests.support.target_fuzz import (
    TAG,
    Case,
    ClientRequest,
    Outcome,
    TargetFuzzBalancer,
    clean,
    judge,
    new_tag,
    read_response,
    send_all,
)
from tests.support.target_fuzz_cases import cases, chunked, script_of

pytestmark = pytest.mark.slow


class Rig:
    """The module's balancer, restarted if a case killed it (that case has failed)."""

    def __init__(self) -> None:
        self.balancer = TargetFuzzBalancer().start()

    def ready(self) -> TargetFuzzBalancer:
        if not self.balancer.alive:
            self.balancer = TargetFuzzBalancer().start()
        return self.balancer

    def close(self) -> None:
        self.balancer.stop()


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    rig = Rig()
    yield rig
    rig.close()


def _connect(lb: TargetFuzzBalancer) -> socket.socket:
    sock = socket.create_connection(lb.address, timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _keeps(outcome: Outcome) -> bool:
    """Whether the client connection may carry the next request after ``outcome``."""
    parsed = outcome.parsed
    if outcome.closed or parsed is None or parsed.final is None or not parsed.final.complete:
        return False
    if outcome.data[parsed.end :]:
        return True  # bytes after the response: the next exchange shows them
    return parsed.final.header(b"connection") != b"close"


def follow_up(sock: socket.socket, tag: bytes, rest: bytes) -> list[str]:
    """A well-behaved exchange: its own 200 and body, then the close it asked for."""
    request = ClientRequest(b"GET")
    if not send_all(sock, request.render(tag, close=True)):
        return ["the balancer closed the connection before the next request"]
    outcome = read_response(sock, b"GET", time.monotonic())
    outcome.data = rest + outcome.data
    if rest:  # bytes the balancer sent after the previous response
        return [f"bytes nobody asked for before the next response: {outcome.data[:300]!r}"]
    parsed = outcome.parsed
    if outcome.error or parsed is None or parsed.final is None or not parsed.final.complete:
        return [f"the next request got no whole answer: {outcome.error} {outcome.data[:300]!r}"]
    final = parsed.final
    got = (final.status, final.header(b"x-tf-id"), final.body)
    if got != (200, tag, b"good:" + tag):
        return [f"the next request got {got}: {outcome.data[:300]!r}"]
    sock.settimeout(5)
    tail = outcome.data[parsed.end :]
    try:
        while chunk := sock.recv(65536):
            tail += chunk
    except OSError:
        pass
    return [f"bytes after the next response: {tail[:300]!r}"] if tail else []


def run_case(lb: TargetFuzzBalancer, case: Case) -> None:
    tag, after = new_tag(), new_tag()
    lb.register(tag, case.script)
    start = time.monotonic()
    sock = _connect(lb)
    try:
        send_all(sock, case.request.render(tag))
        outcome = read_response(sock, case.request.method, start)
        problems = judge(case, outcome, tag)
        parsed = outcome.parsed
        final = parsed.final if parsed is not None else None
        shape = "hang" if parsed is None else "closed" if final is None else final.status
        kind = "own" if final is not None and final.header(b"x-tf-id") is None else "relayed"
        cut = "" if final is None or final.complete else " cut"
        event(f"{case.script.validity}: {kind} {shape}{cut}")
        if _keeps(outcome):
            assert parsed is not None
            problems += follow_up(sock, after, outcome.data[parsed.end :])
        else:
            sock.close()
            sock = _connect(lb)
            problems += follow_up(sock, after, b"")
    finally:
        sock.close()
    errors = lb.new_log_errors()
    target_errors, lb.target.errors[:] = lb.target.errors[:], []
    reused = lb.target.connections_of(tag) & lb.target.connections_of(after)

    assert lb.alive, f"the balancer died: {lb.error!r}"
    assert not errors, f"the balancer logged errors: {errors}"
    assert not target_errors, target_errors
    assert not problems, f"{case.script.label}: {problems}\nscript: {case.script.data[:300]!r}"
    if not clean(case):
        assert not reused, f"a target connection reused after a broken exchange: {reused}"


# Bugs the property found, as the responses that showed them (balancer/ fixed for each).
_OK = b"HTTP/1.1 200 OK\r\nX-Tf-Id: ########\r\n"
_ID = b"id:" + TAG + b";"
# 1. Bytes after a complete response stayed in h11's buffer of a pooled connection, and the
#    next request on it got them as its response (here: a response nobody asked for).
UNASKED = script_of(
    _OK + b"Content-Length: 12\r\n\r\n" + _ID + b"HTTP/1.1 200 OK\r\nX-Tf-Id: unasked\r\n"
    b"Content-Length: 7\r\n\r\nunasked",
    content=_ID,
    message_end=70,
)
# 2. A head and a body framing error in the same read: the client got a bare close.
NO_CHUNK_CRLF = script_of(
    _OK + b"Transfer-Encoding: chunked\r\n\r\nc\r\n" + _ID + b"XY0\r\n\r\n",
    validity="body-invalid",
    content=_ID,
)
# 3. Transfer-Encoding and Content-Length both (RFC 9112 6.3: an error): relayed chunked,
#    but its target connection went back to the pool.
TE_AND_CL = script_of(
    _OK + b"Transfer-Encoding: chunked\r\nContent-Length: 25\r\n\r\n" + chunked(_ID, [], [], b""),
    validity="lenient",
    ambiguous=True,
    content=_ID,
)
# 4. A body of many small chunks: one write of more than IOV_MAX (1,024) buffers failed
#    (EMSGSIZE) and the client got a bare close.
_SMALL = _ID + b"z" * 12 * 1000
SMALL_CHUNKS = script_of(
    _OK + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(_SMALL, [12], [], b""),
    content=_SMALL,
)
# 5. A 204 framed by both (found by a deep run): h11 reads a 204 as bodiless whatever it
#    says, and both fields went on to the client, which may frame it by either (RFC 9110 8.6,
#    RFC 9112 6.1: a 204 has neither).
_NO_CONTENT = b"HTTP/1.1 204 OK\r\nX-Tf-Id: ########\r\n"
NO_CONTENT_FRAMED = script_of(
    _NO_CONTENT + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\ngarbage after it",
    validity="lenient",
    ambiguous=True,
    content=b"",
    message_end=len(_NO_CONTENT) + len(b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"),
)
# A close-delimited body cut inside its tag: a bug of the judge (it cut, then tagged).
CUT_IN_TAG = script_of(
    b"HTTP/1.1 200 OK\r\nX-Tf-Id: ########\nX-Lf: 1\r\n\r\nid:########;",
    validity="lenient",
    message_end=None,
    cut=50,
    end="close",
)
# A "cut" after the last byte of a kept connection: a whole exchange, rightly pooled, which
# the judge took for a broken one (found by CI).
_WHOLE = _OK + b"Content-Length: 12\r\n\r\n" + _ID
CUT_AFTER_THE_END = script_of(_WHOLE, content=_ID, cut=len(_WHOLE), end="keep")

# HYPOTHESIS_PROFILE=deep runs ten times as many examples.
EXAMPLES = 150 * (10 if os.environ.get("HYPOTHESIS_PROFILE") == "deep" else 1)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=cases())
@example(case=Case(ClientRequest(b"GET"), UNASKED))
@example(case=Case(ClientRequest(b"GET"), NO_CHUNK_CRLF))
@example(case=Case(ClientRequest(b"GET"), TE_AND_CL))
@example(case=Case(ClientRequest(b"GET"), SMALL_CHUNKS))
@example(case=Case(ClientRequest(b"GET"), NO_CONTENT_FRAMED))
@example(case=Case(ClientRequest(b"GET"), CUT_IN_TAG))
@example(case=Case(ClientRequest(b"GET"), CUT_AFTER_THE_END))
def test_every_target_answer_gets_the_client_one_right_response(rig: Rig, case: Case) -> None:
    run_case(rig.ready(), case)


def test_a_request_body_of_many_small_chunks_reaches_the_target() -> None:
    """Bug 4 the other way: the upload's writes to the target had the same bound."""
    content = b"x" * 3000
    body = chunked(content, [1], [], b"")
    payload = (
        b"POST /fz/00000000/r0 HTTP/1.1\r\nHost: fuzz.test\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n" + body
    )
    with FuzzBalancer() as lb:
        answer = send_raw(lb.address, payload, "eof")
        responses, _ = parse_responses(answer.data, bodiless=False)
        assert [r.status for r in responses] == [200], answer.data[:300]
        assert [len(seen.body) for seen in lb.new_backend_requests()] == [len(content)]
        assert lb.new_log_errors() == []
