"""The state a queue index keeps, and the transitions every queue type shares.

:class:`QueueState` owns the bookkeeping (entries of received messages, the timer heap,
counts, retention timeline, deduplication window); :class:`broker.model.index.QueueIndex`
builds the SQS actions on it; the subclasses hold the per-type ordering structures.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable

from broker.model.dedup import DeduplicationWindow
from broker.model.mutations import MessageDelivered, MessageMoved
from broker.model.outcomes import Delivery, RestoredMessage
from broker.model.retention import EnqueueTimeline
from broker.model.settings import QueueSettings
from broker.model.signing import Signer

PURGE_INTERVAL_MS = 60_000  # AWS: one PurgeQueue per queue every 60 seconds
# AWS ("Amazon SQS message quotas"): about 120,000 in-flight messages per standard queue and
# 120,000 per FIFO queue (raised from 20,000 in 2024); AWS raises it on request, so can the
# operator here (``sqs.max_in_flight_messages``).
MAX_IN_FLIGHT_MESSAGES = 120_000
# The retention heaps of received messages keep entries of messages gone since (lazy
# invalidation); past this many more than the live ones, they are rebuilt from the live ones.
_STALE_RETENTION_ENTRIES = 1024


class ReceivedMessage:
    """State of a message that has been received at least once (or moved in)."""

    __slots__ = (
        "enqueued_at",
        "group_id",
        "handle",
        "in_flight",
        "receive_count",
        "received_at",
        "visible_at",
    )

    def __init__(
        self,
        *,
        receive_count: int,
        visible_at: int,
        received_at: int,
        enqueued_at: int | None,
        group_id: str | None,
    ) -> None:
        self.receive_count = receive_count
        self.visible_at = visible_at
        self.received_at = received_at
        # None: the queue's EnqueueTimeline knows; set for messages moved in from elsewhere.
        self.enqueued_at = enqueued_at
        self.group_id = group_id
        self.in_flight = False
        # The receipt handle of the receive that put it in flight, while it is: a delete or
        # visibility change that brings this very string back skips the MAC check.
        self.handle: str | None = None


class QueueState:
    """Message bookkeeping of one queue; see :mod:`broker.model.index` for the rules."""

    def __init__(
        self,
        *,
        queue_id: int,
        name: str,
        arn: str,
        settings: QueueSettings,
        signer: Signer,
        next_seq: int = 1,
        wake_receivers: Callable[[], None] | None = None,
        purge_interval_ms: int = PURGE_INTERVAL_MS,
        in_flight_limit: int = MAX_IN_FLIGHT_MESSAGES,
    ) -> None:
        """Create an empty index.

        Args:
            queue_id: the store's id for the queue (never reused).
            name: the queue name, for error messages.
            arn: the queue ARN, recorded on messages moved to a dead-letter queue.
            settings: the queue's settings.
            signer: issues receipt handles and message ids.
            next_seq: the first seq to hand out (from the store).
            wake_receivers: called when messages may have become receivable, or the next
                wake-up moved earlier, through anything but the passing of time.
            purge_interval_ms: minimum time between two purges.
            in_flight_limit: most messages in flight at once; receives beyond it get none.
        """
        self.queue_id = queue_id
        self.name = name
        self.arn = arn
        self.settings = settings
        self._signer = signer
        self._next_seq = next_seq
        self._wake_receivers = wake_receivers
        self._purge_interval_ms = purge_interval_ms
        if in_flight_limit < 1:
            raise ValueError("the in-flight limit must be positive")
        self._in_flight_limit = in_flight_limit
        self._received: dict[int, ReceivedMessage] = {}
        self._delayed: dict[int, int] = {}  # fresh seq -> due
        self._timers: list[tuple[int, int]] = []  # (due, seq): delays and in-flight deadlines
        # Retention of received messages (see _sweep_received), checked lazily like the timers:
        # seqs of those the timeline dates, and (enqueue time, seq) of those with their own.
        self._received_by_seq: list[int] = []
        self._received_by_time: list[tuple[int, int]] = []
        self._timeline = EnqueueTimeline()
        self._dedup = DeduplicationWindow()
        self._present = 0
        self._in_flight = 0
        self._pending = 0  # sends accepted but not yet durable
        self._purged_below = 0
        self._last_purge_at: int | None = None
        self._closed = False
        self._latest_now = 0

    def _activate_sent(self, accepted: list[tuple[int, int, str | None]]) -> None:
        """Make durable sends receivable: ``(seq, visible_at, group id)`` each.

        On a FIFO queue the middle value is the send time instead, and the delay is the
        queue's as it is now (AWS: a FIFO queue's DelaySeconds is retroactive; it may have
        changed while the insert was being committed).
        """
        self._pending -= len(accepted)
        if not self._closed:  # else deleted while the inserts were being committed
            purged_below = self._purged_below
            latest_now = self._latest_now
            add_fresh = self._add_fresh
            delay_ms = self._fifo_delay_ms()
            for seq, stamp, group_id in accepted:
                if seq < purged_below:
                    continue  # purged while the insert was being committed
                visible_at = stamp + delay_ms
                self._present += 1
                delayed = visible_at > latest_now
                if delayed:
                    self._delayed[seq] = visible_at
                    heapq.heappush(self._timers, (visible_at, seq))
                add_fresh(seq, group_id, delayed=delayed)
        self._wake()

    def _fifo_delay_ms(self) -> int:
        """What a FIFO queue adds to a send time to make its due time: the queue's delay now.

        Zero on a standard queue, whose delays are fixed at the send (per message, or the
        queue's at the time: AWS, "For standard queues, the per-queue delay setting is not
        retroactive").
        """
        settings = self.settings
        return settings.delay_seconds * 1000 if settings.fifo else 0

    def _retention_cutoff(self, now: int) -> tuple[int, int]:
        """Return (seq boundary, time cutoff): what is enqueued at or before the cutoff is due."""
        cutoff = now - self.settings.message_retention_period * 1000
        return self._timeline.expired_below(cutoff), cutoff

    @staticmethod
    def _is_expired(seq: int, entry: ReceivedMessage | None, boundary: int, cutoff: int) -> bool:
        if entry is not None and entry.enqueued_at is not None:
            return entry.enqueued_at <= cutoff
        return seq < boundary

    def _should_dead_letter(self, count: int, dead_letter: QueueState | None) -> bool:
        policy = self.settings.redrive_policy
        return (
            policy is not None
            and dead_letter is not None
            and dead_letter is not self
            and count > policy.max_receive_count
        )

    def _deliver(
        self,
        now: int,
        seq: int,
        entry: ReceivedMessage | None,
        group_id: str | None,
        window_ms: int,
    ) -> tuple[Delivery, ReceivedMessage]:
        first_receive_at = None
        if entry is None:
            entry = ReceivedMessage(
                receive_count=0,
                visible_at=now,
                received_at=now,
                enqueued_at=None,
                group_id=group_id,
            )
            self._received[seq] = entry
            self._track_retention(seq, entry)
        if entry.receive_count == 0:
            first_receive_at = now
        entry.receive_count += 1
        entry.received_at = now
        entry.visible_at = now + window_ms
        handle = self._signer.receipt_handle(self.queue_id, seq, entry.receive_count, now)
        if window_ms > 0:
            entry.in_flight = True
            entry.handle = handle
            self._in_flight += 1
            heapq.heappush(self._timers, (entry.visible_at, seq))
        else:
            entry.handle = None
        return Delivery(seq, handle, entry.receive_count, first_receive_at), entry

    @staticmethod
    def _delivered(queue_id: int, seq: int, entry: ReceivedMessage) -> MessageDelivered:
        return MessageDelivered(
            queue_id=queue_id,
            seq=seq,
            visible_at=entry.visible_at,
            receive_count=entry.receive_count,
            received_at=entry.received_at,
        )

    def _move_to_dead_letter(
        self,
        now: int,
        seq: int,
        entry: ReceivedMessage | None,
        group_id: str | None,
        target: QueueState,
    ) -> tuple[MessageMoved, Callable[[], None]]:
        """Take a message out of this queue for ``target``; it appears there once durable."""
        receive_count = entry.receive_count if entry is not None else 0
        # AWS: a standard queue keeps the original enqueue time; FIFO restarts it.
        stored_enqueued_at: int | None = now
        enqueued_at = now
        if not self.settings.fifo:
            known = entry.enqueued_at if entry is not None else None
            stored_enqueued_at = known  # None: the store keeps the row's exact time
            approximate = self._timeline.time_of(seq)
            enqueued_at = known if known is not None else approximate or now
        self._remove(seq, entry, group_id)
        target_seq = target._reserve_moved_in()
        move = MessageMoved(
            source_queue_id=self.queue_id,
            source_seq=seq,
            target_queue_id=target.queue_id,
            target_seq=target_seq,
            enqueued_at=stored_enqueued_at,
            visible_at=now,
            source_arn=self.arn,
        )
        state = ReceivedMessage(
            receive_count=receive_count,
            visible_at=now,
            received_at=entry.received_at if entry is not None else now,
            enqueued_at=enqueued_at,
            group_id=group_id,
        )
        return move, lambda: target._activate_moved_in(target_seq, state)

    def _reserve_moved_in(self) -> int:
        seq = self._next_seq
        self._next_seq += 1
        self._pending += 1
        return seq

    def _activate_moved_in(self, seq: int, state: ReceivedMessage) -> None:
        self._pending -= 1
        if self._closed or seq < self._purged_below:
            return
        self._present += 1
        self._received[seq] = state
        self._track_retention(seq, state)  # by its own enqueue time: it is not in the timeline
        self._add_received(seq, state)
        self._wake()

    def _set_deadline(self, seq: int, entry: ReceivedMessage, visible_at: int, now: int) -> None:
        entry.visible_at = visible_at
        if visible_at > now:
            heapq.heappush(self._timers, (visible_at, seq))
        elif entry.in_flight:
            entry.in_flight = False
            entry.handle = None
            self._in_flight -= 1
            self._visibility_expired(seq, entry)

    # ------------------------------------------------------------------ restore

    def restore(self, messages: Iterable[RestoredMessage], now: int) -> None:
        """Rebuild from the store at start; ``messages`` must be in seq order.

        A FIFO message never received is due at its enqueue time (for such a row, its send
        time) plus the queue's delay as it is now, whatever its row says: the delay is
        retroactive there, so a SetQueueAttributes since the send rewrote no row.
        """
        self._advance(now)
        delay_ms = self._fifo_delay_ms() if self.settings.fifo else None
        for message in messages:
            self._restore_one(message, now, delay_ms)
        self._after_restore()

    def restore_attempt(
        self, attempt_id: str, seqs: list[int], deadlines: list[int], expires_at: int, now: int
    ) -> None:
        """Rebuild one receive remembered under its ReceiveRequestAttemptId (after
        :meth:`restore`); only a FIFO queue keeps them."""
        del attempt_id, seqs, deadlines, expires_at, now

    def restore_deduplication(self, key: bytes, seq: int, expires_at: int) -> None:
        """Rebuild one deduplication entry from the store."""
        self._dedup.remember(key, seq, expires_at)
        self._next_seq = max(self._next_seq, seq + 1)

    def _restore_one(self, message: RestoredMessage, now: int, fifo_delay_ms: int | None) -> None:
        seq = message.seq
        self._timeline.record(seq, message.enqueued_at)
        self._next_seq = max(self._next_seq, seq + 1)
        self._present += 1
        if message.receive_count == 0:
            visible_at = message.visible_at
            if fifo_delay_ms is not None:
                # A fresh row's enqueued_at is its sent_at (moved rows were received).
                visible_at = message.enqueued_at + fifo_delay_ms
            delayed = visible_at > now
            if delayed:
                self._delayed[seq] = visible_at
                heapq.heappush(self._timers, (visible_at, seq))
            self._add_fresh(seq, message.group_id, delayed=delayed)
            return
        entry = ReceivedMessage(
            receive_count=message.receive_count,
            visible_at=message.visible_at,
            received_at=message.received_at,
            enqueued_at=message.enqueued_at,
            group_id=message.group_id,
        )
        if message.visible_at > now:
            entry.in_flight = True
            self._in_flight += 1
            heapq.heappush(self._timers, (message.visible_at, seq))
        self._received[seq] = entry
        self._track_retention(seq, entry)
        self._add_received(seq, entry)

    # ------------------------------------------------------------------ retention

    def _track_retention(self, seq: int, entry: ReceivedMessage) -> None:
        """Put a new received entry where :meth:`_sweep_received` finds it when it is due.

        Received messages leave the subclasses' fresh structures, which the sweep of fresh
        messages walks; without this they would outlive their retention period until a
        receive reached them (an in-flight or abandoned one, or one moved in, maybe never).
        """
        if entry.enqueued_at is None:
            heapq.heappush(self._received_by_seq, seq)  # dated by the timeline
        else:
            heapq.heappush(self._received_by_time, (entry.enqueued_at, seq))
        tracked = len(self._received_by_seq) + len(self._received_by_time)
        if tracked > 2 * len(self._received) + _STALE_RETENTION_ENTRIES:
            # Deleted messages' entries pile up behind a long-lived one: keep the live ones
            # (amortised O(1) a receive, as at least as many pushes came since the last time).
            self._received_by_seq = []
            self._received_by_time = []
            for live_seq, live in self._received.items():
                if live.enqueued_at is None:
                    self._received_by_seq.append(live_seq)
                else:
                    self._received_by_time.append((live.enqueued_at, live_seq))
            heapq.heapify(self._received_by_seq)
            heapq.heapify(self._received_by_time)

    def _sweep_received(self, boundary: int, cutoff: int, limit: int) -> list[int]:
        """Remove received messages past retention (in flight, visible again, moved in).

        Oldest first, looking at ``limit`` heap entries at most (gone messages' count too).
        ``boundary`` and ``cutoff`` are :meth:`_retention_cutoff`'s: an entry dated by the
        timeline is due below the boundary, one with its own enqueue time at the cutoff,
        exactly as :meth:`_is_expired` has it when a receive reaches the message.

        Returns:
            The seqs removed, for the caller's ``MessageDeleted`` records.
        """
        expired: list[int] = []
        received = self._received
        budget = limit
        by_seq = self._received_by_seq
        while by_seq and by_seq[0] < boundary and budget > 0:
            budget -= 1
            seq = heapq.heappop(by_seq)
            entry = received.get(seq)
            if entry is not None and entry.enqueued_at is None:
                self._remove(seq, entry)
                expired.append(seq)
        by_time = self._received_by_time
        while by_time and by_time[0][0] <= cutoff and budget > 0:
            budget -= 1
            enqueued_at, seq = heapq.heappop(by_time)
            entry = received.get(seq)
            if entry is not None and entry.enqueued_at == enqueued_at:
                self._remove(seq, entry)
                expired.append(seq)
        if not received:  # whatever is left names messages gone
            by_seq.clear()
            by_time.clear()
        return expired

    def _clear_retention(self) -> None:
        self._received_by_seq.clear()
        self._received_by_time.clear()

    # ------------------------------------------------------------------ time

    def _advance(self, now: int) -> None:
        """Apply every delay end and visibility deadline due at ``now``."""
        self._latest_now = max(self._latest_now, now)
        timers = self._timers
        while timers and timers[0][0] <= now:
            due, seq = heapq.heappop(timers)
            if self._delayed.get(seq) == due:
                del self._delayed[seq]
                self._delay_ended(seq)
                continue
            entry = self._received.get(seq)
            if entry is not None and entry.in_flight and entry.visible_at == due:
                entry.in_flight = False
                entry.handle = None
                self._in_flight -= 1
                self._visibility_expired(seq, entry)

    def _timer_is_live(self, due: int, seq: int) -> bool:
        if self._delayed.get(seq) == due:
            return True
        entry = self._received.get(seq)
        return entry is not None and entry.in_flight and entry.visible_at == due

    def _remove(self, seq: int, entry: ReceivedMessage | None, group_id: str | None = None) -> None:
        """Forget a present message (deleted, expired or moved); fresh FIFO ones need the group."""
        self._forget(seq, entry, group_id)
        if entry is not None:
            del self._received[seq]
            if entry.in_flight:
                self._in_flight -= 1
        self._present -= 1

    def _wake(self) -> None:
        if self._wake_receivers is not None:
            self._wake_receivers()

    # ------------------------------------------------------------------ subclass hooks

    def _add_fresh(self, seq: int, group_id: str | None, *, delayed: bool) -> None:
        raise NotImplementedError

    def _add_received(self, seq: int, entry: ReceivedMessage) -> None:
        raise NotImplementedError

    def _delay_ended(self, seq: int) -> None:
        raise NotImplementedError

    def _visibility_expired(self, seq: int, entry: ReceivedMessage) -> None:
        raise NotImplementedError

    def _forget(self, seq: int, entry: ReceivedMessage | None, group_id: str | None) -> None:
        raise NotImplementedError

    def _sweep(self, boundary: int, cutoff: int, limit: int) -> list[int]:
        raise NotImplementedError

    def _oldest_fresh(self) -> int | None:
        """Return the lowest seq of the messages never received (delayed ones included).

        A received message's seq may come back instead (FIFO groups hold both kinds): the
        caller looks at every received message as well, so the minimum is the same.
        """
        raise NotImplementedError

    def _clear(self) -> None:
        raise NotImplementedError

    def _prune(self, now: int) -> bool:
        """Drop bookkeeping that has timed out (FIFO: receive attempt ids); return True when
        rows the store keeps of it have timed out too (a ``DeduplicationExpired`` deletes
        them)."""
        del now
        return False

    def _after_restore(self) -> None:
        """Finish a restore (FIFO: find the groups that are ready)."""
