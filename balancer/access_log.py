"""ALB's access log: one line per request, in ALB's field order, to a file or stderr.

The format is ALB's (load-balancer-access-logs.md) so the parsers people already run on ALB
logs (Athena's table definition, Splunk, Sumo) read ours unchanged::

    type time elb client:port target:port request_processing_time target_processing_time
    response_processing_time elb_status_code target_status_code received_bytes sent_bytes
    "request" "user_agent" ssl_cipher ssl_protocol target_group_arn "trace_id"
    "domain_name" "chosen_cert_arn" matched_rule_priority request_creation_time
    "actions_executed" "redirect_url" "error_reason" "target:port_list"
    "target_status_code_list" "classification" "classification_reason" conn_trace_id

``conn_trace_id`` is ALB's connection traceability ID (``TID_`` and 32 hex digits, not
quoted): one per client connection, the same on the line of every request it carried.
``elb`` is ``app/<listener name>``, ``target_group_arn`` the target group's name. Unknown
values are ``-``; times are seconds with millisecond precision, ``-1`` when the request was
never dispatched. Quoted fields escape ``"``, ``\\`` and every control character, so a
hostile user agent can neither end a field nor start a new line.

Off by default (``access_log.enabled``). Lines are buffered and flushed by the app's
timer and at shutdown rather than per request, so the log costs a write syscall per batch.

A write that fails (a full disk: ENOSPC; a file system gone read-only) loses the lines it
held but never fails a request. It is counted per destination (:meth:`AccessLogs.statistics`,
exported as ``wharf_balancer_access_log_write_errors_total``) and logged as
``access_log.write_failed``, at most once a minute per destination: a full disk fails every
flush, once a second.
"""

from __future__ import annotations

import datetime
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Final

from balancer.config import AccessLog
from monitoring.logging import EventLog
from monitoring.throttle import Throttle

UNKNOWN: Final = "-"
# At most one access_log.write_failed warning per destination in this many seconds; the
# counter counts every failure.
WRITE_FAILED_WARNING_SECONDS: Final = 60.0
_ESCAPES: Final = {i: f"\\x{i:02x}" for i in (*range(0x20), 0x7F)} | {
    ord('"'): '\\"',
    ord("\\"): "\\\\",
}
MAX_USER_AGENT_CHARS: Final = 8192  # ALB truncates at 8 KB


def quote(value: str | None) -> str:
    """A quoted field: ``"-"`` for nothing, otherwise escaped so it stays one field."""
    if not value:
        return '"-"'
    return '"' + value.translate(_ESCAPES) + '"'


def iso_time(epoch: float) -> str:
    """``2018-07-02T22:23:00.186641Z``: UTC with microseconds, as ALB writes it."""
    moment = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def seconds(value: float | None) -> str:
    return "-1" if value is None or value < 0 else f"{value:.3f}"


@dataclass(slots=True, kw_only=True)
class AccessEntry:
    """The facts of one request, as the listener gathered them."""

    type: str = "http"  # http, https, ws, wss
    time: float  # wall clock when the response was complete
    elb: str  # the listener's name
    client_ip: str
    client_port: int
    target: str | None = None  # ip:port
    request_processing_time: float | None = None
    target_processing_time: float | None = None
    response_processing_time: float | None = None
    elb_status_code: int | None = None
    target_status_code: int | None = None
    received_bytes: int = 0
    sent_bytes: int = 0
    request: str = ""  # METHOD scheme://host:port/uri HTTP/x.y
    user_agent: str | None = None
    ssl_cipher: str = UNKNOWN
    ssl_protocol: str = UNKNOWN
    target_group: str | None = None
    trace_id: str | None = None
    domain_name: str | None = None
    chosen_cert: str | None = None
    # 0 for the default action, -1 for an error while evaluating rules; None (``-``) when
    # the rules were never evaluated (a malformed or refused request), as ALB writes.
    matched_rule_priority: int | None = None
    request_creation_time: float = 0.0
    actions_executed: str | None = None
    redirect_url: str | None = None
    error_reason: str | None = None
    classification: str | None = None
    classification_reason: str | None = None
    conn_trace_id: str | None = None  # the client connection's TID_<hex>


def format_entry(entry: AccessEntry) -> str:
    """One access log line (without the newline)."""
    client = _address(entry.client_ip, entry.client_port)
    target_status = UNKNOWN if entry.target_status_code is None else str(entry.target_status_code)
    user_agent = entry.user_agent[:MAX_USER_AGENT_CHARS] if entry.user_agent else None
    fields = [
        entry.type,
        iso_time(entry.time),
        f"app/{entry.elb}",
        client,
        entry.target or UNKNOWN,
        seconds(entry.request_processing_time),
        seconds(entry.target_processing_time),
        seconds(entry.response_processing_time),
        UNKNOWN if entry.elb_status_code is None else str(entry.elb_status_code),
        target_status,
        str(entry.received_bytes),
        str(entry.sent_bytes),
        quote(entry.request),
        quote(user_agent),
        entry.ssl_cipher,
        entry.ssl_protocol,
        entry.target_group or UNKNOWN,
        quote(entry.trace_id),
        quote(entry.domain_name),
        quote(entry.chosen_cert),
        UNKNOWN if entry.matched_rule_priority is None else str(entry.matched_rule_priority),
        iso_time(entry.request_creation_time),
        quote(entry.actions_executed),
        quote(entry.redirect_url),
        quote(entry.error_reason),
        quote(entry.target),
        quote(None if entry.target is None else target_status),
        quote(entry.classification),
        quote(entry.classification_reason),
        entry.conn_trace_id or UNKNOWN,
    ]
    return " ".join(fields)


