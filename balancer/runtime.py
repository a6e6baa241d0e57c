"""The balancer's runtime state: an immutable snapshot per config generation plus live state.

Two kinds of state, kept apart on purpose:

* :class:`Snapshot` is built from one :class:`~balancer.config.BalancerConfig` (and the
  stickiness keys) and never changes afterwards: each listener's compiled
  :class:`~balancer.rules.RuleTable`, each target group's target list, its
  :class:`~balancer.selection.TargetSelector`, the :class:`~balancer.stickiness.CookieSealer`,
  and one TLS client context for every https target group's connections. Compiling happens
  once per generation, never per request.
* :class:`GroupLive` is what must survive a reload, keyed by target-group name: the
  :class:`~balancer.health.HealthTable` (targets kept across a reload keep their state),
  the requests in flight per target (least-outstanding-requests and early draining read
  them; every generation's selector shares the same dict) and when slow start was turned on
  or re-timed (:class:`~balancer.selection.SlowStartEpoch`: the targets healthy then keep
  their slow start state).

:class:`Runtime` owns both and swaps ``runtime.current`` in one assignment. A request reads
``runtime.current`` once when its head has arrived and uses that snapshot until its response
ends (a WebSocket tunnel keeps it for its lifetime), so a reload never changes the rules
under a request in flight, while keep-alive connections pick up new rules at their next
request.

Interface (used by the HTTP listener, the health checker, the admin targets API and reload):

``Runtime(config, keys=(), now=...)``
    First generation; every configured target registered in its group's health table.
``runtime.current: Snapshot``
    ``.generation``, ``.config``, ``.listeners[name] -> ListenerRuntime``,
    ``.groups[name] -> GroupRuntime``, ``.sealer`` (None when no key is configured),
    ``.tls[name] -> ServerTls`` for https listeners (built by the app from the files,
    passed to ``Runtime(..., tls=)`` / ``reload(..., tls=)``).
``runtime.live[name] -> GroupLive``
    ``.health: HealthTable`` (the checker feeds it with ``record_check``),
    ``.outstanding: dict[target_id, int]``, ``.name``, ``.slow_start_epoch``.
``runtime.reload(config, keys, now) -> events``
    Compile a new generation (``ValueError`` leaves everything untouched), sync the health
    tables (removed targets start draining, kept ones keep their state, new ones start
    ``initial`` or ``unavailable``) and swap.
``runtime.replace_targets(group, endpoints, now) -> events``
    A new generation where one group has a new target list (admin register/deregister);
    rules, sealer and the other groups are shared with the previous generation, and only
    that group's health table is synchronised (the cost is its size, not the balancer's).
``GroupRuntime.choose(now=, rand=, sticky_target=) -> Selected | None``
    Target selection among the group's targets with live health; None means 503. The
    endpoint is a :class:`~balancer.upstream.TargetEndpoint`: it carries the generation's
    TLS context (https groups) and the group's ``GroupLive``, which the connection pools
    ask whether a target still keeps connections (``GroupLive.keeps_connections``).
``GroupRuntime.request_started(target_id)`` / ``request_finished(target_id, now) -> events``
    Bracket every request sent to a target; the last request of a draining target ends its
    draining early. The shell hands the returned events to ``runtime.notify``.
``runtime.advance(now) -> events``
    Let time pass (draining deadlines); the checker's loop calls it.
``runtime.observers``
    Callables given every batch of health events that ``reload``, ``install``,
    ``replace_targets``, ``advance`` and ``notify`` see (the app logs and counts them).
    Code that feeds a health table directly (the checker's ``record_check``) passes the
    events it gets back to ``runtime.notify``.

Times: ``now`` is the monotonic clock (``trio.current_time()``) for health and slow start;
cookies use wall-clock time and are the shell's business. Nothing here does I/O.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from balancer.config import (
    BalancerConfig,
    Endpoint,
    Forward,
    HttpListener,
    HttpsListener,
    TargetGroup,
)
from balancer.health import (
    HealthPolicy,
    HealthTable,
    TargetStartedDraining,
    TargetState,
    TargetStateChanged,
)
from balancer.rules import RuleTable
from balancer.selection import (
    Candidate,
    Choice,
    RandomSource,
    SlowStartEpoch,
    TargetSelector,
    slow_start_entries,
)
from balancer.stickiness import CookieSealer
from balancer.target_tls import TargetContext, backend_policy, client_context
from balancer.tls import ServerTls
from balancer.upstream import TargetEndpoint

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
HealthObserver = Callable[[Sequence[TargetStateChanged]], None]


class GroupLive:
    """The part of a target group that outlives config generations."""

    __slots__ = ("health", "name", "outstanding", "slow_start_epoch", "slow_start_seconds")

    def __init__(self, name: str, policy: HealthPolicy) -> None:
        self.name = name
        self.health = HealthTable(policy, name=name)
        self.outstanding: dict[str, int] = {}
        # The slow start duration of the installed generation (0: off), and when it last
        # changed; the first generation's change finds no target healthy yet.
        self.slow_start_seconds = 0
        self.slow_start_epoch = SlowStartEpoch()

    def follow_slow_start(self, seconds: int, now: float) -> None:
        """Take the slow start duration of a generation being installed (call before its
        targets are synchronised): turned on, the targets healthy now stay out of slow start;
        given a new duration, the ones ramping now go on ramping, the others stay out."""
        old = self.slow_start_seconds
        if seconds == old:
            return
        ramping: frozenset[str] = frozenset()
        if seconds > 0 and old > 0:
            healthy = [
                Candidate.from_health(record)
                for record in self.health
                if record.state is TargetState.HEALTHY
            ]
            entries = slow_start_entries(healthy, old, self.slow_start_epoch)
            ramping = frozenset(
                candidate.target_id
                for candidate, entry in zip(healthy, entries, strict=True)
                if entry is not None and now - entry < old
            )
        self.slow_start_seconds = seconds
        self.slow_start_epoch = SlowStartEpoch(now, ramping)

    def shift_clock(self, delta: float) -> None:
        """Move every time kept by ``delta`` (see :meth:`HealthTable.shift_clock`)."""
        self.health.shift_clock(delta)
        epoch = self.slow_start_epoch
        self.slow_start_epoch = epoch._replace(since=epoch.since + delta)

    def in_flight(self, target_id: str) -> int:
        """Requests in flight to one target, across every generation."""
        return self.outstanding.get(target_id, 0)

    def keeps_connections(self, target_id: str) -> bool:
        """Whether pooled connections to the target are worth keeping: it is registered and
        not draining (a draining target gets no new request; a gone one none at all)."""
        record = self.health.get(target_id)
        return record is not None and record.state is not TargetState.DRAINING


def _idle_unused_leave(
    live: GroupLive, events: list[TargetStateChanged], now: float
) -> list[TargetStateChanged]:
    """``events`` of a sync, and the early departure of the ``unused`` targets it started
    draining that have nothing in flight: most unused targets never had a request, and need
    not wait for the checker's next round (those still serving requests routed before their
    group went unused drain as any other)."""
    for event in list(events):
        if (
            isinstance(event, TargetStartedDraining)
            and event.previous is TargetState.UNUSED
            and live.in_flight(event.target_id) == 0
        ):
            events += live.health.target_idle(event.target_id, now)
    return events


class Selected(NamedTuple):
    """A chosen target: the selection's verdict and where to connect."""

    choice: Choice
    endpoint: Endpoint


