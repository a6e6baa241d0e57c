"""What the SIGKILL durability tests share: the broker as a subprocess on one data directory,
and clients that write in a loop and remember what the broker acknowledged."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import botocore.exceptions
import trio
import urllib3.exceptions

from tests.support.processes import DaemonProcess, daemon_process
from tests.support.wire_fuzz import error_lines

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
    """The broker as a subprocess; yields it and its API endpoint once it is ready.

    A broker that is not ready in time raises with its exit status and log attached: after
    a kill, that is what a failure to recover looks like.
    """
    directory = tmp_path / f"run{run}"
    directory.mkdir()
    config = write_config(tmp_path, extra_config)
    async with daemon_process("broker", config, directory) as daemon:
        try:
            await daemon.wait_log("event=daemon.ready")
        except trio.TooSlowError as error:
            error.add_note(
                f"run {run}: the broker was not ready in time (exit status "
                f"{daemon.process.returncode}); its log:\n" + "\n".join(daemon.log_lines[-60:])
            )
            raise
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


class Program(Protocol):
    """One broker run's driver in a random program of calls with SIGKILLs between runs."""

    def begin(self, run: int) -> None:
        """Set up (run 1) or check what survived the last kill (later runs)."""

    def run(self, step: Any) -> None: ...

    def finish(self) -> None:
        """The last run's final checks."""

    def busy(self, kill: Any, run: int) -> Busy:
        """The background clients that race the kill ending ``run``."""

    def killed(self) -> None:
        """The kill is done: what was cut off may or may not have happened."""

    def close(self) -> None: ...


class Busy(Protocol):
    def start(self) -> None:
        """Start the background clients; return once they are at work."""

    def finish(self) -> None:
        """Join them (the broker is gone) and record what they saw."""


class Segment(Protocol):
    @property
    def steps(self) -> Sequence[Any]: ...

    @property
    def kill(self) -> Any: ...


async def run_with_kills(
    tmp_path: Path,
    segments: Sequence[Segment],
    tail: Sequence[Any],
    program_for: Callable[[str], Program],
    trace: Callable[[], list[str]],
) -> None:
    """Each segment's steps against a fresh broker process on the same data directory, ended
    by a SIGKILL while the program's background clients are busy; then ``tail`` and the final
    checks. ``trace()`` (the latest steps and what they saw) is attached to any failure."""
    try:
        for run, segment in enumerate([*segments, None], start=1):
            async with broker_process(tmp_path, run) as (daemon, endpoint):
                program = program_for(endpoint)
                try:
                    await trio.to_thread.run_sync(program.begin, run)
                    for step in segment.steps if segment else tail:
                        await trio.to_thread.run_sync(program.run, step)
                    if segment is None:
                        await trio.to_thread.run_sync(program.finish)
                    else:
                        await _kill_while_busy(daemon, program.busy(segment.kill, run))
                        program.killed()
                finally:
                    program.close()
                errors = error_lines("\n".join(daemon.log_lines))
                assert not errors, "the broker logged errors:\n" + "\n".join(errors)
    except BaseException as error:
        # Not hypothesis's note(): with a kill's timing in play, a failure may not come back
        # when the example is replayed, and then the replay's notes would be all one saw.
        error.add_note("The test did and saw (latest last):\n" + "\n".join(trace()[-80:]))
        raise


async def _kill_while_busy(daemon: DaemonProcess, busy: Busy) -> None:
    try:
        await trio.to_thread.run_sync(busy.start)
        daemon.signal(signal.SIGKILL)
        with trio.fail_after(30):
            await daemon.process.wait()
    finally:
        await trio.to_thread.run_sync(busy.finish)
    assert daemon.process.returncode == -signal.SIGKILL


class Worker:
    """One background client (a boto3 client, closed at the end): ``step(client)`` until
    stopped, until it returns False, or until the broker is gone."""

    def __init__(self, client: Any, step: Callable[[Any], bool], stop: threading.Event) -> None:
        self.client = client
        self.step = step
        self.stop = stop
        self.answers = 0
        self.done = False
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        try:
            while not self.stop.is_set() and self.step(self.client):
                self.answers += 1
        except botocore.exceptions.ClientError as error:
            self.error = error  # an answer, so not the kill: the broker refused
        except CLIENT_ERRORS:
            pass  # the broker died under us: the call may or may not have happened
        except BaseException as error:
            self.error = error
        finally:
            self.done = True
            self.client.close()  # its pooled sockets would otherwise linger until exit


class Deduplicated(Protocol):
    """An acknowledged FIFO write: its deduplication id and what the broker answered."""

    @property
    def group(self) -> str | None: ...
    @property
    def dedup(self) -> str | None: ...
    @property
    def body(self) -> str: ...
    @property
    def message_id(self) -> str | None: ...
    @property
    def sequence_number(self) -> str | None: ...


def resend_deduplicated(
    originals: Sequence[Deduplicated],
    new_body: Callable[[], str],
    body_key: str,
    send_one: Callable[..., dict[str, Any]],
    send_batch: Callable[[list[dict[str, Any]]], dict[str, Any]],
) -> None:
    """Write each original's deduplication id again with another body (``new_body()``), alone
    or as one batch, and check that each answer names the original: nothing new was taken.

    ``send_one(**entry)`` and ``send_batch(entries)`` are the service's single and batch write
    with the queue or topic bound; ``body_key`` is its body parameter.
    """
    entries = [
        {
            "Id": str(n),
            body_key: new_body(),
            "MessageGroupId": m.group,
            "MessageDeduplicationId": m.dedup,
        }
        for n, m in enumerate(originals)
    ]
    if len(entries) == 1:
        params = {k: v for k, v in entries[0].items() if k != "Id"}
        answers = [{**send_one(**params), "Id": "0"}]
    else:
        answer = send_batch(entries)
        assert not answer.get("Failed"), answer
        answers = answer["Successful"]
    assert len(answers) == len(originals), answers
    for entry in answers:
        original = originals[int(entry["Id"])]
        assert (entry["MessageId"], entry["SequenceNumber"]) == (
            original.message_id,
            original.sequence_number,
        ), f"a resend of {original.dedup} ({original.body!r}) was taken as a new message"


def stop_workers(stop: threading.Event, workers: Sequence[Worker]) -> list[int]:
    """Stop the background clients of a kill, join them and check none failed; returns how
    many answers each got."""
    stop.set()
    for worker in workers:
        worker.thread.join(30)
        assert not worker.thread.is_alive(), "a background client hangs"
    for worker in workers:
        assert worker.error is None, worker.error
    return [worker.answers for worker in workers]
