from __future__ import annotations

import errno
import io
import resource
import signal

import msgspec
import pytest
import trio
from prometheus_client import generate_latest

from broker.cli import SPEC as BROKER
from broker.config import ApiSettings, BrokerConfig, StorageSettings
from monitoring.lifecycle import (
    DESCRIPTOR_HEADROOM,
    Daemon,
    DaemonFailed,
    Frame,
    Listener,
    StartupError,
    bind_tcp,
    startup_reason,
)
from monitoring.logging import EventLog
from monitoring.metrics import Metrics
from monitoring.settings import AdminSettings, HttpLimits, LifecycleSettings
from tests.support.daemons import address, running
from tests.support.http import request
from tests.support.processes import daemon_process


def make_frame() -> tuple[Frame, io.StringIO]:
    out = io.StringIO()
    return Frame(EventLog("test", stream=out), Metrics("test", version="0")), out


async def test_a_crashing_handler_is_logged_counted_and_not_fatal(nursery):
    frame, out = make_frame()
    calls = []

    async def handler(stream):
        calls.append(stream)
        if len(calls) == 1:
            raise RuntimeError("bug in handler")
        await stream.send_all(b"fine")

    listener = Listener("t", await bind_tcp("127.0.0.1", 0), handler)
    await nursery.start(frame.serve_listeners, [listener])
    for expected in (b"", b"fine"):
        stream = await trio.open_tcp_stream(*listener.addresses[0])
        async with stream:
            with trio.fail_after(5):
                assert await stream.receive_some(10) == expected
    assert "event=connection.handler_failed" in out.getvalue()
    assert "error=RuntimeError" in out.getvalue()
    metrics = generate_latest(frame.metrics.registry).decode()
    assert 'wharf_handler_errors_total{listener="t"} 1.0' in metrics
    frame.stop(0)


async def test_max_connections_holds_new_clients_in_the_backlog(nursery):
    frame, _ = make_frame()
    release = trio.Event()

    async def handler(stream):
        await stream.send_all(b"hi")
        await release.wait()

    listener = Listener("t", await bind_tcp("127.0.0.1", 0), handler, max_connections=1)
    await nursery.start(frame.serve_listeners, [listener])
    first = await trio.open_tcp_stream(*listener.addresses[0])
    second = await trio.open_tcp_stream(*listener.addresses[0])  # completes in the kernel
    async with first, second:
        assert await first.receive_some(10) == b"hi"
        with trio.move_on_after(0.3) as waited:
            await second.receive_some(10)
        assert waited.cancelled_caught, "second connection was served beyond max_connections"
        assert listener.active == 1
        release.set()
        with trio.fail_after(5):
            assert await second.receive_some(10) == b"hi"
    frame.stop(0)


async def test_running_out_of_descriptors_backs_off_and_serves_the_client_later(
    nursery, monkeypatch
):
    from monitoring import fastio, lifecycle

    frame, out = make_frame()
    accept = fastio.accept
    failures = [OSError(errno.EMFILE, "Too many open files")]

    async def accept_failing_once(listener, *, checkpoint):
        if failures:
            raise failures.pop()
        return await accept(listener, checkpoint=checkpoint)

    monkeypatch.setattr(fastio, "accept", accept_failing_once)
    monkeypatch.setattr(lifecycle, "ACCEPT_BACKOFF_SECONDS", 0.05)

    async def handler(stream):
        await stream.send_all(b"hi")

    listener = Listener("t", await bind_tcp("127.0.0.1", 0), handler, max_connections=1)
    await nursery.start(frame.serve_listeners, [listener])
    client = await trio.open_tcp_stream(*listener.addresses[0])
    async with client:
        with trio.fail_after(5):
            assert await client.receive_some(10) == b"hi"  # served after the pause
    assert "event=listener.accept_failed" in out.getvalue()
    assert listener.active == 0  # the failed attempt gave its slot back
    frame.stop(0)


async def test_max_connections_counts_the_connections_of_every_socket_of_the_listener(nursery):
    """A listener on two addresses (``localhost``: 127.0.0.1 and ::1) held twice its limit."""
    frame, _ = make_frame()
    release = trio.Event()

    async def handler(stream):
        await stream.send_all(b"hi")
        await release.wait()

    sockets = [*await bind_tcp("127.0.0.1", 0), *await bind_tcp("127.0.0.1", 0)]
    listener = Listener("t", sockets, handler, max_connections=1)
    await nursery.start(frame.serve_listeners, [listener])
    first = await trio.open_tcp_stream(*listener.addresses[0])
    second = await trio.open_tcp_stream(*listener.addresses[1])  # the other socket
    async with first, second:
        assert await first.receive_some(10) == b"hi"
        with trio.move_on_after(0.3) as waited:
            await second.receive_some(10)
        assert waited.cancelled_caught, "the second socket served beyond max_connections"
        assert listener.active == 1
        release.set()
        with trio.fail_after(5):
            assert await second.receive_some(10) == b"hi"
    frame.stop(0)


