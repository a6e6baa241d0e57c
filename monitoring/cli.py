"""The command line both daemons share: ``serve``, ``check-config``, ``config-schema``.

``wharf-broker`` with no arguments serves on the built-in defaults, which is what a newcomer
runs first; under systemd the unit passes ``serve --config /etc/wharf/<daemon>.toml``. A
daemon adds its own commands (the broker's ``backup`` and ``restore``) as :class:`Command`s:
each gets ``--config`` and the loaded configuration like ``serve`` does.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from monitoring.configfile import ConfigError, json_schema, load
from monitoring.lifecycle import Daemon, DaemonFailed, DaemonSpec, StartupError
from monitoring.sdnotify import Notifier

EXIT_OK = 0
EXIT_CONFIG = 1
EXIT_START = 1  # the reason is printed; systemd's Restart=on-failure tries again
EXIT_FAILED = 1  # stopped itself (Frame.fail); restarted likewise


@dataclass(frozen=True)
class Command:
    """A daemon's own command: ``run(arguments, config)`` returns the exit code."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, Any], int]


def main(
    spec: DaemonSpec[Any], argv: Sequence[str] | None = None, commands: Sequence[Command] = ()
) -> int:
    """Run the CLI of the daemon ``spec`` describes; returns the process exit code."""
    parser = argparse.ArgumentParser(prog=f"wharf-{spec.name}")
    parser.add_argument("--version", action="version", version=f"%(prog)s {spec.version}")
    subparsers = parser.add_subparsers(dest="command")
    serve = subparsers.add_parser("serve", help="run the daemon in the foreground (default)")
    serve.add_argument("--config", type=Path, help="TOML file; built-in defaults when omitted")
    check = subparsers.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("file", type=Path)
    subparsers.add_parser("config-schema", help="print the configuration's JSON Schema")
    for command in commands:
        own = subparsers.add_parser(command.name, help=command.help)
        own.add_argument("--config", type=Path, help="TOML file; built-in defaults when omitted")
        command.add_arguments(own)
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
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    for command in commands:
        if command.name == args.command:
            return command.run(args, config)
    try:
        # Building the app reads the files the config names (credentials, keys).
        daemon = Daemon(spec, config, config_path=config_path, notifier=Notifier.from_environ())
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    try:
        trio.run(_serve, daemon)
    except KeyboardInterrupt:  # a second Ctrl-C while draining: give up on the grace period
        return 130
    except StartupError as error:
        print(f"wharf-{spec.name}: cannot start: {error}", file=sys.stderr)
        return EXIT_START
    except DaemonFailed as error:
        print(f"wharf-{spec.name}: stopped: {error}", file=sys.stderr)
        return EXIT_FAILED
    except BaseExceptionGroup as group:
        failed, others = group.split(StartupError)
        if failed is None or others is not None:
            raise
        print(f"wharf-{spec.name}: cannot start: {_first(failed)}", file=sys.stderr)
        return EXIT_START
    return EXIT_OK


def _first(group: BaseExceptionGroup[StartupError]) -> BaseException:
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


async def _serve(daemon: Daemon[Any]) -> None:
    await daemon.run(handle_signals=True)
