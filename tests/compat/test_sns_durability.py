"""A Publish that returned 200 is in every subscribed queue, even after SIGKILL; HTTP resumes.

The broker runs as a real subprocess. Several boto3 clients publish concurrently to a standard
topic with three SQS subscriptions (one raw) and to a FIFO topic with two FIFO queues, and
record every publish the broker acknowledged. The broker is killed with SIGKILL mid-stream,
restarted on the same data directory, and every queue is drained:

- every acknowledged publish is in every subscribed queue (only the one publish per client the
  kill cut off may be extra);
- each FIFO group comes back in publish order in both FIFO queues;
- the FIFO topic's deduplication window survived: an acknowledged id is still a duplicate.

A second test leaves HTTP deliveries pending (the endpoint fails) across a SIGKILL: after the
restart they are attempted again and delivered.
"""

from __future__ import annotations

import collections
import json
import signal
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.compat.test_sqs_durability import drain
from tests.support.broker import sqs_client
from tests.support.crash_harness import Writer, broker_process
from tests.support.sns import Endpoint, fetch, queue_arn, receive_all, sns_client

pytestmark = pytest.mark.slow

PUBLISHERS = 4  # per topic
PUBLISH_SECONDS = 0.5
# Short timeouts so the pending-HTTP test sees retries quickly.
SNS_CONFIG = """
[sns]
connect_timeout_seconds = 1.0
response_timeout_seconds = 1.0
"""


def new_publisher(endpoint: str, topic: str, number: int, *, fifo: bool) -> Writer:
    client = sns_client(endpoint)
    return Writer(client, "publish", {"TopicArn": topic}, "Message", number, fifo)


def message_of(message: dict[str, Any], raw: bool) -> str:
    return str(message["Body"] if raw else json.loads(message["Body"])["Message"])


