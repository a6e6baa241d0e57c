"""Publishing: one durable commit per publish, bodies built once, FIFO dedup, dead letters."""

from __future__ import annotations

import io
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

import broker.registry
from broker import sns_bodies, sns_signing
from broker.clock import Clock
from broker.disk_space import DiskSpace
from broker.model.messages import SendRequest
from broker.model.publishing import PublishRequest, prepare
from broker.model.sns_errors import SnsError
from broker.registry import now_ms
from monitoring.logging import EventLog
from proto.aws import sns_envelope
from tests.support.sns_harness import Harness, build


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with trio.open_nursery() as nursery:
        built = await build(tmp_path, nursery)
        yield built
        nursery.cancel_scope.cancel()
    await built.store.aclose()


@pytest.fixture
async def fifo(tmp_path: Path) -> AsyncIterator[Harness]:
    async with trio.open_nursery() as nursery:
        attributes = {"FifoTopic": "true", "ContentBasedDeduplication": "true"}
        built = await build(tmp_path, nursery, topic_name="t.fifo", topic_attributes=attributes)
        yield built
        nursery.cancel_scope.cancel()
    await built.store.aclose()


async def queue(harness: Harness, name: str, **attributes: str):  # type: ignore[no-untyped-def]
    return await harness.queues.create(name, attributes, {})


async def bodies(harness: Harness, name: str) -> list[str]:
    queue = harness.queues.get(name)
    assert queue is not None
    outcome = queue.index.receive(now_ms(), max_messages=10)
    stored = await harness.store.read_messages(
        queue.record.queue_id, [d.seq for d in outcome.deliveries]
    )
    return [message.body for message in stored]


async def test_one_publish_is_one_commit_for_every_subscriber(harness: Harness) -> None:
    for index in range(3):
        made = await queue(harness, f"q{index}")
        await harness.subscribe_queue(made.arn)
    before = harness.store.statistics().commits
    result = await harness.publish("hello", subject="s")
    assert harness.store.statistics().commits == before + 1
    for index in range(3):
        (body,) = await bodies(harness, f"q{index}")
        assert json.loads(body)["MessageId"] == result.message_id


async def test_each_publish_holds_what_its_copies_store_until_its_commit(
    harness: Harness, monkeypatch
) -> None:
    raw = await queue(harness, "raw")
    enveloped = await queue(harness, "enveloped")
    await harness.subscribe_queue(raw.arn, RawMessageDelivery="true")
    await harness.subscribe_queue(enveloped.arn)
    disk = DiskSpace(lambda: 1 << 40, 1, EventLog("broker", stream=io.StringIO()))
    harness.fanout.disk = disk
    settled: list[int] = []
    real_settle = disk.settle
    monkeypatch.setattr(
        disk, "settle", lambda held, stored: settled.append(stored) or real_settle(held, stored)
    )
    await harness.publish("hello")
    (raw_body,) = await bodies(harness, "raw")
    (envelope,) = await bodies(harness, "enveloped")
    assert settled == [len(raw_body) + len(envelope)]
    assert disk._reserved == 0  # released once durable


async def test_the_spliced_envelope_equals_a_directly_built_one(harness: Harness) -> None:
    made = await queue(harness, "q")
    subscription = await harness.subscribe_queue(made.arn)
    attributes = {"a": {"DataType": "String", "StringValue": 'b\n"c"'}}
    result = await harness.publish('tricky "UnsubscribeURL" : ""', attributes=attributes)
    (body,) = await bodies(harness, "q")
    envelope = json.loads(body)
    signer = harness.fanout.signer(harness.topic, "http://broker")
    direct = sns_envelope.notification(
        message_id=result.message_id,
        topic_arn=harness.topic.arn,
        message='tricky "UnsubscribeURL" : ""',
        timestamp=envelope["Timestamp"],
        unsubscribe_url=sns_envelope.unsubscribe_url("http://broker", subscription.arn),
        message_attributes=attributes,
        signer=signer,
    )
    assert body == sns_envelope.encode(direct)


async def test_each_subscription_gets_its_unsubscribe_url_for_the_base_url_used(
    harness: Harness,
) -> None:
    subscriptions = []
    for name in ("a", "b"):
        made = await queue(harness, name)
        subscriptions.append(await harness.subscribe_queue(made.arn))
    for base_url in ("http://one", "https://two:8443"):
        prepared = prepare(harness.topic.settings, PublishRequest(message="m"))
        await harness.fanout.publish(harness.topic, [prepared], base_url=base_url, sender_id="me")
        for name, subscription in zip(("a", "b"), subscriptions, strict=True):
            (body,) = await bodies(harness, name)
            envelope = json.loads(body)
            assert envelope["UnsubscribeURL"] == sns_envelope.unsubscribe_url(
                base_url, subscription.arn
            )
            assert envelope["SigningCertURL"].startswith(base_url)


