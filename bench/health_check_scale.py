"""Health checks at scale: loop stalls, flapping targets and the cost of a targets-API change.

    .venv/bin/python bench/health_check_scale.py                        # 1,000 and 5,000 targets
    .venv/bin/python bench/health_check_scale.py --targets 5000 --intervals 4
    PYTHONPATH=/tmp/base .venv/bin/python bench/health_check_scale.py   # another tree's balancer

For each target count it starts a target server of its own (a child process: one listening
socket per target on 127.0.0.1-127.0.0.N, ports from ``--base-port``, each answering 200 and
closing), then runs the balancer's :class:`~balancer.runtime.Runtime` and
:class:`~balancer.checker.HealthChecker` in this process on trio's real clock, with groups
of up to 1,000 targets (the per-group limit), each forwarded to by a listener so its targets
are checked. While the checks run for ``--intervals`` intervals it measures:

- ``stall_max_ms`` / ``stall_p99_ms``: how late a task that sleeps 5 ms wakes (the loop's
  stalls, which every request on the data path waits out too);
- ``all_healthy_s``: seconds from the checker's start until every target was healthy;
- ``flaps``: transitions to unhealthy (every target answers, so each one is a check that
  timed out waiting for the loop);
- ``burst_max``: the most checks started within one 100 ms window (how much the checks
  bunch up), and ``checks``: how many ran;
- ``register_ms``: the time of one targets-API change as the API makes it
  (``Runtime.replace_targets``: a new generation with one target more, or one less, in the
  last group, plus every observer of its events; the garbage collector held off, as its
  pauses come at any time), ``--changes`` times once all targets are healthy (or after
  ``--intervals`` intervals), and ``stall_after_change_ms``: the worst loop stall in the
  100 ms after one (the work a change leaves to other tasks, such as the checker's clock).

Figures are wall-clock, so compare runs on the same machine (``core_probe.py`` tells how
fast a core is right now). Not a test: nothing here is collected by pytest.
"""

from __future__ import annotations

import argparse
import errno
import gc
import io
import json
import math
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GROUP_SIZE = 1000  # balancer.config.MAX_TARGETS_PER_GROUP
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
STALL_TICK = 0.005
BURST_WINDOW = 0.1


def addresses(count: int, base_port: int, ports: int) -> list[tuple[str, int]]:
    """``count`` distinct (host, port) pairs: ``ports`` ports on as many loopback hosts as
    needed (127.0.0.1 upwards)."""
    return [(f"127.0.0.{1 + i // ports}", base_port + i % ports) for i in range(count)]


# -- the target server (a child process) -------------------------------------------------------


def serve(count: int, base_port: int, ports: int) -> None:
    """Answer every connection on every address with one 200 response, then close it."""
    selector = selectors.DefaultSelector()
    for host, port in addresses(count, base_port, ports):
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(128)
        listener.setblocking(False)
        selector.register(listener, selectors.EVENT_READ, None)
    print("ready", flush=True)
    pending: dict[socket.socket, bytes] = {}
    while True:
        for key, _ in selector.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if key.data is None:  # a listener
                try:
                    conn, _ = sock.accept()
                except OSError:
                    continue
                conn.setblocking(False)
                pending[conn] = b""
                selector.register(conn, selectors.EVENT_READ, "conn")
                continue
            try:
                data = sock.recv(4096)
            except OSError as exc:
                if exc.errno == errno.EAGAIN:
                    continue
                data = b""
            head = pending[sock] + data
            if data and b"\r\n\r\n" not in head:
                pending[sock] = head
                continue
            if data:
                try:
                    sock.send(RESPONSE)
                except OSError:
                    pass
            selector.unregister(sock)
            del pending[sock]
            sock.close()


def start_server(count: int, base_port: int, ports: int) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(count), str(base_port), str(ports)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    if process.stdout.readline().strip() != "ready":
        process.kill()
        raise SystemExit("the target server did not start")
    return process


# -- the balancer side ------------------------------------------------------------------------


