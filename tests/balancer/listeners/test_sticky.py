"""Stickiness through the balancer: AWSALB, app cookies, AWSALBTG; replaced targets."""

from __future__ import annotations

import json
import random
import time
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from balancer.config import (
    BalancerConfig,
    Conditions,
    Forward,
    GroupStickiness,
    HealthCheck,
    HttpListener,
    Rule,
    Stickiness,
    StickinessKeys,
    Target,
    TargetGroup,
    WeightedTargetGroup,
)
from balancer.health import TargetState
from balancer.listeners.sticky import plan, response_cookies
from balancer.runtime import Runtime
from balancer.stickiness import (
    APP_COOKIE,
    GROUP_COOKIE,
    GROUP_CORS_COOKIE,
    LB_COOKIE,
    LB_CORS_COOKIE,
    CookieSealer,
)
from monitoring.lifecycle import Daemon
from tests.support.balancer_http import Client, balancer, config, front, group, listener
from tests.support.check_targets import until_health
from tests.support.targets import Handler, Reply, Seen, TargetServer, echo, running_targets

KEY = b"0123456789abcdef0123456789abcdef"
NOW = 1_800_000_000.0


def cookies_of(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    found = {}
    for name, value in headers:
        if name == b"set-cookie":
            cookie, _, _ = value.decode().partition(";")
            key, _, val = cookie.partition("=")
            found[key] = val
    return found


def runtime(
    stickiness: Stickiness, *, weighted: bool = False, group_duration: int = 3600
) -> Runtime:
    groups = [
        TargetGroup(
            name=name,
            targets=(Target(host="10.0.0.1"), Target(host="10.0.0.2")),
            health_check=HealthCheck(enabled=False),
            stickiness=stickiness,
        )
        for name in ("blue", "green")
    ]
    action = (
        Forward(
            target_groups=(WeightedTargetGroup(name="blue"), WeightedTargetGroup(name="green")),
            stickiness=GroupStickiness(enabled=True, duration_seconds=group_duration),
        )
        if weighted
        else Forward(target_group="blue")
    )
    cfg = BalancerConfig(
        listeners=(HttpListener(name="f", port=0, default_action=action),),
        target_groups=tuple(groups),
        stickiness=StickinessKeys(key_files=("/k",)),
    )
    return Runtime(cfg, keys=[KEY], now=0.0, seed=1)


def test_without_stickiness_no_cookie_is_read_or_set():
    rt = runtime(Stickiness())
    action = rt.current.config.listeners[0].default_action
    assert isinstance(action, Forward)
    result = plan(rt.current, action, [(b"cookie", b"AWSALB=garbage")], rand=rt.rand, wall=NOW)
    assert (result.group, result.sticky_target) == ("blue", None)
    group_config = rt.current.groups["blue"].config
    assert response_cookies(result, rt.current, group_config, "10.0.0.1:80", [], wall=NOW) == []


def test_an_lb_cookie_names_the_target_and_is_reissued():
    rt = runtime(Stickiness(enabled=True))
    action = rt.current.config.listeners[0].default_action
    assert isinstance(action, Forward)
    first = plan(rt.current, action, [], rand=rt.rand, wall=NOW)
    group_config = rt.current.groups["blue"].config
    cookies = cookies_of(
        response_cookies(first, rt.current, group_config, "10.0.0.2:80", [], wall=NOW)
    )
    assert set(cookies) == {"AWSALB", "AWSALBCORS"}
    again = plan(
        rt.current,
        action,
        [(b"cookie", f"a=b; {LB_COOKIE}={cookies[LB_COOKIE]}".encode())],
        rand=rt.rand,
        wall=NOW + 10,
    )
    assert again.sticky_target == "10.0.0.2:80"
    expired = plan(
        rt.current,
        action,
        [(b"cookie", f"{LB_COOKIE}={cookies[LB_COOKIE]}".encode())],
        rand=rt.rand,
        wall=NOW + 86400 + 1,
    )
    assert expired.sticky_target is None


def test_an_app_cookie_is_mapped_to_its_target():
    rt = runtime(Stickiness(enabled=True, type="app_cookie", cookie_name="SESSION"))
    action = rt.current.config.listeners[0].default_action
    assert isinstance(action, Forward)
    first = plan(rt.current, action, [], rand=rt.rand, wall=NOW)
    group_config = rt.current.groups["blue"].config
    set_by_target = [(b"set-cookie", b"SESSION=abc; Path=/")]
    cookies = cookies_of(
        response_cookies(first, rt.current, group_config, "10.0.0.1:80", set_by_target, wall=NOW)
    )
    assert set(cookies) == {APP_COOKIE}
    header = f"SESSION=abc; {APP_COOKIE}={cookies[APP_COOKIE]}".encode()
    again = plan(rt.current, action, [(b"cookie", header)], rand=rt.rand, wall=NOW)
    assert again.sticky_target == "10.0.0.1:80"
    # A new application session (a different SESSION value) is routed afresh.
    header = f"SESSION=new; {APP_COOKIE}={cookies[APP_COOKIE]}".encode()
    assert (
        plan(rt.current, action, [(b"cookie", header)], rand=rt.rand, wall=NOW).sticky_target
        is None
    )


def test_an_app_cookie_renewed_by_a_deletion_then_a_new_value_follows_the_new_value():
    # Frameworks that renew a session send "SESSION=; Max-Age=0" then "SESSION=new": the
    # browser keeps the last (RFC 6265 5.3), so the mapping must too.
    rt = runtime(Stickiness(enabled=True, type="app_cookie", cookie_name="SESSION"))
    action = rt.current.config.listeners[0].default_action
    assert isinstance(action, Forward)
    first = plan(rt.current, action, [], rand=rt.rand, wall=NOW)
    group_config = rt.current.groups["blue"].config
    renewed = [
        (b"set-cookie", b"SESSION=; Max-Age=0; Path=/"),
        (b"set-cookie", b"SESSION=new; Path=/"),
    ]
    cookies = cookies_of(
        response_cookies(first, rt.current, group_config, "10.0.0.1:80", renewed, wall=NOW)
    )
    header = f"SESSION=new; {APP_COOKIE}={cookies[APP_COOKIE]}".encode()
    again = plan(rt.current, action, [(b"cookie", header)], rand=rt.rand, wall=NOW)
    assert again.sticky_target == "10.0.0.1:80"


def test_a_group_cookie_keeps_a_weighted_forward_on_its_group():
    rt = runtime(Stickiness(), weighted=True)
    action = rt.current.config.listeners[0].default_action
    assert isinstance(action, Forward)
    sealed = CookieSealer([KEY]).seal_group("green", issued_at=NOW)
    for _ in range(10):
        result = plan(
            rt.current,
            action,
            [(b"cookie", f"{GROUP_COOKIE}={sealed}".encode())],
            rand=rt.rand,
            wall=NOW,
        )
        assert result.group == "green"
    group_config = rt.current.groups["green"].config
    assert set(
        cookies_of(response_cookies(result, rt.current, group_config, "x", [], wall=NOW))
    ) == {
        "AWSALBTG",
        "AWSALBTGCORS",
    }


def test_awsalbcors_takes_precedence_and_the_other_cookie_is_the_fallback():
    # AWS: "If the Application Load Balancer receives both an AWSALBCORS and an AWSALB
    # duration-based stickiness cookie, the value in AWSALBCORS will take precedence."
    rt = runtime(Stickiness(enabled=True))
    action = rt.current.config.listeners[0].default_action
    assert isinstance(action, Forward)
    sealer = CookieSealer([KEY])
    one = sealer.seal_target("blue", "10.0.0.1:80", issued_at=NOW)
    two = sealer.seal_target("blue", "10.0.0.2:80", issued_at=NOW)
    elsewhere = sealer.seal_target("green", "10.0.0.1:80", issued_at=NOW)

    def sticky_target(cookie: str) -> str | None:
        headers = [(b"cookie", cookie.encode())]
        return plan(rt.current, action, headers, rand=rt.rand, wall=NOW).sticky_target

    assert sticky_target(f"{LB_COOKIE}={one}; {LB_CORS_COOKIE}={two}") == "10.0.0.2:80"
    assert sticky_target(f"{LB_CORS_COOKIE}={two}; {LB_COOKIE}={one}") == "10.0.0.2:80"
    assert sticky_target(f"{LB_COOKIE}=garbage; {LB_CORS_COOKIE}={two}") == "10.0.0.2:80"
    # The CORS one does not open, or names another group's target: the AWSALB one decides.
    assert sticky_target(f"{LB_COOKIE}={one}; {LB_CORS_COOKIE}=garbage") == "10.0.0.1:80"
    assert sticky_target(f"{LB_COOKIE}={one}; {LB_CORS_COOKIE}={elsewhere}") == "10.0.0.1:80"


def test_awsalbtgcors_takes_precedence_over_awsalbtg():
    # By analogy with AWSALBCORS (AWS documents the precedence for AWSALB only).
    rt = runtime(Stickiness(), weighted=True)
    action = rt.current.config.listeners[0].default_action
    assert isinstance(action, Forward)
    sealer = CookieSealer([KEY])
    blue = sealer.seal_group("blue", issued_at=NOW)
    green = sealer.seal_group("green", issued_at=NOW)
    gone = sealer.seal_group("retired", issued_at=NOW)  # a group no longer in the action
    for cookie, group_name in [
        (f"{GROUP_COOKIE}={blue}; {GROUP_CORS_COOKIE}={green}", "green"),
        (f"{GROUP_COOKIE}={green}; {GROUP_CORS_COOKIE}={blue}", "blue"),
        (f"{GROUP_COOKIE}=garbage; {GROUP_CORS_COOKIE}={green}", "green"),
        (f"{GROUP_COOKIE}={green}; {GROUP_CORS_COOKIE}=garbage", "green"),
        (f"{GROUP_COOKIE}={green}; {GROUP_CORS_COOKIE}={gone}", "green"),
    ]:
        for seed in range(8):  # whatever the weighted draw would have picked
            headers = [(b"cookie", cookie.encode())]
            result = plan(rt.current, action, headers, rand=random.Random(seed), wall=NOW)
            assert result.group == group_name, cookie


@pytest.mark.parametrize("kind", ["lb_cookie", "app_cookie", "group"])
def test_a_reload_that_shortens_the_duration_applies_to_cookies_already_issued(kind: str):
    # ALB "checks whether the configured duration of stickiness is still valid"; its manual
    # rebalancing sets it to 1 second. The duration used to be sealed into the cookie, so
    # cookies issued before the reload kept the old one (found by a report-only hunt).
    def stickiness(duration: int) -> Stickiness:
        if kind == "app_cookie":
            return Stickiness(
                enabled=True, type="app_cookie", cookie_name="SESSION", duration_seconds=duration
            )
        return Stickiness(enabled=kind == "lb_cookie", duration_seconds=duration)

    def runtime_with(duration: int) -> Runtime:
        return runtime(stickiness(duration), weighted=kind == "group", group_duration=duration)

    def sticks(rt: Runtime, cookie: str, wall: float) -> bool:
        action = rt.current.config.listeners[0].default_action
        assert isinstance(action, Forward)
        headers = [(b"cookie", cookie.encode())]
        picks = {
            plan(rt.current, action, headers, rand=random.Random(seed), wall=wall)
            for seed in range(16)
        }
        if kind == "group":
            return {p.group for p in picks} == {owner}
        return {p.sticky_target for p in picks} == {owner}

    before = runtime_with(86400)
    action = before.current.config.listeners[0].default_action
    assert isinstance(action, Forward)
    first = plan(before.current, action, [], rand=random.Random(1), wall=NOW)
    owner = first.group if kind == "group" else "10.0.0.2:80"
    group_config = before.current.groups[first.group].config
    set_by_target = [(b"set-cookie", b"SESSION=abc; Path=/")] if kind == "app_cookie" else []
    issued = cookies_of(
        response_cookies(
            first, before.current, group_config, "10.0.0.2:80", set_by_target, wall=NOW
        )
    )
    cookie = "; ".join(f"{k}={v}" for k, v in {"SESSION": "abc", **issued}.items())
    assert sticks(before, cookie, NOW + 2.5)
    after = runtime_with(1)  # the reload: same key, a 1 s duration
    assert not sticks(after, cookie, NOW + 2.5)
    assert sticks(after, cookie, NOW + 0.5)
    assert sticks(runtime_with(5), cookie, NOW + 2.5)  # and one that lengthens it


@given(st.binary(max_size=64), st.integers(0, 2**32))
def test_forged_cookies_never_pick_a_target(garbage, seed):
    rt = runtime(Stickiness(enabled=True))
    action = rt.current.config.listeners[0].default_action
    assert isinstance(action, Forward)
    value = garbage.hex()
    headers = [(b"cookie", f"{LB_COOKIE}={value}; {GROUP_COOKIE}={value}".encode())]
    result = plan(rt.current, action, headers, rand=random.Random(seed), wall=NOW)
    assert result.sticky_target is None


# Through the balancer -----------------------------------------------------------------------


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "sticky.key"
    path.write_bytes(KEY)
    return str(path)


async def test_lb_cookie_stickiness_across_requests_and_replacement(key_file):
    sticky = Stickiness(enabled=True)
    async with running_targets(TargetServer("a"), TargetServer("b")) as (a, b):
        cfg = config([listener()], [group("web", a, b, stickiness=sticky)], key_file=key_file)
        async with balancer(cfg) as daemon, Client.connect(front(daemon)) as client:
            _, headers, _ = await client.request()
            owner = headers["x-target"]
            cookie = client.jar()
            assert cookie.startswith("AWSALB=")
            assert "; AWSALBCORS=" in cookie
            for _ in range(6):
                _, headers, _ = await client.request(headers=[("cookie", cookie)])
                assert headers["x-target"] == owner
            # The sticky target leaves the group: the next request goes elsewhere and the
            # cookie is rewritten to name the new target.
            keep = b if owner == "a" else a
            new = config([listener()], [group("web", keep, stickiness=sticky)], key_file=key_file)
            await daemon.app.reload(new)
            _, headers, _ = await client.request(headers=[("cookie", cookie)])
            assert headers["x-target"] == keep.name
            assert client.jar() != cookie


async def test_awsalbcors_decides_over_awsalb_through_the_balancer(key_file):
    sticky = Stickiness(enabled=True)
    async with running_targets(TargetServer("a"), TargetServer("b")) as (a, b):
        cfg = config([listener()], [group("web", a, b, stickiness=sticky)], key_file=key_file)
        async with balancer(cfg) as daemon, Client.connect(front(daemon)) as client:
            sealed: dict[str, str] = {}
            for _ in range(2):  # round robin: a cookie for each target
                _, headers, _ = await client.request()
                cookies = dict(c.partition(";")[0].partition("=")[::2] for c in client.set_cookies)
                sealed[headers["x-target"]] = cookies[LB_CORS_COOKIE]
            assert set(sealed) == {"a", "b"}
            for cookie in (
                f"{LB_COOKIE}={sealed['a']}; {LB_CORS_COOKIE}={sealed['b']}",
                f"{LB_COOKIE}=garbage; {LB_CORS_COOKIE}={sealed['b']}",
            ):
                for _ in range(4):
                    _, headers, _ = await client.request(headers=[("cookie", cookie)])
                    assert headers["x-target"] == "b", cookie


async def test_app_cookie_stickiness_through_the_balancer(key_file):
    async def session(seen: Seen, server: TargetServer) -> Reply | str:
        reply = await echo(seen, server)
        assert isinstance(reply, Reply)
        if not any("SESSION=" in v for v in seen.all("cookie")):
            reply.headers.append(("set-cookie", f"SESSION={server.name}-1; Path=/"))
        return reply

    sticky = Stickiness(enabled=True, type="app_cookie", cookie_name="SESSION")
    async with running_targets(TargetServer("a", session), TargetServer("b", session)) as (a, b):
        cfg = config([listener()], [group("web", a, b, stickiness=sticky)], key_file=key_file)
        async with balancer(cfg) as daemon, Client.connect(front(daemon)) as client:
            _, headers, _ = await client.request()
            owner = headers["x-target"]
            jar = client.jar()
            assert f"SESSION={owner}-1" in jar
            assert f"{APP_COOKIE}=" in jar
            for _ in range(5):
                _, headers, _ = await client.request(headers=[("cookie", jar)])
                assert headers["x-target"] == owner


def setting(cookie: str) -> Handler:
    """A target that starts an application session (cookie ``cookie``) when none is sent."""

    async def session(seen: Seen, server: TargetServer) -> Reply | str:
        reply = await echo(seen, server)
        assert isinstance(reply, Reply)
        if not any(f"{cookie}=" in v for v in seen.all("cookie")):
            reply.headers.append(("set-cookie", f"{cookie}={server.name}-1; Path=/"))
        return reply

    return session


class Browser:
    """A client with a cookie jar, as a browser keeps one (a later Set-Cookie replaces)."""

    def __init__(self, client: Client, *, user_agent: str = "test") -> None:
        self.client = client
        self.user_agent = user_agent
        self.jar: dict[str, str] = {}
        self.set_cookies: list[str] = []

    async def get(self, path: str = "/") -> tuple[str, Any]:
        headers = [("user-agent", self.user_agent)]
        if self.jar:
            headers.append(("cookie", "; ".join(f"{k}={v}" for k, v in self.jar.items())))
        status, response, body = await self.client.request(target=path, headers=headers)
        assert status == 200
        self.set_cookies = list(self.client.set_cookies)
        for cookie in self.set_cookies:
            name, _, value = cookie.partition(";")[0].partition("=")
            self.jar[name] = value
        return response["x-target"], json.loads(body)


@pytest.mark.parametrize("kind", ["lb_cookie", "app_cookie"])
async def test_a_reload_to_a_shorter_duration_rebalances_sessions_already_made(kind, key_file):
    """ALB's manual rebalancing: a duration set to 1 s ends the stickiness of cookies issued
    under the old one, also for a client that replays them. They kept the duration they were
    sealed with, a day here (found by a report-only hunt)."""

    def web(duration: int, *servers: TargetServer) -> TargetGroup:
        sticky = (
            Stickiness(enabled=True, duration_seconds=duration)
            if kind == "lb_cookie"
            else Stickiness(
                enabled=True, type="app_cookie", cookie_name="SESSION", duration_seconds=duration
            )
        )
        return group("web", *servers, stickiness=sticky)

    servers = [TargetServer(name, setting("SESSION")) for name in ("a", "b")]
    async with running_targets(*servers) as (a, b):
        cfg = config([listener()], [web(86400, a, b)], key_file=key_file)
        async with balancer(cfg) as daemon, Client.connect(front(daemon)) as client:
            browser = Browser(client)
            owner, _ = await browser.get()
            assert {(await browser.get())[0] for _ in range(3)} == {owner}
            replayed = dict(browser.jar)
            await daemon.app.reload(config([listener()], [web(1, a, b)], key_file=key_file))
            await trio.sleep(1.2)  # the cookies are now older than the duration
            seen = set()
            for _ in range(4):
                browser.jar = dict(replayed)
                seen.add((await browser.get())[0])
            assert seen == {"a", "b"}


async def test_two_app_cookie_groups_each_keep_their_own_session(key_file):
    # ALB: stickiness information "is captured for each target group that has
    # application-based stickiness enabled"; one group's mapping must not evict another's.
    one = Stickiness(enabled=True, type="app_cookie", cookie_name="SESSION")
    two = Stickiness(enabled=True, type="app_cookie", cookie_name="OTHER")
    rules = [
        Rule(priority=1, conditions=Conditions(path_pattern=("/one/*",)),
             action=Forward(target_group="one")),
        Rule(priority=2, conditions=Conditions(path_pattern=("/two/*",)),
             action=Forward(target_group="two")),
    ]  # fmt: skip
    servers = [TargetServer(n, setting("SESSION")) for n in ("a1", "a2")] + [
        TargetServer(n, setting("OTHER")) for n in ("b1", "b2")
    ]
    async with running_targets(*servers) as (a1, a2, b1, b2):
        groups = [group("one", a1, a2, stickiness=one), group("two", b1, b2, stickiness=two)]
        cfg = config(
            [listener(Forward(target_group="one"), rules=rules)], groups, key_file=key_file
        )
        async with balancer(cfg) as daemon, Client.connect(front(daemon)) as client:
            browser = Browser(client, user_agent="Mozilla/5.0 Chrome/120.0.0.0 Safari/537.36")
            seen_one: set[str] = set()
            seen_two: set[str] = set()
            for i in range(6):
                seen_one.add((await browser.get(f"/one/{i}"))[0])
                seen_two.add((await browser.get(f"/two/{i}"))[0])
            assert len(seen_one) == len(seen_two) == 1
            (app_cookie,) = [c for c in browser.set_cookies if c.startswith(f"{APP_COOKIE}=")]
            assert app_cookie.endswith("; Path=/; SameSite=None; Secure")  # Chromium 80+


async def test_app_cookie_stickiness_holds_across_two_layers_of_balancers(key_file, tmp_path):
    # ALB: "If you are using multiple layers of Application Load Balancers, you can enable
    # sticky sessions across all layers with application-based cookies."
    inner_key = tmp_path / "inner.key"
    inner_key.write_bytes(b"another key of thirty-two bytes!")
    sticky = Stickiness(enabled=True, type="app_cookie", cookie_name="SESSION")
    async with running_targets(
        TargetServer("t1", setting("SESSION")), TargetServer("t2", setting("SESSION"))
    ) as (t1, t2):
        inner_cfg = config(
            [listener(name="in1"), listener(name="in2")],
            [group("web", t1, t2, stickiness=sticky)],
            key_file=str(inner_key),
        )
        async with balancer(inner_cfg) as inner:
            ports = [front(inner, name)[1] for name in ("in1", "in2")]
            layer = msgspec.structs.replace(
                group("web", stickiness=sticky),
                targets=tuple(Target(host="127.0.0.1", port=port) for port in ports),
            )
            outer_cfg = config([listener()], [layer], key_file=key_file)
            async with balancer(outer_cfg) as outer, Client.connect(front(outer)) as client:
                browser = Browser(client)
                paths = set()
                for _ in range(8):
                    target, echoed = await browser.get()
                    headers = dict(echoed["headers"])
                    paths.add((target, headers["x-forwarded-port"]))
                assert len(paths) == 1  # the same inner listener and the same target
                app_cookies = [c for c in browser.set_cookies if c.startswith(f"{APP_COOKIE}=")]
                assert len(app_cookies) == 1  # the layers' entries merged into one cookie
                assert len(browser.jar[APP_COOKIE].split(".")) == 2


async def test_weighted_groups_with_group_stickiness(key_file):
    action = Forward(
        target_groups=(WeightedTargetGroup(name="blue"), WeightedTargetGroup(name="green")),
        stickiness=GroupStickiness(enabled=True),
    )
    async with running_targets(TargetServer("blue"), TargetServer("green")) as (blue, green):
        cfg = config(
            [listener(action)], [group("blue", blue), group("green", green)], key_file=key_file
        )
        async with balancer(cfg) as daemon:
            async with Client.connect(front(daemon)) as client:
                await client.request()
                jar = client.jar()
                assert "AWSALBTG=" in jar
            async with Client.connect(front(daemon)) as client:
                seen = {
                    (await client.request(headers=[("cookie", jar)]))[1]["x-target"]
                    for _ in range(8)
                }
            assert len(seen) == 1


async def test_each_weighted_forward_keeps_its_group_for_a_client_using_both(key_file):
    """A client going back and forth between two rules whose weighted forwards have no group
    in common was drawn afresh at every switch: the one AWSALBTG named the other rule's
    group, so each rule's blue/green choice flipped from request to request. The cookie now
    holds an entry per weighted forward."""

    def weighted(*names: str) -> Forward:
        return Forward(
            target_groups=tuple(WeightedTargetGroup(name=n) for n in names),
            stickiness=GroupStickiness(enabled=True),
        )

    rules = [
        Rule(priority=1, conditions=Conditions(path_pattern=("/api/*",)),
             action=weighted("api-blue", "api-green")),
        Rule(priority=2, conditions=Conditions(path_pattern=("/web/*",)),
             action=weighted("web-blue", "web-green")),
    ]  # fmt: skip
    names = ("api-blue", "api-green", "web-blue", "web-green")
    async with running_targets(*(TargetServer(n) for n in names)) as servers:
        groups = [group(n, server) for n, server in zip(names, servers, strict=True)]
        cfg = config([listener(weighted("web-blue"), rules=rules)], groups, key_file=key_file)
        async with balancer(cfg) as daemon, Client.connect(front(daemon)) as client:
            browser = Browser(client)
            seen_api: set[str] = set()
            seen_web: set[str] = set()
            for i in range(8):
                seen_api.add((await browser.get(f"/api/{i}"))[0])
                seen_web.add((await browser.get(f"/web/{i}"))[0])
            assert len(seen_api) == len(seen_web) == 1
            entries = browser.jar[GROUP_COOKIE].split(".")
            assert len(entries) == 2
            assert browser.jar[GROUP_CORS_COOKIE] == browser.jar[GROUP_COOKIE]
        opened = [
            CookieSealer([KEY]).open_group(e, now=time.time(), duration=3600) for e in entries
        ]
        assert sorted(opened) == sorted(seen_api | seen_web)  # one entry per forward


async def test_lb_cookie_stickiness_holds_on_two_groups_a_client_uses(key_file):
    """A client going back and forth between /api/* and the rest, each forwarded to its own
    group with lb_cookie stickiness, was sent to a new target at every switch: the one
    AWSALB named the other group's target and was overwritten by each response, so neither
    group's stickiness ever held. The cookie now holds an entry per target group."""
    sticky = Stickiness(enabled=True)
    rules = [
        Rule(priority=1, conditions=Conditions(path_pattern=("/api/*",)),
             action=Forward(target_group="api")),
    ]  # fmt: skip
    names = ("api1", "api2", "web1", "web2")
    async with running_targets(*(TargetServer(n) for n in names)) as (a1, a2, w1, w2):
        groups = [group("api", a1, a2, stickiness=sticky), group("web", w1, w2, stickiness=sticky)]
        cfg = config(
            [listener(Forward(target_group="web"), rules=rules)], groups, key_file=key_file
        )
        async with balancer(cfg) as daemon, Client.connect(front(daemon)) as client:
            browser = Browser(client)
            seen_api: set[str] = set()
            seen_web: set[str] = set()
            for i in range(6):
                seen_api.add((await browser.get(f"/api/{i}"))[0])
                seen_web.add((await browser.get(f"/page/{i}"))[0])
            assert len(seen_api) == len(seen_web) == 1
            assert browser.jar[LB_CORS_COOKIE] == browser.jar[LB_COOKIE]
            entries = browser.jar[LB_COOKIE].split(".")
        sealer = CookieSealer([KEY])
        opened = [sealer.open_target(e, now=time.time(), duration=86400) for e in entries]
        assert sorted(t.target_group for t in opened if t is not None) == ["api", "web"]


class RestartableTarget(TargetServer):
    """A test target that can be stopped and started again on the same port."""

    def __init__(self, name: str, handler: Handler) -> None:
        super().__init__(name, handler)
        self._scope: trio.CancelScope | None = None

    async def serve(self, *, task_status: trio.TaskStatus[TargetServer]) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        with trio.CancelScope() as self._scope:
            task_status.started(self)
            await trio.serve_listeners(self._connection, listeners)

    def stop(self) -> None:
        assert self._scope is not None
        self._scope.cancel()


async def wait_state(daemon: Daemon[Any], target: TargetServer, state: TargetState) -> None:
    """Until the target's health record says ``state`` (virtual time, bounded)."""
    runtime = daemon.app.runtime

    def reached() -> bool:
        record = runtime.live["web"].health.get(f"127.0.0.1:{target.port}")
        return record is not None and record.state is state

    await until_health(runtime, reached, within=60)


@pytest.fixture
def lazy_clock():
    # Health checks come every 5 virtual seconds; loopback I/O finishes well within 0.1 s
    # of real time, and only then does the clock jump.
    return trio.testing.MockClock(autojump_threshold=0.1)


async def test_an_app_cookie_session_re_sticks_and_stays_when_the_old_target_returns(
    nursery, key_file, lazy_clock
):
    async def session(seen: Seen, server: TargetServer) -> Reply | str:
        reply = await echo(seen, server)
        assert isinstance(reply, Reply)
        if seen.target != "/health" and not any("SESSION=" in v for v in seen.all("cookie")):
            reply.headers.append(("set-cookie", f"SESSION={server.name}-1; Path=/"))
        return reply

    a, b = RestartableTarget("a", session), RestartableTarget("b", session)
    for target in (a, b):
        await nursery.start(target.serve)
    check = HealthCheck(path="/health", interval_seconds=5, timeout_seconds=2, healthy_threshold=2)
    sticky = Stickiness(enabled=True, type="app_cookie", cookie_name="SESSION")
    web = msgspec.structs.replace(group("web", a, b, stickiness=sticky), health_check=check)
    async with balancer(config([listener()], [web], key_file=key_file)) as daemon:
        for target in (a, b):
            await wait_state(daemon, target, TargetState.HEALTHY)
        jar: dict[str, str] = {}

        async def get(client: Client) -> str:
            cookie = "; ".join(f"{k}={v}" for k, v in jar.items())
            status, headers, _ = await client.request(headers=[("cookie", cookie)] if jar else [])
            assert status == 200
            for set_cookie in client.set_cookies:
                name, _, value = set_cookie.partition(";")[0].partition("=")
                jar[name] = value
            return headers["x-target"]

        async with Client.connect(front(daemon)) as client:
            owner_name = await get(client)
            owner, other = (a, b) if owner_name == "a" else (b, a)
            assert jar["SESSION"] == f"{owner.name}-1"
            assert APP_COOKIE in jar
            assert {await get(client) for _ in range(4)} == {owner.name}

            owner.stop()
            await wait_state(daemon, owner, TargetState.UNHEALTHY)
            mapping = jar[APP_COOKIE]
            assert await get(client) == other.name
            # The session moved: same application cookie, a new mapping to the new target.
            assert jar["SESSION"] == f"{owner.name}-1"
            assert jar[APP_COOKIE] != mapping

            owner.seen.clear()
            await nursery.start(owner.serve)  # the old target comes back on its port
            await wait_state(daemon, owner, TargetState.HEALTHY)
            # Round robin alone would send every other request to the old target.
            assert {await get(client) for _ in range(6)} == {other.name}
            assert {s.target for s in owner.seen} == {"/health"}  # checks only, no session
