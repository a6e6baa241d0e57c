"""Per-topic SNS metrics on /metrics: every series, every protocol label from the start."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.support.broker import BrokerThread, broker_config
from tests.support.sns import Endpoint, queue_arn, sns_client


def values(broker: BrokerThread, family: str) -> dict[tuple[str, ...], float]:
    found = broker.metrics()[family]
    return {
        tuple(sample.labels[k] for k in ("topic", "protocol") if k in sample.labels): sample.value
        for sample in found.samples
        if not sample.name.endswith(("_bucket", "_sum", "_created"))
    }


def test_published_delivered_filtered_attempts_latency_and_pending(tmp_path: Path) -> None:
    with BrokerThread(broker_config(tmp_path / "data")) as broker, Endpoint() as endpoint:
        sns = sns_client(broker.endpoint)
        sqs = broker.client("json")
        topic = sns.create_topic(Name="watched")["TopicArn"]
        assert values(broker, "wharf_sns_notifications_delivered") == {
            ("watched", "sqs"): 0,
            ("watched", "http"): 0,
            ("watched", "https"): 0,
        }
        url = sqs.create_queue(QueueName="watched")["QueueUrl"]
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn(sqs, url))
        other = sqs.create_queue(QueueName="watched-filtered")["QueueUrl"]
        sns.subscribe(
            TopicArn=topic,
            Protocol="sqs",
            Endpoint=queue_arn(sqs, other),
            Attributes={"FilterPolicy": json.dumps({"never": ["matches"]})},
        )
        sns.subscribe(TopicArn=topic, Protocol="http", Endpoint=endpoint.url)
        token = endpoint.wait_for(1)[0].envelope()["Token"]
        sns.confirm_subscription(TopicArn=topic, Token=token)
        sns.publish(TopicArn=topic, Message="one")
        sns.publish(TopicArn=topic, Message="two")
        endpoint.wait_for(3)
        assert values(broker, "wharf_sns_messages_published") == {("watched",): 2}
        assert values(broker, "wharf_sns_notifications_filtered_out") == {("watched",): 2}
        delivered = values(broker, "wharf_sns_notifications_delivered")
        assert delivered[("watched", "sqs")] == 2
        deadline = time.monotonic() + 5  # counted once the finished row is committed
        while time.monotonic() < deadline:
            if values(broker, "wharf_sns_notifications_delivered")[("watched", "http")] == 2:
                break
            time.sleep(0.05)
        assert values(broker, "wharf_sns_notifications_delivered")[("watched", "http")] == 2
        # Notification attempts only: one per SQS copy (the filtered-out queue got none), one
        # per POST; the confirmation POST is counted apart.
        assert values(broker, "wharf_sns_delivery_attempts") == {
            ("watched", "sqs"): 2,
            ("watched", "http"): 2,
            ("watched", "https"): 0,
        }
        assert values(broker, "wharf_sns_confirmation_attempts") == {
            ("watched", "sqs"): 0,
            ("watched", "http"): 1,
            ("watched", "https"): 0,
        }
        latency = broker.metrics()["wharf_sns_delivery_latency_seconds"]
        counts = {
            s.labels["protocol"]: s.value for s in latency.samples if s.name.endswith("_count")
        }
        assert counts == {"sqs": 2, "http": 2, "https": 0}
        assert values(broker, "wharf_sns_pending_http_deliveries") == {("watched",): 0}
