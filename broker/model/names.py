"""Name and identifier rules: queue names, queue ARNs, FIFO group/deduplication/attempt ids."""

from __future__ import annotations

import re
from typing import NamedTuple

from broker.model.errors import (
    INVALID_PARAMETER_VALUE,
    QUEUE_DELETED_RECENTLY,
    SqsError,
    invalid_parameter,
)

MAX_QUEUE_NAME_LENGTH = 80  # AWS: "1 to 80 in length", the .fifo suffix included
FIFO_SUFFIX = ".fifo"
MAX_FIFO_ID_LENGTH = 128  # MessageGroupId, MessageDeduplicationId, ReceiveRequestAttemptId
# AWS (DeleteQueue): "When you delete a queue, you must wait at least 60 seconds before
# creating a queue with the same name."
NAME_REUSE_DELAY_MS = 60_000
QUEUE_DELETED_RECENTLY_MESSAGE = (
    "You must wait 60 seconds after deleting a queue before you can create another with the "
    "same name."
)

_QUEUE_NAME = re.compile(r"[A-Za-z0-9_-]{1,80}")
# AWS: "alphanumeric characters and punctuation (!"#$%&'()*+,-./:;<=>?@[\]^_`{|}~)".
_FIFO_ID = re.compile(r"[0-9A-Za-z!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~]{1,128}")
_QUEUE_ARN = re.compile(r"arn:(aws[a-z-]*):sqs:([a-z0-9-]+):(\d{12}):([A-Za-z0-9_.-]{1,80})")

STANDARD_NAME_RULE = (
    "Can only include alphanumeric characters, hyphens, or underscores. 1 to 80 in length"
)
FIFO_NAME_RULE = (
    "The name of a FIFO queue can only include alphanumeric characters, hyphens, or "
    "underscores, must end with .fifo suffix and be 1 to 80 in length"
)


def validate_queue_name(name: str, *, fifo: bool) -> None:
    """Check a queue name against AWS's rules for its queue type.

    A standard queue name is 1-80 of ``[A-Za-z0-9_-]``; a FIFO queue name is the same with a
    ``.fifo`` suffix that counts towards the 80. A name ending in ``.fifo`` therefore makes a
    valid name only for a FIFO queue, and a FIFO queue needs it.

    Args:
        name: the requested queue name.
        fifo: whether the queue is created with ``FifoQueue=true``.

    Raises:
        SqsError: ``InvalidParameterValue`` with AWS's message.
    """
    if fifo:
        stem = name[: -len(FIFO_SUFFIX)]
        valid_stem = _QUEUE_NAME.fullmatch(stem) is not None
        if not name.endswith(FIFO_SUFFIX) or not valid_stem or len(name) > MAX_QUEUE_NAME_LENGTH:
            raise SqsError(INVALID_PARAMETER_VALUE, FIFO_NAME_RULE)
    elif _QUEUE_NAME.fullmatch(name) is None:
        raise SqsError(INVALID_PARAMETER_VALUE, STANDARD_NAME_RULE)


def validate_fifo_id(value: str, parameter: str) -> None:
    """Check a MessageGroupId, MessageDeduplicationId or ReceiveRequestAttemptId.

    Args:
        value: the identifier.
        parameter: the parameter name, used in the error message.

    Raises:
        SqsError: ``InvalidParameterValue`` with AWS's message.
    """
    if _FIFO_ID.fullmatch(value) is None:
        raise invalid_parameter(
            parameter,
            value,
            f"{parameter} can only include alphanumeric and punctuation characters. "
            f"1 to {MAX_FIFO_ID_LENGTH} in length",
        )


class QueueArn(NamedTuple):
    """The parts of ``arn:<partition>:sqs:<region>:<account>:<name>``."""

    partition: str
    region: str
    account: str
    name: str


def parse_queue_arn(text: str) -> QueueArn | None:
    """Split an SQS queue ARN into its parts.

    Args:
        text: the candidate ARN.

    Returns:
        The parts, or None when ``text`` is not an SQS queue ARN.
    """
    match = _QUEUE_ARN.fullmatch(text)
    if match is None:
        return None
    partition, region, account, name = match.groups()
    return QueueArn(partition, region, account, name)


class RecentlyDeleted:
    """Names of queues deleted less than 60 seconds ago, which CreateQueue may not reuse yet.

    AWS answers such a CreateQueue with ``AWS.SimpleQueueService.QueueDeletedRecently``
    (HTTP 400). Entries older than the window are dropped as new ones arrive, so the memory
    held is bounded by the deletions of the last minute.
    """

    def __init__(self, window_ms: int = NAME_REUSE_DELAY_MS) -> None:
        """Create an empty record.

        Args:
            window_ms: how long a deleted name stays blocked, in milliseconds.
        """
        self.window_ms = window_ms
        self._deleted: dict[str, int] = {}  # name -> deleted at, oldest first

    def __len__(self) -> int:
        return len(self._deleted)

    def record(self, name: str, now: int) -> None:
        """Remember that the queue ``name`` was deleted at ``now`` (ms since the epoch)."""
        self._deleted.pop(name, None)  # re-inserted last: the dict stays in deletion order
        self._deleted[name] = now
        self._expire(now)

    def check(self, name: str, now: int) -> None:
        """Refuse to create ``name`` at ``now`` while its deletion is recent.

        Raises:
            SqsError: ``AWS.SimpleQueueService.QueueDeletedRecently`` with AWS's message.
        """
        deleted_at = self._deleted.get(name)
        if deleted_at is not None and now - deleted_at < self.window_ms:
            raise SqsError(QUEUE_DELETED_RECENTLY, QUEUE_DELETED_RECENTLY_MESSAGE)

    def _expire(self, now: int) -> None:
        deleted = self._deleted
        while deleted:
            name, deleted_at = next(iter(deleted.items()))
            if now - deleted_at < self.window_ms:
                break
            del deleted[name]
