"""One Prometheus registry per daemon instance.

Nothing registers at import time and nothing touches ``prometheus_client.REGISTRY``: two
daemons built in one test process must not collide. Counters and histograms are created through
:class:`Metrics`; level values (queue depths, open connections, target states) are read at
scrape time from components' ``statistics()`` through :meth:`Metrics.register_collector`.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# The ``*_created`` series double every counter's output and no dashboard reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped upstream

CollectFunction = Callable[[], Iterable[Metric]]

# Latency buckets in seconds, from sub-millisecond (cache hits, fsync on fast disks) to the
# 20 s long poll and the balancer's 60 s default target timeout, so one bucket layout
# serves every request-duration histogram.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
)  # fmt: skip


class _FunctionCollector(Collector):
    def __init__(self, collect: CollectFunction) -> None:
        self._collect = collect

    def collect(self) -> Iterable[Metric]:
        return self._collect()


class Metrics:
    """The metrics of one daemon instance: its registry and the shared series every daemon has.

    Args:
        daemon: ``broker`` or ``balancer``; a label of ``wharf_build_info``.
        version: the distribution version, also on ``wharf_build_info``.
    """

    def __init__(self, daemon: str, *, version: str) -> None:
        self.daemon = daemon
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        build_info = self.gauge(
            "wharf_build_info",
            "Always 1; the labels say which Wharf daemon, version and Python run here.",
            ["daemon", "version", "python"],
        )
        build_info.labels(daemon, version, platform.python_version()).set(1)
        self.handler_errors = self.counter(
            "wharf_handler_errors",
            "Unexpected exceptions caught in connection handlers (each a bug, never fatal).",
            ["listener"],
        )
        self.config_reloads = self.counter(
            "wharf_config_reloads",
            "Configuration reload attempts by outcome.",
            ["outcome"],
        )
        for outcome in ("success", "failure"):
            self.config_reloads.labels(outcome)

    def counter(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> Counter:
        """A counter on this registry. Name it without ``_total``; exposition adds it."""
        return Counter(name, documentation, labelnames, registry=self.registry)

    def gauge(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> Gauge:
        return Gauge(name, documentation, labelnames, registry=self.registry)

    def histogram(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> Histogram:
        return Histogram(name, documentation, labelnames, registry=self.registry, buckets=buckets)

    def register_collector(self, collect: CollectFunction) -> Collector:
        """Call ``collect`` at every scrape; it yields metric families built from live state."""
        collector = _FunctionCollector(collect)
        self.registry.register(collector)
        return collector

    def unregister_collector(self, collector: Collector) -> None:
        self.registry.unregister(collector)

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition body and its content type, negotiated from the Accept header."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


# OpenMetrics' canonical number ("1.0", "+Inf") for le and quantile labels, as
# prometheus_client writes its own (its helper has no annotations).
canonical_number: Callable[[float], str] = floatToGoString


def cumulative_buckets(bounds: Sequence[float], counts: Sequence[int]) -> list[tuple[str, float]]:
    """A scrape-time histogram's ``(le, cumulative count)`` pairs, from the count of each
    bucket (``len(bounds) + 1`` of them, the last for +Inf). ``le`` is in OpenMetrics'
    canonical form (``1.0``, not ``1``), as prometheus_client writes its own."""
    running = 0
    found: list[tuple[str, float]] = []
    for bound, count in zip((*bounds, float("inf")), counts, strict=True):
        running += count
        found.append((canonical_number(bound), running))
    return found
