"""Message move tasks through boto3, against a real broker (both SQS wire protocols).

Timing assertions are deliberately loose (a lower bound from the rate limit, generous
deadlines for completion): the point is behaviour, not speed.
"""

from __future__ import annotations

import base64
import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from botocore.exceptions import ClientError

from broker.config import StorageSettings
from broker.store.base import StoredMoveTask
from broker.store.sqlite import SqliteStore
from tests.support.broker import BrokerThread, QueueFactory, broker_config

DEADLINE_SECONDS = 30.0
_unique = itertools.count()


def arn_of(sqs: Any, url: str) -> str:
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    return str(attributes["Attributes"]["QueueArn"])


def counts(sqs: Any, url: str) -> tuple[int, int]:
    """(visible, not visible) messages of a queue."""
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
    return int(attributes[names[0]]), int(attributes[names[1]])


def eventually(check: Callable[[], Any], what: str, limit_seconds: float = DEADLINE_SECONDS) -> Any:
    deadline = time.monotonic() + limit_seconds
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


def dead_letter_pipe(sqs: Any, queues: QueueFactory, *, fifo: bool = False) -> tuple[str, str]:
    """(source URL, DLQ URL): the source dead-letters after one receive."""
    extra = {"ContentBasedDeduplication": "true"} if fifo else {}
    dlq = queues(fifo=fifo, **extra)
    policy = {"deadLetterTargetArn": arn_of(sqs, dlq), "maxReceiveCount": 1}
    source = queues(fifo=fifo, RedrivePolicy=json.dumps(policy), **extra)
    return source, dlq


def push_to_dead_letter_queue(sqs: Any, source: str, dlq: str, count: int) -> None:
    """Receive the source's messages until each has been dead-lettered."""

    def moved() -> bool:
        sqs.receive_message(QueueUrl=source, MaxNumberOfMessages=10, VisibilityTimeout=0)
        return counts(sqs, dlq)[0] == count

    eventually(moved, f"{count} messages in the dead-letter queue")


def send_all(sqs: Any, url: str, bodies: list[str], **entry: Any) -> None:
    for start in range(0, len(bodies), 10):
        batch = [
            {"Id": str(i), "MessageBody": body, **entry}
            for i, body in enumerate(bodies[start : start + 10])
        ]
        result = sqs.send_message_batch(QueueUrl=url, Entries=batch)
        assert not result.get("Failed"), result


def drain(sqs: Any, url: str) -> list[dict[str, Any]]:
    """Receive and delete everything visible in a queue."""
    received: list[dict[str, Any]] = []
    while True:
        reply = sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["All"],
        )
        messages = reply.get("Messages", [])
        if not messages:
            return received
        received += messages
        for message in messages:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])


def latest_task(sqs: Any, source_arn: str) -> dict[str, Any]:
    results = sqs.list_message_move_tasks(SourceArn=source_arn)["Results"]
    assert results, "no move task listed"
    return dict(results[0])


def wait_for_status(
    sqs: Any, source_arn: str, *statuses: str, limit_seconds: float = DEADLINE_SECONDS
) -> dict[str, Any]:
    def settled() -> dict[str, Any] | None:
        task = latest_task(sqs, source_arn)
        return task if task["Status"] in statuses else None

    return dict(eventually(settled, f"a task in {statuses}", limit_seconds))


def error_of(call: Callable[[], Any]) -> tuple[str, str, int]:
    with pytest.raises(ClientError) as info:
        call()
    error = info.value.response
    return (
        error["Error"]["Code"],
        error["Error"]["Message"],
        error["ResponseMetadata"]["HTTPStatusCode"],
    )


@pytest.fixture
def json_queues(
    shared_broker: BrokerThread, request: pytest.FixtureRequest
) -> Iterator[QueueFactory]:
    """Queues of the shared broker, through one JSON-protocol client (``.client``)."""
    prefix = f"mt{next(_unique)}-{request.node.originalname[:40]}"
    factory = QueueFactory(shared_broker.client(), prefix)
    yield factory
    factory.cleanup()


# ---------------------------------------------------------------------- the happy paths


