"""Nothing acknowledged is lost: SIGKILL the broker mid-stream, restart it, count.

The broker runs as a real subprocess on a tmp data directory. Several boto3 clients send
concurrently (standard queue, and a FIFO queue with one group and explicit deduplication ids
per client) and record every send the broker acknowledged. The broker is killed with SIGKILL
while they are sending, restarted on the same directory, and drained:

- every acknowledged message is there (duplicates of unacknowledged sends are allowed);
- each FIFO group comes back in send order, with nothing acknowledged missing;
- an acknowledged deduplication id is still deduplicated after the restart, and so is an
  acknowledged body in a queue with ContentBasedDeduplication;
- messages received but not deleted before the kill come back after their visibility timeout.
"""

from __future__ import annotations

import collections
import functools
import json
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from broker.model.dedup import deduplication_key
from tests.support.broker import sqs_client
from tests.support.crash_harness import Writer, broker_process

pytestmark = pytest.mark.slow

SENDERS = 4  # per queue
SEND_SECONDS = 0.5  # how long the clients go on sending after that
INFLIGHT_VISIBILITY = 3  # seconds; the in-flight messages' timeout at the kill
CONTENT_BODY = "deduplicated by its SHA-256, across the kill"


def new_sender(endpoint: str, queue_url: str, number: int, *, fifo: bool) -> Writer:
    client = sqs_client(endpoint, read_timeout=10)
    return Writer(client, "send_message", {"QueueUrl": queue_url}, "MessageBody", number, fifo)


def drain(endpoint: str, url: str, *, expect: int = 0) -> list[dict[str, Any]]:
    """Receive and delete until the queue is empty, and at least ``expect`` messages came
    (long-polling for invisible ones); the messages in receive order."""
    client = sqs_client(endpoint)
    received: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        messages = client.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=1 if len(received) < expect else 0,
            AttributeNames=["All"],
        ).get("Messages", [])
        if not messages and len(received) >= expect:
            break
        for message in messages:
            received.append(message)
            client.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return received


