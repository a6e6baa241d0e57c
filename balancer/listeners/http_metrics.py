"""The HTTP listeners' metrics: ALB's CloudWatch set, as plain counters read at scrape time.

A request touches several series. prometheus_client's labelled children cost a lock and a
label lookup each, which is a measurable share of a ~50 µs request; here each event is one
dict increment (the event loop is single-threaded, so no lock is needed) and
:meth:`HttpStats.collect` turns the dicts into metric families when Prometheus scrapes.

CloudWatch name -> series (all prefixed ``wharf_balancer_``):

- RequestCount, HTTPCode_ELB_*, HTTPCode_Target_*: ``http_requests_total`` by listener,
  rule (priority, ``default``), target group, code class and ``source`` (``elb`` when the
  balancer answered, ``target`` when the target did), so ELB- and target-generated 5xx
  are told apart.
- HTTPCode_ELB_500/502/503/504_Count: ``http_elb_5xx_responses_total`` by listener and the
  exact code the balancer answered with (a target's own 5xx are not in it).
- TargetResponseTime: ``target_response_seconds`` histogram by listener and target group.
- ActiveConnectionCount, NewConnectionCount: ``http_connections_active`` (gauge) and
  ``http_connections_new_total`` for client connections; ``target_connections_active``
  (gauge, read at scrape time: pooled idle connections plus requests in flight) and
  ``target_connections_new_total`` by target group for the balancer's connections to
  targets (health checks excluded, as on ALB). ALB's two metrics are the sums of both.
- ProcessedBytes: ``http_processed_bytes_total`` by listener and direction.
- HTTP_Redirect_Count, HTTP_Fixed_Response_Count: ``http_redirects_total``,
  ``http_fixed_responses_total``.
- RejectedConnectionCount: ``http_rejected_connections_total``.
- DesyncMitigationMode_NonCompliant_Request_Count: ``http_desync_requests_total`` by
  classification and reason (refused or not).
- TargetConnectionErrorCount: ``target_connection_errors_total`` by target group.
- TargetTLSNegotiationErrorCount: ``target_tls_negotiation_errors_total`` by target group
  (handshakes with targets of https groups that failed; each is a connection error too). A
  handshake still pending at the connect timeout counts as a connection error only.
- ClientTLSNegotiationErrorCount belongs to the TLS shell.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Container, Iterable, Mapping
from typing import Any, Final, TypeVar

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from balancer.config_rules import Action, FixedResponse, Forward, Rule
from monitoring.metrics import LATENCY_BUCKETS, cumulative_buckets

PREFIX: Final = "wharf_balancer_"
# The shared latency buckets, then on to the longest idle timeout a listener may have (4000 s,
# as ALB's), which bounds a target's answer: histogram_quantile() answers at most the top
# finite bound, so a listener whose targets take minutes must not read as 60 s.
BUCKETS: Final = (*LATENCY_BUCKETS, 120.0, 300.0, 900.0, 1800.0, 4000.0)
_Key = TypeVar("_Key")
CODE_CLASSES: Final = ("1xx", "2xx", "3xx", "4xx", "5xx")


def code_class(status: int) -> str:
    return CODE_CLASSES[min(max(status // 100, 1), 5) - 1]


class _Histogram:
    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        return cumulative_buckets(BUCKETS, self.counts)


# The 5xx codes the balancer answers with itself, whose series exist from a listener's start.
ELB_5XX_CODES: Final = (500, 502, 503, 504)
# The classes the balancer answers any request with itself (refusals, timeouts, target errors).
ELB_ERROR_CLASSES: Final = ("4xx", "5xx")
NO_RULE: Final = "-"  # a request refused before any rule matched it
NO_GROUP: Final = "-"  # a request no target group served (redirect, fixed response, refusal)


class HttpStats:
    """Counters of every HTTP listener of one balancer process."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str, str, str], int] = {}
        self.response_time: dict[tuple[str, str], _Histogram] = {}
        self.active: dict[str, int] = {}
        self.new_connections: dict[str, int] = {}
        self.bytes_in: dict[str, int] = {}
        self.bytes_out: dict[str, int] = {}
        self.redirects: dict[str, int] = {}
        self.redirect_url_limit_exceeded: dict[str, int] = {}
        self.fixed_responses: dict[str, int] = {}
        self.rejected: dict[str, int] = {}
        self.desync: dict[tuple[str, str, str, bool], int] = {}
        self.target_connection_errors: dict[str, int] = {}
        self.target_tls_negotiation_errors: dict[str, int] = {}
        self.target_connections_new: dict[str, int] = {}
        self.elb_5xx: dict[tuple[str, int], int] = {}

    def _per_listener_tables(self) -> tuple[dict[str, int], ...]:
        return (
            self.active,
            self.new_connections,
            self.bytes_in,
            self.bytes_out,
            self.redirects,
            self.redirect_url_limit_exceeded,
            self.fixed_responses,
            self.rejected,
        )

    def listener_started(self, listener: str) -> None:
        """Make a listener's series exist at zero (dashboards show 0, not "no data")."""
        for table in self._per_listener_tables():
            table.setdefault(listener, 0)
        for status in ELB_5XX_CODES:
            self.elb_5xx.setdefault((listener, status), 0)

    def routes_known(self, listeners: Iterable[tuple[str, Iterable[Rule], Action]]) -> None:
        """Make the request series of the listeners' routes (name, rules, default action:
        every listener of a configuration) exist at zero, so that an increase() sees the
        first 5xx of a target group: every class a forward's target groups can answer with
        and the classes the balancer answers errors with, per rule (``default`` for the
        default action); a redirect's 3xx and a fixed response's own class; the errors
        refused before any rule. Named the way :meth:`request` names them. The zero series
        of routes no longer configured go (a reload that renumbers rules would otherwise
        add a set each time); a series that counted something stays.
        """
        keys: set[tuple[str, str, str, str, str]] = set()
        timed: set[tuple[str, str]] = set()
        for listener, rules, default_action in listeners:
            keys.update((listener, NO_RULE, NO_GROUP, k, "elb") for k in ELB_ERROR_CLASSES)
            routes: list[tuple[str, Action]] = [("default", default_action)]
            routes += [(str(rule.priority), rule.action) for rule in rules]
            for rule_label, action in routes:
                if isinstance(action, Forward):
                    for weighted in action.weighted():
                        group = weighted.name
                        keys.update(
                            (listener, rule_label, group, k, "target") for k in CODE_CLASSES
                        )
                        keys.update(
                            (listener, rule_label, group, k, "elb") for k in ELB_ERROR_CLASSES
                        )
                        timed.add((listener, group))
                    continue
                own = code_class(action.status_code) if isinstance(action, FixedResponse) else "3xx"
                keys.update(
                    (listener, rule_label, NO_GROUP, k, "elb") for k in {own, *ELB_ERROR_CLASSES}
                )
        for key in [k for k, count in self.requests.items() if not count and k not in keys]:
            del self.requests[key]
        for pair in [
            p for p, h in self.response_time.items() if not any(h.counts) and p not in timed
        ]:
            del self.response_time[pair]
        for key in keys:
            self.requests.setdefault(key, 0)
        for pair in timed:
            if pair not in self.response_time:
                self.response_time[pair] = _Histogram()

    def group_known(self, group: str) -> None:
        """Make a target group's series exist at zero (an increase() sees its first error)."""
        self.target_connection_errors.setdefault(group, 0)
        self.target_tls_negotiation_errors.setdefault(group, 0)
        self.target_connections_new.setdefault(group, 0)

    def listeners(self) -> set[str]:
        """The listeners with series."""
        return {*self.new_connections, *self.active, *(key[0] for key in self.requests)}

    def groups(self) -> set[str]:
        """The target groups with series (``-``, no group, left out)."""
        named = {*self.target_connection_errors, *(key[2] for key in self.requests)}
        named.discard(NO_GROUP)
        return named

    def retain(self, listeners: Container[str], groups: Container[str]) -> None:
        """Forget the series of listeners and target groups not in ``listeners`` and
        ``groups`` (those a reload removed, once gone for good): without this every name a
        reload ever retired stayed in ``/metrics`` until the balancer stopped."""
        for table in self._per_listener_tables():
            _drop(table, lambda listener: listener not in listeners)
        _drop(self.requests, lambda key: key[0] not in listeners or _gone(key[2], groups))
        _drop(self.response_time, lambda key: key[0] not in listeners or key[1] not in groups)
        _drop(self.desync, lambda key: key[0] not in listeners)
        _drop(self.elb_5xx, lambda key: key[0] not in listeners)
        _drop(self.target_connection_errors, lambda group: group not in groups)
        _drop(self.target_tls_negotiation_errors, lambda group: group not in groups)
        _drop(self.target_connections_new, lambda group: group not in groups)

    # Recording (hot path: one dict update each).

    def connection_opened(self, listener: str) -> None:
        self.active[listener] = self.active.get(listener, 0) + 1
        self.new_connections[listener] = self.new_connections.get(listener, 0) + 1

    def connection_not_served(self, listener: str) -> None:
        """A TCP connection never served (a client's RST before it could be, or a refusal at
        the connection limit): new, as ALB's NewConnectionCount counts it, never active."""
        self.new_connections[listener] = self.new_connections.get(listener, 0) + 1

    def connection_closed(self, listener: str) -> None:
        self.active[listener] = self.active.get(listener, 1) - 1

    def processed(self, listener: str, received: int, sent: int) -> None:
        self.bytes_in[listener] = self.bytes_in.get(listener, 0) + received
        self.bytes_out[listener] = self.bytes_out.get(listener, 0) + sent

    def request(
        self, listener: str, rule: str, group: str, status: int, *, by_target: bool
    ) -> None:
        key = (listener, rule, group, code_class(status), "target" if by_target else "elb")
        self.requests[key] = self.requests.get(key, 0) + 1
        if status >= 500 and not by_target:
            code = (listener, status)
            self.elb_5xx[code] = self.elb_5xx.get(code, 0) + 1

    def target_response(self, listener: str, group: str, seconds: float) -> None:
        histogram = self.response_time.get((listener, group))
        if histogram is None:
            histogram = self.response_time[(listener, group)] = _Histogram()
        histogram.observe(seconds)

    def redirect(self, listener: str) -> None:
        self.redirects[listener] = self.redirects.get(listener, 0) + 1

    def redirect_url_too_long(self, listener: str) -> None:
        table = self.redirect_url_limit_exceeded
        table[listener] = table.get(listener, 0) + 1

    def fixed_response(self, listener: str) -> None:
        self.fixed_responses[listener] = self.fixed_responses.get(listener, 0) + 1

    def rejected_connection(self, listener: str) -> None:
        self.rejected[listener] = self.rejected.get(listener, 0) + 1

    def desync_request(
        self, listener: str, classification: str, reason: str, *, refused: bool
    ) -> None:
        key = (listener, classification, reason, refused)
        self.desync[key] = self.desync.get(key, 0) + 1

    def target_connection_opened(self, group: str) -> None:
        new = self.target_connections_new
        new[group] = new.get(group, 0) + 1

    def target_connection_error(self, group: str) -> None:
        self.target_connection_errors[group] = self.target_connection_errors.get(group, 0) + 1

    def target_tls_negotiation_error(self, group: str) -> None:
        errors = self.target_tls_negotiation_errors
        errors[group] = errors.get(group, 0) + 1

    # Scraping.

    def collect(self, target_connections: Mapping[str, int] | None = None) -> Iterable[Metric]:
        """The metric families, built from the counters now; ``target_connections``: the
        connections to each group's targets open now (pooled idle ones and those in use)."""
        requests = CounterMetricFamily(
            PREFIX + "http_requests",
            "Requests by listener, rule, target group, status class and who answered.",
            labels=["listener", "rule", "target_group", "code_class", "source"],
        )
        for key, value in sorted(self.requests.items()):
            requests.add_metric(list(key), value)
        timing = HistogramMetricFamily(
            PREFIX + "target_response_seconds",
            "From the request sent to a target to its response headers received.",
            labels=["listener", "target_group"],
        )
        for (listener, group), histogram in sorted(self.response_time.items()):
            timing.add_metric([listener, group], histogram.buckets(), histogram.total)
        active = GaugeMetricFamily(
            PREFIX + "http_connections_active", "Client connections open.", labels=["listener"]
        )
        for listener, value in sorted(self.active.items()):
            active.add_metric([listener], value)
        families: list[Metric] = [requests, timing, active]
        families += _per_listener(
            "http_connections_new", "Client connections accepted.", self.new_connections
        )
        processed = CounterMetricFamily(
            PREFIX + "http_processed_bytes",
            "Bytes received from and sent to clients.",
            labels=["listener", "direction"],
        )
        for listener in sorted(self.bytes_in):
            processed.add_metric([listener, "in"], self.bytes_in[listener])
            processed.add_metric([listener, "out"], self.bytes_out.get(listener, 0))
        families.append(processed)
        families += _per_listener("http_redirects", "Redirect actions taken.", self.redirects)
        families += _per_listener(
            "http_redirect_url_limit_exceeded",
            "Redirect actions not taken (answered 500) because the Location would be longer "
            "than 8 KiB, as ALB's HTTP_Redirect_Url_Limit_Exceeded_Count.",
            self.redirect_url_limit_exceeded,
        )
        families += _per_listener(
            "http_fixed_responses", "Fixed-response actions taken.", self.fixed_responses
        )
        families += _per_listener(
            "http_rejected_connections",
            "Connections turned away because the listener was at its connection limit.",
            self.rejected,
        )
        desync = CounterMetricFamily(
            PREFIX + "http_desync_requests",
            "Requests that were not RFC-compliant, by ALB's classification and reason.",
            labels=["listener", "classification", "reason", "refused"],
        )
        for (listener, klass, reason, refused), value in sorted(self.desync.items()):
            desync.add_metric([listener, klass, reason, "true" if refused else "false"], value)
        errors = CounterMetricFamily(
            PREFIX + "target_connection_errors",
            "Connections to targets that could not be opened.",
            labels=["target_group"],
        )
        for group, value in sorted(self.target_connection_errors.items()):
            errors.add_metric([group], value)
        tls_errors = CounterMetricFamily(
            PREFIX + "target_tls_negotiation_errors",
            "TLS handshakes with targets that failed (ALB's TargetTLSNegotiationErrorCount); "
            "each is in target_connection_errors too.",
            labels=["target_group"],
        )
        for group, value in sorted(self.target_tls_negotiation_errors.items()):
            tls_errors.add_metric([group], value)
        elb_5xx = CounterMetricFamily(
            PREFIX + "http_elb_5xx_responses",
            "5xx responses the balancer itself answered, by exact code (ALB's HTTPCode_ELB_5xx).",
            labels=["listener", "code"],
        )
        for (listener, status), value in sorted(self.elb_5xx.items()):
            elb_5xx.add_metric([listener, str(status)], value)
        opened = CounterMetricFamily(
            PREFIX + "target_connections_new",
            "Connections to targets opened (health checks' excluded).",
            labels=["target_group"],
        )
        for group, value in sorted(self.target_connections_new.items()):
            opened.add_metric([group], value)
        open_now = GaugeMetricFamily(
            PREFIX + "target_connections_active",
            "Connections to targets open now: pooled idle ones and those of requests in flight.",
            labels=["target_group"],
        )
        for group, value in sorted((target_connections or {}).items()):
            open_now.add_metric([group], value)
        return [*families, desync, errors, tls_errors, elb_5xx, opened, open_now]


def _drop(table: dict[_Key, Any], gone: Callable[[_Key], bool]) -> None:
    for key in [key for key in table if gone(key)]:
        del table[key]


def _gone(group: str, groups: Container[str]) -> bool:
    return group != NO_GROUP and group not in groups


def _per_listener(name: str, documentation: str, values: dict[str, int]) -> list[Metric]:
    family = CounterMetricFamily(PREFIX + name, documentation, labels=["listener"])
    for listener, value in sorted(values.items()):
        family.add_metric([listener], value)
    return [family]
