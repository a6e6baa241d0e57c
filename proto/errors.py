"""The one exception family raised by every codec in :mod:`proto`."""

from __future__ import annotations


class ProtocolError(Exception):
    """Input that does not follow the wire format.

    Carries the answer the shell should put on the wire, so the shell never guesses:
    ``status_hint`` is the HTTP status and ``code`` a protocol-specific error code (for AWS,
    the error code a real service would return).
    """

    def __init__(self, message: str, *, status_hint: int = 400, code: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.status_hint = status_hint
        self.code = code
