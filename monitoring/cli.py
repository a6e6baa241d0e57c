"""The command line both daemons share: ``serve``, ``check-config``, ``config-schema``.

``wharf-broker`` with no arguments serves on the built-in defaults, which is what a newcomer
runs first; under systemd the unit passes ``serve --config /etc/wharf/<daemon>.toml``. A
daemon adds its own commands (the broker's ``backup`` and ``restore``) as :class:`Command`s:
each gets ``--config`` and the loaded configuration like ``serve`` does.

``check-config`` decodes the file, then runs the daemon's :data:`FileCheck`: the part of the
start that reads the files the configuration names (certificates, keys, credentials), with the
functions the start and reload use, so that what the daemon would refuse to start or reload
with fails the check with the same message. It binds nothing and writes nothing.

A ``serve`` that cannot start (a configuration file that does not load, a file the app
cannot read, an address in use) prints one line, ``wharf-<daemon>: cannot start: <reason>``,
logs ``event=daemon.start_failed``, sends ``STATUS=cannot start: <reason>`` to the service
manager (a supervisor of several worker processes reads it there: :mod:`balancer.workers`)
and exits 1. A supervised worker (``supervised``) logs and sends it but prints nothing: its
supervisor prints the one line, so that several workers do not repeat it.

A second Ctrl-C during the drain cuts it short; the exit status is then 130.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from monitoring.admin import read_admin_token
from monitoring.configfile import ConfigError, json_schema, load
from monitoring.lifecycle import Daemon, DaemonFailed, DaemonSpec, StartupError
from monitoring.logging import EventLog, is_journal_stream
from monitoring.sdnotify import Notifier, one_line

EXIT_OK = 0
EXIT_CONFIG = 1
EXIT_START = 1  # the reason is printed; systemd's Restart=on-failure tries again
EXIT_FAILED = 1  # stopped itself (Frame.fail); restarted likewise
# A second Ctrl-C cut the drain short: what a shell reports for a process SIGINT ended.
EXIT_INTERRUPTED = 128 + 2
# Said when a file with no keys is refused: what the operator may have meant by it.
EMBEDDED_DEFAULTS_HINT = "run without --config for the embedded defaults"
# The STATUS= a daemon that cannot start sends before it exits, followed by the reason.
START_FAILED_STATUS = "cannot start: "
STATUS_MAX_BYTES = 3000  # a notification is one datagram (a supervisor reads up to 4 KiB)

# check-config's look at the files a loaded configuration names, as the start reads them:
# ``check(config, path)`` raises ConfigError (naming the file, the key and the reason).
FileCheck = Callable[[Any, Path], None]


@dataclass(frozen=True)
class Command:
    """A daemon's own command: ``run(arguments, config)`` returns the exit code."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, Any], int]


