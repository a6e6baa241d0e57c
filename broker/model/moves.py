"""Message move tasks (StartMessageMoveTask and friends), pure: no clock, no tasks, no I/O.

Here live the parts a test can pin down without a broker: the life of one task, the book of
recent tasks per source queue, the task handle, the request checks, and the rate limiter that
paces a task. :mod:`broker.move_tasks` is the trio shell that moves the messages.

Life of a task (AWS's statuses)::

    RUNNING --source empty--> COMPLETED
    RUNNING --cancel--> CANCELLING --runner notices--> CANCELLED
    RUNNING or CANCELLING --error--> FAILED

Times are milliseconds: wall-clock (since the epoch) for ``StartedTimestamp``, any monotonic
origin for the rate limiter.
"""

from __future__ import annotations

import base64
import binascii
import enum
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from broker.model.errors import INVALID_PARAMETER_VALUE, SqsError, invalid_parameter
from broker.model.names import parse_queue_arn

MAX_RATE: Final = 500  # AWS: "The maximum value for messages per second is 500"
BATCH: Final = 10  # messages per receive, and so per durable move
RECENT_TASKS: Final = 10  # ListMessageMoveTasks: "up to 10" per source queue
DEFAULT_LIST_RESULTS: Final = 1  # ListMessageMoveTasks: "The default is 1"
_MILLI: Final = 1000  # the limiter counts credit in thousandths of a message


class MoveStatus(enum.StrEnum):
    """The statuses ListMessageMoveTasks reports."""

    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    CANCELLING = "CANCELLING"
    CANCELLED = "CANCELLED"
    FAILED = "FAILED"


ACTIVE: Final = frozenset({MoveStatus.RUNNING, MoveStatus.CANCELLING})


@dataclass(slots=True)
class MoveTask:
    """One task: what it moves, at which rate, and how far it got.

    Attributes:
        task_id: a UUID string; with the source ARN it makes the task handle.
        source_arn: the dead-letter queue the messages leave.
        destination_arn: where they go; None sends each back to its original source queue.
        max_per_second: MaxNumberOfMessagesPerSecond, or None for "as fast as the store goes".
        started_at: StartedTimestamp, milliseconds since the epoch.
        to_move: ApproximateNumberOfMessagesToMove, counted when the task started.
        moved: ApproximateNumberOfMessagesMoved so far (each one durably moved).
        status: where the task is in its life.
        failure_reason: FailureReason, an AWS error code, once FAILED.
    """

    task_id: str
    source_arn: str
    destination_arn: str | None
    max_per_second: int | None
    started_at: int
    to_move: int
    moved: int = 0
    status: MoveStatus = MoveStatus.RUNNING
    failure_reason: str | None = None

    @property
    def handle(self) -> str:
        """The opaque TaskHandle that CancelMessageMoveTask takes."""
        return encode_task_handle(self.task_id, self.source_arn)

    @property
    def active(self) -> bool:
        """Tell whether the task still counts as the one active task of its source."""
        return self.status in ACTIVE

    def record_moved(self, count: int) -> None:
        """Count messages that are now durably in their destination."""
        if count < 0:
            raise ValueError("a task cannot un-move messages")
        self.moved += count

    def request_cancel(self) -> None:
        """CancelMessageMoveTask: RUNNING becomes CANCELLING; the runner finishes the job.

        Raises:
            SqsError: ``InvalidParameterValue`` when the task is not RUNNING (AWS: "A
                message movement can only be cancelled when the current status is RUNNING").
        """
        if self.status is not MoveStatus.RUNNING:
            raise SqsError(
                INVALID_PARAMETER_VALUE,
                f"Only a task whose status is RUNNING can be cancelled; this one is {self.status}.",
            )
        self.status = MoveStatus.CANCELLING

    def finish(self) -> None:
        """The runner stopped without error: COMPLETED, or CANCELLED if asked to stop."""
        if self.status is MoveStatus.RUNNING:
            self.status = MoveStatus.COMPLETED
        elif self.status is MoveStatus.CANCELLING:
            self.status = MoveStatus.CANCELLED
        else:
            raise ValueError(f"a {self.status} task cannot finish")

    def fail(self, reason: str) -> None:
        """The runner stopped on an error; ``reason`` is the AWS error code behind it."""
        if not self.active:
            raise ValueError(f"a {self.status} task cannot fail")
        self.status = MoveStatus.FAILED
        self.failure_reason = reason

    def entry(self) -> dict[str, Any]:
        """Render the task as a ListMessageMoveTasksResultEntry.

        As AWS does, the handle is shown only while the task can still be cancelled, and the
        destination and rate only when the request gave them.
        """
        entry: dict[str, Any] = {
            "SourceArn": self.source_arn,
            "Status": str(self.status),
            "StartedTimestamp": self.started_at,
            "ApproximateNumberOfMessagesMoved": self.moved,
            "ApproximateNumberOfMessagesToMove": self.to_move,
        }
        if self.status is MoveStatus.RUNNING:
            entry["TaskHandle"] = self.handle
        if self.destination_arn is not None:
            entry["DestinationArn"] = self.destination_arn
        if self.max_per_second is not None:
            entry["MaxNumberOfMessagesPerSecond"] = self.max_per_second
        if self.failure_reason is not None:
            entry["FailureReason"] = self.failure_reason
        return entry


