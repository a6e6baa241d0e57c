"""Envelope signatures for the publisher: in signing processes when the broker has spare cores.

A standard topic's envelope carries an RSA signature, and on one core that signature is about
half of a publish (bench/README.md, "SNS"). With ``[sns] signing_processes`` above 0 the
broker starts that many :mod:`broker.sns_sign_worker` processes the first time it signs, sends
each the key once over a pipe, and then sends them the strings to sign: a publish waits for its
signatures while the event loop serves other requests, and the signing runs on another core.
The default, ``auto``, is one process per CPU the broker may run on beyond the first, at most
four: none on one CPU, where a process would only add the round trip.

Nothing waits on a process for long or for good: a publish whose signatures have not come back
within :data:`SIGN_TIMEOUT_SECONDS` signs them on the event loop, and the process is killed if
it has answered nothing for that long (busy with other publishes' requests is not stuck); a
process that exits, or says anything but the ready frame and well-formed signatures, is
started again after a delay (1 s, doubling to 30 s, back to 1 s after a minute's good run),
and until then, or while none is running, envelopes are signed on the event loop, as with
``signing_processes = 0``. Subscription confirmations are always signed on the event loop.
RSA PKCS#1 v1.5 signatures are deterministic, so an envelope is the same bytes whichever
signs it. The processes are children of the broker's nursery task :meth:`EnvelopeSigning.run`:
the broker's stop closes their input, which ends them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Final

import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from broker.sns_sign_worker import (
    READ_BYTES,
    READY,
    REPLY_HEADER,
    FrameReader,
    key_frame,
    request_frame,
)
from monitoring.logging import EventLog
from proto.aws.sns_signature import Signer, sign

SIGN_TIMEOUT_SECONDS: Final = 5.0
STOP_TIMEOUT_SECONDS: Final = 2.0
FIRST_RESTART_DELAY_SECONDS: Final = 1.0
MAX_RESTART_DELAY_SECONDS: Final = 30.0
STEADY_SECONDS: Final = 60.0  # a process that ran this long restarts after the first delay again
MAX_AUTO_PROCESSES: Final = 4
_BASE64: Final = re.compile(rb"[A-Za-z0-9+/]+={0,2}")


def auto_processes() -> int:
    """What ``signing_processes = "auto"`` means here: the CPUs beyond the first, at most 4."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux, or a seccomp filter refuses the call
        cpus = os.cpu_count() or 1
    return min(max(cpus - 1, 0), MAX_AUTO_PROCESSES)


class _Waiter:
    """The signatures one publish asked a process for, as they come back."""

    __slots__ = ("done", "remaining", "signatures")

    def __init__(self, count: int) -> None:
        self.signatures = [""] * count  # "": not signed (yet); the publisher signs it itself
        self.remaining = count
        self.done = trio.Event()

    def reply(self, index: int, signature: str) -> None:
        self.signatures[index] = signature
        self.remaining -= 1
        if not self.remaining:
            self.done.set()


class _Garbled(Exception):
    """A signing process said something it may not: it is ended, never believed."""