async def test_descriptors_exhausted_log_once_per_interval_and_count_every_failure(
    nursery, monkeypatch
):
    """The backoff retried ten times a second and logged an error each time: 36,000 lines
    an hour while descriptors stayed exhausted."""
    from monitoring import fastio, lifecycle

    frame, out = make_frame()
    accept = fastio.accept
    failures = [OSError(errno.EMFILE, "Too many open files") for _ in range(5)]

    async def accept_failing(listener, *, checkpoint):
        if failures:
            raise failures.pop()
        return await accept(listener, checkpoint=checkpoint)

    monkeypatch.setattr(fastio, "accept", accept_failing)
    monkeypatch.setattr(lifecycle, "ACCEPT_BACKOFF_SECONDS", 0.01)

    async def handler(stream):
        await stream.send_all(b"hi")

    listener = Listener("t", await bind_tcp("127.0.0.1", 0), handler)
    await nursery.start(frame.serve_listeners, [listener])
    client = await trio.open_tcp_stream(*listener.addresses[0])
    async with client:
        with trio.fail_after(5):
            assert await client.receive_some(10) == b"hi"
    assert out.getvalue().count("event=listener.accept_failed") == 1
    assert "held_back=0" in out.getvalue()
    metrics = generate_latest(frame.metrics.registry).decode()
    assert 'wharf_accept_errors_total{errno="EMFILE",listener="t"} 5.0' in metrics
    for name in ("ENFILE", "ENOBUFS", "ENOMEM"):  # exported from the start, at 0
        assert f'wharf_accept_errors_total{{errno="{name}",listener="t"}} 0.0' in metrics
    frame.stop(0)


async def test_a_start_with_too_few_descriptors_for_the_connection_limits_warns_once(tmp_path):
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    config = BrokerConfig(
        admin=AdminSettings(port=0),
        api=ApiSettings(port=0, limits=HttpLimits(max_connections=soft)),
        storage=StorageSettings(data_dir=str(tmp_path / "data")),
    )
    async with running(BROKER, config) as daemon:
        logged = daemon.log_output.getvalue()  # type: ignore[attr-defined]
    warnings = [line for line in logged.splitlines() if "open_files_limit_low" in line]
    assert len(warnings) == 1, logged
    # admin's 10000 and api's limit, plus headroom for the rest
    assert f"limit={soft} " in warnings[0]
    assert f"needed={soft + 10000 + DESCRIPTOR_HEADROOM} " in warnings[0]
    assert "LimitNOFILE=" in warnings[0]


async def test_a_start_with_enough_descriptors_does_not_warn(tmp_path):
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 10000 + 10 + DESCRIPTOR_HEADROOM:
        pytest.skip(f"RLIMIT_NOFILE {soft} is below what the admin listener alone needs")
    config = BrokerConfig(
        admin=AdminSettings(port=0),
        api=ApiSettings(port=0, limits=HttpLimits(max_connections=10)),
        storage=StorageSettings(data_dir=str(tmp_path / "data")),
    )
    async with running(BROKER, config) as daemon:
        logged = daemon.log_output.getvalue()  # type: ignore[attr-defined]
    assert "open_files_limit_low" not in logged


async def test_stop_lets_a_request_in_flight_finish():
    config = BrokerConfig(admin=AdminSettings(port=0))
    async with running(BROKER, config) as daemon:
        addr = address(daemon, "admin")
        stream = await trio.open_tcp_stream(*addr)
        async with stream:
            await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # half a request
            await trio.sleep(0.05)
            daemon.request_stop()
            await trio.sleep(0.1)
            await stream.send_all(b"\r\n")
            reply = b""
            with trio.fail_after(5):
                while chunk := await stream.receive_some(4096):
                    reply += chunk
        assert reply.startswith(b"HTTP/1.1 200 ")
        assert b"connection: close" in reply.lower()


