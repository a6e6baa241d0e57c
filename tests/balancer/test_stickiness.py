from __future__ import annotations

import base64

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from balancer.stickiness import (
    APP_COOKIE,
    GROUP_COOKIE,
    GROUP_CORS_COOKIE,
    LB_COOKIE,
    LB_CORS_COOKIE,
    MAX_APP_ENTRIES,
    CookieSealer,
    StickyTarget,
    app_entries,
    chromium_80_or_later,
    group_cookies,
    merged_app_value,
    open_sticky,
    read_cookies,
    set_cookie,
    sticky_values,
    target_cookies,
)

KEY = b"k" * 32
OTHER = b"o" * 32
NOW = 1_700_000_000.0
LATER = NOW + 3600


@pytest.fixture
def sealer() -> CookieSealer:
    return CookieSealer([KEY])


def decoded(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def encoded(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# Round trips -----------------------------------------------------------------------------------


def test_target_cookie_round_trip(sealer):
    value = sealer.seal_target("web", "10.0.0.1:80", expires_at=LATER)
    assert sealer.open_target(value, now=NOW) == StickyTarget("web", "10.0.0.1:80")
    assert "10.0.0.1" not in value  # opaque
    assert "web" not in value


def test_group_cookie_round_trip(sealer):
    value = sealer.seal_group("green", expires_at=LATER)
    assert sealer.open_group(value, now=NOW) == "green"


def test_app_cookie_maps_the_app_session_to_a_target(sealer):
    value = sealer.seal_app("web", "[::1]:8080", "session=abc", expires_at=LATER)
    assert sealer.open_app(value, "session=abc", now=NOW) == StickyTarget("web", "[::1]:8080")
    assert sealer.open_app(value, "session=new", now=NOW) is None  # a new app session


def test_values_are_deterministic_and_cookie_safe(sealer):
    value = sealer.seal_target("web", "a:1", expires_at=LATER)
    assert value == sealer.seal_target("web", "a:1", expires_at=LATER)
    assert value != sealer.seal_target("web", "a:1", expires_at=LATER + 1)
    assert set(value) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_expired_cookies_are_refused(sealer):
    value = sealer.seal_target("web", "a:1", expires_at=NOW + 10)
    assert sealer.open_target(value, now=NOW + 9.5) is not None
    assert sealer.open_target(value, now=NOW + 10) is None
    assert sealer.open_group(sealer.seal_group("g", expires_at=NOW), now=NOW) is None


def test_a_cookie_of_one_kind_never_opens_as_another(sealer):
    target = sealer.seal_target("web", "a:1", expires_at=LATER)
    group = sealer.seal_group("web", expires_at=LATER)
    app = sealer.seal_app("web", "a:1", "v", expires_at=LATER)
    assert sealer.open_group(target, now=NOW) is None
    assert sealer.open_target(group, now=NOW) is None
    assert sealer.open_target(app, now=NOW) is None
    assert sealer.open_app(target, "v", now=NOW) is None


# Keys ------------------------------------------------------------------------------------------


def test_rotation_seals_with_the_first_key_and_opens_with_any():
    old = CookieSealer([KEY])
    rotating = CookieSealer([OTHER, KEY])
    before = old.seal_target("web", "a:1", expires_at=LATER)
    after = rotating.seal_target("web", "a:1", expires_at=LATER)
    assert rotating.open_target(before, now=NOW) == StickyTarget("web", "a:1")
    assert old.open_target(after, now=NOW) is None  # not yet rolled out: re-stick
    assert CookieSealer([OTHER]).open_target(before, now=NOW) is None  # old key dropped
    assert after != before


def test_nodes_sharing_a_key_agree():
    value = CookieSealer([KEY]).seal_group("g", expires_at=LATER)
    assert CookieSealer([KEY]).open_group(value, now=NOW) == "g"


@pytest.mark.parametrize("keys", [[], [b"short"], [KEY, b"x" * 15]])
def test_keys_must_be_present_and_long_enough(keys):
    with pytest.raises(ValueError, match="key"):
        CookieSealer(keys)


# Garbage ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["", "x", "====", "!!!!", "é" * 40, "A" * 2000, "AQAAAAAA", encoded(b"\x02" + b"\0" * 60)],
)
def test_garbage_is_refused_quietly(sealer, value):
    assert sealer.open_target(value, now=NOW) is None
    assert sealer.open_group(value, now=NOW) is None
    assert sealer.open_app(value, "v", now=NOW) is None


def test_a_non_canonical_spelling_is_refused(sealer):
    # Standard base64 letters and padding decode to the same bytes; only our spelling opens.
    value = next(
        v for n in range(100) if set(v := sealer.seal_group(f"g{n}", expires_at=LATER)) & {"-", "_"}
    )
    assert sealer.open_group(value, now=NOW) is not None
    assert sealer.open_group(value + "=" * (-len(value) % 4 or 4), now=NOW) is None
    assert sealer.open_group(value.replace("-", "+").replace("_", "/"), now=NOW) is None


# Headers ---------------------------------------------------------------------------------------


def test_set_cookie_uses_expires_seven_days_ahead():
    assert set_cookie("AWSALB", "v", now=0.0) == (
        "AWSALB=v; Expires=Thu, 08 Jan 1970 00:00:00 GMT; Path=/"
    )
    assert set_cookie("AWSALBCORS", "v", now=0.0, cors=True).endswith(
        "; Path=/; SameSite=None; Secure"
    )


def test_cookie_pairs_with_their_cors_twins():
    lb, lb_cors = target_cookies("v", now=0.0)
    assert lb.startswith(f"{LB_COOKIE}=v;")
    assert "SameSite" not in lb
    assert lb_cors.startswith(f"{LB_CORS_COOKIE}=v;")
    assert "SameSite=None; Secure" in lb_cors
    tg, tg_cors = group_cookies("w", now=0.0)
    assert tg.startswith(f"{GROUP_COOKIE}=w;")
    assert tg_cors.startswith(f"{GROUP_CORS_COOKIE}=w;")


def test_read_cookies_takes_the_first_of_each_name():
    headers = ["a=1; AWSALB=x; b", "AWSALB=y;AWSALBAPP-0= z ", "junk"]
    assert read_cookies(headers, {LB_COOKIE, APP_COOKIE, "b"}) == {
        LB_COOKIE: "x",
        APP_COOKIE: "z",
    }


def test_sticky_values_put_the_cors_twin_first():
    # ALB: "the value in AWSALBCORS will take precedence" over AWSALB.
    assert sticky_values({LB_COOKIE: "a", LB_CORS_COOKIE: "c"}, LB_COOKIE, LB_CORS_COOKIE) == [
        "c",
        "a",
    ]
    assert sticky_values({LB_CORS_COOKIE: "c"}, LB_COOKIE, LB_CORS_COOKIE) == ["c"]
    assert sticky_values({LB_COOKIE: "a"}, LB_COOKIE, LB_CORS_COOKIE) == ["a"]
    assert sticky_values({LB_COOKIE: "a", LB_CORS_COOKIE: ""}, LB_COOKIE, LB_CORS_COOKIE) == ["a"]
    assert sticky_values({LB_COOKIE: "v", LB_CORS_COOKIE: "v"}, LB_COOKIE, LB_CORS_COOKIE) == ["v"]
    assert sticky_values({}, LB_COOKIE, LB_CORS_COOKIE) == []


def test_a_cors_twin_that_does_not_open_falls_back_to_the_cookie(sealer):
    a = sealer.seal_target("web", "10.0.0.1:80", expires_at=LATER)
    b = sealer.seal_target("web", "10.0.0.2:80", expires_at=LATER)

    def opener(value: str) -> StickyTarget | None:
        return sealer.open_target(value, now=NOW)

    both = {LB_COOKIE: a, LB_CORS_COOKIE: b}
    assert open_sticky(both, LB_COOKIE, LB_CORS_COOKIE, opener) == ("web", "10.0.0.2:80")
    stale_cors = {LB_COOKIE: a, LB_CORS_COOKIE: "garbage"}
    assert open_sticky(stale_cors, LB_COOKIE, LB_CORS_COOKIE, opener) == ("web", "10.0.0.1:80")
    garbage = {LB_COOKIE: "garbage", LB_CORS_COOKIE: b}
    assert open_sticky(garbage, LB_COOKIE, LB_CORS_COOKIE, opener) == ("web", "10.0.0.2:80")
    g1 = sealer.seal_group("blue", expires_at=LATER)
    g2 = sealer.seal_group("green", expires_at=LATER)
    groups = {GROUP_COOKIE: g1, GROUP_CORS_COOKIE: g2}
    assert (
        open_sticky(
            groups, GROUP_COOKIE, GROUP_CORS_COOKIE, lambda v: sealer.open_group(v, now=NOW)
        )
        == "green"
    )


# Properties ------------------------------------------------------------------------------------

names = st.text(max_size=80)
keys = st.binary(min_size=16, max_size=64)


@given(keys, names, names, st.floats(NOW, NOW + 604800))
def test_sealing_round_trips_any_names(key, group, target, expires_at):
    sealer = CookieSealer([key])
    value = sealer.seal_target(group, target, expires_at=expires_at)
    assert sealer.open_target(value, now=NOW - 1) == StickyTarget(group, target)
    assert sealer.open_group(sealer.seal_group(group, expires_at=expires_at), now=NOW - 1) == group
    app = sealer.seal_app(group, target, target + "!", expires_at=expires_at)
    assert sealer.open_app(app, target + "!", now=NOW - 1) == StickyTarget(group, target)


@given(names, names, st.integers(0, 10_000))
@example("web", "10.0.0.1:80", 0)
def test_any_bit_flip_is_rejected(group, target, bit):
    sealer = CookieSealer([KEY])
    raw = bytearray(decoded(sealer.seal_target(group, target, expires_at=LATER)))
    bit %= len(raw) * 8
    raw[bit // 8] ^= 1 << (bit % 8)
    assert sealer.open_target(encoded(bytes(raw)), now=NOW) is None


@given(names, st.data())
def test_any_change_to_the_string_is_rejected(group, data):
    sealer = CookieSealer([KEY])
    value = sealer.seal_group(group, expires_at=LATER)
    position = data.draw(st.integers(0, len(value) - 1))
    replacement = data.draw(st.characters(codec="ascii").filter(lambda c: c != value[position]))
    tampered = value[:position] + replacement + value[position + 1 :]
    assert sealer.open_group(tampered, now=NOW) is None
    assert sealer.open_group(value[:position], now=NOW) is None  # truncated


@given(st.text(max_size=300), st.text(max_size=20))
def test_opening_never_raises(value, app):
    sealer = CookieSealer([KEY])
    assert sealer.open_target(value, now=NOW) is None
    assert sealer.open_group(value, now=NOW) is None
    assert sealer.open_app(value, app, now=NOW) is None


# What a client may hold under one name: nothing, a live cookie naming "a" or "b", an expired
# one, garbage, an empty value, or a live cookie of the other kind (a target cookie under a
# group cookie's name, or the reverse).
held = st.sampled_from([None, "a", "b", "a-expired", "b-expired", "garbage", "", "other-kind"])


@given(held, held, st.booleans())
def test_with_both_cookies_the_cors_one_decides_whenever_it_opens(plain, cors, groups):
    sealer = CookieSealer([KEY])

    def seal(named: str, *, expires_at: float, kind_of_name: bool) -> str:
        if groups == kind_of_name:
            return sealer.seal_group(named, expires_at=expires_at)
        return sealer.seal_target("web", named, expires_at=expires_at)

    def value(kind: str) -> str:
        if kind in ("a", "b"):
            return seal(kind, expires_at=LATER, kind_of_name=True)
        if kind.endswith("-expired"):
            return seal(kind[0], expires_at=NOW - 1, kind_of_name=True)
        if kind == "other-kind":
            return seal("a", expires_at=LATER, kind_of_name=False)
        return kind

    def opener(cookie: str) -> str | None:
        if groups:
            return sealer.open_group(cookie, now=NOW)
        target = sealer.open_target(cookie, now=NOW)
        return None if target is None else target.target_id

    name, cors_name = (GROUP_COOKIE, GROUP_CORS_COOKIE) if groups else (LB_COOKIE, LB_CORS_COOKIE)
    cookies = {n: value(k) for n, k in ((name, plain), (cors_name, cors)) if k is not None}
    opened = open_sticky(cookies, name, cors_name, opener)
    if cors in ("a", "b"):
        assert opened == cors
    elif plain in ("a", "b"):
        assert opened == plain
    else:
        assert opened is None


@given(st.lists(st.text(max_size=40), max_size=5))
def test_read_cookies_never_raises(headers):
    found = read_cookies(headers, {LB_COOKIE})
    assert set(found) <= {LB_COOKIE}


# AWSALBAPP-0: one entry per target group, of this balancer and of others -------------------


def test_app_entries_of_other_groups_and_balancers_are_kept(sealer):
    other_layer = CookieSealer([OTHER])
    theirs = other_layer.seal_app("inner", "10.0.0.9:80", "s", expires_at=LATER)
    web_old = sealer.seal_app("web", "10.0.0.1:80", "s", expires_at=LATER)
    api = sealer.seal_app("api", "10.0.0.2:80", "t", expires_at=LATER)
    expired = sealer.seal_app("old", "10.0.0.3:80", "s", expires_at=NOW - 1)
    web_new = sealer.seal_app("web", "10.0.0.4:80", "s", expires_at=LATER)
    value = merged_app_value(sealer, web_new, "web", [web_old, api, theirs, expired], now=NOW)
    assert app_entries(value) == [web_new, api, theirs]  # its own first; stale ones dropped
    assert other_layer.open_app(app_entries(value)[2], "s", now=NOW) == ("inner", "10.0.0.9:80")


def test_app_entries_are_bounded(sealer):
    many = [sealer.seal_app(f"g{i}", "t:1", "s", expires_at=LATER) for i in range(20)]
    value = merged_app_value(sealer, many[0], "g0", many[1:], now=NOW)
    assert len(app_entries(value)) == MAX_APP_ENTRIES
    assert app_entries("." * 10_000) == []
    assert app_entries("a" * 20_000) == []
    assert app_entries("x." + "y" * 2000 + ".z") == ["x", "z"]


@given(st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=1, max_size=30))
def test_every_group_keeps_its_latest_mapping(updates):
    # Requests to several app-cookie groups, in any order, each re-sealing its own entry.
    sealer = CookieSealer([KEY])
    value = ""
    latest: dict[str, str] = {}
    for step, group in enumerate(updates):
        target = f"10.0.0.{step}:80"
        own = sealer.seal_app(group, target, f"session-{group}", expires_at=LATER)
        value = merged_app_value(sealer, own, group, app_entries(value), now=NOW)
        latest[group] = target
    for group, target in latest.items():
        opened = [sealer.open_app(e, f"session-{group}", now=NOW) for e in app_entries(value)]
        assert [o for o in opened if o is not None and o.target_group == group] == [
            StickyTarget(group, target)
        ]


@pytest.mark.parametrize(
    ("user_agent", "expected"),
    [
        ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0.0.0 Safari/537.36", True),
        ("Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko) Chrome/80.0.3987.87", True),
        ("Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko) Chrome/79.0.3945.130", False),
        ("Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0", False),
        ("curl/8.0", False),
        (None, False),
    ],
)  # fmt: skip
def test_chromium_80_or_later(user_agent, expected):
    assert chromium_80_or_later(user_agent) is expected