async def test_concurrent_publishes_sign_before_any_of_them_commits(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # RSA signing on the event loop releases the GIL: done in the step that queues a commit,
    # it let the writer thread commit every publish alone. Signed a step ahead, publishes that run
    # together queue their commits back to back.
    made = await queue(harness, "q")
    await harness.subscribe_queue(made.arn)
    events: list[str] = []
    sign, commit = sns_signing.sign, harness.store.commit

    def recording_sign(*args: Any) -> str:
        events.append("sign")
        return sign(*args)

    async def recording_commit(*args: Any) -> None:
        events.append("commit")
        await commit(*args)

    monkeypatch.setattr(sns_signing, "sign", recording_sign)
    monkeypatch.setattr(harness.store, "commit", recording_commit)
    async with trio.open_nursery() as nursery:
        for index in range(3):
            nursery.start_soon(harness.publish, f"m{index}")
    assert events == ["sign"] * 3 + ["commit"] * 3
    assert sorted(json.loads(b)["Message"] for b in await bodies(harness, "q")) == [
        "m0",
        "m1",
        "m2",
    ]


async def test_deliveries_are_counted_per_queue_once_durable(harness: Harness) -> None:
    made = [await queue(harness, name) for name in ("a", "b")]
    for target in made:
        await harness.subscribe_queue(target.arn, RawMessageDelivery="true")
    await harness.publish("12345")
    await harness.publish("123")
    assert [(q.stats.sent, q.stats.bytes_sent) for q in made] == [(2, 8), (2, 8)]
    assert harness.topic.stats.delivered["sqs"] == 4
    assert harness.topic.stats.latency["sqs"].snapshot().count == 4


async def test_delivery_latency_is_measured_on_the_clock_of_the_publish(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = await queue(harness, "a")
    await harness.subscribe_queue(made.arn)
    system_time = time.time
    monkeypatch.setattr(broker.registry, "CLOCK", Clock())
    monkeypatch.setattr(time, "time", lambda: system_time() + 1800)  # stepped half an hour
    await harness.publish("m")
    latency = harness.topic.stats.latency["sqs"].snapshot()
    assert latency.count == 1
    assert latency.total < 60  # not the clock's step


async def test_fifo_duplicates_are_answered_with_the_original(fifo: Harness) -> None:
    made = await queue(fifo, "q.fifo", FifoQueue="true")
    await fifo.subscribe_queue(made.arn)
    first = await fifo.publish("same", group_id="g")
    second = await fifo.publish("same", group_id="g")
    assert second == first
    other = await fifo.publish("other", group_id="g")
    assert int(other.sequence_number or 0) == int(first.sequence_number or 0) + 1
    received = await bodies(fifo, "q.fifo")
    assert [json.loads(b)["Message"] for b in received] == ["same", "other"]
    assert fifo.topic.next_seq == 3


async def test_a_copy_the_fifo_queue_deduplicates_is_delivered_but_not_counted_as_sent(
    fifo: Harness,
) -> None:
    made = await queue(fifo, "q.fifo", FifoQueue="true")
    await fifo.subscribe_queue(made.arn, RawMessageDelivery="true")
    direct = made.index.send(
        now_ms(), SendRequest(body="direct", group_id="g", deduplication_id="d1")
    )
    await fifo.store.commit(direct.mutations, direct.on_durable)
    await fifo.publish("published", group_id="g", deduplication_id="d1")  # the queue has d1
    await fifo.publish("next", group_id="g", deduplication_id="d2")
    assert await bodies(fifo, "q.fifo") == ["direct", "next"]
    # The topic delivered both copies (SQS took both sends); the queue added one of them.
    assert fifo.topic.stats.delivered["sqs"] == 2
    assert (made.stats.sent, made.stats.bytes_sent) == (1, len("next"))


async def test_undeliverable_messages_go_to_the_dead_letter_queue(harness: Harness) -> None:
    dlq = await queue(harness, "dlq")
    redrive = json.dumps({"deadLetterTargetArn": dlq.arn})
    missing = "arn:aws:sqs:us-east-1:000000000000:never-created"
    await harness.subscribe_queue(missing, RedrivePolicy=redrive, RawMessageDelivery="true")
    many = {f"a{i}": {"DataType": "String", "StringValue": "v"} for i in range(11)}
    small = await queue(harness, "small")
    await harness.subscribe_queue(small.arn, RedrivePolicy=redrive, RawMessageDelivery="true")
    await harness.publish("to nowhere")
    await harness.publish("too many attributes for raw SQS", attributes=many)
    dead = await bodies(harness, "dlq")
    # Both raw subscriptions refuse 11 attributes; "small" took the first message.
    assert sorted(dead) == ["to nowhere", *["too many attributes for raw SQS"] * 2]
    assert await bodies(harness, "small") == ["to nowhere"]
    assert harness.topic.stats.failed["sqs"] == 3
    assert harness.topic.stats.delivered["sqs"] == 1
    assert harness.topic.stats.attempts["sqs"] == 4  # failed at once or not: one attempt each


async def test_characters_sqs_cannot_store_are_replaced_in_raw_copies(harness: Harness) -> None:
    # The envelope escapes control characters; a raw copy gets U+FFFD in their place, as SQS
    # stores such a body, rather than being refused after Publish said 200.
    raw, wrapped = await queue(harness, "raw"), await queue(harness, "wrapped")
    await harness.subscribe_queue(raw.arn, RawMessageDelivery="true")
    await harness.subscribe_queue(wrapped.arn)
    await harness.publish("bell\x07")
    await harness.publish("fine")
    assert await bodies(harness, "raw") == ["bell\ufffd", "fine"]
    assert harness.topic.stats.failed["sqs"] == 0
    assert [json.loads(b)["Message"] for b in await bodies(harness, "wrapped")] == [
        "bell\x07",
        "fine",
    ]


async def test_raw_attributes_are_checked_once_for_every_raw_copy(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SNS takes a NUL in an attribute value; SQS cannot store it, so raw copies carry U+FFFD
    # there; the envelope carries it in its text. One check serves every raw copy.
    checks: list[object] = []
    check = sns_bodies.validate_message_attributes

    def counting(attributes: Any) -> None:
        checks.append(attributes)
        check(attributes)

    monkeypatch.setattr(sns_bodies, "validate_message_attributes", counting)
    for name in ("raw1", "raw2", "wrapped"):
        made = await queue(harness, name)
        raw = {"RawMessageDelivery": "true"} if name.startswith("raw") else {}
        await harness.subscribe_queue(made.arn, **raw)
    odd = {"n": {"DataType": "String", "StringValue": "v\x00"}}
    await harness.publish("m", attributes=odd)
    assert len(checks) == 1
    assert await bodies(harness, "raw1") == await bodies(harness, "raw2") == ["m"]
    (wrapped,) = await bodies(harness, "wrapped")
    assert json.loads(wrapped)["MessageAttributes"]["n"]["Value"] == "v\x00"
    assert harness.topic.stats.failed["sqs"] == 0
    assert harness.topic.stats.delivered["sqs"] == 3


async def test_an_envelope_is_signed_once_for_every_subscription_before_the_commit(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The raw subscription comes first: it needs no envelope, the others still get theirs
    # signed a step ahead of the commit.
    events: list[str] = []
    sign, commit = sns_signing.sign, harness.store.commit

    def recording_sign(*args: Any) -> str:
        events.append("sign")
        return sign(*args)

    async def recording_commit(*args: Any) -> None:
        events.append("commit")
        await commit(*args)

    raw = await queue(harness, "raw")
    await harness.subscribe_queue(raw.arn, RawMessageDelivery="true")
    for index in range(4):
        made = await queue(harness, f"q{index}")
        await harness.subscribe_queue(made.arn)
    monkeypatch.setattr(sns_signing, "sign", recording_sign)
    monkeypatch.setattr(harness.store, "commit", recording_commit)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(harness.publish, "other")
        nursery.start_soon(harness.publish, "once")
    assert events == ["sign", "sign", "commit", "commit"]
    result = await harness.publish("third")
    urls = set()
    for index in range(4):
        envelopes = [json.loads(body) for body in await bodies(harness, f"q{index}")]
        assert sorted(e["Message"] for e in envelopes) == ["once", "other", "third"]
        assert envelopes[-1]["MessageId"] == result.message_id
        urls.update(e["UnsubscribeURL"] for e in envelopes)
    assert len(urls) == 4
    assert sorted(await bodies(harness, "raw")) == ["once", "other", "third"]


async def test_validation_happens_before_anything_is_accepted(harness: Harness) -> None:
    with pytest.raises(SnsError, match="Empty message"):
        await harness.publish("")
    assert harness.topic.stats.published == 0


# ------------------------------------------------------------------ queue policies

SNS_PRINCIPAL = "sns.amazonaws.com"
PARTNER = "111122223333"


def sns_statement(effect: str, topic_arn: str, queue_arn: str) -> str:
    """AWS's usual queue policy for a topic's deliveries, with ``effect``."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": effect,
                    "Principal": {"Service": SNS_PRINCIPAL},
                    "Action": "sqs:SendMessage",
                    "Resource": queue_arn,
                    "Condition": {"ArnEquals": {"aws:SourceArn": topic_arn}},
                }
            ],
        }
    )


def events(log: io.StringIO, name: str) -> list[str]:
    return [line for line in log.getvalue().splitlines() if f"event={name} " in line]


async def test_a_queue_policy_deny_for_the_topic_blocks_its_deliveries_only(
    harness: Harness,
) -> None:
    log = io.StringIO()
    harness.fanout.log = EventLog("test", stream=log)
    topic_arn = harness.topic.arn
    dlq = await queue(harness, "dlq")
    denied = await queue(harness, "denied")
    await harness.queues.set_attributes(
        denied, {"Policy": sns_statement("Deny", topic_arn, denied.arn)}
    )
    elsewhere = await queue(harness, "elsewhere")  # denies another topic only
    await harness.queues.set_attributes(
        elsewhere, {"Policy": sns_statement("Deny", topic_arn + "-other", elsewhere.arn)}
    )
    open_queue = await queue(harness, "open")
    redrive = json.dumps({"deadLetterTargetArn": dlq.arn})
    await harness.subscribe_queue(denied.arn, RedrivePolicy=redrive, RawMessageDelivery="true")
    await harness.subscribe_queue(elsewhere.arn, RawMessageDelivery="true")
    await harness.subscribe_queue(open_queue.arn, RawMessageDelivery="true")
    await harness.publish("one")
    await harness.publish("two")
    assert await bodies(harness, "denied") == []
    assert sorted(await bodies(harness, "dlq")) == ["one", "two"]
    assert sorted(await bodies(harness, "elsewhere")) == ["one", "two"]
    assert sorted(await bodies(harness, "open")) == ["one", "two"]
    stats = harness.topic.stats
    assert (stats.attempts["sqs"], stats.delivered["sqs"], stats.failed["sqs"]) == (6, 4, 2)
    # Logged once for the subscription, not per message; once more when the Deny is gone.
    (refused,) = events(log, "sns.delivery_refused")
    assert f"dead_letter={dlq.arn}" in refused
    assert events(log, "sns.delivery_failed") == []
    await harness.queues.set_attributes(denied, {"Policy": ""})
    await harness.publish("three")
    await harness.publish("four")
    assert sorted(await bodies(harness, "denied")) == ["four", "three"]
    assert len(events(log, "sns.delivery_allowed")) == 1
    assert len(events(log, "sns.delivery_refused")) == 1


async def test_a_queue_in_another_account_needs_an_allow_for_the_topic(harness: Harness) -> None:
    # This broker keeps topics and queues in one account; a topic whose ARN names another
    # account stands for the cross-account set-up (the queue's policy sees that ARN).
    partner_topic = f"arn:aws:sns:us-east-1:{PARTNER}:{harness.topic.name}"
    target = await queue(harness, "target")
    await harness.subscribe_queue(target.arn, RawMessageDelivery="true")
    harness.topic.arn = partner_topic
    await harness.publish("without an allow")
    assert await bodies(harness, "target") == []
    assert harness.topic.stats.failed["sqs"] == 1
    await harness.queues.set_attributes(
        target, {"Policy": sns_statement("Allow", partner_topic + "-other", target.arn)}
    )
    await harness.publish("allowed for another topic")
    assert await bodies(harness, "target") == []
    await harness.queues.set_attributes(
        target, {"Policy": sns_statement("Allow", partner_topic, target.arn)}
    )
    await harness.publish("with the usual allow")
    assert await bodies(harness, "target") == ["with the usual allow"]
    assert harness.topic.stats.failed["sqs"] == 2
    assert harness.topic.stats.delivered["sqs"] == 1
