"""Stickiness for one forwarded request: which group and target the cookies ask for, and the
cookies the response carries back (ALB sticky-sessions.md).

- Weighted forward with group stickiness: ``AWSALBTG`` (and ``AWSALBTGCORS``) names the
  target group, in an entry per weighted forward (:func:`balancer.stickiness.
  merged_group_value`), so a client keeps its group on each forward it uses; re-issued on
  every response so its validity slides.
- ``lb_cookie``: ``AWSALB`` (and ``AWSALBCORS``) names the target, in an entry per target
  group (:func:`balancer.stickiness.merged_target_value`), so a client keeps its target in
  each sticky group it uses; re-issued on every response, and rewritten when its target was
  replaced (unhealthy, draining, gone).
- Of a cookie and its CORS twin, the twin decides when it opens and names a group of this
  action (``AWSALBTGCORS``) or a target of this group (``AWSALBCORS``); otherwise the other
  one is tried (:func:`balancer.stickiness.open_sticky`): ALB gives ``AWSALBCORS``
  precedence, and a stale twin should not end a session the other cookie still holds.
- ``app_cookie``: the application's own cookie is mapped to the target with
  ``AWSALBAPP-0``, issued when the target sets the application cookie and refreshed while
  the client presents one; when the sticky target is replaced, the session re-sticks to
  the new target (ALB keeps it there even if the old one comes back). The cookie holds one
  entry per target group, so several app-cookie groups, and several balancers in layers,
  each keep their own (:func:`balancer.stickiness.merged_app_value`): a balancer behind this
  one sets the cookie on its response, and this one merges its entry into that value and
  sends one ``Set-Cookie`` for it instead of two that would overwrite each other.

Cookies that do not open (tampered, from another group or key, or expired: issued longer ago
than the duration configured now, the group's or the weighted forward's, so a reload that
shortens it applies to cookies already issued) are ignored and the request is routed as a
new one. Without stickiness anywhere in the action, no cookie header is even parsed.
"""

from __future__ import annotations

from collections.abc import Sequence

from balancer.config import Forward, TargetGroup
from balancer.runtime import Snapshot
from balancer.selection import RandomSource, choose_group
from balancer.stickiness import (
    APP_COOKIE,
    GROUP_COOKIE,
    GROUP_CORS_COOKIE,
    LB_COOKIE,
    LB_CORS_COOKIE,
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
    target_cookies,
    target_entries,
)
from proto.http1 import first_header

Header = tuple[bytes, bytes]


class StickyPlan:
    """What the cookies of one request decided, and what its response must set."""

    __slots__ = (
        "app_cookie",
        "app_entries",
        "app_same_site",
        "group",
        "group_cookie",
        "group_entries",
        "group_members",
        "stickiness_on",
        "sticky_target",
        "target_entries",
    )

    def __init__(self, group: str) -> None:
        self.group = group
        self.group_cookie = False  # an AWSALBTG cookie to issue
        self.group_entries: list[str] = []  # the request's AWSALBTG(CORS) entries
        self.group_members: frozenset[str] = frozenset()  # the weighted forward's groups
        self.sticky_target: str | None = None
        self.target_entries: list[str] = []  # the request's AWSALB(CORS) entries
        self.app_cookie: str | None = None  # the request's application cookie value
        self.app_entries: list[str] = []  # the request's AWSALBAPP-0 entries
        self.app_same_site = False  # AWSALBAPP-0 gets SameSite=None; Secure (Chromium 80+)
        self.stickiness_on = False  # the group's target stickiness is enabled (and keyed)


def _cookie_headers(headers: Sequence[Header]) -> list[str]:
    return [v.decode("latin-1") for k, v in headers if k == b"cookie"]


