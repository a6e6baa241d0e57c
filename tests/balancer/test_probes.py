"""One health check against real local targets: HTTP, HTTPS, TCP, matcher, timeouts."""

from __future__ import annotations

import errno
import ssl

import pytest
import trio
import trustme

from balancer.config import HealthCheck
from balancer.health import Input
from balancer.probes import USER_AGENT, check_port, run_check
from balancer.upstream import OutOfResources
from tests.support.check_targets import StubTarget


def http_check(**settings) -> HealthCheck:
    settings.setdefault("timeout_seconds", 2)
    return HealthCheck(**settings)


async def test_http_check_passes_on_the_matcher_and_sends_albs_request(nursery):
    target = StubTarget(status=200)
    await target.start(nursery)
    result = await run_check("127.0.0.1", target.port, http_check(path="/health?deep=1"))
    assert result.input is Input.CHECK_PASSED
    assert result.detail == "HTTP 200"
    (request,) = target.requests
    assert request.method == b"GET"
    assert request.target == b"/health?deep=1"
    headers = dict(request.headers)
    assert headers[b"user-agent"] == USER_AGENT.encode()
    assert headers[b"host"] == f"127.0.0.1:{target.port}".encode()
    assert headers[b"connection"] == b"close"
    target.stop()


@pytest.mark.parametrize(
    ("status", "matcher", "expected"),
    [
        (200, "200", Input.CHECK_PASSED),
        (204, "200", Input.CHECK_CODE_MISMATCH),
        (302, "200-399", Input.CHECK_PASSED),
        (404, "200-399", Input.CHECK_CODE_MISMATCH),
        (202, "200,202", Input.CHECK_PASSED),
        (401, "200,202,400-404", Input.CHECK_PASSED),
        (500, "200-499", Input.CHECK_CODE_MISMATCH),
    ],
)
async def test_matcher_codes_and_ranges(nursery, status, matcher, expected):
    target = StubTarget(status=status)
    await target.start(nursery)
    result = await run_check("127.0.0.1", target.port, http_check(matcher=matcher))
    assert result.input is expected
    target.stop()


async def test_refused_connection_fails(nursery):
    target = StubTarget()
    await target.start(nursery)
    target.stop()
    await trio.lowlevel.checkpoint()
    result = await run_check("127.0.0.1", target.port, http_check())
    assert result.input is Input.CHECK_FAILED


async def test_a_silent_target_times_out(nursery, autojump_clock):
    target = StubTarget()
    target.hang = True
    await target.start(nursery)
    start = trio.current_time()
    result = await run_check("127.0.0.1", target.port, http_check(timeout_seconds=3))
    assert result.input is Input.CHECK_TIMED_OUT
    assert trio.current_time() - start == pytest.approx(3)
    target.stop()


async def test_a_garbled_response_fails(nursery):
    target = StubTarget()
    target.raw = b"SSH-2.0-OpenSSH_9.2\r\n\r\n"
    await target.start(nursery)
    result = await run_check("127.0.0.1", target.port, http_check())
    assert result.input is Input.CHECK_FAILED
    assert "invalid HTTP response" in result.detail
    target.stop()


async def test_tcp_check_only_connects(nursery):
    target = StubTarget()
    await target.start(nursery)
    result = await run_check("127.0.0.1", target.port, HealthCheck(protocol="tcp"))
    assert result.input is Input.CHECK_PASSED
    target.stop()
    await trio.lowlevel.checkpoint()
    result = await run_check("127.0.0.1", target.port, HealthCheck(protocol="tcp"))
    assert result.input is Input.CHECK_FAILED


async def test_https_check_does_not_verify_the_certificate(nursery):
    # Issued for a name the check never asks for, by a CA the checker does not trust.
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("somewhere.invalid").configure_cert(context)
    target = StubTarget(status=200, tls=context)
    await target.start(nursery)
    result = await run_check("127.0.0.1", target.port, http_check(protocol="https"))
    assert result.input is Input.CHECK_PASSED
    assert target.requests
    # Plain HTTP against the TLS port is a failed check, not a crash.
    result = await run_check("127.0.0.1", target.port, http_check(protocol="http"))
    assert result.input is Input.CHECK_FAILED
    target.stop()


async def test_check_port_overrides_the_traffic_port(nursery):
    target = StubTarget()
    await target.start(nursery)
    assert check_port(HealthCheck(), 8080) == 8080
    assert check_port(HealthCheck(port=9000), 8080) == 9000
    assert check_port(HealthCheck(port="9000"), 8080) == 9000  # ALB's HealthCheckPort is text
    result = await run_check("127.0.0.1", 1, http_check(port=target.port))
    assert result.input is Input.CHECK_PASSED
    target.stop()


async def test_a_check_the_balancer_cannot_open_gives_no_verdict(monkeypatch):
    async def exhausted(host: str, port: int, **kwargs: object) -> trio.SocketStream:
        attempts = ExceptionGroup("attempts", [OSError(errno.EMFILE, "Too many open files")])
        raise OSError(f"all attempts to connect to {host}:{port} failed") from attempts

    monkeypatch.setattr(trio, "open_tcp_stream", exhausted)
    with pytest.raises(OutOfResources, match=r"127\.0\.0\.1:9"):
        await run_check("127.0.0.1", 9, http_check())
    with pytest.raises(OutOfResources, match=r"\[::1\]:9"):  # was "::1:9"
        await run_check("::1", 9, http_check())
