"""Standard queues: at-least-once, best-effort order.

Fresh visible messages wait in a deque in send order (8 bytes per message plus the seq);
messages that come back from a visibility timeout, or arrive from a source queue, wait in a
heap by seq so the oldest goes first. A message sent with a delay waits in a heap by seq
while delayed, then, once its delay ends, in another heap by seq (not at the deque's end,
behind younger messages). A receive takes returned messages first, then the oldest fresh
one of the deque and the heap of ended delays: O(1) or O(log n) per message, whatever the
depth of the queue.

Retention sweeps all three structures of fresh messages in seq order, which is send order
(the timeline dates seqs): each stops at its first message not yet due, so a sweep costs
what expires (and the stale entries of ended delays it passes), never the queue's depth.

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

# The heap of delayed seqs keeps entries of delays ended since (lazy invalidation); past
# this many more than twice the delayed messages, it is rebuilt from them.
_STALE_DELAYED_ENTRIES = 1024


class StandardIndex(QueueIndex):
    """The message index of a standard queue."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._fresh: deque[int] = deque()  # never delayed, in seq order
        self._undelayed: list[int] = []  # heap of seqs whose delay has ended, not received
        # Heap of seqs of delayed messages (in QueueState._delayed); one whose delay has
        # ended since is stale, skipped when it surfaces and dropped when they pile up.
        self._delayed_seqs: list[int] = []
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
        undelayed = self._undelayed
        while fresh or undelayed:
            # The older of the two heads: the seq order is the send order.
            if undelayed and (not fresh or undelayed[0] < fresh[0]):
                seq = heapq.heappop(undelayed)
            else:
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
            return
        delayed_seqs = self._delayed_seqs
        heapq.heappush(delayed_seqs, seq)
        if len(delayed_seqs) > 2 * len(self._delayed) + _STALE_DELAYED_ENTRIES:
            # Ended delays' entries pile up behind a long-lived one: keep the live ones
            # (amortised O(1) a send, as at least as many pushes came since the last time).
            self._delayed_seqs = list(self._delayed)
            heapq.heapify(self._delayed_seqs)

    def _add_received(self, seq: int, entry: ReceivedMessage) -> None:
        if not entry.in_flight:
            heapq.heappush(self._returned, seq)

    def _delay_ended(self, seq: int) -> None:
        # Not at the deque's end: younger messages may be there, and both the sweep and the
        # receive rely on its seq order.
        heapq.heappush(self._undelayed, seq)

    def _visibility_expired(self, seq: int, entry: ReceivedMessage) -> None:
        heapq.heappush(self._returned, seq)

    def _forget(self, seq: int, entry: ReceivedMessage | None, group_id: str | None) -> None:
        # Heap entries of forgotten messages are skipped when they surface.
        return

    def _sweep(self, boundary: int, cutoff: int, limit: int) -> list[int]:
        # Received messages first (in flight or back in _returned, moved in): the other
        # structures hold only messages never received. Then the fresh ones, each structure
        # in seq order up to the boundary: never delayed, delay ended, still delayed (a delay
        # may outlast the retention period: AWS deletes the message all the same).
        expired = self._sweep_received(boundary, cutoff, limit)
        fresh = self._fresh
        while fresh and fresh[0] < boundary and len(expired) < limit:
            seq = fresh.popleft()
            self._deleted_fresh.discard(seq)
            self._remove(seq, None)
            expired.append(seq)
        undelayed = self._undelayed
        while undelayed and undelayed[0] < boundary and len(expired) < limit:
            seq = heapq.heappop(undelayed)
            self._deleted_fresh.discard(seq)
            self._remove(seq, None)
            expired.append(seq)
        delayed_seqs = self._delayed_seqs
        delayed = self._delayed
        while delayed_seqs and delayed_seqs[0] < boundary and len(expired) < limit:
            seq = heapq.heappop(delayed_seqs)
            if delayed.pop(seq, None) is None:
                continue  # its delay ended: swept above, or received
            # Its timer is stale now: skipped when it surfaces (QueueState._advance).
            self._remove(seq, None)
            expired.append(seq)
        self._deleted_fresh = {seq for seq in self._deleted_fresh if seq >= boundary}
        return expired

    def _oldest_fresh(self) -> int | None:
        # The oldest of the three heads, each structure being in seq order (send order).
        delayed_seqs = self._delayed_seqs
        while delayed_seqs and delayed_seqs[0] not in self._delayed:
            heapq.heappop(delayed_seqs)  # an ended delay's entry
        heads = [seqs[0] for seqs in (self._fresh, self._undelayed, delayed_seqs) if seqs]
        return min(heads) if heads else None

    def _after_restore(self) -> None:
        self._restored_below = self._next_seq

    def _clear(self) -> None:
        self._fresh.clear()
        self._undelayed.clear()
        self._delayed_seqs.clear()
        self._returned.clear()
        self._deleted_fresh.clear()
