"""wharf-balancer's tunnels (WebSocket and other upgrades, CONNECT) against hostile clients
and targets, on real sockets.

Each example: a client asks to switch protocols (a WebSocket handshake, h2c, another
Upgrade value, CONNECT host:port; or an Upgrade the balancer must not pass on, or none),
sometimes with a body, sometimes with bytes pipelined right after its head (early tunnel
data, or a second request). A raw target answers with a drawn script
(tests/support/tunnel_fuzz.py): a 101 (right, without Upgrade, naming another protocol,
framed), 1xx before it, a 2xx or a refusal of any framing, garbage; with tunnel bytes in the
same write or not, trickled, stalled past the response timeout, cut, closed or reset at any
byte, or answered before the request body was read. When a tunnel opens, both ends send
drawn chunks through it and one ends it (close, half-close, reset), or one stops reading
for longer than the idle timeout, or both fall silent past it.

Properties: the client gets in time either the target's 101 (or 2xx to CONNECT), well
formed, then exactly the bytes the target sent through the tunnel while the target gets
exactly the client's bytes, in order, on the connection that answered; or one well-formed
HTTP response (the target's, or the balancer's 502/504). A refused upgrade leaves the
connection usable only as HTTP (a pipelined request is parsed and answered as a request of
its own, never passed on raw). Nothing is logged at level=error, a plain GET right after
works, and no socket of the example stays open in the process once both ends are done.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, event, given, settings

from tests.support.tunnel_fuzz import (
    LIMIT,
    Answer,
    Ask,
    Case,
    Plan,
    Talk,
    TunnelFuzzBalancer,
    cases,
    from_client,
    judge,
    new_tags,
    open_sockets,
    run_client,
)

pytestmark = pytest.mark.slow

LISTEN = "0A"  # /proc/net/tcp's state of a listening socket


class Rig:
    """The module's balancer, restarted if a case killed it (that case has failed)."""

    def __init__(self) -> None:
        self.balancer = TunnelFuzzBalancer().start()

    def ready(self) -> TunnelFuzzBalancer:
        if not self.balancer.alive:
            self.balancer = TunnelFuzzBalancer().start()
        return self.balancer

    def close(self) -> list[tuple[int, int, str]]:
        """Stop the balancer once its pooled connections have idled out; what was still
        open between its client side, itself and its target before it stopped."""
        lb = self.balancer
        left = _lingering(lb, lambda local, remote: True, seconds=LIMIT)
        lb.stop()
        return left


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    rig = Rig()
    yield rig
    left = rig.close()
    assert not left, f"sockets still open after every exchange ended: {left}"


def _lingering(
    lb: TunnelFuzzBalancer, concerned: Callable[[int, int], bool], seconds: float
) -> list[tuple[int, int, str]]:
    """The process's sockets between the client side, the balancer's front and its target
    that ``concerned(local, remote)`` picks, once they stop closing (at most ``seconds``)."""
    front, target = lb.address[1], lb.target.port
    deadline = time.monotonic() + seconds
    while True:
        left = [
            (local, remote, state)
            for local, remote, state in open_sockets()
            if state != LISTEN
            and (front in (local, remote) or target in (local, remote))
            and concerned(local, remote)
        ]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.02)


