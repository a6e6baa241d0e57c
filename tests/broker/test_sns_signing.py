"""Signing processes under the publisher: real child processes, killed and stalled on purpose."""

from __future__ import annotations

import base64
import io
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.lowlevel
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from broker.sns_signing import EnvelopeSigning, auto_processes
from monitoring.logging import EventLog
from proto.aws.sns_signature import Signer

PAYLOADS = [f"Message\nm{n}\nType\nNotification\n".encode() for n in range(40)]


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def signer(key: rsa.RSAPrivateKey, version: str = "1") -> Signer:
    return Signer(key, "http://b/cert.pem", version)  # type: ignore[arg-type]


def check(key: rsa.RSAPrivateKey, payloads: list[bytes], signatures: list[str]) -> None:
    assert len(signatures) == len(payloads)
    for payload, signature in zip(payloads, signatures, strict=True):
        key.public_key().verify(
            base64.b64decode(signature), payload, padding.PKCS1v15(), hashes.SHA1()
        )


class Running:
    def __init__(self, signing: EnvelopeSigning, out: io.StringIO) -> None:
        self.signing = signing
        self.out = out

    async def started(self) -> list[int]:
        """Sign once (which starts them) and wait until the processes run."""
        await self.signing.sign(signer(self.signing.key), PAYLOADS[:1])
        return await self.wait_for(lambda pids: len(pids) == self.signing.processes)

    async def wait_for(self, condition: object) -> list[int]:
        return await wait_for(self.signing, condition)


@pytest.fixture
async def running(key: rsa.RSAPrivateKey, request: pytest.FixtureRequest) -> AsyncIterator[Running]:
    options = getattr(request, "param", {})
    out = io.StringIO()
    signing = EnvelopeSigning(
        key,
        options.get("processes", 1),
        EventLog("broker", stream=out),
        sign_timeout=options.get("timeout", 5.0),
    )
    if "script" in options:  # a stand-in for the signing process (sys.argv[1]: the reply fd)
        signing.command = [sys.executable, "-c", options["script"]]
    async with trio.open_nursery() as nursery:
        await nursery.start(signing.run)
        yield Running(signing, out)
        nursery.cancel_scope.cancel()


async def test_signatures_come_from_a_process_and_verify(running: Running) -> None:
    (pid,) = await running.started()
    assert pid != os.getpid()
    signatures = await running.signing.sign(signer(running.signing.key), PAYLOADS)
    check(running.signing.key, PAYLOADS, signatures)
    assert running.signing.signed_in_process == len(PAYLOADS)
    assert running.signing.signed_on_loop == 1  # the first, before the process ran


@pytest.mark.parametrize("running", [{"processes": 2}], indirect=True)
async def test_concurrent_publishes_share_the_processes(running: Running) -> None:
    await running.started()
    results: dict[int, list[str]] = {}

    async def publish(number: int) -> None:
        results[number] = await running.signing.sign(
            signer(running.signing.key), PAYLOADS[number : number + 3]
        )

    async with trio.open_nursery() as nursery:
        for number in range(20):
            nursery.start_soon(publish, number)
    for number, signatures in results.items():
        check(running.signing.key, PAYLOADS[number : number + 3], signatures)
    assert running.signing.signed_on_loop == 1


@pytest.mark.parametrize("running", [{"processes": 0}], indirect=True)
async def test_none_configured_signs_on_the_event_loop(running: Running) -> None:
    signatures = await running.signing.sign(signer(running.signing.key), PAYLOADS[:3])
    check(running.signing.key, PAYLOADS[:3], signatures)
    await trio.sleep(0.2)
    assert running.signing.pids == []
    assert running.signing.signed_on_loop == 3


async def test_a_killed_process_loses_no_signature_and_is_started_again(running: Running) -> None:
    (pid,) = await running.started()
    results: list[list[str]] = []

    async def publish() -> None:
        results.append(await running.signing.sign(signer(running.signing.key), PAYLOADS))

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(publish)
        await trio.lowlevel.checkpoint()  # submitted, owed by the process
        os.kill(pid, signal.SIGKILL)
    assert len(results) == 5
    for signatures in results:
        check(running.signing.key, PAYLOADS, signatures)
    assert running.signing.signed_on_loop > 1  # what the dead process owed
    await running.wait_for(lambda pids: len(pids) == 1 and pids != [pid])
    assert "sns.signing_process_exited" in running.out.getvalue()
    signatures = await running.signing.sign(signer(running.signing.key), PAYLOADS[:2])
    check(running.signing.key, PAYLOADS[:2], signatures)


@pytest.mark.parametrize("running", [{"timeout": 0.5}], indirect=True)
async def test_a_stalled_process_is_waited_for_only_so_long_then_replaced(
    running: Running,
) -> None:
    (pid,) = await running.started()
    os.kill(pid, signal.SIGSTOP)
    with trio.fail_after(20):
        signatures = await running.signing.sign(signer(running.signing.key, "2"), PAYLOADS[:2])
    for payload, signature in zip(PAYLOADS[:2], signatures, strict=True):
        running.signing.key.public_key().verify(
            base64.b64decode(signature), payload, padding.PKCS1v15(), hashes.SHA256()
        )
    assert "sns.signing_process_stalled" in running.out.getvalue()
    (new_pid,) = await running.wait_for(lambda pids: pids and pids != [pid])
    assert new_pid != pid
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped


async def test_another_key_is_signed_on_the_event_loop(running: Running) -> None:
    await running.started()
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signatures = await running.signing.sign(signer(other), PAYLOADS[:2])
    check(other, PAYLOADS[:2], signatures)


