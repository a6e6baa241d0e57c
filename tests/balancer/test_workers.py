"""``workers = N``: the supervisor, its children sharing listeners, signals and restarts."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme

from balancer.config import BalancerConfig
from balancer.peers import COUNT_ENV, INDEX_ENV, SUPERVISOR_ENV, supervisor_pid
from balancer.targets_api import StateFile
from balancer.workers import (
    BACKOFF_MAX_SECONDS,
    BACKOFF_MIN_SECONDS,
    STABLE_SECONDS,
    Supervisor,
    _Worker,
    child_environment,
    next_backoff,
    supervise_from_argv,
)
from monitoring.configfile import load
from monitoring.logging import EventLog
from monitoring.sdnotify import Notifier
from tests.support.check_targets import StubTarget
from tests.support.http import request
from tests.support.processes import DaemonProcess, daemon_process
from tests.support.tls import write_pair

# -- pieces ---------------------------------------------------------------------------------


def test_child_environment_carries_the_identity_and_our_notify_socket():
    parent = {"PATH": "/bin", "NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "30000000"}
    env = child_environment(parent, 1, 3, "/tmp/x/worker-1.sock")
    assert env == {
        "PATH": "/bin",
        "NOTIFY_SOCKET": "/tmp/x/worker-1.sock",
        INDEX_ENV: "1",
        COUNT_ENV: "3",
        SUPERVISOR_ENV: str(os.getpid()),
    }
    # A worker whose supervisor died while it started must not watch its new parent (init).
    assert supervisor_pid(env) == os.getpid()
    assert supervisor_pid({}) == os.getppid()


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


def test_supervise_only_serves_with_several_workers(tmp_path, monkeypatch):
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
    # Reported as any start failure is (test_a_file_workers_cannot_share_is_a_start_...).
    assert supervise_from_argv(["serve", "--config", str(shared_zero)]) is None
    monkeypatch.setenv(INDEX_ENV, "0")
    assert supervise_from_argv(["serve", "--config", str(shared_zero)]) is None


@pytest.mark.parametrize(
    ("argv", "code", "said"),
    [
        (["serve", "--config", "{config}", "--help"], 0, "usage: wharf-balancer serve"),
        (["serve", "--config", "{config}", "-h"], 0, "usage: wharf-balancer serve"),
        (["--version", "serve", "--config", "{config}"], 0, "wharf-balancer "),
        (["serve", "--config", "{config}", "--version"], 2, "unrecognized arguments: --version"),
        (["serve", "--config", "{config}", "--bogus"], 2, "unrecognized arguments: --bogus"),
        (["serve", "--config", "{config}", "extra"], 2, "unrecognized arguments: extra"),
    ],
)
def test_serve_with_more_arguments_prints_or_refuses_instead_of_supervising(
    tmp_path, argv, code, said
):
    config = tmp_path / "balancer.toml"
    config.write_text(listener_config(workers=2, port=free_port(), admin=free_port(True)))
    command = [sys.executable, "-m", "balancer.cli", *(a.format(config=config) for a in argv)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = process.communicate(timeout=30)  # a supervisor would serve until stopped
    finally:
        if process.returncode is None:
            process.kill()
            process.communicate()
    assert (process.returncode, said in out + err) == (code, True), (out, err)
    assert "role=supervisor" not in err


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
        # The status says what it said at start (found by a report-only hunt: "serving").
        assert await daemon.next_notification() == b"READY=1\nSTATUS=serving with 2 workers"
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
async def test_a_post_reload_that_rotates_the_admin_token_reaches_every_worker(tmp_path):
    """Worker 0 took the new token before it forwarded the reload, with it, to worker 1, which
    still held the old one and refused: worker 1 stayed on the old file (found by a
    report-only hunt). The change goes on with the Authorization it came with."""
    port, admin_port = free_port(), free_port(start_pair=True)
    token_file = tmp_path / "admin.token"
    token_file.write_text("old-token-0123456789")
    token_file.chmod(0o600)
    config = tmp_path / "balancer.toml"
    settings = {"workers": 2, "port": port, "admin": admin_port, "state_dir": str(tmp_path)}
    with_token = f'[admin]\ntoken_file = "{token_file}"\nport = '
    config.write_text(listener_config(**settings).replace("[admin]\nport = ", with_token))
    admins = [("127.0.0.1", admin_port), ("127.0.0.1", admin_port + 1)]
    async with daemon_process("balancer", config, tmp_path) as daemon:
        assert (await daemon.next_notification()).startswith(b"READY=1")
        token_file.write_text("new-token-0123456789")
        old = [("authorization", "Bearer old-token-0123456789")]
        status, _, reply = await request(admins[0], "POST", "/reload", headers=old)
        assert status == 200, reply
        assert json.loads(reply)["workers"] == {"1": "ok"}
        new = [("authorization", "Bearer new-token-0123456789")]
        for admin in admins:  # both hold the new token now
            assert (await request(admin, "POST", "/reload", headers=old))[0] == 403
        status, _, reply = await request(admins[0], "POST", "/reload", headers=new)
        assert json.loads(reply)["workers"] == {"1": "ok"}
        daemon.signal(signal.SIGTERM)


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
            # Passed on to systemd: the POST that applied (worker 0's reload, then worker
            # 1's), then this one (worker 0 refused it: never forwarded).
            for _ in range(2 + 2 + 1):
                assert (await daemon.next_notification()).startswith((b"RELOADING=1", b"READY=1"))
            refused = await daemon.next_notification()
            assert refused.startswith(b"READY=1\nSTATUS=reload refused"), refused
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
async def test_systemd_hears_of_a_post_reload_as_of_a_sighup(tmp_path):
    """STATUS kept "reload refused" after a POST /reload applied, and never showed a refused
    one: POST /reload goes to worker 0, and the supervisor, which alone talks to systemd,
    never heard of it (found by a report-only hunt)."""
    port, admin_port = free_port(), free_port(start_pair=True)
    config = tmp_path / "balancer.toml"
    settings = {"workers": 2, "port": port, "admin": admin_port, "state_dir": str(tmp_path)}
    good = listener_config(**settings)
    serving = b"READY=1\nSTATUS=serving with 2 workers"
    config.write_text(good)
    async with daemon_process("balancer", config, tmp_path) as daemon:
        assert await daemon.next_notification() == serving
        config.write_text("bogus = 1\n" + good)
        daemon.signal(signal.SIGHUP)
        assert (await daemon.next_notification()).startswith(b"RELOADING=1")
        refused = await daemon.next_notification()
        assert refused.startswith(b"READY=1\nSTATUS=reload refused: "), refused
        config.write_text(good)
        status, _, reply = await request(("127.0.0.1", admin_port), "POST", "/reload")
        assert status == 200, reply
        # Worker 0 reloads, then forwards the reload to worker 1: each is passed on.
        for _ in range(2):
            assert (await daemon.next_notification()).startswith(b"RELOADING=1")
            assert await daemon.next_notification() == serving
        config.write_text("bogus = 1\n" + good)
        status, _, reply = await request(("127.0.0.1", admin_port), "POST", "/reload")
        assert status == 400, reply
        assert (await daemon.next_notification()).startswith(b"RELOADING=1")
        refused = await daemon.next_notification()
        assert refused.startswith(b"READY=1\nSTATUS=reload refused: "), refused
        assert b"unknown field `bogus`" in refused
        daemon.signal(signal.SIGTERM)
        assert await daemon.next_notification() == b"STOPPING=1"


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


# -- a start that fails -----------------------------------------------------------------------


def https_config(*, workers: int, port: int, admin: int, cert_file: str, key_file: str) -> str:
    return f"""
