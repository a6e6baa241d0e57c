"""The SNS shell's parts wired together in the test's own trio loop, without listeners.

Real store, queues, topics, publisher and delivery worker, as ``broker.app`` wires them, so
unit tests of :mod:`broker.fanout` and :mod:`broker.http_delivery` see the real interplay.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from broker.config import SnsSettings
from broker.fanout import Fanout, PublishResult
from broker.http_client import HttpClient
from broker.http_delivery import HttpDeliveries
from broker.model.publishing import PublishRequest, prepare
from broker.model.signing import Signer
from broker.registry import QueueRegistry
from broker.sns_keys import load_signing_keys
from broker.sns_signing import EnvelopeSigning
from broker.store.sqlite import SqliteStore
from broker.topic_state import Subscription, Topic
from broker.topics import TopicRegistry
from monitoring.logging import EventLog

FAST = json.dumps(
    {"healthyRetryPolicy": {"numRetries": 5, "minDelayTarget": 1, "maxDelayTarget": 1}}
)


@dataclass
class Harness:
    store: SqliteStore
    topics: TopicRegistry
    deliveries: HttpDeliveries
    fanout: Fanout
    topic: Topic
    queues: QueueRegistry

    async def subscribe(self, url: str, **attributes: str) -> Subscription:
        subscription, mutations = self.topics.subscribe(
            self.topic, "http", url, attributes, owner="000000000000", now=1
        )
        found = self.topics.by_token(self.topic.arn, subscription.record.token or "", 2)
        _, confirmed = self.topics.confirm(
            found, authenticated=True, authenticate_on_unsubscribe=False
        )
        await self.store.commit([*mutations, *confirmed])
        return subscription

    async def subscribe_queue(self, arn: str, **attributes: str) -> Subscription:
        subscription, mutations = self.topics.subscribe(
            self.topic, "sqs", arn, attributes, owner="000000000000", now=1
        )
        await self.store.commit(mutations)
        return subscription

    async def publish(self, message: str, **fields: Any) -> PublishResult:
        prepared = prepare(self.topic.settings, PublishRequest(message=message, **fields))
        (result,) = await self.fanout.publish(
            self.topic, [prepared], base_url="http://broker", sender_id="me"
        )
        return result


async def build(
    directory: Path,
    nursery: trio.Nursery,
    *,
    topic_name: str = "t",
    topic_attributes: dict[str, str] | None = None,
    **settings: int,
) -> Harness:
    """Open everything on ``directory``; the worker runs in ``nursery``."""
    log = EventLog("test", stream=io.StringIO())
    store = SqliteStore(directory)
    await store.open()
    queues = QueueRegistry(
        store, Signer(b"k" * 32), region="us-east-1", account_id="000000000000", log=log
    )
    await queues.load()
    topics = TopicRegistry(store, region="us-east-1", account_id="000000000000", log=log)
    await topics.load()
    deliveries = HttpDeliveries(
        store,
        topics,
        HttpClient(
            connect_timeout=0.5, response_timeout=settings.get("response_timeout_ms", 500) / 1000
        ),
        concurrency=settings.get("concurrency", 16),
        endpoint_concurrency=settings.get("endpoint_concurrency", 2),
        log=log,
    )
    deliveries.restore(topics.pending_deliveries)
    keys = load_signing_keys(SnsSettings(), directory)
    fanout = Fanout(
        store,
        queues,
        keys,
        signing=EnvelopeSigning(keys.key, 0, log),  # tests/broker/test_sns_signing.py: processes
        deliveries=deliveries,
        signature_version="1",
        cert_url_base="",
        log=log,
    )
    deliveries.fanout = fanout
    topic = topics.get(topic_name) or await topics.create(topic_name, topic_attributes or {}, {}, 1)
    await nursery.start(deliveries.run)
    return Harness(store, topics, deliveries, fanout, topic, queues)