class GroupRuntime:
    """One target group in one generation: its targets, selector and live state.

    Immutable after construction except for a memo of the candidate list, which is rebuilt
    when the live health table's ``version`` moves on.
    """

    __slots__ = (
        "_memo",
        "_memo_version",
        "by_id",
        "config",
        "endpoints",
        "in_use",
        "live",
        "selector",
        "tls",
    )

    def __init__(
        self,
        config: TargetGroup,
        live: GroupLive,
        endpoints: Sequence[Endpoint] | None = None,
        *,
        in_use: bool = True,
        tls: TargetContext | None = None,
    ) -> None:
        self.config = config
        self.live = live
        self.in_use = in_use  # some listener rule of this generation forwards here
        # The generation's client context for https targets: its back-end policy depends on
        # every listener, which a group alone does not know.
        if config.protocol == "https" and tls is None:
            raise ValueError(f"target group {config.name}: https needs the generation's context")
        self.tls = tls if config.protocol == "https" else None
        self.endpoints = tuple(
            TargetEndpoint.of(e, tls=self.tls, owner=live)
            for e in (config.endpoints() if endpoints is None else endpoints)
        )
        self.by_id: Mapping[str, Endpoint] = {e.target_id: e for e in self.endpoints}
        self.selector = TargetSelector.from_target_group(config, outstanding=live.outstanding)
        self._memo: tuple[Candidate, ...] = ()
        self._memo_version = -1

    @property
    def name(self) -> str:
        return self.config.name

    def candidates(self) -> tuple[Candidate, ...]:
        """This generation's targets that the health table knows, with their live state."""
        health = self.live.health
        if self._memo_version != health.version:
            found = []
            for endpoint in self.endpoints:
                record = health.get(endpoint.target_id)
                if record is None:
                    continue
                if record.state is TargetState.UNUSED and self.in_use:
                    # A newer generation stopped forwarding here while a request routed by
                    # this one was in flight: its targets served until that reload, so
                    # they finish the job as initial targets would (failing open), not 503.
                    record = replace(record, state=TargetState.INITIAL)
                found.append(Candidate.from_health(record, endpoint.weight))
            self._memo = tuple(found)
            self._memo_version = health.version
        return self._memo

    def choose(
        self, *, now: float, rand: RandomSource, sticky_target: str | None = None
    ) -> Selected | None:
        """Pick the target of a new request (None: no target may take it, answer 503)."""
        choice = self.selector.choose(
            self.candidates(),
            now=now,
            rand=rand,
            sticky_target=sticky_target,
            slow_start_epoch=self.live.slow_start_epoch,
        )
        if choice is None:
            return None
        return Selected(choice, self.by_id[choice.target.target_id])

    def request_started(self, target_id: str) -> None:
        self.selector.request_started(target_id)

    def request_finished(self, target_id: str, now: float) -> list[TargetStateChanged]:
        """Count a request as ended; a draining target with nothing left in flight leaves."""
        if self.selector.request_finished(target_id):
            return []
        record = self.live.health.get(target_id)
        if record is None or record.state is not TargetState.DRAINING:
            return []
        return self.live.health.target_idle(target_id, now)


