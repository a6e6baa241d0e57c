"""Requests in flight to a deregistered target, cut when its deregistration delay ends.

ALB lets a draining target finish what it has for ``deregistration_delay`` seconds; a request
still with it then gets a 502 (load-balancer-troubleshooting.md, "HTTP 502": "the
deregistration delay period elapsed for a request being handled by a target that was
deregistered"), and a response or WebSocket tunnel already under way loses its connection.

The forward action registers each exchange with its target here; the runtime's health events
(this is one of its observers) say when a target's time is up, and its exchanges are marked
and their request's own scope (``Exchange.guard``) cancelled, so that the HTTP shell answers
them as it answers a timeout. No scope of its own per request: entering a trio cancel scope
costs more than the rest of this bookkeeping many times over.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import trio

from balancer.health import TargetDeregistered, TargetStateChanged

_Key = tuple[str, str]  # (target group, target id)


class Cuttable(Protocol):
    """What an exchange offers: the scope of its request, and the mark it is cut with."""

    guard: trio.CancelScope
    cut_off: bool


class DrainCutoffs:
    """The exchanges in flight, per target group and target."""

    __slots__ = ("_exchanges",)

    def __init__(self) -> None:
        self._exchanges: dict[_Key, set[Cuttable]] = {}

    def track(self, group: str, target_id: str, exchange: Cuttable) -> None:
        """An exchange with the target began; :meth:`untrack` it when it ends."""
        key = (group, target_id)
        exchanges = self._exchanges.get(key)
        if exchanges is None:
            exchanges = self._exchanges[key] = set()
        exchanges.add(exchange)

    def untrack(self, group: str, target_id: str, exchange: Cuttable) -> None:
        # A target's set stays while it is registered (no set made and dropped per request);
        # its departure removes it.
        exchanges = self._exchanges.get((group, target_id))
        if exchanges is not None:
            exchanges.discard(exchange)

    def on_events(self, events: Sequence[TargetStateChanged]) -> None:
        """A runtime observer: a target that left at its deadline (not early, when idle)
        takes the exchanges still in flight with it."""
        for event in events:
            if not isinstance(event, TargetDeregistered):
                continue
            key = (event.target_group, event.target_id)
            if event.early:  # it went idle: nothing to cut, and its (empty) set can go
                if not self._exchanges.get(key):
                    self._exchanges.pop(key, None)
                continue
            for exchange in self._exchanges.pop(key, ()):
                exchange.cut_off = True
                exchange.guard.cancel()

    def __len__(self) -> int:
        return sum(len(exchanges) for exchanges in self._exchanges.values())