workers = {workers}
[admin]
port = {admin}

[[listeners]]
name = "tls"
protocol = "https"
host = "127.0.0.1"
port = {port}
certificates = [{{ cert_file = "{cert_file}", key_file = "{key_file}" }}]
default_action = {{ type = "fixed_response", status_code = 200 }}
"""


async def notifications(daemon: DaemonProcess) -> list[bytes]:
    """Every notification the daemon has sent so far, without waiting for more."""
    received: list[bytes] = []
    while True:
        with trio.move_on_after(0.2):
            received.append(await daemon.notify.recv(4096))
            continue
        return received


async def refused_start(config: Path, tmp_path: Path) -> tuple[DaemonProcess, list[bytes]]:
    """Serve ``config`` with workers; the supervisor must exit by itself, soon."""
    with trio.fail_after(60):  # every worker gone too: the shared stderr pipe reached its end
        async with daemon_process("balancer", config, tmp_path) as daemon:
            with trio.fail_after(20):  # the old supervisor restarted the workers forever
                await daemon.process.wait()
            sent = await notifications(daemon)
    return daemon, sent


def assert_cannot_start(daemon: DaemonProcess, sent: list[bytes], reason: str) -> None:
    assert daemon.process.returncode == 1
    # One line says why, the worker's own reason, as with workers = 1.
    assert daemon.log_lines[-1] == f"wharf-balancer: cannot start: {reason}"
    # The supervisor's line alone: the workers send their reason, they do not print it too.
    said = [line for line in daemon.log_lines if "wharf-balancer: cannot start:" in line]
    assert said == [f"wharf-balancer: cannot start: {reason}"], daemon.log_lines
    failed = [line for line in daemon.log_lines if "event=daemon.start_failed" in line]
    assert any("role=supervisor" in line for line in failed), daemon.log_lines
    # Not restarted: each worker started once; systemd never heard READY=1, but the reason.
    assert len(worker_pids(daemon)) == 2
    assert sum("event=worker.started" in line for line in daemon.log_lines) == 2
    assert not any(message.startswith(b"READY=1") for message in sent), sent
    assert f"STATUS=cannot start: {reason}".encode() in sent


@pytest.mark.parametrize(
    ("port", "admin", "reason"),
    [
        (0, 28700, "workers = 2 needs a fixed port - at `$.listeners[0].port`"),
        (28701, 0, "workers = 2 needs a fixed admin port - at `$.admin.port`"),
        (28701, 65535, "admin.port + workers - 1 must stay within 65535"),
    ],
)
async def test_a_file_workers_cannot_share_is_a_start_failure_like_any_other(
    tmp_path, port, admin, reason
):
    """The supervisor printed the bare error: no "cannot start:" line, no
    event=daemon.start_failed, no STATUS (found by a report-only hunt)."""
    config = tmp_path / "balancer.toml"
    config.write_text(listener_config(workers=2, port=port, admin=admin))
    daemon, sent = await refused_start(config, tmp_path)
    assert daemon.process.returncode == 1
    said = [line for line in daemon.log_lines if "cannot start:" in line]
    assert said == [f"wharf-balancer: cannot start: {config}: {reason}"], daemon.log_lines
    assert any("event=daemon.start_failed" in line for line in daemon.log_lines)
    assert f"STATUS=cannot start: {config}: {reason}".encode() in sent
    assert not any("event=worker.started" in line for line in daemon.log_lines)


@pytest.mark.slow
async def test_a_missing_certificate_stops_the_supervisor_with_the_workers_reason(tmp_path):
    port, admin_port = free_port(), free_port(start_pair=True)
    missing = tmp_path / "missing.pem"
    config = tmp_path / "balancer.toml"
    config.write_text(
        https_config(
            workers=2, port=port, admin=admin_port, cert_file=str(missing), key_file=str(missing)
        )
    )
    daemon, sent = await refused_start(config, tmp_path)
    reason = f"{missing}: cannot read: No such file or directory"
    assert_cannot_start(daemon, sent, f"{reason} - at `$.listeners[0].certificates[0]`")
    for pid in worker_pids(daemon).values():
        await wait_gone(pid)


@pytest.mark.slow
async def test_a_worker_whose_admin_port_is_taken_stops_every_worker(tmp_path, certificates):
    port, admin_port = free_port(), free_port(start_pair=True)
    config = tmp_path / "balancer.toml"
    cert, key = certificates
    config.write_text(
        https_config(workers=2, port=port, admin=admin_port, cert_file=cert, key_file=key)
    )
    with socket.socket() as squatter:  # worker 1's admin port (admin.port + 1)
        squatter.bind(("127.0.0.1", admin_port + 1))
        squatter.listen()
        daemon, sent = await refused_start(config, tmp_path)
    reason = f"cannot bind 127.0.0.1:{admin_port + 1}: Address already in use"
    assert_cannot_start(daemon, sent, reason)
    for pid in worker_pids(daemon).values():
        await wait_gone(pid)
    # Worker 0, which could start, was stopped: nothing holds the ports.
    for free in (port, admin_port):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", free))


@pytest.fixture
def certificates(tmp_path) -> tuple[str, str]:
    pair = write_pair(trustme.CA(), tmp_path, "server", "a.example.com")
    return pair.cert_file, pair.key_file


# -- the supervisor with stand-in workers (real processes that follow a plan) ---------------

FAKE_WORKER = """
import json, os, pathlib, signal, socket, sys, time

