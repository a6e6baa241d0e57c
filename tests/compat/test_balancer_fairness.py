"""One connection whose peers are always ready must not hold the balancer's event loop.

A read or write that completes at once is not a trio checkpoint (monitoring.fastio), so a
response that streams as fast as the target writes and the client reads could run without
ever yielding: every other connection, the admin listener and the systemd watchdog would
wait for it. The target and the client here are separate processes, as in production: in
the test's own event loop they would have to yield themselves, and the kernel buffers
would run dry, which hides the fault.

The streaming client stops as soon as the test was answered elsewhere, or after
STREAM_CAP_SECONDS: a client still "capped" means the balancer served nothing else while
it streamed. That cap bounds the test; it is not a speed asserted.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import msgspec
import pytest
import trio

from balancer.config import ListenerTimeouts, Target
from tests.support.balancer_http import balancer, config, group, listener
from tests.support.daemons import address
from tests.support.http import request

pytestmark = pytest.mark.slow

STREAM_CAP_SECONDS = 20

# A target that answers every request with an endless response: a chunked body of 1 KiB
# chunks, or a flood of 103 Early Hints that never reaches a final head.
TARGET = r"""
import socket, sys, threading
kind = sys.argv[1]
server = socket.create_server(("127.0.0.1", 0))
print(server.getsockname()[1], flush=True)
if kind == "chunks":
    head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    unit = b"400\r\n" + b"x" * 1024 + b"\r\n"
else:
    head = b""
    unit = b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n"
burst = unit * 256
def serve(conn):
    with conn:
        try:
            conn.recv(65536)
            conn.sendall(head)
            while True:
                conn.sendall(burst)
        except OSError:
            pass
while True:
    conn, _ = server.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""

# A client that sends one request and reads as fast as it can: it prints "streaming" once it
# has read 64 KiB, then "stopped" when the flag file appears, "closed" when the balancer
# closes (with the last bytes it read), or "capped" after the cap.
CLIENT = r"""
import os, socket, sys, time
port, flag, cap = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
conn = socket.create_connection(("127.0.0.1", port))
conn.sendall(b"GET /stream HTTP/1.1\r\nhost: fair.test\r\n\r\n")
conn.settimeout(1)
read, told, tail, start = 0, False, b"", time.monotonic()
while True:
    if time.monotonic() - start > cap:
        print("capped", flush=True)
        break
    if os.path.exists(flag):
        print("stopped", flush=True)
        break
    try:
        data = conn.recv(1 << 20)
    except socket.timeout:
        continue
    if not data:
        print("closed", tail[-200:].decode("latin-1").replace("\r\n", " "), flush=True)
        break
    read += len(data)
    tail = (tail + data)[-400:]
    if read >= 1 << 16 and not told:
        print("streaming", flush=True)
        told = True
"""


async def _first_line(process: trio.Process) -> str:
    assert process.stdout is not None
    line = b""
    while not line.endswith(b"\n"):
        chunk = await process.stdout.receive_some(1)
        if not chunk:
            break
        line += chunk
    return line.decode().strip()


async def _stream_beside_a_scrape(
    tmp_path: Path, kind: str, timeouts: ListenerTimeouts, *, stop_after_scrape: bool
) -> tuple[str, int]:
    """Start the endless response, then scrape the admin listener meanwhile: the client's
    last word and the scrape's status. The client stops once the scrape is answered, or
    reads on until the balancer closes (or the cap)."""
    flag = tmp_path / "answered"
    with trio.fail_after(STREAM_CAP_SECONDS + 20):
        async with trio.open_nursery() as nursery:
            target = await nursery.start(
                functools.partial(
                    trio.run_process, [sys.executable, "-c", TARGET, kind], stdout=-1, check=False
                )
            )
            port = int(await _first_line(target))
            web = msgspec.structs.replace(
                group("web"), targets=(Target(host="127.0.0.1", port=port),)
            )
            async with balancer(config([listener(timeouts=timeouts)], [web])) as daemon:
                front_port = address(daemon, "front")[1]
                command = [
                    sys.executable,
                    "-c",
                    CLIENT,
                    str(front_port),
                    str(flag),
                    str(STREAM_CAP_SECONDS),
                ]
                client = await nursery.start(
                    functools.partial(trio.run_process, command, stdout=-1, check=False)
                )
                first = await _first_line(client)
                if first != "streaming":
                    flag.touch()
                    target.kill()
                    return first, 0
                status, _, _ = await request(address(daemon, "admin"), target="/healthz")
                if stop_after_scrape:
                    flag.touch()
                last = await _first_line(client)
                flag.touch()
            target.kill()
    return last, status


async def test_a_fast_endless_body_leaves_the_other_connections_served(tmp_path: Path) -> None:
    last, status = await _stream_beside_a_scrape(
        tmp_path, "chunks", ListenerTimeouts(), stop_after_scrape=True
    )
    assert status == 200, last
    assert last == "stopped", last  # "capped": nothing else ran while the body streamed


async def test_a_flood_of_early_hints_ends_at_the_response_timeout(tmp_path: Path) -> None:
    # The 103s are relayed to the client as fast as it reads; only the response timeout
    # ends the request (a 504 after them), while the admin listener stays served.
    timeouts = ListenerTimeouts(target_response_seconds=1)
    last, status = await _stream_beside_a_scrape(
        tmp_path, "early", timeouts, stop_after_scrape=False
    )
    assert status == 200, last
    assert last.startswith("closed"), last
    assert "504" in last, last
