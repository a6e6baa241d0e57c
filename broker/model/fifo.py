"""FIFO queues: strict order within a message group, one consumer per group at a time.

Rules (AWS, "FIFO queue logic"):

1. Within a group, messages are received in send order.
2. While any message of a group is in flight, nothing more of that group is returned; the
   group opens again when that message is deleted or becomes visible again.
3. A receive fills its batch from one group first (several messages, in order), then moves
   on to other groups; here the group with the oldest head goes first.
4. A delayed head holds back its group (queue-level delay only, so later messages are
   delayed at least as long). The delay is retroactive ("Amazon SQS delay queues"): a
   SetQueueAttributes moves every fresh message to its send time plus the new delay
   (:meth:`FifoIndex._redelay`).

Each group keeps its seqs in a list; removals at the head advance an index, removals inside
(only possible within the in-flight prefix, at most 10 long) leave a tombstone. Groups that
can deliver sit in a heap keyed by head seq, checked lazily when popped.

Retention sweeps received messages (QueueState), then the ready groups' expired heads, then
delayed messages by seq from a heap of their own: a delayed head keeps its group out of the
ready heap, and a queue delay (up to 900 s) can outlast the retention period (60 s at least).
"""

from __future__ import annotations

import bisect
import heapq

from broker.model.dedup import DEDUPLICATION_WINDOW_MS
from broker.model.index import QueueIndex
from broker.model.mutations import (
    MessageDeleted,
    Mutation,
    ReceiveAttemptRecorded,
    VisibilityChanged,
)
from broker.model.names import validate_fifo_id
from broker.model.outcomes import Delivery, ReceiveOutcome
from broker.model.state import ReceivedMessage

_TOMBSTONE = -1
_COMPACT_AFTER = 64  # dead slots at the front of a group list before it is compacted
# The heap of delayed seqs keeps entries of delays ended since (lazy invalidation); past
# this many more than twice the delayed messages, it is rebuilt from them.
_STALE_DELAYED_ENTRIES = 1024


class _Group:
    __slots__ = ("group_id", "head", "in_flight", "queued_head", "seqs")

    def __init__(self, group_id: str) -> None:
        self.group_id = group_id
        self.seqs: list[int] = []
        self.head = 0  # index of the first live slot
        self.in_flight = 0
        self.queued_head = _TOMBSTONE  # head seq of this group's entry in the ready heap

    def head_seq(self) -> int | None:
        seqs = self.seqs
        while self.head < len(seqs) and seqs[self.head] == _TOMBSTONE:
            self.head += 1
        return seqs[self.head] if self.head < len(seqs) else None

    def add(self, seq: int) -> None:
        # Compact here only: receives and sweeps walk the list by index while removing.
        if self.head >= _COMPACT_AFTER and self.head * 2 > len(self.seqs):
            del self.seqs[: self.head]
            self.head = 0
        if not self.seqs or seq > self.seqs[-1]:
            self.seqs.append(seq)
        else:
            # Activations arrive in commit order, which is seq order; restores too. Be safe.
            self.seqs.insert(bisect.bisect_left(self.seqs, seq, lo=self.head), seq)

    def remove(self, seq: int) -> None:
        seqs = self.seqs
        index = self.head
        while index < len(seqs) and seqs[index] != seq:
            index += 1
        if index == len(seqs):
            return
        seqs[index] = _TOMBSTONE
        if index == self.head:
            self.head_seq()

    def is_empty(self) -> bool:
        return self.head_seq() is None


class _Attempt:
    """A receive remembered under its ReceiveRequestAttemptId."""

    __slots__ = ("deadlines", "deliveries", "expires_at")

    def __init__(self, deliveries: list[Delivery], deadlines: list[int], expires_at: int) -> None:
        self.deliveries = deliveries
        self.deadlines = deadlines
        self.expires_at = expires_at