class _Worker:
    """One running signing process and the replies it owes, in request order."""

    def __init__(
        self, process: trio.Process, replies: trio.lowlevel.FdStream, signature_length: int
    ) -> None:
        self.process = process
        self.replies = replies
        self.signature_length = signature_length  # of a base64 signature by the key
        self.owed: deque[tuple[_Waiter, int]] = deque()
        self.last_progress = trio.current_time()  # of the last reply, or since it was idle
        self._reader = FrameReader(REPLY_HEADER)
        self._outgoing = bytearray()
        self._ready = trio.Event()

    def submit(self, version: str, payloads: Sequence[bytes]) -> _Waiter:
        waiter = _Waiter(len(payloads))
        if not self.owed:  # idle until now: its stall clock starts here
            self.last_progress = trio.current_time()
        for index, payload in enumerate(payloads):
            self._outgoing += request_frame(version, payload)
            self.owed.append((waiter, index))
        self._ready.set()
        return waiter

    def stalled(self, limit: float) -> bool:
        """Whether it owes replies and has sent none for ``limit`` seconds (busy is not stalled)."""
        return bool(self.owed) and trio.current_time() - self.last_progress >= limit

    async def handshake(self, key_frame: bytes) -> bool:
        """Send the key; True once the process said :data:`READY`, False if it ended first.

        Raises:
            _Garbled: it said something else first.
        """
        stdin = self.process.stdin
        assert stdin is not None
        try:
            await stdin.send_all(key_frame)
        except trio.BrokenResourceError:
            return False  # it ended at once: its exit status says why
        frames: list[bytes] | None = []
        while frames == []:
            frames = await self._receive_frames()
        if frames is None:
            return False
        if frames != [READY.encode("ascii")]:
            raise _Garbled("its first reply is not the ready frame")
        return True

    async def _receive_frames(self) -> list[bytes] | None:
        """The reply frames one read completes (maybe none yet); None at the process's end."""
        data = await self.replies.receive_some(READ_BYTES)
        return self._reader.feed(data) if data else None

    async def write_forever(self) -> None:
        """Send what publishes submitted; those of the same moment go in one write."""
        stdin = self.process.stdin
        assert stdin is not None
        try:
            while True:
                await self._ready.wait()
                self._ready = trio.Event()
                data = bytes(self._outgoing)
                self._outgoing.clear()
                await stdin.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the process is gone: read_until_exit sees its end

    async def read_until_exit(self) -> str | None:
        """Hand each reply to the publish it belongs to, until the process ends (None) or
        says what it may not: a reply that is no signature by the key, or one nobody asked
        for (returned: what it said)."""
        owed = self.owed
        while True:
            frames = await self._receive_frames()
            if frames is None:
                return None
            if frames:
                self.last_progress = trio.current_time()
            for frame in frames:
                if not owed:
                    return "a reply nobody asked for"
                if frame and (
                    len(frame) != self.signature_length or _BASE64.fullmatch(frame) is None
                ):
                    return f"a reply of {len(frame)} bytes that is no signature"
                waiter, index = owed.popleft()
                waiter.reply(index, frame.decode("ascii"))

    def abandon(self) -> None:
        """Release every publish still waiting: they sign on the event loop."""
        for waiter, _ in self.owed:
            waiter.done.set()
        self.owed.clear()


