from __future__ import annotations

import re
import socket
from typing import Any

import h11
import msgspec
import pytest
import trio

import balancer.app as app_module
from balancer.cli import SPEC
from balancer.config import BalancerConfig, FixedResponse, HttpListener
from monitoring.configfile import ConfigError
from monitoring.lifecycle import Daemon
from monitoring.settings import AdminSettings, LoggingSettings
from tests.support.daemons import address, running
from tests.support.http import request


async def test_serves_its_admin_listener_and_takes_a_new_config():
    config = BalancerConfig(admin=AdminSettings(port=0))
    async with running(SPEC, config) as daemon:
        assert (await request(address(daemon, "admin"), target="/readyz"))[0] == 200
        # One process (workers = 1, no supervisor): its lines name no worker.
        log = daemon.log_output.getvalue()  # type: ignore[attr-defined]
        assert "event=listener.bound daemon=balancer name=admin" in log
        assert "worker=" not in log
        new = BalancerConfig(admin=config.admin, logging=LoggingSettings(level="error"))
        await daemon.app.reload(new)
        assert daemon.app.config is new


async def test_serves_http_listeners_and_reloads_their_rules_for_keep_alive_clients():
    from balancer.config import Conditions, FixedResponse, Rule
    from tests.support.balancer_http import Client, balancer, config, front, group, listener
    from tests.support.targets import TargetServer, running_targets

    async with running_targets(TargetServer("a")) as (target,):
        cfg = config([listener()], [group("web", target)])
        async with balancer(cfg) as daemon:
            async with Client.connect(front(daemon)) as client:
                assert (await client.request(target="/x"))[0] == 200
                rule = Rule(
                    priority=1,
                    conditions=Conditions(path_pattern=("/x",)),
                    action=FixedResponse(status_code=418, message_body="teapot"),
                )
                await daemon.app.reload(config([listener(rules=[rule])], [group("web", target)]))
                # The same keep-alive connection takes the new rules at its next request.
                assert (await client.request(target="/x"))[0] == 418
            # A listener renamed is removed and added: the new one serves, the old is gone.
            old_address = front(daemon)
            moved = config([listener(name="other")], [group("web", target)])
            await daemon.app.reload(moved)
            assert "config.restart_required" not in daemon.log_output.getvalue()
            assert (await request(front(daemon, "other"), target="/x"))[0] == 200
            with pytest.raises(OSError):
                await trio.open_tcp_stream(*old_address)


async def test_https_listeners_terminate_tls_then_proxy(tmp_path):
    import ssl

    import trustme

    from balancer.config import Certificate, Forward, HttpsListener
    from tests.support.balancer_http import balancer, config, front, group
    from tests.support.http import read_response
    from tests.support.targets import TargetServer, running_targets

    ca = trustme.CA()
    cert = ca.issue_cert("shop.example.com")
    cert_file, key_file = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    lst = HttpsListener(
        name="front",
        host="127.0.0.1",
        port=0,
        default_action=Forward(target_group="web"),
        certificates=(Certificate(cert_file=str(cert_file), key_file=str(key_file)),),
    )
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    async with (
        running_targets(TargetServer("a")) as (target,),
        balancer(config([lst], [group("web", target)])) as daemon,
    ):
        raw = await trio.open_tcp_stream(*front(daemon))
        stream = trio.SSLStream(raw, client_context, server_hostname="shop.example.com")
        async with stream:
            conn = h11.Connection(h11.CLIENT)
            request = h11.Request(method="GET", target="/s", headers=[("host", "shop")])
            await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
            status, _, _body = await read_response(conn, stream)
        assert status == 200
        assert target.seen[0].header("x-forwarded-proto") == "https"


# --- listeners added, removed and moved by a reload ---------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _fixed(name: str, port: int, body: str) -> HttpListener:
    from tests.support.balancer_http import listener

    default = FixedResponse(status_code=200, message_body=body)
    return msgspec.structs.replace(listener(name=name, default=default), port=port)


async def test_a_reload_adds_a_listener_that_serves_at_once():
    from tests.support.balancer_http import balancer, config, front

    async with balancer(config([_fixed("front", 0, "front")], [])) as daemon:
        first = front(daemon)
        port = _free_port()
        await daemon.app.reload(
            config([_fixed("front", 0, "front"), _fixed("extra", port, "x")], [])
        )
        status, _, body = await request(("127.0.0.1", port), target="/")
        assert (status, body) == (200, b"x")
        # The listener that stayed kept its socket and serves on.
        assert front(daemon) == first
        assert (await request(first, target="/"))[2] == b"front"
        assert "event=listener.bound daemon=balancer name=extra" in daemon.log_output.getvalue()