def measure(count: int, args: argparse.Namespace) -> dict[str, Any]:
    import trio

    import balancer.checker as checker_module
    from balancer.checker import HealthChecker
    from balancer.config import (
        BalancerConfig,
        Endpoint,
        Forward,
        HealthCheck,
        HttpListener,
        Target,
        TargetGroup,
    )
    from balancer.health import TargetBecameUnhealthy, TargetState
    from balancer.runtime import Runtime
    from monitoring.logging import EventLog
    from monitoring.metrics import Metrics

    # One spare address per change, so a registration adds a target that answers.
    pairs = addresses(count + args.changes, args.base_port, args.ports)
    targets, spares = pairs[:count], pairs[count:]
    check = HealthCheck(
        interval_seconds=args.interval,
        timeout_seconds=args.timeout,
        healthy_threshold=2,
        unhealthy_threshold=2,
    )
    groups = tuple(
        TargetGroup(
            name=f"g{start // GROUP_SIZE}",
            targets=tuple(Target(host=h, port=p) for h, p in targets[start : start + GROUP_SIZE]),
            deregistration_delay_seconds=0,
            health_check=check,
        )
        for start in range(0, count, GROUP_SIZE)
    )
    listeners = tuple(
        HttpListener(name=f"l{i}", port=0, default_action=Forward(target_group=g.name))
        for i, g in enumerate(groups)
    )
    config = BalancerConfig(listeners=listeners, target_groups=groups)

    check_starts: list[float] = []
    real_check = checker_module.run_check

    async def counted_check(host: str, port: int, check: HealthCheck) -> Any:
        check_starts.append(trio.current_time())
        return await real_check(host, port, check)

    checker_module.run_check = counted_check  # type: ignore[assignment]

    async def main() -> dict[str, Any]:
        runtime = Runtime(config, now=trio.current_time())
        checker = HealthChecker(
            runtime,
            EventLog("balancer", level="warning", stream=io.StringIO()),
            Metrics("balancer", version="bench"),
        )
        healthy = 0
        flaps = 0
        all_healthy = trio.Event()

        def observe(events: Any) -> None:
            nonlocal healthy, flaps
            for event in events:
                if event.previous is TargetState.HEALTHY:
                    healthy -= 1
                if event.state is TargetState.HEALTHY:
                    healthy += 1
                if isinstance(event, TargetBecameUnhealthy):
                    flaps += 1
            if healthy >= count:
                all_healthy.set()

        runtime.observers.append(observe)
        stalls: list[tuple[float, float]] = []  # (when, how late)

        async def stall_monitor() -> None:
            while True:
                before = trio.current_time()
                await trio.sleep(STALL_TICK)
                after = trio.current_time()
                stalls.append((after, after - before - STALL_TICK))

        changes_ms: list[float] = []
        change_times: list[float] = []
        started_at = trio.current_time()
        healthy_after: float | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stall_monitor)
            await nursery.start(checker.run)
            with trio.move_on_after(args.interval * args.intervals):
                await all_healthy.wait()
                healthy_after = trio.current_time() - started_at
            last = groups[-1].name
            for i in range(args.changes):
                await trio.sleep(args.interval / max(1, args.changes))
                current = runtime.current.groups[last].endpoints
                if i % 2 == 0:
                    host, port = spares[i]
                    endpoints = (*current, Endpoint(f"{host}:{port}", host, port, 1, ""))
                else:
                    endpoints = current[:-1]
                gc.disable()  # its pauses come at any time, change or not: time the call's own work
                began = time.perf_counter()
                runtime.replace_targets(last, endpoints, trio.current_time())
                changes_ms.append((time.perf_counter() - began) * 1000)
                gc.enable()
                change_times.append(trio.current_time())
            remaining = started_at + args.interval * args.intervals - trio.current_time()
            await trio.sleep(max(0.0, remaining))
            nursery.cancel_scope.cancel()

        lateness = sorted(late for _, late in stalls)
        after_change = [
            late for when, late in stalls if any(0 <= when - t <= 0.1 for t in change_times)
        ]
        check_starts.sort()
        burst, first = 0, 0
        for last_index, at in enumerate(check_starts):
            while at - check_starts[first] > BURST_WINDOW:
                first += 1
            burst = max(burst, last_index - first + 1)
        return {
            "targets": count,
            "interval_s": args.interval,
            "ran_s": round(trio.current_time() - started_at, 1),
            "all_healthy_s": None if healthy_after is None else round(healthy_after, 2),
            "flaps": flaps,
            "checks": len(check_starts),
            "burst_max": burst,
            "stall_max_ms": round(lateness[-1] * 1000, 1),
            "stall_p99_ms": round(lateness[math.floor(0.99 * (len(lateness) - 1))] * 1000, 1),
            "register_ms": [round(ms, 1) for ms in changes_ms],
            "stall_after_change_ms": round(max(after_change, default=0.0) * 1000, 1),
        }

    try:
        return trio.run(main)
    finally:
        checker_module.run_check = real_check


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        serve(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--interval", type=int, default=5, help="interval_seconds (5-300)")
    parser.add_argument("--timeout", type=int, default=2, help="timeout_seconds")
    parser.add_argument("--intervals", type=int, default=4, help="how long each run lasts")
    parser.add_argument("--changes", type=int, default=6, help="targets-API changes per run")
    parser.add_argument("--base-port", type=int, default=19100)
    parser.add_argument("--ports", type=int, default=100, help="ports per loopback host")
    args = parser.parse_args()
    for count in args.targets:
        server = start_server(count + args.changes, args.base_port, args.ports)
        try:
            print(json.dumps(measure(count, args)), flush=True)
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
