"""Long polls whose clients leave, and receives whose messages cannot be read, end to end.

A long poll (ReceiveMessage with WaitTimeSeconds) whose client has closed or reset its
connection must not take the messages sent meanwhile -- they would stay hidden for their
visibility timeout, counted as received, with nobody to see them -- and must let go of the
connection then, not at WaitTimeSeconds. A receive whose messages the store fails to read
answers a retryable error and leaves them visible.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import struct
import time
from typing import Any

import boto3
import botocore.config
import pytest
from botocore.exceptions import ClientError

from tests.support.broker import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, BrokerThread

DEAD_POLLS = 50
SETTLE_SECONDS = 10  # bound of every wait below for the broker to catch up (never reached)


def raw_receive(broker: BrokerThread, url: str) -> bytes:
    body = json.dumps({"QueueUrl": url, "WaitTimeSeconds": 20, "MaxNumberOfMessages": 10})
    host, port = broker.api
    return (
        f"POST / HTTP/1.1\r\nhost: {host}:{port}\r\n"
        "content-type: application/x-amz-json-1.0\r\n"
        f"x-amz-target: AmazonSQS.ReceiveMessage\r\ncontent-length: {len(body)}\r\n\r\n{body}"
    ).encode()


def wait_for(condition: Any, what: str) -> None:
    deadline = time.monotonic() + SETTLE_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"still not {what} after {SETTLE_SECONDS} s"
        time.sleep(0.05)


def api_connections(broker: BrokerThread) -> float:
    family = broker.metrics()["wharf_connections_open"]
    (value,) = [s.value for s in family.samples if s.labels.get("listener") == "api"]
    return float(value)


def long_polls_waiting(broker: BrokerThread, name: str) -> int:
    def count() -> int:
        queue = broker.app.registry.require(name)  # type: ignore[union-attr]
        return queue.changed().statistics().tasks_waiting

    return broker.call_sync(count)


@pytest.mark.parametrize("how", ["reset", "close"])
def test_long_polls_whose_clients_left_take_nothing_and_let_go(
    broker: BrokerThread, how: str
) -> None:
    sqs = broker.client()
    url = sqs.create_queue(QueueName=f"abandoned-{how}")["QueueUrl"]
    baseline = api_connections(broker)
    clients = [socket.create_connection(broker.api) for _ in range(DEAD_POLLS)]
    try:
        for client in clients:
            client.sendall(raw_receive(broker, url))
        wait_for(lambda: long_polls_waiting(broker, f"abandoned-{how}") == DEAD_POLLS, "polling")
    finally:
        for client in clients:
            if how == "reset":
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()
    # Sent at once: the loopback has delivered every FIN or reset, but the broker may not
    # have run since; a poll these sends wake must look at its client before it takes any.
    for i in range(3):
        sqs.send_message(QueueUrl=url, MessageBody=f"m{i}")
    received = sqs.receive_message(
        QueueUrl=url,
        MaxNumberOfMessages=10,
        MessageSystemAttributeNames=["ApproximateReceiveCount"],
    )["Messages"]
    assert sorted(m["Body"] for m in received) == ["m0", "m1", "m2"]
    assert {m["Attributes"]["ApproximateReceiveCount"] for m in received} == {"1"}
    # Let go of promptly, not at WaitTimeSeconds (20 s).
    wait_for(lambda: api_connections(broker) <= baseline, "let go of")


def test_a_long_poll_on_a_live_connection_still_gets_the_message_sent_later(
    broker: BrokerThread,
) -> None:
    sqs = broker.client()
    url = sqs.create_queue(QueueName="live")["QueueUrl"]
    with socket.create_connection(broker.api, timeout=SETTLE_SECONDS) as client:
        client.sendall(raw_receive(broker, url))
        wait_for(lambda: long_polls_waiting(broker, "live") == 1, "polling")
        sqs.send_message(QueueUrl=url, MessageBody="later")
        answer = b""
        while b'"later"' not in answer:
            chunk = client.recv(65536)
            assert chunk, f"closed before the message came: {answer!r}"
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200")


def test_a_receive_whose_messages_cannot_be_read_is_retried_by_the_sdk(
    broker: BrokerThread,
) -> None:
    sqs = broker.client()
    url = sqs.create_queue(QueueName="unreadable")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="kept")
    store = broker.app.registry.store  # type: ignore[union-attr]
    read_messages = store.read_messages
    failures = [1]

    async def read_failing_once(queue_id: int, seqs: list[int]) -> Any:
        if failures[0]:
            failures[0] -= 1
            raise sqlite3.OperationalError("unable to open database file")
        return await read_messages(queue_id, seqs)

    broker.call_sync(setattr, store, "read_messages", read_failing_once)
    # Without retries the SDK sees AWS's retryable answer ...
    with pytest.raises(ClientError) as excinfo:
        sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0)
    error = excinfo.value.response
    assert (error["Error"]["Code"], error["ResponseMetadata"]["HTTPStatusCode"]) == (
        "ServiceUnavailable",
        503,
    )
    # ... and with them (as shipped) it gets the message, visible again at once.
    failures[0] = 1
    retrying = boto3.client(
        "sqs",
        endpoint_url=broker.endpoint,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
        config=botocore.config.Config(retries={"mode": "standard", "total_max_attempts": 3}),
    )
    received = retrying.receive_message(
        QueueUrl=url, WaitTimeSeconds=0, MessageSystemAttributeNames=["ApproximateReceiveCount"]
    )["Messages"]
    assert [m["Body"] for m in received] == ["kept"]
    assert failures == [0]  # the SDK's first attempt did fail
    # Each failed receive still counts (the model cannot undo a receive).
    assert received[0]["Attributes"]["ApproximateReceiveCount"] == "3"
