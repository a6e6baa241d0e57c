"""The FIFO deduplication window: which deduplication ids were taken in the last 5 minutes."""

from __future__ import annotations

import hashlib
from collections import deque

DEDUPLICATION_WINDOW_MS = 5 * 60 * 1000  # AWS: "the 5-minute deduplication interval"


def deduplication_key(deduplication_id: str, group_id: str | None) -> bytes:
    """Digest a deduplication id (and its group, for messageGroup scope) to 16 bytes.

    A digest keeps memory per entry fixed whatever the id's length (up to 128 characters).

    Args:
        deduplication_id: MessageDeduplicationId, explicit or content-based.
        group_id: the MessageGroupId when DeduplicationScope is messageGroup, else None.

    Returns:
        The key under which the id is remembered.
    """
    scoped = deduplication_id if group_id is None else f"{group_id}\0{deduplication_id}"
    return hashlib.blake2b(scoped.encode(), digest_size=16).digest()


class DeduplicationWindow:
    """Remembers, per key, the seq of the message that first used it, until it expires.

    A duplicate within the window is answered with the original message; the window starts
    at the original send and is not extended by duplicates (AWS semantics).
    """

    __slots__ = ("_by_key", "_expiries")

    def __init__(self) -> None:
        self._by_key: dict[bytes, int] = {}
        # (expires_at, key) in insertion order; expiry times only grow, so this is sorted.
        self._expiries: deque[tuple[int, bytes]] = deque()

    def __len__(self) -> int:
        return len(self._by_key)

    def lookup(self, key: bytes, now: int) -> int | None:
        """Return the seq of the original message if ``key`` is taken at ``now``."""
        self.expire(now)
        return self._by_key.get(key)

    def remember(self, key: bytes, seq: int, expires_at: int) -> None:
        """Take ``key`` for message ``seq`` until ``expires_at``."""
        self._by_key[key] = seq
        if self._expiries and expires_at < self._expiries[-1][0]:
            # Restored entries can arrive out of order; keep the deque sorted.
            expires_at = self._expiries[-1][0]
        self._expiries.append((expires_at, key))

    def expire(self, now: int) -> int:
        """Forget every key whose window has ended; return how many were forgotten."""
        forgotten = 0
        expiries = self._expiries
        while expiries and expiries[0][0] <= now:
            _, key = expiries.popleft()
            self._by_key.pop(key, None)
            forgotten += 1
        return forgotten
