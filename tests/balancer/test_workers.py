"""``workers = N``: the supervisor, its children sharing listeners, signals and restarts."""

from __future__ import annotations

import json
import os
import re
import signal
import socket

import pytest
import trio

from balancer.peers import COUNT_ENV, INDEX_ENV
from balancer.targets_api import StateFile
from balancer.workers import (
    BACKOFF_MAX_SECONDS,
    BACKOFF_MIN_SECONDS,
    STABLE_SECONDS,
    _Worker,
    child_environment,
    next_backoff,
    supervise_from_argv,
)
from tests.support.check_targets import StubTarget
from tests.support.http import request
from tests.support.processes import DaemonProcess, daemon_process

# -- pieces ---------------------------------------------------------------------------------


def test_child_environment_carries_the_identity_and_our_notify_socket():
    parent = {"PATH": "/bin", "NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "30000000"}
    env = child_environment(parent, 1, 3, "/tmp/x/worker-1.sock")
    assert env == {
        "PATH": "/bin",
        "NOTIFY_SOCKET": "/tmp/x/worker-1.sock",
        INDEX_ENV: "1",
        COUNT_ENV: "3",
    }


def test_backoff_doubles_up_to_a_bound_and_resets_after_a_stable_run():
    delays = [BACKOFF_MIN_SECONDS]
    for _ in range(10):
        delays.append(next_backoff(delays[-1], ran_for=1.0))
    assert delays[:4] == [0.1, 0.2, 0.4, 0.8]
    assert delays[-1] == BACKOFF_MAX_SECONDS
    assert next_backoff(BACKOFF_MAX_SECONDS, ran_for=STABLE_SECONDS) == BACKOFF_MIN_SECONDS
    assert next_backoff(0.0, ran_for=0.5) == BACKOFF_MIN_SECONDS


async def test_a_worker_slot_counts_ready_notifications():
    worker = _Worker(0, "/nonexistent")
    worker.received(b"READY=1\nSTATUS=serving")
    worker.received(b"RELOADING=1\nMONOTONIC_USEC=5")
    worker.received(b"READY=1\nSTATUS=reload refused: bad")
    assert worker.ready == 2
    assert worker.status == "reload refused: bad"
    with trio.fail_after(1):
        await worker.wait_ready(1, while_running=False)


def test_supervise_only_serves_with_several_workers(tmp_path, monkeypatch, capsys):
    one = tmp_path / "one.toml"
    one.write_text("workers = 1\n")
    assert supervise_from_argv(["serve", "--config", str(one)]) is None
    assert supervise_from_argv(["check-config", str(one)]) is None
    assert supervise_from_argv(["serve"]) is None
    broken = tmp_path / "broken.toml"
    broken.write_text("workers = 0\n")
    assert supervise_from_argv(["serve", "--config", str(broken)]) is None  # reported later
    shared_zero = tmp_path / "zero.toml"
    shared_zero.write_text(listener_config(workers=2, port=0, admin=9500))
    assert supervise_from_argv(["serve", "--config", str(shared_zero)]) == 1
    assert "needs a fixed port - at `$.listeners[0].port`" in capsys.readouterr().err
    monkeypatch.setenv(INDEX_ENV, "0")
    assert supervise_from_argv(["serve", "--config", str(shared_zero)]) is None


# -- real processes -------------------------------------------------------------------------


def listener_config(
    *,
    workers: int,
    port: int,
    admin: int,
    target: int = 9,
    grace: float = 5.0,
    state_dir: str = "",
    extra_port: int = 0,
) -> str:
    extra = f"""
[[listeners]]
name = "extra"
protocol = "http"
host = "127.0.0.1"
port = {extra_port}
default_action = {{ type = "fixed_response", status_code = 200, message_body = "extra" }}
"""
    return f"""
workers = {workers}
{f'state_dir = "{state_dir}"' if state_dir else ""}
[admin]
port = {admin}
[lifecycle]
grace_period_seconds = {grace}

[[listeners]]
name = "web"
protocol = "http"
host = "127.0.0.1"
port = {port}
default_action = {{ type = "fixed_response", status_code = 200, message_body = "hi" }}

[[listeners.rules]]
priority = 1
conditions = {{ path_pattern = ["/app"] }}
action = {{ type = "forward", target_group = "app" }}

[[target_groups]]
name = "app"
deregistration_delay_seconds = 0
targets = [{{ host = "127.0.0.1", port = {target} }}]
{extra if extra_port else ""}"""


def free_port(start_pair: bool = False) -> int:
    """A free port on 127.0.0.1 (with ``start_pair``, the next one is free too)."""
    while True:
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            if not start_pair:
                return port
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port


WORKER_STARTED = re.compile(r"event=worker\.started .*index=(\d+) pid=(\d+)")


def worker_pids(daemon: DaemonProcess) -> dict[int, int]:
    """The latest pid of each worker index, from the supervisor's log."""
    pids: dict[int, int] = {}
    for line in daemon.log_lines:
        if match := WORKER_STARTED.search(line):
            pids[int(match[1])] = int(match[2])
    return pids


async def accepted(admin: tuple[str, int], listener: str = "web") -> float:
    status, _, body = await request(admin, target="/metrics")
    assert status == 200
    pattern = rb'wharf_connections_accepted_total\{listener="%s"\} ([0-9.]+)' % listener.encode()
    match = re.search(pattern, body)
    assert match is not None
    return float(match[1])


async def wait_gone(pid: int) -> None:
    """Until process ``pid`` (not our child) has exited: its pidfd turns readable."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        with trio.fail_after(20):
            await trio.lowlevel.wait_readable(fd)
    finally:
        os.close(fd)


@pytest.mark.slow
async def test_two_workers_share_the_listener_reload_restart_and_stop(nursery, tmp_path):
    target = StubTarget()
    await target.start(nursery)
    port, admin_port = free_port(), free_port(start_pair=True)
    config = tmp_path / "balancer.toml"
    state = tmp_path / "state"
    config.write_text(
        listener_config(
            workers=2, port=port, admin=admin_port, target=target.port, state_dir=str(state)
        )
    )
    admins = [("127.0.0.1", admin_port), ("127.0.0.1", admin_port + 1)]
    async with daemon_process("balancer", config, tmp_path) as daemon:
        # READY=1 comes from the supervisor only once both workers reported ready.
        assert await daemon.next_notification() == b"READY=1\nSTATUS=serving with 2 workers"
        for admin in admins:
            assert (await request(admin, target="/readyz"))[0] == 200
        pids = worker_pids(daemon)
        assert set(pids) == {0, 1}
        assert daemon.process.pid not in pids.values()

        # The kernel spreads new connections over both workers' sockets.
        for _ in range(40):
            status, _, body = await request(("127.0.0.1", port), target="/")
            assert (status, body) == (200, b"hi")
        counts = [await accepted(admin) for admin in admins]
        assert all(count > 0 for count in counts), counts

        # Worker 0 applies admin changes to worker 1 too; worker 1 points callers to 0.
        body = json.dumps({"target_group": "app", "targets": [{"host": "127.0.0.2"}]}).encode()
        status, _, reply = await request(admins[0], "POST", "/targets/register", body=body)
        assert status == 200, reply
        assert json.loads(reply)["workers"] == {"1": "ok"}
        _, _, listed = await request(admins[1], target="/targets")
        ids = [t["id"] for t in json.loads(listed)["target_groups"][0]["targets"]]
        assert "127.0.0.2:80" in ids
        status, _, reply = await request(admins[1], "POST", "/targets/register", body=body)
        assert status == 409
        assert json.loads(reply)["error"] == "NotPrimaryWorker"

        # SIGHUP: forwarded; READY=1 again once every worker has reloaded.
        daemon.signal(signal.SIGHUP)
        assert (await daemon.next_notification()).startswith(b"RELOADING=1")
        assert await daemon.next_notification() == b"READY=1\nSTATUS=serving"
        assert await daemon.wait_log("event=config.reloaded")

        # A killed worker is restarted; the other keeps serving meanwhile.
        os.kill(pids[1], signal.SIGKILL)
        line = await daemon.wait_log("event=worker.exited")
        assert "index=1" in line
        with trio.fail_after(20):
            while worker_pids(daemon)[1] == pids[1]:
                await daemon.wait_log("event=worker.started", start=len(daemon.log_lines))
        with trio.fail_after(20):
            while True:
                try:
                    if (await request(admins[1], target="/readyz"))[0] == 200:
                        break
                except OSError:
                    pass
                await trio.sleep(0.1)
        assert (await request(("127.0.0.1", port), target="/"))[0] == 200
        # Worker 0 wrote the registration to the state file; the new worker 1 loaded it.
        assert [t.host for t in StateFile(state).load().target_groups["app"].registered] == [
            "127.0.0.2"
        ]
        _, _, listed = await request(admins[1], target="/targets")
        ids = [t["id"] for t in json.loads(listed)["target_groups"][0]["targets"]]
        assert "127.0.0.2:80" in ids

        # SIGTERM: every worker drains and exits, then the supervisor exits 0.
        final = worker_pids(daemon)
        daemon.signal(signal.SIGTERM)
        assert await daemon.next_notification() == b"STOPPING=1"
    assert daemon.process.returncode == 0
    for pid in final.values():
        await wait_gone(pid)
    target.stop()


@pytest.mark.slow
async def test_a_reload_adds_a_listener_in_every_worker_or_is_refused(tmp_path):
    port, extra_port, admin_port = free_port(), free_port(), free_port(start_pair=True)
    config = tmp_path / "balancer.toml"
    settings = {"workers": 2, "port": port, "admin": admin_port, "state_dir": str(tmp_path)}
    config.write_text(listener_config(**settings))
    admins = [("127.0.0.1", admin_port), ("127.0.0.1", admin_port + 1)]
    async with daemon_process("balancer", config, tmp_path) as daemon:
        assert (await daemon.next_notification()).startswith(b"READY=1")
        config.write_text(listener_config(**settings, extra_port=extra_port))
        # POST /reload on worker 0 reloads it, then worker 1: each binds its own socket.
        status, _, reply = await request(admins[0], "POST", "/reload")
        assert status == 200, reply
        assert json.loads(reply)["workers"] == {"1": "ok"}
        for _ in range(40):
            assert (await request(("127.0.0.1", extra_port), target="/"))[2] == b"extra"
        counts = [await accepted(admin, "extra") for admin in admins]
        assert all(count > 0 for count in counts), counts

        # A listener whose port is taken: worker 0 refuses, and so does worker 1 (SIGHUP).
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", 0))
            squatter.listen()
            taken = squatter.getsockname()[1]
            config.write_text(listener_config(**settings, extra_port=taken))
            status, _, reply = await request(admins[0], "POST", "/reload")
            assert status == 400, reply
            message = json.loads(reply)["message"]
            assert f"listener 'extra' cannot bind 127.0.0.1:{taken}" in message
            daemon.signal(signal.SIGHUP)
            assert (await daemon.next_notification()).startswith(b"RELOADING=1")
            refused = await daemon.next_notification()
            assert refused.startswith(b"READY=1\nSTATUS=reload refused"), refused
        # The old listeners answer on, in both workers.
        for _ in range(10):
            assert (await request(("127.0.0.1", extra_port), target="/"))[2] == b"extra"
            assert (await request(("127.0.0.1", port), target="/"))[2] == b"hi"
        daemon.signal(signal.SIGTERM)


@pytest.mark.slow
async def test_workers_stop_when_the_supervisor_dies(tmp_path):
    port, admin_port = free_port(), free_port(start_pair=True)
    config = tmp_path / "balancer.toml"
    config.write_text(listener_config(workers=2, port=port, admin=admin_port))
    async with daemon_process("balancer", config, tmp_path) as daemon:
        assert (await daemon.next_notification()).startswith(b"READY=1")
        pids = worker_pids(daemon)
        daemon.process.kill()  # SIGKILL: no chance to forward anything
    for pid in pids.values():
        await wait_gone(pid)
    # The port is free again: nothing holds it as an orphan.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))
