import base64
import hashlib
import hmac
import struct
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.model import signing as _signing
from broker.model.errors import RECEIPT_HANDLE_IS_INVALID, SqsError
from broker.model.signing import ReceiptHandle, Signer

KEY = b"0123456789abcdef0123456789abcdef"
SIGNER = Signer(KEY)
ids = st.integers(min_value=0, max_value=2**63 - 1)
serials = st.integers(min_value=0, max_value=2**32 - 1)
times = st.integers(min_value=0, max_value=2**48 - 1)  # ms: the year 10889


@given(ids, ids, serials, times)
def test_handles_round_trip(queue_id, seq, serial, received_at):
    handle = SIGNER.receipt_handle(queue_id, seq, serial, received_at)
    assert SIGNER.parse_receipt_handle(handle) == ReceiptHandle(queue_id, seq, serial, received_at)


@given(ids, ids, serials, times, st.data())
def test_any_tampering_is_rejected(queue_id, seq, serial, received_at, data):
    handle = SIGNER.receipt_handle(queue_id, seq, serial, received_at)
    position = data.draw(st.integers(min_value=0, max_value=len(handle) - 1))
    replacement = data.draw(st.characters(codec="ascii").filter(lambda c: c != handle[position]))
    tampered = handle[:position] + replacement + handle[position + 1 :]
    with pytest.raises(SqsError) as raised:
        SIGNER.parse_receipt_handle(tampered)
    assert raised.value.code == RECEIPT_HANDLE_IS_INVALID


@given(st.text(max_size=200))
def test_garbage_is_rejected_with_aws_message(text):
    with pytest.raises(SqsError) as raised:
        SIGNER.parse_receipt_handle(text)
    assert (
        raised.value.message == f'The input receipt handle "{text}" is not a valid receipt handle.'
    )


@given(ids, ids, serials, times)
def test_peeking_at_our_handles_reads_what_they_name(queue_id, seq, serial, received_at):
    handle = SIGNER.receipt_handle(queue_id, seq, serial, received_at)
    assert SIGNER.peek_receipt_handle(handle) == ReceiptHandle(queue_id, seq, serial, received_at)


@given(st.text(max_size=80))
def test_peeking_at_garbage_gives_nothing_or_a_name_without_raising(text):
    peeked = SIGNER.peek_receipt_handle(text)
    assert peeked is None or isinstance(peeked, ReceiptHandle)


def test_another_key_rejects_our_handles():
    other = Signer(b"another key of enough length!!")
    with pytest.raises(SqsError):
        other.parse_receipt_handle(SIGNER.receipt_handle(1, 2, 3, 4))


def test_short_keys_are_refused():
    with pytest.raises(ValueError, match="at least"):
        Signer(b"short")


def test_message_ids_are_stable_uuid4_shaped_and_distinct():
    first = SIGNER.message_id(1, 1)
    assert first == SIGNER.message_id(1, 1)
    assert first[14] == "4"
    assert len({SIGNER.message_id(q, s) for q in range(1, 20) for s in range(1, 50)}) == 19 * 49


@given(ids, ids)
def test_message_ids_are_what_uuid_renders_for_the_keyed_hash(queue_id, seq):
    # The id of a stored message is derived again after a restart: the rendering must not move.
    key = hashlib.sha256(b"wharf message id\0" + KEY).digest()
    digest = hashlib.blake2b(struct.pack(">QQ", queue_id, seq), key=key, digest_size=16).digest()
    assert SIGNER.message_id(queue_id, seq) == str(uuid.UUID(bytes=digest, version=4))


@given(ids, ids, serials, times)
def test_receipt_handles_carry_an_hmac_sha256_of_their_body(queue_id, seq, serial, received_at):
    handle = SIGNER.receipt_handle(queue_id, seq, serial, received_at)
    raw = base64.urlsafe_b64decode(handle + "=" * (-len(handle) % 4))
    body, mac = raw[:-16], raw[-16:]
    key = hashlib.sha256(b"wharf receipt handle\0" + KEY).digest()
    assert mac == hmac.digest(key, body, "sha256")[:16]


def _reference_decode(handle: str) -> bytes | None:
    """What handles decoded to before binascii was called directly (base64's wrappers)."""
    if len(handle) > 1024 or not handle.isascii():
        return None
    try:
        raw = base64.urlsafe_b64decode(handle + "=" * (-len(handle) % 4))
    except ValueError:
        return None
    if base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=") != handle:
        return None
    return raw


@given(ids, ids, serials, st.data())
def test_handles_decode_as_base64url_did_character_for_character(queue_id, seq, serial, data):
    handle = SIGNER.receipt_handle(queue_id, seq, serial, data.draw(times))
    assert handle == base64.urlsafe_b64encode(_signing._decode(handle) or b"").decode().rstrip("=")
    # Any text, and the handle with one character replaced (padding, the other alphabet,
    # characters base64 would skip): accepted and decoded exactly when base64url did.
    position = data.draw(st.integers(min_value=0, max_value=len(handle) - 1))
    character = data.draw(st.sampled_from("A_-+/= .\n\u00e9") | st.characters())
    for text in (handle[:position] + character + handle[position + 1 :], data.draw(st.text())):
        assert _signing._decode(text) == _reference_decode(text)


@given(ids, ids, serials, times, times)
def test_receives_at_different_times_issue_different_handles(queue_id, seq, serial, first, then):
    # A receive a crash forgot is made again after the restart with the same serial: the
    # two consumers must not hold the same handle (AWS: a different handle every receive).
    handles = {SIGNER.receipt_handle(queue_id, seq, serial, t) for t in (first, then)}
    assert len(handles) == len({first, then})


def _legacy_handle(body: bytes) -> str:
    key = hashlib.sha256(b"wharf receipt handle\0" + KEY).digest()
    return (
        base64.urlsafe_b64encode(body + hmac.digest(key, body, "sha256")[:16]).decode().rstrip("=")
    )


@given(ids, ids, serials)
def test_version_1_handles_issued_before_runs_are_still_read(queue_id, seq, serial):
    handle = _legacy_handle(struct.pack(">BQQI", 1, queue_id, seq, serial))
    assert SIGNER.parse_receipt_handle(handle) == ReceiptHandle(queue_id, seq, serial)
    assert SIGNER.peek_receipt_handle(handle) is None  # not one this version issues


@given(ids, ids, serials, st.binary(min_size=6, max_size=6))
def test_version_2_handles_with_a_run_are_still_read(queue_id, seq, serial, run):
    handle = _legacy_handle(struct.pack(">BQQI6s", 2, queue_id, seq, serial, run))
    assert SIGNER.parse_receipt_handle(handle) == ReceiptHandle(queue_id, seq, serial)
    assert SIGNER.peek_receipt_handle(handle) is None
