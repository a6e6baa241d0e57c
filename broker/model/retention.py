"""Enqueue times for retention, kept per second rather than per message.

Seqs are handed out in time order, so a short table of (first seq, time) rows, one per
second in which messages were enqueued, answers "which seqs are older than T" for a whole
queue; a per-message timestamp would cost 30 or more bytes per message instead.
"""

from __future__ import annotations

import bisect
from array import array

_BUCKET_MS = 1_000  # granularity: a message may outlive its retention by up to a second
_NO_BUCKET = float("-inf")  # no time is before it


class EnqueueTimeline:
    """Maps seq ranges to the latest enqueue time in each one-second bucket."""

    __slots__ = ("_first_seqs", "_floor", "_last_seq", "_latest_times", "_open_until", "_start")

    def __init__(self) -> None:
        self._first_seqs = array("q")
        self._latest_times = array("q")
        self._start = 0  # buckets before this index are dropped
        self._last_seq = -1
        self._floor = -1  # every seq below this is known to be expired
        # The end of the last bucket's second while that bucket is kept (-inf: none is): an
        # earlier time joins it, so a send tells its bucket with one comparison.
        self._open_until: float = _NO_BUCKET

    def __len__(self) -> int:
        return len(self._first_seqs) - self._start

    @property
    def last_seq(self) -> int:
        """The highest seq recorded (-1: none yet), kept when the buckets are cleared."""
        return self._last_seq

    def record(self, seq: int, enqueued_at: int) -> None:
        """Note that message ``seq`` was enqueued at ``enqueued_at``.

        Seqs must be recorded in increasing order; a time earlier than the bucket before is
        treated as that bucket's time (clocks step back; seq order is what counts).
        """
        if seq <= self._last_seq:
            raise ValueError(f"seq {seq} recorded after {self._last_seq}")
        self._last_seq = seq
        if enqueued_at < self._open_until:
            latest = self._latest_times
            if enqueued_at > latest[-1]:
                latest[-1] = enqueued_at
            return
        self._first_seqs.append(seq)
        self._latest_times.append(enqueued_at)
        self._open_until = (enqueued_at // _BUCKET_MS + 1) * _BUCKET_MS

    def expired_below(self, cutoff: int) -> int:
        """Return S such that every recorded seq below S was enqueued at or before ``cutoff``."""
        index = self._start
        end = len(self._first_seqs)
        while index < end and self._latest_times[index] <= cutoff:
            index += 1
        if index == self._start:
            return self._floor  # nothing more expired (or nothing recorded)
        return max(self._floor, self._last_seq + 1 if index == end else self._first_seqs[index])

    def time_of(self, seq: int) -> int | None:
        """Return the latest enqueue time of the bucket holding ``seq``, if it is recorded."""
        index = bisect.bisect_right(self._first_seqs, seq, lo=self._start) - 1
        if index < self._start or seq > self._last_seq:
            return None
        return self._latest_times[index]

    def drop_below(self, seq: int) -> None:
        """Record that every seq below ``seq`` has expired, and forget the buckets below it.

        The caller passes a boundary returned by :meth:`expired_below`; cutoffs only grow,
        so those seqs stay expired (until the retention period is raised, which is rare).
        """
        self._floor = max(self._floor, seq)
        end = len(self._first_seqs)
        while self._start < end and (
            (self._start + 1 < end and self._first_seqs[self._start + 1] <= seq)
            or (self._start + 1 == end and self._last_seq < seq)
        ):
            self._start += 1
        if self._start == end:
            self._open_until = _NO_BUCKET
        if self._start > 1024 and self._start * 2 > end:
            # Compact now and then so dropped buckets do not pile up.
            del self._first_seqs[: self._start]
            del self._latest_times[: self._start]
            self._start = 0

    def clear(self) -> None:
        """Forget every bucket (the queue is empty)."""
        self._first_seqs = array("q")
        self._latest_times = array("q")
        self._start = 0
        self._open_until = _NO_BUCKET
