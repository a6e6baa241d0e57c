"""The live queues: each one's stored record and in-memory index, and long-poll wake-ups.

The registry is the trio shell around :mod:`broker.model` and :mod:`broker.store`. It keeps
the rule the store sets: a model operation and the ``store.commit`` of its mutations happen in
the same trio step, so commits reach the disk in the order the model made them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Final

import msgspec
import trio

from broker.clock import Clock
from broker.model import QueueIndex, new_index
from broker.model.attributes import QueueCounts, QueueFacts, check_create_matches
from broker.model.errors import SqsError
from broker.model.index import SWEEP_LIMIT
from broker.model.names import RecentlyDeleted, validate_queue_name
from broker.model.settings import (
    QueueSettings,
    apply_update,
    check_dead_letter_target,
    parse_create,
)
from broker.model.signing import Signer
from broker.model.state import MAX_IN_FLIGHT_MESSAGES
from broker.store.base import AnyMutation, QueueNameTaken, QueueRecord, Store
from monitoring.logging import EventLog
from proto.aws.arn import queue_arn
from proto.aws.errors import AwsError
from proto.aws.json_protocol import sqs_error

EXPIRE_INTERVAL_SECONDS: Final = 1.0  # retention and dedup windows are enforced this often


# The time of every queue and topic operation (broker.clock: the wall clock without its steps).
CLOCK = Clock()


def now_ms() -> int:
    return CLOCK()


QUEUE_DOES_NOT_EXIST: Final = "The specified queue does not exist."


def queue_does_not_exist() -> AwsError:
    return sqs_error("QueueDoesNotExist", QUEUE_DOES_NOT_EXIST)


class QueueStats:
    """Counters of one queue, read by the metrics collector at scrape time."""

    __slots__ = ("bytes_sent", "deleted", "empty_receives", "received", "sent")

    def __init__(self) -> None:
        self.sent = 0
        self.bytes_sent = 0
        self.received = 0
        self.deleted = 0
        self.empty_receives = 0


class Queue:
    """One live queue."""

    __slots__ = ("_changed", "_changed_taken", "arn", "deleted", "index", "record", "stats")

    def __init__(
        self,
        record: QueueRecord,
        arn: str,
        signer: Signer,
        in_flight_limit: int = MAX_IN_FLIGHT_MESSAGES,
    ) -> None:
        self.record = record
        self.arn = arn
        self.deleted = False
        self.stats = QueueStats()
        self._changed = trio.Event()
        self._changed_taken = False
        self.index: QueueIndex = new_index(
            queue_id=record.queue_id,
            name=record.name,
            arn=arn,
            settings=record.settings,
            signer=signer,
            next_seq=record.next_seq,
            wake_receivers=self.wake,
            in_flight_limit=in_flight_limit,
        )

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def settings(self) -> QueueSettings:
        return self.index.settings

    def wake(self) -> None:
        """Tell long-polling receives to look again (a send, a visibility change, ...).

        Only an event someone took can have a waiter: one nobody took is kept (a fan-out
        wakes every subscribed queue at each commit, most with no receive waiting).
        """
        if self._changed_taken:
            self._changed.set()
            self._changed = trio.Event()
            self._changed_taken = False

    def changed(self) -> trio.Event:
        """The event the next :meth:`wake` sets; take it before looking at the index."""
        self._changed_taken = True
        return self._changed

    def facts(self, now: int) -> QueueFacts:
        return QueueFacts(
            queue_arn=self.arn,
            created_at_ms=self.record.created_at,
            modified_at_ms=self.record.modified_at,
            counts=self.index.counts(now),
        )

    def counts(self, now: int) -> QueueCounts:
        return self.index.counts(now)


class QueueRegistry:
    """Every live queue by name and ARN, kept in step with the store."""

    def __init__(
        self,
        store: Store,
        signer: Signer,
        *,
        region: str,
        account_id: str,
        log: EventLog,
        in_flight_limit: int = MAX_IN_FLIGHT_MESSAGES,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        """Bind to the store; :meth:`load` fills the registry.

        Args:
            in_flight_limit: most messages in flight per queue (``sqs.max_in_flight_messages``).
            clock: wall-clock milliseconds for the 60-second QueueDeletedRecently window;
                tests pass (or later assign ``clock``) a clock they move forward.
        """
        self.store = store
        self.signer = signer
        self.region = region
        self.account_id = account_id
        self.log = log
        self.stopping = False
        self.in_flight_limit = in_flight_limit
        self.clock = clock
        self.recently_deleted = RecentlyDeleted()
        self._by_name: dict[str, Queue] = {}
        self._creating = trio.Lock()
        # Attributes and tags are read, changed and written back across a store write: one
        # such change at a time, or concurrent ones undo each other (last writer wins).
        self._updating = trio.Lock()

    def arn_of(self, name: str) -> str:
        return queue_arn(self.region, self.account_id, name)

    async def load(self) -> None:
        """Rebuild every queue's index from the store (at start)."""
        now = now_ms()
        for loaded in await self.store.load():
            queue = Queue(
                loaded.record, self.arn_of(loaded.record.name), self.signer, self.in_flight_limit
            )
            queue.index.restore(loaded.messages, now)
            for entry in loaded.deduplication:
                queue.index.restore_deduplication(entry.key, entry.seq, entry.expires_at)
            for attempt in loaded.attempts:
                queue.index.restore_attempt(
                    attempt.attempt_id, attempt.seqs, attempt.deadlines, attempt.expires_at, now
                )
            self._by_name[queue.name] = queue
        recent = self.recently_deleted
        for name, deleted_at in await self.store.queue_deletions(self.clock() - recent.window_ms):
            recent.record(name, deleted_at)
        # What passed its retention period while the broker was stopped is gone before the
        # first request, not at the first pass a second later (counts, oldest message's age).
        await self._expire_at_load(now)
        self.log.info("queues.loaded", queues=len(self._by_name))

    # ------------------------------------------------------------------ lookups

    def get(self, name: str) -> Queue | None:
        return self._by_name.get(name)

    def require(self, name: str) -> Queue:
        queue = self._by_name.get(name)
        if queue is None:
            raise queue_does_not_exist()
        return queue

    def by_arn(self, arn: str) -> Queue | None:
        name = arn.rsplit(":", 1)[-1]
        queue = self._by_name.get(name)
        return queue if queue is not None and queue.arn == arn else None

    def __iter__(self) -> Iterator[Queue]:
        return iter(list(self._by_name.values()))

    def __len__(self) -> int:
        return len(self._by_name)

    def dead_letter_index(self, queue: Queue) -> QueueIndex | None:
        policy = queue.settings.redrive_policy
        if policy is None:
            return None
        target = self.by_arn(policy.dead_letter_target_arn)
        return target.index if target is not None else None

    # ------------------------------------------------------------------ changes

    async def create(
        self,
        name: str,
        attributes: Mapping[str, str],
        tags: Mapping[str, str],
        *,
        declared: bool = False,
    ) -> Queue:
        """CreateQueue: a new queue, or the existing one when every attribute matches.

        Args:
            declared: the configuration file declares the queue. The operator's file wins over
                the 60-second wait after a deletion: the queue is created (logged as
                ``queue.recreated``) rather than the broker refusing to start.

        Raises:
            SqsError: ``QueueDeletedRecently`` within 60 seconds of deleting a queue of that
                name (unless ``declared``); ``QueueAlreadyExists`` and the attribute errors.
        """
        validate_queue_name(name, fifo=attributes.get("FifoQueue", "").lower() == "true")
        # One create at a time: a second CreateQueue for a name being created waits, then finds
        # the queue (without the lock the loser of the race could wake before the winner had
        # registered the queue, and answer NonExistentQueue). Creates are rare; the cost is nil.
        async with self._creating:
            existing = self._by_name.get(name)
            if existing is not None:
                check_create_matches(existing.settings, attributes)
                return existing
            recreated = False
            try:
                self.recently_deleted.check(name, self.clock())
            except SqsError:
                if not declared:
                    raise
                recreated = True
            settings = parse_create(attributes)
            self._check_dead_letter_target(settings, name)
            now = now_ms()
            try:
                record = await self.store.create_queue(name, settings, dict(tags), now)
            except QueueNameTaken:
                # Another CreateQueue for the same name won the race: answer as if it came first.
                existing = self.require(name)
                check_create_matches(existing.settings, attributes)
                return existing
            queue = Queue(record, self.arn_of(name), self.signer, self.in_flight_limit)
            self._by_name[name] = queue
        self.log.info("queue.created", queue=name, fifo=settings.fifo)
        if recreated:
            self.log.warning(
                "queue.recreated",
                queue=name,
                reason="the configuration file declares it; it had been deleted through the "
                "API less than 60 s before",
            )
        return queue

    async def set_attributes(self, queue: Queue, attributes: Mapping[str, str]) -> None:
        await self.update_attributes(queue, lambda _: attributes)

    async def update_attributes(
        self, queue: Queue, change: Callable[[QueueSettings], Mapping[str, str]]
    ) -> None:
        """Set the attributes ``change`` derives from the queue's current settings (one
        change at a time, so that each sees what the one before it left)."""
        async with self._updating:
            await self._set_attributes(queue, change(queue.settings))

    async def _set_attributes(self, queue: Queue, attributes: Mapping[str, str]) -> None:
        settings = apply_update(queue.settings, attributes)
        if "RedrivePolicy" in attributes:
            # Only a RedrivePolicy being set is checked against its target: one already set
            # may have gone stale (its dead-letter queue deleted, or refusing this source
            # since), and that must not stop every other change to this queue.
            self._check_dead_letter_target(settings, queue.name)
        now = now_ms()
        await self.store.update_queue(queue.record.queue_id, settings, now)
        # The time after the write: a FIFO queue's new delay moves its messages not yet
        # received (AWS: retroactive there), by their send time. Nothing more is written for
        # them: at a restart the index recomputes their due times from the settings just
        # stored and each row's enqueue time (its send time, for a message never received).
        queue.index.update_settings(settings, now_ms())
        queue.record = _replace(queue.record, settings=settings, modified_at=now)
        queue.wake()  # a shorter delay or wait time may concern receives already waiting

    async def set_tags(self, queue: Queue, tags: Mapping[str, str]) -> None:
        await self.update_tags(queue, lambda _: tags)

    async def update_tags(
        self, queue: Queue, change: Callable[[Mapping[str, str]], Mapping[str, str]]
    ) -> None:
        """Store and apply ``change`` of the queue's current tags (one change at a time)."""
        async with self._updating:
            tags = dict(change(queue.record.tags))
            await self.store.set_tags(queue.record.queue_id, tags)
            queue.record = _replace(queue.record, tags=tags)

    async def delete(self, queue: Queue) -> None:
        if self._by_name.get(queue.name) is not queue:
            await self.store.settled()  # deleted by a call whose commit may be under way
            return
        del self._by_name[queue.name]
        now = self.clock()
        self.recently_deleted.record(queue.name, now)
        queue.deleted = True
        queue.index.close()
        queue.wake()
        await self.store.delete_queue(
            queue.record.queue_id,
            deleted_at=now,
            forget_before=now - self.recently_deleted.window_ms,
        )
        self.log.info("queue.deleted", queue=queue.name)

    def _check_dead_letter_target(self, settings: QueueSettings, name: str) -> None:
        policy = settings.redrive_policy
        if policy is None:
            return
        target = self.by_arn(policy.dead_letter_target_arn)
        check_dead_letter_target(
            settings, self.arn_of(name), target.settings if target is not None else None
        )

    # ------------------------------------------------------------------ background

    async def expire_forever(self) -> None:
        """Apply retention periods and deduplication windows, once a second."""
        while True:
            await trio.sleep(EXPIRE_INTERVAL_SECONDS)
            await self.expire(now_ms())

    async def expire(self, now: int) -> None:
        """One pass of :meth:`expire_forever` at time ``now``: drop what is past its time."""
        for queue in self:
            if queue.deleted:
                continue
            change = queue.index.expire(now)
            if change.mutations:
                await self.store.commit(change.mutations, change.on_durable)

    async def _expire_at_load(self, now: int) -> None:
        """:meth:`expire` at the start, in as few commits as it takes: every queue's changes
        together, up to ``SWEEP_LIMIT`` mutations a commit. One fsync'd commit per queue, one
        after the other, kept the listener closed for as many fsyncs as there were queues
        with something expired while the broker was stopped (deduplication windows: every
        FIFO queue used in the last 5 minutes before the stop).

        Nothing else touches the queues yet (the listener is not open and the periodic pass
        has not started), so committing one queue's change after another's expiry keeps the
        order the store needs.
        """
        mutations: list[AnyMutation] = []
        callbacks: list[Callable[[], None]] = []

        async def commit() -> None:
            batch, after = mutations[:], callbacks[:]
            mutations.clear()
            callbacks.clear()

            def on_durable() -> None:
                for callback in after:
                    callback()

            await self.store.commit(batch, on_durable)

        for queue in self:
            change = queue.index.expire(now)
            if change.mutations:
                mutations.extend(change.mutations)
                callbacks.append(change.on_durable)
                if len(mutations) >= SWEEP_LIMIT:
                    await commit()
        if mutations:
            await commit()

    def stop_waiting(self) -> None:
        """At shutdown: every long-polling receive returns what it has, now."""
        self.stopping = True
        for queue in self:
            queue.wake()


def _replace(record: QueueRecord, **changes: object) -> QueueRecord:
    return msgspec.structs.replace(record, **changes)