def plan(
    snapshot: Snapshot,
    action: Forward,
    headers: Sequence[Header],
    *,
    rand: RandomSource,
    wall: float,
) -> StickyPlan:
    """Choose the target group and read what the stickiness cookies ask for."""
    sealer = snapshot.sealer
    cookies: dict[str, str] | None = None
    if action.target_group:
        result = StickyPlan(action.target_group)
    else:
        sticky_group = None
        members = frozenset(member.name for member in action.target_groups)
        entries: list[str] = []
        if action.stickiness.enabled and sealer is not None:
            cookies = read_cookies(_cookie_headers(headers), _ALL_NAMES)
            duration = action.stickiness.duration_seconds

            def member_group(value: str) -> str | None:
                # The first entry naming one of this forward's groups: the others are
                # other forwards' (or dead ones, which the response drops).
                for entry in group_entries(value):
                    named = sealer.open_group(entry, now=wall, duration=duration)
                    if named in members:
                        return named
                return None

            sticky_group = open_sticky(cookies, GROUP_COOKIE, GROUP_CORS_COOKIE, member_group)
            for name in (GROUP_CORS_COOKIE, GROUP_COOKIE):
                entries += group_entries(cookies.get(name))
        chosen = choose_group(action.target_groups, rand=rand, sticky_group=sticky_group)
        result = StickyPlan(chosen.name)
        if action.stickiness.enabled and sealer is not None:
            result.group_cookie = True
            result.group_entries = entries
            result.group_members = members
    group = snapshot.groups.get(result.group)
    if group is None or sealer is None or not group.config.stickiness.enabled:
        return result
    stickiness = group.config.stickiness
    result.stickiness_on = True
    names = _ALL_NAMES | {stickiness.cookie_name} if stickiness.cookie_name else _ALL_NAMES
    if cookies is None or stickiness.cookie_name:
        cookies = read_cookies(_cookie_headers(headers), names)
    if stickiness.type == "lb_cookie":

        def group_target(value: str) -> StickyTarget | None:
            # The first entry of this group: the others are other groups' (or dead ones,
            # which the response drops).
            for entry in target_entries(value):
                named = sealer.open_target(entry, now=wall, duration=stickiness.duration_seconds)
                if named is not None and named.target_group == result.group:
                    return named
            return None

        opened = open_sticky(cookies, LB_COOKIE, LB_CORS_COOKIE, group_target)
        for name in (LB_CORS_COOKIE, LB_COOKIE):
            result.target_entries += target_entries(cookies.get(name))
    else:
        result.app_cookie = cookies.get(stickiness.cookie_name)
        result.app_entries = app_entries(cookies.get(APP_COOKIE))
        user_agent = first_header(headers, b"user-agent")
        result.app_same_site = chromium_80_or_later(
            user_agent.decode("latin-1") if user_agent is not None else None
        )
        opened = None
        if result.app_cookie is not None:
            for entry in result.app_entries:
                found = sealer.open_app(
                    entry, result.app_cookie, now=wall, duration=stickiness.duration_seconds
                )
                if found is not None and found.target_group == result.group:
                    opened = found
                    break
    if opened is not None and opened.target_group == result.group:
        result.sticky_target = opened.target_id
    return result


_ALL_NAMES = frozenset({GROUP_COOKIE, GROUP_CORS_COOKIE, LB_COOKIE, LB_CORS_COOKIE, APP_COOKIE})


def response_cookies(
    result: StickyPlan,
    snapshot: Snapshot,
    group: TargetGroup,
    target_id: str,
    response_headers: list[Header],
    *,
    wall: float,
) -> list[Header]:
    """The ``Set-Cookie`` headers the balancer adds to a forwarded response.

    ``response_headers`` are the headers going to the client; an ``AWSALBAPP-0`` the target
    set (a balancer behind this one) is taken out of them and merged into this one's.
    """
    sealer = snapshot.sealer
    if sealer is None or not (result.group_cookie or result.stickiness_on):
        return []
    found: list[str] = []
    if result.group_cookie:
        own = sealer.seal_group(result.group, issued_at=wall)
        value = merged_group_value(
            sealer, own, result.group_members, result.group_entries, now=wall
        )
        found += group_cookies(value, now=wall)
    stickiness = group.stickiness
    if result.stickiness_on and stickiness.type == "lb_cookie":
        own = sealer.seal_target(result.group, target_id, issued_at=wall)
        value = merged_target_value(sealer, own, result.group, result.target_entries, now=wall)
        found += target_cookies(value, now=wall)
    elif result.stickiness_on:
        app_value = _set_cookie_value(response_headers, stickiness.cookie_name)
        if app_value is None:
            app_value = result.app_cookie
        if app_value is not None:
            sealed = sealer.seal_app(result.group, target_id, app_value, issued_at=wall)
            behind = _take_set_cookie(response_headers, APP_COOKIE)
            previous = app_entries(behind) if behind is not None else result.app_entries
            value = merged_app_value(sealer, sealed, result.group, previous, now=wall)
            found.append(set_cookie(APP_COOKIE, value, now=wall, cors=result.app_same_site))
    return [(b"set-cookie", c.encode("latin-1")) for c in found]


def _take_set_cookie(headers: list[Header], name: str) -> str | None:
    """Remove the ``Set-Cookie`` headers of cookie ``name``; the last one's value."""
    wanted = name.encode("latin-1")
    value: str | None = None
    kept: list[Header] = []
    for header in headers:
        found = _cookie_set(header, wanted)
        if found is None:
            kept.append(header)
        else:
            value = found
    if value is not None:
        headers[:] = kept
    return value


def _set_cookie_value(headers: Sequence[Header], name: str) -> str | None:
    """The value the response's ``Set-Cookie`` gives cookie ``name``, if it sets it: the last
    one's, as a browser keeps it (RFC 6265 5.3; a session renewed as a deletion, then the new
    value, is the new value)."""
    wanted = name.encode("latin-1")
    value: str | None = None
    for header in headers:
        found = _cookie_set(header, wanted)
        if found is not None:
            value = found
    return value


def _cookie_set(header: Header, wanted: bytes) -> str | None:
    """The value ``header`` sets cookie ``wanted`` to, if it is a Set-Cookie of that cookie."""
    key, raw = header
    if key != b"set-cookie":
        return None
    cookie_name, equals, rest = raw.partition(b"=")
    if not equals or cookie_name.strip() != wanted:
        return None
    return rest.partition(b";")[0].strip().decode("latin-1")
