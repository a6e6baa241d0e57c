"""A signing process: SNS envelope signatures made on a spare core, off the broker's event loop.

An RSA-2048 signature is most of a standard-topic publish's CPU (bench/README.md, "SNS").
``cryptography`` releases the GIL while it signs, but a signing *thread* gets the GIL back only
when the event loop lets go of it: beside a busy loop it made about 600 signatures/s where it
makes 1,200 alone, and slowed the loop too. A process of its own shares nothing, so the broker
(:mod:`broker.sns_signing`) runs ``[sns] signing_processes`` of these, each started as
``python -P -m broker.sns_sign_worker REPLY_FD``, in a session of its own, with its stdin a pipe
from the broker and ``REPLY_FD`` a pipe back to it. Replies do not go to stdout: anything else
in the interpreter (a ``sitecustomize``, a warning) may write there.

The wire, both directions length-prefixed (the codec below, used by both ends):

- requests: a big-endian u32 length, then the frame. The first frame is the PEM private key;
  every later one is the SignatureVersion (one byte, ``1`` or ``2``) followed by the bytes
  to sign.
- replies: first :data:`READY`, once the key is loaded; then, in request order, a big-endian
  u16 length and the base64 signature; length 0 means the request could not be signed (an
  unknown version), and the broker signs it itself. The broker checks every reply (its length
  and alphabet) and ends a process that says anything else.

The process signs every request it has read before writing their replies in one write, so a
busy broker's requests travel in batches both ways. It ends at the end of its input: when the
broker closes the pipe, or dies.
"""

from __future__ import annotations

import os
import signal
import struct
import sys
from typing import Final

from proto.aws.sns_signature import SignatureError, load_signing_key, sign

REQUEST_HEADER: Final = struct.Struct(">I")
REPLY_HEADER: Final = struct.Struct(">H")
READ_BYTES: Final = 1 << 16
READY: Final = "wharf-sign-worker 1 ready"  # not base64: no signature can look like it


def request_frame(version: str, payload: bytes) -> bytes:
    """One signing request: the version byte and the bytes to sign, length-prefixed."""
    tag = version.encode("ascii")
    if len(tag) != 1:
        raise ValueError(f"a SignatureVersion is one character, got {version!r}")
    return REQUEST_HEADER.pack(len(payload) + 1) + tag + payload


def key_frame(pem: bytes) -> bytes:
    """The first request: the PEM key every later request is signed with."""
    return REQUEST_HEADER.pack(len(pem)) + pem


def reply_frame(signature: str) -> bytes:
    """One reply: a base64 signature, or ``""`` for a request that could not be signed."""
    data = signature.encode("ascii")
    return REPLY_HEADER.pack(len(data)) + data


class FrameReader:
    """Splits a byte stream into the length-prefixed frames of one direction."""

    def __init__(self, header: struct.Struct) -> None:
        self._header = header
        self._buffer = bytearray()

    def feed(self, data: bytes | bytearray) -> list[bytes]:
        """Take the bytes read; return every frame now complete, in order."""
        buffer = self._buffer
        buffer += data
        frames: list[bytes] = []
        start, size = 0, self._header.size
        while len(buffer) - start >= size:
            (length,) = self._header.unpack_from(buffer, start)
            end = start + size + length
            if end > len(buffer):
                break
            frames.append(bytes(buffer[start + size : end]))
            start = end
        del buffer[:start]
        return frames


def serve(read_fd: int, write_fd: int) -> int:
    """Sign requests from ``read_fd`` until it ends; return the process's exit status."""
    reader = FrameReader(REQUEST_HEADER)
    key = None
    while True:
        data = os.read(read_fd, READ_BYTES)
        if not data:
            return 0
        replies: list[bytes] = []
        for frame in reader.feed(data):
            if key is None:
                try:
                    key = load_signing_key(frame)
                except SignatureError as error:
                    print(f"wharf-broker signing process: {error}", file=sys.stderr)
                    return 2
                replies.append(reply_frame(READY))
                continue
            try:
                signature = sign(frame[1:], key, frame[:1].decode("ascii", "replace"))  # type: ignore[arg-type]
            except SignatureError:
                signature = ""
            replies.append(reply_frame(signature))
        if replies:
            _write_all(write_fd, b"".join(replies))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def main() -> int:
    # The broker stops it by closing its input, once it has taken back what it asked; a
    # session of its own keeps a terminal's Ctrl-C and hang-up away, and systemd's stop, sent
    # to every process of the unit, is the broker's to act on.
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, signal.SIG_IGN)
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        print("usage: python -m broker.sns_sign_worker REPLY_FD", file=sys.stderr)
        return 2
    try:
        return serve(sys.stdin.fileno(), int(sys.argv[1]))
    except BrokenPipeError:  # the broker went away while replies were on their way
        return 0


if __name__ == "__main__":
    sys.exit(main())