async def test_a_removed_listener_lets_its_request_in_flight_finish_and_refuses_new_ones():
    from tests.support.balancer_http import balancer, config, front, group, listener
    from tests.support.targets import Reply, Seen, TargetServer, running_targets

    arrived, release = trio.Event(), trio.Event()

    async def slow(seen: Seen, server: TargetServer) -> Reply:
        arrived.set()
        await release.wait()
        return Reply(200, body=b"finished")

    async with running_targets(TargetServer("slow", slow)) as (target,):
        groups = [group("web", target)]
        async with balancer(config([listener(), _fixed("stay", 0, "stay")], groups)) as daemon:
            old, stay = front(daemon), front(daemon, "stay")
            async with trio.open_nursery() as nursery:
                replies: list[tuple[int, bytes]] = []

                async def in_flight() -> None:
                    status, _, body = await request(old, target="/slow")
                    replies.append((status, body))

                nursery.start_soon(in_flight)
                with trio.fail_after(10):
                    await arrived.wait()
                await daemon.app.reload(config([_fixed("stay", 0, "stay")], groups))
                with pytest.raises(OSError):  # nobody listens there any more
                    await trio.open_tcp_stream(*old)
                assert (await request(stay, target="/"))[2] == b"stay"
                release.set()
            assert replies == [(200, b"finished")]
            assert "event=listener.stopped daemon=balancer name=front" in (
                daemon.log_output.getvalue()
            )


async def test_a_reload_that_removes_a_listener_and_a_group_drops_their_series(monkeypatch):
    # Every listener and target group name a reload ever removed stayed in /metrics until
    # the balancer stopped (about 20 series each): a name churned by reloads grew without end.
    from tests.support.balancer_http import balancer, config, front, group, listener
    from tests.support.targets import TargetServer, running_targets

    async def series(daemon: Daemon[Any]) -> list[str]:
        status, _, body = await request(address(daemon, "admin"), target="/metrics")
        assert status == 200
        lines = body.decode().splitlines()
        return [line for line in lines if line and not line.startswith("#")]

    def naming(lines: list[str], label: str) -> list[str]:
        return [line for line in lines if label in line]

    async with running_targets(TargetServer("a")) as (target,):
        stay = _fixed("stay", 0, "stay")
        web = group("web", target, deregistration_delay_seconds=0)
        async with balancer(config([listener(), stay], [web])) as daemon:
            assert (await request(front(daemon), target="/"))[0] == 200
            before = await series(daemon)
            assert naming(before, 'listener="front"')
            assert naming(before, 'target_group="web"')
            monkeypatch.setattr(app_module, "REMOVED_SERIES_SECONDS", 0.5)
            await daemon.app.reload(config([stay], []))
            await trio.sleep(0.3)  # within the time they stay: still exported, to every scraper
            for _ in range(2):
                lines = await series(daemon)
                assert naming(lines, 'listener="front"')
                assert naming(lines, 'target_group="web"')
            with trio.fail_after(10):  # once its connections ended and its target left
                while True:
                    after = await series(daemon)
                    if not naming(after, 'listener="front"') + naming(after, 'target_group="web"'):
                        break
                    await trio.sleep(0.05)
            assert naming(after, 'listener="stay"')  # the listener that stayed keeps its own


async def test_a_reload_whose_port_is_taken_is_refused_and_the_old_listeners_answer():
    from tests.support.balancer_http import balancer, config, front

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        async with balancer(config([_fixed("front", 0, "old")], [])) as daemon:
            first = front(daemon)
            new = config([_fixed("front", 0, "new"), _fixed("extra", taken, "x")], [])
            with pytest.raises(ConfigError) as refused:
                await daemon.app.reload(new)
            assert "listener 'extra' cannot bind 127.0.0.1:" in str(refused.value)
            assert "Address already in use" in str(refused.value)
            # Nothing of the new generation applied: the old rules answer on the old socket.
            assert (await request(first, target="/"))[2] == b"old"
            assert [li.name for li in daemon.frame.listeners] == ["admin", "front"]
            assert daemon.app.config.listeners[0].default_action == FixedResponse(
                status_code=200, message_body="old"
            )