class EnvelopeSigning:
    """Signs strings for the publisher, in signing processes when there are any."""

    def __init__(
        self,
        key: rsa.RSAPrivateKey,
        processes: int,
        log: EventLog,
        *,
        sign_timeout: float = SIGN_TIMEOUT_SECONDS,
    ) -> None:
        """Hold the key; nothing starts until :meth:`run` does and a publish signs.

        Args:
            key: the signing key (``SigningKeys.key``; every :class:`Signer` carries it).
            processes: signing processes to keep (0: sign on the event loop).
            log: the daemon's event log.
            sign_timeout: how long a publish waits for a process before signing itself.
        """
        self.key = key
        self.processes = processes
        self.log = log
        self.sign_timeout = sign_timeout
        self._key_pem = (
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            if processes
            else b""
        )
        # The program of a signing process, the reply descriptor appended (tests swap it).
        self.command = [sys.executable, "-P", "-m", "broker.sns_sign_worker"]
        size = (key.key_size + 7) // 8
        self._signature_length = 4 * ((size + 2) // 3)  # base64 of one signature
        self._workers: list[_Worker] = []
        self._wanted = trio.Event()
        self.signed_in_process = 0
        self.signed_on_loop = 0

    async def sign(self, signer: Signer, payloads: Sequence[bytes]) -> list[str]:
        """The base64 signatures of ``payloads`` by ``signer``, in order.

        Always a checkpoint: the publisher counts on it to queue its commit in a later step
        than its signing (see :meth:`broker.fanout.Fanout.publish`).
        """
        if not payloads:
            await trio.lowlevel.checkpoint()
            return []
        worker = min(self._workers, key=lambda each: len(each.owed), default=None)
        if worker is None or signer.key is not self.key:
            if self.processes:
                self._wanted.set()  # the first signature starts the processes
            signatures = self._sign_here(signer, payloads, [""] * len(payloads))
            await trio.lowlevel.checkpoint()
            return signatures
        waiter = worker.submit(signer.version, payloads)
        with trio.move_on_after(self.sign_timeout) as waited:
            await waiter.done.wait()
        # Waited too long: what is missing is signed here. The process is ended only if it
        # has answered nothing meanwhile; one that is busy with others' requests is not stuck.
        stuck = waited.cancelled_caught and worker.stalled(self.sign_timeout)
        if stuck and worker.process.returncode is None:
            self.log.error(
                "sns.signing_process_stalled",
                pid=worker.process.pid,
                silent_seconds=self.sign_timeout,
                consequence="killed and started again; its requests are signed on the event loop",
            )
            worker.process.kill()
        return self._sign_here(signer, payloads, list(waiter.signatures))  # late replies: theirs

    def _sign_here(self, signer: Signer, payloads: Sequence[bytes], made: list[str]) -> list[str]:
        """``made`` with every missing signature made on the event loop."""
        for index, signature in enumerate(made):
            if not signature:
                made[index] = sign(payloads[index], signer.key, signer.version)
                self.signed_on_loop += 1
            else:
                self.signed_in_process += 1
        return made

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep ``processes`` signing processes running from the first signature on."""
        async with trio.open_nursery() as nursery:
            for _ in range(self.processes):
                nursery.start_soon(self._keep_one_running)
            task_status.started()

    async def _keep_one_running(self) -> None:
        await self._wanted.wait()
        delay = FIRST_RESTART_DELAY_SECONDS
        while True:
            started = trio.current_time()
            try:
                await self._run_one()
            except Exception as error:
                # Could not start one (no memory, no processes left), or anything unforeseen:
                # the processes are an optimisation, never a reason for the broker to stop.
                self.log.error(
                    "sns.signing_process_failed",
                    reason=f"{type(error).__name__}: {error}",
                    consequence="envelopes are signed on the event loop until one starts",
                )
            if trio.current_time() - started >= STEADY_SECONDS:
                delay = FIRST_RESTART_DELAY_SECONDS
            await trio.sleep(delay)
            delay = min(delay * 2, MAX_RESTART_DELAY_SECONDS)

    async def _run_one(self) -> None:
        """Start one process, serve through it until it exits; stop it when cancelled."""
        worker = await self._spawn()
        process = worker.process
        garbled: str | None = None
        try:
            try:
                with trio.move_on_after(self.sign_timeout) as waited:
                    ready = await worker.handshake(key_frame(self._key_pem))
                if waited.cancelled_caught:
                    raise _Garbled(f"not ready within {self.sign_timeout:g} s")
                if ready:
                    self._workers.append(worker)
                    self.log.info("sns.signing_process_started", pid=process.pid)
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(worker.write_forever)
                        said = await worker.read_until_exit()
                        nursery.cancel_scope.cancel()
                    if said is not None:
                        raise _Garbled(said)
            except _Garbled as error:
                garbled = str(error)
                process.kill()
        finally:
            if worker in self._workers:
                self._workers.remove(worker)
            worker.abandon()
            with trio.CancelScope(shield=True):
                await _stop(process)
                await worker.replies.aclose()
        if garbled is not None:
            self.log.error(
                "sns.signing_process_garbled",
                pid=process.pid,
                reason=garbled,
                consequence="killed and started again; its requests are signed on the event loop",
            )
        else:
            self.log.warning(
                "sns.signing_process_exited",
                pid=process.pid,
                returncode=process.returncode,
                consequence="envelopes are signed on the event loop until it starts again",
            )

    async def _spawn(self) -> _Worker:
        """A new signing process: its input a pipe, its replies on a pipe of their own.

        ``-P``: the broker's working directory stays off its import path (a ``proto/`` there
        must not shadow the broker's). A session of its own: a terminal's signals stay away.
        """
        read_fd, write_fd = os.pipe()
        try:
            process = await trio.lowlevel.open_process(
                [*self.command, str(write_fd)],
                stdin=subprocess.PIPE,
                pass_fds=(write_fd,),
                start_new_session=True,
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        return _Worker(process, trio.lowlevel.FdStream(read_fd), self._signature_length)

    @property
    def pids(self) -> list[int]:
        """The running signing processes."""
        return [worker.process.pid for worker in self._workers]

    def collect(self) -> Iterable[Metric]:
        """The signing metrics (registered on the daemon's registry)."""
        signed = CounterMetricFamily(
            "wharf_sns_signatures",
            "Envelope signatures made, by where: a signing process or the event loop.",
            labels=["signer"],
        )
        signed.add_metric(["process"], self.signed_in_process)
        signed.add_metric(["event_loop"], self.signed_on_loop)
        running = GaugeMetricFamily(
            "wharf_sns_signing_processes",
            "Signing processes running (sns.signing_processes is how many to keep).",
            value=len(self._workers),
        )
        return [signed, running]


async def _stop(process: trio.Process) -> None:
    """End a signing process: its input closed, it exits; one that does not is killed."""
    if process.stdin is not None:
        await process.stdin.aclose()
    with trio.move_on_after(STOP_TIMEOUT_SECONDS):
        await process.wait()
    if process.returncode is None:
        process.kill()
        await process.wait()