def test_messages_move_to_a_destination_as_new_messages(sqs, queues):
    source, dlq = dead_letter_pipe(sqs, queues)
    destination = queues()
    attributes = {"colour": {"DataType": "String", "StringValue": "blue"}}
    bodies = [f"message-{i}" for i in range(3)]
    send_all(sqs, source, bodies, MessageAttributes=attributes)
    originals = {m["Body"]: m["MessageId"] for m in _peek_ids(sqs, source)}
    push_to_dead_letter_queue(sqs, source, dlq, 3)
    dlq_arn, destination_arn = arn_of(sqs, dlq), arn_of(sqs, destination)

    handle = sqs.start_message_move_task(SourceArn=dlq_arn, DestinationArn=destination_arn)[
        "TaskHandle"
    ]
    task = wait_for_status(sqs, dlq_arn, "COMPLETED")

    assert handle
    assert task["SourceArn"] == dlq_arn
    assert task["DestinationArn"] == destination_arn
    assert task["ApproximateNumberOfMessagesMoved"] == 3
    assert task["ApproximateNumberOfMessagesToMove"] == 3
    assert abs(task["StartedTimestamp"] - time.time() * 1000) < 60_000
    assert "TaskHandle" not in task  # only a running task shows it
    assert "FailureReason" not in task
    moved = drain(sqs, destination)
    assert sorted(m["Body"] for m in moved) == bodies
    for message in moved:
        assert message["MessageAttributes"]["colour"]["StringValue"] == "blue"
        assert message["Attributes"]["ApproximateReceiveCount"] == "1"  # a new message
        assert "DeadLetterQueueSourceArn" not in message["Attributes"]
        assert message["MessageId"] != originals[message["Body"]]  # AWS: a new message id
    assert counts(sqs, dlq) == (0, 0)


def _peek_ids(sqs: Any, url: str) -> list[dict[str, Any]]:
    """Every message of a fresh queue, received once and made visible again at once."""
    return list(
        sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0)["Messages"]
    )


def test_without_a_destination_messages_return_to_their_own_source(json_queues):
    sqs = json_queues.client
    dlq = json_queues()
    policy = json.dumps({"deadLetterTargetArn": arn_of(sqs, dlq), "maxReceiveCount": 1})
    first, second = json_queues(RedrivePolicy=policy), json_queues(RedrivePolicy=policy)
    send_all(sqs, first, ["a1", "a2"])
    send_all(sqs, second, ["b1", "b2", "b3"])
    for source in (first, second):
        for _ in range(2):
            sqs.receive_message(QueueUrl=source, MaxNumberOfMessages=10, VisibilityTimeout=0)
    eventually(lambda: counts(sqs, dlq)[0] == 5, "five dead letters")
    dlq_arn = arn_of(sqs, dlq)

    sqs.start_message_move_task(SourceArn=dlq_arn)
    task = wait_for_status(sqs, dlq_arn, "COMPLETED")

    assert "DestinationArn" not in task
    assert task["ApproximateNumberOfMessagesMoved"] == 5
    assert sorted(m["Body"] for m in drain(sqs, first)) == ["a1", "a2"]
    assert sorted(m["Body"] for m in drain(sqs, second)) == ["b1", "b2", "b3"]


def test_fifo_messages_go_back_in_order_within_their_groups(json_queues):
    sqs = json_queues.client
    source, dlq = dead_letter_pipe(sqs, json_queues, fifo=True)
    for group in ("g1", "g2"):
        for i in range(4):
            sqs.send_message(QueueUrl=source, MessageBody=f"{group}-{i}", MessageGroupId=group)

    def dead_lettered() -> bool:
        sqs.receive_message(QueueUrl=source, MaxNumberOfMessages=10, VisibilityTimeout=0)
        return counts(sqs, dlq)[0] == 8

    eventually(dead_lettered, "eight FIFO dead letters")
    dlq_arn = arn_of(sqs, dlq)
    sqs.start_message_move_task(SourceArn=dlq_arn)
    assert wait_for_status(sqs, dlq_arn, "COMPLETED")["ApproximateNumberOfMessagesMoved"] == 8

    # All eight are back although the source's content-based deduplication window still
    # holds their original sends: a redriven message is never dropped as a duplicate.
    back = drain(sqs, source)
    for group in ("g1", "g2"):
        in_group = [m["Body"] for m in back if m["Attributes"]["MessageGroupId"] == group]
        assert in_group == [f"{group}-{i}" for i in range(4)]