async def test_http_turned_https_on_the_same_port_takes_over_the_socket(tmp_path):
    import ssl

    import trustme

    from balancer.config import Certificate, HttpsListener
    from tests.support.balancer_http import balancer, config, front
    from tests.support.http import read_response

    ca = trustme.CA()
    cert = ca.issue_cert("shop.example.com")
    cert_file, key_file = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    port = _free_port()
    async with balancer(config([_fixed("front", port, "plain")], [])) as daemon:
        assert (await request(("127.0.0.1", port), target="/"))[2] == b"plain"
        # A keep-alive connection of the http listener, idle across the reload: it closes.
        idle = await trio.open_tcp_stream("127.0.0.1", port)
        secure = HttpsListener(
            name="front",
            host="127.0.0.1",
            port=port,
            certificates=(Certificate(cert_file=str(cert_file), key_file=str(key_file)),),
            default_action=FixedResponse(status_code=200, message_body="tls"),
        )
        async with idle:
            await daemon.app.reload(config([secure], []))  # type: ignore[list-item]
            with trio.fail_after(5):
                assert await idle.receive_some(10) == b""
        assert front(daemon) == ("127.0.0.1", port)
        context = ssl.create_default_context()
        ca.configure_trust(context)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        tls = trio.SSLStream(stream, context, server_hostname="shop.example.com")
        async with tls:
            conn = h11.Connection(h11.CLIENT)
            head = h11.Request(method="GET", target="/", headers=[("host", "shop")])
            await tls.send_all(conn.send(head) + conn.send(h11.EndOfMessage()))
            status, _, body = await read_response(conn, tls)
        assert (status, body) == (200, b"tls")


# --- a listener moved within one port: one reload -----------------------------------------


def _at(host: str, port: int, body: str, name: str = "front") -> HttpListener:
    return msgspec.structs.replace(_fixed(name, port, body), host=host)


@pytest.mark.parametrize(
    ("before", "after"),
    [("0.0.0.0", "127.0.0.1"), ("127.0.0.1", "0.0.0.0"), ("127.0.0.1", "127.0.0.2")],
)
async def test_a_listener_moves_to_another_address_of_its_port_in_one_reload(
    before: str, after: str
) -> None:
    """The old socket blocks the new one (a wildcard and a specific address), or does not
    (two specific ones): either way one reload moves the listener, and a request in flight
    on the old one finishes on its connection."""
    from tests.support.balancer_http import balancer, config, group, listener
    from tests.support.targets import Reply, Seen, TargetServer, running_targets

    arrived, release = trio.Event(), trio.Event()

    async def slow(seen: Seen, server: TargetServer) -> Reply:
        arrived.set()
        await release.wait()
        return Reply(200, body=b"finished")

    port = _free_port()
    old = msgspec.structs.replace(listener(), host=before, port=port)
    async with (
        running_targets(TargetServer("slow", slow)) as (target,),
        balancer(config([old], [group("web", target)])) as daemon,
        trio.open_nursery() as nursery,
    ):
        replies: list[tuple[int, bytes]] = []

        async def in_flight() -> None:
            status, _, body = await request(("127.0.0.1", port), target="/slow")
            replies.append((status, body))

        nursery.start_soon(in_flight)
        with trio.fail_after(10):
            await arrived.wait()
        await daemon.app.reload(config([_at(after, port, "new")], [group("web", target)]))
        assert [li.addresses for li in daemon.frame.listeners][1:] == [[(after, port)]]
        asked = "127.0.0.1" if after == "0.0.0.0" else after
        status, _, body = await request((asked, port), target="/")
        assert (status, body) == (200, b"new")
        if after == "127.0.0.2":  # nothing listens on the old address any more
            with pytest.raises(OSError):
                await trio.open_tcp_stream(before, port)
        release.set()
    assert replies == [(200, b"finished")]
    log = daemon.log_output.getvalue()  # type: ignore[attr-defined]
    # Stopped early only where the kernel would not bind the new address beside it.
    assert ("event=listener.making_way" in log) == (after != "127.0.0.2")