async def test_acknowledged_publishes_survive_sigkill(tmp_path: Path) -> None:
    async with broker_process(tmp_path, 1, SNS_CONFIG) as (daemon, endpoint):
        sns = sns_client(endpoint)
        sqs = sqs_client(endpoint)
        standard = sns.create_topic(Name="durable")["TopicArn"]
        fifo = sns.create_topic(Name="durable.fifo", Attributes={"FifoTopic": "true"})["TopicArn"]
        for name, raw in (("q-a", False), ("q-b", False), ("q-raw", True)):
            url = sqs.create_queue(QueueName=name)["QueueUrl"]
            attributes = {"RawMessageDelivery": "true"} if raw else {}
            sns.subscribe(
                TopicArn=standard,
                Protocol="sqs",
                Endpoint=queue_arn(sqs, url),
                Attributes=attributes,
            )
        for name in ("f-a.fifo", "f-b.fifo"):
            url = sqs.create_queue(QueueName=name, Attributes={"FifoQueue": "true"})["QueueUrl"]
            sns.subscribe(TopicArn=fifo, Protocol="sqs", Endpoint=queue_arn(sqs, url))
        publishers = [
            new_publisher(endpoint, arn, n, fifo=arn == fifo)
            for arn in (standard, fifo)
            for n in range(PUBLISHERS)
        ]
        stop = threading.Event()
        async with trio.open_nursery() as nursery:
            for publisher in publishers:
                nursery.start_soon(trio.to_thread.run_sync, publisher.run, stop)
            warmed_up = await trio.to_thread.run_sync(
                lambda: all(p.warmed_up.wait(30) for p in publishers)
            )
            assert warmed_up, "every client gets some publishes in"
            await trio.sleep(PUBLISH_SECONDS)
            daemon.signal(signal.SIGKILL)
            with trio.fail_after(30):
                await daemon.process.wait()
            stop.set()
    assert daemon.process.returncode == -signal.SIGKILL

    async with broker_process(tmp_path, 2, SNS_CONFIG) as (_, endpoint):
        sqs = sqs_client(endpoint)
        url = {
            name: sqs.get_queue_url(QueueName=name)["QueueUrl"]
            for name in ("q-a", "q-b", "q-raw", "f-a.fifo", "f-b.fifo")
        }
        for name in ("q-a", "q-b", "q-raw"):
            received = await trio.to_thread.run_sync(drain, endpoint, url[name])
            counts = collections.Counter(message_of(m, name == "q-raw") for m in received)
            if name != "q-raw":
                ids = collections.Counter(json.loads(m["Body"])["MessageId"] for m in received)
            for publisher in publishers[:PUBLISHERS]:
                for sequence, result in publisher.acknowledged.items():
                    assert counts[f"{publisher.number}:{sequence}"] == 1, (name, sequence)
                    if name != "q-raw":
                        assert ids[result["MessageId"]] == 1
            extra = len(counts) - sum(len(p.acknowledged) for p in publishers[:PUBLISHERS])
            assert 0 <= extra <= PUBLISHERS  # at most the publish each kill cut off
        for name in ("f-a.fifo", "f-b.fifo"):
            received = await trio.to_thread.run_sync(drain, endpoint, url[name])
            for publisher in publishers[PUBLISHERS:]:
                group = [
                    int(message_of(m, False).split(":")[1])
                    for m in received
                    if m["Attributes"]["MessageGroupId"] == f"g{publisher.number}"
                ]
                acknowledged = sorted(publisher.acknowledged)
                assert acknowledged == list(range(len(acknowledged)))
                assert group[: len(acknowledged)] == acknowledged  # in order, none lost
                assert group[len(acknowledged) :] in ([], [len(acknowledged)])
        sns = sns_client(endpoint)
        fifo = sns.list_topics()["Topics"]
        fifo_arn = next(t["TopicArn"] for t in fifo if t["TopicArn"].endswith(".fifo"))
        first = publishers[PUBLISHERS]
        again = sns.publish(
            TopicArn=fifo_arn,
            Message="another body, same id",
            MessageGroupId=f"g{first.number}",
            MessageDeduplicationId=f"{first.number}-0",
        )
        assert again["MessageId"] == first.acknowledged[0]["MessageId"]
        assert again["SequenceNumber"] == first.acknowledged[0]["SequenceNumber"]
        later = sns.publish(
            TopicArn=fifo_arn, Message="new", MessageGroupId="g0", MessageDeduplicationId="new"
        )
        last = max(
            int(r["SequenceNumber"])
            for p in publishers[PUBLISHERS:]
            for r in p.acknowledged.values()
        )
        assert int(later["SequenceNumber"]) > last  # sequence numbers are never reused


async def test_pending_http_deliveries_resume_after_a_restart(tmp_path: Path) -> None:
    policy = json.dumps(
        {"healthyRetryPolicy": {"numRetries": 20, "minDelayTarget": 1, "maxDelayTarget": 1}}
    )
    with Endpoint() as endpoint:
        endpoint.behaviour_of = lambda r: (
            "503" if r.headers["x-amz-sns-message-type"] == "Notification" else "ok"
        )
        async with broker_process(tmp_path, 1, SNS_CONFIG) as (daemon, api):
            sns = sns_client(api)
            topic = sns.create_topic(Name="hooks")["TopicArn"]
            arn = sns.subscribe(
                TopicArn=topic,
                Protocol="http",
                Endpoint=endpoint.url,
                Attributes={"DeliveryPolicy": policy},
                ReturnSubscriptionArn=True,
            )["SubscriptionArn"]
            (confirmation,) = await trio.to_thread.run_sync(endpoint.wait_for, 1)
            sns.confirm_subscription(TopicArn=topic, Token=confirmation.envelope()["Token"])
            ids = [sns.publish(TopicArn=topic, Message=f"m{i}")["MessageId"] for i in range(3)]
            await trio.to_thread.run_sync(
                lambda: endpoint.wait_for(6, match=lambda r: r.answered == "503")
            )
            daemon.signal(signal.SIGKILL)
            with trio.fail_after(30):
                await daemon.process.wait()
        endpoint.behaviour_of = None  # the endpoint recovers while the broker is down
        killed_at = time.monotonic()
        async with broker_process(tmp_path, 2, SNS_CONFIG) as (_, api):
            delivered = await trio.to_thread.run_sync(
                lambda: endpoint.wait_for(
                    3, match=lambda r: r.answered == "ok" and r.at > killed_at, timeout=20
                )
            )
            assert {r.headers["x-amz-sns-message-id"] for r in delivered} == set(ids)
            assert {r.headers["x-amz-sns-subscription-arn"] for r in delivered} == {arn}


