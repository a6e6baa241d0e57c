"""Which exchanges a target's departure cuts: those in flight with it, at its deadline only."""

from __future__ import annotations

from balancer.health import Reason, TargetDeregistered, TargetState
from balancer.listeners.cutoffs import DrainCutoffs


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
    a1, a2 = cutoffs.open("web", "a:80"), cutoffs.open("web", "a:80")
    b = cutoffs.open("web", "b:80")
    elsewhere = cutoffs.open("api", "a:80")  # the same target in another group drains alone
    cutoffs.on_events([gone("a:80", early=True)])  # idle: nothing was in flight to cut
    assert not any(s.cancel_called for s in (a1, a2, b, elsewhere))
    cutoffs.on_events([gone("a:80", early=False)])
    assert (a1.cancel_called, a2.cancel_called) == (True, True)
    assert not b.cancel_called
    assert not elsewhere.cancel_called
    assert len(cutoffs) == 2


async def test_closed_exchanges_are_forgotten() -> None:
    cutoffs = DrainCutoffs()
    scope = cutoffs.open("web", "a:80")
    cutoffs.close("web", "a:80", scope)
    cutoffs.close("web", "a:80", scope)  # twice, or after the deadline took it: no error
    assert len(cutoffs) == 0
    cutoffs.on_events([gone("a:80", early=False)])
    assert not scope.cancel_called