@pytest.mark.parametrize(("before", "after"), [("::1", "0:0::1"), ("127.0.0.1", "127.1")])
async def test_a_listen_host_written_another_way_keeps_its_socket(before: str, after: str) -> None:
    """A reload that only spells the address differently closed the listening socket (any
    connection in its accept queue reset) and bound it again (found by the IPv6 hunt)."""
    from tests.support.balancer_http import balancer, config

    port = _free_port()
    async with balancer(config([_at(before, port, "old")], [])) as daemon:
        held = [li.socket for li in daemon.app.listeners["front"].sockets]
        await daemon.app.reload(config([_at(after, port, "new")], []))
        assert [li.socket for li in daemon.app.listeners["front"].sockets] == held
        status, _, body = await request((before, port), target="/")
        assert (status, body) == (200, b"new")
    log = daemon.log_output.getvalue()  # type: ignore[attr-defined]
    assert "event=listener.stopped" not in log
    assert "event=listener.making_way" not in log


async def test_a_move_whose_new_address_stays_blocked_is_refused_and_the_old_listener_serves() -> (
    None
):
    """Another socket also holds the new address: the old listener, stopped to make way, is
    bound again on its address and answers with the old rules."""
    from tests.support.balancer_http import balancer, config

    port = _free_port()
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        async with balancer(config([_at("127.0.0.2", port, "old")], [])) as daemon:
            with pytest.raises(ConfigError) as refused:
                await daemon.app.reload(config([_at("0.0.0.0", port, "new")], []))
            assert f"listener 'front' cannot bind 0.0.0.0:{port}" in str(refused.value)
            assert "Address already in use" in str(refused.value)
            log = daemon.log_output.getvalue()  # type: ignore[attr-defined]
            assert "event=listener.making_way daemon=balancer name=front to=front" in log
            assert (await request(("127.0.0.2", port), target="/"))[2] == b"old"
            assert [li.name for li in daemon.frame.listeners] == ["admin", "front"]
            assert daemon.app.listeners["front"].addresses == [("127.0.0.2", port)]


async def test_a_move_refused_by_a_later_listener_puts_the_moved_one_back() -> None:
    """The move itself binds, but another listener of the same reload cannot: nothing of the
    new generation stays, and the moved listener serves on its old address again."""
    from tests.support.balancer_http import balancer, config

    port = _free_port()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        async with balancer(config([_at("0.0.0.0", port, "old")], [])) as daemon:
            new = config([_at("127.0.0.1", port, "new"), _fixed("extra", taken, "x")], [])
            with pytest.raises(ConfigError) as refused:
                await daemon.app.reload(new)
            assert "listener 'extra' cannot bind" in str(refused.value)
            assert (await request(("127.0.0.1", port), target="/"))[2] == b"old"
            assert daemon.app.listeners["front"].addresses == [("0.0.0.0", port)]
            # The refused reload left the next one free to do it.
            await daemon.app.reload(config([_at("127.0.0.1", port, "new")], []))
            assert (await request(("127.0.0.1", port), target="/"))[2] == b"new"


async def test_a_start_whose_access_log_cannot_be_opened_names_the_file_and_key(tmp_path):
    from balancer.config import AccessLog
    from monitoring.lifecycle import StartupError

    listener = HttpListener(
        name="front",
        port=0,
        default_action=FixedResponse(status_code=200),
        access_log=AccessLog(enabled=True, destination=str(tmp_path)),  # a directory
    )
    config = BalancerConfig(admin=AdminSettings(port=0), listeners=[listener])
    with pytest.raises(BaseException) as raised:  # StartupError, in nurseries' groups
        async with running(SPEC, config):
            pytest.fail("the balancer started")
    error = raised.value
    while isinstance(error, BaseExceptionGroup):
        (error,) = error.exceptions
    assert isinstance(error, StartupError)
    message = str(error)
    assert str(tmp_path) in message
    assert "cannot open the access log of listener 'front'" in message
    assert "$.listeners[0].access_log.destination" in message


async def test_access_log_write_errors_are_counted_on_metrics_from_0():
    """A full disk (ENOSPC, here /dev/full) dropped access log lines silently."""
    from balancer.config import AccessLog

    listener = HttpListener(
        name="front",
        port=0,
        default_action=FixedResponse(status_code=200),
        access_log=AccessLog(enabled=True, destination="/dev/full"),
    )
    config = BalancerConfig(admin=AdminSettings(port=0), listeners=[listener])
    series = b'wharf_balancer_access_log_write_errors_total{destination="/dev/full"}'
    async with running(SPEC, config) as daemon:
        _, _, metrics = await request(address(daemon, "admin"), target="/metrics")
        assert series + b" 0.0" in metrics
        assert (await request(address(daemon, "front"), target="/"))[0] == 200
        daemon.app.access_logs.flush()  # the housekeeping timer may have tried already
        _, _, metrics = await request(address(daemon, "admin"), target="/metrics")
        counted = re.search(re.escape(series) + rb" ([0-9.]+)", metrics)
        assert counted is not None
        assert float(counted[1]) >= 1
        log = daemon.log_output.getvalue()  # type: ignore[attr-defined]
        assert "event=access_log.write_failed daemon=balancer destination=/dev/full" in log


