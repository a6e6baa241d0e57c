"""wharf-balancer's HTTP listener against hypothesis-made raw requests on real sockets.

Each example sends well-formed HTTP/1.1 requests (one, or two pipelined) with one of them
mutated at one point (request line, header fields, framing, sizes, body, line ends), in
one of three ways: half-closed after sending, held open, or reset; sometimes cut short.
Whatever it is, the balancer must answer in time or close, with only valid HTTP/1.1
responses; its own answers are client errors from a sensible set and end the connection;
every request that reaches the backend is one the client sent, exactly once (a request
hidden in a body that reaches it is smuggled), and the client gets the backend's answer to
each; a request the RFC or the README says to refuse never reaches the backend; and a plain
GET still gets 200 afterwards. Helpers: tests/support/http_fuzz.py.
"""

from __future__ import annotations

import os
import socket
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, event, given, settings

from tests.support.http_fuzz import (
    ANSWER_LIMIT,
    Answer,
    Case,
    FuzzBalancer,
    Response,
    cases,
    new_tag,
    parse_responses,
    request_id,
    reset_on_close,
    send,
)

pytestmark = pytest.mark.slow

# What the balancer may answer itself to a client's bad request (ALB / HAProxy): never a
# 5xx here, where the backend is always up, fast and well-behaved.
OWN_ERRORS = frozenset({400, 405, 408, 413, 414, 431, 501, 505})
BACKEND_CODES = frozenset({200, 405})  # the backend's echo (405: its answer to CONNECT)


class Rig:
    """The module's balancer, restarted if a case killed it (that case has failed)."""

    def __init__(self) -> None:
        self.balancer = FuzzBalancer().start()
        self.cases: dict[str, Case] = {}  # by tag: every case sent so far
        self.seen_ids: Counter[str] = Counter()  # every request id the backend received

    def ready(self) -> FuzzBalancer:
        if not self.balancer.alive:
            self.balancer = FuzzBalancer().start()
        return self.balancer

    def close(self) -> None:
        self.balancer.stop()


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    rig = Rig()
    yield rig
    rig.close()


def sent_copies(payload: bytes, ident: str) -> int:
    """How many requests carrying ``ident`` the client's bytes hold (as a target path)."""
    tag, _, index = ident.partition("-")
    return payload.count(b"/fz/%s/%s " % (tag.encode(), index.encode()))


def health_check(lb: FuzzBalancer, tag: bytes) -> tuple[list[Response], Answer]:
    payload = (
        b"GET /fz/%s/ok HTTP/1.1\r\nHost: fuzz.test\r\nX-Fuzz-Id: %s-ok\r\n"
        b"Connection: close\r\n\r\n" % (tag, tag)
    )
    answer = send(lb.address, payload, "eof")
    return parse_responses(answer.data, bodiless=False)[0], answer


# HYPOTHESIS_PROFILE=deep runs ten times as many examples.
EXAMPLES = 300 * (10 if os.environ.get("HYPOTHESIS_PROFILE") == "deep" else 1)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=cases())
def test_no_request_crashes_hangs_or_splits_at_the_backend(rig: Rig, case: Case) -> None:
    lb = rig.ready()
    tag = new_tag()
    rig.cases[tag.decode()] = case
    payload = case.payload(tag)
    answer = send(lb.address, payload, case.mode, case.pauses)
    health, health_answer = health_check(lb, tag)
    # Account for everything the backend got before asserting anything, so that a failed
    # example leaves nothing for the next one.
    errors = lb.new_log_errors()
    arrived: Counter[str] = Counter()
    unknown, duplicated, late = [], [], []
    for seen in lb.new_backend_requests():
        ident = request_id(seen)
        if ident is None or ident[:8] not in rig.cases:
            unknown.append(seen)
            continue
        # A body of repeated hidden requests that the framing leaves outside any body is
        # that many pipelined requests with one id: each may arrive once per copy sent.
        rig.seen_ids[ident] += 1
        if rig.seen_ids[ident] > max(1, sent_copies(payload, ident)):
            duplicated.append(ident)
        if ident[:8] == tag.decode():
            if not ident.endswith("-ok"):
                arrived[ident[9:]] += 1
        elif rig.cases[ident[:8]].mode != "abort":
            late.append(ident)  # after its client had its answers: split from a body
    backend_errors, lb.backend.errors[:] = lb.backend.errors[:], []

    assert lb.alive, f"the balancer died: {lb.error!r}"
    assert not errors, f"the balancer logged errors: {errors}"
    assert not backend_errors, f"the balancer forwarded what no server parses: {backend_errors}"
    assert not unknown, f"the backend got requests nobody sent: {unknown}"
    assert not duplicated, f"a request reached the backend twice: {duplicated}"
    assert not late, f"requests reached the backend after their exchange ended: {late}"
    if case.blocked is not None:
        reached = [i for i in arrived if int(i[1:]) >= case.blocked]
        assert not reached, f"refused request(s) {reached} reached the backend"

    if case.mode != "abort":
        assert answer.closed, f"no answer or close in {ANSWER_LIMIT} s: {answer.data[:300]!r}"
        responses, tail = parse_responses(answer.data, bodiless=case.head)
        statuses = [(r.status, "target" if r.from_backend else "elb") for r in responses]
        cut = " cut" if case.cut is not None else ""
        event(f"{case.mutation} / {case.mode}{cut}: {statuses or 'closed'}")
        assert not tail or answer.reset, f"a response cut short: {tail[:300]!r}"
        for i, response in enumerate(responses):
            if response.from_backend:
                assert response.status in BACKEND_CODES, response
            elif response.status == 100:
                continue
            else:
                assert response.status in OWN_ERRORS, f"the balancer answered {response}"
                assert i == len(responses) - 1, "the balancer answered after its own error"
                assert response.header(b"connection") == b"close", response
        if case.refused and case.blocked == 0 and case.cut is None and not answer.reset:
            assert responses, "no answer to a request that must be refused"
            last = responses[-1]
            assert not last.from_backend, last
            assert last.status in OWN_ERRORS, last
        if not answer.reset:
            # The client has the answer to every request the backend got: nothing reached
            # it hidden in another request, and nothing was lost or answered twice.
            answered = Counter(
                (r.header(b"x-fuzz-id") or b"?").decode()[9:] for r in responses if r.from_backend
            )
            assert answered == arrived, f"backend got {arrived}, client got answers {answered}"

    assert [(r.status, r.header(b"x-fuzz-id")) for r in health] == [(200, tag + b"-ok")], (
        health_answer,
        lb.access_lines(tag.decode()),
    )


# Bugs the property found (each logged a handler failure at level=error), as minimal
# reproductions.


def test_a_connection_reset_before_it_is_served_is_no_handler_error() -> None:
    with FuzzBalancer() as lb:
        for _ in range(5):
            with socket.create_connection(lb.address) as sock:
                reset_on_close(sock)  # no byte sent: connect, then RST at once
        time.sleep(0.5)
        assert lb.new_log_errors() == []


def test_a_client_that_resets_mid_body_is_no_handler_error() -> None:
    payload = b"POST /upload HTTP/1.1\r\nHost: fuzz.test\r\nContent-Length: 12\r\n\r\nhello"
    with FuzzBalancer() as lb:
        for _ in range(3):
            with socket.create_connection(lb.address) as sock:
                sock.sendall(payload)  # 5 of the 12 body bytes
                time.sleep(0.1)  # the head is forwarded; the balancer waits for the rest
                reset_on_close(sock)
        time.sleep(0.5)
        assert lb.backend.seen == []  # the request never completed
        assert lb.new_log_errors() == []