async def test_a_raw_dead_letter_keeps_its_attributes_across_a_restart(tmp_path: Path) -> None:
    policy = json.dumps(
        {"healthyRetryPolicy": {"numRetries": 20, "minDelayTarget": 1, "maxDelayTarget": 1}}
    )
    attributes = {
        "colour": {"DataType": "String", "StringValue": "red"},
        "blob": {"DataType": "Binary", "BinaryValue": b"\x00\x01"},
    }
    with Endpoint() as endpoint:
        endpoint.behaviour_of = lambda r: (
            "503" if r.headers["x-amz-sns-message-type"] == "Notification" else "ok"
        )
        async with broker_process(tmp_path, 1, SNS_CONFIG) as (daemon, api):
            sns = sns_client(api)
            sqs = sqs_client(api)
            topic = sns.create_topic(Name="raw-hooks")["TopicArn"]
            dlq = sqs.create_queue(QueueName="raw-hooks-dlq")["QueueUrl"]
            sns.subscribe(
                TopicArn=topic,
                Protocol="http",
                Endpoint=endpoint.url,
                Attributes={
                    "DeliveryPolicy": policy,
                    "RawMessageDelivery": "true",
                    "RedrivePolicy": json.dumps({"deadLetterTargetArn": queue_arn(sqs, dlq)}),
                },
            )
            (confirmation,) = await trio.to_thread.run_sync(endpoint.wait_for, 1)
            sns.confirm_subscription(TopicArn=topic, Token=confirmation.envelope()["Token"])
            sns.publish(TopicArn=topic, Message="raw", MessageAttributes=attributes)
            await trio.to_thread.run_sync(
                lambda: endpoint.wait_for(1, match=lambda r: r.answered == "503")
            )
            daemon.signal(signal.SIGKILL)
            with trio.fail_after(30):
                await daemon.process.wait()
        # After the restart the endpoint refuses for good: the row read back from the store
        # goes to the DLQ with the attributes stored beside its body.
        endpoint.behaviour_of = lambda r: "404"
        async with broker_process(tmp_path, 2, SNS_CONFIG) as (_, api):
            sqs = sqs_client(api)
            dlq = sqs.get_queue_url(QueueName="raw-hooks-dlq")["QueueUrl"]
            (dead,) = await trio.to_thread.run_sync(lambda: receive_all(sqs, dlq, 1, timeout=20))
            assert dead["Body"] == "raw"
            kept = ("DataType", "StringValue", "BinaryValue")
            found = {
                name: {k: v for k, v in value.items() if k in kept}
                for name, value in dead["MessageAttributes"].items()
            }
            assert found == attributes


