from __future__ import annotations

from collections import Counter

import msgspec
import pytest

from balancer.config import (
    BalancerConfig,
    Certificate,
    Endpoint,
    FixedResponse,
    Forward,
    HealthCheck,
    HttpListener,
    HttpsListener,
    StickinessKeys,
    Target,
    TargetGroup,
)
from balancer.health import Input, TargetDeregistered, TargetState
from balancer.runtime import Runtime, groups_in_use, target_policy
from balancer.target_tls import BACKEND_FIPS_POLICY, BACKEND_POLICY, BACKEND_TLS13_POLICY

KEY = b"k" * 32


def config(
    *targets: str,
    checks: bool = True,
    algorithm: str = "round_robin",
    extra_group: bool = False,
    slow_start: int = 0,
) -> BalancerConfig:
    groups = [
        TargetGroup(
            name="web",
            port=8080,
            targets=tuple(Target(host=t) for t in targets),
            health_check=HealthCheck(enabled=checks),
            algorithm=algorithm,  # type: ignore[arg-type]
            deregistration_delay_seconds=30,
            slow_start_seconds=slow_start,
        )
    ]
    if extra_group:
        groups.append(TargetGroup(name="spare", targets=(Target(host="10.0.0.9"),)))
    listener = HttpListener(name="front", port=0, default_action=Forward(target_group="web"))
    return BalancerConfig(listeners=(listener,), target_groups=tuple(groups))


def test_first_generation_compiles_listeners_and_groups():
    runtime = Runtime(config("10.0.0.1", "10.0.0.2"), now=0.0)
    snap = runtime.current
    assert snap.generation == 1
    assert snap.sealer is None
    assert snap.listeners["front"].protocol == "http"
    group = snap.groups["web"]
    assert [e.target_id for e in group.endpoints] == ["10.0.0.1:8080", "10.0.0.2:8080"]
    assert {c.state for c in group.candidates()} == {TargetState.INITIAL}


def test_initial_targets_take_requests_by_failing_open_until_checked():
    runtime = Runtime(config("10.0.0.1", "10.0.0.2"), now=0.0)
    group = runtime.current.groups["web"]
    picked = group.choose(now=1.0, rand=runtime.rand)
    assert picked is not None
    assert picked.choice.fail_open
    # One passing check makes a target healthy, and then only it is chosen.
    group.live.health.record_check("10.0.0.2:8080", Input.CHECK_PASSED, 2.0)
    for _ in range(4):
        picked = group.choose(now=3.0, rand=runtime.rand)
        assert picked is not None
        assert picked.endpoint.target_id == "10.0.0.2:8080"
        assert not picked.choice.fail_open


def test_groups_without_health_checks_route_to_every_target():
    runtime = Runtime(config("10.0.0.1", checks=False), now=0.0)
    picked = runtime.current.groups["web"].choose(now=0.0, rand=runtime.rand)
    assert picked is not None
    assert not picked.choice.fail_open
    assert picked.choice.target.state is TargetState.UNAVAILABLE


def test_reload_keeps_health_of_kept_targets_and_drains_removed_ones():
    runtime = Runtime(config("10.0.0.1", "10.0.0.2"), now=0.0)
    live = runtime.live["web"]
    live.health.record_check("10.0.0.1:8080", Input.CHECK_PASSED, 1.0)
    old = runtime.current
    seen: list[object] = []
    runtime.observers.append(seen.extend)
    runtime.reload(config("10.0.0.1", "10.0.0.3"), (), 5.0)
    new = runtime.current
    assert new.generation > old.generation
    assert new.groups["web"].live is live  # the same live state
    assert live.health.get("10.0.0.1:8080").state is TargetState.HEALTHY  # type: ignore[union-attr]
    assert live.health.get("10.0.0.2:8080").state is TargetState.DRAINING  # type: ignore[union-attr]
    assert live.health.get("10.0.0.3:8080").state is TargetState.INITIAL  # type: ignore[union-attr]
    assert seen  # observers heard about the changes
    # The old generation still resolves its targets, but a draining one is never chosen.
    for _ in range(4):
        picked = old.groups["web"].choose(now=6.0, rand=runtime.rand)
        assert picked is not None
        assert picked.endpoint.target_id == "10.0.0.1:8080"