async def test_a_target_deregistered_before_a_restart_is_simply_not_there_after_it(tmp_path):
    from balancer.config import Forward, HealthCheck, Target, TargetGroup

    group = TargetGroup(
        name="web",
        targets=(Target(host="10.0.0.1"), Target(host="10.0.0.2")),
        deregistration_delay_seconds=300,
        health_check=HealthCheck(enabled=False),
    )
    listener = HttpListener(
        name="front", host="127.0.0.1", port=0, default_action=Forward(target_group="web")
    )
    config = BalancerConfig(
        admin=AdminSettings(port=0),
        state_dir=str(tmp_path),
        listeners=(listener,),
        target_groups=(group,),
    )
    body = msgspec.json.encode({"target_group": "web", "targets": [{"host": "10.0.0.1"}]})
    async with running(SPEC, config) as daemon:
        admin = address(daemon, "admin")
        status, _, reply = await request(admin, "POST", "/targets/deregister", body=body)
        assert status == 200, reply
    async with running(SPEC, config) as restarted:
        admin = address(restarted, "admin")
        _, _, reply = await request(admin, target="/targets")
        (listed,) = msgspec.json.decode(reply)["target_groups"][0]["targets"]
        assert (listed["id"], listed["state"]) == ("10.0.0.2:80", "unavailable")
        _, _, metrics = await request(admin, target="/metrics")
        # Only what happened in this process: one registration, no draining, no departure.
        transitions = [
            line
            for line in metrics.decode().splitlines()
            if line.startswith("wharf_balancer_target_health_transitions_total{")
        ]
        assert len(transitions) == 1, transitions
        assert 'state="unavailable",target_group="web"} 1.0' in transitions[0]
        assert 'wharf_balancer_targets{state="draining",target_group="web"} 0.0' in metrics.decode()
        assert "10.0.0.1" not in metrics.decode()
        log = restarted.log_output.getvalue()  # type: ignore[attr-defined]
        assert "target=10.0.0.1:80" not in log


async def test_a_workers_change_needs_a_restart_until_the_file_matches_the_process(tmp_path):
    config = BalancerConfig(admin=AdminSettings(port=0), state_dir=str(tmp_path))
    warning = "event=config.restart_required daemon=balancer section=workers"
    async with running(SPEC, config) as daemon:  # one process: workers = 1 runs
        warned: list[bool] = []
        for workers in (2, 2, 1):
            output = daemon.log_output  # type: ignore[attr-defined]
            before = len(output.getvalue())
            # A fixed admin port: the file must be one the restart it asks for accepts.
            fixed = AdminSettings(port=28600 if workers > 1 else 0)
            await daemon.app.reload(msgspec.structs.replace(config, workers=workers, admin=fixed))
            warned.append(warning in output.getvalue()[before:])
        assert warned == [True, True, False]


@pytest.mark.parametrize(
    ("listener_port", "admin_port", "reason"),
    [
        (0, 28601, "workers = 2 needs a fixed port - at `$.listeners[0].port`"),
        (28602, 0, "workers = 2 needs a fixed admin port - at `$.admin.port`"),
        (28602, 65535, "admin.port + workers - 1 must stay within 65535"),
    ],
)
async def test_a_reload_refuses_a_workers_change_the_restart_would_refuse(
    tmp_path, listener_port, admin_port, reason
):
    # It was accepted with only a restart_required warning, and the restart it asked for
    # failed, leaving the balancer down (found by a report-only hunt).
    path = tmp_path / "balancer.toml"
    path.write_text(f"""
[admin]
port = {admin_port}
[[listeners]]
name = "web"
protocol = "http"
host = "127.0.0.1"
port = {listener_port}
default_action = {{ type = "fixed_response", status_code = 200 }}
""")
    config = BalancerConfig(admin=AdminSettings(port=0), state_dir=str(tmp_path))
    async with running(SPEC, config, config_path=path) as daemon:
        generation = daemon.app.runtime.current.generation
        path.write_text(f"workers = 2\n{path.read_text()}")
        refused = await daemon.reload()
        assert refused == f"{path}: {reason}"
        assert daemon.app.runtime.current.generation == generation
        log = daemon.log_output.getvalue()  # type: ignore[attr-defined]
        assert "event=config.reload_refused" in log
        assert "section=workers" not in log