async def test_acknowledged_messages_survive_sigkill(tmp_path: Path):
    # ---- first run: set up, send concurrently, kill mid-stream
    async with broker_process(tmp_path, 1) as (daemon, endpoint):
        client = sqs_client(endpoint)
        standard = client.create_queue(QueueName="durable")["QueueUrl"]
        fifo = client.create_queue(QueueName="durable.fifo", Attributes={"FifoQueue": "true"})[
            "QueueUrl"
        ]
        by_content = client.create_queue(
            QueueName="content.fifo",
            Attributes={"FifoQueue": "true", "ContentBasedDeduplication": "true"},
        )["QueueUrl"]
        first_copy = client.send_message(
            QueueUrl=by_content, MessageBody=CONTENT_BODY, MessageGroupId="g"
        )
        inflight = client.create_queue(QueueName="inflight")["QueueUrl"]
        for i in range(5):
            client.send_message(QueueUrl=inflight, MessageBody=f"held {i}")
        held = client.receive_message(
            QueueUrl=inflight, MaxNumberOfMessages=10, VisibilityTimeout=INFLIGHT_VISIBILITY
        )["Messages"]
        assert len(held) == 5
        held_until = time.monotonic() + INFLIGHT_VISIBILITY
        deleted = client.create_queue(QueueName="deleted")["QueueUrl"]
        for i in range(5):
            client.send_message(QueueUrl=deleted, MessageBody=f"gone {i}")
        for message in client.receive_message(QueueUrl=deleted, MaxNumberOfMessages=10)["Messages"]:
            client.delete_message(QueueUrl=deleted, ReceiptHandle=message["ReceiptHandle"])

        senders = [
            new_sender(endpoint, url, n, fifo=url == fifo)
            for url in (standard, fifo)
            for n in range(SENDERS)
        ]
        stop = threading.Event()
        async with trio.open_nursery() as nursery:
            for sender in senders:
                nursery.start_soon(trio.to_thread.run_sync, sender.run, stop)
            warmed_up = await trio.to_thread.run_sync(
                lambda: all(sender.warmed_up.wait(30) for sender in senders)
            )
            assert warmed_up, "every client gets some sends in"
            await trio.sleep(SEND_SECONDS)
            daemon.signal(signal.SIGKILL)  # mid-stream: every sender is in a send loop
            with trio.fail_after(30):
                await daemon.process.wait()
            stop.set()
    assert daemon.process.returncode == -signal.SIGKILL

    # ---- second run: same data directory
    async with broker_process(tmp_path, 2) as (_, endpoint):
        client = sqs_client(endpoint)
        urls = {
            name: client.get_queue_url(QueueName=name)["QueueUrl"]
            for name in ("durable", "durable.fifo", "content.fifo", "inflight", "deleted")
        }
        # Acknowledged deletes are durable too: nothing comes back.
        assert await trio.to_thread.run_sync(drain, endpoint, urls["deleted"]) == []

        # Received-but-not-deleted messages stay invisible until their timeout, then return;
        # a receipt handle from before the kill still deletes its message.
        if time.monotonic() < held_until - 1:
            assert client.receive_message(QueueUrl=urls["inflight"]).get("Messages", []) == []
        client.delete_message(QueueUrl=urls["inflight"], ReceiptHandle=held[0]["ReceiptHandle"])
        back = await trio.to_thread.run_sync(
            functools.partial(drain, endpoint, urls["inflight"], expect=len(held) - 1)
        )
        assert sorted(m["MessageId"] for m in back) == sorted(m["MessageId"] for m in held[1:])
        assert {m["Attributes"]["ApproximateReceiveCount"] for m in back} == {"2"}

        # Standard queue: every acknowledged message is present.
        received = await trio.to_thread.run_sync(drain, endpoint, urls["durable"])
        received_ids = collections.Counter(m["MessageId"] for m in received)
        for sender in senders[:SENDERS]:
            for sequence, result in sender.acknowledged.items():
                assert received_ids[result["MessageId"]] == 1, (sender.number, sequence)
        # Only the one send per client that was cut off by the kill may be extra.
        bodies = {m["Body"] for m in received}
        assert len(bodies) <= sum(len(s.acknowledged) + 1 for s in senders[:SENDERS])

        # FIFO queue: each group in order, nothing acknowledged missing.
        received = await trio.to_thread.run_sync(drain, endpoint, urls["durable.fifo"])
        for sender in senders[SENDERS:]:
            group = [
                int(m["Body"].split(":")[1])
                for m in received
                if m["Attributes"]["MessageGroupId"] == f"g{sender.number}"
            ]
            acknowledged = sorted(sender.acknowledged)
            assert acknowledged == list(range(len(acknowledged)))  # one at a time, in order
            assert group[: len(acknowledged)] == acknowledged  # in order, none lost
            assert group[len(acknowledged) :] in ([], [len(acknowledged)])  # the cut-off send
            for sequence, result in sender.acknowledged.items():
                assert any(
                    m["MessageId"] == result["MessageId"]
                    and m["Attributes"]["SequenceNumber"] == result["SequenceNumber"]
                    for m in received
                ), (sender.number, sequence)

        # The deduplication window survived: resending an acknowledged id changes nothing.
        sender = senders[SENDERS]
        original = sender.acknowledged[0]
        again = client.send_message(
            QueueUrl=urls["durable.fifo"],
            MessageBody="a different body, same id",
            MessageGroupId=f"g{sender.number}",
            MessageDeduplicationId=f"{sender.number}-0",
        )
        assert again["MessageId"] == original["MessageId"]
        assert again["SequenceNumber"] == original["SequenceNumber"]
        assert client.receive_message(QueueUrl=urls["durable.fifo"]).get("Messages", []) == []

        # Content-based deduplication survived too: the same body again, well within the
        # 5 minutes, is accepted as the same message (AWS answers with the first send's
        # MessageId and SequenceNumber) and delivered once.
        second_copy = client.send_message(
            QueueUrl=urls["content.fifo"], MessageBody=CONTENT_BODY, MessageGroupId="g"
        )
        assert second_copy["MessageId"] == first_copy["MessageId"]
        assert second_copy["SequenceNumber"] == first_copy["SequenceNumber"]
        delivered = await trio.to_thread.run_sync(drain, endpoint, urls["content.fifo"])
        assert [(m["MessageId"], m["Body"]) for m in delivered] == [
            (first_copy["MessageId"], CONTENT_BODY)
        ]


def move_task_of(client: Any, source_arn: str) -> dict[str, Any]:
    results = client.list_message_move_tasks(SourceArn=source_arn, MaxResults=10)["Results"]
    assert len(results) == 1, results
    return dict(results[0])


