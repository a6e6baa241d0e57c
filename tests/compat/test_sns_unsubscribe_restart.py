"""Unsubscribed HTTP subscriptions across a SIGKILL: the outbox keeps only what is still owed.

The broker runs as a real subprocess (tests.support.crash_harness). Two subscriptions of one
topic, each with a DeliveryPolicy of retries 1 s apart, are unsubscribed while their endpoints
fail, and the broker is killed right after:

- one never confirmed: its SubscriptionConfirmation retries were dropped with it, in the store
  too, so the restarted broker sends it nothing (no SubscriptionConfirmation with a dead token,
  no UnsubscribeConfirmation);
- one confirmed: its UnsubscribeConfirmation is retried after the restart on the
  subscription's own policy (AWS's default would wait 20 s), then given up.

And a restore link an older broker kept for a subscription never confirmed brings it back
pending, asked to confirm anew: following it confirms nothing.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from broker.model.sns_mutations import SubscriptionDeleted, SubscriptionSaved
from broker.store.sqlite import SqliteStore
from proto.aws.sns_envelope import subscribe_url
from tests.support.broker import BrokerThread, broker_config
from tests.support.crash_harness import broker_process
from tests.support.processes import DaemonProcess
from tests.support.sns import Endpoint, Received, fetch, sns_client

pytestmark = pytest.mark.slow

SNS_CONFIG = """
[sns]
connect_timeout_seconds = 1.0
response_timeout_seconds = 1.0
"""
# Retries 1 s apart (after jitter, at most 1.1 s); AWS's default policy waits 20 s.
PENDING_POLICY = json.dumps(
    {"healthyRetryPolicy": {"numRetries": 20, "minDelayTarget": 1, "maxDelayTarget": 1}}
)
CONFIRMED_POLICY = json.dumps(
    {"healthyRetryPolicy": {"numRetries": 3, "minDelayTarget": 1, "maxDelayTarget": 1}}
)


def of_type(kind: str) -> Callable[[Received], bool]:
    def match(request: Received) -> bool:
        return request.headers.get("x-amz-sns-message-type") == kind

    return match


def pending_deliveries(daemon: DaemonProcess, topic: str) -> float:
    """The topic's ``wharf_sns_pending_http_deliveries`` gauge, scraped from the admin port."""
    host, port = daemon.addresses["admin"]
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as response:
        body = response.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(body)}
    name = topic.rsplit(":", 1)[1]
    family = families["wharf_sns_pending_http_deliveries"]
    return next(s.value for s in family.samples if s.labels["topic"] == name)


async def settled(daemon: DaemonProcess, topic: str) -> float:
    """The gauge once it reads 0, or its last reading after 10 s."""
    with trio.move_on_after(10):
        while await trio.to_thread.run_sync(pending_deliveries, daemon, topic):  # noqa: ASYNC110 - bounded poll of a scraped gauge
            await trio.sleep(0.05)
    return await trio.to_thread.run_sync(pending_deliveries, daemon, topic)


