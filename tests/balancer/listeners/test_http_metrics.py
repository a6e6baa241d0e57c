from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from balancer.listeners.http_metrics import HttpStats, code_class
from monitoring.metrics import Metrics


def test_code_classes():
    assert [code_class(s) for s in (101, 200, 302, 460, 504, 999, 0)] == [
        "1xx",
        "2xx",
        "3xx",
        "4xx",
        "5xx",
        "5xx",
        "1xx",
    ]


def test_counters_become_prometheus_families():
    stats = HttpStats()
    stats.listener_started("front")
    stats.connection_opened("front")
    stats.request("front", "default", "web", 200, by_target=True)
    stats.request("front", "default", "web", 502, by_target=False)
    stats.request("front", "default", "web", 503, by_target=True)  # the target's own 503
    stats.target_response("front", "web", 0.003)
    stats.target_response("front", "web", 40.0)
    stats.processed("front", 100, 2000)
    stats.redirect("front")
    stats.desync_request("front", "Severe", "BadHeader", refused=True)
    stats.target_connection_error("web")
    metrics = Metrics("balancer", version="t")
    metrics.register_collector(stats.collect)
    registry = metrics.registry
    get = registry.get_sample_value
    labels = {"listener": "front", "rule": "default", "target_group": "web"}
    assert (
        get(
            "wharf_balancer_http_requests_total",
            {**labels, "code_class": "2xx", "source": "target"},
        )
        == 1
    )
    assert (
        get("wharf_balancer_http_requests_total", {**labels, "code_class": "5xx", "source": "elb"})
        == 1
    )
    elb_5xx = "wharf_balancer_http_elb_5xx_responses_total"
    assert get(elb_5xx, {"listener": "front", "code": "502"}) == 1
    # Series a listener can have exist from its start (an increase() sees the first one).
    assert get(elb_5xx, {"listener": "front", "code": "503"}) == 0
    assert get(elb_5xx, {"listener": "front", "code": "505"}) is None
    timing = {"listener": "front", "target_group": "web"}
    assert get("wharf_balancer_target_response_seconds_count", timing) == 2
    assert get("wharf_balancer_target_response_seconds_bucket", {**timing, "le": "0.005"}) == 1
    assert get("wharf_balancer_target_response_seconds_bucket", {**timing, "le": "+Inf"}) == 2
    assert get("wharf_balancer_http_connections_active", {"listener": "front"}) == 1
    assert get("wharf_balancer_http_connections_new_total", {"listener": "front"}) == 1
    assert (
        get("wharf_balancer_http_processed_bytes_total", {"listener": "front", "direction": "out"})
        == 2000
    )
    assert get("wharf_balancer_http_redirects_total", {"listener": "front"}) == 1
    assert get("wharf_balancer_http_fixed_responses_total", {"listener": "front"}) == 0
    desync = {
        "listener": "front",
        "classification": "Severe",
        "reason": "BadHeader",
        "refused": "true",
    }
    assert get("wharf_balancer_http_desync_requests_total", desync) == 1
    assert get("wharf_balancer_target_connection_errors_total", {"target_group": "web"}) == 1
    stats.group_known("api")
    assert get("wharf_balancer_target_connection_errors_total", {"target_group": "api"}) == 0
    stats.connection_closed("front")
    assert get("wharf_balancer_http_connections_active", {"listener": "front"}) == 0
    assert b"wharf_balancer_http_requests_total" in generate_latest(registry)
    assert isinstance(registry, CollectorRegistry)


def test_retain_forgets_the_listeners_and_groups_gone():
    stats = HttpStats()
    for name in ("kept", "gone"):
        stats.listener_started(name)
        stats.connection_opened(name)
        stats.desync_request(name, "Ambiguous", "UndefinedTransferEncoding", refused=False)
    stats.group_known("web")
    stats.group_known("old")
    stats.request("kept", "default", "web", 200, by_target=True)
    stats.request("kept", "default", "old", 502, by_target=False)  # a group a reload removed
    stats.request("kept", "-", "-", 400, by_target=False)  # answered without any group
    stats.request("gone", "default", "web", 200, by_target=True)
    stats.target_response("kept", "old", 0.1)
    stats.target_response("kept", "web", 0.1)
    stats.target_connection_error("old")

    stats.retain({"kept"}, {"web"})

    text = _render(stats)
    assert 'listener="gone"' not in text
    assert 'target_group="old"' not in text
    assert 'listener="kept",rule="default",source="target",target_group="web"' in text
    assert 'listener="kept",rule="-",source="elb",target_group="-"' in text
    assert 'wharf_balancer_http_connections_active{listener="kept"} 1.0' in text
    assert (
        'wharf_balancer_target_response_seconds_count{listener="kept",target_group="web"}' in text
    )
    assert 'wharf_balancer_target_connection_errors_total{target_group="web"} 0.0' in text


def _render(stats: HttpStats) -> str:
    registry = CollectorRegistry()
    registry.register(_Collector(stats))
    return generate_latest(registry).decode()


class _Collector:
    def __init__(self, stats: HttpStats) -> None:
        self.stats = stats

    def collect(self):  # type: ignore[no-untyped-def]
        return self.stats.collect()
