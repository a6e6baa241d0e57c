"""The CloudWatch-style SQS metrics on the admin listener, after real boto3 traffic.

Every scrape is parsed with prometheus_client's own parser, so the exposition is valid too.
"""

from __future__ import annotations

import functools
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import botocore.exceptions
import pytest
import trio
from prometheus_client import generate_latest
from prometheus_client.openmetrics import parser as openmetrics_parser

import broker.metrics as broker_metrics
from broker.metrics import BrokerMetrics
from broker.model.attributes import QueueCounts
from monitoring.metrics import Metrics
from monitoring.settings import HttpLimits
from tests.support.broker import BrokerThread, broker_config
from tests.support.http import raw_exchange, request


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
    """The age is read against time.time(), which the broker's clock (broker/clock.py)
    follows exactly while it does not step.

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


def test_every_action_has_its_request_series_from_zero(tmp_path: Path):
    """An alert on rate(wharf_broker_requests_total{outcome="server_error"}) sees an action's
    first server error only if its series existed, at 0, before it: the series of every
    action the broker serves (and of Unknown) exist from the start, for each outcome."""
    with BrokerThread(broker_config(tmp_path)) as broker:
        samples = broker.metrics()["wharf_broker_requests"].samples
        series = {(s.labels["service"], s.labels["action"], s.labels["outcome"]) for s in samples}
        assert {s.value for s in samples} == {0}
        for outcome in ("success", "client_error", "server_error"):
            for service, action in (
                ("sqs", "SendMessage"),
                ("sqs", "ReceiveMessage"),
                ("sqs", "Unknown"),
                ("sns", "Publish"),
                ("sns", "Unknown"),
            ):
                assert (service, action, outcome) in series
        assert len(series) == (23 + 1 + 19 + 1) * 3


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


# ------------------------------------------------------------------ scrapes off the event loop

NOW_MS = 1_800_000_000_000


class FakeQueue:
    """What the queue collector reads of a queue: name, counts, oldest message, counters."""

    def __init__(self, name, counts, oldest, stats):
        self.name = name
        self._counts = QueueCounts(*counts)
        self.index = SimpleNamespace(oldest_enqueued_at=lambda now: oldest)
        fields = ("sent", "received", "deleted", "empty_receives", "bytes_sent")
        self.stats = SimpleNamespace(**dict(zip(fields, stats, strict=True)))

    def counts(self, now):
        assert now == NOW_MS
        return self._counts


# The exposition the collector gave for these queues before scrapes were built off the loop.
QUEUE_SERIES_BEFORE = """\
# HELP wharf_sqs_messages Messages per queue and state (ApproximateNumberOfMessages*).
# TYPE wharf_sqs_messages gauge
wharf_sqs_messages{queue="orders",state="visible"} 3.0
wharf_sqs_messages{queue="orders",state="in_flight"} 2.0
wharf_sqs_messages{queue="orders",state="delayed"} 1.0
wharf_sqs_messages{queue="empty.fifo",state="visible"} 0.0
wharf_sqs_messages{queue="empty.fifo",state="in_flight"} 0.0
wharf_sqs_messages{queue="empty.fifo",state="delayed"} 0.0
wharf_sqs_messages{queue="drained",state="visible"} 0.0
wharf_sqs_messages{queue="drained",state="in_flight"} 0.0
wharf_sqs_messages{queue="drained",state="delayed"} 0.0
wharf_sqs_messages{queue="future",state="visible"} 1.0
wharf_sqs_messages{queue="future",state="in_flight"} 0.0
wharf_sqs_messages{queue="future",state="delayed"} 0.0
# HELP wharf_sqs_oldest_message_age_seconds Age of the oldest message not deleted; 0 when \
empty (ApproximateAgeOfOldestMessage).
# TYPE wharf_sqs_oldest_message_age_seconds gauge
wharf_sqs_oldest_message_age_seconds{queue="orders"} 61.5
wharf_sqs_oldest_message_age_seconds{queue="empty.fifo"} 0.0
wharf_sqs_oldest_message_age_seconds{queue="drained"} 0.0
wharf_sqs_oldest_message_age_seconds{queue="future"} 0.0
# HELP wharf_sqs_messages_sent_total Messages queued (NumberOfMessagesSent; not FIFO duplicates).
# TYPE wharf_sqs_messages_sent_total counter
wharf_sqs_messages_sent_total{queue="orders"} 9.0
wharf_sqs_messages_sent_total{queue="empty.fifo"} 0.0
wharf_sqs_messages_sent_total{queue="drained"} 2.0
wharf_sqs_messages_sent_total{queue="future"} 1.0
# HELP wharf_sqs_messages_received_total Messages returned by receives (NumberOfMessagesReceived).
# TYPE wharf_sqs_messages_received_total counter
wharf_sqs_messages_received_total{queue="orders"} 4.0
wharf_sqs_messages_received_total{queue="empty.fifo"} 0.0
wharf_sqs_messages_received_total{queue="drained"} 2.0
wharf_sqs_messages_received_total{queue="future"} 0.0
# HELP wharf_sqs_messages_deleted_total DeleteMessage successes (NumberOfMessagesDeleted).
# TYPE wharf_sqs_messages_deleted_total counter
wharf_sqs_messages_deleted_total{queue="orders"} 2.0
wharf_sqs_messages_deleted_total{queue="empty.fifo"} 0.0
wharf_sqs_messages_deleted_total{queue="drained"} 2.0
wharf_sqs_messages_deleted_total{queue="future"} 0.0
# HELP wharf_sqs_empty_receives_total Receives that returned nothing (NumberOfEmptyReceives).
# TYPE wharf_sqs_empty_receives_total counter
wharf_sqs_empty_receives_total{queue="orders"} 5.0
wharf_sqs_empty_receives_total{queue="empty.fifo"} 7.0
wharf_sqs_empty_receives_total{queue="drained"} 0.0
wharf_sqs_empty_receives_total{queue="future"} 0.0
# HELP wharf_sqs_sent_bytes_total Bytes of messages accepted (SentMessageSize, summed).
# TYPE wharf_sqs_sent_bytes_total counter
wharf_sqs_sent_bytes_total{queue="orders"} 1234.0
wharf_sqs_sent_bytes_total{queue="empty.fifo"} 0.0
wharf_sqs_sent_bytes_total{queue="drained"} 20.0
wharf_sqs_sent_bytes_total{queue="future"} 1.0
"""


async def test_the_queue_series_are_what_they_were_before_the_snapshots(monkeypatch):
    monkeypatch.setattr(broker_metrics, "now_ms", lambda: NOW_MS)
    queues = [
        FakeQueue("orders", (3, 2, 1), NOW_MS - 61_500, (9, 4, 2, 5, 1234)),
        FakeQueue("empty.fifo", (0, 0, 0), None, (0, 0, 0, 7, 0)),
        FakeQueue("drained", (0, 0, 0), None, (2, 2, 2, 0, 20)),
        FakeQueue("future", (1, 0, 0), NOW_MS + 5, (1, 0, 0, 0, 1)),  # clock skew: age 0
    ]
    metrics = Metrics("broker", version="0")
    before = generate_latest(metrics.registry).decode()
    metrics.register_snapshot_collector(
        functools.partial(broker_metrics._queue_rows, queues), broker_metrics._queue_families
    )
    rendered = (await metrics.render(None)).body.decode()
    added = rendered.removeprefix(before.split("# HELP wharf_build_info")[0])
    assert QUEUE_SERIES_BEFORE in added


def test_a_scrape_builds_the_queue_series_off_the_event_loop(tmp_path, monkeypatch):
    threads: dict[str, str] = {}
    rows_of, families_of = broker_metrics._queue_rows, broker_metrics._queue_families

    def rows(registry):
        threads["snapshot"] = threading.current_thread().name
        return rows_of(registry)

    def families(snapshot):
        threads["build"] = threading.current_thread().name
        return families_of(snapshot)

    monkeypatch.setattr(broker_metrics, "_queue_rows", rows)
    monkeypatch.setattr(broker_metrics, "_queue_families", families)
    with BrokerThread(broker_config(tmp_path)) as broker:
        sqs = broker.client("json")
        for name in ("a", "b", "c"):
            url = sqs.create_queue(QueueName=name)["QueueUrl"]
        sqs.send_message(QueueUrl=url, MessageBody="x")
        loop_thread = broker.call_sync(lambda: threading.current_thread().name)
        threads.clear()
        host, port = broker.admin
        # curl as a Prometheus scraper asks: OpenMetrics, compressed.
        reply = subprocess.run(
            [
                "curl", "-sS", "--max-time", "10", "-D", "-", "--compressed",
                "-H", "Accept: application/openmetrics-text; version=1.0.0",
                f"http://{host}:{port}/metrics",
            ],
            capture_output=True, check=True,
        ).stdout  # fmt: skip
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b"content-encoding: gzip" in head.lower()
    assert body.endswith(b"# EOF\n")
    families = {f.name: f for f in openmetrics_parser.text_string_to_metric_families(body.decode())}
    assert sample(families, "wharf_sqs_messages", queue="c", state="visible") == 1
    assert threads["snapshot"] == loop_thread  # live queue state is read where it changes
    assert threads["build"] != loop_thread  # the megabytes of text are made elsewhere


# ------------------------------------------------------------------ refused before the API


def test_requests_the_http_server_refuses_are_counted_by_reason(tmp_path):
    config = broker_config(
        tmp_path, api={"limits": HttpLimits(header_timeout_seconds=0.3), "max_request_bytes": 1024}
    )
    refused = {
        "body_too_large": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5000000\r\n\r\n",
        "malformed": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "headers_too_large": b"POST / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 20000 + b"\r\n\r\n",
        "unsupported_http_version": b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
        "unsupported_transfer_coding": b"POST / HTTP/1.1\r\nHost: a\r\n"
        b"Transfer-Encoding: gzip, chunked\r\n\r\n",
        "timeout": b"POST / HTTP/1.1\r\nHost: a\r\n",  # and nothing more
    }
    with BrokerThread(config) as broker:
        before = broker.metrics()
        for reason in refused:
            assert sample(before, "wharf_broker_http_refusals_total", reason=reason) == 0
        statuses = {
            reason: trio.run(raw_exchange, broker.api, payload).split(b" ", 2)[1]
            for reason, payload in refused.items()
        }
        statuses["malformed request line"] = trio.run(
            raw_exchange, broker.api, b"NOT A REQUEST LINE\r\n\r\n"
        ).split(b" ", 2)[1]
        # A major version llhttp does not know is no malformed request either (RFC 9110 15.6.6).
        statuses["HTTP/3.0"] = trio.run(
            raw_exchange, broker.api, b"GET / HTTP/3.0\r\nHost: a\r\n\r\n"
        ).split(b" ", 2)[1]
        after = broker.metrics()
    assert statuses == {
        "body_too_large": b"413",
        "malformed": b"400",
        "headers_too_large": b"431",
        "unsupported_http_version": b"505",
        "unsupported_transfer_coding": b"501",
        "timeout": b"408",
        "malformed request line": b"400",
        "HTTP/3.0": b"505",
    }
    counted = {
        reason: sample(after, "wharf_broker_http_refusals_total", reason=reason)
        for reason in refused
    }
    assert counted == dict.fromkeys(refused, 1) | {"malformed": 2, "unsupported_http_version": 2}
    # None of them reached an action.
    assert {s.value for s in after["wharf_broker_requests"].samples} == {0}


def test_a_method_the_api_refuses_is_counted_as_a_request(tmp_path: Path) -> None:
    # 405 InvalidHttpMethod is the API's answer, not the HTTP server's refusal: it counts in
    # wharf_broker_requests_total (action Unknown), so HEAD probes and preflights show.
    with BrokerThread(broker_config(tmp_path)) as broker:
        for method in (b"HEAD", b"OPTIONS", b"PUT"):
            answer = trio.run(
                raw_exchange,
                broker.api,
                method + b" / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            )
            assert answer.split(b" ", 2)[1] == b"405"
        families = broker.metrics()
    requests = "wharf_broker_requests_total"
    assert sample(families, requests, service="sqs", action="Unknown", outcome="client_error") == 3


def test_a_request_refused_before_it_was_decoded_counts_under_the_action_it_names(
    tmp_path: Path,
) -> None:
    # A SendMessage without MessageBody (MissingParameter) or with a wrongly typed member
    # (SerializationException) is a SendMessage client error, not an unknown action: a
    # dashboard of SendMessage errors must show a producer that sends them. Only names of the
    # model's operations become labels; anything else stays Unknown.
    with BrokerThread(broker_config(tmp_path)) as broker:
        url = broker.client("json").create_queue(QueueName="q")["QueueUrl"]
        for protocol in ("json", "query"):
            sqs = broker.client(protocol, validate=False)
            with pytest.raises(botocore.exceptions.ClientError) as missing:
                sqs.send_message(QueueUrl=url)
            assert missing.value.response["Error"]["Code"] == "MissingParameter"
            with pytest.raises(botocore.exceptions.ClientError):
                sqs.receive_message(QueueUrl=url, MaxNumberOfMessages="many")
        status, _, _ = trio.run(
            functools.partial(
                request,
                broker.api,
                "POST",
                "/",
                headers=[("x-amz-target", "AmazonSQS.NoSuchAction")],
                body=b"{}",
            )
        )
        assert status == 400
        families = broker.metrics()
    requests = "wharf_broker_requests_total"
    assert sample(families, requests, action="SendMessage", outcome="client_error") == 2
    assert sample(families, requests, action="ReceiveMessage", outcome="client_error") == 2
    assert sample(families, requests, service="sqs", action="Unknown", outcome="client_error") == 1
