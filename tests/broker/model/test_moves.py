import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.model.errors import SqsError
from broker.model.moves import (
    BATCH,
    MoveStatus,
    MoveTask,
    MoveTaskBook,
    RateLimiter,
    check_list_limit,
    check_rate,
    decode_task_handle,
    encode_task_handle,
)

SOURCE = "arn:aws:sqs:us-east-1:000000000000:dlq"
DESTINATION = "arn:aws:sqs:us-east-1:000000000000:work"


def task(source=SOURCE, **fields):
    values = {
        "task_id": str(uuid.uuid4()),
        "source_arn": source,
        "destination_arn": None,
        "max_per_second": None,
        "started_at": 1_700_000_000_000,
        "to_move": 3,
    }
    values.update(fields)
    return MoveTask(**values)


# ---------------------------------------------------------------------- the state machine


def test_a_task_completes_or_is_cancelled():
    done = task()
    done.record_moved(3)
    done.finish()
    assert done.status is MoveStatus.COMPLETED
    assert not done.active

    cancelled = task()
    cancelled.request_cancel()
    assert cancelled.status is MoveStatus.CANCELLING
    assert cancelled.active  # still the source's active task until the runner stops
    cancelled.finish()
    assert cancelled.status is MoveStatus.CANCELLED


def test_only_a_running_task_can_be_cancelled():
    finished = task()
    finished.finish()
    with pytest.raises(SqsError, match="RUNNING") as info:
        finished.request_cancel()
    assert info.value.code == "InvalidParameterValue"
    cancelling = task()
    cancelling.request_cancel()
    with pytest.raises(SqsError):
        cancelling.request_cancel()


def test_failure_keeps_its_reason_and_ends_the_task():
    failing = task()
    failing.request_cancel()
    failing.fail("AWS.SimpleQueueService.NonExistentQueue")
    assert failing.status is MoveStatus.FAILED
    assert failing.entry()["FailureReason"] == "AWS.SimpleQueueService.NonExistentQueue"
    with pytest.raises(ValueError, match="cannot fail"):
        failing.fail("again")
    with pytest.raises(ValueError, match="cannot finish"):
        failing.finish()
    with pytest.raises(ValueError, match="un-move"):
        failing.record_moved(-1)


def test_the_entry_shows_what_aws_shows():
    running = task(destination_arn=DESTINATION, max_per_second=5)
    running.record_moved(2)
    assert running.entry() == {
        "SourceArn": SOURCE,
        "DestinationArn": DESTINATION,
        "Status": "RUNNING",
        "TaskHandle": running.handle,
        "StartedTimestamp": 1_700_000_000_000,
        "MaxNumberOfMessagesPerSecond": 5,
        "ApproximateNumberOfMessagesMoved": 2,
        "ApproximateNumberOfMessagesToMove": 3,
    }
    running.finish()
    entry = running.entry()
    assert "TaskHandle" not in entry  # only a running task can be cancelled
    assert entry["Status"] == "COMPLETED"
    assert "DestinationArn" not in task().entry()
    assert "MaxNumberOfMessagesPerSecond" not in task().entry()


transitions = st.lists(st.sampled_from(["cancel", "finish", "fail", "move"]), max_size=8)


@given(transitions)
def test_any_sequence_of_events_follows_the_diagram(events):
    """Whatever the runner and the API do, the status only moves along the diagram."""
    allowed = {
        MoveStatus.RUNNING: {MoveStatus.CANCELLING, MoveStatus.COMPLETED, MoveStatus.FAILED},
        MoveStatus.CANCELLING: {MoveStatus.CANCELLED, MoveStatus.FAILED},
    }
    subject = task()
    for event in events:
        before = subject.status
        try:
            if event == "cancel":
                subject.request_cancel()
            elif event == "finish":
                subject.finish()
            elif event == "fail":
                subject.fail("InternalFailure")
            else:
                subject.record_moved(1)
        except (SqsError, ValueError):
            assert subject.status is before  # a refused event changes nothing
            continue
        if subject.status is not before:
            assert subject.status in allowed.get(before, set())
        assert (subject.failure_reason is not None) == (subject.status is MoveStatus.FAILED)


# ---------------------------------------------------------------------- the book


def test_one_active_task_per_source():
    book = MoveTaskBook()
    first = task()
    book.add(first)
    with pytest.raises(SqsError, match="already a task running"):
        book.add(task())
    book.add(task(source=DESTINATION))  # another source is independent
    first.request_cancel()
    with pytest.raises(SqsError):
        book.add(task())  # CANCELLING is still active
    first.finish()
    book.add(task())
    assert [t.source_arn for t in book.active()] == [SOURCE, DESTINATION]