def held_fifo_group(
    broker: BrokerThread, queues: QueueFactory, visibility_timeout: int = 120
) -> tuple[str, str, str, str]:
    """A FIFO dead-letter queue holding m0..m3 of one group, m0 received by someone
    inspecting the queue (so m1..m3 are visible but held back behind it), and a move task
    started on it once that was so. Returns (DLQ URL, its ARN, destination URL, m0's handle),
    after the broker has run everything it could (the task's first pass included)."""
    sqs = queues.client
    source, dlq = dead_letter_pipe(sqs, queues, fifo=True)
    destination = queues(fifo=True, ContentBasedDeduplication="true")
    for i in range(4):
        sqs.send_message(QueueUrl=source, MessageBody=f"m{i}", MessageGroupId="g")
    push_to_dead_letter_queue(sqs, source, dlq, 4)
    (held,) = sqs.receive_message(QueueUrl=dlq, VisibilityTimeout=visibility_timeout)["Messages"]
    assert held["Body"] == "m0"
    dlq_arn = arn_of(sqs, dlq)
    sqs.start_message_move_task(SourceArn=dlq_arn, DestinationArn=arn_of(sqs, destination))
    broker.call(trio.testing.wait_all_tasks_blocked)  # the task has looked at the DLQ
    return dlq, dlq_arn, destination, held["ReceiptHandle"]


@pytest.mark.parametrize("release", ["visibility", "delete"])
def test_a_fifo_task_waits_for_a_group_held_by_a_message_in_flight(
    shared_broker: BrokerThread, json_queues, release: str
):
    """The group's visible messages cannot be moved before the one in flight (FIFO order):
    the task stays RUNNING, not COMPLETED with them left behind, until that message is
    deleted or visible again; then it moves the group in order and completes."""
    sqs = json_queues.client
    dlq, dlq_arn, destination, handle = held_fifo_group(shared_broker, json_queues)
    waiting = latest_task(sqs, dlq_arn)
    assert waiting["Status"] == "RUNNING"
    assert waiting["ApproximateNumberOfMessagesMoved"] == 0
    assert waiting["ApproximateNumberOfMessagesToMove"] == 3
    assert counts(sqs, dlq) == (3, 1)
    if release == "visibility":  # the inspector gives m0 back: it moves first
        sqs.change_message_visibility(QueueUrl=dlq, ReceiptHandle=handle, VisibilityTimeout=0)
        expected = ["m0", "m1", "m2", "m3"]
    else:  # the inspector deleted m0
        sqs.delete_message(QueueUrl=dlq, ReceiptHandle=handle)
        expected = ["m1", "m2", "m3"]
    done = wait_for_status(sqs, dlq_arn, "COMPLETED")
    assert done["ApproximateNumberOfMessagesMoved"] == len(expected)
    assert [m["Body"] for m in drain(sqs, destination)] == expected
    assert counts(sqs, dlq) == (0, 0)


def test_a_fifo_task_waits_for_a_held_group_until_its_visibility_timeout(
    shared_broker: BrokerThread, json_queues
):
    """Nobody releases the message in flight: the task goes on when its timeout ends."""
    sqs = json_queues.client
    _, dlq_arn, destination, _ = held_fifo_group(shared_broker, json_queues, 2)
    done = wait_for_status(sqs, dlq_arn, "COMPLETED")
    assert done["ApproximateNumberOfMessagesMoved"] == 4
    assert [m["Body"] for m in drain(sqs, destination)] == ["m0", "m1", "m2", "m3"]


def test_a_task_waiting_for_a_held_group_can_be_cancelled(shared_broker: BrokerThread, json_queues):
    sqs = json_queues.client
    dlq, dlq_arn, _, _ = held_fifo_group(shared_broker, json_queues)
    handle = latest_task(sqs, dlq_arn)["TaskHandle"]
    assert sqs.cancel_message_move_task(TaskHandle=handle)["ApproximateNumberOfMessagesMoved"] == 0
    assert wait_for_status(sqs, dlq_arn, "CANCELLED")["ApproximateNumberOfMessagesMoved"] == 0
    assert counts(sqs, dlq) == (3, 1)


