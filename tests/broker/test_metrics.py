"""The CloudWatch-style SQS metrics on the admin listener, after real boto3 traffic.

Every scrape is parsed with prometheus_client's own parser, so the exposition is valid too.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest

from broker.metrics import BrokerMetrics
from monitoring.metrics import Metrics
from tests.support.broker import BrokerThread, broker_config


def sample(families: dict[str, Any], name: str, **labels: str) -> float:
    """The value of the one sample called ``name`` whose labels include ``labels``."""
    family_name = name
    for suffix in ("_total", "_bucket", "_count", "_sum", "_created"):
        if name.endswith(suffix) and name[: -len(suffix)] in families:
            family_name = name[: -len(suffix)]
    found = [
        s.value
        for s in families[family_name].samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(found) == 1, (name, labels, found)
    return float(found[0])


@pytest.fixture
def traffic(tmp_path: Path) -> Any:
    """A broker after a known amount of traffic, and its queue URLs."""
    with BrokerThread(broker_config(tmp_path)) as broker:
        sqs = broker.client("json")
        url = sqs.create_queue(QueueName="metered")["QueueUrl"]
        fifo = sqs.create_queue(
            QueueName="metered.fifo",
            Attributes={"FifoQueue": "true", "ContentBasedDeduplication": "true"},
        )["QueueUrl"]
        for body in ("one", "two", "three"):
            sqs.send_message(QueueUrl=url, MessageBody=body)
        sqs.send_message_batch(
            QueueUrl=url,
            Entries=[{"Id": "a", "MessageBody": "four"}, {"Id": "b", "MessageBody": "five"}],
        )
        sqs.send_message(QueueUrl=url, MessageBody="later", DelaySeconds=900)
        sqs.send_message(QueueUrl=fifo, MessageBody="f", MessageGroupId="g")
        received = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=3)["Messages"]
        sqs.delete_message(QueueUrl=url, ReceiptHandle=received[0]["ReceiptHandle"])
        sqs.receive_message(QueueUrl=fifo)
        sqs.receive_message(QueueUrl=fifo)  # the group is locked: an empty receive
        with pytest.raises(botocore.exceptions.ClientError):
            sqs.get_queue_url(QueueName="absent")
        yield broker, url, fifo


def test_queue_levels_and_counters(traffic):
    broker, _, _ = traffic
    families = broker.metrics()
    assert sample(families, "wharf_sqs_messages", queue="metered", state="visible") == 2
    assert sample(families, "wharf_sqs_messages", queue="metered", state="in_flight") == 2
    assert sample(families, "wharf_sqs_messages", queue="metered", state="delayed") == 1
    assert sample(families, "wharf_sqs_messages", queue="metered.fifo", state="in_flight") == 1
    assert sample(families, "wharf_sqs_messages_sent_total", queue="metered") == 6
    assert sample(families, "wharf_sqs_messages_received_total", queue="metered") == 3
    assert sample(families, "wharf_sqs_messages_deleted_total", queue="metered") == 1
    assert sample(families, "wharf_sqs_empty_receives_total", queue="metered.fifo") == 1
    assert sample(families, "wharf_sqs_empty_receives_total", queue="metered") == 0
    assert sample(families, "wharf_sqs_sent_bytes_total", queue="metered") == len(
        "onetwothreefourfivelater"
    )


AGE_WAIT_SECONDS = 1.2  # long enough that a collector stuck at 0 cannot pass, short for CI


def test_the_oldest_message_age_is_measured_on_the_broker_clock(tmp_path: Path):
    """The age is read against time.time(), the clock the broker stamps messages with.

    Messages sent in [before, after] are between (scrape start - after) and (scrape end -
    before) seconds old. The broker keeps enqueue times per second, as the latest time in
    each second, so ``after`` is taken once every send is done.
    """
    with BrokerThread(broker_config(tmp_path)) as broker:
        sqs = broker.client("json")
        url = sqs.create_queue(QueueName="aging")["QueueUrl"]
        before = time.time()
        sqs.send_message(QueueUrl=url, MessageBody="old")
        sqs.send_message(QueueUrl=url, MessageBody="young", DelaySeconds=5)
        after = time.time()
        time.sleep(AGE_WAIT_SECONDS)

        def scrape() -> float:
            start = time.time()
            families = broker.metrics()
            end = time.time()
            age = sample(families, "wharf_sqs_oldest_message_age_seconds", queue="aging")
            assert start - after - 0.002 <= age <= end - before + 0.002
            return age

        first = scrape()
        assert first >= AGE_WAIT_SECONDS - 0.002  # a collector stuck at 0 fails here
        time.sleep(0.3)
        assert scrape() >= first + 0.3 - 0.002  # it grows with the clock
        # Received (in flight) or delayed, a message not deleted still counts, as in
        # CloudWatch; only an empty queue reads 0.
        received = sqs.receive_message(QueueUrl=url)["Messages"]
        assert scrape() > first
        sqs.delete_message(QueueUrl=url, ReceiptHandle=received[0]["ReceiptHandle"])
        assert scrape() > first
        sqs.purge_queue(QueueUrl=url)
        families = broker.metrics()
        assert sample(families, "wharf_sqs_oldest_message_age_seconds", queue="aging") == 0


def test_request_counts_and_latency(traffic):
    broker, _, _ = traffic
    families = broker.metrics()
    requests = "wharf_broker_requests_total"
    assert sample(families, requests, action="SendMessage", outcome="success") == 5
    assert sample(families, requests, action="SendMessageBatch", outcome="success") == 1
    assert sample(families, requests, action="ReceiveMessage", outcome="success") == 3
    assert sample(families, requests, action="GetQueueUrl", outcome="client_error") == 1
    assert sample(families, requests, action="CreateQueue", outcome="success") == 2
    latency = "wharf_broker_request_duration_seconds"
    assert sample(families, f"{latency}_count", action="SendMessage") == 5
    assert sample(families, f"{latency}_bucket", action="SendMessage", le="+Inf") == 5
    assert sample(families, f"{latency}_sum", action="SendMessage") > 0


def test_store_metrics(traffic):
    broker, _, _ = traffic
    families = broker.metrics()
    commits = sample(families, "wharf_store_commits_total")
    mutations = sample(families, "wharf_store_mutations_total")
    assert commits >= 1
    assert mutations >= 7  # the sends at least
    assert sample(families, "wharf_store_mutations_per_commit_count") == commits
    assert sample(families, "wharf_store_mutations_per_commit_sum") == mutations
    assert sample(families, "wharf_store_mutations_per_commit_bucket", le="+Inf") == commits
    # OpenMetrics' canonical numbers in le (integer bounds as 1.0, not 1), as
    # prometheus_client writes its own histograms.
    les = [
        s.labels["le"]
        for s in families["wharf_store_mutations_per_commit"].samples
        if "le" in s.labels
    ]
    assert "1.0" in les
    assert all(le == "+Inf" or "." in le or "e" in le for le in les), les
    assert sample(families, "wharf_store_commit_duration_seconds_count") == commits
    assert sample(families, "wharf_store_failed_jobs_total") == 0


def test_a_deleted_queue_leaves_the_metrics(traffic):
    broker, url, _ = traffic
    broker.client("json").delete_queue(QueueUrl=url)
    families = broker.metrics()
    queues = {s.labels["queue"] for s in families["wharf_sqs_messages"].samples}
    assert queues == {"metered.fifo"}


def test_the_request_series_are_the_daemons_own():
    # Two broker metric sets in one process must not collide (no global registry).
    first = BrokerMetrics(Metrics("broker", version="0"))
    second = BrokerMetrics(Metrics("broker", version="0"))
    first.observe_request("sqs", "SendMessage", 200, 0.01)
    second.observe_request("sqs", "SendMessage", 500, 0.02)
    assert first.metrics.registry is not second.metrics.registry
    value = first.metrics.registry.get_sample_value(
        "wharf_broker_requests_total",
        {"service": "sqs", "action": "SendMessage", "outcome": "success"},
    )
    assert value == 1
    assert (
        second.metrics.registry.get_sample_value(
            "wharf_broker_requests_total",
            {"service": "sqs", "action": "SendMessage", "outcome": "server_error"},
        )
        == 1
    )
