"""The storage interface: what the broker needs from a durable store, and nothing else.

No SQLite assumption lives here; a PostgreSQL store satisfies the same interface.

Contract:

* ``commit(mutations, on_durable)`` returns only once the mutations are durable (fsync'd).
  Commits are applied in the order ``commit`` was called: the call queues its batch before
  it first yields, so an operation done on the model and committed in the same trio step
  cannot be overtaken by a later one. ``on_durable`` runs in the trio thread right after the
  batch is durable, even when the caller was cancelled while waiting; a cancelled caller
  never corrupts or drops its batch.
* ``commit_later(mutations, on_durable)`` returns at once: nobody waits for the fsync. It is
  for writes whose loss in a crash acknowledges nothing -- a standard queue's receive (receive
  count, visibility deadline): lost, the message is simply visible again after the restart,
  which at-least-once delivery allows. A later ``commit`` that touches the same message (a
  visibility change, a redelivery, a move) is durable only with it, so it is never applied, or
  acknowledged, before the receive it refers to. An implementation may hold receive records
  back for a while (the SQLite store does, for a second: ``broker/store/write_behind.py``) and
  drop a record whose message a later commit deletes; it writes them at the latest when it
  closes.
* A failed commit is fatal: the model may be ahead of the disk. The store refuses further
  commits (``StoreError``) and the daemon must stop; the next start reloads the truth.
* Times are milliseconds since the epoch; message ids are the model's strings.
* Encryption at rest is the store's business: a store that seals messages does it for the
  queues whose settings ask for it. Callers that insert messages (sends, fan-out, move tasks)
  call ``check_sealing`` with the queue's settings in the same trio step, before the model
  accepts the message, so a missing KMS key is refused and never half-applied.
* A message the store cannot open (its key left the key file, its sealed value fails
  authentication) does not hide the others: ``read_messages`` raises
  :class:`UnopenedMessages`, which carries those it opened.
"""

from __future__ import annotations

import abc
import bisect
import threading
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence

import msgspec

from broker.model.errors import SqsError
from broker.model.messages import AttributeValue
from broker.model.mutations import Mutation
from broker.model.outcomes import RestoredMessage
from broker.model.settings import QueueSettings
from broker.model.sns_mutations import MessageType, SnsMutation, SubscriptionRecord
from broker.model.topics import TopicSettings

AnyMutation = Mutation | SnsMutation


class StoreError(Exception):
    """The store cannot do what was asked; after a failed commit, it is unusable."""


class StoreFailed(StoreError):
    """The store failed (the disk is full, an I/O error) and accepts no more writes.

    What it acknowledged is durable; memory may be ahead of the disk, so the broker stops
    and starts again from the disk (see :meth:`Store.wait_until_failed`).
    """


class QueueNameTaken(StoreError):
    """A live queue already has that name."""


class TopicNameTaken(StoreError):
    """A live topic already has that name."""


class KeyUnavailable(SqsError, StoreError):
    """The key that seals (or sealed) a queue's messages is not in the key file.

    It is also the :class:`SqsError` AWS answers when a KMS key is missing
    (``KMS.NotFoundException``), so it can leave a handler as it is.
    """

    def __init__(self, message: str) -> None:
        super().__init__("KMS.NotFoundException", message)


class SealingError(StoreError):
    """A sealed message failed authentication: the stored bytes were altered or corrupted."""


class QueueRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A queue as stored: identity, settings, tags and timestamps."""

    queue_id: int
    name: str
    settings: QueueSettings
    tags: dict[str, str]
    created_at: int
    modified_at: int
    next_seq: int = 1


class StoredMessage(msgspec.Struct, frozen=True, kw_only=True):
    """What a receive returns beyond the model's delivery: body, attributes, ids, times."""

    seq: int
    message_id: str
    body: str
    attributes: dict[str, AttributeValue]
    sent_at: int
    first_received_at: int | None
    group_id: str | None
    deduplication_id: str | None
    sender_id: str
    trace_header: str | None
    dead_letter_source_arn: str | None
    # The body's MD5 (hex) when the send computed it, kept so that a receive need not hash
    # the body again (1 KiB: ~2.5 us, a tenth of a receive's CPU per message); None: unknown
    # (fan-out copies, rows stored sealed at rest, rows of files older than schema 6).
    body_md5: str | None = None


