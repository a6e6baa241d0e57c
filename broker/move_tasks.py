"""Message move tasks: StartMessageMoveTask, ListMessageMoveTasks, CancelMessageMoveTask.

A task moves the messages of a dead-letter queue (the source) to a destination queue, or,
without ``DestinationArn``, each back to the queue it was dead-lettered from (the store keeps
``DeadLetterQueueSourceArn`` with every dead-lettered message). As AWS documents, a moved
message is a new message in its destination: new message id, new enqueue time (so retention
starts again), receive count zero; body, attributes, group id and sender are kept.

One batch, and why nothing is lost or duplicated:

1. Receive up to 10 messages of the source with a 60-second visibility timeout, and commit
   that durably (the model's receive, as ReceiveMessage does).
2. Read their bodies from the store.
3. In one trio step, for each message: check the destination accepts it, delete it from the
   source with its receipt handle and send it to the destination (the model's delete and
   send), then commit all of these mutations in one ``store.commit``: one transaction.

So each move is atomic: a crash (or a stop) before step 3's commit leaves the message in the
source, invisible for at most 60 seconds; after it, the message is only in the destination.
Exactly once, durably. The one way to get a duplicate is a step 3 that starts more than 60 s
after step 1 (a stalled store): the message may meanwhile have been received by a consumer
of the source; the move still deletes it there with its old handle and sends it on, and that
consumer's delete then finds nothing. At-least-once, as SQS always is; never a loss. A FIFO
destination gets a deduplication id unique to the source message (``wharf-redrive-<queue id>
-<seq>``), so it cannot be mistaken for a copy of another message and silently dropped.

Pacing. ``MaxNumberOfMessagesPerSecond`` (1-500) sets a token bucket that lets batches of up
to ``min(10, rate)`` messages through. Without it the task is not paced: batches of 10 follow
each other as fast as the store commits them (two group commits per batch), which is this
broker's "system-optimised" rate; every batch yields to the API between its commits.

Lifetime. The tasks run in a nursery the broker app owns; they stop when the broker stops.
The task ends COMPLETED when a receive finds nothing and the source counts no visible message
(messages that reach the dead-letter queue while it runs are moved too), CANCELLED after a
cancel, or FAILED (with the AWS error code as FailureReason) when a queue disappears, a
destination refuses a message, or a key for encryption at rest is missing.

Held messages. A receive can find nothing while the source still has visible messages: on a
FIFO source, those of a group whose earlier message is in flight (a consumer of the
dead-letter queue received it), which must not move before it; on any source, when the queue
is at its in-flight limit. Those messages were counted in ApproximateNumberOfMessagesToMove,
so the task does not end COMPLETED without them: it stays RUNNING and waits until the
message in flight is deleted, changes visibility, times out or expires (the queue's wake-ups
and its next deadline), then moves on, in group order. A message in flight that holds back
nothing is not waited for: like AWS's count to move, the task counts visible messages only.

A message of the source that cannot be opened (sealed at rest with a key that left the key
file, or failing authentication) is neither moved nor lost: it stays in the source, hidden for
the batch's 60 s as received, and is logged; the task moves every other message, then ends
FAILED with ``KMS.NotFoundException`` (``InternalFailure`` for a failed authentication) so that
ListMessageMoveTasks shows that it left messages behind. Released at once instead, such a
message would be taken first by every batch and the task would never get past it.

Persistence. Every task is a row in the store (``Store.save_move_task``), the 10 most recent
per source as ListMessageMoveTasks shows them. StartMessageMoveTask and CancelMessageMoveTask
answer once their row is durable; the moved count is saved at most once a second while the
task runs (it is "approximate": a crash can lose up to a second of it, never a message),
when the broker stops, and at the end. At start (:meth:`MoveTasks.load`) the book is rebuilt
from the rows: a RUNNING task resumes with the same handle, a CANCELLING one ends CANCELLED.
Messages the task had received but not moved when the broker stopped or died are invisible
in the source for up to 60 s; so that a resumed task does not end COMPLETED while they are, it
waits for the source's in-flight messages during its first 60 s before it calls the source
empty.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

import trio

from broker.model.errors import INVALID_PARAMETER_VALUE, SqsError
from broker.model.messages import SendRequest, validate_send
from broker.model.moves import (
    BATCH,
    MoveStatus,
    MoveTask,
    MoveTaskBook,
    RateLimiter,
    check_list_limit,
    check_rate,
    decode_task_handle,
)
from broker.model.mutations import Mutation
from broker.model.names import parse_queue_arn
from broker.model.outcomes import Change, Delivery
from broker.registry import Queue, QueueRegistry, now_ms
from broker.sqs import RequestContext, report_unopened
from broker.store.base import (
    KeyUnavailable,
    StoredMessage,
    StoredMoveTask,
    StoreError,
    UnopenedMessage,
    UnopenedMessages,
)
from monitoring.logging import EventLog
from monitoring.throttle import Throttle
from proto.aws.errors import common_error
from proto.aws.json_protocol import sqs_error

MOVE_VISIBILITY_TIMEOUT_S: Final = 60  # how long a message being moved is hidden in the source
PROGRESS_SAVE_INTERVAL_MS: Final = 1_000  # a running task's moved count is saved this often
STOP_SAVE_SECONDS: Final = 5.0  # bound on saving a task's progress when the broker stops
NON_EXISTENT_QUEUE: Final = "AWS.SimpleQueueService.NonExistentQueue"
INTERNAL_FAILURE: Final = "InternalFailure"

Params = Mapping[str, Any]
Result = dict[str, Any] | None
Handler = Callable[[Params, RequestContext], Awaitable[Result]]
Authorize = Callable[[Queue, RequestContext], None]


class MoveFailed(Exception):
    """A task cannot go on; ``reason`` is the AWS error code ListMessageMoveTasks shows."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _monotonic_ms() -> int:
    return int(trio.current_time() * 1000)