# ---------------------------------------------------------------------- pacing and cancel


def test_the_rate_limit_paces_the_task(json_queues):
    sqs = json_queues.client
    _, dlq = dead_letter_pipe(sqs, json_queues)
    destination = json_queues()
    send_all(sqs, dlq, [f"m{i}" for i in range(6)])
    dlq_arn = arn_of(sqs, dlq)

    started = time.monotonic()
    sqs.start_message_move_task(
        SourceArn=dlq_arn, DestinationArn=arn_of(sqs, destination), MaxNumberOfMessagesPerSecond=2
    )
    running = latest_task(sqs, dlq_arn)
    task = wait_for_status(sqs, dlq_arn, "COMPLETED")
    elapsed = time.monotonic() - started

    assert running["MaxNumberOfMessagesPerSecond"] == 2
    assert task["ApproximateNumberOfMessagesMoved"] == 6
    # Two go at once (the burst), the other four at 2 a second: at least 2 s in theory.
    assert elapsed >= 1.5, elapsed
    assert len(drain(sqs, destination)) == 6


def test_a_cancelled_task_stops_and_loses_nothing(json_queues):
    sqs = json_queues.client
    _, dlq = dead_letter_pipe(sqs, json_queues)
    destination = json_queues()
    bodies = [f"m{i}" for i in range(10)]
    send_all(sqs, dlq, bodies)
    dlq_arn = arn_of(sqs, dlq)
    handle = sqs.start_message_move_task(
        SourceArn=dlq_arn, DestinationArn=arn_of(sqs, destination), MaxNumberOfMessagesPerSecond=1
    )["TaskHandle"]
    eventually(lambda: latest_task(sqs, dlq_arn)["ApproximateNumberOfMessagesMoved"] >= 1, "a move")

    cancelled = sqs.cancel_message_move_task(TaskHandle=handle)
    task = wait_for_status(sqs, dlq_arn, "CANCELLED")

    assert cancelled["ApproximateNumberOfMessagesMoved"] >= 1
    moved = drain(sqs, destination)
    left = drain(sqs, dlq)
    assert len(moved) == task["ApproximateNumberOfMessagesMoved"]
    assert len(left) > 0  # it did stop
    assert sorted(m["Body"] for m in moved + left) == bodies  # no loss, no duplicate
    code, message, _ = error_of(lambda: sqs.cancel_message_move_task(TaskHandle=handle))
    assert code == "InvalidParameterValue"
    assert "RUNNING" in message
    # The source is free for a new task.
    sqs.start_message_move_task(SourceArn=dlq_arn, DestinationArn=arn_of(sqs, destination))
    wait_for_status(sqs, dlq_arn, "COMPLETED")
    assert len(sqs.list_message_move_tasks(SourceArn=dlq_arn, MaxResults=10)["Results"]) == 2


def test_a_cancel_answered_while_a_batch_is_under_way_stops_that_batch(tmp_path):
    """A batch received before the cancel but not yet moved is not moved after it: it moved
    no message then, and the cancel's answer (and the count it saves) says so. The batch
    used to go on and move its messages after the cancel was answered, and a crash right
    after left the task CANCELLED with a count short of what had moved."""
    with BrokerThread(broker_config(tmp_path / "data")) as broker:
        sqs = broker.client()
        factory = QueueFactory(sqs, "mid-batch")
        _, dlq = dead_letter_pipe(sqs, factory)
        destination = factory()
        bodies = [f"m{i}" for i in range(5)]
        send_all(sqs, dlq, bodies)
        dlq_arn = arn_of(sqs, dlq)
        store = broker.app.store
        assert store is not None
        original = store.read_messages
        reading = threading.Event()
        release = threading.Event()

        async def held_read(*args: Any, **kwargs: Any) -> Any:
            reading.set()
            await trio.to_thread.run_sync(release.wait, 30)
            return await original(*args, **kwargs)

        store.read_messages = held_read  # type: ignore[method-assign]
        handle = sqs.start_message_move_task(
            SourceArn=dlq_arn, DestinationArn=arn_of(sqs, destination)
        )["TaskHandle"]
        assert reading.wait(30), "the task never read its first batch"
        cancelled = sqs.cancel_message_move_task(TaskHandle=handle)
        release.set()
        task = wait_for_status(sqs, dlq_arn, "CANCELLED")

        assert cancelled["ApproximateNumberOfMessagesMoved"] == 0
        assert task["ApproximateNumberOfMessagesMoved"] == 0
        assert drain(sqs, destination) == []
        # Given back at once, not after the task's 60-second visibility timeout.
        assert sorted(m["Body"] for m in drain(sqs, dlq)) == bodies