async def test_grace_period_cuts_off_a_stalled_request():
    config = BrokerConfig(
        admin=AdminSettings(port=0), lifecycle=LifecycleSettings(grace_period_seconds=0.2)
    )
    with trio.fail_after(5):
        async with running(BROKER, config) as daemon:
            stream = await trio.open_tcp_stream(*address(daemon, "admin"))
            await stream.send_all(b"GET /healthz HTTP/1.1\r\n")  # and never finish it
            await trio.sleep(0.05)
        # Leaving the block means the daemon stopped within the grace period.
        await stream.aclose()


async def test_reload_good_and_bad_files(tmp_path):
    path = tmp_path / "broker.toml"
    path.write_text('[admin]\nport = 0\n[logging]\nlevel = "info"\n')
    out = io.StringIO()
    config = BrokerConfig(admin=AdminSettings(port=0))
    daemon = Daemon(BROKER, config, config_path=path, log=EventLog("broker", stream=out))
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        path.write_text('[admin]\nport = 0\n[logging]\nlevel = "warning"\n')
        daemon.request_reload()
        await trio.sleep(0.05)
        assert daemon.config.logging.level == "warning"
        path.write_text("[admin]\nport = 99999\n")
        daemon.request_reload()
        await trio.sleep(0.05)
        assert daemon.config.logging.level == "warning"  # old config kept
        assert (await request(address(daemon, "admin"), target="/healthz"))[0] == 200
        daemon.request_stop()
    log = out.getvalue()
    assert "event=config.reload_refused" in log
    assert "Expected `int` <= 65535 - at `$.admin.port`" in log
    metrics = generate_latest(daemon.metrics.registry).decode()
    assert 'wharf_config_reloads_total{outcome="success"} 1.0' in metrics
    assert 'wharf_config_reloads_total{outcome="failure"} 1.0' in metrics


async def test_a_bind_failure_writes_an_ipv6_address_in_brackets():
    # It said "cannot bind ::ffff:127.0.0.1:0", whose port reads as the address's last group.
    for reuse_port in (False, True):
        with pytest.raises(OSError) as info:
            await bind_tcp("::ffff:127.0.0.1", 0, reuse_port=reuse_port)
        assert startup_reason(info.value) == "cannot bind [::ffff:127.0.0.1]:0: Invalid argument"


async def test_bind_tcp_reuse_port_lets_two_sockets_share_an_address():
    first = await bind_tcp("127.0.0.1", 0, reuse_port=True)
    port = first[0].socket.getsockname()[1]
    second = await bind_tcp("127.0.0.1", port, reuse_port=True)
    try:
        assert second[0].socket.getsockname()[1] == port
        # Without the option the address is taken.
        with pytest.raises(OSError) as taken:
            await bind_tcp("127.0.0.1", port)
        assert taken.value.errno == errno.EADDRINUSE
        # Connections are spread over both sockets; each accepts what the kernel hands it.
        accepted = 0
        for _ in range(16):
            client = await trio.open_tcp_stream("127.0.0.1", port)
            for listener in (*first, *second):
                with trio.move_on_after(0.01):
                    stream = await listener.accept()
                    accepted += 1
                    await stream.aclose()
            await client.aclose()
        assert accepted == 16
    finally:
        for listener in (*first, *second):
            await listener.aclose()


async def test_frame_reload_applies_the_file_and_reports_a_refusal(tmp_path):
    path = tmp_path / "broker.toml"
    path.write_text('[admin]\nport = 0\n[logging]\nlevel = "warning"\n')
    config = BrokerConfig(admin=AdminSettings(port=0))
    daemon = Daemon(BROKER, config, config_path=path, log=EventLog("broker", stream=io.StringIO()))
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        assert daemon.frame.reload is not None
        assert await daemon.frame.reload() is None
        assert daemon.config.logging.level == "warning"
        path.write_text("[admin]\nport = 99999\n")
        reason = await daemon.frame.reload()
        assert reason is not None
        assert "at `$.admin.port`" in reason
        daemon.request_stop()


async def test_a_reload_refuses_a_token_file_the_next_start_would_refuse(tmp_path):
    """The token is read at start only; accepted at a reload, a missing file would fail the
    next restart (check-config refused it already)."""
    path = tmp_path / "broker.toml"
    path.write_text("[admin]\nport = 0\n")
    config = BrokerConfig(admin=AdminSettings(port=0))
    daemon = Daemon(BROKER, config, config_path=path, log=EventLog("broker", stream=io.StringIO()))
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        missing = tmp_path / "admin.token"
        path.write_text(f'[admin]\nport = 0\ntoken_file = "{missing}"\n')
        assert daemon.frame.reload is not None
        reason = await daemon.frame.reload()
        assert reason == (
            f"{missing}: cannot read: No such file or directory - at `$.admin.token_file`"
        )
        missing.write_text("a-token\n")
        assert await daemon.frame.reload() is None
        daemon.request_stop()


