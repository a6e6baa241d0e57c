"""What the SIGKILL durability tests share: the broker as a subprocess on one data directory,
and clients that write in a loop and remember what the broker acknowledged."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import botocore.exceptions
import urllib3.exceptions

from tests.support.processes import DaemonProcess, daemon_process

WARM_UP = 5  # acknowledged writes per client before the kill may come
CLIENT_ERRORS = (
    botocore.exceptions.BotoCoreError,  # connection reset, refused, read timeout
    botocore.exceptions.ClientError,
    urllib3.exceptions.HTTPError,
    OSError,
)


def write_config(
    tmp_path: Path, extra: str = "", *, data_dir: Path | None = None, storage: str = ""
) -> Path:
    """A broker.toml on ephemeral ports with its data under ``data_dir`` (``tmp_path/data``);
    ``storage`` adds lines to its [storage] section, ``extra`` sections after it."""
    config = tmp_path / "broker.toml"
    config.write_text(
        f"""
[api]
port = 0
[admin]
port = 0
[storage]
data_dir = "{data_dir or tmp_path / "data"}"
{storage}
[logging]
level = "info"
{extra}"""
    )
    return config


@contextlib.asynccontextmanager
async def broker_process(
    tmp_path: Path, run: int, extra_config: str = ""
) -> AsyncIterator[tuple[DaemonProcess, str]]:
    """The broker as a subprocess; yields it and its API endpoint once it is ready."""
    directory = tmp_path / f"run{run}"
    directory.mkdir()
    config = write_config(tmp_path, extra_config)
    async with daemon_process("broker", config, directory) as daemon:
        await daemon.wait_log("event=daemon.ready")
        host, port = daemon.addresses["api"]
        yield daemon, f"http://{host}:{port}"
        if daemon.process.returncode is None:
            daemon.signal(signal.SIGTERM)


@dataclass
class Writer:
    """One client writing ``"<number>:<attempt>"`` bodies in a loop until stopped or until the
    broker is gone; FIFO writers use group ``g<number>`` and explicit deduplication ids."""

    client: Any  # a boto3 client, closed when the loop ends
    operation: str  # "send_message" or "publish"
    target: dict[str, str]  # {"QueueUrl": ...} or {"TopicArn": ...}
    body_key: str  # "MessageBody" or "Message"
    number: int
    fifo: bool
    acknowledged: dict[int, dict[str, Any]] = field(default_factory=dict)
    attempted: int = 0
    warmed_up: threading.Event = field(default_factory=threading.Event)

    def run(self, stop: threading.Event) -> None:
        try:
            self._loop(stop)
        finally:
            self.client.close()  # its pooled sockets would otherwise linger until exit

    def _loop(self, stop: threading.Event) -> None:
        write = getattr(self.client, self.operation)
        while not stop.is_set():
            params: dict[str, Any] = {
                **self.target,
                self.body_key: f"{self.number}:{self.attempted}",
            }
            if self.fifo:
                params["MessageGroupId"] = f"g{self.number}"
                params["MessageDeduplicationId"] = f"{self.number}-{self.attempted}"
            sequence = self.attempted
            self.attempted += 1
            try:
                result = write(**params)
            except CLIENT_ERRORS:
                return  # the broker died under us: this last write may or may not be kept
            self.acknowledged[sequence] = result
            if len(self.acknowledged) >= WARM_UP:
                self.warmed_up.set()
