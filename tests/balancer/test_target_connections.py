"""Target connections through a real balancer: https target groups, the response head
bound, and pooled connections that follow their targets through draining and reloads."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import h11
import msgspec
import pytest
import trio
import trustme

from balancer.config import (
    BalancerConfig,
    Conditions,
    FixedResponse,
    Forward,
    HealthCheck,
    HttpsListener,
    ListenerLimits,
    ListenerTimeouts,
    Rule,
    Target,
    TargetGroup,
)
from tests.balancer.test_target_tls import openssl_target
from tests.support.balancer_http import Client, balancer, config, front, group, listener, sample
from tests.support.daemons import address
from tests.support.http import request
from tests.support.targets import Reply, Seen, TargetServer, running_targets
from tests.support.tls import write_pair
from tests.support.tls_targets import TlsTargetServer, server_context


def on_port(port: int, **options: Any) -> TargetGroup:
    """Group ``web`` with the one target 127.0.0.1:``port`` (no TargetServer behind it)."""
    web = group("web", **options)
    return msgspec.structs.replace(web, targets=(Target(host="127.0.0.1", port=port),))


# --- https target groups ---------------------------------------------------------------------


async def test_an_https_group_speaks_tls_to_its_targets_and_reuses_connections():
    target = TlsTargetServer("s", context=server_context(trustme.CA()))
    async with (
        running_targets(target),
        balancer(config([listener()], [group("web", target, protocol="https")])) as daemon,
        Client.connect(front(daemon)) as client,
    ):
        for i in range(3):
            status, headers, body = await client.request(target=f"/n/{i}")
            assert status == 200
            assert headers["x-target"] == "s"
            assert json.loads(body)["target"] == f"/n/{i}"
    assert (target.accepts, target.handshakes) == (1, 1)  # one connection, kept alive
    assert target.alpn == ["http/1.1"]
    assert target.server_names == [None]  # 127.0.0.1: no SNI
    assert target.seen[0].header("x-forwarded-proto") == "http"  # the listener's protocol


async def test_a_target_that_fails_the_handshake_is_a_502():
    plain = TargetServer("plain")  # speaks HTTP, not TLS
    async with (
        running_targets(plain),
        balancer(config([listener()], [group("web", plain, protocol="https")])) as daemon,
    ):
        status, _, _ = await request(front(daemon))
        assert status == 502
        assert plain.seen == []  # the ClientHello was no request
        assert "TLS handshake failed" in daemon.log_output.getvalue()  # type: ignore[attr-defined]
        # ALB's TargetTLSNegotiationErrorCount, apart from connections refused outright
        # (which it still is one of: TargetConnectionErrorCount).
        web = {"target_group": "web"}
        assert sample(daemon, "wharf_balancer_target_tls_negotiation_errors_total", web) == 1
        assert sample(daemon, "wharf_balancer_target_connection_errors_total", web) == 1


async def test_a_refused_connection_to_an_https_target_is_no_tls_negotiation_error():
    with trio.socket.socket() as closed:  # bound, not listening: the connect is refused
        await closed.bind(("127.0.0.1", 0))
        web = on_port(closed.getsockname()[1], protocol="https")
        async with balancer(config([listener()], [web])) as daemon:
            status, _, _ = await request(front(daemon))
            assert status == 502
            labels = {"target_group": "web"}
            assert sample(daemon, "wharf_balancer_target_connection_errors_total", labels) == 1
            # Its series exists from the start, at 0 (an increase() sees the first error).
            tls_errors = daemon.metrics.registry.get_sample_value(
                "wharf_balancer_target_tls_negotiation_errors_total", labels
            )
            assert tls_errors == 0


async def test_a_target_silent_during_the_handshake_is_a_504_after_the_connect_timeout():
    silent = trio.socket.socket()  # listening, never accepting: TCP connects, TLS never
    await silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    web = on_port(port, protocol="https")
    lst = listener(timeouts=ListenerTimeouts(target_connect_seconds=1))
    async with balancer(config([lst], [web])) as daemon:
        start = trio.current_time()
        status, _, _ = await request(front(daemon))
        assert status == 504
        assert 1 <= trio.current_time() - start < 5
    silent.close()


CHACHA_ONLY = ("-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256")


@pytest.mark.parametrize(
    ("policy", "options", "reached"),
    [
        # ALB: no TLS 1.3 policy on any HTTPS listener -> 2016-08 to targets, no TLS 1.3.
        ("ELBSecurityPolicy-2016-08", ("-tls1_3",), False),
        ("ELBSecurityPolicy-TLS13-1-2-2021-06", ("-tls1_3",), True),
        # A FIPS policy -> TLS13-1-0-FIPS-2023-04, whose TLS 1.3 suites are the AES-GCM two.
        ("ELBSecurityPolicy-TLS13-1-2-Res-FIPS-2023-04", CHACHA_ONLY, False),
        ("ELBSecurityPolicy-TLS13-1-2-Res-2021-06", CHACHA_ONLY, True),
    ],
)
async def test_the_https_listeners_policy_chooses_what_targets_are_offered(
    tmp_path, policy, options, reached
):
    """Targets get ALB's back-end policy for the load balancer's HTTPS listeners, whichever
    listener the request came in on: here a plain one, next to an https one with ``policy``.
    A target the policy cannot reach fails the handshake: 502, and unhealthy."""
    https = HttpsListener(
        name="tls",
        host="127.0.0.1",
        port=0,
        default_action=FixedResponse(status_code=200),
        certificates=(write_pair(trustme.CA(), tmp_path, "shop", "shop.example.com"),),
        ssl_policy=policy,
    )
    check = HealthCheck(protocol="https", interval_seconds=5, timeout_seconds=2)
    async with openssl_target(tmp_path, *options, accepts=None) as port:
        web = msgspec.structs.replace(on_port(port, protocol="https"), health_check=check)
        async with balancer(config([listener(), https], [web])) as daemon:
            log = daemon.log_output  # type: ignore[attr-defined]
            left = "previous=initial state="  # one pass, or two failures (5 s apart) later
            with trio.fail_after(30):
                while left not in log.getvalue():  # noqa: ASYNC110 (a log line: no event to wait on)
                    await trio.sleep(0.1)
            changed = next(line for line in log.getvalue().splitlines() if left in line)
            assert ("state=healthy" if reached else "state=unhealthy") in changed
            # Reached: openssl's -www page; not: a 502 (fail-open sends it there anyway).
            status, _, _ = await request(front(daemon))
            assert status == (200 if reached else 502)


# --- the response head bound (limits.response_header_bytes, 32 KiB by default) ---------------


def raw_target(head: bytes, first: int) -> Callable[[trio.SocketStream], Awaitable[None]]:
    """A target answering every request with ``head`` (no body): its first ``first`` bytes,
    a pause (so the balancer reads them alone), then the rest."""

    async def serve(stream: trio.SocketStream) -> None:
        buffered = b""
        while b"\r\n\r\n" not in buffered:
            data = await stream.receive_some(65536)
            if not data:
                return
            buffered += data
        await stream.send_all(head[:first])
        await trio.sleep(0.1)
        await stream.send_all(head[first:])
        await stream.receive_some(65536)  # until the balancer is done with it

    return serve


def head_of(size: int) -> bytes:
    fixed = len(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nx-pad: \r\n\r\n")
    return b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nx-pad: %s\r\n\r\n" % (b"p" * (size - fixed))


UNDER, OVER = 32_768 - 256, 32_768 + 256


@pytest.mark.parametrize(
    ("size", "first", "status"),
    [
        (20_000, 19_000, 200),  # incomplete past h11's 16 KiB default
        (UNDER, UNDER - 100, 200),
        (UNDER, UNDER, 200),
        (OVER, OVER - 1000, 502),  # completed past the limit
        (OVER, OVER - 100, 502),  # incomplete past the limit
        (OVER, OVER, 502),  # whole in one read: h11 alone would let it through
    ],
)
async def test_response_heads_up_to_the_limit_pass_and_larger_ones_are_502(
    nursery, size, first, status
):
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    nursery.start_soon(trio.serve_listeners, raw_target(head_of(size), first), listeners)
    async with balancer(config([listener()], [on_port(port)])) as daemon:
        got, headers, _ = await request(front(daemon))
    assert got == status
    if status == 200:
        assert len(headers["x-pad"]) > 16_000


@pytest.mark.parametrize(("size", "status"), [(8_192 - 256, 200), (8_192 + 256, 502)])
async def test_a_listener_sets_its_own_response_head_bound(nursery, size, status):
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    nursery.start_soon(trio.serve_listeners, raw_target(head_of(size), size), listeners)
    front_listener = listener(limits=ListenerLimits(response_header_bytes=8_192))
    async with balancer(config([front_listener], [on_port(port)])) as daemon:
        got, _, _ = await request(front(daemon))
    assert got == status


# --- pooled connections follow their targets -------------------------------------------------


async def wait_for(predicate: Callable[[], bool], seconds: float = 5) -> None:
    with trio.fail_after(seconds):
        while not predicate():  # noqa: ASYNC110 (counters: no event to wait on)
            await trio.sleep(0.02)


def with_state(tmp_path, *groups: TargetGroup) -> BalancerConfig:
    """A config whose targets API keeps its state file under ``tmp_path``."""
    return msgspec.structs.replace(config([listener()], groups), state_dir=str(tmp_path))


async def deregister(daemon, target: TargetServer, group: str = "web") -> None:
    body = {"target_group": group, "targets": [{"host": "127.0.0.1", "port": target.port}]}
    status, _, reply = await request(
        address(daemon, "admin"), "POST", "/targets/deregister", body=json.dumps(body).encode()
    )
    assert status == 200, reply


async def test_a_deregistered_targets_idle_connections_are_closed_and_its_pool_dropped(
    tmp_path,
):
    a, b = TargetServer("a"), TargetServer("b")
    async with running_targets(a, b):
        cfg = with_state(tmp_path, group("web", a, b, deregistration_delay_seconds=0))
        async with balancer(cfg) as daemon:
            for _ in range(4):  # round robin: a and b each get a pooled connection
                assert (await request(front(daemon)))[0] == 200
            pools = daemon.app.pools  # type: ignore[attr-defined]
            assert (a.open_connections, b.open_connections) == (1, 1)
            await deregister(daemon, a)
            # Draining ends at once (delay 0): within a housekeeping round the idle
            # connection is closed and the pool forgotten.
            await wait_for(lambda: a.open_connections == 0)
            assert [pool.endpoint.port for pool in pools] == [b.port]
            assert b.open_connections == 1
            # A reload without b: b drains and leaves the same way.
            only_a = with_state(tmp_path, group("web", a, deregistration_delay_seconds=0))
            await daemon.app.reload(only_a)
            await wait_for(lambda: b.open_connections == 0)
            assert list(pools) == []


async def test_a_request_in_flight_finishes_while_its_target_drains(tmp_path):
    release = trio.Event()

    async def slow_on_demand(seen: Seen, server: TargetServer) -> Reply:
        if seen.target == "/slow":
            await release.wait()
            return Reply(200, [("x-target", server.name)], b"slow done")
        return Reply(200, [("x-target", server.name)], b"quick")

    a, b = TargetServer("a", slow_on_demand), TargetServer("b", slow_on_demand)
    async with running_targets(a, b):
        cfg = with_state(tmp_path, group("web", a, b, deregistration_delay_seconds=60))
        async with balancer(cfg) as daemon, trio.open_nursery() as nursery:
            answer: list[tuple[int, dict[str, str], bytes]] = []

            async def slow_request() -> None:
                answer.append(await request(front(daemon), target="/slow", limit_seconds=20))

            nursery.start_soon(slow_request)
            await wait_for(lambda: len(a.seen) + len(b.seen) == 1)
            busy, other = (a, b) if a.seen else (b, a)
            await deregister(daemon, busy)
            status, _, reply = await request(
                address(daemon, "admin"), target="/targets?target_group=web"
            )
            described = {t["port"]: t for t in json.loads(reply)["target_groups"][0]["targets"]}
            assert described[busy.port]["state"] == "draining"
            assert described[busy.port]["in_flight"] == 1  # counted, not made up
            for _ in range(6):  # the draining target gets no new request
                status, headers, _ = await request(front(daemon))
                assert (status, headers["x-target"]) == (200, other.name)
            assert len(busy.seen) == 1
            release.set()
            await wait_for(lambda: bool(answer))
            status, headers, body = answer[0]
            assert (status, headers["x-target"], body) == (200, busy.name, b"slow done")
            # Its last request done, the target leaves early and its connection is closed
            # rather than pooled.
            live = daemon.app.runtime.live["web"]  # type: ignore[attr-defined]
            await wait_for(lambda: live.health.get(f"127.0.0.1:{busy.port}") is None)
            await wait_for(lambda: busy.open_connections == 0)
            assert other.open_connections == 1


@pytest.mark.parametrize("deregistered_by", ["the same reload", "the targets API"])
async def test_a_request_in_flight_to_a_group_a_reload_stopped_using_drains(
    tmp_path, deregistered_by
):
    # A reload stops forwarding to group "slow" while a request it routed there runs; the
    # group's target is then deregistered (by that reload or through the API). It drains
    # for the delay like any deregistered target: the request finishes, and is not cut.
    release = trio.Event()

    async def slow_on_demand(seen: Seen, server: TargetServer) -> Reply:
        if seen.target == "/slow":
            await release.wait()
            return Reply(200, [("x-target", server.name)], b"slow done")
        return Reply(200, [("x-target", server.name)], b"quick")

    a, b = TargetServer("a", slow_on_demand), TargetServer("b", slow_on_demand)
    to_slow = Rule(
        priority=1,
        conditions=Conditions(path_pattern=("/slow",)),
        action=Forward(target_group="slow"),
    )

    def cfg(rules: list[Rule], *slow_targets: TargetServer) -> BalancerConfig:
        groups = [group("web", b), group("slow", *slow_targets, deregistration_delay_seconds=60)]
        return msgspec.structs.replace(
            config([listener(rules=rules)], groups), state_dir=str(tmp_path)
        )

    async with (
        running_targets(a, b),
        balancer(cfg([to_slow], a)) as daemon,
        trio.open_nursery() as nursery,
    ):
        answer: list[tuple[int, dict[str, str], bytes]] = []

        async def slow_request() -> None:
            answer.append(await request(front(daemon), target="/slow", limit_seconds=20))

        nursery.start_soon(slow_request)
        await wait_for(lambda: len(a.seen) == 1)
        if deregistered_by == "the same reload":
            await daemon.app.reload(cfg([]))
        else:
            await daemon.app.reload(cfg([], a))
            await deregister(daemon, a, "slow")
        status, _, reply = await request(
            address(daemon, "admin"), target="/targets?target_group=slow"
        )
        [described] = json.loads(reply)["target_groups"][0]["targets"]
        assert (described["state"], described["in_flight"]) == ("draining", 1)
        await trio.sleep(1.5)  # past a round of the checker's idle poll: still running
        assert answer == []
        release.set()
        await wait_for(lambda: bool(answer))
        status, headers, body = answer[0]
        assert (status, headers["x-target"], body) == (200, a.name, b"slow done")
        live = daemon.app.runtime.live["slow"]  # type: ignore[attr-defined]
        await wait_for(lambda: live.health.get(f"127.0.0.1:{a.port}") is None)


async def test_requests_still_in_flight_when_the_delay_ends_are_cut(tmp_path):
    # ALB's 502: "the deregistration delay period elapsed for a request being handled by a
    # target that was deregistered"; a response already under way loses its connection.
    never = trio.Event()

    async def stalling(seen: Seen, server: TargetServer) -> Reply:
        if seen.target == "/stall":
            await never.wait()
        if seen.target == "/trickle":
            return Reply(200, [("x-target", server.name)], chunks=first_chunk_only())
        return Reply(200, [("x-target", server.name)], b"quick")

    async def first_chunk_only() -> AsyncIterator[bytes]:
        yield b"the beginning"
        await never.wait()

    a = TargetServer("a", stalling)
    async with running_targets(a):
        cfg = with_state(tmp_path, group("web", a, deregistration_delay_seconds=1))
        async with balancer(cfg) as daemon, trio.open_nursery() as nursery:
            answers: dict[str, Any] = {}

            async def ask(target: str) -> None:
                try:
                    answers[target] = await request(front(daemon), target=target, limit_seconds=20)
                except (trio.BrokenResourceError, h11.RemoteProtocolError) as exc:
                    answers[target] = exc

            nursery.start_soon(ask, "/stall")
            nursery.start_soon(ask, "/trickle")
            await wait_for(lambda: len(a.seen) == 2)
            await trio.sleep(0.2)  # the trickle's head and first bytes are out
            started = trio.current_time()
            await deregister(daemon, a)
            await wait_for(lambda: len(answers) == 2, seconds=10)
            assert trio.current_time() - started < 4  # at the deadline, not at the target's
            status, _, body = answers["/stall"]
            assert (status, body) == (502, b"bad gateway\n")
            assert not isinstance(answers["/trickle"], tuple)  # cut: no complete response
            live = daemon.app.runtime.live["web"]  # type: ignore[attr-defined]
            assert live.health.get(f"127.0.0.1:{a.port}") is None
            assert len(daemon.app.cutoffs) == 0  # type: ignore[attr-defined]
            never.set()  # the target's handlers end, and find their connections closed
            await wait_for(lambda: a.open_connections == 0)
