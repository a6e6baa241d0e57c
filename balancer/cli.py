"""Entry point of ``wharf-balancer``.

``check-config`` goes as far as the start does short of binding sockets and starting tasks
(:func:`check_files`): the settings several workers cannot share, the stickiness keys, the
certificates and keys of every https listener (each pair loaded into its TLS contexts, as
the start and every reload do), and the runtime compiled from them. A file the daemon would
refuse to start or reload with fails the check with the message the start would give.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

from balancer.app import build, read_keys
from balancer.config import BalancerConfig
from balancer.peers import check_workers, current_worker
from balancer.runtime import Runtime
from balancer.tls import build_all, certificate_warnings
from balancer.workers import supervise_from_argv
from monitoring.cli import main as run_cli
from monitoring.configfile import ConfigError
from monitoring.lifecycle import DaemonSpec
from monitoring.version import VERSION

SPEC = DaemonSpec(name="balancer", schema=BalancerConfig, build=build, version=VERSION)


def check_files(config: BalancerConfig, path: Path) -> None:
    """What the start builds from the files ``config`` names, without serving anything.

    The state file of the targets API (``state_dir/targets.json``) is the daemon's own state,
    not configuration, and access log files are not opened (opening one creates it, and a
    check run as root would leave a file the daemon cannot write). A certificate outside its
    validity period is a warning on stderr, not a failure, as at the start.

    Raises:
        ConfigError: as the start and a reload raise it: naming the file, the key and the
            reason.
    """
    check_workers(config, str(path))  # the supervisor's check (workers > 1)
    keys = read_keys(config)  # BalancerApp builds these two at start and at every reload
    tls = build_all(config.listeners)
    for warning in certificate_warnings(tls.values(), time.time()):
        print(warning, file=sys.stderr)  # the start logs it too, and serves the certificate
    try:
        Runtime(config, keys=keys, tls=tls, now=0.0)
    except ValueError as exc:  # as BalancerApp reports it
        raise ConfigError(str(path), f"{exc} - at `$.stickiness.key_files`") from None


def main(argv: Sequence[str] | None = None) -> int:
    # workers > 1: this process supervises worker processes that each run the daemon.
    supervised = supervise_from_argv(argv)
    if supervised is not None:
        return supervised
    # A worker's lines interleave with its siblings' in one journal: each says who wrote it
    # (the supervisor's say role=supervisor).
    worker = current_worker()
    fields = {} if worker is None else {"worker": worker.index}
    return run_cli(SPEC, argv, check=check_files, log_fields=fields, supervised=worker is not None)


if __name__ == "__main__":
    sys.exit(main())
