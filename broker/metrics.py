"""The broker's metrics: the CloudWatch SQS metrics per queue, per-action requests, the store.

Queue levels (visible, in flight, delayed) and the store's counters are read at scrape time
from the live objects; request counts and latencies are observed as requests finish.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from broker.registry import QueueRegistry, now_ms
from broker.store.base import Histogram, Store
from monitoring.metrics import Metrics


def _outcome(status: int) -> str:
    if status < 400:
        return "success"
    return "client_error" if status < 500 else "server_error"


class BrokerMetrics:
    """Registers the broker's series on the daemon's registry."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.requests = metrics.counter(
            "wharf_broker_requests",
            "API requests by service, action and outcome (success, client_error, server_error).",
            ["service", "action", "outcome"],
        )
        self.latency = metrics.histogram(
            "wharf_broker_request_duration_seconds",
            "Time from a complete request to its response, long polls included.",
            ["service", "action"],
        )

    def observe_request(self, service: str, action: str, status: int, seconds: float) -> None:
        self.requests.labels(service, action, _outcome(status)).inc()
        self.latency.labels(service, action).observe(seconds)

    def watch(self, registry: QueueRegistry, store: Store) -> None:
        """Read queue and store state at every scrape."""
        self.metrics.register_collector(_queue_collector(registry))
        self.metrics.register_collector(_store_collector(store))


def _queue_collector(registry: QueueRegistry) -> Callable[[], Iterable[Metric]]:
    def collect() -> Iterable[Metric]:
        messages = GaugeMetricFamily(
            "wharf_sqs_messages",
            "Messages per queue and state (ApproximateNumberOfMessages*).",
            labels=["queue", "state"],
        )
        counters = {
            name: CounterMetricFamily(f"wharf_sqs_{name}", help_text, labels=["queue"])
            for name, help_text in (
                ("messages_sent", "Messages accepted (NumberOfMessagesSent)."),
                ("messages_received", "Messages returned by receives (NumberOfMessagesReceived)."),
                ("messages_deleted", "DeleteMessage successes (NumberOfMessagesDeleted)."),
                ("empty_receives", "Receives that returned nothing (NumberOfEmptyReceives)."),
                ("sent_bytes", "Bytes of messages accepted (SentMessageSize, summed)."),
            )
        }
        oldest = GaugeMetricFamily(
            "wharf_sqs_oldest_message_age_seconds",
            "Age of the oldest message not deleted; 0 when empty (ApproximateAgeOfOldestMessage).",
            labels=["queue"],
        )
        now = now_ms()
        for queue in registry:
            counts = queue.counts(now)
            messages.add_metric([queue.name, "visible"], counts.visible)
            messages.add_metric([queue.name, "in_flight"], counts.in_flight)
            messages.add_metric([queue.name, "delayed"], counts.delayed)
            enqueued_at = queue.index.oldest_enqueued_at(now)
            age = 0.0 if enqueued_at is None else max(0, now - enqueued_at) / 1000
            oldest.add_metric([queue.name], age)
            stats = queue.stats
            counters["messages_sent"].add_metric([queue.name], stats.sent)
            counters["messages_received"].add_metric([queue.name], stats.received)
            counters["messages_deleted"].add_metric([queue.name], stats.deleted)
            counters["empty_receives"].add_metric([queue.name], stats.empty_receives)
            counters["sent_bytes"].add_metric([queue.name], stats.bytes_sent)
        return [messages, oldest, *counters.values()]

    return collect


def _histogram(name: str, help_text: str, histogram: Histogram) -> HistogramMetricFamily:
    buckets = [
        (str(bound), count)
        for bound, count in zip(histogram.bounds, histogram.cumulative_counts, strict=False)
    ]
    buckets.append(("+Inf", histogram.count))
    return HistogramMetricFamily(name, help_text, buckets=buckets, sum_value=histogram.total)


def _store_collector(store: Store) -> Callable[[], Iterable[Metric]]:
    def collect() -> Iterable[Metric]:
        stats = store.statistics()
        return [
            CounterMetricFamily(
                "wharf_store_commits", "Durable (fsync'd) store commits.", value=stats.commits
            ),
            CounterMetricFamily(
                "wharf_store_mutations", "Mutation records committed.", value=stats.mutations
            ),
            CounterMetricFamily(
                "wharf_store_failed_jobs", "Commit batches that failed.", value=stats.failed_jobs
            ),
            GaugeMetricFamily(
                "wharf_store_pending_jobs",
                "Batches waiting for the writer.",
                value=stats.pending_jobs,
            ),
            _histogram(
                "wharf_store_commit_duration_seconds",
                "Time of one group commit, fsync included.",
                stats.commit_seconds,
            ),
            _histogram(
                "wharf_store_mutations_per_commit",
                "Mutation records per group commit (messages per fsync under load).",
                stats.mutations_per_commit,
            ),
        ]

    return collect
