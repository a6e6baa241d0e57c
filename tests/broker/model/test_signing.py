import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.model.errors import RECEIPT_HANDLE_IS_INVALID, SqsError
from broker.model.signing import ReceiptHandle, Signer

SIGNER = Signer(b"0123456789abcdef0123456789abcdef")
ids = st.integers(min_value=0, max_value=2**63 - 1)
serials = st.integers(min_value=0, max_value=2**32 - 1)


@given(ids, ids, serials)
def test_handles_round_trip(queue_id, seq, serial):
    handle = SIGNER.receipt_handle(queue_id, seq, serial)
    assert SIGNER.parse_receipt_handle(handle) == ReceiptHandle(queue_id, seq, serial)


@given(ids, ids, serials, st.data())
def test_any_tampering_is_rejected(queue_id, seq, serial, data):
    handle = SIGNER.receipt_handle(queue_id, seq, serial)
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


def test_another_key_rejects_our_handles():
    other = Signer(b"another key of enough length!!")
    with pytest.raises(SqsError):
        other.parse_receipt_handle(SIGNER.receipt_handle(1, 2, 3))


def test_short_keys_are_refused():
    with pytest.raises(ValueError, match="at least"):
        Signer(b"short")


def test_message_ids_are_stable_uuid4_shaped_and_distinct():
    first = SIGNER.message_id(1, 1)
    assert first == SIGNER.message_id(1, 1)
    assert first[14] == "4"
    assert len({SIGNER.message_id(q, s) for q in range(1, 20) for s in range(1, 50)}) == 19 * 49
