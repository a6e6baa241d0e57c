import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.model.errors import SqsError
from broker.model.names import (
    FIFO_NAME_RULE,
    STANDARD_NAME_RULE,
    QueueArn,
    parse_queue_arn,
    validate_fifo_id,
    validate_queue_name,
)


@pytest.mark.parametrize("name", ["a", "orders", "A_b-9", "x" * 80])
def test_valid_standard_names(name):
    validate_queue_name(name, fifo=False)


@pytest.mark.parametrize("name", ["", "x" * 81, "a.fifo", "a b", "/my/q", "ä"])
def test_invalid_standard_names(name):
    with pytest.raises(SqsError) as raised:
        validate_queue_name(name, fifo=False)
    assert raised.value.message == STANDARD_NAME_RULE


@pytest.mark.parametrize("name", ["a.fifo", "x" * 75 + ".fifo"])
def test_valid_fifo_names(name):
    validate_queue_name(name, fifo=True)


@pytest.mark.parametrize("name", ["a", ".fifo", "x" * 76 + ".fifo", "a.FIFO", "a.b.fifo"])
def test_invalid_fifo_names(name):
    with pytest.raises(SqsError) as raised:
        validate_queue_name(name, fifo=True)
    assert raised.value.message == FIFO_NAME_RULE


@given(st.text(max_size=90))
def test_name_rules_never_crash_and_fifo_needs_suffix(name):
    try:
        validate_queue_name(name, fifo=True)
    except SqsError:
        pass
    else:
        assert name.endswith(".fifo")
        assert len(name) <= 80


def test_fifo_ids():
    validate_fifo_id("g-1!~", "MessageGroupId")
    validate_fifo_id("x" * 128, "MessageGroupId")
    for bad in ["", "x" * 129, "a b", "é"]:
        with pytest.raises(SqsError) as raised:
            validate_fifo_id(bad, "MessageGroupId")
        assert raised.value.message.startswith(f"Value {bad} for parameter MessageGroupId")


def test_queue_arns():
    assert parse_queue_arn("arn:aws:sqs:us-east-1:123456789012:q.fifo") == QueueArn(
        "aws", "us-east-1", "123456789012", "q.fifo"
    )
    assert parse_queue_arn("dummy") is None
    assert parse_queue_arn("arn:aws:sns:us-east-1:123456789012:t") is None
