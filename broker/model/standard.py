"""Standard queues: at-least-once, best-effort order.

Fresh visible messages wait in a deque in send order (8 bytes per message plus the seq);
messages that come back from a visibility timeout, or arrive from a source queue, wait in a
heap by seq so the oldest goes first. A receive takes returned messages first, then fresh
ones: O(1) or O(log n) per message, whatever the depth of the queue.

A first receive's record is written behind (broker/store/write_behind.py): lost in a crash,
the message comes back fresh at the restart, while its consumer still holds the handle of
that first receive. A delete with such a handle (serial 1, a message restored fresh) deletes
it: the row at once, the deque entry lazily, when it reaches the head (the deque cannot drop
from its middle); until then ApproximateNumberOfMessages still counts it.
"""

from __future__ import annotations

import heapq
from collections import deque

from broker.model.index import QueueIndex
from broker.model.mutations import MessageDeleted, Mutation
from broker.model.outcomes import Change, Delivery, ReceiveOutcome
from broker.model.signing import ReceiptHandle
from broker.model.state import ReceivedMessage


class StandardIndex(QueueIndex):
    """The message index of a standard queue."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._fresh: deque[int] = deque()
        self._returned: list[int] = []  # heap of seqs of received messages visible again
        self._restored_below = 0  # seqs below were restored at the start
        self._deleted_fresh: set[int] = set()  # deleted by a forgotten receive's handle

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
        fresh = self._fresh
        while fresh:
            seq = fresh.popleft()
            if seq not in self._deleted_fresh:
                return seq
            self._deleted_fresh.discard(seq)  # its row is gone already
            self._present -= 1
        return None

    def _delete_unreceived(self, handle: ReceiptHandle) -> Change:
        seq = handle.seq
        if (
            handle.serial != 1
            or seq >= self._restored_below
            or seq in self._delayed
            or seq in self._deleted_fresh
        ):
            return Change()  # gone (deleted, expired, moved) or never received
        # Maybe restored fresh after its first receive was lost in a crash (see the module
        # docstring); if it is gone instead, the row's delete and the set entry are moot.
        self._deleted_fresh.add(seq)
        return Change([MessageDeleted(queue_id=self.queue_id, seq=seq)])

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
        # Received messages first (in flight or back in _returned, moved in): the deque holds
        # only messages never received.
        expired = self._sweep_received(boundary, cutoff, limit)
        fresh = self._fresh
        while fresh and fresh[0] < boundary and len(expired) < limit:
            seq = fresh.popleft()
            self._deleted_fresh.discard(seq)
            self._remove(seq, None)
            expired.append(seq)
        self._deleted_fresh = {seq for seq in self._deleted_fresh if seq >= boundary}
        return expired

    def _oldest_fresh(self) -> int | None:
        # The deque is in send order but for messages whose delay ended: they join at its end,
        # behind younger ones. Looking only at the two heads keeps a scrape O(1) here and can
        # miss such a message, so the age is low by at most one delay (15 minutes at most).
        candidates = [self._fresh[0]] if self._fresh else []
        if self._delayed:
            candidates.append(min(self._delayed))
        return min(candidates) if candidates else None

    def _after_restore(self) -> None:
        self._restored_below = self._next_seq

    def _clear(self) -> None:
        self._fresh.clear()
        self._returned.clear()
        self._deleted_fresh.clear()
