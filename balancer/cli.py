"""Entry point of ``wharf-balancer``."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from balancer.app import build
from balancer.config import BalancerConfig
from balancer.workers import supervise_from_argv
from monitoring.cli import main as run_cli
from monitoring.lifecycle import DaemonSpec
from monitoring.version import VERSION

SPEC = DaemonSpec(name="balancer", schema=BalancerConfig, build=build, version=VERSION)


def main(argv: Sequence[str] | None = None) -> int:
    # workers > 1: this process supervises worker processes that each run the daemon.
    supervised = supervise_from_argv(argv)
    if supervised is not None:
        return supervised
    return run_cli(SPEC, argv)


if __name__ == "__main__":
    sys.exit(main())