async def test_a_state_dir_change_needs_a_restart(tmp_path):
    # The targets API keeps writing where it started; the reload says so rather than let an
    # operator believe registrations now land in the new directory.
    config = BalancerConfig(admin=AdminSettings(port=0), state_dir=str(tmp_path / "a"))
    warning = "event=config.restart_required daemon=balancer section=state_dir"
    async with running(SPEC, config) as daemon:
        output = daemon.log_output  # type: ignore[attr-defined]
        await daemon.app.reload(config)
        assert warning not in output.getvalue()
        moved = msgspec.structs.replace(config, state_dir=str(tmp_path / "b"))
        await daemon.app.reload(moved)
        assert output.getvalue().count(warning) == 1
        # Judged against what runs, not the last file: still pending at the next reload,
        # and none once the file names the running directory again.
        await daemon.app.reload(moved)
        assert output.getvalue().count(warning) == 2
        await daemon.app.reload(config)
        assert output.getvalue().count(warning) == 2


def _two_free_ports() -> int:
    """A port that is free, and so is the next one (worker 1's admin listener)."""
    for _ in range(100):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise AssertionError("no two consecutive free ports")


async def test_a_worker_has_the_changes_saved_while_its_admin_port_was_not_bound(
    tmp_path, monkeypatch
):
    # Worker 1, restarted after a crash, reads targets.json, then binds its admin port. A
    # change worker 0 saved in between was forwarded to a port that refused it: worker 1
    # must still have it, or it routes by other targets than worker 0 and the file until
    # its next restart.
    import os

    import balancer.app
    from balancer.config import Forward, HealthCheck, Target, TargetGroup
    from balancer.peers import COUNT_ENV, INDEX_ENV, SUPERVISOR_ENV
    from balancer.targets_api import Overrides, StateFile

    group = TargetGroup(
        name="web",
        targets=(Target(host="10.0.0.1"),),
        health_check=HealthCheck(enabled=False),
    )
    admin_port = _two_free_ports()
    listener = HttpListener(
        name="front",
        host="127.0.0.1",
        port=admin_port + 1000 if admin_port < 64000 else admin_port - 1000,
        default_action=Forward(target_group="web"),
    )
    config = BalancerConfig(
        admin=AdminSettings(port=admin_port),
        state_dir=str(tmp_path),
        listeners=(listener,),
        target_groups=(group,),
    )
    monkeypatch.setenv(INDEX_ENV, "1")
    monkeypatch.setenv(COUNT_ENV, "2")
    monkeypatch.setenv(SUPERVISOR_ENV, str(os.getppid()))  # a live parent, as a supervisor
    bind_admin = balancer.app.open_admin_listener

    async def worker_0_saves_a_change_first(*args, **kwargs):
        changed = Overrides()
        changed.register(group, [Target(host="10.0.0.2")])
        changed.deregister(group, ["10.0.0.1:80"])
        StateFile(tmp_path).save(changed.dump())
        return await bind_admin(*args, **kwargs)

    monkeypatch.setattr(balancer.app, "open_admin_listener", worker_0_saves_a_change_first)
    async with running(SPEC, config) as daemon:
        assert address(daemon, "admin")[1] == admin_port + 1
        _, _, reply = await request(address(daemon, "admin"), target="/targets")
        listed = {
            t["id"]: t["source"] for t in msgspec.json.decode(reply)["target_groups"][0]["targets"]
        }
        assert listed == {"10.0.0.2:80": "api"}
        group_now = daemon.app.runtime.current.groups["web"]
        assert list(group_now.by_id) == ["10.0.0.2:80"]


def test_the_app_is_built_outside_trio_as_the_command_builds_it():
    """The CLI builds the daemon before trio runs, and registering a collector collects once:
    5ec15a4 read trio's clock there and wharf-balancer could not start at all (the bench
    caught it; the tests build it inside trio)."""
    daemon = Daemon(SPEC, BalancerConfig(admin=AdminSettings(port=0)), config_path=None)
    assert daemon.app is not None