def test_last_request_of_a_draining_target_ends_its_draining():
    runtime = Runtime(config("10.0.0.1", "10.0.0.2", checks=False), now=0.0)
    group = runtime.current.groups["web"]
    group.request_started("10.0.0.2:8080")
    runtime.reload(config("10.0.0.1", checks=False), (), 1.0)
    assert group.live.in_flight("10.0.0.2:8080") == 1
    events = group.request_finished("10.0.0.2:8080", 2.0)
    assert any(isinstance(e, TargetDeregistered) and e.early for e in events)
    assert group.live.health.get("10.0.0.2:8080") is None


def test_outstanding_counts_survive_a_reload_for_least_outstanding_requests():
    cfg = config("10.0.0.1", "10.0.0.2", checks=False, algorithm="least_outstanding_requests")
    runtime = Runtime(cfg, now=0.0)
    runtime.current.groups["web"].request_started("10.0.0.1:8080")
    runtime.reload(cfg, (), 1.0)
    group = runtime.current.groups["web"]
    for _ in range(3):
        picked = group.choose(now=2.0, rand=runtime.rand)
        assert picked is not None
        assert picked.endpoint.target_id == "10.0.0.2:8080"


A, B, C = "10.0.0.1", "10.0.0.2", "10.0.0.3"


def picks(runtime: Runtime, now: float, n: int = 100) -> Counter[str]:
    """How ``n`` requests at ``now`` spread over the web group's targets (by host)."""
    found: Counter[str] = Counter()
    for _ in range(n):
        picked = runtime.current.groups["web"].choose(now=now, rand=runtime.rand)
        assert picked is not None
        found[picked.endpoint.host] += 1
    return found


def healthy(runtime: Runtime, host: str, now: float) -> None:
    runtime.live["web"].health.record_check(f"{host}:8080", Input.CHECK_PASSED, now)


def test_turning_slow_start_on_by_reload_leaves_the_healthy_targets_out_of_it():
    # AWS: "When you enable slow start for a target group, the healthy targets registered
    # with the target group do not enter slow start mode." B came after A, so it would
    # ramp had slow start been on when it became healthy (a hunt saw 99 to 1 after reload).
    runtime = Runtime(config(A), now=0.0)
    healthy(runtime, A, 1.0)
    runtime.reload(config(A, B), (), 10.0)
    healthy(runtime, B, 11.0)
    assert picks(runtime, 12.0) == {A: 50, B: 50}
    runtime.reload(config(A, B, slow_start=900), (), 20.0)
    assert picks(runtime, 21.0) == {A: 50, B: 50}
    # A target that becomes healthy afterwards ramps as usual (10% of a share at 90 s).
    runtime.reload(config(A, B, C, slow_start=900), (), 30.0)
    healthy(runtime, C, 31.0)
    assert picks(runtime, 121.0, 210)[C] == 10


def test_a_new_slow_start_duration_keeps_ramps_going_and_restarts_none():
    runtime = Runtime(config(A, slow_start=30), now=0.0)
    healthy(runtime, A, 1.0)
    runtime.reload(config(A, B, slow_start=30), (), 10.0)
    healthy(runtime, B, 11.0)  # ramps until 41
    runtime.reload(config(A, B, C, slow_start=30), (), 50.0)
    healthy(runtime, C, 60.0)  # ramps until 90 on 30 s
    runtime.reload(config(A, B, C, slow_start=900), (), 70.0)
    # B had finished its ramp: it keeps a full share (it would fall to 60/900 of one if the
    # ramp started over). C goes on ramping, over 900 s from 60.
    found = picks(runtime, 150.0, 210)
    assert (found[A], found[B]) == (100, 100)
    assert found[C] == 10
    # Back to 30 s: C's ramp ends at 90, so it is over.
    runtime.reload(config(A, B, C, slow_start=30), (), 160.0)
    assert picks(runtime, 161.0, 99) == {A: 33, B: 33, C: 33}


def test_a_target_registered_again_while_it_drains_enters_slow_start():
    # AWS: "If you register the same target again, it enters slow start mode when it is
    # considered healthy by the target group." A and B start together: neither ramps.
    runtime = Runtime(config(A, B, slow_start=900), now=0.0)
    healthy(runtime, A, 1.0)
    healthy(runtime, B, 1.0)
    assert picks(runtime, 2.0) == {A: 50, B: 50}
    runtime.current.groups["web"].request_started(f"{B}:8080")  # so B drains, not leaves
    runtime.reload(config(A, slow_start=900), (), 10.0)
    record = runtime.live["web"].health.get(f"{B}:8080")
    assert record is not None
    assert record.state is TargetState.DRAINING
    runtime.reload(config(A, B, slow_start=900), (), 11.0)
    healthy(runtime, B, 12.0)
    assert picks(runtime, 12.0)[B] == 1  # the 1% trickle at the start of its ramp
    assert picks(runtime, 102.0, 110)[B] == 10  # 10% of a share after 90 s of 900