def run_case(lb: TunnelFuzzBalancer, case: Case, *, events: bool = True) -> None:
    """Play ``case`` and check it; ``events``: note its shape for hypothesis's statistics
    (False outside ``@given``)."""
    tags = new_tags()
    tag, second_tag, _ = tags
    lb.register(
        tag, Plan(case.answer, case.talk, case.ask.connect, len(from_client(case, second_tag)))
    )
    log = trio.run(run_client, lb.address, case, tags)
    target = lb.target
    problems = judge(case, log, target, tags) + log.follow_up
    if events:
        status = log.heads[-1][0] if log.heads else None
        event(f"{case.ask.kind}: {log.shape} {status}")
        if log.shape == "switched":
            event(f"tunnel ended by {case.talk.ending}")
            if case.answer.early:
                event("tunnel opened before the request body was read")

    # The example's sockets: the balancer's ends of its client connections, and its ends of
    # the target connections the target closed (or saw closed), must close too.
    front = lb.address[1]
    ports = set(log.ports)
    numbers = set().union(*(target.connections_of(t) for t in tags))
    ended = {target.connections[n].peer_port for n in numbers if target.connections[n].closed}
    left = _lingering(
        lb,
        lambda local, remote: (local == front and remote in ports) or local in ended,
        seconds=LIMIT,
    )
    errors = lb.new_log_errors()
    target_errors, target.errors[:] = target.errors[:], []

    assert lb.alive, f"the balancer died: {lb.error!r}"
    assert not errors, f"the balancer logged errors: {errors}"
    assert not target_errors, target_errors
    assert not problems, f"{case.answer.label}: {problems}"
    assert not left, f"sockets the balancer kept open after both ends were done: {left}"


# HYPOTHESIS_PROFILE=deep runs 25 times as many examples (about nine minutes).
EXAMPLES = 120 * (25 if os.environ.get("HYPOTHESIS_PROFILE") == "deep" else 1)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=cases())
def test_every_tunnel_gets_the_right_bytes_or_one_right_response(rig: Rig, case: Case) -> None:
    run_case(rig.ready(), case)


# Bugs the property found, fixed since: each pinned by its shrunk example.
_101 = b"HTTP/1.1 101 Switching Protocols\r\nX-Tu-Id: ########\r\n"
_TALK = Talk((b"from the client",), (b"from the target",), 0.0, "client close")


def _switching(head: bytes, **options: Any) -> Answer:
    return Answer(head, "pinned", 101, len(head), **options)


def test_a_101_without_upgrade_is_not_passed_on(rig: Rig) -> None:
    answer = _switching(_101 + b"Connection: Upgrade\r\n\r\n", upgrade=None)
    run_case(rig.ready(), Case(Ask("websocket"), answer, _TALK), events=False)


def test_a_101_reaches_the_client_without_framing_fields(rig: Rig) -> None:
    head = _101 + b"Upgrade: websocket\r\nConnection: Upgrade\r\nContent-Length: 5\r\n\r\n"
    answer = _switching(head, upgrade=b"websocket", framed_switch=True)
    run_case(rig.ready(), Case(Ask("websocket"), answer, _TALK), events=False)


@pytest.mark.parametrize("framing", [b"Content-Length: 5", b"Transfer-Encoding: chunked"])
def test_a_framed_2xx_to_connect_opens_no_tunnel(rig: Rig, framing: bytes) -> None:
    head = b"HTTP/1.1 200 OK\r\nX-Tu-Id: ########\r\n" + framing + b"\r\n\r\n"
    answer = Answer(head + b"hello", "pinned", 200, len(head), framed_switch=True)
    run_case(rig.ready(), Case(Ask("connect"), answer, _TALK), events=False)


def test_an_http_1_0_client_never_gets_a_101(rig: Rig) -> None:
    answer = _switching(
        _101 + b"Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n", upgrade=b"websocket"
    )
    run_case(rig.ready(), Case(Ask("websocket", b"HTTP/1.0"), answer, _TALK), events=False)


# A half-close is passed on and the other direction stays open: its late bytes get through.
_OK = b"HTTP/1.1 200 Connection established\r\nX-Tu-Id: ########\r\n\r\n"
_WEBSOCKET_101 = _101 + b"Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n"


@pytest.mark.parametrize("ending", ["client half-close", "target half-close"])
@pytest.mark.parametrize("kind", ["connect", "websocket"])
def test_a_half_close_is_passed_on_and_the_other_side_still_gets_through(
    rig: Rig, kind: str, ending: str
) -> None:
    if kind == "connect":
        answer = Answer(_OK, "pinned", 200, len(_OK))
    else:
        answer = _switching(_WEBSOCKET_101, upgrade=b"websocket")
    talk = Talk((b"last words",), (b"an answer",), 0.0, ending, b"late bytes, after the half-close")
    run_case(rig.ready(), Case(Ask(kind), answer, talk), events=False)
