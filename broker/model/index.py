"""The per-queue message index: what standard and FIFO queues share.

Theory of operation. The index holds metadata only, and as little per message as it can:

* A message nobody has received yet ("fresh") costs its seq in one ordered structure
  (the subclass's), plus a share of an :class:`EnqueueTimeline` bucket for retention.
* A received message has a :class:`ReceivedMessage` entry (receive count, deadline, ...). There are
  few of these: in flight, back from a visibility timeout, or moved in from a source queue.
* Delayed messages and in-flight deadlines sit in one heap of ``(due, seq)``; entries are
  checked when they surface (lazy invalidation), so a visibility change is one push.

Time moves only when an operation is called with a later ``now``: each operation first
applies every deadline that has passed (:meth:`QueueIndex._advance`).

Durability. Each operation returns a :class:`~broker.model.outcomes.Change`. The model applies
receives, deletes and visibility changes to itself at once, so two receives can never return
the same message; the shell replies after the commit. Sends and dead-letter moves become
receivable only in ``on_durable``, after their insert is on disk.

Message states (fresh -> in flight -> deleted / visible again / dead-lettered):

    fresh visible --receive--> in flight --delete--> gone
    fresh delayed --due------> fresh visible
    in flight --deadline or visibility 0--> visible (received) --receive--> in flight
    any --receive over maxReceiveCount--> moved to the dead-letter queue
    any --retention, purge--> gone

Retention. Fresh messages are dated by the timeline and swept in seq order by the subclass;
received ones (in flight, visible again, moved in) sit in two more lazily checked heaps, by
seq (dated by the timeline) and by their own enqueue time (moved in; restored received), so
the periodic :meth:`QueueIndex.expire` reaches every message once it is due.

Delays. A standard queue's message keeps the delay it was sent with. A FIFO queue's fresh
messages are due at their send time plus the queue's DelaySeconds as it is now: changing it
moves them (:meth:`QueueIndex.update_settings`). A message already delayed knows its send time
exactly (its due time less the delay); one that was visible is dated by the timeline, so a
longer delay hides it until up to a second late, never early.
"""

from __future__ import annotations

import heapq
import hmac
from collections.abc import Sequence

from broker.model.attributes import QueueCounts
from broker.model.dedup import DEDUPLICATION_WINDOW_MS, deduplication_key
from broker.model.errors import (
    MESSAGE_NOT_INFLIGHT,
    OVER_LIMIT,
    PURGE_QUEUE_IN_PROGRESS,
    SqsError,
    invalid_parameter,
)
from broker.model.messages import (
    SendRequest,
    content_deduplication_id,
    message_size,
    sequence_number,
    validate_for_queue,
    validate_message,
)
from broker.model.mutations import (
    DeduplicationExpired,
    DeduplicationRecorded,
    MessageDeleted,
    MessageInserted,
    Mutation,
    QueuePurged,
    VisibilityChanged,
)
from broker.model.outcomes import (
    Change,
    MutationSink,
    ReceiveOutcome,
    SendOutcome,
    SentCopies,
    SentMessage,
)
from broker.model.settings import QueueSettings
from broker.model.signing import ReceiptHandle, invalid_receipt_handle
from broker.model.state import QueueState, ReceivedMessage

MAX_VISIBILITY_TIMEOUT_S = 43_200  # 12 hours, also the cap on one receive's total time
MAX_MESSAGES_PER_RECEIVE = 10
MAX_WAIT_TIME_S = 20
SWEEP_LIMIT = 10_000  # deletions per expire() call, so one transaction stays short
# What SQS answered when a standard queue's in-flight quota was reached (rendered by
# Cbsoftware/pressureNET-server#74 from a real 403 response).
# ChangeMessageVisibility's reason for a message gone, or received again since the handle was
# issued (real SQS output quoted in mapbox/ecs-watchbot#135).
NOT_CHANGEABLE = "Message does not exist or is not available for visibility timeout change"
OVER_LIMIT_MESSAGE = (
    "Too many messages have been received without being deleted. Please delete your received "
    "messages or let them timeout before receiving more."
)