def wait_for_move(
    client: Any, source_arn: str, done: Callable[[dict[str, Any]], bool], limit_seconds: float
) -> dict[str, Any]:
    """Poll ListMessageMoveTasks (bounded) until ``done`` says so."""
    deadline = time.monotonic() + limit_seconds
    while True:
        task = move_task_of(client, source_arn)
        if done(task):
            return task
        assert time.monotonic() < deadline, f"gave up waiting; last seen {task}"
        time.sleep(0.05)


async def test_a_move_task_resumes_after_sigkill(tmp_path: Path):
    bodies = [f"move {i}" for i in range(30)]
    # ---- first run: a paced task, killed once it has moved some
    async with broker_process(tmp_path, 1) as (daemon, endpoint):
        client = sqs_client(endpoint)
        dlq = client.create_queue(QueueName="dlq")["QueueUrl"]
        dlq_arn = client.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        policy = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 1})
        client.create_queue(QueueName="source", Attributes={"RedrivePolicy": policy})
        work = client.create_queue(QueueName="work")["QueueUrl"]
        work_arn = client.get_queue_attributes(QueueUrl=work, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        for start in range(0, len(bodies), 10):
            entries = [
                {"Id": str(n), "MessageBody": body}
                for n, body in enumerate(bodies[start : start + 10])
            ]
            client.send_message_batch(QueueUrl=dlq, Entries=entries)
        handle = client.start_message_move_task(
            SourceArn=dlq_arn, DestinationArn=work_arn, MaxNumberOfMessagesPerSecond=10
        )["TaskHandle"]
        before = await trio.to_thread.run_sync(
            lambda: wait_for_move(
                client, dlq_arn, lambda t: t["ApproximateNumberOfMessagesMoved"] >= 5, 30
            )
        )
        daemon.signal(signal.SIGKILL)  # mid-task: it has moved some, not all
        with trio.fail_after(30):
            await daemon.process.wait()
    assert daemon.process.returncode == -signal.SIGKILL
    assert before["Status"] == "RUNNING"

    # ---- second run: same data directory; the task is still there and finishes the job
    async with broker_process(tmp_path, 2) as (_, endpoint):
        client = sqs_client(endpoint)
        resumed = move_task_of(client, dlq_arn)
        assert resumed["StartedTimestamp"] == before["StartedTimestamp"]
        assert resumed["ApproximateNumberOfMessagesToMove"] == len(bodies)
        if resumed["Status"] == "RUNNING":
            assert resumed["TaskHandle"] == handle
        # A batch caught between its receive and its move is back in the source after 60 s
        # at most; the resumed task waits for it, so allow for that.
        done = await trio.to_thread.run_sync(
            lambda: wait_for_move(client, dlq_arn, lambda t: t["Status"] != "RUNNING", 90)
        )
        assert done["Status"] == "COMPLETED"
        moved = await trio.to_thread.run_sync(drain, endpoint, work)
        assert sorted(m["Body"] for m in moved) == sorted(bodies)  # every one, exactly once
        assert await trio.to_thread.run_sync(drain, endpoint, dlq) == []
        # The count is saved once a second: a SIGKILL can lose what moved since (at 10 a
        # second with a first burst of 10, at most 20), never a message; it never over-counts.
        assert len(bodies) - 20 <= done["ApproximateNumberOfMessagesMoved"] <= len(bodies)


async def test_a_deduplication_id_is_free_again_when_its_5_minutes_end_after_a_restart(
    tmp_path: Path,
):
    """After a restart each FIFO deduplication id is taken for what is left of its own 5
    minutes, not for the longest of the ids loaded before it. The store gave them back in key
    order and the window kept its expiry list sorted by raising each to the latest seen so
    far: an id whose 5 minutes had ended stayed taken, and a send with it was answered as a
    duplicate (the original's MessageId) and never queued, up to 5 minutes late.

    The 5 minutes are not waited for: between the runs, the early id's stored expiry is moved
    to a few seconds ahead, as if it had been sent 5 minutes ago; the late one's stays."""
    early = "sent-almost-5-minutes-ago"
    # An id loaded before the early one (the table's order is its key's), whose window ends last.
    late = next(
        f"sent-just-now-{n}"
        for n in range(1000)
        if deduplication_key(f"sent-just-now-{n}", None) < deduplication_key(early, None)
    )
    async with broker_process(tmp_path, 1) as (_, endpoint):
        client = sqs_client(endpoint)
        url = client.create_queue(QueueName="window.fifo", Attributes={"FifoQueue": "true"})[
            "QueueUrl"
        ]
        first = {
            dedup: client.send_message(
                QueueUrl=url, MessageBody=dedup, MessageGroupId="g", MessageDeduplicationId=dedup
            )
            for dedup in (early, late)
        }
    ends_at = int(time.time() * 1000) + 3000  # the early id's 5 minutes end in 3 s
    store = sqlite3.connect(tmp_path / "data" / "wharf.sqlite3", isolation_level=None)
    try:
        store.execute(
            "UPDATE deduplication SET expires_at = ? WHERE key = ?",
            (ends_at, deduplication_key(early, None)),
        )
    finally:
        store.close()

    async with broker_process(tmp_path, 2) as (_, endpoint):
        client = sqs_client(endpoint)
        await trio.sleep(max(0.0, (ends_at + 100) / 1000 - time.time()))  # 3 s at most
        again = {
            dedup: client.send_message(
                QueueUrl=url, MessageBody="again", MessageGroupId="g", MessageDeduplicationId=dedup
            )
            for dedup in (early, late)
        }
        assert again[late]["MessageId"] == first[late]["MessageId"]  # still in its window
        assert again[early]["MessageId"] != first[early]["MessageId"]  # its window ended
        received = await trio.to_thread.run_sync(functools.partial(drain, expect=3), endpoint, url)
        assert [m["Body"] for m in received] == [early, late, "again"]


async def test_a_fifo_receive_retried_with_its_attempt_id_after_sigkill_gets_its_messages(
    tmp_path: Path,
):
    """A FIFO receive's answer lost to a crash is what ReceiveRequestAttemptId is for (AWS:
    "If a networking issue occurs after a ReceiveMessage action, and instead of a response
    you receive a generic error, it is possible to retry the same action with an identical
    ReceiveRequestAttemptId to retrieve the same set of messages, even if their visibility
    timeout has not yet expired"). The attempt was kept in memory only: after a SIGKILL the
    retry received anew, found the group locked by the very messages it had lost, and got
    nothing until their visibility timeout ended (up to 12 hours).

    A retry whose messages changed since (one deleted, or its visibility changed) receives
    anew, after a restart as before it."""
    async with broker_process(tmp_path, 1) as (daemon, endpoint):
        client = sqs_client(endpoint)
        url = client.create_queue(
            QueueName="attempts.fifo",
            Attributes={"FifoQueue": "true", "ContentBasedDeduplication": "true"},
        )["QueueUrl"]
        for body in ("a1", "a2", "a3", "b1", "b2"):
            client.send_message(QueueUrl=url, MessageBody=body, MessageGroupId=body[0])
        lost = client.receive_message(
            QueueUrl=url, MaxNumberOfMessages=2, VisibilityTimeout=600, ReceiveRequestAttemptId="x"
        )["Messages"]
        changed = client.receive_message(
            QueueUrl=url, MaxNumberOfMessages=2, VisibilityTimeout=600, ReceiveRequestAttemptId="y"
        )["Messages"]
        assert [m["Body"] for m in lost] == ["a1", "a2"]
        assert [m["Body"] for m in changed] == ["b1", "b2"]
        client.change_message_visibility(
            QueueUrl=url, ReceiptHandle=changed[0]["ReceiptHandle"], VisibilityTimeout=500
        )
        daemon.signal(signal.SIGKILL)
        with trio.fail_after(30):
            await daemon.process.wait()

    async with broker_process(tmp_path, 2) as (_, endpoint):
        client = sqs_client(endpoint)
        retried = client.receive_message(
            QueueUrl=url, MaxNumberOfMessages=2, VisibilityTimeout=600, ReceiveRequestAttemptId="x"
        ).get("Messages", [])
        assert [m["Body"] for m in retried] == ["a1", "a2"]
        assert [m["ReceiptHandle"] for m in retried] == [m["ReceiptHandle"] for m in lost]
        # Its messages changed: the retry receives anew, and group b is still locked.
        assert not client.receive_message(
            QueueUrl=url, MaxNumberOfMessages=2, ReceiveRequestAttemptId="y"
        ).get("Messages")
        for message in retried:
            client.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        assert [m["Body"] for m in client.receive_message(QueueUrl=url)["Messages"]] == ["a3"]
