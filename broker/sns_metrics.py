"""Per-topic SNS metrics, read from the live topics at every scrape (CloudWatch's SNS set).

``wharf_sns_messages_published`` (NumberOfMessagesPublished), ``..._notifications_delivered``
and ``..._notifications_failed`` by protocol (NumberOfNotificationsDelivered / Failed),
``..._notifications_filtered_out`` (NumberOfNotificationsFilteredOut), notification delivery
attempts by protocol (an SQS copy is one attempt; an HTTP/S POST, retries included, one each),
confirmation POSTs by protocol (apart: they are not deliveries), the publish-to-delivery
latency histogram by protocol, and the HTTP/S deliveries still pending. Every protocol label
is present from the start, at 0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from broker.http_delivery import HttpDeliveries
from broker.topic_state import PROTOCOLS
from broker.topics import TopicRegistry
from monitoring.metrics import Metrics


def watch_topics(metrics: Metrics, topics: TopicRegistry, deliveries: HttpDeliveries) -> None:
    """Register the per-topic collector on the daemon's registry."""
    metrics.register_collector(_collector(topics, deliveries))


def _collector(topics: TopicRegistry, deliveries: HttpDeliveries) -> Callable[[], Iterable[Metric]]:
    def collect() -> Iterable[Metric]:
        published = CounterMetricFamily(
            "wharf_sns_messages_published",
            "Messages accepted by Publish and PublishBatch (NumberOfMessagesPublished).",
            labels=["topic"],
        )
        filtered = CounterMetricFamily(
            "wharf_sns_notifications_filtered_out",
            "Subscriptions a message skipped because of their filter policy.",
            labels=["topic"],
        )
        by_protocol = {
            name: CounterMetricFamily(f"wharf_sns_{name}", help_text, labels=["topic", "protocol"])
            for name, help_text in (
                ("notifications_delivered", "Notifications delivered, by subscription protocol."),
                (
                    "notifications_failed",
                    "Failed notifications: SQS copies that failed for good, and every failed "
                    "HTTP/S attempt, retries included (as AWS's NumberOfNotificationsFailed).",
                ),
                (
                    "delivery_attempts",
                    "Notification delivery attempts: SQS copies, HTTP/S POSTs with retries.",
                ),
                (
                    "confirmation_attempts",
                    "Subscription and unsubscribe confirmation POSTs (not delivery attempts).",
                ),
            )
        }
        latency = HistogramMetricFamily(
            "wharf_sns_delivery_latency_seconds",
            "From publish to durable SQS insert or 2xx HTTP/S response.",
            labels=["topic", "protocol"],
        )
        pending = GaugeMetricFamily(
            "wharf_sns_pending_http_deliveries",
            "HTTP/S deliveries (and confirmations) not finished yet, retries included.",
            labels=["topic"],
        )
        for topic in topics:
            name = topic.name
            stats = topic.stats
            published.add_metric([name], stats.published)
            filtered.add_metric([name], stats.filtered_out)
            pending.add_metric([name], deliveries.pending(topic.record.topic_id))
            for protocol in PROTOCOLS:
                labels = [name, protocol]
                by_protocol["notifications_delivered"].add_metric(labels, stats.delivered[protocol])
                by_protocol["notifications_failed"].add_metric(labels, stats.failed[protocol])
                by_protocol["delivery_attempts"].add_metric(labels, stats.attempts[protocol])
                confirmations = stats.confirmations[protocol]
                by_protocol["confirmation_attempts"].add_metric(labels, confirmations)
                histogram = stats.latency[protocol].snapshot()
                buckets = [
                    (str(bound), count)
                    for bound, count in zip(
                        histogram.bounds, histogram.cumulative_counts, strict=False
                    )
                ]
                buckets.append(("+Inf", histogram.count))
                latency.add_metric(labels, buckets, histogram.total)
        return [published, filtered, *by_protocol.values(), latency, pending]

    return collect