async def test_an_unsubscribe_restore_link_works_after_a_restart(tmp_path: Path) -> None:
    with Endpoint() as endpoint:
        async with broker_process(tmp_path, 1, SNS_CONFIG) as (daemon, api):
            sns = sns_client(api)
            topic = sns.create_topic(Name="restorable")["TopicArn"]
            arn = sns.subscribe(
                TopicArn=topic, Protocol="http", Endpoint=endpoint.url, ReturnSubscriptionArn=True
            )["SubscriptionArn"]
            (confirmation,) = await trio.to_thread.run_sync(endpoint.wait_for, 1)
            sns.confirm_subscription(TopicArn=topic, Token=confirmation.envelope()["Token"])
            sns.unsubscribe(SubscriptionArn=arn)
            (goodbye,) = await trio.to_thread.run_sync(
                lambda: endpoint.wait_for(
                    1,
                    match=lambda r: (
                        r.headers["x-amz-sns-message-type"] == "UnsubscribeConfirmation"
                    ),
                )
            )
            daemon.signal(signal.SIGKILL)
            with trio.fail_after(30):
                await daemon.process.wait()
        link = urllib.parse.urlsplit(goodbye.envelope()["SubscribeURL"])
        async with broker_process(tmp_path, 2, SNS_CONFIG) as (_, api):
            sns = sns_client(api)
            assert sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"] == []
            # The link names the first run's address; the second run listens elsewhere.
            moved = link._replace(netloc=urllib.parse.urlsplit(api).netloc).geturl()
            await trio.to_thread.run_sync(fetch, moved)  # an unsigned GET, as a browser's
            listed = sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]
            assert [s["SubscriptionArn"] for s in listed] == [arn]
            message_id = sns.publish(TopicArn=topic, Message="back")["MessageId"]
            (delivery,) = await trio.to_thread.run_sync(
                lambda: endpoint.wait_for(
                    1,
                    match=lambda r: r.headers["x-amz-sns-message-type"] == "Notification",
                    timeout=20,
                )
            )
            assert delivery.headers["x-amz-sns-message-id"] == message_id


def subscription_counts(sns: Any, topic: str) -> tuple[str, str, str]:
    """GetTopicAttributes' SubscriptionsConfirmed, SubscriptionsPending, SubscriptionsDeleted."""
    attributes = sns.get_topic_attributes(TopicArn=topic)["Attributes"]
    return (
        attributes["SubscriptionsConfirmed"],
        attributes["SubscriptionsPending"],
        attributes["SubscriptionsDeleted"],
    )


async def test_subscription_counts_survive_sigkill(tmp_path: Path) -> None:
    with Endpoint() as endpoint:
        async with broker_process(tmp_path, 1, SNS_CONFIG) as (daemon, api):
            sns = sns_client(api)
            sqs = sqs_client(api)
            topic = sns.create_topic(Name="counted")["TopicArn"]
            queues = [sqs.create_queue(QueueName=f"counted-{n}")["QueueUrl"] for n in range(2)]
            sqs_arns = [
                sns.subscribe(
                    TopicArn=topic,
                    Protocol="sqs",
                    Endpoint=queue_arn(sqs, url),
                    ReturnSubscriptionArn=True,
                )["SubscriptionArn"]
                for url in queues
            ]
            http_arn = sns.subscribe(
                TopicArn=topic, Protocol="http", Endpoint=endpoint.url, ReturnSubscriptionArn=True
            )["SubscriptionArn"]
            (confirmation,) = await trio.to_thread.run_sync(endpoint.wait_for, 1)
            sns.confirm_subscription(TopicArn=topic, Token=confirmation.envelope()["Token"])
            # An SQS one and an HTTP one (kept for its restore link) are unsubscribed.
            sns.unsubscribe(SubscriptionArn=sqs_arns[0])
            sns.unsubscribe(SubscriptionArn=http_arn)
            # Another one is left pending: its confirmation is never answered.
            sns.subscribe(TopicArn=topic, Protocol="http", Endpoint=f"{endpoint.url}/pending")
            # A topic deleted and created again starts counting afresh, as AWS's does.
            again = sns.create_topic(Name="again")["TopicArn"]
            gone = sns.subscribe(
                TopicArn=again,
                Protocol="sqs",
                Endpoint=queue_arn(sqs, queues[1]),
                ReturnSubscriptionArn=True,
            )["SubscriptionArn"]
            sns.unsubscribe(SubscriptionArn=gone)
            sns.delete_topic(TopicArn=again)
            assert sns.create_topic(Name="again")["TopicArn"] == again
            assert subscription_counts(sns, topic) == ("1", "1", "2")
            assert subscription_counts(sns, again) == ("0", "0", "0")
            daemon.signal(signal.SIGKILL)
            with trio.fail_after(30):
                await daemon.process.wait()
        async with broker_process(tmp_path, 2, SNS_CONFIG) as (_, api):
            sns = sns_client(api)
            assert subscription_counts(sns, topic) == ("1", "1", "2")
            assert subscription_counts(sns, again) == ("0", "0", "0")