class UnopenedMessage(msgspec.Struct, frozen=True, kw_only=True):
    """A stored message that could not be opened, and why."""

    seq: int
    message_id: str
    key_id: str  # the id of the key that sealed it (never the key)
    error: KeyUnavailable | SealingError


class UnopenedMessages(StoreError):
    """Some of the messages read could not be opened; the others were read.

    Attributes:
        opened: the messages that opened, in the order asked for (gone ones skipped).
        unopened: the others, in the order asked for.
    """

    def __init__(self, opened: list[StoredMessage], unopened: list[UnopenedMessage]) -> None:
        super().__init__(f"{len(unopened)} of the messages read could not be opened")
        self.opened = opened
        self.unopened = unopened


class MessageColumns:
    """Message metadata of one queue, column by column, in seq order.

    Columns of machine integers cost 8 bytes a value where a list of tuples would cost
    about 150; that matters when a million messages are loaded at start.
    """

    __slots__ = ("enqueued_at", "group_ids", "receive_count", "received_at", "seq", "visible_at")

    def __init__(self) -> None:
        self.seq = array("q")
        self.visible_at = array("q")
        self.receive_count = array("q")
        self.received_at = array("q")
        self.enqueued_at = array("q")
        self.group_ids: list[str | None] = []

    def __len__(self) -> int:
        return len(self.seq)

    def append(self, message: RestoredMessage) -> None:
        """Add one message; seqs must increase."""
        self.seq.append(message.seq)
        self.visible_at.append(message.visible_at)
        self.receive_count.append(message.receive_count)
        self.received_at.append(message.received_at)
        self.enqueued_at.append(message.enqueued_at)
        self.group_ids.append(message.group_id)

    def __iter__(self) -> Iterator[RestoredMessage]:
        for index in range(len(self.seq)):
            yield RestoredMessage(
                seq=self.seq[index],
                visible_at=self.visible_at[index],
                receive_count=self.receive_count[index],
                received_at=self.received_at[index],
                enqueued_at=self.enqueued_at[index],
                group_id=self.group_ids[index],
            )


class DeduplicationEntry(msgspec.Struct, frozen=True, array_like=True):
    """A FIFO deduplication id still inside its window."""

    key: bytes
    seq: int
    expires_at: int


class ReceiveAttemptEntry(msgspec.Struct, frozen=True, array_like=True):
    """A FIFO receive remembered under its ReceiveRequestAttemptId (see
    :class:`~broker.model.mutations.ReceiveAttemptRecorded`)."""

    attempt_id: str
    seqs: list[int]
    deadlines: list[int]
    expires_at: int


class LoadedQueue:
    """Everything needed to rebuild one queue's index at start; its deduplication entries
    soonest expiry first, the order the window is rebuilt in; its receive attempts (FIFO)
    soonest expiry first too."""

    __slots__ = ("attempts", "deduplication", "messages", "record")

    def __init__(
        self,
        record: QueueRecord,
        messages: MessageColumns,
        deduplication: list[DeduplicationEntry],
        attempts: list[ReceiveAttemptEntry] | None = None,
    ) -> None:
        self.record = record
        self.messages = messages
        self.deduplication = deduplication
        self.attempts = attempts or []


class TopicRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A topic as stored: identity, settings, tags, timestamps, its FIFO sequence counter and
    its SubscriptionsDeleted count, both as loaded (the live topic counts on from them).

    The store raises ``subscriptions_deleted`` in the transaction of each
    :class:`~broker.model.sns_mutations.SubscriptionDeleted` that deletes a live
    subscription (not one of the unsubscribed records kept for their restore links).
    """

    topic_id: int
    name: str
    settings: TopicSettings
    tags: dict[str, str]
    created_at: int
    modified_at: int
    next_seq: int = 1
    subscriptions_deleted: int = 0


class TopicDeduplicationEntry(msgspec.Struct, frozen=True, array_like=True):
    """A FIFO topic's deduplication id still inside its window, and the publish it names."""

    key: bytes
    message_id: str
    sequence_number: str
    expires_at: int


