from __future__ import annotations

import base64

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from balancer.stickiness import (
    APP_COOKIE,
    COOKIE_LIFETIME_SECONDS,
    GROUP_COOKIE,
    GROUP_CORS_COOKIE,
    LB_COOKIE,
    LB_CORS_COOKIE,
    MAX_APP_ENTRIES,
    MAX_GROUP_ENTRIES,
    MAX_TARGET_ENTRIES,
    CookieSealer,
    Kind,
    StickyTarget,
    app_entries,
    chromium_80_or_later,
    group_cookies,
    group_entries,
    merged_app_value,
    merged_group_value,
    merged_target_value,
    open_sticky,
    read_cookies,
    set_cookie,
    sticky_values,
    target_cookies,
    target_entries,
)

KEY = b"k" * 32
OTHER = b"o" * 32
NOW = 1_700_000_000.0
DURATION = 3600
LATER = NOW + DURATION
# Sealed with KEY by the code before cookies held their issue time (version 1: an absolute
# expiry, LATER); such cookies are honoured until that expiry.
V1_TARGET = "AYWgMnp2EdS2Z7S2P_pe46u2vVgaweCKt-0gHKSa6bgkdGP1lG3VfApZhIxlheQ"  # web, 10.0.0.1:80
V1_GROUP = "AYWgMnr-xW14GyuvleaxBhY7IED7W-Jem_5oO7IURVXag4FZ"  # green
V1_APP = (  # web, 10.0.0.1:80, for the app cookie "session=abc"
    "AYWgMnqqsdBma4y27EPD5IwVJzXxLvDqQmGYo16Vk7ASCz9PhBPJu9odxD-uwpa2-JfcISMXx-evPh07vmaL"
)


@pytest.fixture
def sealer() -> CookieSealer:
    return CookieSealer([KEY])


