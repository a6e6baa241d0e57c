"""Reload under load: the file flips between two rule sets while clients keep requesting.

No request may fail, keep-alive connections must survive every reload, and each answer must
come from one of the two generations (never a mix or an error).
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from typing import Any

import h11
import trio

from balancer.cli import SPEC
from balancer.config import BalancerConfig
from balancer.health import TargetState
from monitoring.configfile import load
from monitoring.lifecycle import Daemon
from tests.support.check_targets import StubTarget, until_health
from tests.support.daemons import address, running
from tests.support.http import read_response

REQUESTS_PER_CLIENT = 60
CLIENTS = 4


def rule_set(path: Path, color: str, blue: int, green: int, port: int = 0) -> None:
    path.write_text(f"""
[admin]
port = 0
[logging]
level = "warning"

[[listeners]]
name = "web"
protocol = "http"
host = "127.0.0.1"
port = {port}
default_action = {{ type = "fixed_response", status_code = 200, message_body = "default-{color}" }}

[[listeners.rules]]
priority = 1
conditions = {{ path_pattern = ["/color"] }}
action = {{ type = "forward", target_group = "{color}" }}

[[target_groups]]
name = "blue"
targets = [{{ host = "127.0.0.1", port = {blue} }}]

[[target_groups]]
name = "green"
targets = [{{ host = "127.0.0.1", port = {green} }}]
""")


def balancer(path: Path) -> contextlib.AbstractAsyncContextManager[Daemon[Any]]:
    return running(SPEC, load(path, BalancerConfig), config_path=path, level="warning")


async def wait_healthy(daemon: Daemon[BalancerConfig], *groups: str) -> None:
    """Until every group has a healthy target (woken by the runtime's health events)."""
    runtime = daemon.app.runtime  # type: ignore[attr-defined]

    def done() -> bool:
        return all(
            any(r.state is TargetState.HEALTHY for r in runtime.live[g].health) for g in groups
        )

    await until_health(runtime, done, within=10)


class KeepAliveClient:
    """One connection, many requests; any close by the server fails the test."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.connection = h11.Connection(h11.CLIENT)

    async def get(self, target: str) -> tuple[int, bytes]:
        request = h11.Request(method="GET", target=target, headers=[("host", "example.com")])
        data = self.connection.send(request) + self.connection.send(h11.EndOfMessage())
        await self.stream.send_all(data)
        status, headers, body = await read_response(self.connection, self.stream)
        assert headers.get("connection") != "close"
        self.connection.start_next_cycle()
        return status, body


async def test_a_reload_under_load_fails_no_request(nursery, tmp_path):
    blue, green = StubTarget(), StubTarget()
    blue.body, green.body = b"blue", b"green"
    await blue.start(nursery)
    await green.start(nursery)
    path = tmp_path / "balancer.toml"
    rule_set(path, "blue", blue.port, green.port)
    async with balancer(path) as daemon:
        port = address(daemon, "web")[1]
        rule_set(path, "blue", blue.port, green.port, port)  # the bound port, for reloads
        await wait_healthy(daemon, "blue")  # green is unused (not checked) until a flip
        answers: list[tuple[str, int, bytes]] = []
        reloads = 0

        async def client(index: int) -> None:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                keep_alive = KeepAliveClient(stream)
                for i in range(REQUESTS_PER_CLIENT):
                    target = "/color" if (i + index) % 2 else "/other"
                    status, body = await keep_alive.get(target)
                    answers.append((target, status, body))
                    await trio.sleep(0.002)

        async def flip() -> None:
            nonlocal reloads
            colors = ["green", "blue"]
            while True:
                color = colors[reloads % 2]
                rule_set(path, color, blue.port, green.port, port)
                assert await daemon.reload() is None
                reloads += 1
                await trio.sleep(0.01)

        with trio.fail_after(60):
            async with trio.open_nursery() as load_nursery:
                load_nursery.start_soon(flip)
                async with trio.open_nursery() as clients:
                    for index in range(CLIENTS):
                        clients.start_soon(client, index)
                load_nursery.cancel_scope.cancel()

    assert reloads >= 5
    assert len(answers) == CLIENTS * REQUESTS_PER_CLIENT
    for target, status, body in answers:
        assert status == 200, (target, status, body)
        expected = (
            {b"blue", b"green"} if target == "/color" else {b"default-blue", b"default-green"}
        )
        assert body in expected, (target, body)
    # Both generations answered: the flips really happened under the clients.
    assert {body for _, _, body in answers} == {
        b"blue",
        b"green",
        b"default-blue",
        b"default-green",
    }
    blue.stop()
    green.stop()


async def test_a_reload_with_an_unusable_key_file_is_refused_naming_it(tmp_path):
    path = tmp_path / "balancer.toml"
    rule_set(path, "blue", 1, 2)  # targets that are never reached
    async with balancer(path) as daemon:
        generation = daemon.app.runtime.current.generation
        short = tmp_path / "sticky.key"
        short.write_bytes(b"too short")
        for key_file in (short, tmp_path / "missing.key"):
            path.write_text(path.read_text() + f'[stickiness]\nkey_files = ["{key_file}"]\n')
            refused = await daemon.reload()
            assert refused is not None
            assert str(key_file) in refused
            assert daemon.app.runtime.current.generation == generation
            rule_set(path, "blue", 1, 2)


def logged_config(path: Path, log: Path, port: int, extra: str = "") -> None:
    """One listener answering 200, its access log in ``log``."""
    path.write_text(f"""
[admin]
port = 0
[[listeners]]
name = "web"
protocol = "http"
host = "127.0.0.1"
port = {port}
access_log = {{ enabled = true, destination = "{log}" }}
default_action = {{ type = "fixed_response", status_code = 200, message_body = "hi" }}
{extra}""")


async def one_request(port: int) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await KeepAliveClient(stream).get("/")


def lines(path: Path) -> int:
    return len(path.read_text().splitlines())


async def test_a_reload_reopens_the_access_log_so_logrotate_works(tmp_path):
    """mv access.log access.log.1, then SIGHUP: new lines go to a new access.log (as nginx's
    USR1), not on into the moved file (the README: reopened on SIGHUP)."""
    log = tmp_path / "access.log"
    path = tmp_path / "balancer.toml"
    logged_config(path, log, 0)
    async with balancer(path) as daemon:
        port = address(daemon, "web")[1]
        logged_config(path, log, port)
        await one_request(port)
        rotated = tmp_path / "access.log.1"
        log.rename(rotated)
        assert await daemon.reload() is None
        await one_request(port)
        await one_request(port)
        daemon.app.access_logs.flush()  # type: ignore[attr-defined]
        assert lines(rotated) == 1
        assert lines(log) == 2


async def test_a_reload_the_app_refuses_still_reopens_the_access_log(tmp_path):
    """Rotating the log must not depend on the new file: a reload refused for a missing key
    file left new lines going into the moved file."""
    log, rotated = tmp_path / "access.log", tmp_path / "access.log.1"
    path = tmp_path / "balancer.toml"
    logged_config(path, log, 0)
    async with balancer(path) as daemon:
        port = address(daemon, "web")[1]
        await one_request(port)
        log.rename(rotated)
        missing = tmp_path / "missing.key"
        logged_config(path, log, port, f'[stickiness]\nkey_files = ["{missing}"]\n')
        refused = await daemon.reload()
        assert refused is not None
        assert str(missing) in refused
        await one_request(port)
        daemon.app.access_logs.flush()  # type: ignore[attr-defined]
        assert lines(rotated) == 1
        assert lines(log) == 1


async def test_a_reload_of_a_file_that_does_not_decode_still_reopens_the_access_log(tmp_path):
    """The lifecycle refuses such a file before the app sees it; the reopen runs first
    (``Frame.on_reload_attempt``), whatever becomes of the file."""
    log, rotated = tmp_path / "access.log", tmp_path / "access.log.1"
    path = tmp_path / "balancer.toml"
    logged_config(path, log, 0)
    async with balancer(path) as daemon:
        port = address(daemon, "web")[1]
        await one_request(port)
        log.rename(rotated)
        path.write_text(path.read_text() + "\n[listeners\n")  # a TOML syntax error
        refused = await daemon.reload()
        assert refused is not None
        assert "TOML" in refused
        await one_request(port)
        daemon.app.access_logs.flush()  # type: ignore[attr-defined]
        assert lines(rotated) == 1
        assert lines(log) == 1


async def test_an_access_log_that_cannot_be_reopened_keeps_its_file(tmp_path):
    """Its directory gone: logged, the writer keeps the file it has, and a reload that keeps
    the destination is refused naming it (as at start: the README's rule)."""
    directory = tmp_path / "logs"
    directory.mkdir()
    log = directory / "access.log"
    path = tmp_path / "balancer.toml"
    logged_config(path, log, 0)
    async with balancer(path) as daemon:
        port = address(daemon, "web")[1]
        logged_config(path, log, port)
        moved = directory.rename(tmp_path / "logs.old")
        refused = await daemon.reload()
        assert refused is not None
        assert f"{log}: cannot open the access log of listener 'web'" in refused
        output = daemon.log_output.getvalue()  # type: ignore[attr-defined]
        assert "event=access_log.reopen_failed" in output
        assert 'error="No such file or directory"' in output
        await one_request(port)
        daemon.app.access_logs.flush()  # type: ignore[attr-defined]
        assert lines(moved / "access.log") == 1


def fixed_listener(path: Path, connections: int, port: int = 0) -> None:
    path.write_text(f"""
[admin]
port = 0
[logging]
level = "warning"

[[listeners]]
name = "web"
protocol = "http"
host = "127.0.0.1"
port = {port}
limits = {{ connections = {connections} }}
default_action = {{ type = "fixed_response", status_code = 200, message_body = "ok" }}
""")


async def test_a_reload_raising_the_connection_limit_lets_every_client_in(tmp_path):
    """The listener stays (same address), so its accept bound must follow the file: it was
    fixed at start, and clients past the old bound waited in the backlog, unanswered."""
    path = tmp_path / "balancer.toml"
    fixed_listener(path, connections=1)  # accepts 1 + 64 (the rest get 503s)
    async with balancer(path) as daemon:
        port = address(daemon, "web")[1]
        fixed_listener(path, connections=200, port=port)
        assert await daemon.frame.reload() is None
        clients = 100  # past the old bound of 65, within the new one
        answered: list[int] = []
        streams: list[trio.SocketStream] = []
        try:
            # All open at once, as idle keep-alive clients are.
            streams.extend([await trio.open_tcp_stream("127.0.0.1", port) for _ in range(clients)])

            async def ask(stream: trio.SocketStream) -> None:
                await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = await stream.receive_some(4096)
                    assert chunk, "closed without an answer"
                    data += chunk
                answered.append(int(data.split(b" ", 2)[1]))

            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:
                    for stream in streams:
                        nursery.start_soon(ask, stream)
        finally:
            for stream in streams:
                await stream.aclose()
        assert answered == [200] * clients


def open_descriptors_of(path: Path) -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{fd}") == str(path)
    return count


async def test_a_refused_reload_keeps_no_access_log_it_opened(tmp_path):
    """The new file's access log is opened before the listeners are bound; a reload refused
    after that (a port in use) held the file open, one more for every such reload."""
    log, other = tmp_path / "access.log", tmp_path / "other.log"
    path = tmp_path / "balancer.toml"
    logged_config(path, log, 0)
    async with balancer(path) as daemon:
        port = address(daemon, "web")[1]
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            busy = taken.getsockname()[1]
            logged_config(path, other, port)
            path.write_text(
                path.read_text()
                + f"""
[[listeners]]
name = "second"
protocol = "http"
host = "127.0.0.1"
port = {busy}
default_action = {{ type = "fixed_response", status_code = 200 }}
"""
            )
            for _ in range(3):
                assert await daemon.reload() is not None
        assert open_descriptors_of(other) == 0
        assert open_descriptors_of(log) == 1  # the running generation's, still logging
        await one_request(port)
        daemon.app.access_logs.flush()  # type: ignore[attr-defined]
        assert lines(log) == 1
