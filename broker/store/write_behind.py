"""Receive records held back from the disk until they matter: the store's write-behind.

A standard queue's first receive of a message records the receive (count, visibility deadline,
first receive time) with ``commit_later``: nothing is acknowledged by it, and lost in a crash
it only makes the message visible again after the restart with its former count, which
at-least-once delivery allows. Most consumers delete a message soon after receiving it; then
writing the record would rewrite the row (body and all) just before the delete removes it: in a
receive-and-delete loop, a third of the writer's work. So the store holds such records back:

- a later commit that deletes the message makes its record moot: it is never written;
- a later commit that touches the message otherwise (a redelivery, a visibility change, a move
  to the dead-letter queue, which copies the row) has the record written just ahead of it, in
  call order, so that commit is never durable without it;
- a record is written at the latest ``hold_seconds`` after it was held, when more than
  ``max_records`` are held, ahead of any job that is not a plain commit (queue operations,
  backups), and when the store closes.

What a crash loses is what a lost ``commit_later`` always lost, for a second instead of a
millisecond. This module is the bookkeeping only (no I/O, no clock: times are arguments); the
store queues the writes and tells the body cache when a held batch is settled.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from broker.model.mutations import MessageDeleted, MessageDelivered, MessageMoved, VisibilityChanged
from broker.store.base import AnyMutation

Key = tuple[int, int]  # (queue id, seq)


class HeldBatch:
    """One ``commit_later`` batch whose records are held: settled once each is durable or moot."""

    __slots__ = ("batch", "on_durable", "remaining")

    def __init__(self, batch: list[AnyMutation], on_durable: Callable[[], None] | None) -> None:
        self.batch = batch
        self.on_durable = on_durable
        self.remaining = len(batch)


Held = tuple[MessageDelivered, HeldBatch]


class WriteBehind:
    """The held receive records, oldest first."""

    def __init__(self, hold_seconds: float, max_records: int) -> None:
        if hold_seconds <= 0 or max_records < 1:
            raise ValueError("hold_seconds and max_records must be positive")
        self.hold_seconds = hold_seconds
        self.max_records = max_records
        # Insertion order is hold order: the first entry is the oldest record still held.
        self._records: dict[Key, tuple[MessageDelivered, HeldBatch, float]] = {}

    def __len__(self) -> int:
        return len(self._records)

    @staticmethod
    def holdable(batch: Sequence[AnyMutation]) -> bool:
        """Whether a ``commit_later`` batch is made of receive records only (and not empty)."""
        return bool(batch) and all(type(m) is MessageDelivered for m in batch)

    def hold(
        self, batch: list[AnyMutation], on_durable: Callable[[], None] | None, now: float
    ) -> list[Held]:
        """Hold the records of ``batch`` (:meth:`holdable`); return the ones to write first.

        Those are earlier records of the same messages, which must reach the disk before the
        new ones can replace them; and, when the batch takes the count past ``max_records``
        or the oldest record is due, every record held before it.
        """
        records = self._records
        first: list[Held] = []
        held = HeldBatch(batch, on_durable)
        for mutation in batch:
            assert isinstance(mutation, MessageDelivered)
            key = (mutation.queue_id, mutation.seq)
            earlier = records.pop(key, None)
            if earlier is not None:
                first.append((earlier[0], earlier[1]))
            records[key] = (mutation, held, now)
        if len(records) > self.max_records or self.due(now):
            new = {(m.queue_id, m.seq) for m in batch}  # type: ignore[union-attr]
            first.extend(self._take(lambda key: key not in new))
        return first

    def before(self, mutations: Iterable[AnyMutation]) -> tuple[list[Held], list[HeldBatch]]:
        """For a commit of ``mutations``: the records to write just ahead of it, and the held
        batches its deletes leave with nothing to write (settled now)."""
        records = self._records
        ahead: list[Held] = []
        moot: list[HeldBatch] = []
        if not records:
            return ahead, moot
        for mutation in mutations:
            kind = type(mutation)
            if kind is MessageDeleted or kind is MessageDelivered or kind is VisibilityChanged:
                key = (mutation.queue_id, mutation.seq)  # type: ignore[union-attr]
            elif kind is MessageMoved:
                assert isinstance(mutation, MessageMoved)
                key = (mutation.source_queue_id, mutation.source_seq)
            else:
                continue
            entry = records.pop(key, None)
            if entry is None:
                continue
            record, held, _ = entry
            if kind is MessageDeleted:
                held.remaining -= 1
                if not held.remaining:
                    moot.append(held)
            else:
                ahead.append((record, held))
        return ahead, moot

    def due(self, now: float) -> bool:
        """Whether the oldest record held has waited ``hold_seconds``."""
        for _, _, held_at in self._records.values():
            return now - held_at >= self.hold_seconds
        return False

    def take_all(self) -> list[Held]:
        """Every record held, oldest first, to be written now."""
        return self._take(lambda key: True)

    def _take(self, which: Callable[[Key], bool]) -> list[Held]:
        taken = [
            (key, record, held) for key, (record, held, _) in self._records.items() if which(key)
        ]
        for key, _, _ in taken:
            del self._records[key]
        return [(record, held) for _, record, held in taken]


def written(records: Iterable[Held]) -> list[HeldBatch]:
    """Count ``records`` as durable; return the held batches that are settled by it."""
    settled = []
    for _, held in records:
        held.remaining -= 1
        if not held.remaining:
            settled.append(held)
    return settled
