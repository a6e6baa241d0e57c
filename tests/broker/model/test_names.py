import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.model.errors import QUEUE_DELETED_RECENTLY, SqsError
from broker.model.names import (
    FIFO_NAME_RULE,
    NAME_REUSE_DELAY_MS,
    QUEUE_DELETED_RECENTLY_MESSAGE,
    STANDARD_NAME_RULE,
    QueueArn,
    RecentlyDeleted,
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


# ---------------------------------------------------------------------- QueueDeletedRecently

T0 = 1_700_000_000_000


def test_a_deleted_name_is_blocked_for_60_seconds():
    deleted = RecentlyDeleted()
    deleted.check("orders", T0)  # never deleted: fine
    deleted.record("orders", T0)
    for now in (T0, T0 + 1, T0 + NAME_REUSE_DELAY_MS - 1):
        with pytest.raises(SqsError) as raised:
            deleted.check("orders", now)
        assert raised.value.code == QUEUE_DELETED_RECENTLY
        assert QUEUE_DELETED_RECENTLY == "AWS.SimpleQueueService.QueueDeletedRecently"
        assert raised.value.message == QUEUE_DELETED_RECENTLY_MESSAGE
        assert raised.value.status == 400
        assert raised.value.sender_fault
    deleted.check("orders", T0 + NAME_REUSE_DELAY_MS)
    deleted.check("other", T0 + 1)  # other names are not affected


def test_a_clock_that_steps_back_keeps_the_name_blocked():
    deleted = RecentlyDeleted()
    deleted.record("q", T0)
    with pytest.raises(SqsError):
        deleted.check("q", T0 - 5_000)


def test_a_second_deletion_restarts_the_window_and_old_entries_are_dropped():
    deleted = RecentlyDeleted(window_ms=1_000)
    deleted.record("a", T0)
    deleted.record("b", T0 + 500)
    deleted.record("a", T0 + 900)  # created again after 1 s in real life, deleted again
    assert len(deleted) == 2
    with pytest.raises(SqsError):
        deleted.check("a", T0 + 1_500)
    deleted.record("c", T0 + 1_600)  # "b" (T0 + 500) is past its window: forgotten
    assert len(deleted) == 2
    deleted.check("b", T0 + 1_600)


@given(
    st.lists(st.tuples(st.sampled_from("abcd"), st.integers(0, 5_000)), min_size=1, max_size=30),
    st.integers(0, 10_000),
)
def test_blocked_exactly_when_the_last_deletion_is_within_the_window(events, probe):
    window = 1_000
    deleted = RecentlyDeleted(window_ms=window)
    now = T0
    last: dict[str, int] = {}
    for name, step in events:
        now += step
        deleted.record(name, now)
        last[name] = now
    at = now + probe
    for name in "abcd":
        blocked = name in last and at - last[name] < window
        try:
            deleted.check(name, at)
        except SqsError:
            assert blocked
        else:
            assert not blocked
    assert len(deleted) <= len(last)
