"""Requests in flight to a deregistered target, cut when its deregistration delay ends.

ALB lets a draining target finish what it has for ``deregistration_delay`` seconds; a request
still with it then gets a 502 (load-balancer-troubleshooting.md, "HTTP 502": "the
deregistration delay period elapsed for a request being handled by a target that was
deregistered"), and a response or WebSocket tunnel already under way loses its connection.
The forward action runs each exchange in a cancel scope opened here; the runtime's health
events (this is one of its observers) say when a target's time is up.
"""

from __future__ import annotations

from collections.abc import Sequence

import trio

from balancer.health import TargetDeregistered, TargetStateChanged

_Key = tuple[str, str]  # (target group, target id)


class DrainCutoffs:
    """The cancel scopes of the exchanges in flight, per target group and target."""

    __slots__ = ("_scopes",)

    def __init__(self) -> None:
        self._scopes: dict[_Key, set[trio.CancelScope]] = {}

    def open(self, group: str, target_id: str) -> trio.CancelScope:
        """A scope for one exchange with the target; :meth:`close` it when the exchange ends."""
        scope = trio.CancelScope()
        self._scopes.setdefault((group, target_id), set()).add(scope)
        return scope

    def close(self, group: str, target_id: str, scope: trio.CancelScope) -> None:
        key = (group, target_id)
        scopes = self._scopes.get(key)
        if scopes is not None:
            scopes.discard(scope)
            if not scopes:
                del self._scopes[key]

    def on_events(self, events: Sequence[TargetStateChanged]) -> None:
        """A runtime observer: a target that left at its deadline (not early, when idle)
        takes the exchanges still in flight with it."""
        for event in events:
            if isinstance(event, TargetDeregistered) and not event.early:
                for scope in self._scopes.pop((event.target_group, event.target_id), ()):
                    scope.cancel()

    def __len__(self) -> int:
        return sum(len(scopes) for scopes in self._scopes.values())
