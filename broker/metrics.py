"""The broker's metrics: the CloudWatch SQS metrics per queue, per-action requests, the store.

Queue levels (visible, in flight, delayed) and the store's counters are read at scrape time
from the live objects. Request counts and latencies are observed as requests finish, into
plain dictionaries that a collector turns into metric families at scrape time (as the
balancer does): a prometheus_client child lookup, lock and two value objects per request cost
more than the rest of the bookkeeping together.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from broker.registry import QueueRegistry, now_ms
from broker.store.base import Histogram, Store
from monitoring.metrics import LATENCY_BUCKETS, Metrics, canonical_number, cumulative_buckets


def _outcome(status: int) -> str:
    if status < 400:
        return "success"
    return "client_error" if status < 500 else "server_error"


class _Latency:
    """One (service, action)'s request durations: counts per bucket (not cumulative), sum."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one is +Inf
        self.total = 0.0


class BrokerMetrics:
    """Registers the broker's series on the daemon's registry.

    Only the trio thread observes requests, so the counters need no lock; a scrape (also in
    the trio thread, or a snapshot copy of plain ints) reads them as they are.
    """

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._requests: dict[tuple[str, str, str], int] = {}
        self._latency: dict[tuple[str, str], _Latency] = {}
        metrics.register_collector(self._collect_requests)

    def observe_request(self, service: str, action: str, status: int, seconds: float) -> None:
        key = (service, action, _outcome(status))
        requests = self._requests
        requests[key] = requests.get(key, 0) + 1
        latency = self._latency.get((service, action))
        if latency is None:
            latency = self._latency[(service, action)] = _Latency()
        latency.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        latency.total += seconds

    def _collect_requests(self) -> Iterable[Metric]:
        requests = CounterMetricFamily(
            "wharf_broker_requests",
            "API requests by service, action and outcome (success, client_error, server_error).",
            labels=["service", "action", "outcome"],
        )
        for labels, count in list(self._requests.items()):
            requests.add_metric(list(labels), count)
        latency = HistogramMetricFamily(
            "wharf_broker_request_duration_seconds",
            "Time from a complete request to its response, long polls included.",
            labels=["service", "action"],
        )
        for (service, action), observed in list(self._latency.items()):
            buckets = cumulative_buckets(LATENCY_BUCKETS, observed.counts)
            latency.add_metric([service, action], buckets, sum_value=observed.total)
        return [requests, latency]

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
        (canonical_number(bound), count)
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
