"""The admin targets API over a real socket: describe, register, deregister, reload."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterable
from pathlib import Path

import msgspec
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from balancer.cli import SPEC
from balancer.config import (
    BalancerConfig,
    Forward,
    HealthCheck,
    HttpListener,
    Target,
    TargetGroup,
)
from balancer.health import Input, TargetState
from balancer.peers import PEER_HEADER, forward
from balancer.runtime import Runtime
from balancer.targets_api import GroupOverrides, Overrides, SavedOverrides, StateFile, TargetsApi
from monitoring.admin import AdminServer, open_admin_listener
from monitoring.configfile import ConfigError, load
from monitoring.lifecycle import Frame
from monitoring.logging import EventLog
from monitoring.metrics import Metrics
from monitoring.settings import AdminSettings, HttpLimits
from tests.support.check_targets import StubTarget
from tests.support.daemons import address, running
from tests.support.http import request
from tests.support.processes import daemon_process


def make_config(*hosts: str, delay: int = 300) -> BalancerConfig:
    group = TargetGroup(
        name="web",
        port=8080,
        targets=tuple(Target(host=h) for h in hosts),
        deregistration_delay_seconds=delay,
        health_check=HealthCheck(port=9000),
    )
    spare = TargetGroup(name="spare", health_check=HealthCheck(enabled=False))
    listener = HttpListener(name="front", port=0, default_action=Forward(target_group="web"))
    return BalancerConfig(listeners=(listener,), target_groups=(group, spare))


class Admin:
    """A runtime with the targets API on a real admin listener."""

    def __init__(self, config: BalancerConfig, **api_options) -> None:
        self.runtime = Runtime(config, now=trio.current_time())
        self.overrides = Overrides()
        self.frame = Frame(EventLog("balancer", level="error"), Metrics("balancer", version="t"))
        self.server = AdminServer(self.frame)
        self.api = TargetsApi(self.runtime, self.overrides, self.frame.log, **api_options)
        self.api.mount(self.server)
        self.address: tuple[str, int] = ("", 0)

    async def start(self, nursery: trio.Nursery) -> None:
        listener = await open_admin_listener(
            self.frame, AdminSettings(port=0), HttpLimits(), self.server
        )
        self.address = listener.addresses[0]
        await nursery.start(self.frame.serve_listeners, [listener])

    async def call(self, method: str, target: str, body: object = None, **kwargs):
        data = body if isinstance(body, bytes) else json.dumps(body).encode() if body else b""
        status, headers, reply = await request(self.address, method, target, body=data, **kwargs)
        assert headers["content-type"] == "application/json"
        return status, json.loads(reply)

    async def targets(self, group: str = "web") -> dict[str, dict]:
        status, reply = await self.call("GET", f"/targets?target_group={group}")
        assert status == 200
        return {t["id"]: t for t in reply["target_groups"][0]["targets"]}


@pytest.fixture
async def admin(nursery):
    admin = Admin(make_config("10.0.0.1", "10.0.0.2"))
    await admin.start(nursery)
    yield admin
    admin.frame.stop(0)


async def test_describe_lists_every_group_like_describe_target_health(admin):
    admin.runtime.live["web"].health.record_check("10.0.0.1:8080", Input.CHECK_PASSED, 0.0)
    status, reply = await admin.call("GET", "/targets")
    assert status == 200
    assert [g["name"] for g in reply["target_groups"]] == ["web", "spare"]
    first, second = reply["target_groups"][0]["targets"]
    assert first["id"] == "10.0.0.1:8080"
    assert first["state"] == "healthy"
    assert first["reason"] is None
    assert first["health_check_port"] == 9000
    assert first["source"] == "config"
    assert second["state"] == "initial"
    assert second["reason"] == "Elb.InitialHealthChecking"
    assert second["description"] == "Initial health checks in progress"
    status, reply = await admin.call("GET", "/targets?target_group=nope")
    assert (status, reply["error"]) == (404, "TargetGroupNotFound")
    # An empty name (a script's unset variable) names no group either: not every group.
    for empty in ("target_group=", "target_group"):
        status, reply = await admin.call("GET", f"/targets?{empty}")
        assert (status, reply["error"]) == (404, "TargetGroupNotFound"), empty
        assert reply["message"] == "no target group named ''"


async def test_register_adds_targets_that_get_checked_and_chosen(admin):
    body = {"target_group": "web", "targets": [{"host": "10.0.0.3", "weight": 5}]}
    status, reply = await admin.call("POST", "/targets/register", body)
    assert status == 200
    assert reply["targets"][0]["id"] == "10.0.0.3:8080"
    assert reply["targets"][0]["state"] == "initial"
    targets = await admin.targets()
    assert targets["10.0.0.3:8080"]["source"] == "api"
    assert targets["10.0.0.3:8080"]["weight"] == 5
    group = admin.runtime.current.groups["web"]
    assert "10.0.0.3:8080" in group.by_id
    # Registering it again is a no-op that keeps its health.
    group.live.health.record_check("10.0.0.3:8080", Input.CHECK_PASSED, 1.0)
    await admin.call("POST", "/targets/register", body)
    assert (await admin.targets())["10.0.0.3:8080"]["state"] == "healthy"


async def test_deregister_drains_then_register_brings_it_back(admin):
    live = admin.runtime.live["web"]
    live.outstanding["10.0.0.2:8080"] = 2
    body = {"target_group": "web", "targets": [{"host": "10.0.0.2", "port": 8080}]}
    status, reply = await admin.call("POST", "/targets/deregister", body)
    assert status == 200
    (described,) = reply["targets"]
    assert described["state"] == "draining"
    assert described["reason"] == "Target.DeregistrationInProgress"
    assert described["source"] == "deregistered"
    assert described["in_flight"] == 2
    assert "10.0.0.2:8080" not in admin.runtime.current.groups["web"].by_id
    # Deregistering a draining target again is a no-op; so is deregistering a stranger
    # (AWS's DeregisterTargets "returns successfully"), even beside a registered target.
    assert (await admin.call("POST", "/targets/deregister", body))[0] == 200
    stranger = {"target_group": "web", "targets": [{"host": "10.9.9.9"}, {"host": "10.0.0.1"}]}
    status, reply = await admin.call("POST", "/targets/deregister", stranger)
    assert status == 200
    assert [t["id"] for t in reply["targets"]] == ["10.0.0.1:8080"]
    assert reply["targets"][0]["state"] == "draining"
    assert "10.9.9.9:8080" not in await admin.targets()
    # Registered again while draining: back in service, checked from scratch.
    status, reply = await admin.call("POST", "/targets/register", body)
    assert status == 200
    assert reply["targets"][0]["state"] == "initial"
    assert live.health.get("10.0.0.2:8080").state is TargetState.INITIAL


async def test_a_target_that_drained_early_is_listed_as_draining_until_its_delay_ends(nursery):
    now = [trio.current_time()]
    admin = Admin(make_config("10.0.0.1", "10.0.0.2", delay=30), clock=lambda: now[0])
    await admin.start(nursery)
    body = {"target_group": "web", "targets": [{"host": "10.0.0.2", "port": 8080}]}
    assert (await admin.call("POST", "/targets/deregister", body))[0] == 200
    live = admin.runtime.live["web"]
    admin.runtime.notify(live.health.target_idle("10.0.0.2:8080", now[0]))  # nothing in flight
    assert live.health.get("10.0.0.2:8080") is None  # gone for routing and connections
    now[0] += 29
    shown = (await admin.targets())["10.0.0.2:8080"]
    assert (shown["state"], shown["reason"]) == ("draining", "Target.DeregistrationInProgress")
    assert (shown["in_flight"], shown["source"]) == (0, "deregistered")
    assert shown["seconds_in_state"] == pytest.approx(29, abs=0.01)
    now[0] += 1
    assert "10.0.0.2:8080" not in await admin.targets()
    admin.frame.stop(0)


async def test_a_code_mismatch_is_described_with_the_code(admin):
    health = admin.runtime.live["web"].health
    for _ in range(2):
        health.record_check("10.0.0.1:8080", Input.CHECK_CODE_MISMATCH, 1.0, status=404)
    shown = (await admin.targets())["10.0.0.1:8080"]
    assert (shown["state"], shown["reason"]) == ("unhealthy", "Target.ResponseCodeMismatch")
    assert shown["description"] == "Health checks failed with these codes: [404]"


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
async def test_registering_the_balancers_own_admin_listener_is_refused(admin, host):
    # As the file's check refuses it: through a listener it would serve any client's changes.
    admin_port = admin.runtime.current.config.admin.port
    body = {"target_group": "web", "targets": [{"host": host, "port": admin_port}]}
    status, reply = await admin.call("POST", "/targets/register", body)
    assert (status, reply["error"]) == (400, "ValidationError")
    assert "is this balancer's own admin listener (admin.port)" in reply["message"]
    assert len(admin.runtime.current.groups["web"].endpoints) == 2


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "ValidationError"),
        ({"target_group": "web"}, 400, "ValidationError"),
        ({"target_group": "web", "targets": []}, 400, "ValidationError"),
        ({"target_group": "web", "targets": [{"host": "bad host!"}]}, 400, "ValidationError"),
        ({"target_group": "web", "targets": [{"host": "300.2.3.4"}]}, 400, "ValidationError"),
        (
            {"target_group": "web", "targets": [{"host": "10.0.0.1", "port": 70000}]},
            400,
            "ValidationError",
        ),
        (
            {"target_group": "web", "targets": [{"host": "10.0.0.1", "color": "red"}]},
            400,
            "ValidationError",
        ),
        ({"target_group": "nope", "targets": [{"host": "10.0.0.1"}]}, 404, "TargetGroupNotFound"),
    ],
)
async def test_bad_requests_get_clear_json_errors(admin, body, status, code):
    got_status, reply = await admin.call("POST", "/targets/register", body)
    assert (got_status, reply["error"]) == (status, code)
    assert reply["message"]
    assert len(admin.runtime.current.groups["web"].endpoints) == 2


def test_registering_a_target_the_file_lists_leaves_it_the_files():
    """Whether a later file without it removes it must not depend on a reload in between, nor
    on the weight or zone the registration gave (the file's apply)."""
    overrides = Overrides()
    web = make_config("10.0.0.1", "10.0.0.2").target_groups[0]
    overrides.register(web, [Target(host="10.0.0.2"), Target(host="10.0.0.1", weight=7)])
    assert overrides.source("web", "10.0.0.2:8080") == "config"
    assert overrides.source("web", "10.0.0.1:8080") == "config"
    assert [e.weight for e in overrides.endpoints(web)] == [1, 1]
    without = make_config("10.0.0.2")
    overrides.prune(without)
    ids = [e.target_id for e in overrides.endpoints(without.target_groups[0])]
    assert ids == ["10.0.0.2:8080"]


async def test_a_registration_the_file_starts_listing_becomes_the_files_whatever_its_weight(
    nursery,
):
    # README: "a target registered through the API that the file then lists becomes the
    # file's (removing it from the file later removes it)"; the file's weight and zone apply.
    admin = Admin(make_config("10.0.0.1"))
    await admin.start(nursery)
    body = {"target_group": "web", "targets": [{"host": "10.0.0.9", "weight": 5, "zone": "b"}]}
    assert (await admin.call("POST", "/targets/register", body))[0] == 200
    listed = await admin.targets()
    assert (listed["10.0.0.9:8080"]["source"], listed["10.0.0.9:8080"]["weight"]) == ("api", 5)
    await reload_into(admin, make_config("10.0.0.1", "10.0.0.9"))
    listed = await admin.targets()
    assert (listed["10.0.0.9:8080"]["source"], listed["10.0.0.9:8080"]["weight"]) == ("config", 1)
    endpoints = admin.runtime.current.groups["web"].endpoints
    assert [(e.target_id, e.weight, e.zone) for e in endpoints][-1] == ("10.0.0.9:8080", 1, "")
    assert admin.overrides.dump() == SavedOverrides()
    await reload_into(admin, make_config("10.0.0.1"))
    listed = await admin.targets()
    assert listed["10.0.0.9:8080"]["state"] == "draining"  # removed: it drains, then leaves
    assert [e.target_id for e in admin.runtime.current.groups["web"].endpoints] == ["10.0.0.1:8080"]
    admin.frame.stop(0)


@given(
    st.lists(st.tuples(st.sampled_from("1234"), st.integers(1, 3)), max_size=8),
    st.sets(st.sampled_from("1234")),
    st.integers(1, 3),
)
def test_the_file_takes_over_every_target_it_lists(registered, listed, file_weight):
    def file(hosts: Iterable[str]) -> BalancerConfig:
        config = make_config()
        web = msgspec.structs.replace(
            config.target_groups[0],
            targets=tuple(Target(host=f"10.0.0.{h}", weight=file_weight) for h in sorted(hosts)),
        )
        return msgspec.structs.replace(config, target_groups=(web,))

    overrides = Overrides()
    start = file(())
    overrides.register(
        start.target_groups[0], [Target(host=f"10.0.0.{h}", weight=w) for h, w in registered]
    )
    overrides.prune(listing := file(listed))
    for endpoint in overrides.endpoints(listing.target_groups[0]):
        if endpoint.host[-1] in listed:
            assert overrides.source("web", endpoint.target_id) == "config"
            assert endpoint.weight == file_weight
        else:
            assert overrides.source("web", endpoint.target_id) == "api"
    # The file stops listing them: the API registrations it took over are gone with it.
    overrides.prune(empty := file(()))
    hosts = {e.host[-1] for e in overrides.endpoints(empty.target_groups[0])}
    assert hosts == {h for h, _ in registered} - listed


async def test_api_registrations_survive_a_reload_and_the_file_governs_the_rest():
    overrides = Overrides()
    runtime = Runtime(make_config("10.0.0.1", "10.0.0.2"), now=0.0)
    web = runtime.current.groups["web"].config
    overrides.register(web, [Target(host="10.0.0.3")])
    overrides.deregister(web, ["10.0.0.1:8080"])
    runtime.install(overrides.apply(runtime.current), 1.0)

    def ids() -> list[str]:
        return [e.target_id for e in runtime.current.groups["web"].endpoints]

    assert ids() == ["10.0.0.2:8080", "10.0.0.3:8080"]

    # A reload with a file that adds 10.0.0.4: the API's changes still apply on top.
    new = make_config("10.0.0.1", "10.0.0.2", "10.0.0.4")
    overrides.prune(new)
    runtime.install(overrides.apply(runtime.compile(new)), 2.0)
    assert ids() == ["10.0.0.2:8080", "10.0.0.4:8080", "10.0.0.3:8080"]
    assert overrides.source("web", "10.0.0.3:8080") == "api"

    # The file stops listing 10.0.0.1 (the API deregistration is moot) and starts listing
    # 10.0.0.3 (the API registration becomes the file's).
    newer = make_config("10.0.0.2", "10.0.0.3")
    overrides.prune(newer)
    runtime.install(overrides.apply(runtime.compile(newer)), 3.0)
    assert ids() == ["10.0.0.2:8080", "10.0.0.3:8080"]
    assert overrides.source("web", "10.0.0.3:8080") == "config"
    # ... so a later file without it removes it.
    last = make_config("10.0.0.2")
    overrides.prune(last)
    runtime.install(overrides.apply(runtime.compile(last)), 4.0)
    assert ids() == ["10.0.0.2:8080"]
    # A group gone from the file takes its overrides with it.
    overrides.register(web, [Target(host="10.0.0.9")])
    overrides.prune(BalancerConfig())
    assert overrides.endpoints(web) == web.endpoints()


async def test_reload_route_reports_the_outcome(nursery):
    outcomes = [None, "conf/balancer.toml: Expected `int` <= 65535 - at `$.admin.port`"]

    async def reload() -> str | None:
        return outcomes.pop(0)

    admin = Admin(make_config("10.0.0.1"), reload=reload)
    await admin.start(nursery)
    status, reply = await admin.call("POST", "/reload")
    assert status == 200
    assert reply["reloaded"] is True
    status, reply = await admin.call("POST", "/reload")
    assert (status, reply["error"]) == (400, "ConfigError")
    assert "$.admin.port" in reply["message"]

    without = Admin(make_config("10.0.0.1"))
    await without.start(nursery)
    assert (await without.call("POST", "/reload"))[0] == 503
    admin.frame.stop(0)
    without.frame.stop(0)


async def test_a_worker_points_to_worker_0_with_an_ipv6_address_in_brackets(nursery):
    admin = Admin(make_config("10.0.0.1"), primary=("::1", 9326))
    await admin.start(nursery)
    status, reply = await admin.call("POST", "/targets/register", {"target_group": "web"})
    assert (status, reply["error"]) == (409, "NotPrimaryWorker")
    assert "worker 0 at [::1]:9326;" in reply["message"]  # was "::1:9326"
    admin.frame.stop(0)


async def test_changes_are_forwarded_to_peer_workers_once(nursery):
    forwarded: list[tuple[str, bytes]] = []
    authorizations: list[str | None] = []

    async def peers(path: str, body: bytes, authorization: str | None) -> dict:
        forwarded.append((path, body))
        authorizations.append(authorization)
        return {"1": "ok"}

    async def reload() -> None:
        return None

    admin = Admin(make_config("10.0.0.1"), peers=peers, reload=reload)
    await admin.start(nursery)
    body = {"target_group": "web", "targets": [{"host": "10.0.0.3"}]}
    status, reply = await admin.call("POST", "/targets/register", body)
    assert status == 200
    assert reply["workers"] == {"1": "ok"}
    assert forwarded == [("/targets/register", json.dumps(body).encode())]
    # A request that came from a peer is applied here only.
    peer = [(PEER_HEADER, "0")]
    status, reply = await admin.call("POST", "/targets/deregister", body, headers=peer)
    assert status == 200
    assert "workers" not in reply
    status, reply = await admin.call("POST", "/reload", headers=[("authorization", "Bearer t")])
    assert reply["workers"] == {"1": "ok"}
    assert [path for path, _ in forwarded] == ["/targets/register", "/reload"]
    # Forwarded with the request's own Authorization (the token the siblings still hold).
    assert authorizations == [None, "Bearer t"]
    admin.frame.stop(0)


class _WatchedLock:
    """The targets API's lock, telling when a change has to wait for it."""

    def __init__(self, lock: trio.Lock, on_wait: Callable[[], None]) -> None:
        self._lock = lock
        self._on_wait = on_wait

    async def __aenter__(self) -> None:
        if self._lock.locked():
            self._on_wait()
        await self._lock.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self._lock.release()


async def test_concurrent_changes_reach_a_peer_worker_in_the_order_they_applied(nursery):
    # Two deploy scripts at once: one registers a target, the other deregisters it. Worker 0
    # applies them in one order; worker 1 must end up agreeing with it (and with
    # targets.json), however long the first forward takes to reach it.
    sibling = Admin(make_config("10.0.0.1"))
    await sibling.start(nursery)
    first_forward_out = trio.Event()
    # Set once the second change has been forwarded, or waits for its turn behind the first.
    second_change_moved = trio.Event()

    async def peers(path: str, body: bytes, authorization: str | None) -> dict:
        if not first_forward_out.is_set():
            first_forward_out.set()
            await second_change_moved.wait()  # the first forward is slow (a busy sibling)
        else:
            second_change_moved.set()
        return await forward([(1, sibling.address)], path, body, authorization)

    primary = Admin(make_config("10.0.0.1"), peers=peers)
    primary.api.lock = _WatchedLock(primary.api.lock, second_change_moved.set)
    await primary.start(nursery)
    body = {"target_group": "web", "targets": [{"host": "10.0.0.3"}]}
    replies: list[tuple[int, dict]] = []

    async def call(path: str) -> None:
        replies.append(await primary.call("POST", path, body))

    async with trio.open_nursery() as scripts:
        scripts.start_soon(call, "/targets/register")
        await first_forward_out.wait()
        scripts.start_soon(call, "/targets/deregister")
    assert [status for status, _ in replies] == [200, 200]
    assert all(reply["workers"] == {"1": "ok"} for _, reply in replies)
    # Worker 0 registered, then deregistered: the target drains there, and on worker 1 too.
    assert "10.0.0.3:8080" not in primary.runtime.current.groups["web"].by_id
    assert "10.0.0.3:8080" not in sibling.runtime.current.groups["web"].by_id
    assert primary.overrides.dump() == sibling.overrides.dump()
    primary.frame.stop(0)
    sibling.frame.stop(0)


async def test_through_the_daemon_a_registered_target_takes_traffic_and_survives_reload(
    nursery, tmp_path
):
    first, second = StubTarget(), StubTarget()
    first.body, second.body = b"first", b"second"
    await first.start(nursery)
    await second.start(nursery)
    group = TargetGroup(
        name="web",
        targets=(Target(host="127.0.0.1", port=first.port),),
        deregistration_delay_seconds=0,
    )
    listener = HttpListener(
        name="front", host="127.0.0.1", port=0, default_action=Forward(target_group="web")
    )
    config = BalancerConfig(
        admin=AdminSettings(port=0),
        state_dir=str(tmp_path),
        listeners=(listener,),
        target_groups=(group,),
    )
    async with running(SPEC, config) as daemon:
        admin, front = address(daemon, "admin"), address(daemon, "front")
        body = {"target_group": "web", "targets": [{"host": "127.0.0.1", "port": second.port}]}
        status, _, reply = await request(
            admin, "POST", "/targets/register", body=json.dumps(body).encode()
        )
        assert status == 200, reply
        first_id = f"127.0.0.1:{first.port}"
        drop_first = {"target_group": "web", "targets": [{"host": "127.0.0.1", "port": first.port}]}
        status, _, reply = await request(
            admin, "POST", "/targets/deregister", body=json.dumps(drop_first).encode()
        )
        assert status == 200, reply
        assert daemon.app.runtime.live["web"].health.get(first_id) is None  # delay 0: gone
        answers = {(await request(front, target="/"))[2] for _ in range(6)}
        assert answers == {b"second"}
        # A reload of the same file keeps the API's changes.
        await daemon.app.reload(config)
        answers = {(await request(front, target="/"))[2] for _ in range(6)}
        assert answers == {b"second"}
        status, _, reply = await request(admin, target="/targets")
        (described,) = json.loads(reply)["target_groups"][0]["targets"]
        assert described["source"] == "api"
        assert described["port"] == second.port
    first.stop()
    second.stop()


# --- the state file: API changes across restarts -------------------------------------------


def test_the_state_file_round_trips_the_overrides(tmp_path):
    config = make_config("10.0.0.1", "10.0.0.2")
    web = config.target_groups[0]
    overrides = Overrides()
    overrides.register(web, [Target(host="10.0.0.3", weight=5, zone="b")])
    overrides.deregister(web, ["10.0.0.1:8080"])
    state = StateFile(tmp_path / "state")
    assert state.load() == SavedOverrides()  # no file yet: nothing saved
    state.save(overrides.dump())
    assert sorted(p.name for p in state.directory.iterdir()) == ["targets.json"]  # no temp
    assert state.path.stat().st_mode & 0o777 == 0o600
    restored = Overrides.restore(state.load(), config)
    assert restored.endpoints(web) == overrides.endpoints(web)
    assert [e.target_id for e in restored.endpoints(web)] == ["10.0.0.2:8080", "10.0.0.3:8080"]
    assert restored.source("web", "10.0.0.3:8080") == "api"
    # Loaded under a file that has changed since: what it makes moot is dropped (10.0.0.1 is
    # no longer listed), what it does not stays (the API's registration of 10.0.0.3).
    later = make_config("10.0.0.2")
    moot = Overrides.restore(state.load(), later)
    kept = GroupOverrides(registered=(Target(host="10.0.0.3", weight=5, zone="b"),))
    assert moot.dump() == SavedOverrides(target_groups={"web": kept})
    # A file that lists 10.0.0.3 takes it over, whatever weight the API gave it.
    assert Overrides.restore(state.load(), make_config("10.0.0.3")).dump() == SavedOverrides()
    assert Overrides.restore(state.load(), BalancerConfig()).dump() == SavedOverrides()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b'{"version": 1, "target_groups": {"web": {"registered": [{"host": ', "corrupt"),
        (b"", "corrupt"),
        (b'{"version": 2}', "corrupt"),
        (b'{"version": 1, "target_groups": {"web": {"registered": [{"host": "a b"}]}}}', "corrupt"),
    ],
)
def test_a_corrupt_state_file_is_refused_with_its_path_and_reason(tmp_path, content, reason):
    state = StateFile(tmp_path)
    state.path.write_bytes(content)
    with pytest.raises(ConfigError) as refused:
        state.load()
    assert refused.value.path == str(state.path)
    assert reason in refused.value.reason
    assert "remove it" in refused.value.reason


