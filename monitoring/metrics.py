"""One Prometheus registry per daemon instance.

Nothing registers at import time and nothing touches ``prometheus_client.REGISTRY``: two
daemons built in one test process must not collide. Counters and histograms are created through
:class:`Metrics`; level values (queue depths, open connections, target states) are read at
scrape time from components' ``statistics()`` through :meth:`Metrics.register_collector`.

A scrape must not stall the event loop, even for a broker with ten thousand queues (megabytes
of exposition, most of a second of pure Python to build and encode). So :meth:`Metrics.render`
works in two steps: in the event loop's thread it only takes each collector's snapshot (plain
numbers copied from live state, which the loop mutates and so only the loop may read); a
worker thread then builds the metric families from the snapshots, encodes them and compresses
the result. The loop keeps running meanwhile: the GIL passes between the threads every half
millisecond while the render encodes. prometheus_client's own metric objects are thread-safe
and are read there too.
"""

from __future__ import annotations

import gzip
import platform
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

import trio
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
Snapshot = TypeVar("Snapshot")
# zlib's default: a tenth of level 9's time on a 5 MB exposition, for 3% more bytes.
GZIP_LEVEL: Final = 6
# The GIL switch interval while a render encodes (see _encode); Python's default is 5 ms.
RENDER_SWITCH_INTERVAL_SECONDS: Final = 0.0005

# Latency buckets in seconds, from sub-millisecond (cache hits, fsync on fast disks) to the
# 20 s long poll and the balancer's 60 s default target timeout, so one bucket layout
# serves every request-duration histogram.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
)  # fmt: skip


class SnapshotCollector(Collector, Generic[Snapshot]):
    """A collector in two steps: ``snapshot`` copies live state, ``build`` makes the families.

    During :meth:`Metrics.render` the snapshot is taken in the event loop's thread
    (:meth:`take`) and built in the render's worker thread (:meth:`collect`). Any other
    ``collect()`` (a test reading the registry) takes a snapshot of its own first, in its
    caller's thread.
    """

    def __init__(
        self, snapshot: Callable[[], Snapshot], build: Callable[[Snapshot], Iterable[Metric]]
    ) -> None:
        self._snapshot = snapshot
        self._build = build
        self._taken: tuple[Snapshot] | None = None

    def take(self) -> None:
        """Copy the live state now, for the next :meth:`collect`s until :meth:`release`."""
        self._taken = (self._snapshot(),)

    def release(self) -> None:
        self._taken = None

    def collect(self) -> Iterable[Metric]:
        taken = self._taken
        return self._build(taken[0] if taken is not None else self._snapshot())


def _built(families: list[Metric]) -> list[Metric]:
    return families


@dataclass(frozen=True, slots=True)
class Exposition:
    """A rendered scrape: the body, its content type, and ``gzip`` when it is compressed."""

    body: bytes
    content_type: str
    content_encoding: str | None = None


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether an Accept-Encoding header allows gzip (as prometheus_client's handlers read
    it, except that ``gzip;q=0`` refuses it, as RFC 9110 §12.5.3 says)."""
    for accepted in (accept_encoding or "").split(","):
        coding, *parameters = accepted.split(";")
        if coding.strip().lower() != "gzip":
            continue
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    return float(value) > 0
                except ValueError:
                    return False
        return True
    return False


def most_preferred(accept: str | None) -> str:
    """The media ranges of an Accept header that have its highest q-value (q=0 ones never).

    prometheus_client's ``choose_encoder`` takes OpenMetrics if any range names it, whatever
    its q: given only the preferred ranges, ``application/openmetrics-text;q=0`` (RFC 9110
    §12.4.2: "not acceptable") or a text/plain ranked above it gets the text format.
    """
    ranked: list[tuple[float, str]] = []
    for media_range in (accept or "").split(","):
        quality = 1.0
        for parameter in media_range.split(";")[1:]:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality > 0 and media_range.strip():
            # Media types are case-insensitive (RFC 9110 §8.3.1); choose_encoder is not.
            media_type, separator, parameters = media_range.partition(";")
            ranked.append((quality, media_type.lower() + separator + parameters))
    best = max((quality for quality, _ in ranked), default=0.0)
    return ",".join(media_range for quality, media_range in ranked if quality == best)


class Metrics:
    """The metrics of one daemon instance: its registry and the shared series every daemon has.

    Args:
        daemon: ``broker`` or ``balancer``; a label of ``wharf_build_info``.
        version: the distribution version, also on ``wharf_build_info``.
    """

    def __init__(self, daemon: str, *, version: str) -> None:
        self.daemon = daemon
        self.registry = CollectorRegistry(auto_describe=True)
        self._snapshot_collectors: list[SnapshotCollector[Any]] = []
        # One render at a time: a flood of scrapes waits here instead of piling up threads.
        self._rendering = trio.Lock()
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
        self.accept_errors = self.counter(
            "wharf_accept_errors",
            "accept() failures for want of a resource (descriptors, memory), per listener and "
            "errno; the listener pauses and retries.",
            ["listener", "errno"],
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
        """Call ``collect`` at every scrape, in the event loop's thread; it yields metric
        families built from live state. For many series, use
        :meth:`register_snapshot_collector`: only its snapshot holds the loop."""
        return self.register_snapshot_collector(lambda: list(collect()), _built)

    def register_snapshot_collector(
        self, snapshot: Callable[[], Snapshot], build: Callable[[Snapshot], Iterable[Metric]]
    ) -> Collector:
        """At every scrape, call ``snapshot`` in the event loop's thread, then ``build`` on
        its result in a worker thread (see :class:`SnapshotCollector`)."""
        collector = SnapshotCollector(snapshot, build)
        self.registry.register(collector)
        self._snapshot_collectors.append(collector)
        return collector

    def unregister_collector(self, collector: Collector) -> None:
        self.registry.unregister(collector)
        if isinstance(collector, SnapshotCollector) and collector in self._snapshot_collectors:
            self._snapshot_collectors.remove(collector)

    async def render(self, accept: str | None, accept_encoding: str | None = None) -> Exposition:
        """The exposition negotiated from the Accept and Accept-Encoding headers.

        Only the snapshots are taken in the caller's (the event loop's) thread; building,
        encoding and compressing run in a worker thread (see the module docstring).
        """
        encoder, content_type = choose_encoder(most_preferred(accept))
        compress = accepts_gzip(accept_encoding)
        async with self._rendering:
            collectors = list(self._snapshot_collectors)
            try:
                for collector in collectors:
                    collector.take()
                # Not abandoned on cancellation: the snapshots are released only once the
                # thread is done with them.
                body = await trio.to_thread.run_sync(_encode, encoder, self.registry, compress)
            finally:
                for collector in collectors:
                    collector.release()
        return Exposition(body, content_type, "gzip" if compress else None)


def _encode(
    encoder: Callable[[CollectorRegistry], bytes], registry: CollectorRegistry, compress: bool
) -> bytes:
    # While this thread encodes, the event loop waits for the GIL at every return from a
    # system call, up to a whole switch interval each time: at the default 5 ms, requests
    # served during a 10,000-queue scrape took 10 times longer at p99. Only one render runs
    # at a time (Metrics._rendering), so the interval it set is the one it puts back.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(RENDER_SWITCH_INTERVAL_SECONDS)
    try:
        body = encoder(registry)
    finally:
        sys.setswitchinterval(interval)
    return gzip.compress(body, compresslevel=GZIP_LEVEL) if compress else body


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