def resolve_wait_time(settings: QueueSettings, requested: int | None) -> int:
    """Return the long-poll wait of a ReceiveMessage: the request's, else the queue's.

    Args:
        settings: the queue's settings (ReceiveMessageWaitTimeSeconds).
        requested: WaitTimeSeconds from the request, if any.

    Returns:
        Seconds to wait for messages.

    Raises:
        SqsError: ``InvalidParameterValue`` outside 0-20.
    """
    if requested is None:
        return settings.receive_message_wait_time_seconds
    if not 0 <= requested <= MAX_WAIT_TIME_S:
        raise invalid_parameter(
            "WaitTimeSeconds", requested, f"Must be >= 0 and <= {MAX_WAIT_TIME_S}, if provided"
        )
    return requested


class QueueIndex(QueueState):
    """Messages of one queue: sends, receives, deletes, visibility, purge, retention.

    Create one with :func:`broker.model.new_index`; standard and FIFO queues are subclasses.
    """

    # ------------------------------------------------------------------ queries

    def counts(self, now: int) -> QueueCounts:
        """Return the Approximate* counts: (visible, in flight, delayed)."""
        self._advance(now)
        delayed = len(self._delayed)
        return QueueCounts(self._present - self._in_flight - delayed, self._in_flight, delayed)

    def oldest_enqueued_at(self, now: int) -> int | None:
        """Return when the oldest message present was enqueued, or None for an empty queue.

        What CloudWatch's ApproximateAgeOfOldestMessage is computed from: every message not
        deleted, in flight and delayed ones included, to the second (the retention timeline's
        grain). Costs O(received messages + the subclass's candidates): for metric scrapes,
        not for requests.
        """
        self._advance(now)
        times = [
            entry.enqueued_at if entry.enqueued_at is not None else self._timeline.time_of(seq)
            for seq, entry in self._received.items()
        ]
        fresh = self._oldest_fresh()
        if fresh is not None:
            times.append(self._timeline.time_of(fresh))
        known = [time for time in times if time is not None]
        return min(known) if known else None

    def next_wakeup(self, now: int) -> int | None:
        """Return when the next delayed or in-flight message becomes visible, if any.

        The shell sleeps long-pollers until then (or until ``wake_receivers`` fires); a
        wake-up may find nothing receivable (e.g. a FIFO group still locked), never the
        opposite.
        """
        self._advance(now)
        timers = self._timers
        while timers and not self._timer_is_live(*timers[0]):
            heapq.heappop(timers)
        return timers[0][0] if timers else None

    def update_settings(self, settings: QueueSettings, now: int | None = None) -> None:
        """Adopt new settings (SetQueueAttributes); they apply from the next operation.

        On a FIFO queue a new DelaySeconds also applies to the messages already there and
        not yet received, counted from their send (AWS, "Amazon SQS delay queues": "For FIFO
        queues, the per-queue delay setting is retroactive"); a standard queue's messages
        keep the delay they were sent with.

        Args:
            settings: the new settings, of the same queue type.
            now: the time; None: the latest time an operation was called with.
        """
        if settings.fifo != self.settings.fifo:
            raise ValueError("a queue cannot change type")
        if now is None:
            now = self._latest_now
        self._advance(now)  # what the old delay made due by now is due
        old_delay_ms = self._fifo_delay_ms()
        self.settings = settings
        new_delay_ms = self._fifo_delay_ms()
        if new_delay_ms != old_delay_ms:
            self._redelay(now, old_delay_ms, new_delay_ms)

    def _redelay(self, now: int, old_delay_ms: int, new_delay_ms: int) -> None:
        """Move the due times of a FIFO queue's fresh messages to a new queue delay.

        Only FIFO queues get here (standard ones report no delay change: it is not
        retroactive there).
        """

    def close(self) -> None:
        """Mark the queue deleted: sends still in flight to the store are not activated."""
        self._closed = True

    # ------------------------------------------------------------------ sends

    def send(
        self,
        now: int,
        request: SendRequest,
        *,
        characters_checked: bool = False,
        size: int | None = None,
    ) -> SendOutcome:
        """SendMessage: validate and accept one message.

        ``characters_checked``: the caller has checked the body's characters already (see
        :func:`~broker.model.messages.validate_send`). ``size``: ``message_size(request)``,
        when the caller has it already.

        Raises:
            SqsError: the message breaks a rule; nothing was accepted.
        """
        outcome = self.send_batch(
            now,
            [request],
            characters_checked=characters_checked,
            sizes=None if size is None else (size,),
        )
        result = outcome.results[0]
        if isinstance(result, SqsError):
            raise result
        return outcome

    def send_batch(
        self,
        now: int,
        requests: Sequence[SendRequest],
        *,
        characters_checked: bool = False,
        sizes: Sequence[int] | None = None,
    ) -> SendOutcome:
        """SendMessageBatch: accept each valid message; report each invalid one.

        A FIFO duplicate (same deduplication id within 5 minutes) is answered with the
        original message's id and sequence number and is not enqueued again.

        ``sizes``: ``message_size`` of each request, when the caller has them already.
        """
        self._advance(now)
        settings = self.settings
        fifo = settings.fifo
        results: list[SentMessage | SqsError] = []
        mutations: list[Mutation] = []
        accepted: list[tuple[int, int, str | None]] = []
        for i, request in enumerate(requests):
            try:
                # validate_send's two halves, with the size the caller may have computed
                validate_message(request, characters_checked=characters_checked)
                size = message_size(request) if sizes is None else sizes[i]
                validate_for_queue(settings, request, size)
            except SqsError as error:
                results.append(error)
                continue
            seq, message_id = self._accept(now, request, mutations, accepted)
            duplicate = message_id is None
            if message_id is None:  # a FIFO duplicate: the original's id
                message_id = self._signer.message_id(self.queue_id, seq)
            sequence = sequence_number(seq) if fifo else None
            results.append(SentMessage(message_id, sequence, seq, duplicate))
        return SendOutcome(results, mutations, [lambda: self._activate_sent(accepted)])

    def send_copy(self, now: int, request: SendRequest, size: int, copies: SentCopies) -> bool:
        """SendMessage of one copy of a published message (SNS fan-out), into ``copies``.

        The same rules and records as :meth:`send`, without its per-call objects: the caller
        checked the rules on the message alone (:func:`~broker.model.messages.validate_message`,
        once for many copies), this checks the queue's (``size`` is ``message_size(request)``).
        The copy becomes receivable in ``copies.on_durable``; a FIFO duplicate adds nothing.

        Returns:
            True if the queue took the copy in; False for a FIFO duplicate (accepted, as SQS
            answers a duplicate send, but not added: not counted as sent either).

        Raises:
            SqsError: the queue refuses the message; nothing was accepted.
        """
        self._advance(now)
        validate_for_queue(self.settings, request, size)
        accepted = copies.accepted.get(self)
        if accepted is None:
            accepted = copies.accepted[self] = []
        _, message_id = self._accept(now, request, copies.mutations, accepted)
        return message_id is not None

    def _accept(
        self,
        now: int,
        request: SendRequest,
        mutations: MutationSink,
        accepted: list[tuple[int, int, str | None]],
    ) -> tuple[int, str | None]:
        """Enqueue a valid message (pending until ``_activate_sent(accepted)``).

        Returns:
            Its seq and message id; a FIFO duplicate's original seq and None.
        """
        settings = self.settings
        deduplication_id = None
        key = None
        delay = request.delay_seconds
        if settings.fifo:
            deduplication_id = self._deduplication_id(request)
            key = self._deduplication_key(deduplication_id, request)
            original = self._dedup.lookup(key, now)
            if original is not None:
                return original, None
            delay = settings.delay_seconds
        elif delay is None:
            delay = settings.delay_seconds
        seq = self._next_seq
        self._next_seq += 1
        self._timeline.record(seq, max(now, self._latest_now))
        visible_at = now + delay * 1000
        # What _activate_sent takes: the due time; on a FIFO queue the send time, to which it
        # adds the queue's delay as it is then (it may change before the insert is durable).
        stamp = now if settings.fifo else visible_at
        queue_id = self.queue_id
        message_id = self._signer.message_id(queue_id, seq)
        mutations.append(
            MessageInserted(
                queue_id=queue_id,
                seq=seq,
                message_id=message_id,
                body=request.body,
                attributes=request.attributes,
                sent_at=now,
                visible_at=visible_at,
                group_id=request.group_id,
                deduplication_id=deduplication_id,
                sender_id=request.sender_id,
                trace_header=request.trace_header,
                body_md5=request.body_md5,
            )
        )
        if key is not None:
            expires_at = now + DEDUPLICATION_WINDOW_MS
            self._dedup.remember(key, seq, expires_at)
            mutations.append(
                DeduplicationRecorded(
                    queue_id=self.queue_id, key=key, seq=seq, expires_at=expires_at
                )
            )
        accepted.append((seq, stamp, request.group_id))
        self._pending += 1
        return seq, message_id

    def _deduplication_id(self, request: SendRequest) -> str:
        """A FIFO message's deduplication id: the request's, else the body's digest."""
        if request.deduplication_id is not None:
            return request.deduplication_id
        return content_deduplication_id(request.body)

    def _deduplication_key(self, deduplication_id: str, request: SendRequest) -> bytes:
        by_group = self.settings.deduplication_scope == "messageGroup"
        return deduplication_key(deduplication_id, request.group_id if by_group else None)

    # ------------------------------------------------------------------ receives

    def receive(
        self,
        now: int,
        *,
        max_messages: int = 1,
        visibility_timeout: int | None = None,
        attempt_id: str | None = None,
        dead_letter: QueueIndex | None = None,
    ) -> ReceiveOutcome:
        """ReceiveMessage (one attempt; the shell long-polls by retrying).

        Args:
            now: the time.
            max_messages: MaxNumberOfMessages, 1-10.
            visibility_timeout: VisibilityTimeout of the request, else the queue's.
            attempt_id: ReceiveRequestAttemptId (FIFO queues only; ignored otherwise).
            dead_letter: the index of the RedrivePolicy's target, when it exists.

        Returns:
            The deliveries and the mutations (deliveries, dead-letter moves, expiries).

        Raises:
            SqsError: ``InvalidParameterValue`` for a bad count, timeout or attempt id.
        """
        raise NotImplementedError

    def _receive_window(self, max_messages: int, visibility_timeout: int | None) -> int:
        if not 1 <= max_messages <= MAX_MESSAGES_PER_RECEIVE:
            raise invalid_parameter(
                "MaxNumberOfMessages",
                max_messages,
                f"Must be between 1 and {MAX_MESSAGES_PER_RECEIVE}, if provided",
            )
        if visibility_timeout is None:
            return self.settings.visibility_timeout * 1000
        if not 0 <= visibility_timeout <= MAX_VISIBILITY_TIMEOUT_S:
            raise invalid_parameter(
                "VisibilityTimeout",
                visibility_timeout,
                f"Must be between 0 and {MAX_VISIBILITY_TIMEOUT_S}, if provided",
            )
        return visibility_timeout * 1000

    def _in_flight_room(self, max_messages: int, window_ms: int) -> int:
        """Cap a receive so the queue stays within its in-flight limit (after ``_advance``).

        A receive with ``VisibilityTimeout=0`` puts nothing in flight and is not capped.
        """
        if window_ms == 0:
            return max_messages
        return max(0, min(max_messages, self._in_flight_limit - self._in_flight))

    def check_in_flight_limit(self, *, long_poll: bool) -> None:
        """After a receive that returned nothing: raise AWS's error if the quota is why.

        As AWS documents ("Amazon SQS message quotas"): a standard queue at its in-flight
        quota answers a short poll with ``OverLimit`` (HTTP 403); a long poll, and any receive
        of a FIFO queue, gets no messages and no error.

        Raises:
            SqsError: ``OverLimit``, HTTP 403.
        """
        if self.settings.fifo or long_poll or self._in_flight < self._in_flight_limit:
            return
        raise SqsError(OVER_LIMIT, OVER_LIMIT_MESSAGE, status=403)

    # ------------------------------------------------------------------ handles

    def delete(self, now: int, receipt_handle: str) -> Change:
        """DeleteMessage.

        A handle of a message already gone succeeds quietly. On a standard queue an older
        handle of a message still present deletes it (AWS: "the request will succeed, but the
        message might not be deleted"); a FIFO queue refuses a handle that is no longer the
        current one, or whose visibility timeout has passed.

        Raises:
            SqsError: ``ReceiptHandleIsInvalid``, or ``InvalidParameterValue`` (FIFO, expired).
        """
        self._advance(now)
        handle = self._parse_handle(receipt_handle)
        entry = self._received.get(handle.seq)
        if entry is None:
            return self._delete_unreceived(handle)
        if self.settings.fifo and not self._is_current(handle, entry):
            raise invalid_parameter(
                "ReceiptHandle", receipt_handle, "The receipt handle has expired"
            )
        self._remove(handle.seq, entry)
        return Change([MessageDeleted(queue_id=self.queue_id, seq=handle.seq)], [self._wake])

    def _delete_unreceived(self, handle: ReceiptHandle) -> Change:
        """DeleteMessage naming a message with no receive on record: gone, here."""
        return Change()

    def change_visibility(self, now: int, receipt_handle: str, visibility_timeout: int) -> Change:
        """ChangeMessageVisibility: the new timeout counts from ``now``.

        Only the handle of the message's latest receive changes it, on both queue types: a
        consumer whose lease lapsed must not release or extend the next consumer's.

        Raises:
            SqsError: ``ReceiptHandleIsInvalid``; ``InvalidParameterValue`` for a gone
                message, the handle of an earlier receive, a bad timeout, or past 12 hours
                since the receive; ``MessageNotInflight`` for a visible message.
        """
        self._advance(now)
        if not 0 <= visibility_timeout <= MAX_VISIBILITY_TIMEOUT_S:
            raise invalid_parameter(
                "VisibilityTimeout",
                visibility_timeout,
                f"Must be between 0 and {MAX_VISIBILITY_TIMEOUT_S}, if provided",
            )
        handle = self._parse_handle(receipt_handle)
        entry = self._received.get(handle.seq)
        if entry is None:
            raise invalid_parameter("ReceiptHandle", receipt_handle, NOT_CHANGEABLE)
        if not entry.in_flight:
            raise SqsError(MESSAGE_NOT_INFLIGHT, "The message referred to isn't in flight.")
        if not self._is_current(handle, entry):
            # The handle of an earlier receive: the message is now another consumer's, whose
            # lease it must not shorten or extend (each receive issues a new handle, and only
            # the latest one counts; see the ReceiveMessage reference). A standard queue gets
            # SQS's "not available" reason, a FIFO queue its "expired" one.
            reason = "The receipt handle has expired" if self.settings.fifo else NOT_CHANGEABLE
            raise invalid_parameter("ReceiptHandle", receipt_handle, reason)
        visible_at = now + visibility_timeout * 1000
        if visible_at > entry.received_at + MAX_VISIBILITY_TIMEOUT_S * 1000:
            raise invalid_parameter(
                "VisibilityTimeout",
                visibility_timeout,
                f"Total VisibilityTimeout for the message is beyond the limit "
                f"[{MAX_VISIBILITY_TIMEOUT_S} seconds]",
            )
        self._set_deadline(handle.seq, entry, visible_at, now)
        change = VisibilityChanged(queue_id=self.queue_id, seq=handle.seq, visible_at=visible_at)
        return Change([change], [self._wake])

    def _parse_handle(self, receipt_handle: str) -> ReceiptHandle:
        # The handle of a message's current receive, as issued (an equal string): known good,
        # without checking its MAC again. Anything else is checked in full.
        named = self._signer.peek_receipt_handle(receipt_handle)
        if named is not None and named.queue_id == self.queue_id:
            entry = self._received.get(named.seq)
            if (
                entry is not None
                and entry.handle is not None
                and receipt_handle.isascii()
                and hmac.compare_digest(entry.handle, receipt_handle)  # no timing hint either
            ):
                return named
        handle = self._signer.parse_receipt_handle(receipt_handle)
        # A handle for another queue, or for a receive that never happened, is not ours.
        if handle.queue_id != self.queue_id or handle.seq >= self._next_seq or handle.serial < 1:
            raise invalid_receipt_handle(receipt_handle)
        return handle

    def _is_current(self, handle: ReceiptHandle, entry: ReceivedMessage) -> bool:
        """Whether ``handle`` is the one of the message's current receive: its serial and its
        receive time, which the store keeps, so that the handle of a receive a crash forgot
        (same serial, another time) is refused in every later run (see
        broker.model.signing). A handle of an older version has no time: it can only be the
        current one of a receive restored from the store."""
        if not entry.in_flight or handle.serial != entry.receive_count:
            return False
        if handle.received_at is None:
            return entry.handle is None
        return handle.received_at == entry.received_at

    # ------------------------------------------------------------------ purge, retention

    def purge(self, now: int) -> Change:
        """PurgeQueue: every message goes, in flight ones included.

        Raises:
            SqsError: ``PurgeQueueInProgress`` (HTTP 403) within 60 s of the last purge.
        """
        self._advance(now)
        last = self._last_purge_at
        if last is not None and now - last < self._purge_interval_ms:
            raise SqsError(
                PURGE_QUEUE_IN_PROGRESS,
                f"Only one PurgeQueue operation on {self.name} is allowed every 60 seconds.",
                status=403,
            )
        self._last_purge_at = now
        self._purged_below = self._next_seq
        self._received.clear()
        self._delayed.clear()
        self._timers.clear()
        self._timeline.clear()
        self._clear_retention()
        self._present = 0
        self._in_flight = 0
        self._clear()
        return Change([QueuePurged(queue_id=self.queue_id, below_seq=self._purged_below)])

    def expire(self, now: int, limit: int = SWEEP_LIMIT) -> Change:
        """Drop messages past their retention period and deduplication ids past their window.

        The shell calls this now and then (every second is plenty). Every message counts:
        never received, in flight, visible again after a receive, moved in from a source
        queue (AWS deletes them all once past the period). At most ``limit`` deletions a call
        (received ones first, then fresh ones), so one commit stays short; the rest go at
        the next calls. A fresh FIFO message behind a group head that is not due yet
        (in a queue whose moved-in messages restarted their retention) waits for a receive.
        Once the deletions are durable, long-polling receives are woken (``on_durable``).
        """
        self._advance(now)
        mutations: list[Mutation] = []
        boundary, cutoff = self._retention_cutoff(now)
        mutations.extend(
            MessageDeleted(queue_id=self.queue_id, seq=seq)
            for seq in self._sweep(boundary, cutoff, limit)
        )
        # A message gone may make others receivable, as a delete does: the next of a FIFO
        # group whose in-flight head expired, or room under the in-flight limit.
        after = [self._wake] if mutations else []
        if self._present == 0 and self._pending == 0:
            self._timeline.clear()
        self._timeline.drop_below(boundary)
        # Deduplication entries and receive attempts past their 5 minutes: one deletion of
        # the rows of both, when either has some.
        deduplication_expired = self._dedup.expire(now) > 0
        if self._prune(now) or deduplication_expired:
            mutations.append(DeduplicationExpired(queue_id=self.queue_id, now=now))
        return Change(mutations, after)