async def test_the_processes_end_with_their_owner(key: rsa.RSAPrivateKey) -> None:
    signing = EnvelopeSigning(key, 2, EventLog("broker", stream=io.StringIO()))
    async with trio.open_nursery() as nursery:
        await nursery.start(signing.run)
        await signing.sign(signer(key), PAYLOADS[:1])
        pids = await wait_for(signing, lambda pids: len(pids) == 2)
        nursery.cancel_scope.cancel()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def wait_for(signing: EnvelopeSigning, condition: object) -> list[int]:
    """Poll the running processes' pids (child processes tell no event) until ``condition``."""
    with trio.fail_after(30):
        while not condition(signing.pids):  # type: ignore[operator]  # noqa: ASYNC110
            await trio.sleep(0.02)
    return signing.pids


@pytest.mark.parametrize(("cpus", "processes"), [(1, 0), (2, 1), (5, 4), (64, 4)])
def test_auto_is_the_cpus_beyond_the_first_at_most_four(
    monkeypatch: pytest.MonkeyPatch, cpus: int, processes: int
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)))
    assert auto_processes() == processes

    def refused(pid: int) -> set[int]:  # a seccomp filter: the CPU count stands in
        raise PermissionError

    monkeypatch.setattr(os, "sched_getaffinity", refused)
    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    assert auto_processes() == processes


STAND_IN = """
import os, sys, time
from broker.sns_sign_worker import READY, REQUEST_HEADER, FrameReader, reply_frame
from proto.aws.sns_signature import load_signing_key, sign
replies, reader, key = int(sys.argv[1]), FrameReader(REQUEST_HEADER), None
while data := os.read(0, 65536):
    for frame in reader.feed(data):
        if key is None:
            key = load_signing_key(frame)
            os.write(replies, reply_frame(READY))
            continue
        os.write(replies, reply_frame(REPLY(frame[1:], key, frame[:1].decode())))
"""


@pytest.mark.parametrize(
    "running", [{"script": "REPLY = lambda *_: 'c2lnbmF0dXJl'\n" + STAND_IN}], indirect=True
)
async def test_a_process_whose_replies_are_no_signatures_is_not_believed(running: Running) -> None:
    # Replies are matched to requests by their order alone: one that is not a signature of the
    # key's length means the stream cannot be trusted, so the process is ended.
    (pid,) = await running.started()
    signatures = await running.signing.sign(signer(running.signing.key), PAYLOADS[:3])
    check(running.signing.key, PAYLOADS[:3], signatures)
    assert running.signing.signed_in_process == 0
    await logged(running, "sns.signing_process_garbled")
    assert "a reply of 12 bytes that is no signature" in running.out.getvalue()
    assert pid not in running.signing.pids


@pytest.mark.parametrize(
    "running",
    [{"script": "import time\ntime.sleep(60)", "timeout": 0.3}],
    indirect=True,
)
async def test_a_process_that_never_says_it_is_ready_is_ended(running: Running) -> None:
    signatures = await running.signing.sign(signer(running.signing.key), PAYLOADS[:2])
    check(running.signing.key, PAYLOADS[:2], signatures)
    await logged(running, "not ready within 0.3 s")
    assert running.signing.pids == []


@pytest.mark.parametrize(
    "running",
    [{"script": "REPLY = lambda *a: (time.sleep(0.05), sign(*a))[1]\n" + STAND_IN, "timeout": 0.5}],
    indirect=True,
)
async def test_a_busy_process_is_not_taken_for_a_stalled_one(running: Running) -> None:
    # 30 signatures at 50 ms each outlast the publish's 0.5 s: it signs the rest itself, but
    # the process kept answering, so it is kept.
    (pid,) = await running.started()
    signatures = await running.signing.sign(signer(running.signing.key), PAYLOADS[:30])
    check(running.signing.key, PAYLOADS[:30], signatures)
    assert 0 < running.signing.signed_in_process < 30
    await trio.sleep(2)  # the rest of its replies, late and unused
    assert running.signing.pids == [pid]
    assert "stalled" not in running.out.getvalue()
    before = running.signing.signed_in_process
    signatures = await running.signing.sign(signer(running.signing.key), PAYLOADS[:1])
    check(running.signing.key, PAYLOADS[:1], signatures)
    assert running.signing.signed_in_process == before + 1


async def test_output_of_the_interpreter_does_not_reach_the_replies(
    key: rsa.RSAPrivateKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A sitecustomize printing to stdout (non-ASCII too) stopped the broker when replies
    # shared stdout; they have a pipe of their own now.
    (tmp_path / "sitecustomize.py").write_text('print("\\u00e9\\n")\n')
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    signing = EnvelopeSigning(key, 1, EventLog("broker", stream=io.StringIO()))
    async with trio.open_nursery() as nursery:
        await nursery.start(signing.run)
        await signing.sign(signer(key), PAYLOADS[:1])
        await wait_for(signing, lambda pids: len(pids) == 1)
        signatures = await signing.sign(signer(key), PAYLOADS)
        check(key, PAYLOADS, signatures)
        assert signing.signed_in_process == len(PAYLOADS)
        nursery.cancel_scope.cancel()


async def logged(running: Running, text: str) -> None:
    """Poll the event log (a StringIO: nothing to wait on) until ``text`` is in it."""
    with trio.fail_after(20):
        while text not in running.out.getvalue():  # noqa: ASYNC110
            await trio.sleep(0.02)