def test_a_deleted_destination_fails_the_task(json_queues):
    sqs = json_queues.client
    _, dlq = dead_letter_pipe(sqs, json_queues)
    destination = json_queues()
    send_all(sqs, dlq, [f"m{i}" for i in range(5)])
    dlq_arn = arn_of(sqs, dlq)
    sqs.start_message_move_task(
        SourceArn=dlq_arn, DestinationArn=arn_of(sqs, destination), MaxNumberOfMessagesPerSecond=1
    )
    sqs.delete_queue(QueueUrl=destination)

    task = wait_for_status(sqs, dlq_arn, "FAILED")

    assert task["FailureReason"] == "AWS.SimpleQueueService.NonExistentQueue"
    visible, hidden = counts(sqs, dlq)
    assert visible + hidden == 5 - task["ApproximateNumberOfMessagesMoved"]
    assert hidden == 0  # what the task held was released


def write_key_file(path: Path, sse: str, keys: dict[str, bytes]) -> None:
    lines = [f'sse_key_id = "{sse}"']
    for key_id, secret in keys.items():
        lines += ["[[keys]]", f'id = "{key_id}"', f'key = "{base64.b64encode(secret).decode()}"']
    path.write_text("\n".join(lines) + "\n")


def test_a_message_that_cannot_be_opened_stays_behind_and_the_rest_moves(tmp_path):
    k1, k2 = bytes(range(32)), bytes(range(1, 33))
    key_file = tmp_path / "keys.toml"
    write_key_file(key_file, "k1", {"k1": k1})
    config = broker_config(tmp_path / "data")
    storage = StorageSettings(data_dir=config.storage.data_dir, key_file=str(key_file))
    config = msgspec.structs.replace(config, storage=storage)
    with BrokerThread(config) as broker:
        sqs = broker.client()
        factory = QueueFactory(sqs, "sealed")
        _, dlq = dead_letter_pipe(sqs, factory)
        destination = factory()
        old_id = sqs.send_message(QueueUrl=dlq, MessageBody="sealed under k1")["MessageId"]
        write_key_file(key_file, "k2", {"k1": k1, "k2": k2})
        broker.call(broker.app.reload, config)
        bodies = [f"m{i}" for i in range(15)]
        send_all(sqs, dlq, bodies)
        write_key_file(key_file, "k2", {"k2": k2})  # k1 retired: the first message is stuck
        broker.call(broker.app.reload, config)
        dlq_arn = arn_of(sqs, dlq)

        sqs.start_message_move_task(SourceArn=dlq_arn, DestinationArn=arn_of(sqs, destination))
        task = wait_for_status(sqs, dlq_arn, "FAILED", "COMPLETED")

        # Everything else moved; the task says it left something behind, and why.
        assert (task["Status"], task.get("FailureReason")) == ("FAILED", "KMS.NotFoundException")
        assert task["ApproximateNumberOfMessagesMoved"] == len(bodies)
        assert sorted(m["Body"] for m in drain(sqs, destination)) == sorted(bodies)
        assert sum(counts(sqs, dlq)) == 1  # still in the dead-letter queue, not lost
        log = broker.daemon.log_output.getvalue()  # type: ignore[attr-defined]
        [line] = [line for line in log.splitlines() if "event=move_task.unopened " in line]
        assert f"message_id={old_id}" in line.split()
        assert "key_id=k1" in line.split()


# ---------------------------------------------------------------------- refusals


