"""How fast one core runs Python right now: the same fixed loop, timed on that core.

A VM's cores do not keep one speed: on some of the VMs the bench figures come from, this
loop took 62 ms one minute and 105 ms a few minutes later (the hypervisor's steal, other
guests on the same cores, frequency). The benchmarks record it before and after each measured
run, so a ratio between two runs can be read against how far their probes agree.
"""

from __future__ import annotations

import os
import time

LOOPS = 300_000


def speed_ms(core: int) -> float | None:
    """Milliseconds the loop takes on ``core`` (best of 3); None where affinity is unknown."""
    try:
        mine = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {core})
    except (AttributeError, OSError):
        return None
    try:
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            total = 0
            for i in range(LOOPS):
                total += i * i
            best = min(best, time.perf_counter() - started)
    finally:
        os.sched_setaffinity(0, mine)
    return round(best * 1e3, 2)
