"""sd_notify(3) over ``$NOTIFY_SOCKET``, without libsystemd.

The protocol is one AF_UNIX datagram of newline-separated ``KEY=value`` assignments. A socket
path starting with ``@`` names the Linux abstract namespace (the ``@`` becomes a NUL byte).
When ``$NOTIFY_SOCKET`` is unset (not run by systemd, or Type=simple) every call is a no-op.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Final

# A datagram send to a local socket does not block in practice, but a wedged or full receiver
# must never stall the daemon: we send non-blocking and drop the notification instead.
_SEND_FLAGS: Final = socket.MSG_DONTWAIT


def socket_address(value: str) -> str | bytes:
    """Turn a ``$NOTIFY_SOCKET`` value into an address ``socket.sendto`` accepts."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


def one_line(text: str) -> str:
    """A status on one line: systemd reads each line of a datagram as an assignment, so a
    reason quoting a key with a newline could otherwise say READY=1 or MAINPID=."""
    return " ".join(text.split())


class Notifier:
    """Sends state changes to the service manager."""

    def __init__(self, address: str | bytes | None, *, watchdog_usec: int | None = None) -> None:
        self._address = address
        self._watchdog_usec = watchdog_usec
        self._socket: socket.socket | None = None
        self.failures = 0
        if address is not None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """Build from ``$NOTIFY_SOCKET``, ``$WATCHDOG_USEC`` and ``$WATCHDOG_PID``.

        Per sd_watchdog_enabled(3) the watchdog applies only when ``$WATCHDOG_PID`` is unset or
        names this process, so a child that inherits the environment does not ping for us.
        """
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        address = socket_address(raw) if raw else None
        watchdog: int | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            watchdog = int(usec)
        return cls(address, watchdog_usec=watchdog)

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings: half the timeout, as sd_watchdog_enabled advises."""
        if self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2 / 1_000_000

    def notify(self, *assignments: str) -> bool:
        """Send ``assignments`` as one datagram; False if there is no socket or it failed."""
        if self._socket is None or self._address is None:
            return False
        # Surrogates (a non-UTF-8 path in a reason) escaped rather than raised: a status
        # message must never stop the daemon.
        payload = "\n".join(assignments).encode(errors="backslashreplace")
        try:
            self._socket.sendto(payload, _SEND_FLAGS, self._address)
        except OSError:
            self.failures += 1
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={one_line(status)}"] if status else []))

    def reloading(self, monotonic_usec: int) -> bool:
        # systemd >= 253 requires MONOTONIC_USEC with RELOADING=1 for Type=notify-reload.
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={one_line(text)}")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
