"""Structured logs: one event per line on stderr, in logfmt.

logfmt (``ts=... level=info event=listener.bound name=admin addr=127.0.0.1:9325``) is what
journald shows best: one line per event, grep-able, and parsed by Loki, Vector and
``journalctl -o cat | logfmt``-style tools without a schema. Values that contain spaces, quotes,
``=`` or control characters are quoted with JSON string escaping, so a hostile value (a header
a client sent) can never forge a second line or a second field.

Under systemd, stderr is a stream to journald, which stores every line at the priority of
its ``<N>`` prefix (sd-daemon(3)), else at info: without one, ``journalctl -p warning`` would
show nothing. The prefix is written only when stderr is that stream, as systemd.exec(5) says
to tell: ``$JOURNAL_STREAM`` holds the device and inode of the journal's stream, and they
match the stream's own ``fstat``. Anywhere else (a terminal, a pipe, a file) lines are bare.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import IO, Any, Final, Literal

LevelName = Literal["debug", "info", "warning", "error"]

_LEVELS: Final[Mapping[str, int]] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
_NEEDS_QUOTES: Final = frozenset(' "=\\')
# sd-daemon(3) priority prefixes: LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG.
_JOURNAL_PRIORITIES: Final[Mapping[int, str]] = {
    logging.ERROR: "<3>",
    logging.WARNING: "<4>",
    logging.INFO: "<6>",
    logging.DEBUG: "<7>",
}


def format_value(value: object) -> str:
    """Render one logfmt value, quoting it when a reader could otherwise misparse it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    text = value if isinstance(value, str) else str(value)
    if text and not any(c in _NEEDS_QUOTES or c < " " or c == "\x7f" for c in text):
        return text
    escaped = (
        text.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    escaped = "".join(c if c >= " " and c != "\x7f" else f"\\u{ord(c):04x}" for c in escaped)
    return f'"{escaped}"'


def format_event(level: str, event: str, fields: Mapping[str, object], *, timestamp: float) -> str:
    """Render one event as a logfmt line (without the trailing newline)."""
    seconds = int(timestamp)
    millis = int((timestamp - seconds) * 1000)
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"
    parts = [f"ts={ts}", f"level={level}", f"event={format_value(event)}"]
    parts.extend(f"{key}={format_value(value)}" for key, value in fields.items())
    return " ".join(parts)


def is_journal_stream(stream: IO[str]) -> bool:
    """Whether ``stream`` is the journald stream systemd connected (``$JOURNAL_STREAM``)."""
    expected = os.environ.get("JOURNAL_STREAM")
    if not expected:
        return False
    try:
        status = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        return False
    return expected == f"{status.st_dev}:{status.st_ino}"


class _Settings:
    """The level and stream a logger shares with the children it binds."""

    def __init__(self, level: int, stream: IO[str] | None) -> None:
        self.level = level
        self.stream = stream
        # The stream last written to and whether it is journald's, found once per stream
        # (stderr may be replaced while the logger lives: tests capture it).
        self._checked: tuple[IO[str], bool] | None = None

    def output(self) -> tuple[IO[str], bool]:
        """The stream to write to, and whether its lines take a journald priority prefix."""
        stream = self.stream if self.stream is not None else sys.stderr
        checked = self._checked
        if checked is None or checked[0] is not stream:
            checked = self._checked = (stream, is_journal_stream(stream))
        return checked


class EventLog:
    """A logger that writes ``event`` plus key/value fields, bound to a daemon instance.

    Each daemon instance owns its own ``EventLog`` (no module-level logger state), so two
    daemons in one test process keep their output and levels apart.
    """

    def __init__(
        self,
        daemon: str,
        *,
        level: LevelName = "info",
        stream: IO[str] | None = None,
    ) -> None:
        self._daemon = daemon
        self._settings = _Settings(_LEVELS[level], stream)
        self._bound: dict[str, object] = {}

    def set_level(self, level: LevelName) -> None:
        """Change the level of this logger and of every logger bound from it."""
        self._settings.level = _LEVELS[level]

    def bind(self, **fields: object) -> EventLog:
        """A child logger that adds ``fields`` to every event (shares level and stream)."""
        child = EventLog.__new__(EventLog)
        child._daemon = self._daemon
        child._settings = self._settings
        child._bound = {**self._bound, **fields}
        return child

    def enabled(self, level: LevelName) -> bool:
        return _LEVELS[level] >= self._settings.level

    def _emit(self, level: int, name: str, event: str, fields: Mapping[str, Any]) -> None:
        if level < self._settings.level:
            return
        line = format_event(
            name, event, {"daemon": self._daemon, **self._bound, **fields}, timestamp=time.time()
        )
        stream, to_journal = self._settings.output()
        if to_journal:
            line = _JOURNAL_PRIORITIES[level] + line
        try:
            stream.write(line + "\n")
            stream.flush()
        except (OSError, ValueError):
            # stderr gone (journald restarted, pipe closed): losing a log line must not take
            # the daemon down with it.
            pass

    def debug(self, event: str, **fields: object) -> None:
        self._emit(logging.DEBUG, "debug", event, fields)

    def info(self, event: str, **fields: object) -> None:
        self._emit(logging.INFO, "info", event, fields)

    def warning(self, event: str, **fields: object) -> None:
        self._emit(logging.WARNING, "warning", event, fields)

    def error(self, event: str, **fields: object) -> None:
        self._emit(logging.ERROR, "error", event, fields)

    def exception(self, event: str, exc: BaseException, **fields: object) -> None:
        """Log an error with the exception's type, message and the innermost frame."""
        where = ""
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        if tb is not None:
            where = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}"
        self._emit(
            logging.ERROR,
            "error",
            event,
            {**fields, "error": type(exc).__name__, "message": str(exc), "where": where},
        )