def test_a_fifo_in_place_of_the_state_file_is_refused_at_once(tmp_path):
    """It hung the start, with no log line and no READY=1, until systemd's timeout."""
    state = StateFile(tmp_path)
    os.mkfifo(state.path)
    with pytest.raises(ConfigError) as refused:
        state.load()
    assert refused.value.path == str(state.path)
    assert refused.value.reason.startswith("cannot read the state file: ")


async def test_a_change_that_cannot_be_saved_is_refused_and_not_applied(nursery, tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    admin = Admin(make_config("10.0.0.1"), state=StateFile(blocker))
    await admin.start(nursery)
    body = {"target_group": "web", "targets": [{"host": "10.0.0.3"}]}
    status, reply = await admin.call("POST", "/targets/register", body)
    assert (status, reply["error"]) == (500, "StateNotSaved")
    assert str(blocker) in reply["message"]
    assert list(await admin.targets()) == ["10.0.0.1:8080"]
    # Saved: the file holds the change before the reply.
    saved = StateFile(tmp_path / "ok")
    working = Admin(make_config("10.0.0.1"), state=saved)
    await working.start(nursery)
    assert (await working.call("POST", "/targets/register", body))[0] == 200
    assert [t.host for t in saved.load().target_groups["web"].registered] == ["10.0.0.3"]
    admin.frame.stop(0)
    working.frame.stop(0)


def _restart_config(path, state_dir, target_port: int) -> None:
    targets = f'{{ host = "127.0.0.1", port = {target_port} }}, {{ host = "10.0.0.1", port = 80 }}'
    _web_config(path, state_dir, targets)


def _web_config(path, state_dir, targets: str) -> None:
    """One listener forwarding to group ``web`` (port 8080, no health checks) of ``targets``."""
    path.write_text(f"""
state_dir = "{state_dir}"
[admin]
port = 0
[[listeners]]
name = "front"
protocol = "http"
host = "127.0.0.1"
port = 0
default_action = {{ type = "forward", target_group = "web" }}

[[target_groups]]
name = "web"
port = 8080
deregistration_delay_seconds = 0
health_check = {{ enabled = false }}
targets = [{targets}]
""")


async def _described(daemon) -> dict[str, str]:
    await daemon.wait_log("event=daemon.ready")
    _, _, reply = await request(daemon.addresses["admin"], target="/targets?target_group=web")
    return {t["id"]: t["source"] for t in json.loads(reply)["target_groups"][0]["targets"]}


@pytest.mark.slow
async def test_registrations_made_through_the_api_survive_a_restart(nursery, tmp_path):
    target = StubTarget()
    target.body = b"kept"
    await target.start(nursery)
    config = tmp_path / "balancer.toml"
    _restart_config(config, tmp_path / "state", target.port)
    async with daemon_process("balancer", config, tmp_path) as daemon:
        await daemon.wait_log("event=daemon.ready")
        admin = daemon.addresses["admin"]
        # The CLI builds the app before trio runs; its targets' times are on trio's clock.
        _, _, reply = await request(admin, target="/targets?target_group=web")
        for described in json.loads(reply)["target_groups"][0]["targets"]:
            assert 0 <= described["seconds_in_state"] < 30
        changes = [
            ("register", {"host": "10.0.0.7", "port": 8080}),
            ("deregister", {"host": "10.0.0.1", "port": 80}),
        ]
        for action, target_body in changes:
            body = json.dumps({"target_group": "web", "targets": [target_body]}).encode()
            status, _, reply = await request(admin, "POST", f"/targets/{action}", body=body)
            assert status == 200, reply
        before = await _described(daemon)
        daemon.signal(signal.SIGTERM)
    assert daemon.process.returncode == 0
    (tmp_path / "notify.sock").unlink()
    async with daemon_process("balancer", config, tmp_path) as restarted:
        after = await _described(restarted)
        # The deregistered target stays out of rotation; the registered one is back.
        assert after == before
        assert after == {f"127.0.0.1:{target.port}": "config", "10.0.0.7:8080": "api"}
        restarted.signal(signal.SIGTERM)
    target.stop()


async def test_a_corrupt_state_file_stops_the_start_with_a_clear_message(tmp_path):
    config = tmp_path / "balancer.toml"
    _restart_config(config, tmp_path, 9)
    (tmp_path / "targets.json").write_text('{"version": 1, "target_gr')
    async with daemon_process("balancer", config, tmp_path) as daemon:
        with trio.fail_after(30):
            await daemon.process.wait()
        line = await daemon.wait_log("targets.json")
    assert daemon.process.returncode == 1  # EXIT_CONFIG, as for a bad configuration file
    assert f"{tmp_path / 'targets.json'}: corrupt state file" in line


# --- target ids: one per target, whatever the spelling or the group's port ------------------


def group_config(port: int, *, delay: int = 0) -> BalancerConfig:
    group = TargetGroup(
        name="web", port=port, deregistration_delay_seconds=delay, health_check=HealthCheck()
    )
    listener = HttpListener(name="front", port=0, default_action=Forward(target_group="web"))
    return BalancerConfig(listeners=(listener,), target_groups=(group,))


async def reload_into(admin: Admin, config: BalancerConfig) -> None:
    """What BalancerApp.reload does with the API's changes."""
    async with admin.api.lock:
        admin.overrides.prune(config)
        admin.runtime.install(admin.overrides.apply(admin.runtime.compile(config)), 1.0)


async def test_a_target_registered_without_a_port_follows_the_groups_port(nursery):
    admin = Admin(group_config(8080))
    await admin.start(nursery)
    portless = {"target_group": "web", "targets": [{"host": "10.0.0.5"}]}
    assert (await admin.call("POST", "/targets/register", portless))[0] == 200
    await reload_into(admin, group_config(9090))
    listed = await admin.targets()
    assert list(listed) == ["10.0.0.5:9090"]
    assert listed["10.0.0.5:9090"]["source"] == "api"
    assert admin.overrides.source("web", "10.0.0.5:9090") == "api"
    # Registered again under the new port, by number: still one target (the weight given now).
    explicit = {"target_group": "web", "targets": [{"host": "10.0.0.5", "port": 9090, "weight": 3}]}
    assert (await admin.call("POST", "/targets/register", explicit))[0] == 200
    endpoints = admin.runtime.current.groups["web"].endpoints
    assert [(e.target_id, e.weight) for e in endpoints] == [("10.0.0.5:9090", 3)]
    # Deregistered without a port, as it was registered: it leaves, and stays out.
    status, reply = await admin.call("POST", "/targets/deregister", portless)
    assert status == 200, reply
    assert await admin.targets() == {}
    assert admin.overrides.dump() == SavedOverrides()
    await reload_into(admin, group_config(8080))
    assert await admin.targets() == {}
    admin.frame.stop(0)


async def test_a_target_written_another_way_is_the_same_target(nursery):
    admin = Admin(make_config("::1", "db.internal", delay=0))
    await admin.start(nursery)
    same = [{"host": "0:0:0:0:0:0:0:1", "weight": 7}, {"host": "DB.Internal"}]
    status, reply = await admin.call(
        "POST", "/targets/register", {"target_group": "web", "targets": same}
    )
    assert status == 200, reply
    assert sorted(t["id"] for t in reply["targets"]) == ["[::1]:8080", "db.internal:8080"]
    listed = await admin.targets()
    assert list(listed) == ["[::1]:8080", "db.internal:8080"]  # not listed twice
    # The file's target, the file's weight.
    assert (listed["[::1]:8080"]["weight"], listed["[::1]:8080"]["host"]) == (1, "::1")
    gone = [{"host": "0000::0001", "port": 8080}, {"host": "DB.INTERNAL"}]
    status, reply = await admin.call(
        "POST", "/targets/deregister", {"target_group": "web", "targets": gone}
    )
    assert status == 200, reply
    assert await admin.targets() == {}
    admin.frame.stop(0)


@pytest.mark.parametrize(
    "host", ["fe80::1%x 200 forged", "fe80::1%eth0\n", "fe80::1%aaaaaaaaaaaaaaaa", 'fe80::1%"']
)
async def test_a_zone_id_that_names_no_interface_is_a_validation_error(admin, host):
    body = {"target_group": "web", "targets": [{"host": host}]}
    status, reply = await admin.call("POST", "/targets/register", body)
    assert (status, reply["error"]) == (400, "ValidationError")
    assert "zone id" in reply["message"]
    assert list(await admin.targets()) == ["10.0.0.1:8080", "10.0.0.2:8080"]
    # An interface name or index is a zone id.
    body = {"target_group": "web", "targets": [{"host": "fe80::1%eth0"}, {"host": "fe80::2%3"}]}
    assert (await admin.call("POST", "/targets/register", body))[0] == 200
    assert {"[fe80::1%eth0]:8080", "[fe80::2%3]:8080"} <= set(await admin.targets())


async def test_a_zone_id_the_resolver_cannot_read_is_a_validation_error(admin):
    # "::1%lo" was registered and failed every check in getaddrinfo ("Name or service not
    # known"): an interface name is a zone on link-local addresses only (the IPv6 hunt).
    body = {"target_group": "web", "targets": [{"host": "::1%lo", "port": 8080}]}
    status, reply = await admin.call("POST", "/targets/register", body)
    assert (status, reply["error"]) == (400, "ValidationError")
    assert "an interface name is a zone id only on a link-local address" in reply["message"]
    body = {"target_group": "web", "targets": [{"host": "::1%1", "port": 8080}]}
    assert (await admin.call("POST", "/targets/register", body))[0] == 200


def test_a_state_file_written_before_ids_were_normalised_still_applies(tmp_path):
    config = make_config("::1", "10.0.0.1")
    web = config.target_groups[0]
    state = StateFile(tmp_path)
    state.path.write_text(
        '{"version": 1, "target_groups": {"web": {'
        '"registered": [{"host": "0:0::2", "weight": 4}, {"host": "Cache.Internal"}],'
        '"deregistered": ["[0:0:0:0:0:0:0:1]:8080", "not an id"]}}}'
    )
    restored = Overrides.restore(state.load(), config)
    assert [(e.target_id, e.weight) for e in restored.endpoints(web)] == [
        ("10.0.0.1:8080", 1),
        ("[::2]:8080", 4),
        ("cache.internal:8080", 1),
    ]
    assert restored.source("web", "cache.internal:8080") == "api"


# --- the per-group quota across the file and the API ------------------------------------------


def quota_config(tmp_path, count: int) -> Path:
    """A config whose group ``web`` lists ``count`` targets, state kept under ``tmp_path``."""
    targets = ", ".join(f'{{ host = "10.1.{n // 250}.{n % 250 + 1}" }}' for n in range(count))
    path = tmp_path / "balancer.toml"
    _web_config(path, tmp_path / "state", targets)
    return path


def test_the_quota_counts_the_file_and_the_api_together():
    config = make_config(*(f"10.2.{n // 250}.{n % 250 + 1}" for n in range(999)))
    web = config.target_groups[0]
    overrides = Overrides()
    overrides.register(web, [Target(host="10.9.0.1")])
    overrides.check_totals(config, "b.toml", None)  # 1,000: the quota itself
    overrides.register(
        web, [Target(host="10.2.0.1")]
    )  # as the file lists it: the file's, still 1,000
    overrides.check_totals(config, "b.toml", None)
    overrides.register(web, [Target(host="10.9.0.2")])
    with pytest.raises(ConfigError) as refused:
        overrides.check_totals(config, "b.toml", Path("/s/targets.json"))
    assert refused.value.path == "b.toml"
    assert "target group 'web' would have 1001 targets, above the 1000" in refused.value.reason
    assert "2 of them were registered through the admin API (kept in /s/targets.json)" in (
        refused.value.reason
    )
    assert refused.value.reason.endswith("- at `$.target_groups[0]`")
    overrides.deregister(web, ["10.2.0.2:8080"])  # a file target out of rotation: 1,000 again
    overrides.check_totals(config, "b.toml", None)


async def test_a_reload_past_the_quota_with_api_targets_is_refused(tmp_path):
    path = quota_config(tmp_path, 999)
    async with running(SPEC, load(path, BalancerConfig), config_path=path, level="warning") as d:
        body = json.dumps({"target_group": "web", "targets": [{"host": "10.9.0.1"}]}).encode()
        status, _, reply = await request(
            address(d, "admin"), "POST", "/targets/register", body=body
        )
        assert status == 200, reply
        generation = d.app.runtime.current.generation
        quota_config(tmp_path, 1000)  # the file alone is within the quota, not with the API's
        refused = await d.reload()
        assert refused is not None
        assert f"{path}: target group 'web' would have 1001 targets" in refused
        assert d.app.runtime.current.generation == generation
        assert len(d.app.runtime.current.groups["web"].endpoints) == 1000
        saved = json.loads((tmp_path / "state" / "targets.json").read_text())
        assert [t["host"] for t in saved["target_groups"]["web"]["registered"]] == ["10.9.0.1"]


async def test_a_state_file_past_the_quota_stops_the_start_naming_both_files(tmp_path):
    path = quota_config(tmp_path, 1000)
    state = tmp_path / "state"
    state.mkdir()
    saved = {"version": 1, "target_groups": {"web": {"registered": [{"host": "10.9.0.1"}]}}}
    (state / "targets.json").write_text(json.dumps(saved))  # edited while it was down
    async with daemon_process("balancer", path, tmp_path) as daemon:
        with trio.fail_after(30):
            await daemon.process.wait()
        line = await daemon.wait_log("would have")
    assert daemon.process.returncode == 1  # EXIT_CONFIG
    assert f"{path}: target group 'web' would have 1001 targets" in line
    assert f"(kept in {state / 'targets.json'})" in line