class PendingHttpDelivery(msgspec.Struct, frozen=True, kw_only=True):
    """An outbox row without its payload: what the delivery worker schedules by at start."""

    delivery_id: int
    subscription_id: str
    topic_id: int
    message_type: MessageType
    endpoint: str
    attempts: int
    first_attempt_at: int | None
    next_attempt_at: int
    published_at: int


class HttpPayload(msgspec.Struct, frozen=True, kw_only=True):
    """An outbox row's payload, read when an attempt needs it."""

    headers: list[tuple[str, str]]
    body: str
    dead_letter_attributes: dict[str, AttributeValue]


class LoadedTopic:
    """A topic at start: its record and its deduplication entries, soonest expiry first."""

    __slots__ = ("deduplication", "record")

    def __init__(self, record: TopicRecord, deduplication: list[TopicDeduplicationEntry]) -> None:
        self.record = record
        self.deduplication = deduplication


class LoadedSns:
    """Everything SNS needs at start: topics, subscriptions, pending HTTP deliveries."""

    __slots__ = ("deliveries", "subscriptions", "topics")

    def __init__(
        self,
        topics: list[LoadedTopic],
        subscriptions: list[SubscriptionRecord],
        deliveries: list[PendingHttpDelivery],
    ) -> None:
        self.topics = topics
        self.subscriptions = subscriptions
        self.deliveries = deliveries


class StoredMoveTask(msgspec.Struct, frozen=True, kw_only=True):
    """A message move task as stored: what ListMessageMoveTasks shows, and what a restart
    needs to resume a RUNNING one (the fields of :class:`broker.model.moves.MoveTask`)."""

    task_id: str
    source_arn: str
    destination_arn: str | None
    max_per_second: int | None
    started_at: int
    to_move: int
    moved: int
    status: str  # a MoveStatus value
    failure_reason: str | None


class Histogram(msgspec.Struct, frozen=True, kw_only=True):
    """Cumulative counts per upper bound, Prometheus style (the last count is +Inf)."""

    bounds: tuple[float, ...]
    cumulative_counts: tuple[int, ...]
    total: float
    count: int


class StoreStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of the store's counters, read by the metrics collector at scrape time."""

    commits: int
    mutations: int
    failed_jobs: int
    pending_jobs: int
    reclaiming_queues: int  # purged or deleted queues whose rows are still being removed
    commit_seconds: Histogram
    mutations_per_commit: Histogram