@dataclass(frozen=True, slots=True)
class ListenerRuntime:
    """One HTTP(S) listener in one generation."""

    config: HttpListener | HttpsListener
    rules: RuleTable
    trusted_proxies: tuple[IPNetwork, ...]

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def default_only(self) -> bool:
        """No rules: every request takes the default action (routing needs no request view)."""
        return not self.config.rules

    @property
    def protocol(self) -> str:
        """``http`` or ``https``: X-Forwarded-Proto and redirects' ``#{protocol}``."""
        return "https" if isinstance(self.config, HttpsListener) else "http"

    @classmethod
    def compile(cls, config: HttpListener | HttpsListener) -> ListenerRuntime:
        return cls(
            config,
            RuleTable.from_listener(config),
            tuple(ipaddress.ip_network(c) for c in config.trusted_proxies),
        )


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything compiled from one configuration generation."""

    generation: int
    config: BalancerConfig
    listeners: Mapping[str, ListenerRuntime]
    groups: Mapping[str, GroupRuntime]
    sealer: CookieSealer | None
    keys: tuple[bytes, ...] = field(default=(), repr=False)
    # Per https listener name: its certificates' contexts (built by the app from files).
    tls: Mapping[str, ServerTls] = field(default_factory=dict)


def groups_in_use(config: BalancerConfig) -> frozenset[str]:
    """Target groups that some listener action forwards to (the others are ``unused``)."""
    return frozenset(
        member.name
        for _, action in config.actions()
        if isinstance(action, Forward)
        for member in action.weighted()
    )


def target_policy(config: BalancerConfig) -> str:
    """The back-end TLS policy of https targets and HTTPS health checks: ALB's choice from
    the policies of the load balancer's HTTPS listeners (:func:`backend_policy`)."""
    return backend_policy(
        listener.ssl_policy for listener in config.listeners if isinstance(listener, HttpsListener)
    )