index = os.environ["WHARF_BALANCER_WORKER_INDEX"]
directory = pathlib.Path(sys.argv[1])
plan = json.loads((directory / "plan.json").read_text())[index]
starts = directory / f"starts-{index}"
with starts.open("a") as file:
    file.write("x")
step = plan[min(len(starts.read_text()), len(plan)) - 1]


def notify(text):
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(text.encode(), os.environ["NOTIFY_SOCKET"])


if "after" in step:  # until worker `other` has started `times` times
    other, times = step["after"]
    for _ in range(400):
        mark = directory / f"starts-{other}"
        if mark.exists() and len(mark.read_text()) >= times:
            break
        time.sleep(0.05)
if step["do"] == "ready-exit":  # ready, then crash at once
    notify("READY=1\\nSTATUS=serving")
    sys.exit(1)
if "until" in step:  # starting (no signal handling yet) until this file exists
    for _ in range(400):
        if (directory / step["until"]).exists():
            break
        time.sleep(0.05)
if step["do"] == "ready-wait":  # ready, until SIGTERM; a SIGHUP reloads (READY=1 again)
    signal.signal(signal.SIGHUP, lambda *_: notify("READY=1\\nSTATUS=serving"))
    notify("READY=1\\nSTATUS=serving")
    time.sleep(60)