def test_refusals_carry_aws_codes(sqs, queues):
    source, dlq = dead_letter_pipe(sqs, queues)
    plain = queues()
    fifo = queues(fifo=True)
    dlq_arn, plain_arn = arn_of(sqs, dlq), arn_of(sqs, plain)
    missing = plain_arn + "-missing"

    code, message, _ = error_of(lambda: sqs.start_message_move_task(SourceArn=plain_arn))
    assert (code, message) == (
        "InvalidParameterValue",
        "Source queue must be configured as a Dead Letter Queue.",
    )
    code, message, status = error_of(lambda: sqs.start_message_move_task(SourceArn=missing))
    assert (code, status) == ("ResourceNotFoundException", 404)
    assert "SourceArn" in message
    code, message, status = error_of(
        lambda: sqs.start_message_move_task(SourceArn=dlq_arn, DestinationArn=missing)
    )
    assert (code, status) == ("ResourceNotFoundException", 404)
    assert "DestinationArn" in message
    code, _, _ = error_of(lambda: sqs.start_message_move_task(SourceArn="not-an-arn"))
    assert code == "InvalidParameterValue"
    code, _, _ = error_of(
        lambda: sqs.start_message_move_task(SourceArn=dlq_arn, DestinationArn=arn_of(sqs, fifo))
    )
    assert code == "InvalidParameterValue"
    for rate in (0, 501):
        code, message, _ = error_of(
            lambda rate=rate: sqs.start_message_move_task(
                SourceArn=dlq_arn, MaxNumberOfMessagesPerSecond=rate
            )
        )
        assert code == "InvalidParameterValue"
        assert "MaxNumberOfMessagesPerSecond" in message

    send_all(sqs, source, ["one", "two", "three"])
    push_to_dead_letter_queue(sqs, source, dlq, 3)
    # At one a second, three messages keep the task running for two seconds.
    sqs.start_message_move_task(SourceArn=dlq_arn, MaxNumberOfMessagesPerSecond=1)
    code, message, _ = error_of(lambda: sqs.start_message_move_task(SourceArn=dlq_arn))
    assert code == "InvalidParameterValue"
    assert message.startswith("There is already a task running.")


def test_bad_task_handles(sqs, queues):
    _, dlq = dead_letter_pipe(sqs, queues)
    code, message, status = error_of(lambda: sqs.cancel_message_move_task(TaskHandle="foobared"))
    assert (code, message, status) == (
        "InvalidParameterValue",
        "Value for parameter TaskHandle is invalid.",
        400,
    )
    task_id = "10f57157-fc38-4da9-a113-4de7e12d05aa"
    unknown = base64.urlsafe_b64encode(f"{task_id}&{arn_of(sqs, dlq)}".encode()).decode()
    code, message, status = error_of(lambda: sqs.cancel_message_move_task(TaskHandle=unknown))
    assert (code, message, status) == ("ResourceNotFoundException", "Task does not exist.", 404)
    gone = base64.urlsafe_b64encode(f"{task_id}&{arn_of(sqs, dlq)}-gone".encode()).decode()
    code, _, status = error_of(lambda: sqs.cancel_message_move_task(TaskHandle=gone))
    assert (code, status) == ("ResourceNotFoundException", 404)
    code, _, _ = error_of(
        lambda: sqs.list_message_move_tasks(SourceArn=arn_of(sqs, dlq), MaxResults=11)
    )
    assert code == "InvalidParameterValue"


# ---------------------------------------------------------------------- stop and restart