class MoveTaskBook:
    """The recent tasks of every source queue, newest last; at most one active per source."""

    def __init__(self, keep: int = RECENT_TASKS) -> None:
        """Create an empty book.

        Args:
            keep: how many tasks to remember per source queue.
        """
        self._keep = keep
        self._by_source: dict[str, deque[MoveTask]] = {}

    def add(self, task: MoveTask) -> list[MoveTask]:
        """Record a task that is starting.

        Returns:
            The tasks that fell out of the book to make room (finished ones, oldest first):
            the shell forgets them in the store too.

        Raises:
            SqsError: ``InvalidParameterValue`` when its source already has an active task.
        """
        tasks = self._by_source.setdefault(task.source_arn, deque())
        if any(t.active for t in tasks):
            raise SqsError(
                INVALID_PARAMETER_VALUE,
                "There is already a task running. Only one active task is allowed for a "
                "source queue arn at a given time.",
            )
        tasks.append(task)
        return self._trim(tasks)

    def restore(self, task: MoveTask) -> list[MoveTask]:
        """Put back a task read from the store (oldest first), whatever its status.

        Returns:
            The tasks that fell out of the book, as :meth:`add` does.
        """
        tasks = self._by_source.setdefault(task.source_arn, deque())
        tasks.append(task)
        return self._trim(tasks)

    def _trim(self, tasks: deque[MoveTask]) -> list[MoveTask]:
        dropped = []
        while len(tasks) > self._keep:
            # Only the newest task can be active, so what falls off is finished.
            dropped.append(tasks.popleft())
        return dropped

    def find(self, source_arn: str, task_id: str) -> MoveTask | None:
        """Return the task with ``task_id`` among the recent ones of ``source_arn``."""
        for task in self._by_source.get(source_arn, ()):
            if task.task_id == task_id:
                return task
        return None

    def recent(self, source_arn: str, limit: int) -> list[MoveTask]:
        """Return up to ``limit`` tasks of ``source_arn``, the most recent first."""
        tasks = self._by_source.get(source_arn, deque())
        return list(reversed(tasks))[:limit]

    def active(self) -> Iterator[MoveTask]:
        """Yield every task that is RUNNING or CANCELLING."""
        for tasks in self._by_source.values():
            yield from (t for t in tasks if t.active)


# ---------------------------------------------------------------------- handles and checks


def encode_task_handle(task_id: str, source_arn: str) -> str:
    """Build the opaque TaskHandle; it names the source so a cancel can find the queue."""
    return base64.urlsafe_b64encode(f"{task_id}&{source_arn}".encode()).decode()


def decode_task_handle(handle: str) -> tuple[str, str] | None:
    """Split a TaskHandle into (task id, source ARN); None when it is not one of ours."""
    try:
        text = base64.urlsafe_b64decode(handle.encode("ascii")).decode()
    except (ValueError, UnicodeError, binascii.Error):
        return None
    task_id, separator, source_arn = text.partition("&")
    if not separator or parse_queue_arn(source_arn) is None:
        return None
    try:
        uuid.UUID(task_id)
    except ValueError:
        return None
    return task_id, source_arn


def check_rate(value: int | None) -> int | None:
    """Validate MaxNumberOfMessagesPerSecond (absent: no fixed rate).

    Raises:
        SqsError: ``InvalidParameterValue`` outside 1-500.
    """
    if value is not None and not 1 <= value <= MAX_RATE:
        raise invalid_parameter(
            "MaxNumberOfMessagesPerSecond", value, f"Must be between 1 and {MAX_RATE}"
        )
    return value


def check_list_limit(value: int | None) -> int:
    """Validate ListMessageMoveTasks' MaxResults and apply its default.

    Raises:
        SqsError: ``InvalidParameterValue`` outside 1-10.
    """
    if value is None:
        return DEFAULT_LIST_RESULTS
    if not 1 <= value <= RECENT_TASKS:
        raise invalid_parameter("MaxResults", value, f"Must be between 1 and {RECENT_TASKS}")
    return value


# ---------------------------------------------------------------------- pacing


class RateLimiter:
    """A token bucket: ``rate`` messages a second on average, at most ``burst`` at once.

    Credit is kept in thousandths of a message, so the arithmetic is exact on integer
    milliseconds: each millisecond adds ``rate`` thousandths. It starts full, so the first
    batch goes at once. Over any interval of ``t`` ms the limiter grants at most
    ``burst + rate * t / 1000`` messages.
    """

    def __init__(self, rate: int, burst: int, now: int) -> None:
        """Create a full bucket.

        Args:
            rate: messages per second, at least 1.
            burst: most messages granted at once, at least 1.
            now: the time, in milliseconds of a monotonic clock.
        """
        if rate < 1 or burst < 1:
            raise ValueError("rate and burst must be positive")
        self._rate = rate
        self._capacity = burst * _MILLI
        self._credit = self._capacity
        self._at = now

    @classmethod
    def for_task(cls, rate: int, now: int) -> RateLimiter:
        """Create the limiter of a task moving ``rate`` messages a second in batches."""
        return cls(rate, min(BATCH, rate), now)

    def _refill(self, now: int) -> None:
        if now > self._at:  # a clock that steps back adds nothing
            self._credit = min(self._capacity, self._credit + (now - self._at) * self._rate)
            self._at = now

    def available(self, now: int) -> int:
        """Return how many whole messages could be taken at ``now``."""
        self._refill(now)
        return self._credit // _MILLI

    def take(self, now: int, wanted: int) -> int:
        """Take up to ``wanted`` messages' worth of credit; return how many were granted."""
        granted = max(0, min(wanted, self.available(now)))
        self._credit -= granted * _MILLI
        return granted

    def wait_ms(self, now: int, wanted: int = 1) -> int:
        """Return how long until ``wanted`` messages (capped at the burst) can be taken."""
        self._refill(now)
        deficit = min(wanted * _MILLI, self._capacity) - self._credit
        return max(0, -(-deficit // self._rate))