def test_the_book_keeps_the_most_recent_ten():
    book = MoveTaskBook()
    tasks = []
    for _ in range(12):
        tasks.append(task())
        book.add(tasks[-1])
        tasks[-1].finish()
    assert book.recent(SOURCE, 10) == list(reversed(tasks))[:10]
    assert book.recent(SOURCE, 1) == [tasks[-1]]
    assert book.find(SOURCE, tasks[0].task_id) is None  # fell off
    assert book.find(SOURCE, tasks[-1].task_id) is tasks[-1]
    assert book.find(DESTINATION, tasks[-1].task_id) is None
    assert book.recent(DESTINATION, 10) == []


# ---------------------------------------------------------------------- handles and checks


@given(st.uuids(), st.from_regex(r"[A-Za-z0-9_-]{1,80}", fullmatch=True))
def test_task_handles_round_trip(task_id, name):
    arn = f"arn:aws:sqs:eu-west-1:123456789012:{name}"
    assert decode_task_handle(encode_task_handle(str(task_id), arn)) == (str(task_id), arn)


@given(st.text(max_size=60))
def test_garbage_is_not_a_task_handle(text):
    assert decode_task_handle(text) is None


def test_handles_need_a_uuid_and_a_queue_arn():
    assert decode_task_handle(encode_task_handle("not-a-uuid", SOURCE)) is None
    assert decode_task_handle(encode_task_handle(str(uuid.uuid4()), "arn:aws:sns:x")) is None


def test_rate_and_list_limits():
    assert check_rate(None) is None
    assert check_rate(1) == 1
    assert check_rate(500) == 500
    for bad in (0, 501, -3):
        with pytest.raises(SqsError, match="MaxNumberOfMessagesPerSecond"):
            check_rate(bad)
    assert check_list_limit(None) == 1
    assert check_list_limit(10) == 10
    with pytest.raises(SqsError, match="MaxResults"):
        check_list_limit(11)


# ---------------------------------------------------------------------- the rate limiter


def test_the_limiter_starts_full_then_paces():
    limiter = RateLimiter(rate=2, burst=2, now=0)
    assert limiter.take(0, 10) == 2
    assert limiter.take(0, 1) == 0
    assert limiter.wait_ms(0) == 500
    assert limiter.take(499, 1) == 0
    assert limiter.take(500, 1) == 1
    assert limiter.wait_ms(500, wanted=5) == 1000  # capped at the burst
    assert limiter.available(10_000) == 2  # never more than the burst


def test_the_task_limiter_uses_batches():
    assert RateLimiter.for_task(1, 0).available(0) == 1
    assert RateLimiter.for_task(500, 0).available(0) == BATCH
    with pytest.raises(ValueError, match="positive"):
        RateLimiter(0, 1, 0)


@given(
    st.integers(1, 500),
    st.integers(1, 10),
    st.lists(st.tuples(st.integers(-50, 2_000), st.integers(0, 20)), max_size=60),
)
def test_the_limiter_never_exceeds_its_rate(rate, burst, steps):
    """Over any run, granted <= burst + rate * elapsed; each grant <= what was asked."""
    limiter = RateLimiter(rate, burst, now=0)
    now = 0
    latest = 0
    granted_total = 0
    for step, wanted in steps:
        now += step  # negative steps: a clock that stepped back
        latest = max(latest, now)
        granted = limiter.take(now, wanted)
        assert 0 <= granted <= wanted
        granted_total += granted
        assert granted_total * 1000 <= burst * 1000 + rate * latest


@given(st.integers(1, 500), st.integers(1, 10), st.integers(0, 10_000), st.integers(1, 20))
def test_waiting_as_told_is_enough(rate, burst, start, wanted):
    limiter = RateLimiter(rate, burst, now=0)
    limiter.take(start, 10**6)  # drain it
    wait = limiter.wait_ms(start, wanted)
    assert limiter.take(start + wait, wanted) == min(wanted, burst)


def test_the_book_says_what_falls_off_and_restores_any_status():
    book = MoveTaskBook(keep=2)
    first, second, third = task(), task(), task()
    assert book.add(first) == []
    first.finish()
    assert book.add(second) == []
    second.finish()
    assert book.add(third) == [first]  # the shell forgets it in the store too
    restored = MoveTaskBook(keep=2)
    old = task()
    old.finish()
    running = task()
    assert restored.restore(old) == []
    assert restored.restore(running) == []  # RUNNING, as it was when the broker stopped
    assert [t.active for t in restored.active()] == [True]
    with pytest.raises(SqsError):
        restored.add(task())  # the restored RUNNING task is the source's active one
    assert restored.recent(SOURCE, 10) == [running, old]


@given(st.integers(1, 25), st.integers(1, 5), st.booleans())
def test_what_falls_off_plus_what_is_kept_is_everything_added(count, keep, restoring):
    book = MoveTaskBook(keep=keep)
    added: list[MoveTask] = []
    dropped: list[MoveTask] = []
    for _ in range(count):
        new = task()
        dropped += book.restore(new) if restoring else book.add(new)
        added.append(new)
        new.finish()
    kept = list(reversed(book.recent(SOURCE, keep)))
    assert dropped + kept == added
    assert len(kept) == min(keep, count)
