"""Entry point of ``wharf-balancer``."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from balancer.app import build
from balancer.config import BalancerConfig
from monitoring.cli import main as run_cli
from monitoring.lifecycle import DaemonSpec
from monitoring.version import VERSION

SPEC = DaemonSpec(name="balancer", schema=BalancerConfig, build=build, version=VERSION)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(SPEC, argv)


if __name__ == "__main__":
    sys.exit(main())