if step["do"] == "fail":  # what monitoring.cli sends when the daemon cannot start
    notify("STATUS=cannot start: " + step["reason"])
    sys.exit(1)
sys.exit(step.get("code", 0))
"""


class RecordingNotifier(Notifier):
    def __init__(self) -> None:
        super().__init__(None)
        self.sent: list[str] = []
        self.readied = trio.Event()

    def notify(self, *assignments: str) -> bool:
        self.sent.append("\n".join(assignments))
        if assignments[0] == "READY=1":
            self.readied.set()
        return True


class FakeWorkers:
    """A supervisor of stand-in workers following ``plan``, its notifications and its log."""

    def __init__(self, tmp_path: Path, plan: dict[str, list[dict[str, Any]]]) -> None:
        self.directory = tmp_path
        (tmp_path / "plan.json").write_text(json.dumps(plan))
        script = tmp_path / "worker.py"
        script.write_text(FAKE_WORKER)
        config = tmp_path / "balancer.toml"
        config.write_text(listener_config(workers=2, port=19599, admin=19597, grace=2))
        self.notifier = RecordingNotifier()
        self.stream = io.StringIO()
        self.supervisor = Supervisor(
            load(config, BalancerConfig),
            config,
            notifier=self.notifier,
            log=EventLog("balancer", stream=self.stream),
            command=(sys.executable, str(script), str(tmp_path)),
        )
        self.code: int | None = None
        self.done = trio.Event()

    def starts(self, index: int) -> int:
        return len((self.directory / f"starts-{index}").read_text())

    @property
    def log(self) -> str:
        return self.stream.getvalue()

    async def run(self) -> None:
        self.code = await self.supervisor.run()
        self.done.set()

    async def run_until_ready(self, nursery: trio.Nursery) -> None:
        nursery.start_soon(self.run)
        with trio.fail_after(20):
            await self.notifier.readied.wait()

    async def stop(self) -> None:
        self.supervisor.request_stop()
        with trio.fail_after(20):
            await self.done.wait()
        assert self.code == 0
        assert self.supervisor.failure is None


@pytest.mark.parametrize(
    ("step", "reason"),
    [
        ({"do": "fail", "reason": "x.pem: cannot read"}, "x.pem: cannot read"),
        ({"do": "exit", "code": 3}, "worker 0 exited with code 3 before it was ready"),
    ],
    ids=["with-its-reason", "silently"],
)
async def test_a_worker_exiting_before_it_was_ready_is_a_start_failure(tmp_path, step, reason):
    fake = FakeWorkers(tmp_path, {"0": [step], "1": [{"do": "ready-wait"}]})
    with trio.fail_after(20):
        assert await fake.supervisor.run() == 1
    assert fake.supervisor.failure == reason
    assert fake.starts(0) == 1  # never restarted
    assert f"STATUS=cannot start: {reason}" in fake.notifier.sent
    assert not fake.notifier.readied.is_set()
    assert "event=daemon.start_failed" in fake.log
    assert "event=worker.stopped daemon=balancer index=1" in fake.log  # stopped, not left


async def test_a_worker_that_was_ready_is_restarted_even_before_the_others_are(tmp_path, nursery):
    # Worker 0 says READY=1 and exits at once (its notification and its exit arrive together);
    # worker 1 is ready only after worker 0's second start: a crash, restarted, not a failure.
    fake = FakeWorkers(
        tmp_path,
        {
            "0": [{"do": "ready-exit"}, {"do": "ready-wait"}],
            "1": [{"do": "ready-wait", "after": [0, 2]}],
        },
    )
    await fake.run_until_ready(nursery)
    assert fake.starts(0) == 2
    assert "event=worker.exited daemon=balancer index=0" in fake.log
    assert "daemon.start_failed" not in fake.log
    await fake.stop()


async def test_once_ready_a_replacement_that_cannot_start_is_retried(tmp_path, nursery):
    fake = FakeWorkers(
        tmp_path,
        {
            "0": [{"do": "ready-wait"}, {"do": "fail", "reason": "gone"}, {"do": "ready-wait"}],
            "1": [{"do": "ready-wait"}],
        },
    )
    await fake.run_until_ready(nursery)
    worker = fake.supervisor.workers[0]
    assert worker.process is not None
    worker.process.kill()  # a crash after the start; its replacement cannot start, the next can
    with trio.fail_after(20):
        await worker.wait_ready(1, while_running=False)
    assert fake.starts(0) == 3
    assert fake.log.count("event=worker.exited daemon=balancer index=0") == 2
    assert "restart_in_seconds=0.2" in fake.log  # the backoff doubled, as for any crash
    assert "daemon.start_failed" not in fake.log
    await fake.stop()


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_sighup_while_draining_is_ignored_and_the_stop_exits_0(tmp_path, workers):
    """A SIGHUP left unread when the signal receiver closed was delivered again, and its
    default action killed the process at the end of a clean drain."""
    port, admin_port = free_port(), free_port(start_pair=True)
    config = tmp_path / "balancer.toml"
    config.write_text(listener_config(workers=workers, port=port, admin=admin_port))
    async with daemon_process("balancer", config, tmp_path) as daemon:
        assert (await daemon.next_notification()).startswith(b"READY=1")
        busy = await trio.open_tcp_stream("127.0.0.1", port)
        async with busy:
            await busy.send_all(b"GET / HTTP/1.1\r\n")  # a request under way: the drain waits
            await trio.sleep(0.2)
            daemon.signal(signal.SIGTERM)
            assert await daemon.next_notification() == b"STOPPING=1"
            daemon.signal(signal.SIGHUP)
            await daemon.wait_log("event=daemon.signal_ignored")
        # The client leaves; the drain ends.
    assert daemon.process.returncode == 0


async def wait_for(condition: Any, within: float = 20) -> None:
    with trio.fail_after(within):
        while not condition():  # noqa: ASYNC110 (files and counters of other processes)
            await trio.sleep(0.01)


async def test_a_sighup_while_a_worker_starts_waits_until_it_is_ready(tmp_path, nursery):
    """SIGHUP's default action killed a worker still starting: the start failed with
    ``worker 1 exited with code -1 before it was ready``. It gets the SIGHUP once ready."""
    fake = FakeWorkers(
        tmp_path, {"0": [{"do": "ready-wait"}], "1": [{"do": "ready-wait", "until": "go"}]}
    )
    nursery.start_soon(fake.run)
    first, second = fake.supervisor.workers
    await wait_for(lambda: first.ready == 1 and (tmp_path / "starts-1").exists())
    reloaded = trio.Event()

    async def reload() -> None:
        await fake.supervisor.reload()
        reloaded.set()

    nursery.start_soon(reload)
    await wait_for(lambda: first.ready == 2)  # worker 0 took its SIGHUP
    (tmp_path / "go").touch()
    with trio.fail_after(20):
        await reloaded.wait()
    assert second.ready == 2  # ready, then reloaded: it may have read the file before
    assert fake.starts(1) == 1
    assert fake.supervisor.failure is None
    assert "daemon.start_failed" not in fake.log
    # systemd heard READY=1 once, from the start; a reload during the start says nothing.
    assert fake.notifier.sent == ["READY=1\nSTATUS=serving with 2 workers"]
    await fake.stop()


async def test_a_sighup_right_after_a_crash_spares_the_replacement(tmp_path, nursery):
    fake = FakeWorkers(
        tmp_path,
        {
            "0": [{"do": "ready-wait"}],
            "1": [{"do": "ready-wait"}, {"do": "ready-wait", "until": "go"}],
        },
    )
    await fake.run_until_ready(nursery)
    first, second = fake.supervisor.workers
    crashed = second.process
    assert crashed is not None
    crashed.kill()
    await wait_for(lambda: fake.starts(1) == 2)  # the replacement runs, not yet ready
    reloaded = trio.Event()

    async def reload() -> None:
        await fake.supervisor.reload()
        reloaded.set()

    nursery.start_soon(reload)
    await wait_for(lambda: first.ready == 2)
    (tmp_path / "go").touch()
    with trio.fail_after(20):
        await reloaded.wait()
    assert fake.starts(1) == 2  # the replacement was not killed by the SIGHUP
    assert second.ready == 3  # the first process, the replacement, its reload
    assert fake.log.count("event=worker.exited") == 1
    assert fake.notifier.sent[-2].startswith("RELOADING=1")
    assert fake.notifier.sent[-1] == "READY=1\nSTATUS=serving with 2 workers"
    await fake.stop()


@pytest.mark.slow
async def test_each_workers_log_lines_say_which_worker_wrote_them(tmp_path):
    port, admin_port = free_port(), free_port(start_pair=True)
    config = tmp_path / "balancer.toml"
    config.write_text(listener_config(workers=2, port=port, admin=admin_port))
    async with daemon_process("balancer", config, tmp_path) as daemon:
        assert (await daemon.next_notification()).startswith(b"READY=1")
        await daemon.wait_log("event=supervisor.ready")  # written after every worker's lines
        bound = [line for line in daemon.log_lines if "event=listener.bound" in line]
        web = [line for line in bound if "name=web" in line]
        assert sorted(re.findall(r" worker=(\d+) ", " ".join(web))) == ["0", "1"], bound
        assert all(re.search(r" worker=\d ", line) for line in bound), bound
        for index in (0, 1):  # the frame's own lines too (logged just after READY=1)
            await daemon.wait_log(f"event=daemon.ready daemon=balancer worker={index} ")
        supervisor = [line for line in daemon.log_lines if "event=supervisor." in line]
        assert supervisor
        assert all("role=supervisor" in line and "worker=" not in line for line in supervisor)
        daemon.signal(signal.SIGTERM)
    assert daemon.process.returncode == 0


async def test_a_reload_that_changes_workers_says_a_restart_is_needed(tmp_path, nursery):
    fake = FakeWorkers(tmp_path, {"0": [{"do": "ready-wait"}], "1": [{"do": "ready-wait"}]})
    await fake.run_until_ready(nursery)
    config = tmp_path / "balancer.toml"
    warning = "event=config.restart_required daemon=balancer section=workers"
    warned: list[bool] = []
    for workers in (3, 3, 2):  # against the 2 processes running, not the last file read
        config.write_text(listener_config(workers=workers, port=19599, admin=19590, grace=2))
        before = len(fake.log)
        await fake.supervisor.reload()
        warned.append(warning in fake.log[before:])
    assert warned == [True, True, False]
    await fake.stop()


async def test_the_supervisor_logs_at_the_level_a_reload_applied(tmp_path, nursery):
    fake = FakeWorkers(tmp_path, {"0": [{"do": "ready-wait"}], "1": [{"do": "ready-wait"}]})
    await fake.run_until_ready(nursery)
    config = tmp_path / "balancer.toml"
    base = listener_config(workers=2, port=19599, admin=19590, grace=2)
    logged: list[bool] = []
    for level in ("warning", "warning", "info", "info"):
        config.write_text(f'{base}\n[logging]\nlevel = "{level}"\n')
        before = len(fake.log)
        await fake.supervisor.reload()
        logged.append("event=supervisor.reload" in fake.log[before:])
    # A reload logs its start at the level before it; the level applies once it is taken.
    assert logged == [True, False, False, True]
    await fake.stop()


@pytest.mark.slow
async def test_a_second_sigint_cuts_the_workers_drains_short_and_exits_130(tmp_path):
    """The supervisor ignored a second Ctrl-C: the workers drained their whole grace period
    and the supervisor exited 0, where a single process cuts its drain and exits 130."""
    port, admin_port = free_port(), free_port(start_pair=True)
    config = tmp_path / "balancer.toml"
    config.write_text(listener_config(workers=2, port=port, admin=admin_port, grace=300))
    with trio.fail_after(60):  # far below the grace period: only a cut drain ends in time
        async with daemon_process("balancer", config, tmp_path) as daemon:
            assert (await daemon.next_notification()).startswith(b"READY=1")
            busy = await trio.open_tcp_stream("127.0.0.1", port)
            async with busy:
                await busy.send_all(b"GET / HTTP/1.1\r\n")  # a request under way: drains wait
                await trio.sleep(0.2)
                daemon.signal(signal.SIGINT)
                assert await daemon.next_notification() == b"STOPPING=1"
                await daemon.wait_log("event=daemon.stopping")  # a worker drains
                daemon.signal(signal.SIGINT)
                await daemon.process.wait()
    assert daemon.process.returncode == 130
    assert any(
        "event=daemon.drain_cut_short" in line and "role=supervisor" in line
        for line in daemon.log_lines
    ), daemon.log_lines
    assert any(
        "event=daemon.drain_cut_short" in line and "worker=" in line for line in daemon.log_lines
    ), daemon.log_lines


class WatchdogNotifier(RecordingNotifier):
    """The supervisor's service manager, with ``WatchdogSec`` set."""

    def __init__(self, watchdog_usec: int) -> None:
        super().__init__()
        self._watchdog_usec = watchdog_usec