async def test_unsubscribed_subscriptions_after_a_sigkill(tmp_path: Path) -> None:
    with Endpoint(behaviour="500") as never_confirmed, Endpoint() as confirmed:
        goodbyes = of_type("UnsubscribeConfirmation")
        confirmed.behaviour_of = lambda r: "500" if goodbyes(r) else "ok"
        async with broker_process(tmp_path, 1, SNS_CONFIG) as (daemon, api):
            sns = sns_client(api)
            topic = sns.create_topic(Name="unsubscribed")["TopicArn"]
            leaving = sns.subscribe(
                TopicArn=topic,
                Protocol="http",
                Endpoint=confirmed.url,
                Attributes={"DeliveryPolicy": CONFIRMED_POLICY},
                ReturnSubscriptionArn=True,
            )["SubscriptionArn"]
            (invitation,) = await trio.to_thread.run_sync(confirmed.wait_for, 1)
            await trio.to_thread.run_sync(fetch, invitation.envelope()["SubscribeURL"])
            pending = sns.subscribe(
                TopicArn=topic,
                Protocol="http",
                Endpoint=never_confirmed.url,
                Attributes={"DeliveryPolicy": PENDING_POLICY},
                ReturnSubscriptionArn=True,
            )["SubscriptionArn"]
            await trio.to_thread.run_sync(never_confirmed.wait_for, 1)
            # Its first retry is due a second after that first attempt: the kill comes sooner.
            sns.unsubscribe(SubscriptionArn=pending)
            sns.unsubscribe(SubscriptionArn=leaving)
            await trio.to_thread.run_sync(lambda: confirmed.wait_for(1, match=goodbyes))
            await trio.sleep(0.2)  # its retry, 1 s later, is committed
            daemon.signal(signal.SIGKILL)
            with trio.fail_after(30):
                await daemon.process.wait()
        never_confirmed.behaviour = "ok"  # it would take anything now
        killed_at = time.monotonic()
        async with broker_process(tmp_path, 2, SNS_CONFIG) as (daemon, api):
            await trio.sleep(1.5)  # the pending one's retries were due a second apart
            assert [r for r in never_confirmed.requests if r.at > killed_at] == []
            assert not any(goodbyes(r) for r in never_confirmed.requests)
            # Retried on its own policy: four attempts in all (the one before the kill among
            # them, or not if the kill came before its retry was committed), then given up.
            await trio.to_thread.run_sync(lambda: confirmed.wait_for(4, match=goodbyes, timeout=15))
            assert await settled(daemon, topic) == 0
            listed = sns_client(api).list_subscriptions_by_topic(TopicArn=topic)
            assert listed["Subscriptions"] == []


def test_a_kept_link_of_one_never_confirmed_restores_it_pending(tmp_path: Path) -> None:
    """Older brokers sent never-confirmed subscriptions an UnsubscribeConfirmation too, and
    kept its restore link in the store: following it must not confirm the subscription."""
    data = tmp_path / "data"
    with Endpoint() as endpoint:
        with BrokerThread(broker_config(data)) as broker:
            sns = sns_client(broker.endpoint)
            topic = sns.create_topic(Name="legacy-link")["TopicArn"]
            arn = sns.subscribe(
                TopicArn=topic, Protocol="http", Endpoint=endpoint.url, ReturnSubscriptionArn=True
            )["SubscriptionArn"]
            endpoint.wait_for(1, match=of_type("SubscriptionConfirmation"))
        link = "cd" * 64
        trio.run(keep_legacy_link, data, link)  # what an older broker's Unsubscribe stored
        with BrokerThread(broker_config(data)) as broker:
            sns = sns_client(broker.endpoint)
            assert sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"] == []
            fetch(subscribe_url(broker.endpoint, topic, link))  # the old link, followed
            attributes = sns.get_subscription_attributes(SubscriptionArn=arn)["Attributes"]
            assert attributes["PendingConfirmation"] == "true"
            # Asked to confirm anew, with a new token, which is what confirms it.
            invitations = endpoint.wait_for(2, match=of_type("SubscriptionConfirmation"))
            envelope = invitations[-1].envelope()
            assert envelope["Token"] != link
            with pytest.raises(sns.exceptions.InvalidParameterException):
                sns.confirm_subscription(TopicArn=topic, Token=link)  # the link is spent
            fetch(envelope["SubscribeURL"])
            attributes = sns.get_subscription_attributes(SubscriptionArn=arn)["Attributes"]
            assert attributes["PendingConfirmation"] == "false"


async def keep_legacy_link(data: Path, link: str) -> None:
    """Turn the store's one pending subscription into an unsubscribed one with a restore link."""
    store = SqliteStore(data)
    await store.open()
    try:
        (record,) = (await store.load_sns()).subscriptions
        assert record.pending
        kept = msgspec.structs.replace(record, token=link, unsubscribed=True)
        await store.commit(
            [
                SubscriptionDeleted(subscription_id=record.subscription_id),
                SubscriptionSaved(subscription=kept),
            ]
        )
    finally:
        await store.aclose()
