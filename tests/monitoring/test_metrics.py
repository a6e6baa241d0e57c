from __future__ import annotations

import gzip
import re
import sys
import threading
import time

import pytest
import trio
from prometheus_client import REGISTRY, generate_latest  # noqa: TID251 (checked empty)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from monitoring.metrics import RENDER_SWITCH_INTERVAL_SECONDS, Metrics, accepts_gzip


def samples(metrics: Metrics) -> dict[str, float]:
    body = generate_latest(metrics.registry).decode()
    return {
        s.name + str(sorted(s.labels.items())): s.value
        for f in text_string_to_metric_families(body)
        for s in f.samples
    }


def test_two_instances_do_not_collide_and_global_registry_stays_clean():
    a = Metrics("broker", version="1")
    b = Metrics("broker", version="1")
    a.counter("wharf_test_events", "test").inc()
    b.counter("wharf_test_events", "test").inc(5)
    assert samples(a)["wharf_test_events_total[]"] == 1
    assert samples(b)["wharf_test_events_total[]"] == 5
    global_names = {m.name for m in REGISTRY.collect()}
    assert not any(name.startswith("wharf_") for name in global_names)


def test_collectors_are_read_at_scrape_time():
    metrics = Metrics("balancer", version="1")
    depth = [3]

    def collect():
        family = GaugeMetricFamily("wharf_test_depth", "test")
        family.add_metric([], depth[0])
        return [family]

    metrics.register_collector(collect)
    assert samples(metrics)["wharf_test_depth[]"] == 3
    depth[0] = 7
    assert samples(metrics)["wharf_test_depth[]"] == 7


def test_known_label_values_are_present_before_any_event():
    metrics = Metrics("broker", version="1")
    got = samples(metrics)
    assert got["wharf_config_reloads_total[('outcome', 'failure')]"] == 0
    assert got["wharf_config_reloads_total[('outcome', 'success')]"] == 0
    assert "process_cpu_seconds_total[]" in got
    assert any(key.startswith("python_info") for key in got)


# ------------------------------------------------------------------ rendering off the loop


def _fixture_metrics() -> tuple[Metrics, list[str]]:
    """Metrics with one of each kind of series; the threads each collector step ran in."""
    metrics = Metrics("broker", version="1")
    metrics.counter("wharf_test_events", "test", ["kind"]).labels("a").inc(3)
    metrics.gauge("wharf_test_level", "test").set(2.5)
    metrics.histogram("wharf_test_seconds", "test").observe(0.3)
    threads: list[str] = []

    def collect():
        threads.append(f"collect:{threading.current_thread().name}")
        family = GaugeMetricFamily("wharf_test_live", "test", labels=["queue"])
        family.add_metric(["q1"], 7)
        return [family]

    def snapshot():
        threads.append(f"snapshot:{threading.current_thread().name}")
        return [("q1", 4), ('q"2', 5)]

    def build(rows):
        threads.append(f"build:{threading.current_thread().name}")
        family = CounterMetricFamily("wharf_test_sent", "test", labels=["queue"])
        for name, value in rows:
            family.add_metric([name], value)
        return [family]

    metrics.register_collector(collect)
    metrics.register_snapshot_collector(snapshot, build)
    threads.clear()  # registering collects once, to learn the names
    return metrics, threads


_MOVING = re.compile(rb"(# (HELP|TYPE|UNIT) )?(process_|python_gc_)")


def _steady(exposition: bytes) -> bytes:
    """The exposition without the series that move by themselves (CPU time, GC counts)."""
    return b"".join(
        line for line in exposition.splitlines(keepends=True) if not _MOVING.match(line)
    )


async def test_a_render_takes_snapshots_on_the_loop_and_builds_in_a_worker_thread():
    metrics, threads = _fixture_metrics()
    loop_thread = threading.current_thread().name
    await metrics.render(None)
    steps = dict(step.split(":", 1) for step in threads)
    # Live state is read only where the loop runs (it mutates that state)...
    assert steps["snapshot"] == loop_thread
    assert steps["collect"] == loop_thread
    # ...and the families are built elsewhere, so the loop goes on serving meanwhile.
    assert steps["build"] != loop_thread


@pytest.mark.parametrize(
    "accept",
    [None, "text/plain", "application/openmetrics-text; version=1.0.0", "application/json"],
)
async def test_a_render_is_what_prometheus_client_encodes(accept):
    metrics, _ = _fixture_metrics()
    encoder, content_type = choose_encoder(accept or "")
    exposition = await metrics.render(accept)
    assert exposition.content_type == content_type
    assert exposition.content_encoding is None
    assert _steady(exposition.body) == _steady(encoder(metrics.registry))
    assert b'wharf_test_sent_total{queue="q\\"2"} 5.0' in exposition.body