def decoded(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def encoded(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# Round trips -----------------------------------------------------------------------------------


def test_target_cookie_round_trip(sealer):
    value = sealer.seal_target("web", "10.0.0.1:80", issued_at=NOW)
    assert sealer.open_target(value, now=NOW, duration=DURATION) == StickyTarget(
        "web", "10.0.0.1:80"
    )
    assert "10.0.0.1" not in value  # opaque
    assert "web" not in value


def test_group_cookie_round_trip(sealer):
    value = sealer.seal_group("green", issued_at=NOW)
    assert sealer.open_group(value, now=NOW, duration=DURATION) == "green"


def test_app_cookie_maps_the_app_session_to_a_target(sealer):
    value = sealer.seal_app("web", "[::1]:8080", "session=abc", issued_at=NOW)
    opened = sealer.open_app(value, "session=abc", now=NOW, duration=DURATION)
    assert opened == StickyTarget("web", "[::1]:8080")
    # A new app session:
    assert sealer.open_app(value, "session=new", now=NOW, duration=DURATION) is None


def test_values_are_deterministic_and_cookie_safe(sealer):
    value = sealer.seal_target("web", "a:1", issued_at=NOW)
    assert value == sealer.seal_target("web", "a:1", issued_at=NOW)
    assert value != sealer.seal_target("web", "a:1", issued_at=NOW + 1)
    assert set(value) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_cookies_issued_longer_ago_than_the_duration_configured_now_are_refused(sealer):
    # ALB "checks whether the configured duration of stickiness is still valid": a reload
    # that shortens (or lengthens) the duration applies to cookies already issued.
    value = sealer.seal_target("web", "a:1", issued_at=NOW)
    assert sealer.open_target(value, now=NOW + 9.5, duration=10) is not None
    assert sealer.open_target(value, now=NOW + 10, duration=10) is None
    assert sealer.open_target(value, now=NOW + 10, duration=86400) is not None
    assert sealer.open_target(value, now=NOW + 2.5, duration=1) is None
    group = sealer.seal_group("g", issued_at=NOW)
    assert sealer.open_group(group, now=NOW + 1, duration=1) is None
    app = sealer.seal_app("web", "a:1", "s", issued_at=NOW)
    assert sealer.open_app(app, "s", now=NOW + 2, duration=1) is None
    assert sealer.open_app(app, "s", now=NOW + 2, duration=3) == ("web", "a:1")


def test_no_duration_outlives_the_cookies_lifetime(sealer):
    value = sealer.seal_target("web", "a:1", issued_at=NOW)
    end = NOW + COOKIE_LIFETIME_SECONDS
    assert sealer.open_target(value, now=end - 1, duration=2 * COOKIE_LIFETIME_SECONDS)
    assert sealer.open_target(value, now=end, duration=2 * COOKIE_LIFETIME_SECONDS) is None


def test_cookies_sealed_with_an_expiry_are_honoured_until_it(sealer):
    # Version 1 cookies hold no issue time: the configured duration cannot be checked, and
    # their own expiry still holds (the next response replaces them with version 2 ones).
    assert sealer.open_target(V1_TARGET, now=LATER - 1, duration=1) == ("web", "10.0.0.1:80")
    assert sealer.open_group(V1_GROUP, now=LATER - 1, duration=1) == "green"
    assert sealer.open_app(V1_APP, "session=abc", now=LATER - 1, duration=1) == (
        "web",
        "10.0.0.1:80",
    )
    assert sealer.open_app(V1_APP, "session=new", now=NOW, duration=DURATION) is None
    assert sealer.open_target(V1_TARGET, now=LATER, duration=COOKIE_LIFETIME_SECONDS) is None
    assert sealer.open_group(V1_GROUP, now=LATER, duration=COOKIE_LIFETIME_SECONDS) is None
    assert sealer.app_entry_group(V1_APP, now=LATER) is None
    assert sealer.open_group(V1_TARGET, now=NOW, duration=DURATION) is None  # kinds still bound
    assert CookieSealer([OTHER]).open_target(V1_TARGET, now=NOW, duration=DURATION) is None


def test_a_cookie_relabelled_as_another_version_does_not_open(sealer):
    # The version is authenticated (associated data): a version 2 cookie's issue time can
    # never be read as a version 1 expiry, nor the reverse.
    for value, other_version in ((sealer.seal_group("g", issued_at=NOW), 1), (V1_GROUP, 2)):
        raw = bytearray(decoded(value))
        raw[0] = other_version
        assert sealer.open_group(encoded(bytes(raw)), now=NOW, duration=DURATION) is None


def test_a_cookie_of_one_kind_never_opens_as_another(sealer):
    target = sealer.seal_target("web", "a:1", issued_at=NOW)
    group = sealer.seal_group("web", issued_at=NOW)
    app = sealer.seal_app("web", "a:1", "v", issued_at=NOW)
    assert sealer.open_group(target, now=NOW, duration=DURATION) is None
    assert sealer.open_target(group, now=NOW, duration=DURATION) is None
    assert sealer.open_target(app, now=NOW, duration=DURATION) is None
    assert sealer.open_app(target, "v", now=NOW, duration=DURATION) is None


# Keys ------------------------------------------------------------------------------------------


def test_rotation_seals_with_the_first_key_and_opens_with_any():
    old = CookieSealer([KEY])
    rotating = CookieSealer([OTHER, KEY])
    before = old.seal_target("web", "a:1", issued_at=NOW)
    after = rotating.seal_target("web", "a:1", issued_at=NOW)
    assert rotating.open_target(before, now=NOW, duration=DURATION) == StickyTarget("web", "a:1")
    assert (
        old.open_target(after, now=NOW, duration=DURATION) is None
    )  # not yet rolled out: re-stick
    assert (
        CookieSealer([OTHER]).open_target(before, now=NOW, duration=DURATION) is None
    )  # old key dropped
    assert after != before


def test_nodes_sharing_a_key_agree():
    value = CookieSealer([KEY]).seal_group("g", issued_at=NOW)
    assert CookieSealer([KEY]).open_group(value, now=NOW, duration=DURATION) == "g"


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
    assert sealer.open_target(value, now=NOW, duration=DURATION) is None
    assert sealer.open_group(value, now=NOW, duration=DURATION) is None
    assert sealer.open_app(value, "v", now=NOW, duration=DURATION) is None


def test_a_non_canonical_spelling_is_refused(sealer):
    # Standard base64 letters and padding decode to the same bytes; only our spelling opens.
    value = next(
        v for n in range(100) if set(v := sealer.seal_group(f"g{n}", issued_at=NOW)) & {"-", "_"}
    )
    assert sealer.open_group(value, now=NOW, duration=DURATION) is not None
    assert (
        sealer.open_group(value + "=" * (-len(value) % 4 or 4), now=NOW, duration=DURATION) is None
    )
    assert (
        sealer.open_group(value.replace("-", "+").replace("_", "/"), now=NOW, duration=DURATION)
        is None
    )


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
    a = sealer.seal_target("web", "10.0.0.1:80", issued_at=NOW)
    b = sealer.seal_target("web", "10.0.0.2:80", issued_at=NOW)

    def opener(value: str) -> StickyTarget | None:
        return sealer.open_target(value, now=NOW, duration=DURATION)

    both = {LB_COOKIE: a, LB_CORS_COOKIE: b}
    assert open_sticky(both, LB_COOKIE, LB_CORS_COOKIE, opener) == ("web", "10.0.0.2:80")
    stale_cors = {LB_COOKIE: a, LB_CORS_COOKIE: "garbage"}
    assert open_sticky(stale_cors, LB_COOKIE, LB_CORS_COOKIE, opener) == ("web", "10.0.0.1:80")
    garbage = {LB_COOKIE: "garbage", LB_CORS_COOKIE: b}
    assert open_sticky(garbage, LB_COOKIE, LB_CORS_COOKIE, opener) == ("web", "10.0.0.2:80")
    g1 = sealer.seal_group("blue", issued_at=NOW)
    g2 = sealer.seal_group("green", issued_at=NOW)
    groups = {GROUP_COOKIE: g1, GROUP_CORS_COOKIE: g2}
    assert (
        open_sticky(
            groups,
            GROUP_COOKIE,
            GROUP_CORS_COOKIE,
            lambda v: sealer.open_group(v, now=NOW, duration=DURATION),
        )
        == "green"
    )


# Properties ------------------------------------------------------------------------------------

names = st.text(max_size=80)
keys = st.binary(min_size=16, max_size=64)


@given(keys, names, names, st.floats(NOW, NOW + 604800))
def test_sealing_round_trips_any_names(key, group, target, issued_at):
    sealer = CookieSealer([key])
    value = sealer.seal_target(group, target, issued_at=issued_at)
    assert sealer.open_target(value, now=issued_at, duration=1) == StickyTarget(group, target)
    group_value = sealer.seal_group(group, issued_at=issued_at)
    assert sealer.open_group(group_value, now=issued_at, duration=1) == group
    app = sealer.seal_app(group, target, target + "!", issued_at=issued_at)
    opened = sealer.open_app(app, target + "!", now=issued_at, duration=1)
    assert opened == StickyTarget(group, target)


seconds = st.integers(int(NOW), int(NOW) + 10 * COOKIE_LIFETIME_SECONDS)
durations = st.integers(1, COOKIE_LIFETIME_SECONDS)


@given(st.sampled_from(list(Kind)), seconds, durations, st.floats(0, 2 * COOKIE_LIFETIME_SECONDS))
def test_a_cookie_lives_for_the_duration_it_is_opened_with(kind, issued, duration, elapsed):
    # Whatever the duration was when it was sealed: only the one configured now counts.
    sealer = CookieSealer([KEY])
    now = issued + elapsed
    live = now < issued + duration
    if kind is Kind.TARGET:
        value = sealer.seal_target("web", "a:1", issued_at=issued)
        opened: object = sealer.open_target(value, now=now, duration=duration)
    elif kind is Kind.GROUP:
        opened = sealer.open_group(
            sealer.seal_group("g", issued_at=issued), now=now, duration=duration
        )
    else:
        value = sealer.seal_app("web", "a:1", "s", issued_at=issued)
        opened = sealer.open_app(value, "s", now=now, duration=duration)
    assert (opened is not None) is live


@given(st.sampled_from([V1_TARGET, V1_GROUP]), durations, st.floats(NOW - 10, LATER + 10))
def test_a_cookie_sealed_with_an_expiry_lives_until_it_whatever_the_duration(value, duration, now):
    sealer = CookieSealer([KEY])
    opened: object = (
        sealer.open_target(value, now=now, duration=duration)
        if value == V1_TARGET
        else sealer.open_group(value, now=now, duration=duration)
    )
    assert (opened is not None) is (now < LATER)


@given(names, names, st.integers(0, 10_000))
@example("web", "10.0.0.1:80", 0)
def test_any_bit_flip_is_rejected(group, target, bit):
    sealer = CookieSealer([KEY])
    raw = bytearray(decoded(sealer.seal_target(group, target, issued_at=NOW)))
    bit %= len(raw) * 8
    raw[bit // 8] ^= 1 << (bit % 8)
    assert sealer.open_target(encoded(bytes(raw)), now=NOW, duration=DURATION) is None


@given(names, st.data())
def test_any_change_to_the_string_is_rejected(group, data):
    sealer = CookieSealer([KEY])
    value = sealer.seal_group(group, issued_at=NOW)
    position = data.draw(st.integers(0, len(value) - 1))
    replacement = data.draw(st.characters(codec="ascii").filter(lambda c: c != value[position]))
    tampered = value[:position] + replacement + value[position + 1 :]
    assert sealer.open_group(tampered, now=NOW, duration=DURATION) is None
    assert sealer.open_group(value[:position], now=NOW, duration=DURATION) is None  # truncated


@given(st.text(max_size=300), st.text(max_size=20))
def test_opening_never_raises(value, app):
    sealer = CookieSealer([KEY])
    assert sealer.open_target(value, now=NOW, duration=DURATION) is None
    assert sealer.open_group(value, now=NOW, duration=DURATION) is None
    assert sealer.open_app(value, app, now=NOW, duration=DURATION) is None


# What a client may hold under one name: nothing, a live cookie naming "a" or "b", an expired
# one, garbage, an empty value, or a live cookie of the other kind (a target cookie under a
# group cookie's name, or the reverse).
held = st.sampled_from([None, "a", "b", "a-expired", "b-expired", "garbage", "", "other-kind"])


@given(held, held, st.booleans())
def test_with_both_cookies_the_cors_one_decides_whenever_it_opens(plain, cors, groups):
    sealer = CookieSealer([KEY])

    def seal(named: str, *, issued_at: float, kind_of_name: bool) -> str:
        if groups == kind_of_name:
            return sealer.seal_group(named, issued_at=issued_at)
        return sealer.seal_target("web", named, issued_at=issued_at)

    def value(kind: str) -> str:
        if kind in ("a", "b"):
            return seal(kind, issued_at=NOW, kind_of_name=True)
        if kind.endswith("-expired"):
            return seal(kind[0], issued_at=NOW - DURATION - 1, kind_of_name=True)
        if kind == "other-kind":
            return seal("a", issued_at=NOW, kind_of_name=False)
        return kind

    def opener(cookie: str) -> str | None:
        if groups:
            return sealer.open_group(cookie, now=NOW, duration=DURATION)
        target = sealer.open_target(cookie, now=NOW, duration=DURATION)
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
    theirs = other_layer.seal_app("inner", "10.0.0.9:80", "s", issued_at=NOW)
    web_old = sealer.seal_app("web", "10.0.0.1:80", "s", issued_at=NOW)
    # Past the duration of one group maybe, not of every group: that group decides.
    api = sealer.seal_app("api", "10.0.0.2:80", "t", issued_at=NOW - DURATION - 1)
    expired = sealer.seal_app("old", "10.0.0.3:80", "s", issued_at=NOW - COOKIE_LIFETIME_SECONDS)
    web_new = sealer.seal_app("web", "10.0.0.4:80", "s", issued_at=NOW)
    value = merged_app_value(sealer, web_new, "web", [web_old, api, theirs, expired], now=NOW)
    assert app_entries(value) == [web_new, api, theirs]  # its own first; stale ones dropped
    assert other_layer.open_app(app_entries(value)[2], "s", now=NOW, duration=DURATION) == (
        "inner",
        "10.0.0.9:80",
    )


def test_app_entries_are_bounded(sealer):
    many = [sealer.seal_app(f"g{i}", "t:1", "s", issued_at=NOW) for i in range(20)]
    value = merged_app_value(sealer, many[0], "g0", many[1:], now=NOW)
    assert len(app_entries(value)) == MAX_APP_ENTRIES
    assert app_entries("." * 10_000) == []
    assert app_entries("a" * 20_000) == []
    assert app_entries("x." + "y" * 2000 + ".z") == ["x", "z"]


def test_target_entries_keep_one_per_other_group_and_replace_this_groups(sealer):
    web_old = sealer.seal_target("web", "10.0.0.1:80", issued_at=NOW - 10)
    api = sealer.seal_target("api", "10.0.0.2:80", issued_at=NOW - DURATION - 1)
    api_twice = sealer.seal_target("api", "10.0.0.3:80", issued_at=NOW)
    expired = sealer.seal_target("old", "10.0.0.4:80", issued_at=NOW - COOKIE_LIFETIME_SECONDS)
    theirs = CookieSealer([OTHER]).seal_target("inner", "10.0.0.5:80", issued_at=NOW)
    web_new = sealer.seal_target("web", "10.0.0.6:80", issued_at=NOW)
    previous = [web_old, api, api_twice, expired, theirs, "garbage"]
    value = merged_target_value(sealer, web_new, "web", previous, now=NOW)
    assert target_entries(value) == [web_new, api]
    assert target_entries(web_new) == [web_new]  # a value of one entry, as issued before
    many = [sealer.seal_target(f"g{i}", "t:1", issued_at=NOW) for i in range(20)]
    value = merged_target_value(sealer, many[0], "g0", many[1:], now=NOW)
    assert len(target_entries(value)) == MAX_TARGET_ENTRIES


def test_group_entries_keep_one_per_other_group_and_drop_this_forwards(sealer):
    blue_old = sealer.seal_group("blue", issued_at=NOW - 10)
    web = sealer.seal_group("web-green", issued_at=NOW - DURATION - 1)  # its forward decides
    web_twice = sealer.seal_group("web-green", issued_at=NOW)
    expired = sealer.seal_group("old", issued_at=NOW - COOKIE_LIFETIME_SECONDS)
    theirs = CookieSealer([OTHER]).seal_group("inner", issued_at=NOW)
    green = sealer.seal_group("green", issued_at=NOW)
    previous = [blue_old, web, web_twice, expired, theirs, "garbage"]
    value = merged_group_value(sealer, green, {"blue", "green"}, previous, now=NOW)
    assert group_entries(value) == [green, web]
    assert group_entries(green) == [green]  # a value of one entry, as issued before
    many = [sealer.seal_group(f"g{i}", issued_at=NOW) for i in range(20)]
    value = merged_group_value(sealer, many[0], {"g0"}, many[1:], now=NOW)
    assert len(group_entries(value)) == MAX_GROUP_ENTRIES


@given(st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=1, max_size=30))
def test_every_group_keeps_its_latest_mapping(updates):
    # Requests to several app-cookie groups, in any order, each re-sealing its own entry.
    sealer = CookieSealer([KEY])
    value = ""
    latest: dict[str, str] = {}
    for step, group in enumerate(updates):
        target = f"10.0.0.{step}:80"
        own = sealer.seal_app(group, target, f"session-{group}", issued_at=NOW)
        value = merged_app_value(sealer, own, group, app_entries(value), now=NOW)
        latest[group] = target
    for group, target in latest.items():
        opened = [
            sealer.open_app(e, f"session-{group}", now=NOW, duration=DURATION)
            for e in app_entries(value)
        ]
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