async def test_an_unforeseen_error_while_reloading_is_a_refusal_not_the_daemons_end(tmp_path):
    """A file, or one it names, that breaks in a way no check foresaw (a bug, a library's
    surprise): the daemon keeps its old config and says why, as for any refused reload."""
    path = tmp_path / "broker.toml"
    path.write_text('[admin]\nport = 0\n[logging]\nlevel = "warning"\n')
    out = io.StringIO()
    config = BrokerConfig(admin=AdminSettings(port=0))
    daemon = Daemon(BROKER, config, config_path=path, log=EventLog("broker", stream=out))

    async def surprised(new_config: object) -> None:
        raise RuntimeError("nobody saw this coming")

    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        daemon.app.reload = surprised  # type: ignore[method-assign]
        assert daemon.frame.reload is not None
        reason = await daemon.frame.reload()
        assert reason == f"{path}: unexpected RuntimeError: nobody saw this coming"
        daemon.request_reload()  # SIGHUP's way too
        await trio.sleep(0.05)
        assert daemon.config.logging.level == "info"  # the old config, still serving
        assert (await request(address(daemon, "admin"), target="/healthz"))[0] == 200
        daemon.request_stop()
    log = out.getvalue()
    assert log.count("event=config.reload_refused") == 2
    assert "event=config.reload_error" in log
    metrics = generate_latest(daemon.metrics.registry).decode()
    assert 'wharf_config_reloads_total{outcome="failure"} 2.0' in metrics


async def test_listeners_join_and_leave_a_serving_frame_one_at_a_time(nursery):
    frame, out = make_frame()
    release = trio.Event()

    async def slow(stream):
        await stream.send_all(b"busy")
        await release.wait()
        await stream.send_all(b"done")

    async def quick(stream):
        await stream.send_all(b"quick")

    first = Listener("first", await bind_tcp("127.0.0.1", 0), slow)
    await nursery.start(frame.serve_listeners, [first])
    second = Listener("second", await bind_tcp("127.0.0.1", 0), quick)
    await frame.add_listener(second)
    with trio.fail_after(5):
        async with await trio.open_tcp_stream(*second.addresses[0]) as stream:
            assert await stream.receive_some(10) == b"quick"

    # Stop the first alone: its connection in flight finishes, new connects are refused.
    address = first.addresses[0]
    busy = await trio.open_tcp_stream(*address)
    async with busy:
        with trio.fail_after(5):
            assert await busy.receive_some(10) == b"busy"
        await frame.stop_listener(first, 10)
        assert first.draining.started
        assert not frame.draining.started
        with pytest.raises(OSError):
            await trio.open_tcp_stream(*address)
        assert [lst.name for lst in frame.listeners] == ["second"]
        assert frame.connection_counts()["first"] == (1, 1)
        release.set()
        with trio.fail_after(5):
            assert await busy.receive_some(10) == b"done"
            assert await busy.receive_some(10) == b""  # closed once its handler is done
    assert frame.connection_counts()["first"] == (0, 1)  # accepted never goes backwards
    assert "event=listener.stopped" in out.getvalue()

    # keep_sockets: another Listener takes over the same socket without a gap.
    third = Listener("third", second.sockets, quick)
    await frame.stop_listener(second, 0, keep_sockets=True)
    await frame.add_listener(third)
    with trio.fail_after(5):
        async with await trio.open_tcp_stream(*third.addresses[0]) as stream:
            assert await stream.receive_some(10) == b"quick"
    frame.stop(0)
    with pytest.raises(RuntimeError):
        await frame.add_listener(Listener("late", await bind_tcp("127.0.0.1", 0), quick))


async def test_an_app_that_cannot_go_on_stops_the_daemon_which_then_fails(tmp_path):
    out = io.StringIO()
    config = BrokerConfig(admin=AdminSettings(port=0), api=ApiSettings(port=0))
    config = msgspec.structs.replace(
        config, storage=StorageSettings(data_dir=str(tmp_path)), lifecycle=LifecycleSettings()
    )
    daemon = Daemon(BROKER, config, config_path=None, log=EventLog("broker", stream=out))

    async def fail_while_serving() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.run)
            admin = address(daemon, "admin")
            assert (await request(admin, target="/readyz"))[0] == 200
            assert daemon.frame.fail is not None
            daemon.frame.fail("the disk caught fire")
            assert not daemon.frame.ready  # out of the load balancer's rotation at once
            daemon.frame.fail("a second reason")  # the first one stands

    with pytest.raises(ExceptionGroup) as raised:
        await fail_while_serving()
    assert raised.group_contains(DaemonFailed, match=r"^the disk caught fire$")
    log = out.getvalue()
    assert "event=daemon.stopping" in log
    assert "event=daemon.stopped" in log