def test_a_task_stopped_mid_way_resumes_after_the_restart(tmp_path):
    config = broker_config(tmp_path / "data")
    bodies = [f"m{i}" for i in range(40)]
    with BrokerThread(config) as broker:
        sqs = broker.client()
        factory = QueueFactory(sqs, "stop")
        _, dlq = dead_letter_pipe(sqs, factory)
        destination = factory()
        send_all(sqs, dlq, bodies)
        dlq_arn = arn_of(sqs, dlq)
        handle = sqs.start_message_move_task(
            SourceArn=dlq_arn,
            DestinationArn=arn_of(sqs, destination),
            MaxNumberOfMessagesPerSecond=20,
        )["TaskHandle"]
        eventually(
            lambda: latest_task(sqs, dlq_arn)["ApproximateNumberOfMessagesMoved"] >= 5, "moves"
        )
        before = latest_task(sqs, dlq_arn)
    with BrokerThread(config) as broker:  # the same data directory
        sqs = broker.client()
        resumed = latest_task(sqs, dlq_arn)
        assert resumed["StartedTimestamp"] == before["StartedTimestamp"]
        assert resumed["ApproximateNumberOfMessagesToMove"] == len(bodies)
        assert (
            resumed["ApproximateNumberOfMessagesMoved"]
            >= before["ApproximateNumberOfMessagesMoved"]
        )
        if resumed["Status"] == "RUNNING":
            assert resumed["TaskHandle"] == handle
        # If the stop caught a batch between its receive and its move, those messages come
        # back in the source after their 60 s; the resumed task waits for them.
        done = wait_for_status(sqs, dlq_arn, "COMPLETED", limit_seconds=90)
        moved = drain(sqs, destination)
        assert sorted(m["Body"] for m in moved) == sorted(bodies)  # all, each once
        assert done["ApproximateNumberOfMessagesMoved"] == len(bodies)
        assert counts(sqs, dlq) == (0, 0)
        assert len(sqs.list_message_move_tasks(SourceArn=dlq_arn, MaxResults=10)["Results"]) == 1


def test_the_task_history_survives_a_restart(tmp_path):
    config = broker_config(tmp_path / "data")
    with BrokerThread(config) as broker:
        sqs = broker.client()
        factory = QueueFactory(sqs, "history")
        _, dlq = dead_letter_pipe(sqs, factory)
        destination = factory()
        dlq_arn = arn_of(sqs, dlq)
        for round_number in range(3):
            send_all(sqs, dlq, [f"r{round_number}"])
            sqs.start_message_move_task(SourceArn=dlq_arn, DestinationArn=arn_of(sqs, destination))
            wait_for_status(sqs, dlq_arn, "COMPLETED")
        send_all(sqs, dlq, [f"c{i}" for i in range(20)])
        handle = sqs.start_message_move_task(
            SourceArn=dlq_arn,
            DestinationArn=arn_of(sqs, destination),
            MaxNumberOfMessagesPerSecond=1,
        )["TaskHandle"]
        sqs.cancel_message_move_task(TaskHandle=handle)
        wait_for_status(sqs, dlq_arn, "CANCELLED")
        history = sqs.list_message_move_tasks(SourceArn=dlq_arn, MaxResults=10)["Results"]
    with BrokerThread(config) as broker:
        sqs = broker.client()
        after = sqs.list_message_move_tasks(SourceArn=dlq_arn, MaxResults=10)["Results"]
        assert after == history
        assert [task["Status"] for task in after] == ["CANCELLED", *["COMPLETED"] * 3]


async def save_cancelling_task(directory: Path, source_arn: str) -> None:
    store = SqliteStore(directory)
    await store.open()
    try:
        await store.save_move_task(
            StoredMoveTask(
                task_id=str(uuid.uuid4()),
                source_arn=source_arn,
                destination_arn=None,
                max_per_second=None,
                started_at=1_700_000_000_000,
                to_move=3,
                moved=1,
                status="CANCELLING",
                failure_reason=None,
            )
        )
    finally:
        await store.aclose()


def test_a_task_cancelled_just_before_a_stop_ends_cancelled(tmp_path):
    config = broker_config(tmp_path / "data")
    with BrokerThread(config) as broker:
        sqs = broker.client()
        _, dlq = dead_letter_pipe(sqs, QueueFactory(sqs, "cancelling"))
        dlq_arn = arn_of(sqs, dlq)
    # As if the broker had stopped between the cancel's answer and the runner noticing it.
    trio.run(save_cancelling_task, tmp_path / "data", dlq_arn)
    with BrokerThread(config) as broker:
        task = latest_task(broker.client(), dlq_arn)
        assert task["Status"] == "CANCELLED"
        assert task["ApproximateNumberOfMessagesMoved"] == 1
        assert "TaskHandle" not in task
