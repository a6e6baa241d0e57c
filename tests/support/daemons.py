"""Start a daemon in-process on ephemeral 127.0.0.1 ports."""

from __future__ import annotations

import contextlib
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio

from monitoring.lifecycle import Daemon, DaemonSpec
from monitoring.logging import EventLog, LevelName


@contextlib.asynccontextmanager
async def running(
    spec: DaemonSpec[Any],
    config: Any,
    *,
    config_path: Path | None = None,
    level: LevelName = "debug",
) -> AsyncIterator[Daemon[Any]]:
    """Run ``spec`` with ``config`` until the block ends; logs go to ``daemon.log_output``.

    With ``config_path`` the daemon reloads from that file, as SIGHUP makes it.
    """
    output = io.StringIO()
    log = EventLog(spec.name, level=level, stream=output)
    daemon = Daemon(spec, config, config_path=config_path, log=log)
    daemon.log_output = output  # type: ignore[attr-defined]
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        try:
            yield daemon
        finally:
            daemon.request_stop()


def address(daemon: Daemon[Any], listener: str) -> tuple[str, int]:
    for lst in daemon.frame.listeners:
        if lst.name == listener:
            return lst.addresses[0]
    raise KeyError(listener)
