from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from balancer.config import Conditions, FixedResponse, Forward, Rule
from balancer.listeners.http_metrics import BUCKETS, HttpStats, code_class
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


def test_routes_known_name_their_series_as_requests_do():
    """routes_known makes the series request() will add to, at 0; it never lowers a count."""
    stats = HttpStats()
    stats.request("front", "default", "web", 502, by_target=False)
    rules = [
        Rule(
            priority=3,
            conditions=Conditions(path_pattern=("/x",)),
            action=FixedResponse(status_code=204),
        )
    ]
    stats.routes_known([("front", rules, Forward(target_group="web"))])
    stats.routes_known([("front", rules, Forward(target_group="web"))])  # again: no change
    assert stats.requests[("front", "default", "web", "5xx", "elb")] == 1
    assert stats.requests[("front", "default", "web", "2xx", "target")] == 0
    assert ("front", "default", "web", "2xx", "elb") not in stats.requests
    assert stats.requests[("front", "3", "-", "2xx", "elb")] == 0
    assert ("front", "3", "-", "3xx", "elb") not in stats.requests
    assert stats.requests[("front", "-", "-", "4xx", "elb")] == 0
    assert stats.response_time[("front", "web")].counts == [0] * (len(BUCKETS) + 1)
    stats.request("front", "3", "-", 204, by_target=False)
    assert stats.requests[("front", "3", "-", "2xx", "elb")] == 1


def test_a_reload_that_renumbers_rules_leaves_no_zero_series_behind():
    """Each configuration's routes got their zero series and none went: a reload that
    renumbered 100 rules added ~3,500 series each time (review of the zero series)."""
    stats = HttpStats()

    def rules(first: int) -> list[Rule]:
        return [
            Rule(
                priority=first + i,
                conditions=Conditions(path_pattern=(f"/{i}",)),
                action=Forward(target_group=f"g{i}"),
            )
            for i in range(3)
        ]

    stats.routes_known([("front", rules(1), FixedResponse(status_code=404))])
    stats.request("front", "2", "g1", 200, by_target=True)  # counted: it stays
    stats.target_response("front", "g1", 0.01)
    size, timed = len(stats.requests), len(stats.response_time)
    for first in (10, 20, 30):
        stats.routes_known([("front", rules(first), FixedResponse(status_code=404))])
    assert len(stats.requests) == size + 1  # the counted series only, beside today's routes
    assert stats.requests[("front", "2", "g1", "2xx", "target")] == 1
    assert ("front", "1", "g0", "2xx", "target") not in stats.requests
    assert stats.requests[("front", "30", "g0", "2xx", "target")] == 0
    assert len(stats.response_time) == timed  # g0..g2 again; g1's observed one kept


def test_a_target_response_up_to_the_longest_idle_timeout_lands_in_a_finite_bucket():
    """A listener's idle timeout (up to 4000 s, as ALB's) bounds how long a target may take to
    answer; histogram_quantile() answers at most the top finite bound, which was 60 s, so a
    listener whose targets take minutes read as a p99 of 60 s."""
    stats = HttpStats()
    stats.target_response("front", "web", 100.0)
    stats.target_response("front", "web", 4000.0)
    metrics = Metrics("balancer", version="t")
    metrics.register_collector(stats.collect)
    get = metrics.registry.get_sample_value
    timing = {"listener": "front", "target_group": "web"}
    assert get("wharf_balancer_target_response_seconds_bucket", {**timing, "le": "60.0"}) == 0
    assert get("wharf_balancer_target_response_seconds_bucket", {**timing, "le": "120.0"}) == 1
    assert get("wharf_balancer_target_response_seconds_bucket", {**timing, "le": "4000.0"}) == 2


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
    stats.target_connection_opened("old")

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