class MoveTasks:
    """The three actions and the runners of the tasks they start."""

    def __init__(self, registry: QueueRegistry, *, authorize: Authorize, log: EventLog) -> None:
        """Bind to the queues.

        Args:
            registry: the live queues (and, through it, the store).
            authorize: raises when the caller's queue policy denies the action.
            log: where task starts, ends and failures are reported.
        """
        self.registry = registry
        self.store = registry.store
        self.book = MoveTaskBook()
        self._authorize = authorize
        self._log = log
        self._nursery: trio.Nursery | None = None
        self._cancelled: dict[str, trio.Event] = {}  # task id -> set by CancelMessageMoveTask
        self._resume: list[MoveTask] = []  # RUNNING tasks read from the store, for run()
        # task id -> the FailureReason of a message it could not open and left in the source
        self._left_behind: dict[str, str] = {}
        self._unopened_reports = Throttle()  # see broker.sqs.report_unopened

    async def load(self) -> None:
        """Rebuild the book from the store (at start, before :meth:`run`).

        RUNNING tasks resume once :meth:`run` starts; CANCELLING ones (the broker stopped
        before the runner noticed the cancel) end CANCELLED now.
        """
        for stored in await self.store.load_move_tasks():
            task = _task_of(stored)
            dropped = self.book.restore(task)
            if dropped:  # more rows than the book keeps (a smaller RECENT_TASKS)
                await self._save(task, forget=[old.task_id for old in dropped])
            if task.status is MoveStatus.RUNNING:
                self._resume.append(task)
            elif task.status is MoveStatus.CANCELLING:
                task.finish()
                await self._save(task)
        if self._resume:
            self._log.info("move_tasks.loaded", resuming=len(self._resume))

    def actions(self) -> dict[str, Handler]:
        """The SQS actions this module answers, for :meth:`broker.sqs.SqsApi.register`."""
        return {
            "StartMessageMoveTask": self.start_message_move_task,
            "ListMessageMoveTasks": self.list_message_move_tasks,
            "CancelMessageMoveTask": self.cancel_message_move_task,
        }

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own every task's runner until cancelled (the broker app's background nursery)."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                resume, self._resume = self._resume, []
                for task in resume:
                    self._cancelled[task.task_id] = trio.Event()
                    nursery.start_soon(functools.partial(self._run, task, resumed=True))
                    self._log.info("move_task.resumed", task=task.task_id, moved=task.moved)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    # ------------------------------------------------------------------ actions

    async def start_message_move_task(self, params: Params, context: RequestContext) -> Result:
        """StartMessageMoveTask: check the queues and the rate, then start the runner.

        Raises:
            SqsError: ``InvalidParameterValue`` (not a dead-letter queue, a task already
                active, a bad rate or destination type).
            AwsError: ``ResourceNotFoundException`` for an unknown queue ARN,
                ``InvalidParameterValue`` for a malformed one, ``AccessDenied``.
        """
        source = self._queue_of_arn(params.get("SourceArn"), "SourceArn")
        self._authorize(source, context)
        if not any(
            q.settings.redrive_policy is not None
            and q.settings.redrive_policy.dead_letter_target_arn == source.arn
            for q in self.registry
        ):
            raise SqsError(
                INVALID_PARAMETER_VALUE, "Source queue must be configured as a Dead Letter Queue."
            )
        destination_arn = params.get("DestinationArn") or None
        if destination_arn is not None:
            destination = self._queue_of_arn(destination_arn, "DestinationArn")
            self._authorize(destination, dataclasses.replace(context, action="SendMessage"))
            _check_destination(source, destination)
        rate = check_rate(params.get("MaxNumberOfMessagesPerSecond"))
        if self._nursery is None:
            raise common_error("ServiceUnavailable", "The broker is stopping.")
        task = MoveTask(
            task_id=str(uuid.uuid4()),
            source_arn=source.arn,
            destination_arn=destination_arn,
            max_per_second=rate,
            started_at=now_ms(),
            to_move=source.counts(now_ms()).visible,
        )
        dropped = self.book.add(task)
        self._cancelled[task.task_id] = trio.Event()
        # Durable before the answer: a task the client was told about survives a crash.
        await self._save(task, forget=[old.task_id for old in dropped])
        if self._nursery is None:  # the broker began to stop while the row was written
            raise common_error("ServiceUnavailable", "The broker is stopping.")
        self._nursery.start_soon(self._run, task)
        self._log.info(
            "move_task.started",
            task=task.task_id,
            source=source.name,
            destination=destination_arn or "original sources",
            rate=rate or "unpaced",
        )
        return {"TaskHandle": task.handle}

    async def list_message_move_tasks(self, params: Params, context: RequestContext) -> Result:
        """ListMessageMoveTasks: the most recent tasks of a source queue, newest first."""
        source = self._queue_of_arn(params.get("SourceArn"), "SourceArn")
        self._authorize(source, context)
        limit = check_list_limit(params.get("MaxResults"))
        return {"Results": [task.entry() for task in self.book.recent(source.arn, limit)]}

    async def cancel_message_move_task(self, params: Params, context: RequestContext) -> Result:
        """CancelMessageMoveTask: a RUNNING task stops; a batch it has received but not moved
        is given back to the source, and nothing moves after this answer.

        Raises:
            SqsError: ``InvalidParameterValue`` for a malformed handle or a task that is not
                RUNNING.
            AwsError: ``ResourceNotFoundException`` when the source or the task is unknown.
        """
        handle = params.get("TaskHandle") or ""
        decoded = decode_task_handle(handle)
        if decoded is None:
            raise SqsError(INVALID_PARAMETER_VALUE, "Value for parameter TaskHandle is invalid.")
        task_id, source_arn = decoded
        source = self._queue_of_arn(source_arn, "SourceArn")
        self._authorize(source, context)
        task = self.book.find(source.arn, task_id)
        if task is None:
            raise sqs_error("ResourceNotFoundException", "Task does not exist.")
        task.request_cancel()
        event = self._cancelled.get(task_id)
        if event is not None:
            event.set()  # a runner waiting for its rate limit stops waiting
        # A batch already committing counts in the answer and in the row saved (each batch
        # checks for a cancel before it moves anything: none moves after this answer).
        await self.store.settled()
        await self._save(task)  # a cancel that was answered is not undone by a restart
        return {"ApproximateNumberOfMessagesMoved": task.moved}

    def _queue_of_arn(self, arn: object, parameter: str) -> Queue:
        if not isinstance(arn, str) or not arn:
            raise common_error(
                "MissingParameter", f"The request must contain the parameter {parameter}."
            )
        if parse_queue_arn(arn) is None:
            raise common_error(
                "InvalidParameterValue",
                f"You must use this format to specify the {parameter}: "
                "arn:<partition>:<service>:<region>:<account-id>:<resource-id>",
            )
        queue = self.registry.by_arn(arn)
        if queue is None:
            raise sqs_error(
                "ResourceNotFoundException",
                f"The resource that you specified for the {parameter} parameter doesn't exist.",
            )
        return queue

    # ------------------------------------------------------------------ the runner

    async def _run(self, task: MoveTask, *, resumed: bool = False) -> None:
        cancelled = self._cancelled[task.task_id]
        limiter = None
        if task.max_per_second is not None:
            limiter = RateLimiter.for_task(task.max_per_second, _monotonic_ms())
        saved_at = _monotonic_ms()
        # A resumed task may have left messages in flight in the source when the broker
        # stopped: until they are visible again (60 s at most), an empty receive proves nothing.
        held_until = saved_at + MOVE_VISIBILITY_TIMEOUT_S * 1000 if resumed else None
        try:
            while not cancelled.is_set():
                source = self._live(task.source_arn)
                changed = source.changed()  # taken before the batch looks at the source
                wanted = BATCH
                if limiter is not None:
                    now = _monotonic_ms()
                    wait = limiter.wait_ms(now)
                    if wait > 0:
                        with trio.move_on_after(wait / 1000):
                            await cancelled.wait()
                        continue
                    wanted = limiter.take(now, BATCH)  # at least 1: nothing to wait for
                if not await self._move_batch(task, wanted):
                    if held_until is not None and await self._await_held(
                        task, held_until, cancelled
                    ):
                        continue
                    if await self._await_released(source, changed, cancelled):
                        continue
                    break
                if _monotonic_ms() - saved_at >= PROGRESS_SAVE_INTERVAL_MS:
                    await self._save(task)
                    saved_at = _monotonic_ms()
        except trio.Cancelled:
            # The broker stops: keep the task RUNNING, with its progress, to resume it.
            with trio.move_on_after(STOP_SAVE_SECONDS, shield=True):
                try:
                    await self._save(task)
                except StoreError:
                    pass  # the progress is approximate; the messages are safe either way
            raise
        except MoveFailed as failure:
            task.fail(failure.reason)
            self._log.warning("move_task.failed", task=task.task_id, reason=failure.reason)
        except Exception as exc:  # a bug: the task fails, the broker goes on
            task.fail(INTERNAL_FAILURE)
            self._log.exception("move_task.crashed", exc, task=task.task_id)
        else:
            left_behind = self._left_behind.get(task.task_id)
            if left_behind is not None and task.status is MoveStatus.RUNNING:
                task.fail(left_behind)  # all else moved; see the module docstring
                self._log.warning("move_task.failed", task=task.task_id, reason=left_behind)
            else:
                task.finish()
                self._log.info(
                    "move_task.finished", task=task.task_id, status=task.status, moved=task.moved
                )
        finally:
            self._cancelled.pop(task.task_id, None)
            self._left_behind.pop(task.task_id, None)
        # Not reached when the broker stops the runner: the row stays RUNNING, to resume.
        try:
            await self._save(task)
        except StoreError as exc:  # the store failed: the daemon is going down anyway
            self._log.exception("move_task.not_saved", exc, task=task.task_id)

    async def _await_held(self, task: MoveTask, until_ms: int, cancelled: trio.Event) -> bool:
        """Wait for in-flight source messages to become visible; False once there are none.

        Used by resumed tasks only, until ``until_ms`` (monotonic).
        """
        source = self._live(task.source_arn)
        now = now_ms()
        if _monotonic_ms() >= until_ms or source.counts(now).in_flight == 0:
            return False
        wake_at = source.index.next_wakeup(now)
        delay_ms = until_ms - _monotonic_ms()
        if wake_at is not None:
            delay_ms = min(delay_ms, max(0, wake_at - now) + 1)
        with trio.move_on_after(delay_ms / 1000):
            await cancelled.wait()
        return True

    async def _await_released(
        self, source: Queue, changed: trio.Event, cancelled: trio.Event
    ) -> bool:
        """After a batch that found nothing: wait while visible messages are held back.

        The source still counts visible messages that no receive returns (a FIFO group behind
        a message in flight, or the in-flight limit): wait until the queue changes (a delete,
        a visibility change, a send, a retention sweep: ``changed``, taken before the batch),
        its next deadline passes (a visibility timeout) or the task is cancelled.

        Returns:
            True to try again; False when the source counts no visible message (done).
        """
        if source.deleted:
            return True  # the next batch fails the task
        now = now_ms()
        if source.counts(now).visible == 0:
            return False
        wake_at = source.index.next_wakeup(now)
        delay_s = math.inf if wake_at is None else (max(0, wake_at - now) + 1) / 1000
        with trio.move_on_after(delay_s):
            await _wait_any(changed, cancelled)
        return True

    async def _save(self, task: MoveTask, forget: Sequence[str] = ()) -> None:
        await self.store.save_move_task(_stored(task), forget)

    async def _move_batch(self, task: MoveTask, wanted: int) -> bool:
        """Move up to ``wanted`` messages; return False when the source had none to give."""
        source = self._live(task.source_arn)
        received = source.index.receive(
            now_ms(), max_messages=wanted, visibility_timeout=MOVE_VISIBILITY_TIMEOUT_S
        )
        await self._commit(received)
        deliveries = received.deliveries
        if not deliveries:
            return False
        try:
            stored = await self.store.read_messages(
                source.record.queue_id, [d.seq for d in deliveries]
            )
        except UnopenedMessages as partial:
            # Those stay received, hidden in the source: _plan skips them as it skips gone ones.
            stored = partial.opened
            self._leave_behind(task, source, partial.unopened)
        if task.status is not MoveStatus.RUNNING:
            # Cancelled while this batch was being received or read: its messages were not
            # moved when the cancel was answered, so they are not moved after it either.
            await self._commit(_release(source, deliveries, now_ms()))
            return True
        # From here to the commit is one trio step: no other task sees a half-done move.
        change, moved, failure = self._plan(task, source, deliveries, stored)
        # Counted when durable, even if the runner is cancelled (a stop) while it waits.
        counted = Change(change.mutations, [change.on_durable, lambda: task.record_moved(moved)])
        await self._commit(counted)
        if failure is not None:
            raise MoveFailed(failure)
        return True

    def _leave_behind(
        self, task: MoveTask, source: Queue, unopened: Sequence[UnopenedMessage]
    ) -> None:
        """Log messages the task cannot open, and remember to end it FAILED for them."""
        report_unopened(
            self._log,
            self._unopened_reports,
            "move_task.unopened",
            source.name,
            unopened,
            task=task.task_id,
        )
        # A missing key is the reason to show when there is one: the operator can fix it.
        for message in unopened:
            if isinstance(message.error, KeyUnavailable):
                self._left_behind[task.task_id] = message.error.code  # KMS.NotFoundException
                return
        self._left_behind.setdefault(task.task_id, INTERNAL_FAILURE)

    def _plan(
        self,
        task: MoveTask,
        source: Queue,
        deliveries: Sequence[Delivery],
        stored: Sequence[StoredMessage],
    ) -> tuple[Change, int, str | None]:
        """Delete-and-send each received message, in the model; release what cannot move.

        Returns:
            The change to commit, how many messages it moves, and the failure, if any.
        """
        now = now_ms()
        bodies = {message.seq: message for message in stored}
        mutations: list[Mutation] = []
        after: list[Callable[[], None]] = []
        moved = 0
        failure: str | None = None
        for delivery in deliveries:
            message = bodies.get(delivery.seq)
            if message is None:
                continue  # deleted meanwhile by a consumer's stale handle: nothing to move
            if failure is None:
                try:
                    change = self._move_one(task, source, delivery, message, now)
                except MoveFailed as error:
                    failure = error.reason
                else:
                    if change is not None:
                        mutations += change.mutations
                        after.append(change.on_durable)
                        moved += 1
                    continue
            release = _release(source, [delivery], now)
            mutations += release.mutations
            after.append(release.on_durable)
        return Change(mutations, after), moved, failure

    def _move_one(
        self, task: MoveTask, source: Queue, delivery: Delivery, message: StoredMessage, now: int
    ) -> Change | None:
        """Delete one message from the source and send it on; None if it is no longer ours."""
        if source.deleted:
            raise MoveFailed(NON_EXISTENT_QUEUE)
        destination_arn = task.destination_arn or message.dead_letter_source_arn
        if destination_arn is None:
            # Sent straight to the dead-letter queue: it has no source queue to go back to.
            raise MoveFailed(NON_EXISTENT_QUEUE)
        destination = self._live(destination_arn)
        request = _redrive_request(message, source, fifo=destination.settings.fifo)
        try:
            self.store.check_sealing(destination.settings)
            validate_send(destination.settings, request)
        except SqsError as error:
            raise MoveFailed(error.code) from None
        try:
            delete = source.index.delete(now, delivery.receipt_handle)
        except SqsError:
            return None  # FIFO: our handle expired and the message is someone else's now
        if not delete.mutations:
            return None  # gone meanwhile (purged, expired)
        sent = destination.index.send_batch(now, [request])
        return Change([*sent.mutations, *delete.mutations], [sent.on_durable, delete.on_durable])

    def _live(self, arn: str) -> Queue:
        queue = self.registry.by_arn(arn)
        if queue is None or queue.deleted:
            raise MoveFailed(NON_EXISTENT_QUEUE)
        return queue

    async def _commit(self, change: Change) -> None:
        if change.mutations:
            await self.store.commit(change.mutations, change.on_durable)
        else:
            change.on_durable()


