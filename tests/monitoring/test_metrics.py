from __future__ import annotations

from prometheus_client import REGISTRY, generate_latest  # noqa: TID251 (checked empty)
from prometheus_client.metrics_core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from monitoring.metrics import Metrics


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
