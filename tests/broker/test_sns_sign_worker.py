"""The signing process: its frame codec, and the process itself driven over real pipes."""

from __future__ import annotations

import base64
import signal
import struct
import subprocess
import sys
import time

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hypothesis import given
from hypothesis import strategies as st

from broker.sns_sign_worker import (
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


def run_worker(stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(WORKER, input=stdin, capture_output=True, timeout=60, check=False)


def test_the_process_signs_what_it_is_sent_in_order(key: rsa.RSAPrivateKey) -> None:
    # Checked with cryptography's own verify of PKCS#1 v1.5: SHA-1 for version 1, SHA-256 for 2.
    requests = [("1", b"first"), ("2", b"second"), ("2", "\u00e9t\u00e9".encode()), ("1", b"")]
    stdin = key_frame(pem(key)) + b"".join(request_frame(v, p) for v, p in requests)
    done = run_worker(stdin)
    assert done.returncode == 0, done.stderr
    frames = FrameReader(REPLY_HEADER).feed(done.stdout)
    assert len(frames) == len(requests)
    for (version, payload), frame in zip(requests, frames, strict=True):
        algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
        key.public_key().verify(base64.b64decode(frame), payload, padding.PKCS1v15(), algorithm)


def test_an_unknown_version_gets_an_empty_reply_and_the_next_is_signed(
    key: rsa.RSAPrivateKey,
) -> None:
    stdin = key_frame(pem(key)) + request_frame("9", b"x") + request_frame("1", b"y")
    done = run_worker(stdin)
    assert done.returncode == 0
    empty, signed = FrameReader(REPLY_HEADER).feed(done.stdout)
    assert empty == b""
    key.public_key().verify(base64.b64decode(signed), b"y", padding.PKCS1v15(), hashes.SHA1())


def test_a_key_it_cannot_load_ends_it_with_status_2_and_says_why() -> None:
    done = run_worker(key_frame(b"not a key") + request_frame("1", b"y"))
    assert done.returncode == 2
    assert done.stdout == b""
    assert b"cannot load the signing key" in done.stderr


def test_the_end_of_its_input_ends_it() -> None:
    done = run_worker(b"")
    assert (done.returncode, done.stdout) == (0, b"")


def test_group_signals_leave_it_to_the_broker_which_ends_it_by_closing_its_input(
    key: rsa.RSAPrivateKey,
) -> None:
    # systemd's stop and a Ctrl-C reach the whole process group: the broker, draining, may
    # still need signatures, and closes the pipe when it does not.
    process = subprocess.Popen(WORKER, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert process.stdin is not None
        assert process.stdout is not None
        process.stdin.write(key_frame(pem(key)))

        def signs(payload: bytes) -> None:
            process.stdin.write(request_frame("1", payload))  # type: ignore[union-attr]
            process.stdin.flush()  # type: ignore[union-attr]
            (size,) = REPLY_HEADER.unpack(process.stdout.read(REPLY_HEADER.size))  # type: ignore[union-attr]
            signature = base64.b64decode(process.stdout.read(size))  # type: ignore[union-attr]
            key.public_key().verify(signature, payload, padding.PKCS1v15(), hashes.SHA1())

        signs(b"serving")  # its signal handlers are set before it reads
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
        process.stdout.close()  # type: ignore[union-attr]
