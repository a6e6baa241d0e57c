"""Standard queues: at-least-once, best-effort order.

Fresh visible messages wait in a deque in send order (8 bytes per message plus the seq);
messages that come back from a visibility timeout, or arrive from a source queue, wait in a
heap by seq so the oldest goes first. A receive takes returned messages first, then fresh
ones: O(1) or O(log n) per message, whatever the depth of the queue.
"""

from __future__ import annotations

import heapq
from collections import deque

from broker.model.index import QueueIndex
from broker.model.mutations import MessageDeleted, Mutation
from broker.model.outcomes import Delivery, ReceiveOutcome
from broker.model.state import ReceivedMessage


class StandardIndex(QueueIndex):
    """The message index of a standard queue."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._fresh: deque[int] = deque()
        self._returned: list[int] = []  # heap of seqs of received messages visible again

    def receive(
        self,
        now: int,
        *,
        max_messages: int = 1,
        visibility_timeout: int | None = None,
        attempt_id: str | None = None,
        dead_letter: QueueIndex | None = None,
    ) -> ReceiveOutcome:
        """ReceiveMessage; see :meth:`QueueIndex.receive` (``attempt_id`` is FIFO-only)."""
        window_ms = self._receive_window(max_messages, visibility_timeout)
        self._advance(now)
        max_messages = self._in_flight_room(max_messages, window_ms)
        boundary, cutoff = self._retention_cutoff(now)
        deliveries: list[Delivery] = []
        mutations: list[Mutation] = []
        after = []
        still_visible: list[int] = []
        while len(deliveries) < max_messages:
            seq = self._next_visible()
            if seq is None:
                break
            entry = self._received.get(seq)
            if self._is_expired(seq, entry, boundary, cutoff):
                self._remove(seq, entry)
                mutations.append(MessageDeleted(queue_id=self.queue_id, seq=seq))
                continue
            count = (entry.receive_count if entry is not None else 0) + 1
            if dead_letter is not None and self._should_dead_letter(count, dead_letter):
                move, activate = self._move_to_dead_letter(now, seq, entry, None, dead_letter)
                mutations.append(move)
                after.append(activate)
                continue
            delivery, entry = self._deliver(now, seq, entry, None, window_ms)
            deliveries.append(delivery)
            mutations.append(self._delivered(self.queue_id, seq, entry))
            if not entry.in_flight:
                still_visible.append(seq)  # VisibilityTimeout=0: back after this receive
        for seq in still_visible:
            heapq.heappush(self._returned, seq)
        return ReceiveOutcome(deliveries, mutations, after)

    def _next_visible(self) -> int | None:
        returned = self._returned
        while returned:
            seq = heapq.heappop(returned)
            entry = self._received.get(seq)
            if entry is not None and not entry.in_flight:
                return seq
        if self._fresh:
            return self._fresh.popleft()
        return None

    # ------------------------------------------------------------------ hooks

    def _add_fresh(self, seq: int, group_id: str | None, *, delayed: bool) -> None:
        if not delayed:
            self._fresh.append(seq)

    def _add_received(self, seq: int, entry: ReceivedMessage) -> None:
        if not entry.in_flight:
            heapq.heappush(self._returned, seq)

    def _delay_ended(self, seq: int) -> None:
        self._fresh.append(seq)

    def _visibility_expired(self, seq: int, entry: ReceivedMessage) -> None:
        heapq.heappush(self._returned, seq)

    def _forget(self, seq: int, entry: ReceivedMessage | None, group_id: str | None) -> None:
        # Heap entries of forgotten messages are skipped when they surface.
        return

    def _sweep(self, boundary: int, cutoff: int, limit: int) -> list[int]:
        expired: list[int] = []
        fresh = self._fresh
        while fresh and fresh[0] < boundary and len(expired) < limit:
            seq = fresh.popleft()
            self._remove(seq, None)
            expired.append(seq)
        return expired

    def _oldest_fresh(self) -> int | None:
        # The deque is in send order but for messages whose delay ended: they join at its end,
        # behind younger ones. Looking only at the two heads keeps a scrape O(1) here and can
        # miss such a message, so the age is low by at most one delay (15 minutes at most).
        candidates = [self._fresh[0]] if self._fresh else []
        if self._delayed:
            candidates.append(min(self._delayed))
        return min(candidates) if candidates else None

    def _clear(self) -> None:
        self._fresh.clear()
        self._returned.clear()
