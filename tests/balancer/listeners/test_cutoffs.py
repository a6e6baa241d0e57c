"""Which exchanges a target's departure cuts: those in flight with it, at its deadline only."""

from __future__ import annotations

import trio

from balancer.health import Reason, TargetDeregistered, TargetState
from balancer.listeners.cutoffs import DrainCutoffs


class FakeExchange:
    def __init__(self) -> None:
        self.guard = trio.CancelScope()
        self.cut_off = False


def gone(target: str, *, early: bool, group: str = "web") -> TargetDeregistered:
    return TargetDeregistered(
        target,
        10.0,
        TargetState.DRAINING,
        TargetState.UNUSED,
        Reason.NOT_REGISTERED,
        early,
        target_group=group,
    )


async def test_the_deadline_cuts_that_targets_exchanges_only() -> None:
    cutoffs = DrainCutoffs()
    a1, a2, b, elsewhere = FakeExchange(), FakeExchange(), FakeExchange(), FakeExchange()
    cutoffs.track("web", "a:80", a1)
    cutoffs.track("web", "a:80", a2)
    cutoffs.track("web", "b:80", b)
    cutoffs.track("api", "a:80", elsewhere)  # the same target in another group drains alone
    cutoffs.on_events([gone("a:80", early=True)])  # idle: nothing was in flight to cut
    assert not any(x.guard.cancel_called for x in (a1, a2, b, elsewhere))
    cutoffs.on_events([gone("a:80", early=False)])
    assert (a1.cut_off, a1.guard.cancel_called, a2.cut_off, a2.guard.cancel_called) == (
        True,
        True,
        True,
        True,
    )
    assert not b.cut_off
    assert not elsewhere.guard.cancel_called
    assert len(cutoffs) == 2


async def test_finished_exchanges_are_forgotten() -> None:
    cutoffs = DrainCutoffs()
    exchange = FakeExchange()
    cutoffs.track("web", "a:80", exchange)
    cutoffs.untrack("web", "a:80", exchange)
    cutoffs.untrack("web", "a:80", exchange)  # twice, or after the deadline took it: no error
    assert len(cutoffs) == 0
    cutoffs.on_events([gone("a:80", early=True)])  # idle and gone: its set goes too
    assert cutoffs._exchanges == {}
    cutoffs.on_events([gone("a:80", early=False)])
    assert not exchange.cut_off
    assert not exchange.guard.cancel_called
