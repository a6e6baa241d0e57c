"""Entry point of ``wharf-broker``."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from broker.app import build
from broker.config import BrokerConfig
from monitoring.cli import main as run_cli
from monitoring.lifecycle import DaemonSpec
from monitoring.version import VERSION

SPEC = DaemonSpec(name="broker", schema=BrokerConfig, build=build, version=VERSION)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(SPEC, argv)


if __name__ == "__main__":
    sys.exit(main())
