"""One active health check of one target: a TCP connect, or an HTTP(S) GET and its status.

What a check sends and how it is judged follows the ALB user guide
(target-group-health-checks.md):

- ``tcp``: the check passes once the connection is established; nothing is sent.
- ``http`` / ``https``: ``GET <path>`` with ``User-Agent: ELB-HealthChecker/2.0`` (what ALB
  sends, so applications that filter their logs by it keep working) and ``Connection:
  close``: the connection is closed after every check. Only the status line counts; the body
  is never read. The status is judged by the group's matcher.
- HTTPS checks do not verify the target's certificate, as on AWS: targets commonly use
  self-signed certificates and the check asks "is it up", not "is it who it claims". They
  speak the load balancer's back-end TLS policy, as traffic does (:mod:`balancer.target_tls`).
- The whole check, from resolving a DNS name to the status line, has one deadline
  (``timeout_seconds``); running past it is ``Target.Timeout``. Connection errors, TLS
  failures and malformed responses are ``Target.FailedHealthChecks``.
"""

from __future__ import annotations

import functools
from typing import Final, NamedTuple

import h11
import trio

from balancer.config import HealthCheck
from balancer.health import Input, Matcher, classify_response, parse_matcher
from balancer.target_tls import (
    BACKEND_POLICY,
    TargetContext,
    check_suite,
    client_context,
    server_name,
)
from balancer.upstream import OutOfResources, is_local_exhaustion
from monitoring.settings import host_port

USER_AGENT: Final = "ELB-HealthChecker/2.0"
# A status line and headers fit easily; a target that sends more is not answering a check.
MAX_RESPONSE_HEAD_BYTES: Final = 16384
MAX_RECV: Final = 4096


class CheckResult(NamedTuple):
    """What one check found: the health-table input, a human-readable detail for logs, and
    the HTTP status when one came back."""

    input: Input
    detail: str
    status: int | None = None


@functools.lru_cache(maxsize=4)  # one per back-end policy
def unverified_client_context(policy: str) -> TargetContext:
    """The TLS client context of HTTPS checks: the one https targets get for traffic (no
    certificate or host name verification, the back-end ``policy``), built once per policy
    for the process's checks."""
    return client_context(policy)


@functools.lru_cache(maxsize=256)
def matcher_of(text: str) -> Matcher:
    """The parsed matcher (config validated it, so this never raises for loaded configs)."""
    return parse_matcher(text)


def check_port(check: HealthCheck, traffic_port: int) -> int:
    """The port a check connects to: the target's own, or the configured number."""
    port = check.port  # the config turned a port given as text into a number
    return port if isinstance(port, int) else traffic_port


def _request(check: HealthCheck, host: str, port: int) -> tuple[h11.Connection, bytes]:
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    connection = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEAD_BYTES)
    head = h11.Request(
        method="GET",
        target=check.path,
        headers=[
            ("Host", authority),
            ("User-Agent", USER_AGENT),
            ("Accept", "*/*"),
            ("Connection", "close"),
        ],
    )
    return connection, connection.send(head) + (connection.send(h11.EndOfMessage()) or b"")


async def _read_status(connection: h11.Connection, stream: trio.abc.Stream) -> int:
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            connection.receive_data(bytes(await stream.receive_some(MAX_RECV)))
        elif isinstance(event, h11.Response):
            return event.status_code
        elif isinstance(event, h11.ConnectionClosed):
            raise h11.RemoteProtocolError("closed before a response")
        # InformationalResponse (1xx): keep reading for the final status.


async def _exchange(stream: trio.abc.Stream, check: HealthCheck, host: str, port: int) -> int:
    connection, data = _request(check, host, port)
    await stream.send_all(data)
    return await _read_status(connection, stream)


async def _attempt(host: str, port: int, check: HealthCheck, tls_policy: str) -> CheckResult:
    stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
    try:
        if check.protocol == "tcp":
            return CheckResult(Input.CHECK_PASSED, "connected")
        if check.protocol == "https":
            context = unverified_client_context(tls_policy)
            tls = trio.SSLStream(
                stream, context, server_hostname=server_name(host), https_compatible=True
            )
            stream = tls
            await tls.do_handshake()
            cipher = tls.cipher()
            check_suite(context, tls.version(), cipher[0] if cipher else None)
        status = await _exchange(stream, check, host, port)
        verdict = classify_response(status, matcher_of(check.matcher))
        return CheckResult(verdict, f"HTTP {status}", status)
    finally:
        # Closing never waits on the target: no close_notify round trip inside the deadline.
        await trio.aclose_forcefully(stream)


async def run_check(
    host: str, traffic_port: int, check: HealthCheck, *, tls_policy: str = BACKEND_POLICY
) -> CheckResult:
    """Run one health check against a target; never raises for anything the target does.

    Raises:
        OutOfResources: the balancer could not open a socket (its descriptors or memory ran
            out): no verdict on the target.

    Args:
        host: the target's address or DNS name.
        traffic_port: the target's port (used when the check's port is ``traffic-port``).
        check: the group's health-check settings.
        tls_policy: the back-end TLS policy of an HTTPS check (the load balancer's:
            :func:`balancer.runtime.target_policy`).
    """
    port = check_port(check, traffic_port)
    with trio.move_on_after(check.timeout_seconds):
        try:
            return await _attempt(host, port, check, tls_policy)
        except (OSError, trio.BrokenResourceError) as exc:
            detail = str(exc.__cause__ or exc) or type(exc).__name__
            if is_local_exhaustion(exc):
                raise OutOfResources(host_port(host, port), detail) from None
            return CheckResult(Input.CHECK_FAILED, detail)
        except h11.ProtocolError as exc:
            return CheckResult(Input.CHECK_FAILED, f"invalid HTTP response: {exc}")
    return CheckResult(Input.CHECK_TIMED_OUT, f"no response within {check.timeout_seconds} s")
