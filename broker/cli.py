"""Entry point of ``wharf-broker``.

``check-config`` reads the files the configuration names as the start does
(:func:`check_files`): the credentials file, the API's certificate and key, the encryption
key file, the configured SNS signing key and certificate and the CA file of HTTP/S
deliveries. A file the broker would refuse to start or reload with fails the check with the
start's message. What lives in the data directory (the store, the generated keys) is the
broker's state, not configuration, and is left alone: the check never opens the store nor
generates a key.
"""

from __future__ import annotations

import argparse
import gc
import os
import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from broker import backup
from broker.app import build, check_sns_files, credentials_of, data_directory, keyring_of
from broker.config import BrokerConfig
from broker.store.base import StoreError
from broker.store.sealing import exposure
from broker.store.sqlite import FILE_NAME
from broker.store.sqlite_backup import StoreSummary
from broker.tls import server_tls, validity_message
from monitoring.cli import Command
from monitoring.cli import main as run_cli
from monitoring.configfile import ConfigError
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


EXIT_FAILED: Final = 2


def _describe(summary: StoreSummary) -> str:
    return (
        f"{summary.queues} queues, {summary.messages} messages, {summary.topics} topics, "
        f"{summary.subscriptions} subscriptions, {summary.bytes} bytes, "
        f"schema version {summary.schema_version}"
    )


def _data_dir_argument(parser: argparse.ArgumentParser, *, guesses: bool = True) -> None:
    default = (
        "default: as `serve` resolves it (storage.data_dir, else $STATE_DIRECTORY, else "
        "./wharf-data)"
        if guesses
        else "default: storage.data_dir, else $STATE_DIRECTORY; never a guess (./wharf-data)"
    )
    parser.add_argument("--data-dir", type=Path, help=f"the broker's data directory; {default}")


def _data_dir(args: argparse.Namespace, config: BrokerConfig) -> Path:
    return Path(args.data_dir) if args.data_dir else data_directory(config.storage.data_dir)


def _backup_arguments(parser: argparse.ArgumentParser) -> None:
    _data_dir_argument(parser)
    parser.add_argument("destination", type=Path, help="a new (or empty) directory")


def _run_backup(args: argparse.Namespace, config: BrokerConfig) -> int:
    data_dir = _data_dir(args, config)
    try:
        summary = backup.backup(data_dir, args.destination)
    except (StoreError, OSError) as error:
        print(f"backup failed: {error}", file=sys.stderr)
        return EXIT_FAILED
    print(f"backed up {data_dir} to {args.destination}: {_describe(summary)}")
    for name in backup.outside_files(config):
        print(f"not in the backup, keep it yourself: {name}")
    return 0


def _restore_arguments(parser: argparse.ArgumentParser) -> None:
    _data_dir_argument(parser, guesses=False)
    parser.add_argument("source", type=Path, help="a directory `wharf-broker backup` wrote")


def _run_restore(args: argparse.Namespace, config: BrokerConfig) -> int:
    if not (args.data_dir or config.storage.data_dir or os.environ.get("STATE_DIRECTORY")):
        # The fallback ./wharf-data is right for a broker started by hand in this directory
        # and wrong for the service's (systemd's StateDirectory): do not guess.
        print(
            "restore failed, nothing changed: say which data directory to restore into: "
            "--data-dir DIR (the systemd unit's is /var/lib/wharf-broker)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    data_dir = _data_dir(args, config)
    try:
        summary, aside = backup.restore(data_dir, args.source)
    except (StoreError, OSError) as error:
        print(f"restore failed, nothing changed: {error}", file=sys.stderr)
        return EXIT_FAILED
    print(f"restored {args.source} into {data_dir}: {_describe(summary)}")
    if aside is not None:
        print(f"the files it replaced are in {aside}")
    _warn_of_unopenable_messages(data_dir, config, configured=args.config is not None)
    return 0


def _warn_of_unopenable_messages(data_dir: Path, config: BrokerConfig, *, configured: bool) -> None:
    """Say, before the broker starts, which restored messages its key file cannot open.

    Without ``--config`` there is no key file to judge by (the built-in defaults name none):
    a note says the sealed messages were not checked, rather than warn of every one."""
    where = f"{config.storage.key_file}: " if config.storage.key_file else ""
    if not configured:
        try:
            sealed = backup.unopenable_keys(data_dir / FILE_NAME, None)
        except sqlite3.Error:
            return
        if sealed:
            print(
                "note: the restored store holds messages sealed at rest; without --config "
                "the key file that must open them was not checked (restore with --config, "
                "or start the broker with the key file that sealed them)",
                file=sys.stderr,
            )
        return
    try:
        problems = backup.unopenable_keys(data_dir / FILE_NAME, keyring_of(config))
    except ConfigError as error:
        problems = [f"the key file cannot be read: {error}"]
    except sqlite3.Error as error:
        problems = [f"the restored store's keys could not be checked: {error}"]
    for problem in problems:
        print(
            f"warning: {where}{problem}: they cannot be received until the key file "
            "lists their key (as it was when they were sent); fix it before starting",
            file=sys.stderr,
        )


COMMANDS: Final = (
    Command(
        "backup",
        "copy the store and its keys into a new directory (while the broker runs)",
        _backup_arguments,
        _run_backup,
    ),
    Command(
        "restore",
        "put a backup in place of the data directory's store (the broker must be stopped)",
        _restore_arguments,
        _run_restore,
    ),
)


def check_files(config: BrokerConfig, path: Path) -> None:
    """Read the files ``config`` names with the functions the start and reload use.

    Raises:
        ConfigError: naming the file and the reason, as the start does.
    """
    credentials_of(config)
    if config.api.tls.enabled:
        _, certificate = server_tls(config.api.tls)
        warning = validity_message(certificate, time.time())
        if warning is not None:
            print(warning, file=sys.stderr)  # the start logs it too, and serves it
    keyring_of(config)
    reason = exposure(config.storage.key_file) if config.storage.key_file else None
    if reason is not None:  # the start logs it too, and uses the keys
        print(
            f"{config.storage.key_file}: warning: the key file of storage.key_file is open to "
            f"others: {reason}; chmod 0600 it",
            file=sys.stderr,
        )
    check_sns_files(config)


def main(argv: Sequence[str] | None = None) -> int:
    tune_gc()
    return run_cli(SPEC, argv, COMMANDS, check=check_files)


if __name__ == "__main__":
    sys.exit(main())