class HistogramRecorder:
    """A thread-safe fixed-bucket histogram for implementations to fill."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self._bounds = tuple(bounds)
        self._counts = [0] * (len(self._bounds) + 1)
        self._total = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float, count: int = 1) -> None:
        """Count ``count`` observations of ``value`` (one, by default)."""
        with self._lock:
            self._counts[bisect.bisect_left(self._bounds, value)] += count
            self._total += value * count

    def snapshot(self) -> Histogram:
        """Return the cumulative counts so far."""
        with self._lock:
            running = 0
            cumulative = []
            for count in self._counts:
                running += count
                cumulative.append(running)
            return Histogram(
                bounds=self._bounds,
                cumulative_counts=tuple(cumulative),
                total=self._total,
                count=running,
            )


class Store(abc.ABC):
    """A durable store for queues and messages."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Open (creating or migrating as needed) and start background work; call in trio."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Commit everything already queued, then release every resource."""

    @abc.abstractmethod
    async def load(self) -> list[LoadedQueue]:
        """Return every live queue with its message metadata (no bodies) and dedup entries."""

    @abc.abstractmethod
    async def holds_queues_or_topics(self) -> bool:
        """Whether the store holds a queue (not deleted) or a topic: something its ARNs name."""

    @abc.abstractmethod
    async def wait_until_failed(self) -> BaseException:
        """Return the error that made the store fail, once it has; wait until then."""

    @abc.abstractmethod
    async def commit(
        self, mutations: Sequence[AnyMutation], on_durable: Callable[[], None] | None = None
    ) -> None:
        """Make ``mutations`` durable, in call order; then run ``on_durable``.

        Raises:
            StoreError: the commit failed; the store is unusable from now on.
        """

    @abc.abstractmethod
    async def settled(self) -> None:
        """Return once every commit queued before this call is durable (at once when none
        is pending).

        A call that writes nothing may still report state that an earlier commit, not yet
        durable, brought into memory (a FIFO duplicate naming its original, a second delete
        of a message); it waits for this before it answers, so that nothing acknowledged is
        lost in a crash.

        Raises:
            StoreFailed: the store has failed.
        """

    @abc.abstractmethod
    def commit_later(
        self, mutations: Sequence[AnyMutation], on_durable: Callable[[], None] | None = None
    ) -> None:
        """Queue ``mutations`` as :meth:`commit` does, in the same order, without waiting.

        ``on_durable`` still runs once they are durable. A failure is fatal as for
        :meth:`commit`, and is reported to the next caller.

        Raises:
            StoreError: the store failed earlier; nothing was queued.
        """

    @abc.abstractmethod
    async def read_messages(self, queue_id: int, seqs: Sequence[int]) -> list[StoredMessage]:
        """Return the stored messages among ``seqs``, in that order; gone ones are skipped.

        A message read before the first receive's commit is durable may show no
        ``first_received_at``: the receive's :class:`~broker.model.outcomes.Delivery` has it.

        Raises:
            UnopenedMessages: some messages are sealed at rest with a key that is no longer
                available, or fail authentication; it carries every message that opened.
        """

    @abc.abstractmethod
    async def create_queue(
        self, name: str, settings: QueueSettings, tags: Mapping[str, str], now: int
    ) -> QueueRecord:
        """Store a new queue and return it with its id.

        Raises:
            QueueNameTaken: a live queue has that name.
        """

    @abc.abstractmethod
    async def update_queue(self, queue_id: int, settings: QueueSettings, now: int) -> None:
        """Replace a queue's settings (SetQueueAttributes) and its LastModifiedTimestamp."""

    @abc.abstractmethod
    async def set_tags(self, queue_id: int, tags: Mapping[str, str]) -> None:
        """Replace a queue's tags."""

    @abc.abstractmethod
    async def delete_queue(self, queue_id: int, *, deleted_at: int, forget_before: int) -> None:
        """Delete a queue; its messages are reclaimed in the background.

        The name's deletion time (ms) is kept for :meth:`queue_deletions`, and deletions
        before ``forget_before`` are forgotten.
        """

    @abc.abstractmethod
    async def queue_deletions(self, since: int) -> list[tuple[str, int]]:
        """Return ``(name, deleted_at)`` of queues deleted at or after ``since``, oldest first."""

    @abc.abstractmethod
    async def load_sns(self) -> LoadedSns:
        """Return every topic, subscription and pending HTTP delivery (payloads not included)."""

    @abc.abstractmethod
    async def create_topic(
        self, name: str, settings: TopicSettings, tags: Mapping[str, str], now: int
    ) -> TopicRecord:
        """Store a new topic and return it with its id.

        Raises:
            TopicNameTaken: a live topic has that name.
        """

    @abc.abstractmethod
    async def update_topic(self, topic_id: int, settings: TopicSettings, now: int) -> None:
        """Replace a topic's settings (SetTopicAttributes, AddPermission...)."""

    @abc.abstractmethod
    async def set_topic_tags(self, topic_id: int, tags: Mapping[str, str]) -> None:
        """Replace a topic's tags."""

    @abc.abstractmethod
    async def delete_topic(self, topic_id: int) -> None:
        """Delete a topic with its subscriptions, pending deliveries and deduplication entries."""

    @abc.abstractmethod
    async def read_http_payload(self, delivery_id: int) -> HttpPayload | None:
        """Return a pending delivery's payload, or None if the row is gone."""

    @abc.abstractmethod
    async def load_move_tasks(self) -> list[StoredMoveTask]:
        """Return every stored message move task, in the order they were first saved."""

    @abc.abstractmethod
    async def save_move_task(self, task: StoredMoveTask, forget: Sequence[str] = ()) -> None:
        """Insert or update a move task, and delete the tasks whose ids are in ``forget``.

        Durable when it returns, and ordered with every other write (as ``commit`` is).
        """

    def check_sealing(self, settings: QueueSettings) -> None:
        """Refuse, before the model accepts them, messages this store could not seal.

        A store that does not encrypt accepts everything (the default).

        Raises:
            KeyUnavailable: the queue names a KMS key the store does not have.
        """
        del settings

    @abc.abstractmethod
    def statistics(self) -> StoreStatistics:
        """Return the counters, without blocking."""
