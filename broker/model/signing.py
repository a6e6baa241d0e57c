"""Receipt handles and message ids, both derived from a server key.

A receipt handle is ``base64url(version | queue id | message seq | receive serial | receive
time | MAC)``. The MAC (HMAC-SHA256, truncated to 128 bits) makes handles unforgeable, so a
garbled or invented handle is refused without a lookup, and the serial (the message's receive
count when the handle was issued) tells a stale handle from the current one.

The receive time (milliseconds, 48 bits) tells apart two receives with the same serial. A
standard queue's first receive of a message is recorded write-behind, so a crash can forget
it: the message is received again after the restart with the same serial. The two
consumers' handles still differ (AWS: "If you receive the same message more than once, you
will get a different ReceiptHandle each time"), and since the store keeps the time of the
receive it knows, the forgotten receive's handle is refused by every later run too, not only
by the one that made the second receive. Version 2 handles carried a random per-process run
in that place instead (which a restart forgot), version 1 nothing: both are still read, and
count as current only for a receive this process did not make (one restored from the store).

Message ids are UUID-shaped keyed hashes of (queue id, seq): unique per broker because queue
ids and seqs are never reused (a restore moves them past what it lost:
broker.store.sqlite_backup.advance_sequences), and free to keep in memory, since they can be
recomputed.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import struct

import msgspec

from broker.model.errors import RECEIPT_HANDLE_IS_INVALID, SqsError

MIN_KEY_BYTES = 16  # a shorter key would make the MAC guessable
_VERSION = 3
_VERSION_WITH_RUN = 2
_BODY = struct.Struct(">BQQI6s")  # version, queue id, seq, receive serial, receive time
_BODY_V1 = struct.Struct(">BQQI")  # version 1: no receive time
_TIME_BYTES = 6  # the receive time in ms; version 2: the issuing process's random run
_IDS = struct.Struct(">QQ")  # queue id, seq: what a message id is derived from
_MAC_BYTES = 16
_SHA256_BLOCK = 64  # the key of an HMAC-SHA256 is padded to one block (32-byte keys here)
_HANDLE_BYTES = _BODY.size + _MAC_BYTES
_HANDLE_BYTES_V1 = _BODY_V1.size + _MAC_BYTES
# Base64 without padding: the handle's characters, and those of its body (27 bytes, a whole
# number of 3-byte groups, so the body's characters do not depend on the MAC).
_HANDLE_CHARS = (_HANDLE_BYTES * 4 + 2) // 3
_BODY_CHARS = _BODY.size * 4 // 3
_MAX_HANDLE_CHARS = 1024  # far above ours; bounds the work spent on garbage
_TO_STANDARD = bytes.maketrans(b"-_", b"+/")  # base64url -> base64
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")
# A hex digit with its top two bits made 10, the RFC 4122 variant (0 -> 8, 5 -> 9, f -> b).
_VARIANT_DIGIT = {f"{n:x}": f"{n & 0x3 | 0x8:x}" for n in range(16)}


class ReceiptHandle(msgspec.Struct, frozen=True):
    """What a receipt handle names: one receive of one message (a struct: made per delete,
    where a NamedTuple's ``__new__`` is a Python call)."""

    queue_id: int
    seq: int
    serial: int
    received_at: int | None = None  # ms; None in a version 1 or 2 handle


class Signer:
    """Issues and checks receipt handles and derives message ids from one server key."""

    def __init__(self, key: bytes) -> None:
        """Keep the key.

        Args:
            key: the server secret; the same key must be used across restarts, or handles
                issued before the restart become invalid.

        Raises:
            ValueError: the key is shorter than ``MIN_KEY_BYTES``.
        """
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"the server key needs at least {MIN_KEY_BYTES} bytes")
        mac_key = hashlib.sha256(b"wharf receipt handle\0" + key).digest()
        # HMAC-SHA256 (RFC 2104) with the padded keys hashed once: each MAC then costs two
        # copies of a hash state, where hmac.digest() set OpenSSL's up afresh every time.
        block = mac_key.ljust(_SHA256_BLOCK, b"\0")
        self._mac_inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._mac_outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))
        self._id_key = hashlib.sha256(b"wharf message id\0" + key).digest()
        # Keyed BLAKE2b with the key block absorbed once: each id copies it (a fan-out to N
        # queues derives N ids per publish).
        self._id_hash = hashlib.blake2b(key=self._id_key, digest_size=16)

    def _mac(self, body: bytes) -> bytes:
        inner = self._mac_inner.copy()
        inner.update(body)
        outer = self._mac_outer.copy()
        outer.update(inner.digest())
        return outer.digest()[:_MAC_BYTES]

    def receipt_handle(self, queue_id: int, seq: int, serial: int, received_at: int) -> str:
        """Issue the handle for the ``serial``-th receive of message ``seq``, made at
        ``received_at`` (ms)."""
        body = _BODY.pack(_VERSION, queue_id, seq, serial, received_at.to_bytes(_TIME_BYTES))
        encoded = binascii.b2a_base64(body + self._mac(body), newline=False)
        return encoded.translate(_TO_URLSAFE).rstrip(b"=").decode("ascii")

    def parse_receipt_handle(self, handle: str) -> ReceiptHandle:
        """Check a handle's MAC and return what it names.

        Args:
            handle: the handle as the client sent it.

        Returns:
            The queue id, message seq, receive serial and receive time.

        Raises:
            SqsError: ``ReceiptHandleIsInvalid`` for anything this server did not issue.
        """
        raw = _decode(handle)
        if raw is None or len(raw) not in (_HANDLE_BYTES, _HANDLE_BYTES_V1):
            raise invalid_receipt_handle(handle)
        size = len(raw) - _MAC_BYTES
        body, mac = raw[:size], raw[size:]
        expected = self._mac(body)
        if not hmac.compare_digest(mac, expected):
            raise invalid_receipt_handle(handle)
        if size == _BODY_V1.size:
            version, queue_id, seq, serial = _BODY_V1.unpack(body)
            if version != 1:
                raise invalid_receipt_handle(handle)
            return ReceiptHandle(queue_id, seq, serial)
        version, queue_id, seq, serial, time = _BODY.unpack(body)
        if version == _VERSION:
            return ReceiptHandle(queue_id, seq, serial, int.from_bytes(time))
        if version != _VERSION_WITH_RUN:
            raise invalid_receipt_handle(handle)
        return ReceiptHandle(queue_id, seq, serial)

    def peek_receipt_handle(self, handle: str) -> ReceiptHandle | None:
        """What a handle of ours would name, unchecked: None if it cannot be one of ours.

        Only for finding the handle issued for that message and comparing it with ``handle``:
        an equal string is that handle. Anything else needs :meth:`parse_receipt_handle`.
        """
        if len(handle) != _HANDLE_CHARS:
            return None
        try:
            raw = binascii.a2b_base64(handle[:_BODY_CHARS].encode("ascii").translate(_TO_STANDARD))
        except ValueError:  # not ASCII, or not base64
            return None
        if len(raw) != _BODY.size:
            return None
        version, queue_id, seq, serial, time = _BODY.unpack(raw)
        if version != _VERSION:
            return None
        return ReceiptHandle(queue_id, seq, serial, int.from_bytes(time))

    def message_id(self, queue_id: int, seq: int) -> str:
        """Derive the MessageId of message ``seq`` of queue ``queue_id``.

        The keyed hash, with the version (4) and variant (RFC 4122) bits set, written as a
        UUID: what ``str(uuid.UUID(bytes=digest, version=4))`` returns, without building one.
        """
        digest = self._id_hash.copy()
        digest.update(_IDS.pack(queue_id, seq))
        # The bits set on the hex digits rather than on the bytes: a sixth fewer instructions
        # than a bytearray of the digest (a fan-out derives an id per copy).
        text = digest.hexdigest()
        return (
            f"{text[:8]}-{text[8:12]}-4{text[13:16]}-"  # version 4 (the 13th digit)
            f"{_VARIANT_DIGIT[text[16]]}{text[17:20]}-{text[20:]}"  # variant RFC 4122
        )


def _decode(handle: str) -> bytes | None:
    if len(handle) > _MAX_HANDLE_CHARS or not handle.isascii():
        return None
    text = handle.encode("ascii")
    try:
        # binascii directly: base64.urlsafe_b64decode is the same call behind two wrappers.
        raw = binascii.a2b_base64(text.translate(_TO_STANDARD) + b"=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    # Only the canonical spelling is ours: decoding skips characters outside the alphabet and
    # ignores some low bits of the last one, and a handle that differs from the one issued
    # must not be accepted.
    if binascii.b2a_base64(raw, newline=False).translate(_TO_URLSAFE).rstrip(b"=") != text:
        return None
    return raw


def invalid_receipt_handle(handle: str) -> SqsError:
    """Build AWS's error for a handle that is not one of ours."""
    return SqsError(
        RECEIPT_HANDLE_IS_INVALID,
        f'The input receipt handle "{handle}" is not a valid receipt handle.',
    )
