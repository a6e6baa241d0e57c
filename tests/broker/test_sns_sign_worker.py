"""The signing process: its frame codec, and the process itself driven over real pipes."""

from __future__ import annotations

import base64
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hypothesis import given
from hypothesis import strategies as st

from broker.sns_sign_worker import (
    READ_BYTES,
    READY,
    REPLY_HEADER,
    REQUEST_HEADER,
    FrameReader,
    key_frame,
    reply_frame,
    request_frame,
)

WORKER = [sys.executable, "-m", "broker.sns_sign_worker"]


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@given(
    payloads=st.lists(st.binary(max_size=300), max_size=12),
    cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=10),
)
def test_requests_come_out_as_sent_however_the_stream_is_cut(
    payloads: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(request_frame("2", payload) for payload in payloads)
    reader = FrameReader(REQUEST_HEADER)
    frames: list[bytes] = []
    start = 0
    for cut in [*sorted(min(cut, len(stream)) for cut in cuts), len(stream)]:
        frames += reader.feed(stream[start:cut])
        start = cut
    assert frames == [b"2" + payload for payload in payloads]


@given(st.lists(st.text(alphabet="ABCxyz+/=", max_size=400), max_size=8))
def test_replies_round_trip(signatures: list[str]) -> None:
    reader = FrameReader(REPLY_HEADER)
    frames: list[bytes] = []
    for byte in b"".join(reply_frame(signature) for signature in signatures):
        frames += reader.feed(bytes([byte]))
    assert [frame.decode() for frame in frames] == signatures


def test_the_header_is_big_endian_and_counts_the_version_byte() -> None:
    assert request_frame("1", b"abc") == struct.pack(">I", 4) + b"1abc"
    assert key_frame(b"k") == b"\x00\x00\x00\x01k"
    assert reply_frame("s") == b"\x00\x01s"


class Spawned:
    """A signing process started as the broker starts it: replies on a pipe of their own."""

    def __init__(self, **options: object) -> None:
        read_fd, write_fd = os.pipe()
        self.process = subprocess.Popen(
            [*WORKER, str(write_fd)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(write_fd,),
            **options,  # type: ignore[arg-type]
        )
        os.close(write_fd)
        self.replies = os.fdopen(read_fd, "rb")

    def run(self, stdin: bytes) -> tuple[int, list[bytes], bytes, bytes]:
        """Send ``stdin``, close it; (status, reply frames, stdout, stderr) once it ended."""
        stdout, stderr = self.process.communicate(stdin, timeout=60)
        with self.replies:
            frames = FrameReader(REPLY_HEADER).feed(self.replies.read())
        return self.process.returncode, frames, stdout, stderr


def test_the_process_signs_what_it_is_sent_in_order(key: rsa.RSAPrivateKey) -> None:
    # Checked with cryptography's own verify of PKCS#1 v1.5: SHA-1 for version 1, SHA-256 for 2.
    requests = [("1", b"first"), ("2", b"second"), ("2", "\u00e9t\u00e9".encode()), ("1", b"")]
    stdin = key_frame(pem(key)) + b"".join(request_frame(v, p) for v, p in requests)
    status, frames, _, stderr = Spawned().run(stdin)
    assert status == 0, stderr
    assert frames[0] == READY.encode()  # once the key is loaded
    assert len(frames) == 1 + len(requests)
    for (version, payload), frame in zip(requests, frames[1:], strict=True):
        algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
        key.public_key().verify(base64.b64decode(frame), payload, padding.PKCS1v15(), algorithm)


def test_an_unknown_version_gets_an_empty_reply_and_the_next_is_signed(
    key: rsa.RSAPrivateKey,
) -> None:
    stdin = key_frame(pem(key)) + request_frame("9", b"x") + request_frame("1", b"y")
    status, frames, _, _ = Spawned().run(stdin)
    assert status == 0
    _, empty, signed = frames
    assert empty == b""
    key.public_key().verify(base64.b64decode(signed), b"y", padding.PKCS1v15(), hashes.SHA1())


def test_a_key_it_cannot_load_ends_it_with_status_2_and_says_why() -> None:
    status, frames, _, stderr = Spawned().run(key_frame(b"not a key") + request_frame("1", b"y"))
    assert status == 2
    assert frames == []  # not even the ready frame
    assert b"cannot load the signing key" in stderr


def test_the_end_of_its_input_ends_it() -> None:
    status, frames, _, _ = Spawned().run(b"")
    assert (status, frames) == (0, [])


def test_what_else_writes_to_its_stdout_stays_out_of_the_replies(
    key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    # A sitecustomize (or a warning) printing to stdout once garbled the replies, which then
    # shared stdout: now they have a pipe of their own.
    (tmp_path / "sitecustomize.py").write_text('print("\\u00e9 hello from site")\n')
    environment = {**os.environ, "PYTHONPATH": str(tmp_path)}
    status, frames, stdout, _ = Spawned(env=environment).run(
        key_frame(pem(key)) + request_frame("1", b"z")
    )
    assert status == 0
    assert "hello from site" in stdout.decode()
    ready, signed = frames
    assert ready == READY.encode()
    key.public_key().verify(base64.b64decode(signed), b"z", padding.PKCS1v15(), hashes.SHA1())


def test_the_signals_of_a_stop_leave_it_to_the_broker_which_ends_it_by_closing_its_input(
    key: rsa.RSAPrivateKey,
) -> None:
    # systemd's stop reaches every process of the unit: the broker, draining, may still need
    # signatures, and closes the pipe when it does not.
    spawned = Spawned()
    process = spawned.process
    try:
        assert process.stdin is not None
        process.stdin.write(key_frame(pem(key)))
        reader = FrameReader(REPLY_HEADER)

        def next_frame() -> bytes:
            frames: list[bytes] = []
            while not frames:
                frames = reader.feed(spawned.replies.read1(READ_BYTES))
            return frames[0]

        def signs(payload: bytes) -> None:
            process.stdin.write(request_frame("1", payload))  # type: ignore[union-attr]
            process.stdin.flush()  # type: ignore[union-attr]
            signature = base64.b64decode(next_frame())
            key.public_key().verify(signature, payload, padding.PKCS1v15(), hashes.SHA1())

        process.stdin.flush()
        assert next_frame() == READY.encode()  # its signal handlers are set before it reads
        for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            process.send_signal(number)
        time.sleep(0.2)
        signs(b"still here")
        process.stdin.close()
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr, spawned.replies):
            stream.close()  # type: ignore[union-attr]
