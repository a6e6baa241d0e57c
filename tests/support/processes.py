"""Run a daemon as a real subprocess, with a real NOTIFY_SOCKET, and follow its log."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import trio

BOUND = re.compile(r"event=listener\.bound .*name=(\S+) addr=(\S+):(\d+)")


class DaemonProcess:
    def __init__(self, process: trio.Process, notify: trio.socket.SocketType) -> None:
        self.process = process
        self.notify = notify
        self.log_lines: list[str] = []
        self.addresses: dict[str, tuple[str, int]] = {}
        self._new_line = trio.Event()

    async def follow_log(self) -> None:
        assert self.process.stderr is not None
        buffer = b""
        async for chunk in self.process.stderr:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for raw in lines:
                line = raw.decode()
                self.log_lines.append(line)
                if match := BOUND.search(line):
                    self.addresses[match[1]] = (match[2].strip("[]"), int(match[3]))
            self._new_line.set()
            self._new_line = trio.Event()

    async def wait_log(self, needle: str, *, start: int = 0) -> str:
        """The first log line from index ``start`` on that contains ``needle``."""
        with trio.fail_after(20):
            while True:
                for line in self.log_lines[start:]:
                    if needle in line:
                        return line
                await self._new_line.wait()

    async def next_notification(self) -> bytes:
        """The next sd_notify message. After a READY=1, the log has been read up to the
        daemon's ``daemon.ready`` line, so ``addresses`` holds every listener it bound: the
        notification comes through its own socket, while the log lines written before it may
        still wait in the stderr pipe (a clean-clone CI run found ``addresses`` empty)."""
        with trio.fail_after(20):
            message: bytes = await self.notify.recv(4096)
        if b"READY=1" in message.split(b"\n"):
            await self.wait_log("event=daemon.ready")
        return message

    def signal(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)


@contextlib.asynccontextmanager
async def daemon_process(
    command: str, config: Path, tmp_path: Path, *extra_env: tuple[str, str]
) -> AsyncIterator[DaemonProcess]:
    """Start ``python -m <daemon>.cli serve --config <config>``; kill it if still alive at exit."""
    notify_path = str(tmp_path / "notify.sock")
    notify = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    await notify.bind(notify_path)
    env = {**os.environ, "NOTIFY_SOCKET": notify_path, **dict(extra_env)}
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", f"{command}.cli", "serve", "--config", str(config)],
        stderr=subprocess.PIPE,
        env=env,
    )
    handle = DaemonProcess(process, notify)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(handle.follow_log)
            yield handle
            with trio.fail_after(30):
                await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
        notify.close()
        if process.stderr is not None:
            with trio.CancelScope(shield=True):
                await process.stderr.aclose()