def main(
    spec: DaemonSpec[Any],
    argv: Sequence[str] | None = None,
    commands: Sequence[Command] = (),
    check: FileCheck | None = None,
    log_fields: Mapping[str, object] | None = None,
    supervised: bool = False,
) -> int:
    """Run the CLI of the daemon ``spec`` describes; returns the process exit code.

    Args:
        commands: the daemon's own commands.
        check: what ``check-config`` runs on a file that decoded (see :data:`FileCheck`).
        log_fields: added to every event the daemon logs (a balancer worker's index: its
            lines share one journal with its siblings').
        supervised: this process is one worker of a supervisor that reads its ``STATUS=``
            and prints the ``cannot start`` line itself; the worker does not print it.
    """
    say_cannot_start = not supervised
    parser = argparse.ArgumentParser(prog=f"wharf-{spec.name}")
    parser.add_argument("--version", action="version", version=f"%(prog)s {spec.version}")
    subparsers = parser.add_subparsers(dest="command")
    serve = subparsers.add_parser("serve", help="run the daemon in the foreground (default)")
    serve.add_argument("--config", type=Path, help="TOML file; built-in defaults when omitted")
    checking = subparsers.add_parser("check-config", help="validate a configuration file and exit")
    checking.add_argument("file", type=Path)
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
            checked = load(args.file, spec.schema, empty_hint=EMBEDDED_DEFAULTS_HINT)
            read_admin_token(checked.admin)  # the start reads it as it opens the admin port
            if check is not None:
                check(checked, args.file)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return EXIT_CONFIG
        print(f"{args.file}: ok")
        return EXIT_OK

    config_path: Path | None = getattr(args, "config", None)
    try:
        config = (
            load(config_path, spec.schema, empty_hint=EMBEDDED_DEFAULTS_HINT)
            if config_path
            else spec.schema()
        )
    except ConfigError as exc:
        if args.command not in (None, "serve"):
            print(exc, file=sys.stderr)
            return EXIT_CONFIG
        # The file's own level is unknown: the default one, which shows errors.
        log = EventLog(spec.name).bind(**(log_fields or {}))
        return _cannot_start(spec, Notifier.from_environ(), str(exc), say=say_cannot_start, log=log)
    for command in commands:
        if command.name == args.command:
            return command.run(args, config)
    notifier = Notifier.from_environ()
    log = EventLog(spec.name, level=config.logging.level).bind(**(log_fields or {}))
    try:
        # Building the app reads the files the config names (credentials, keys).
        daemon = Daemon(spec, config, config_path=config_path, notifier=notifier, log=log)
    except ConfigError as exc:
        # Daemon.run logs its own start failures; this one came before it could.
        return _cannot_start(spec, notifier, str(exc), say=say_cannot_start, log=log)
    try:
        trio.run(_serve, daemon)
    except KeyboardInterrupt:  # Ctrl-C before the daemon listens for signals, or after
        return EXIT_INTERRUPTED
    except StartupError as error:
        return _cannot_start(spec, notifier, str(error), say=say_cannot_start)
    except DaemonFailed as error:
        _say_error(f"wharf-{spec.name}: stopped: {error}")
        return EXIT_FAILED
    except BaseExceptionGroup as group:
        failed, others = group.split(StartupError)
        if failed is None or others is not None:
            raise
        return _cannot_start(spec, notifier, str(_first(failed)), say=say_cannot_start)
    return EXIT_INTERRUPTED if daemon.drain_cut_short else EXIT_OK


def _cannot_start(
    spec: DaemonSpec[Any],
    notifier: Notifier,
    reason: str,
    *,
    say: bool,
    log: EventLog | None = None,
) -> int:
    """Say in one line why the daemon cannot start, on stderr (when ``say``) and to the
    service manager; and in the log (``log``: the failure came before Daemon.run, which logs
    its own)."""
    if log is not None:
        log.error("daemon.start_failed", reason=reason)
    if say:
        _say_error(f"wharf-{spec.name}: cannot start: {reason}")
    _report_start_failure(notifier, reason)
    return EXIT_START


def _say_error(line: str) -> None:
    """One line on stderr, which journald files at error priority, as the log's errors.

    Whitespace runs (newlines in a quoted key) become one space, and surrogates (a path of
    non-UTF-8 bytes) are escaped: whatever stream stderr is, the line goes out whole."""
    escaped = one_line(line).encode(errors="backslashreplace").decode()
    print(("<3>" if is_journal_stream(sys.stderr) else "") + escaped, file=sys.stderr)


def _report_start_failure(notifier: Notifier, reason: str) -> None:
    # A path of non-UTF-8 bytes arrives as surrogates: escaped, never raised.
    escaped = one_line(reason).encode(errors="backslashreplace")
    notifier.status(START_FAILED_STATUS + escaped[:STATUS_MAX_BYTES].decode(errors="ignore"))
    notifier.close()


def _first(group: BaseExceptionGroup[StartupError]) -> BaseException:
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


async def _serve(daemon: Daemon[Any]) -> None:
    await daemon.run(handle_signals=True)