class Runtime:
    """The current snapshot and the live state; see the module docstring for the contract."""

    def __init__(
        self,
        config: BalancerConfig,
        *,
        keys: Sequence[bytes] = (),
        tls: Mapping[str, ServerTls] | None = None,
        now: float,
        seed: int | None = None,
    ) -> None:
        self.live: dict[str, GroupLive] = {}
        self.observers: list[HealthObserver] = []
        # Told after each new generation is current (the checker re-reads check intervals).
        self.on_install: list[Callable[[], None]] = []
        # One random source per process: weighted_random and weighted forwards draw from it.
        self.rand = random.Random(seed)
        self._generation = 0
        self.current = self._compile(config, tuple(keys), tls)
        self._install(self.current, now)

    def compile(
        self,
        config: BalancerConfig,
        keys: Sequence[bytes] = (),
        tls: Mapping[str, ServerTls] | None = None,
    ) -> Snapshot:
        """Build (but do not install) the next generation.

        Raises:
            ValueError: a stickiness key is unusable; nothing changed.
        """
        return self._compile(config, tuple(keys), tls)

    def reload(
        self,
        config: BalancerConfig,
        keys: Sequence[bytes],
        now: float,
        *,
        tls: Mapping[str, ServerTls] | None = None,
    ) -> list[TargetStateChanged]:
        """Compile ``config`` and make it current; raises ValueError with nothing changed."""
        snapshot = self._compile(config, tuple(keys), tls)
        return self.install(snapshot, now)

    def install(
        self, snapshot: Snapshot, now: float, *, changed: Iterable[str] | None = None
    ) -> list[TargetStateChanged]:
        """Make a compiled snapshot current (health tables follow its target lists).

        ``changed`` names the only groups whose targets or settings may differ from the
        current generation's (the others' tables are left as they are); None: every group.
        """
        events = self._install(snapshot, now, changed)
        self._notify(events)
        for installed in self.on_install:
            installed()
        return events

    def replace_targets(
        self, group: str, endpoints: Iterable[Endpoint], now: float
    ) -> list[TargetStateChanged]:
        """A new generation in which ``group`` has exactly ``endpoints`` as its targets.

        Only that group's health table is synchronised: the cost is its size, not the
        balancer's (an admin call must not walk thousands of other groups' targets).

        Raises:
            KeyError: no such target group in the current generation.
        """
        old = self.current
        previous = old.groups[group]
        groups = dict(old.groups)
        groups[group] = GroupRuntime(
            previous.config,
            previous.live,
            tuple(endpoints),
            in_use=previous.in_use,
            tls=previous.tls,
        )
        self._generation += 1
        snapshot = replace(old, generation=self._generation, groups=groups)
        return self.install(snapshot, now, changed=(group,))

    def _compile(
        self,
        config: BalancerConfig,
        keys: tuple[bytes, ...],
        tls: Mapping[str, ServerTls] | None,
    ) -> Snapshot:
        sealer = CookieSealer(keys) if keys else None
        in_use = groups_in_use(config)
        # One context for the generation, not one per connection or group.
        https = any(group.protocol == "https" for group in config.target_groups)
        tls_context = client_context(target_policy(config)) if https else None
        groups: dict[str, GroupRuntime] = {}
        for group in config.target_groups:
            policy = HealthPolicy.from_target_group(group, in_use=group.name in in_use)
            live = self.live.get(group.name) or GroupLive(group.name, policy)
            groups[group.name] = GroupRuntime(
                group, live, in_use=group.name in in_use, tls=tls_context
            )
        listeners = {li.name: ListenerRuntime.compile(li) for li in config.listeners}
        self._generation += 1
        return Snapshot(self._generation, config, listeners, groups, sealer, keys, tls or {})

    def _install(
        self, snapshot: Snapshot, now: float, changed: Iterable[str] | None = None
    ) -> list[TargetStateChanged]:
        events: list[TargetStateChanged] = []
        in_use = groups_in_use(snapshot.config)
        names = snapshot.groups.keys() if changed is None else changed
        for name in names:
            group = snapshot.groups[name]
            live = group.live
            self.live[name] = live
            policy = HealthPolicy.from_target_group(group.config, in_use=name in in_use)
            live.follow_slow_start(group.config.slow_start_seconds, now)
            events += live.health.set_policy(policy, now)
            events += _idle_unused_leave(
                live, live.health.sync([e.target_id for e in group.endpoints], now), now
            )
        if changed is None:
            for name, live in list(self.live.items()):
                if name not in snapshot.groups:
                    # A group gone from the config drains its targets, then is forgotten.
                    events += _idle_unused_leave(live, live.health.sync([], now), now)
        self.current = snapshot
        self._forget_removed()
        return events

    def shift_clock(self, delta: float) -> None:
        """Move every health time by ``delta`` (built at time 0, before trio's clock ran)."""
        for live in self.live.values():
            live.shift_clock(delta)

    def advance(self, now: float) -> list[TargetStateChanged]:
        """Let time pass for every group (draining deadlines); the checker calls this."""
        events: list[TargetStateChanged] = []
        for live in list(self.live.values()):
            events += live.health.advance(now)
        self._forget_removed()
        self._notify(events)
        return events

    def notify(self, events: Sequence[TargetStateChanged]) -> None:
        """Hand events produced outside the runtime's methods to the observers."""
        self._forget_removed()
        self._notify(events)

    def _forget_removed(self) -> None:
        """Forget groups gone from the config once their last draining target has left (so
        their metrics go too)."""
        for name, live in list(self.live.items()):
            if name not in self.current.groups and not len(live.health):
                del self.live[name]

    def _notify(self, events: Sequence[TargetStateChanged]) -> None:
        if events:
            for observer in self.observers:
                observer(events)
