"""The broker's metrics: the CloudWatch SQS metrics per queue, per-action requests, the store.

Queue levels (visible, in flight, delayed) and the store's counters are read at scrape time
from the live objects. Request counts and latencies are observed as requests finish, into
plain dictionaries that a collector turns into metric families at scrape time (as the
balancer does): a prometheus_client child lookup, lock and two value objects per request cost
more than the rest of the bookkeeping together.

The per-queue series (nine per queue: megabytes for ten thousand queues) and the request
series are snapshot collectors (:meth:`monitoring.metrics.Metrics.register_snapshot_collector`):
the event loop only copies numbers into tuples, and the families are built in the scrape's
worker thread.

Requests the HTTP server refuses before the API sees them (a malformed request line, framing
that could smuggle a request, headers or a body over the limits, a stall) have no action:
they are counted by reason in ``wharf_broker_http_refusals_total``.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from functools import partial
from typing import Final

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from broker.registry import QueueRegistry, now_ms
from broker.store.base import Histogram, Store
from monitoring.metrics import LATENCY_BUCKETS, Metrics, canonical_number, cumulative_buckets

# The statuses the HTTP server refuses requests with (monitoring.httpserver), as reasons.
REFUSAL_REASONS: Final = {
    400: "malformed",  # bad request line, ambiguous framing (Content-Length with chunked), ...
    408: "timeout",  # the head or the body stalled
    413: "body_too_large",  # over api.max_request_bytes
    431: "headers_too_large",  # over api.limits.max_header_bytes
    501: "unsupported_transfer_coding",
    503: "buffers_full",  # no room left in api.max_buffered_request_bytes
    505: "unsupported_http_version",
}
OTHER_REFUSAL: Final = "other"
OUTCOMES: Final = ("success", "client_error", "server_error")
# The action label of a request refused before it named an operation the broker knows.
UNKNOWN_ACTION: Final = "Unknown"

# (name, visible, in flight, delayed, oldest age in seconds, sent, received, deleted, empty
# receives, bytes sent): one queue as a scrape saw it.
QueueRow = tuple[str, int, int, int, float, int, int, int, int, int]
# Requests by (service, action, outcome); latencies by (service, action): bucket counts, sum.
RequestsSnapshot = tuple[
    list[tuple[tuple[str, str, str], int]],
    list[tuple[tuple[str, str], list[int], float]],
    list[tuple[str, int]],
]


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

    Only the trio thread observes requests, so the counters need no lock; a scrape copies
    them in the trio thread too, and builds its families from the copy in a worker thread.
    """

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._requests: dict[tuple[str, str, str], int] = {}
        self._latency: dict[tuple[str, str], _Latency] = {}
        self._refusals = dict.fromkeys(REFUSAL_REASONS.values(), 0)
        metrics.register_snapshot_collector(self._snapshot_requests, _request_families)

    def actions_known(self, service: str, actions: Iterable[str]) -> None:
        """Make the request counters of a service's actions (and of ``Unknown``) exist at 0,
        for every outcome: a rate() over them sees an action's first server error."""
        for action in (*actions, UNKNOWN_ACTION):
            for outcome in OUTCOMES:
                self._requests.setdefault((service, action, outcome), 0)

    def observe_request(self, service: str, action: str, status: int, seconds: float) -> None:
        key = (service, action, _outcome(status))
        requests = self._requests
        requests[key] = requests.get(key, 0) + 1
        latency = self._latency.get((service, action))
        if latency is None:
            latency = self._latency[(service, action)] = _Latency()
        latency.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        latency.total += seconds

    def observe_refusal(self, status: int) -> None:
        """Count a request the HTTP server refused with ``status`` before the API saw it."""
        reason = REFUSAL_REASONS.get(status, OTHER_REFUSAL)
        self._refusals[reason] = self._refusals.get(reason, 0) + 1

    def _snapshot_requests(self) -> RequestsSnapshot:
        # The latency counts are lists the loop keeps adding to: copied, not referenced.
        latency = [
            (key, list(observed.counts), observed.total) for key, observed in self._latency.items()
        ]
        return list(self._requests.items()), latency, list(self._refusals.items())

    def watch(self, registry: QueueRegistry, store: Store) -> None:
        """Read queue and store state at every scrape."""
        self.metrics.register_snapshot_collector(partial(_queue_rows, registry), _queue_families)
        self.metrics.register_collector(_store_collector(store))


def _request_families(snapshot: RequestsSnapshot) -> list[Metric]:
    counted, latencies, refused = snapshot
    requests = CounterMetricFamily(
        "wharf_broker_requests",
        "API requests by service, action and outcome (success, client_error, server_error).",
        labels=["service", "action", "outcome"],
    )
    for labels, count in counted:
        requests.add_metric(list(labels), count)
    latency = HistogramMetricFamily(
        "wharf_broker_request_duration_seconds",
        "Time from a complete request to its response, long polls included.",
        labels=["service", "action"],
    )
    for (service, action), counts, total in latencies:
        buckets = cumulative_buckets(LATENCY_BUCKETS, counts)
        latency.add_metric([service, action], buckets, sum_value=total)
    refusals = CounterMetricFamily(
        "wharf_broker_http_refusals",
        "Requests the API listener's HTTP server refused before any action, by reason.",
        labels=["reason"],
    )
    for reason, count in refused:
        refusals.add_metric([reason], count)
    return [requests, latency, refusals]


def _queue_rows(registry: QueueRegistry) -> list[QueueRow]:
    """Every queue's levels and counters, as plain numbers (in the event loop's thread)."""
    now = now_ms()
    rows: list[QueueRow] = []
    append = rows.append
    for queue in registry:
        visible, in_flight, delayed = queue.counts(now)
        if visible or in_flight or delayed:
            enqueued_at = queue.index.oldest_enqueued_at(now)
            age = 0.0 if enqueued_at is None else max(0, now - enqueued_at) / 1000
        else:
            age = 0.0  # nothing present, nothing old: most queues, skipped at half the cost
        stats = queue.stats
        append(
            (
                queue.name,
                visible,
                in_flight,
                delayed,
                age,
                stats.sent,
                stats.received,
                stats.deleted,
                stats.empty_receives,
                stats.bytes_sent,
            )
        )
    return rows


def _queue_families(rows: list[QueueRow]) -> list[Metric]:
    """The per-queue families, from :func:`_queue_rows` (in the scrape's worker thread)."""
    messages = GaugeMetricFamily(
        "wharf_sqs_messages",
        "Messages per queue and state (ApproximateNumberOfMessages*).",
        labels=["queue", "state"],
    )
    counters = {
        name: CounterMetricFamily(f"wharf_sqs_{name}", help_text, labels=["queue"])
        for name, help_text in (
            (
                "messages_sent",
                "Messages queued (NumberOfMessagesSent; not FIFO duplicates).",
            ),
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
    for name, visible, in_flight, delayed, age, *counted in rows:
        messages.add_metric([name, "visible"], visible)
        messages.add_metric([name, "in_flight"], in_flight)
        messages.add_metric([name, "delayed"], delayed)
        oldest.add_metric([name], age)
        for family, value in zip(counters.values(), counted, strict=True):
            family.add_metric([name], value)
    return [messages, oldest, *counters.values()]


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