PROMETHEUS_ACCEPT = (  # what Prometheus 3 sends
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
    "application/openmetrics-text;version=0.0.1;q=0.5,"
    "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)


@pytest.mark.parametrize(
    ("accept", "openmetrics"),
    [
        (PROMETHEUS_ACCEPT, True),
        ("application/openmetrics-text; version=1.0.0", True),
        ("application/openmetrics-text;q=0", False),  # RFC 9110 12.4.2: not acceptable
        ("text/plain;version=0.0.4;q=1, application/openmetrics-text;q=0.1", False),
        ("text/plain;q=0.1, application/openmetrics-text;q=0.9", True),
        ("application/openmetrics-text;q=oops", False),
        ("APPLICATION/OpenMetrics-Text; version=1.0.0", True),  # RFC 9110 8.3.1
        (None, False),
    ],
)
async def test_the_format_is_the_one_the_accept_header_prefers(accept, openmetrics):
    metrics, _ = _fixture_metrics()
    exposition = await metrics.render(accept)
    assert exposition.content_type.startswith("application/openmetrics-text") is openmetrics
    assert exposition.body.endswith(b"# EOF\n") is openmetrics


async def test_gzip_is_negotiated_and_decompresses_to_the_same_exposition():
    metrics, _ = _fixture_metrics()
    plain = await metrics.render(None)
    zipped = await metrics.render(None, "deflate, gzip;q=0.5")
    assert zipped.content_encoding == "gzip"
    assert _steady(gzip.decompress(zipped.body)) == _steady(plain.body)
    openmetrics = await metrics.render("application/openmetrics-text; version=1.0.0", "gzip")
    assert gzip.decompress(openmetrics.body).endswith(b"# EOF\n")
    refused = await metrics.render(None, "gzip;q=0, identity")
    assert refused.content_encoding is None


@pytest.mark.parametrize(
    ("header", "gzip_ok"),
    [
        (None, False),
        ("", False),
        ("gzip", True),
        ("GZIP", True),
        ("deflate, gzip", True),
        ("gzip;q=1.0", True),
        ("gzip; q=0.001", True),
        ("gzip;q=0", False),
        ("gzip;q=0.000", False),
        ("gzip;q=nonsense", False),
        ("x-gzip", False),
        ("*", False),  # prometheus_client's handlers compress only for a named gzip too
    ],
)
def test_accepts_gzip(header, gzip_ok):
    assert accepts_gzip(header) is gzip_ok


async def test_renders_run_one_at_a_time():
    metrics = Metrics("broker", version="1")
    running = [0]
    most = [0]
    guard = threading.Lock()

    def build(_snapshot):
        with guard:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.02)  # long enough for the other renders to try to start meanwhile
        with guard:
            running[0] -= 1
        return []

    metrics.register_snapshot_collector(lambda: None, build)
    done = []

    async def scrape():
        await metrics.render(None)
        done.append(1)

    async with trio.open_nursery() as scrapes:
        for _ in range(5):
            scrapes.start_soon(scrape)
    assert len(done) == 5
    assert most[0] == 1  # a flood of scrapes waits its turn instead of piling up threads


async def test_a_snapshot_taken_for_a_render_is_released_after_it():
    metrics = Metrics("broker", version="1")
    level = [1]

    def build(value):
        family = GaugeMetricFamily("wharf_test_level_now", "test")
        family.add_metric([], value)
        return [family]

    metrics.register_snapshot_collector(lambda: level[0], build)
    assert b"wharf_test_level_now 1.0" in (await metrics.render(None)).body
    level[0] = 2
    # Read outside a render (tests, get_sample_value): a snapshot of its own, not the last one.
    assert metrics.registry.get_sample_value("wharf_test_level_now") == 2
    assert b"wharf_test_level_now 2.0" in (await metrics.render(None)).body


async def test_a_render_hands_the_gil_over_often_and_puts_the_interval_back():
    metrics = Metrics("broker", version="1")
    seen = []
    metrics.register_snapshot_collector(
        lambda: None, lambda _: seen.append(sys.getswitchinterval()) or []
    )
    seen.clear()  # registering collects once, to learn the names
    before = sys.getswitchinterval()
    await metrics.render(None)
    assert seen == [RENDER_SWITCH_INTERVAL_SECONDS]
    assert sys.getswitchinterval() == before
