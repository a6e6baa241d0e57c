"""Entry point of ``wharf-broker``."""

from __future__ import annotations

import gc
import sys
from collections.abc import Sequence
from typing import Final

from broker.app import build
from broker.config import BrokerConfig
from monitoring.cli import main as run_cli
from monitoring.lifecycle import DaemonSpec
from monitoring.version import VERSION

SPEC = DaemonSpec(name="broker", schema=BrokerConfig, build=build, version=VERSION)
# The cyclic GC's youngest generation is collected every 700 net allocations by default. A
# Publish to 100 queues allocates ~2,000 objects that live until its commit, so collections
# ran several times per publish and traversed them; at 20,000 the broker spent ~13 % less CPU
# per such publish (bench/README.md, SNS). Older generations keep their default ratios.
GC_THRESHOLDS: Final = (20_000, 10, 10)


def tune_gc() -> None:
    """Collect the youngest generation less often (the broker allocates in bursts)."""
    gc.set_threshold(*GC_THRESHOLDS)


def main(argv: Sequence[str] | None = None) -> int:
    tune_gc()
    return run_cli(SPEC, argv)


if __name__ == "__main__":
    sys.exit(main())