def test_the_supervisor_waits_for_a_grace_period_a_reload_raised(tmp_path):
    """Workers drain with the grace period of the file they reloaded; the supervisor killed
    them on the start's deadline, resetting requests the new one let finish (found by a
    report-only hunt). A file the workers refused, or a shorter grace, changes nothing."""
    config = tmp_path / "balancer.toml"
    config.write_text(listener_config(workers=2, port=19599, admin=19597, grace=2))
    supervisor = Supervisor(
        load(config, BalancerConfig),
        config,
        notifier=Notifier(None),
        log=EventLog("balancer", stream=io.StringIO()),
    )
    assert supervisor.grace_period() == 2
    config.write_text(listener_config(workers=2, port=19599, admin=19597, grace=30))
    assert supervisor.grace_period() == 30
    config.write_text(listener_config(workers=2, port=19599, admin=19597, grace=1))
    assert supervisor.grace_period() == 2
    config.write_text("workers = [")
    assert supervisor.grace_period() == 2


@pytest.mark.slow
async def test_a_worker_whose_loop_hangs_is_killed_and_replaced(tmp_path, nursery):
    """The supervisor pinged systemd's watchdog whatever its workers did: a worker stuck
    (here: stopped by SIGSTOP) was never noticed and its share of the clients waited."""
    port, admin_port = free_port(), free_port(start_pair=True)
    config = tmp_path / "balancer.toml"
    config.write_text(listener_config(workers=2, port=port, admin=admin_port))
    notifier = WatchdogNotifier(watchdog_usec=2_000_000)
    stream = io.StringIO()
    supervisor = Supervisor(
        load(config, BalancerConfig),
        config,
        notifier=notifier,
        log=EventLog("balancer", stream=stream),
    )
    done = trio.Event()
    codes: list[int] = []

    async def run() -> None:
        codes.append(await supervisor.run())
        done.set()

    nursery.start_soon(run)
    with trio.fail_after(30):
        await notifier.readied.wait()
    hung, other = supervisor.workers
    assert hung.process is not None
    assert other.process is not None
    hung_pid, other_pid = hung.process.pid, other.process.pid
    await trio.sleep(2.5)  # beyond a watchdog timeout: a worker that pings is left alone
    assert "event=worker.hung" not in stream.getvalue()
    os.kill(hung_pid, signal.SIGSTOP)
    await wait_for(lambda: hung.process is not None and hung.process.pid != hung_pid, 30)
    await wait_for(lambda: hung.serving, 30)
    logged = stream.getvalue()
    assert f"event=worker.hung daemon=balancer index=0 pid={hung_pid}" in logged, logged
    assert other.process is not None
    assert other.process.pid == other_pid  # spared
    supervisor.request_stop()
    with trio.fail_after(30):
        await done.wait()
    assert codes == [0]