class FifoIndex(QueueIndex):
    """The message index of a FIFO queue."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._groups: dict[str, _Group] = {}
        self._ready: list[tuple[int, str]] = []  # (head seq, group id)
        self._delayed_groups: dict[int, str] = {}  # delayed fresh seq -> its group
        # Heap of the seqs of delayed messages, for retention: a delay can outlast the
        # retention period, and a delayed head is never in the ready heap the sweep walks.
        self._delayed_seqs: list[int] = []
        # Receives remembered under their ReceiveRequestAttemptId, oldest first, and the
        # attempt that returned each seq: an attempt one of whose messages is deleted, moved,
        # expired or visible again can no longer be retried, so it goes then rather than 5
        # minutes after its receive (a consumer naming every receive kept a record of each
        # one received and deleted in those 5 minutes, some 300 bytes a message).
        self._attempts: dict[str, _Attempt] = {}
        self._attempt_of: dict[int, str] = {}
        # The latest expiry of the receive_attempts rows the store may hold for this queue
        # (each recorded or restored one, even one not restored), 0 when none is left: a
        # row goes when a later attempt of the queue is recorded, or once this time passes
        # (_prune), so that a burst of attempts followed by silence leaves no rows for good.
        self._attempt_rows_until = 0

    def receive(
        self,
        now: int,
        *,
        max_messages: int = 1,
        visibility_timeout: int | None = None,
        attempt_id: str | None = None,
        dead_letter: QueueIndex | None = None,
    ) -> ReceiveOutcome:
        """ReceiveMessage; see :meth:`QueueIndex.receive`.

        With ``attempt_id``, a retry within 5 minutes returns the same messages and receipt
        handles if none was deleted or had its visibility changed, and resets their
        visibility timeout.
        """
        window_ms = self._receive_window(max_messages, visibility_timeout)
        if attempt_id is not None:
            validate_fifo_id(attempt_id, "ReceiveRequestAttemptId")
        self._advance(now)
        if attempt_id is not None:
            retried = self._retry(now, attempt_id, window_ms)
            if retried is not None:
                return retried
        max_messages = self._in_flight_room(max_messages, window_ms)
        boundary, cutoff = self._retention_cutoff(now)
        deliveries: list[Delivery] = []
        mutations: list[Mutation] = []
        after = []
        visited: set[str] = set()
        while len(deliveries) < max_messages and self._ready:
            head, group_id = heapq.heappop(self._ready)
            group = self._groups.get(group_id)
            if group is None or group.queued_head != head:
                continue  # superseded entry
            group.queued_head = _TOMBSTONE
            if group_id in visited or not self._can_deliver(group):
                continue
            visited.add(group_id)
            index = group.head
            while len(deliveries) < max_messages and index < len(group.seqs):
                seq = group.seqs[index]
                index += 1
                if seq == _TOMBSTONE:
                    continue
                if not self._is_visible(seq):
                    break
                entry = self._received.get(seq)
                if self._is_expired(seq, entry, boundary, cutoff):
                    self._remove(seq, entry, group_id)
                    mutations.append(MessageDeleted(queue_id=self.queue_id, seq=seq))
                    continue
                count = (entry.receive_count if entry is not None else 0) + 1
                if dead_letter is not None and self._should_dead_letter(count, dead_letter):
                    move, activate = self._move_to_dead_letter(
                        now, seq, entry, group_id, dead_letter
                    )
                    mutations.append(move)
                    after.append(activate)
                    continue
                delivery, entry = self._deliver(now, seq, entry, group_id, window_ms)
                if entry.in_flight:
                    group.in_flight += 1
                deliveries.append(delivery)
                mutations.append(self._delivered(self.queue_id, seq, entry))
        # Re-queue afterwards: a group put back during the loop would be popped and lost.
        for visited_id in visited:
            visited_group = self._groups.get(visited_id)
            if visited_group is not None:
                self._settle(visited_group)
        if attempt_id is not None and deliveries and window_ms > 0:
            # (With no visibility timeout nothing is in flight: a retry could not return it.)
            deadlines = [self._received[d.seq].visible_at for d in deliveries]
            attempt = _Attempt(deliveries, deadlines, now + DEDUPLICATION_WINDOW_MS)
            self._remember(attempt_id, attempt)
            mutations.append(self._attempt_recorded(attempt_id, attempt))
        return ReceiveOutcome(deliveries, mutations, after)

    def _remember(self, attempt_id: str, attempt: _Attempt) -> None:
        self._drop_attempt(attempt_id)  # a reused id: its old messages are not its own now
        self._attempts[attempt_id] = attempt
        for delivery in attempt.deliveries:
            self._attempt_of[delivery.seq] = attempt_id

    def _attempt_recorded(self, attempt_id: str, attempt: _Attempt) -> ReceiveAttemptRecorded:
        """The attempt as the store keeps it, so that a retry after a restart (the answer a
        crash cut off: what the id is for) returns the same messages too."""
        self._attempt_rows_until = max(self._attempt_rows_until, attempt.expires_at)
        return ReceiveAttemptRecorded(
            queue_id=self.queue_id,
            attempt_id=attempt_id,
            seqs=[delivery.seq for delivery in attempt.deliveries],
            deadlines=list(attempt.deadlines),
            expires_at=attempt.expires_at,
        )

    def restore_attempt(
        self, attempt_id: str, seqs: list[int], deadlines: list[int], expires_at: int, now: int
    ) -> None:
        """Rebuild a stored receive attempt, if a retry could still return it: within its 5
        minutes, and each message still in flight from that receive (the deadline it had
        then: neither deleted, nor received again, nor its visibility changed since). Its
        handles are issued again: each names the message's receive count and receive time,
        which the store kept. Attempts must come soonest expiry first (``_prune``)."""
        self._attempt_rows_until = max(self._attempt_rows_until, expires_at)
        if expires_at <= now or len(seqs) != len(deadlines):
            return
        deliveries = []
        for seq, deadline in zip(seqs, deadlines, strict=True):
            entry = self._received.get(seq)
            if entry is None or not entry.in_flight or entry.visible_at != deadline:
                return
            handle = self._signer.receipt_handle(
                self.queue_id, seq, entry.receive_count, entry.received_at
            )
            deliveries.append(Delivery(seq, handle, entry.receive_count, None))
        self._remember(attempt_id, _Attempt(deliveries, list(deadlines), expires_at))

    def _retry(self, now: int, attempt_id: str, window_ms: int) -> ReceiveOutcome | None:
        attempt = self._attempts.get(attempt_id)
        if attempt is None:
            return None
        unchanged = attempt.expires_at > now
        for delivery, deadline in zip(attempt.deliveries, attempt.deadlines, strict=True):
            entry = self._received.get(delivery.seq)
            unchanged = unchanged and (
                entry is not None
                and entry.in_flight
                and entry.receive_count == delivery.receive_count
                and entry.visible_at == deadline
            )
        if not unchanged:
            self._drop_attempt(attempt_id)
            return None
        mutations: list[Mutation] = []
        for position, delivery in enumerate(attempt.deliveries):
            entry = self._received[delivery.seq]
            visible_at = now + window_ms
            self._set_deadline(delivery.seq, entry, visible_at, now)
            attempt.deadlines[position] = visible_at
            mutations.append(
                VisibilityChanged(queue_id=self.queue_id, seq=delivery.seq, visible_at=visible_at)
            )
        mutations.append(self._attempt_recorded(attempt_id, attempt))
        return ReceiveOutcome(attempt.deliveries, mutations)

    def _drop_attempt(self, attempt_id: str) -> None:
        attempt = self._attempts.pop(attempt_id, None)
        if attempt is None:
            return
        attempt_of = self._attempt_of
        for delivery in attempt.deliveries:
            if attempt_of.get(delivery.seq) == attempt_id:
                del attempt_of[delivery.seq]

    def _drop_attempt_of(self, seq: int) -> None:
        """Forget the receive attempt that returned ``seq``: the message changed."""
        attempt_id = self._attempt_of.get(seq)
        if attempt_id is not None:
            self._drop_attempt(attempt_id)

    # ------------------------------------------------------------------ groups

    def _is_visible(self, seq: int) -> bool:
        if seq in self._delayed:
            return False
        entry = self._received.get(seq)
        return entry is None or not entry.in_flight

    def _can_deliver(self, group: _Group) -> bool:
        head = group.head_seq()
        return group.in_flight == 0 and head is not None and self._is_visible(head)

    def _settle(self, group: _Group) -> None:
        """Drop an empty group, or queue a group that can deliver."""
        head = group.head_seq()
        if head is None:
            if group.in_flight == 0:
                self._groups.pop(group.group_id, None)
            return
        if group.queued_head != head and self._can_deliver(group):
            group.queued_head = head
            heapq.heappush(self._ready, (head, group.group_id))

    def _group(self, group_id: str | None) -> _Group:
        if group_id is None:
            raise ValueError("a FIFO message needs a group")
        group = self._groups.get(group_id)
        if group is None:
            group = self._groups[group_id] = _Group(group_id)
        return group

    # ------------------------------------------------------------------ hooks

    def _add_fresh(self, seq: int, group_id: str | None, *, delayed: bool) -> None:
        group = self._group(group_id)
        group.add(seq)
        if delayed:
            self._delayed_groups[seq] = group.group_id
            self._track_delayed(seq)
        else:
            self._settle(group)

    def _track_delayed(self, seq: int) -> None:
        """Put a newly delayed message where the retention sweep finds it."""
        delayed_seqs = self._delayed_seqs
        heapq.heappush(delayed_seqs, seq)
        if len(delayed_seqs) > 2 * len(self._delayed) + _STALE_DELAYED_ENTRIES:
            # Ended delays' entries pile up behind a long-lived one: keep the live ones
            # (amortised O(1) a send, as at least as many pushes came since the last time).
            self._delayed_seqs = list(self._delayed)
            heapq.heapify(self._delayed_seqs)

    def _add_received(self, seq: int, entry: ReceivedMessage) -> None:
        group = self._group(entry.group_id)
        group.add(seq)
        if entry.in_flight:
            group.in_flight += 1
        self._settle(group)

    def _delay_ended(self, seq: int) -> None:
        group_id = self._delayed_groups.pop(seq, None)
        group = self._groups.get(group_id) if group_id is not None else None
        if group is not None:
            self._settle(group)

    def _visibility_expired(self, seq: int, entry: ReceivedMessage) -> None:
        self._drop_attempt_of(seq)
        group = self._groups.get(entry.group_id or "")
        if group is not None:
            group.in_flight -= 1
            self._settle(group)

    def _forget(self, seq: int, entry: ReceivedMessage | None, group_id: str | None) -> None:
        self._drop_attempt_of(seq)
        if entry is not None:
            group_id = entry.group_id
        delayed_group = self._delayed_groups.pop(seq, None)
        group = self._groups.get(group_id or delayed_group or "")
        if group is None:
            return
        group.remove(seq)
        if entry is not None and entry.in_flight:
            group.in_flight -= 1
        self._settle(group)

    def _sweep(self, boundary: int, cutoff: int, limit: int) -> list[int]:
        # Received messages first: one in flight locks its group, so no head below it is
        # reached from the ready heap; once it is gone, its group settles there, and the
        # fresh messages behind it go next, if due.
        expired = self._sweep_received(boundary, cutoff, limit)
        swept: list[_Group] = []
        ready = self._ready
        while ready and ready[0][0] < boundary and len(expired) < limit:
            head, group_id = heapq.heappop(ready)
            group = self._groups.get(group_id)
            if group is None or group.queued_head != head:
                continue
            group.queued_head = _TOMBSTONE
            swept.append(group)
            while len(expired) < limit and self._can_deliver(group):
                seq = group.head_seq()
                assert seq is not None
                entry = self._received.get(seq)
                if not self._is_expired(seq, entry, boundary, cutoff):
                    break
                self._remove(seq, entry, group_id)
                expired.append(seq)
                group.queued_head = _TOMBSTONE  # _remove may have queued it; sweep on
        for group in swept:
            self._settle(group)
        # Delayed messages past their retention period (a delay may outlast it: AWS deletes
        # the message all the same), oldest first; their groups settle as they go.
        delayed_seqs = self._delayed_seqs
        delayed = self._delayed
        while delayed_seqs and delayed_seqs[0] < boundary and len(expired) < limit:
            seq = heapq.heappop(delayed_seqs)
            if delayed.pop(seq, None) is None:
                continue  # its delay ended: swept above, or received
            # Its timer is stale now: skipped when it surfaces (QueueState._advance).
            self._remove(seq, None, self._delayed_groups.get(seq))
            expired.append(seq)
        return expired

    def _redelay(self, now: int, old_delay_ms: int, new_delay_ms: int) -> None:
        # Every fresh message's due time is its send time plus the queue's delay (the state
        # invariant: see _activate_sent and restore), so a delayed one was sent at its due
        # time less the old delay.
        delayed = self._delayed
        timers = self._timers
        for seq, due in list(delayed.items()):
            new_due = due - old_delay_ms + new_delay_ms
            if new_due <= now:
                del delayed[seq]
                self._delay_ended(seq)  # its group may deliver again
            else:
                delayed[seq] = new_due  # the old timer is stale now: skipped when it surfaces
                heapq.heappush(timers, (new_due, seq))
        if new_delay_ms <= old_delay_ms:
            return
        # A longer delay hides again the visible fresh messages sent within it. Their send
        # times are the timeline's, to the second and never early: every seq from ``first``
        # on was sent in a second whose latest send is after ``now - new_delay_ms``.
        timeline = self._timeline
        first = timeline.expired_below(now - new_delay_ms)
        last = timeline.last_seq  # fresh messages are all recorded: none is above
        if not len(timeline) or first > last:
            return  # no send within the delay's reach
        received = self._received
        for group in self._groups.values():
            seqs = group.seqs
            index = len(seqs) - 1
            while index >= group.head:
                seq = seqs[index]
                index -= 1
                if seq == _TOMBSTONE or seq > last:
                    continue  # a tombstone, or moved in after the last send
                if seq < first:
                    break  # sent before the delay's reach, and so is the rest of the group
                if seq in received or seq in delayed:
                    continue  # received ones are not delayed again; delayed ones are done
                sent_at = timeline.time_of(seq)
                if sent_at is None:
                    continue  # not dated: expired already, the sweep takes it
                due = sent_at + new_delay_ms
                delayed[seq] = due
                self._delayed_groups[seq] = group.group_id
                self._track_delayed(seq)
                heapq.heappush(timers, (due, seq))
        # Groups whose head was just delayed stay in the ready heap until popped: a receive
        # or sweep checks _can_deliver first, and the delay's end settles them again.

    def _oldest_fresh(self) -> int | None:
        # Each group lists its present messages in seq order, received ones included.
        heads = [seq for seq in (g.head_seq() for g in self._groups.values()) if seq is not None]
        return min(heads) if heads else None

    def _prune(self, now: int) -> bool:
        # Oldest first (each expires a fixed window after its receive), so the scan stops at
        # the first one still within its window instead of walking them all every second.
        timed_out = []
        for key, attempt in self._attempts.items():
            if attempt.expires_at > now:
                break
            timed_out.append(key)
        for key in timed_out:
            self._drop_attempt(key)
        if 0 < self._attempt_rows_until <= now:
            self._attempt_rows_until = 0  # every stored row has expired: delete them
            return True
        return False

    def _clear(self) -> None:
        self._groups.clear()
        self._ready.clear()
        self._delayed_groups.clear()
        self._delayed_seqs.clear()
        self._attempts.clear()
        self._attempt_of.clear()

    def _after_restore(self) -> None:
        for group in self._groups.values():
            self._settle(group)
