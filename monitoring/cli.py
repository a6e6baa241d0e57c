"""The command line both daemons share: ``serve``, ``check-config``, ``config-schema``.

``wharf-broker`` with no arguments serves on the built-in defaults, which is what a newcomer
runs first; under systemd the unit passes ``serve --config /etc/wharf/<daemon>.toml``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from monitoring.configfile import ConfigError, json_schema, load
from monitoring.lifecycle import Daemon, DaemonSpec
from monitoring.sdnotify import Notifier

EXIT_OK = 0
EXIT_CONFIG = 1


def main(spec: DaemonSpec[Any], argv: Sequence[str] | None = None) -> int:
    """Run the CLI of the daemon ``spec`` describes; returns the process exit code."""
    parser = argparse.ArgumentParser(prog=f"wharf-{spec.name}")
    parser.add_argument("--version", action="version", version=f"%(prog)s {spec.version}")
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", help="run the daemon in the foreground (default)")
    serve.add_argument("--config", type=Path, help="TOML file; built-in defaults when omitted")
    check = commands.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("file", type=Path)
    commands.add_parser("config-schema", help="print the configuration's JSON Schema")
    args = parser.parse_args(argv)

    if args.command == "config-schema":
        sys.stdout.write(json_schema(spec.schema).decode() + "\n")
        return EXIT_OK
    if args.command == "check-config":
        try:
            load(args.file, spec.schema)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return EXIT_CONFIG
        print(f"{args.file}: ok")
        return EXIT_OK

    config_path: Path | None = getattr(args, "config", None)
    try:
        config = load(config_path, spec.schema) if config_path else spec.schema()
        # Building the app reads the files the config names (credentials, keys).
        daemon = Daemon(spec, config, config_path=config_path, notifier=Notifier.from_environ())
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    try:
        trio.run(_serve, daemon)
    except KeyboardInterrupt:  # a second Ctrl-C while draining: give up on the grace period
        return 130
    return EXIT_OK


async def _serve(daemon: Daemon[Any]) -> None:
    await daemon.run(handle_signals=True)