def test_startup_reason_reads_os_errors_and_their_notes():
    error = OSError(errno.EADDRINUSE, "Address already in use")
    error.add_note("cannot bind 127.0.0.1:80")
    assert startup_reason(error) == "cannot bind 127.0.0.1:80: Address already in use"
    missing = FileNotFoundError(errno.ENOENT, "No such file or directory", "/etc/x.pem")
    assert startup_reason(missing) == "No such file or directory: /etc/x.pem"
    assert startup_reason(StartupError("in use")) == "in use"


@pytest.mark.parametrize("first", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_a_second_ctrl_c_cuts_the_drain_short_and_a_second_sigterm_does_not(tmp_path, first):
    """README promised that a second Ctrl-C gives up waiting; it was logged as ignored, and
    the daemon went on waiting out the grace period for the requests in flight."""
    config = tmp_path / "broker.toml"
    config.write_text(
        "[api]\nport = 0\n[api.limits]\nheader_timeout_seconds = 600\n[admin]\nport = 0\n"
        f'[storage]\ndata_dir = "{tmp_path}"\n[lifecycle]\ngrace_period_seconds = 600\n'
    )
    async with daemon_process("broker", config, tmp_path) as daemon:
        assert (await daemon.next_notification()).startswith(b"READY=1")
        busy = await trio.open_tcp_stream(*daemon.addresses["api"])
        async with busy:
            await busy.send_all(b"POST / HTTP/1.1\r\n")  # a request under way: the drain waits
            await trio.sleep(0.2)
            daemon.signal(first)
            assert await daemon.next_notification() == b"STOPPING=1"
            if first == signal.SIGTERM:
                # systemd sends SIGTERM once, then SIGKILL after TimeoutStopSec: one more
                # SIGTERM (a `kill` by hand) does not cut the requests in flight.
                mark = len(daemon.log_lines)
                daemon.signal(signal.SIGTERM)
                line = await daemon.wait_log("event=daemon.signal_ignored", start=mark)
                assert "signal=SIGTERM" in line
                with trio.move_on_after(0.3):
                    await busy.receive_some(1)
                    pytest.fail("a second SIGTERM cut the request in flight")
            daemon.signal(signal.SIGINT)
            with trio.fail_after(20):
                assert await busy.receive_some(1) == b""  # cut, not answered
        # Leaving the block waits for the exit (bounded by the harness).
    assert daemon.process.returncode == 130
    cut = await daemon.wait_log("event=daemon.drain_cut_short")
    assert "level=warning" in cut
    assert "signal=SIGINT" in cut
    assert any("event=daemon.stopped" in line for line in daemon.log_lines)


async def test_a_second_ctrl_c_cuts_a_request_in_flight_on_the_admin_listener_too(tmp_path):
    """The admin listener serves the drain and stops last, with the grace period; a second
    Ctrl-C did not reach it once it was stopping, so the daemon waited for its requests in
    flight (a slow scrape, a half-sent POST /reload) instead of cutting them as README says."""
    config = tmp_path / "broker.toml"
    config.write_text(
        "[api]\nport = 0\n[admin]\nport = 0\n"
        f'[storage]\ndata_dir = "{tmp_path}"\n[lifecycle]\ngrace_period_seconds = 600\n'
    )
    async with daemon_process("broker", config, tmp_path) as daemon:
        assert (await daemon.next_notification()).startswith(b"READY=1")
        busy = await trio.open_tcp_stream(*daemon.addresses["admin"])
        async with busy:
            # A request whose body is still arriving: the drain waits for it.
            await busy.send_all(b"POST /reload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")
            await trio.sleep(0.2)
            daemon.signal(signal.SIGTERM)
            assert await daemon.next_notification() == b"STOPPING=1"
            await daemon.wait_log("event=daemon.stopping")
            daemon.signal(signal.SIGINT)
            with trio.fail_after(60):
                # Cut: no answer at all (the body timeout would answer 408 instead).
                assert await busy.receive_some(1) == b""
    assert daemon.process.returncode == 130