def _address(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


# Told of each failed write or flush: the destination and the error.
FailureHandler = Callable[[str, OSError | ValueError], None]


def _open_for_appending(path: str) -> IO[str]:
    """Open an access log for appending, never waiting: O_NONBLOCK makes a FIFO that no
    process reads fail the open (ENXIO, so the start or reload is refused naming the file)
    instead of freezing the event loop until a reader comes, and makes a full pipe a failed
    write (counted, its lines lost) instead of a stall. A regular file ignores the flag."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC
    descriptor = os.open(path, flags, 0o644)
    try:
        return open(descriptor, "a", encoding="utf-8", buffering=1 << 16)
    except BaseException:
        os.close(descriptor)
        raise


class AccessLogWriter:
    """Buffered lines to one destination (``stderr`` or an absolute file path).

    Args:
        destination: ``stderr`` or the file's path (opened for appending).
        on_failure: told of every write or flush that failed (the lines it held are lost).

    Raises:
        OSError: the file cannot be opened.
    """

    def __init__(self, destination: str, on_failure: FailureHandler | None = None) -> None:
        self.destination = destination
        self._on_failure = on_failure
        self._stream: IO[str]
        if destination == "stderr":
            self._stream = sys.stderr
            self._owned = False
        else:
            self._stream = _open_for_appending(destination)
            self._owned = True

    def write(self, entry: AccessEntry) -> None:
        try:
            self._stream.write(format_entry(entry) + "\n")
        except (OSError, ValueError) as exc:  # a full disk must not fail requests
            self._failed(exc)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except (OSError, ValueError) as exc:
            self._failed(exc)

    def _failed(self, exc: OSError | ValueError) -> None:
        if self._on_failure is not None:
            self._on_failure(self.destination, exc)

    def reopen(self) -> None:
        """Write to a fresh open of the path from now on (logrotate moved the file away).

        Raises:
            OSError: the path cannot be opened; the writer keeps its open file.
        """
        if not self._owned:
            return
        fresh = _open_for_appending(self.destination)
        stale, self._stream = self._stream, fresh
        self._close(stale)

    def close(self) -> None:
        if self._owned:
            self._close(self._stream)
        else:
            self.flush()

    def _close(self, stream: IO[str]) -> None:
        try:
            stream.close()  # flushes first; the file is closed even when that fails
        except (OSError, ValueError) as exc:
            self._failed(exc)


class AccessLogs:
    """One writer per destination, shared by the listeners that log there.

    Args:
        log: where failed writes are reported (``access_log.write_failed``, rate-limited).
        clock: monotonic seconds, for the rate limit.
    """

    def __init__(
        self, log: EventLog | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._writers: dict[str, AccessLogWriter] = {}
        self._log = log
        # Per destination ever opened: failed writes and flushes (kept when a reload drops
        # the destination: a counter never goes backwards).
        self._write_errors: dict[str, int] = {}
        self._warnings = Throttle(WRITE_FAILED_WARNING_SECONDS, clock)  # per destination

    def get(self, settings: AccessLog) -> AccessLogWriter | None:
        """The writer for a listener's settings, or None when its log is off.

        Raises:
            OSError: the file cannot be opened (config load or reload reports it).
        """
        if not settings.enabled:
            return None
        writer = self._writers.get(settings.destination)
        if writer is None:
            writer = AccessLogWriter(settings.destination, self._write_failed)
            self._writers[settings.destination] = writer
            self._write_errors.setdefault(settings.destination, 0)
        return writer

    def reopen_all(self) -> dict[str, OSError]:
        """Open every file again (logrotate moved them away: ``mv`` and SIGHUP rotate the
        log, as nginx's reopen does).

        Returns:
            The destinations that could not be opened, with the error; their writers keep
            their open file.
        """
        failed: dict[str, OSError] = {}
        for destination, writer in self._writers.items():
            try:
                writer.reopen()
            except OSError as exc:
                failed[destination] = exc
        return failed

    def statistics(self) -> dict[str, int]:
        """Failed writes and flushes per destination opened since start (from 0)."""
        return dict(self._write_errors)

    def _write_failed(self, destination: str, exc: OSError | ValueError) -> None:
        errors = self._write_errors[destination] = self._write_errors.get(destination, 0) + 1
        if self._warnings.admit(destination) is None:
            return
        if self._log is not None:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self._log.warning(
                "access_log.write_failed", destination=destination, error=reason, errors=errors
            )

    def flush(self) -> None:
        for writer in self._writers.values():
            writer.flush()

    def retain(self, destinations: set[str]) -> None:
        """Close writers no listener uses any more (after a reload)."""
        for destination in list(self._writers):
            if destination not in destinations:
                self._writers.pop(destination).close()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
