"""The FIFO deduplication window: which deduplication ids were taken in the last 5 minutes.

A queue's DeduplicationScope (``queue`` or ``messageGroup``) and a topic's FifoThroughputScope
(``Topic`` or ``MessageGroup``) can change while ids are inside their window. AWS documents
only the fixed-scope cases, so a change never frees an id early (the conservative reading):
a message is a duplicate when an earlier one taken within 5 minutes has its id and either the
same group, or either of the two was sent under the queue-wide (topic-wide) scope. With a
scope that does not change this is exactly AWS's rule. After a change to the queue-wide scope
an id two groups both took before it is a duplicate in every group; after a change to the
per-group scope an id taken queue-wide before it stays taken in every group.

The key a message is looked up and remembered under (:func:`deduplication_key`) carries what
that takes: the id's digest, and for the per-group scope the (group, id) digest after it.
Only the key is stored, so entries restored at start work the same way.
"""

from __future__ import annotations

import hashlib
from collections import deque
from typing import Generic, TypeVar

DEDUPLICATION_WINDOW_MS = 5 * 60 * 1000  # AWS: "the 5-minute deduplication interval"
_DIGEST_BYTES = 16

_Value = TypeVar("_Value")


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=_DIGEST_BYTES).digest()


def deduplication_key(deduplication_id: str, group_id: str | None) -> bytes:
    """The key of a deduplication id: its digest, then its group's for messageGroup scope.

    16 bytes (the id's digest) for the queue-wide scope; 32 for the per-group scope (the id's
    digest, then the digest of group and id). Digests keep the memory per entry fixed whatever
    the ids' length (up to 128 characters). A group digest never equals an id digest (its text
    holds a NUL, which no id does), so both kinds share one table. A key stored before the
    32-byte form existed is 16 bytes under either scope; read as a queue-wide one it is still
    found under the scope it was taken in (a former per-group one only under the per-group
    scope, by its group: its digest is that of group and id).

    Args:
        deduplication_id: MessageDeduplicationId, explicit or content-based.
        group_id: the MessageGroupId when the scope is per group, else None.

    Returns:
        The key under which the id is looked up and remembered.
    """
    id_digest = _digest(deduplication_id)
    if group_id is None:
        return id_digest
    return id_digest + _digest(f"{group_id}\0{deduplication_id}")


class ScopedWindow(Generic[_Value]):
    """Remembers, per key, the message that took it, until its 5 minutes end.

    A duplicate within the window is answered with the original message; the window starts
    at the original send and is not extended by duplicates (AWS semantics). Two tables, each
    O(1) per lookup: every entry by its id's digest (what queue-wide lookups read), and each
    entry by the key it was taken under (the id's digest when taken queue-wide, the group's
    when per group; per-group lookups read both). Under the per-group scope two groups may
    take one id: the id table then keeps the later one, whose window ends last.
    """

    __slots__ = ("_by_id", "_by_scoped_key", "_expiries")

    def __init__(self) -> None:
        self._by_id: dict[bytes, tuple[_Value, int]] = {}  # value and expiry
        self._by_scoped_key: dict[bytes, tuple[_Value, int]] = {}
        # (expires_at, key) per remembered entry; expiry times only grow, so this is sorted.
        self._expiries: deque[tuple[int, bytes]] = deque()

    def __len__(self) -> int:
        """How many remembered messages are still inside their window."""
        return len(self._expiries)

    def lookup(self, key: bytes, now: int) -> _Value | None:
        """The original message if ``key`` is taken at ``now``."""
        self.expire(now)
        if len(key) == _DIGEST_BYTES:  # queue-wide: any message with this id
            found = self._by_id.get(key)
        else:  # per group: this group's, or one taken queue-wide
            found = self._by_scoped_key.get(key[_DIGEST_BYTES:])
            if found is None:
                found = self._by_scoped_key.get(key[:_DIGEST_BYTES])
        return None if found is None else found[0]

    def remember(self, key: bytes, value: _Value, expires_at: int) -> None:
        """Take ``key`` for the message ``value`` until ``expires_at``."""
        if self._expiries and expires_at < self._expiries[-1][0]:
            # Restored entries can arrive out of order; keep the deque sorted.
            expires_at = self._expiries[-1][0]
        entry = (value, expires_at)
        _take(self._by_id, key[:_DIGEST_BYTES], entry)
        _take(self._by_scoped_key, key[_DIGEST_BYTES:] or key, entry)
        self._expiries.append((expires_at, key))

    def expire(self, now: int) -> int:
        """Forget every key whose window has ended; return how many were forgotten."""
        forgotten = 0
        expiries = self._expiries
        while expiries and expiries[0][0] <= now:
            _, key = expiries.popleft()
            _forget(self._by_id, key[:_DIGEST_BYTES], now)
            _forget(self._by_scoped_key, key[_DIGEST_BYTES:] or key, now)
            forgotten += 1
        return forgotten


def _take(table: dict[bytes, tuple[_Value, int]], slot: bytes, entry: tuple[_Value, int]) -> None:
    current = table.get(slot)
    if current is None or current[1] <= entry[1]:  # the window that ends last wins
        table[slot] = entry


def _forget(table: dict[bytes, tuple[_Value, int]], slot: bytes, now: int) -> None:
    current = table.get(slot)
    if current is not None and current[1] <= now:  # not taken again by a later message
        del table[slot]


class DeduplicationWindow(ScopedWindow[int]):
    """A FIFO queue's window: the seq of the message that took each key."""

    __slots__ = ()
