"""A wharf-balancer with HTTP listeners in front of test targets, in-process on 127.0.0.1."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any

import h11
import trio

from balancer.cli import SPEC
from balancer.config import (
    Action,
    BalancerConfig,
    Forward,
    HealthCheck,
    HttpListener,
    ListenerTimeouts,
    Rule,
    Stickiness,
    StickinessKeys,
    Target,
    TargetGroup,
)
from monitoring.lifecycle import Daemon
from monitoring.settings import AdminSettings, LifecycleSettings
from tests.support.daemons import address, running
from tests.support.targets import TargetServer

Response = tuple[int, dict[str, str], bytes]


def group(
    name: str,
    *servers: TargetServer,
    stickiness: Stickiness | None = None,
    algorithm: str = "round_robin",
    **options: Any,
) -> TargetGroup:
    """A target group of test servers, health checks off (every target takes requests)."""
    return TargetGroup(
        name=name,
        targets=tuple(Target(host="127.0.0.1", port=s.port) for s in servers),
        health_check=HealthCheck(enabled=False),
        stickiness=stickiness or Stickiness(),
        algorithm=algorithm,  # type: ignore[arg-type]
        **options,
    )


def listener(
    default: Action | None = None,
    *,
    rules: Sequence[Rule] = (),
    name: str = "front",
    timeouts: ListenerTimeouts | None = None,
    **options: Any,
) -> HttpListener:
    return HttpListener(
        name=name,
        host="127.0.0.1",
        port=0,
        default_action=default or Forward(target_group="web"),
        rules=tuple(rules),
        timeouts=timeouts or ListenerTimeouts(),
        **options,
    )


def config(
    listeners: Sequence[HttpListener],
    groups: Sequence[TargetGroup],
    *,
    key_file: str | None = None,
    grace: float = 5.0,
) -> BalancerConfig:
    return BalancerConfig(
        admin=AdminSettings(port=0),
        lifecycle=LifecycleSettings(grace_period_seconds=grace),
        listeners=tuple(listeners),
        target_groups=tuple(groups),
        stickiness=StickinessKeys(key_files=(key_file,) if key_file else ()),
    )


@contextlib.asynccontextmanager
async def balancer(cfg: BalancerConfig) -> AsyncIterator[Daemon[Any]]:
    async with running(SPEC, cfg) as daemon:
        yield daemon


def front(daemon: Daemon[Any], name: str = "front") -> tuple[str, int]:
    return address(daemon, name)


class Client:
    """A keep-alive HTTP/1.1 client on one connection (h11), for reuse and pipelining."""

    def __init__(self, stream: trio.SocketStream, host: str) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)
        self.host = host
        self.set_cookies: list[str] = []  # every Set-Cookie of the last response

    def jar(self) -> str:
        """A Cookie header value with what the last response set."""
        return "; ".join(c.partition(";")[0] for c in self.set_cookies)

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, addr: tuple[str, int]) -> AsyncIterator[Client]:
        stream = await trio.open_tcp_stream(*addr)
        async with stream:
            yield cls(stream, f"{addr[0]}:{addr[1]}")

    async def request(
        self,
        method: str = "GET",
        target: str = "/",
        *,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> Response:
        fields = list(headers)
        if not any(name.lower() == "host" for name, _ in fields):
            fields.insert(0, ("host", self.host))
        if body:
            fields.append(("content-length", str(len(body))))
        data = self.conn.send(h11.Request(method=method, target=target, headers=fields))
        if body:
            data += self.conn.send(h11.Data(data=body))
        data += self.conn.send(h11.EndOfMessage())
        with trio.fail_after(10):
            await self.stream.send_all(data)
            status, headers, body = 0, [], b""
            while True:
                event = self.conn.next_event()
                if event is h11.NEED_DATA:
                    self.conn.receive_data(await self.stream.receive_some(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    headers = [(k.decode(), v.decode()) for k, v in event.headers]
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    break
        self.set_cookies = [v for k, v in headers if k == "set-cookie"]
        response = (status, dict(headers), body)
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        return response


async def raw(addr: tuple[str, int], payload: bytes, *, limit: float = 10) -> bytes:
    """Send raw bytes; everything the balancer answers until it closes."""
    with trio.fail_after(limit):
        stream = await trio.open_tcp_stream(*addr)
        async with stream:
            await stream.send_all(payload)
            received = b""
            while True:
                try:
                    chunk = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    break
                if not chunk:
                    break
                received += chunk
            return received


def statuses(answer: bytes) -> list[int]:
    """The status codes of every response in raw bytes, in order (a test's bodies never
    contain a status line)."""
    return [int(code) for code in re.findall(rb"HTTP/1\.[01] (\d{3})", answer)]


def sample(daemon: Daemon[Any], name: str, labels: dict[str, str] | None = None) -> float:
    value = daemon.metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value