def test_replace_targets_makes_a_new_generation_sharing_the_rest():
    runtime = Runtime(config("10.0.0.1", extra_group=True), now=0.0)
    old = runtime.current
    runtime.replace_targets("web", [Endpoint("10.0.0.5:80", "10.0.0.5", 80, 1, "")], 1.0)
    new = runtime.current
    assert new.generation == old.generation + 1
    assert new.listeners is old.listeners
    assert new.groups["spare"] is old.groups["spare"]
    assert [c.target_id for c in new.groups["web"].candidates()] == ["10.0.0.5:80"]
    record = runtime.live["web"].health.get("10.0.0.1:8080")
    assert record is not None
    assert record.state is TargetState.DRAINING


def test_replace_targets_leaves_the_other_groups_tables_alone(monkeypatch):
    """An admin registration costs its group's size, not the balancer's: the other groups'
    tables (thousands of targets at scale) were synchronised with their unchanged lists at
    every call."""
    runtime = Runtime(config("10.0.0.1", extra_group=True), now=0.0)
    touched: list[str] = []
    spare = runtime.live["spare"].health
    monkeypatch.setattr(spare, "sync", lambda *args, **kwargs: touched.append("sync") or [])
    monkeypatch.setattr(spare, "set_policy", lambda *args: touched.append("set_policy") or [])
    endpoints = [Endpoint("10.0.0.1:8080", "10.0.0.1", 8080, 1, "")]
    events = runtime.replace_targets(
        "web", [*endpoints, Endpoint("10.0.0.5:80", "10.0.0.5", 80, 1, "")], 1.0
    )
    assert [(e.target_id, e.state) for e in events] == [("10.0.0.5:80", TargetState.INITIAL)]
    assert touched == []
    runtime.reload(config("10.0.0.1", extra_group=True), (), 2.0)  # a reload syncs them all
    assert touched == ["set_policy", "sync"]


def test_unreferenced_groups_are_unused_and_removed_groups_drain_then_go():
    runtime = Runtime(config("10.0.0.1", extra_group=True), now=0.0)
    assert groups_in_use(runtime.current.config) == {"web"}
    spare = runtime.live["spare"]
    record = spare.health.get("10.0.0.9:80")
    assert record is not None
    assert record.state is TargetState.UNUSED
    runtime.reload(config("10.0.0.1"), (), 1.0)
    assert "spare" not in runtime.live  # idle unused targets leave without waiting


def test_a_removed_group_in_use_is_forgotten_once_its_targets_have_drained():
    runtime = Runtime(config("10.0.0.1"), now=0.0)
    runtime.reload(BalancerConfig(), (), 1.0)  # the listener and its group go
    assert runtime.live["web"].health.get("10.0.0.1:8080").state is TargetState.DRAINING
    runtime.advance(10.0)
    assert "web" in runtime.live  # still draining: its metrics stay
    runtime.advance(32.0)  # past the 30 s deregistration delay
    assert "web" not in runtime.live  # and wharf_balancer_targets no longer lists it


def test_sealer_is_built_from_keys_and_a_bad_key_changes_nothing():
    cfg = BalancerConfig(stickiness=StickinessKeys(key_files=("/k",)))
    runtime = Runtime(cfg, keys=[KEY], now=0.0)
    assert runtime.current.sealer is not None
    before = runtime.current
    with pytest.raises(ValueError, match="at least"):
        runtime.reload(cfg, [b"short"], 1.0)
    assert runtime.current is before


def test_a_listener_with_only_fixed_responses_uses_no_group():
    listener = HttpListener(
        name="front", port=0, default_action=FixedResponse(status_code=200, message_body="hi")
    )
    runtime = Runtime(BalancerConfig(listeners=(listener,)), now=0.0)
    assert runtime.current.groups == {}