async def _wait_any(*events: trio.Event) -> None:
    """Return once any of ``events`` is set."""

    async def wait(event: trio.Event, scope: trio.CancelScope) -> None:
        await event.wait()
        scope.cancel()

    async with trio.open_nursery() as nursery:
        for event in events:
            nursery.start_soon(wait, event, nursery.cancel_scope)


def _stored(task: MoveTask) -> StoredMoveTask:
    return StoredMoveTask(
        task_id=task.task_id,
        source_arn=task.source_arn,
        destination_arn=task.destination_arn,
        max_per_second=task.max_per_second,
        started_at=task.started_at,
        to_move=task.to_move,
        moved=task.moved,
        status=str(task.status),
        failure_reason=task.failure_reason,
    )


def _task_of(stored: StoredMoveTask) -> MoveTask:
    return MoveTask(
        task_id=stored.task_id,
        source_arn=stored.source_arn,
        destination_arn=stored.destination_arn,
        max_per_second=stored.max_per_second,
        started_at=stored.started_at,
        to_move=stored.to_move,
        moved=stored.moved,
        status=MoveStatus(stored.status),
        failure_reason=stored.failure_reason,
    )


def _check_destination(source: Queue, destination: Queue) -> None:
    if destination is source:
        raise SqsError(
            INVALID_PARAMETER_VALUE, "The source and destination queues must be different."
        )
    if destination.settings.fifo != source.settings.fifo:
        raise SqsError(
            INVALID_PARAMETER_VALUE,
            "The destination queue must be of the same type (standard or FIFO) as the source "
            "queue.",
        )


def _redrive_request(message: StoredMessage, source: Queue, *, fifo: bool) -> SendRequest:
    """The message as a new send: same body, attributes, group and sender."""
    return SendRequest(
        body=message.body,
        attributes=message.attributes,
        group_id=message.group_id,
        # Unique to this source message, so FIFO deduplication never drops it as a copy of
        # another; and the same if the move is retried, which cannot happen twice durably.
        deduplication_id=(
            f"wharf-redrive-{source.record.queue_id}-{message.seq}" if fifo else None
        ),
        trace_header=message.trace_header,
        sender_id=message.sender_id,
    )


def _release(source: Queue, deliveries: Sequence[Delivery], now: int) -> Change:
    """Make received messages visible again in the source (the move did not happen)."""
    mutations: list[Mutation] = []
    after: list[Callable[[], None]] = []
    for delivery in deliveries:
        try:
            change = source.index.change_visibility(now, delivery.receipt_handle, 0)
        except SqsError:
            continue  # no longer ours to release
        mutations += change.mutations
        after.append(change.on_durable)
    return Change(mutations, after)