def test_a_generation_still_routes_to_a_group_a_newer_one_left_unused():
    runtime = Runtime(config("10.0.0.1"), now=0.0)
    old = runtime.current.groups["web"]
    unused = BalancerConfig(
        listeners=(
            HttpListener(name="front", port=0, default_action=FixedResponse(status_code=200)),
        ),
        target_groups=runtime.current.config.target_groups,
    )
    runtime.reload(unused, (), 1.0)
    assert runtime.live["web"].health.get("10.0.0.1:8080").state is TargetState.UNUSED
    assert runtime.current.groups["web"].choose(now=1.0, rand=runtime.rand) is None
    # A request routed by the old generation (in flight across the reload) is still served.
    picked = old.choose(now=1.0, rand=runtime.rand)
    assert picked is not None
    assert picked.endpoint.target_id == "10.0.0.1:8080"
    assert picked.choice.fail_open


def test_https_groups_share_one_tls_context_per_generation():
    plain = config("10.0.0.1")
    https = msgspec.structs.replace(
        plain,
        target_groups=(
            msgspec.structs.replace(plain.target_groups[0], protocol="https"),
            TargetGroup(name="api", protocol="https", targets=(Target(host="api.internal"),)),
        ),
    )
    runtime = Runtime(plain, now=0.0)
    assert runtime.current.groups["web"].tls is None
    assert runtime.current.groups["web"].endpoints[0].tls is None
    runtime.reload(https, (), 1.0)
    first = runtime.current
    context = first.groups["web"].tls
    assert context is not None
    assert first.groups["api"].tls is context  # one per generation, not per group
    assert {e.tls for g in first.groups.values() for e in g.endpoints} == {context}
    # Registering a target makes a generation that keeps the context...
    endpoints = [*first.groups["web"].endpoints, Endpoint("10.0.0.2:8080", "10.0.0.2", 8080, 1, "")]
    runtime.replace_targets("web", endpoints, 2.0)
    assert runtime.current.groups["web"].endpoints[1].tls is context
    # ...and a reload builds the next one.
    runtime.reload(https, (), 3.0)
    assert runtime.current.groups["web"].tls not in (None, context)


def test_the_generations_tls_context_has_the_listeners_backend_policy():
    """ALB's back-end policy follows the HTTPS listeners' policies, so a reload that adds or
    changes one (even a listener that forwards nowhere) changes it."""
    plain = config("10.0.0.1")
    https = msgspec.structs.replace(
        plain, target_groups=(msgspec.structs.replace(plain.target_groups[0], protocol="https"),)
    )

    def with_tls_listener(policy: str) -> BalancerConfig:
        tls = HttpsListener(
            name="tls",
            port=0,
            default_action=FixedResponse(status_code=200),
            certificates=(Certificate(cert_file="/unread.pem", key_file="/unread.key"),),
            ssl_policy=policy,  # type: ignore[arg-type]
        )
        return msgspec.structs.replace(https, listeners=(*https.listeners, tls))

    runtime = Runtime(https, now=0.0)
    assert target_policy(https) == BACKEND_POLICY  # no HTTPS listener
    cases = [
        ("ELBSecurityPolicy-2016-08", BACKEND_POLICY),
        ("ELBSecurityPolicy-TLS13-1-2-2021-06", BACKEND_TLS13_POLICY),
        ("ELBSecurityPolicy-TLS13-1-2-Res-FIPS-2023-04", BACKEND_FIPS_POLICY),
    ]
    assert runtime.current.groups["web"].tls.policy == BACKEND_POLICY  # type: ignore[union-attr]
    for now, (listener_policy, expected) in enumerate(cases, start=1):
        runtime.reload(with_tls_listener(listener_policy), (), float(now))
        context = runtime.current.groups["web"].tls
        assert context is not None
        assert context.policy == expected


def test_pools_keep_connections_only_to_targets_that_take_requests():
    runtime = Runtime(config("10.0.0.1", "10.0.0.2", checks=False), now=0.0)
    group = runtime.current.groups["web"]
    live = group.live
    assert all(e.owner is live for e in group.endpoints)
    assert live.keeps_connections("10.0.0.1:8080")
    runtime.reload(config("10.0.0.2", checks=False), (), 1.0)
    assert live.health.get("10.0.0.1:8080").state is TargetState.DRAINING  # type: ignore[union-attr]
    assert not live.keeps_connections("10.0.0.1:8080")  # draining: no new request
    runtime.advance(31.0)
    assert not live.keeps_connections("10.0.0.1:8080")  # gone
    assert live.keeps_connections("10.0.0.2:8080")
