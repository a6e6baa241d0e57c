"""The SQLite store's body cache: recent inserts, and reads ahead of a deep backlog.

What a receive returns beyond the model's delivery (body, attributes, ids, times, the body's
MD5 when the send computed it) is kept in memory for two kinds of messages, in one budget
(``body_cache_bytes``, 64 MiB by default):

* Inserted ones, from the commit that inserts them until they are deleted, moved or purged,
  or until newer inserts of other queues push them out (oldest insert first). When the
  budget is full and the oldest insert held is of the inserting queue itself, or of a queue
  whose held inserts weigh no more than the inserting queue's, the new message is not kept:
  those are backlogs, receives take their older messages first, and the ones kept are exactly
  those (a read-ahead brings the rest when the receives get there). Evicting them instead
  would cost a push-out per send and leave the receives of each backlog's head to the file
  (a fan-out to several backlogged queues did just that). A queue holding less than the
  oldest holder still pushes that one's oldest out, so one queue nobody receives from cannot
  keep the others' fresh messages out of memory.
* Read-ahead ones. A receive whose messages are not in memory reads them from the file; in
  the same reader-thread trip the store reads the rows that follow them in the queue
  (``READ_AHEAD_ROWS`` or ``READ_AHEAD_BYTES`` at most). Receives take a standard queue's
  messages in seq order (returned ones first, then fresh ones in send order), so a deep
  backlog drained oldest first is answered from memory by the next receives, as a shallow
  one is. A read-ahead message leaves this part when a receive takes it (it has done its
  job), when it is deleted, moved or purged, or when newer read-ahead rows push it out: at
  most ``READ_AHEAD_QUEUE_ROWS`` / ``READ_AHEAD_QUEUE_BYTES`` per queue and a
  ``1/READ_AHEAD_SHARE`` share of the budget in all. One read-ahead per queue is in flight at
  a time; receives whose messages it will bring wait for it instead of reading them too.

Agreement with the model. :meth:`BodyCache.track` applies every commit's mutations to the
cached copies in call order, in the caller's trio step, as the model changes. A read-ahead row
lags behind: its snapshot, taken in the reader thread, holds every commit durable when the
read was asked for, and perhaps some later ones, so a receive (its ``first_received_at``), a
delete, a dead-letter move or a purge of that message may be missing from it -- tracked
before the read but not yet durable, or tracked while it ran. Each read-ahead therefore keeps,
from its start, every batch not yet durable and every batch tracked meanwhile, and replays
them, in order, on its rows before they enter the cache. Replaying a mutation the snapshot
already holds changes nothing (a first receive time is set once, a gone message stays gone),
so a row enters the cache exactly as the cache would hold it had it been there all along. (To
discard the rows touched meanwhile would be safe too, but would throw away the very rows the
receives running alongside are waiting for: their deliveries touch them.) A row whose message
the cache holds already is left out: that copy has followed every mutation.

Never cached (the rules of :mod:`broker.store.sqlite`): messages of queues sealed at rest and
rows stored sealed. The store checks the queue's sealing when a read-ahead starts and when it
lands; the query reads clear rows only, at or above the purge mark. Messages restored at start
are read ahead like any others: after a restart with a deep backlog the file is the only copy,
and draining it must not cost a reader trip per receive.

No I/O and no trio here: the store calls these methods from the trio thread only.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec

from broker.model.mutations import (
    MessageDeleted,
    MessageDelivered,
    MessageInserted,
    MessageMoved,
    QueuePurged,
)
from broker.store.base import AnyMutation, StoredMessage

BODY_CACHE_BYTES = 64 << 20  # bodies of messages kept in memory for receives (see above)
# What a cached message costs beyond its body and attributes: the StoredMessage, its message
# id string, the body's MD5 string, the dict slot and the (queue id, seq) key. Measured ~330
# bytes without the MD5, which adds ~90; rounded up.
CACHE_ENTRY_OVERHEAD = 480
CACHE_ATTRIBUTE_OVERHEAD = 150  # per message attribute: name, AttributeValue, dict slot
# One read-ahead: 512 rows of 1 KiB take a reader thread ~4 ms and serve 51 receives of 10
# -- more than 32 connections receiving at once ask for meanwhile, so they all wait for it
# rather than read their own (draining 2,000 receives: 39 trips; with 256 rows, 114 trips, a
# third of them receives reading alone). The byte bound keeps one trip short when bodies are
# large.
READ_AHEAD_ROWS = 512
READ_AHEAD_BYTES = 1 << 20
READ_AHEAD_QUEUE_ROWS = 1024  # a queue's read-ahead part at most, beyond which the oldest go
READ_AHEAD_QUEUE_BYTES = 4 << 20
READ_AHEAD_SHARE = 4  # read-ahead messages take at most a quarter of the budget

Key = tuple[int, int]  # (queue id, seq)


def cache_cost(body: str, attributes: Mapping[str, Any]) -> int:
    """What a cached message is counted as, in bytes (its body as characters)."""
    cost = CACHE_ENTRY_OVERHEAD + len(body)
    for value in attributes.values():
        payload = value.string_value if value.string_value is not None else value.binary_value
        cost += CACHE_ATTRIBUTE_OVERHEAD + len(payload or "")
    return cost


class ReadAhead:
    """One read-ahead in flight: where it starts, its bounds, and the batches it must replay."""

    __slots__ = ("after", "batches", "max_bytes", "max_rows", "queue_id")

    def __init__(
        self,
        queue_id: int,
        after: int,
        max_rows: int,
        max_bytes: int,
        batches: list[Sequence[AnyMutation]],
    ) -> None:
        self.queue_id = queue_id
        self.after = after  # rows with a greater seq are read
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.batches = batches  # not durable at the start, or tracked since: in call order

    def covers(self, seqs: Sequence[int]) -> bool:
        """Tell whether these seqs are likely among the rows it reads (all, when dense)."""
        return self.after < min(seqs) and max(seqs) <= self.after + self.max_rows


class _QueueAhead:
    """One queue's read-ahead messages, oldest read first, with their costs."""

    __slots__ = ("bytes", "costs")

    def __init__(self) -> None:
        self.costs: OrderedDict[int, int] = OrderedDict()  # seq -> cost
        self.bytes = 0


class BodyCache:
    """Stored messages kept in memory for receives, within a byte budget (see the module)."""

    def __init__(self, budget: int = BODY_CACHE_BYTES) -> None:
        """Start empty.

        Args:
            budget: bytes (as :func:`cache_cost` counts them) to hold at most; 0 turns the
                cache off, read-ahead included.
        """
        self.budget = budget
        self.ahead_budget = budget // READ_AHEAD_SHARE
        self._entries: dict[Key, StoredMessage] = {}
        self._inserted: deque[Key] = deque()  # keys of inserts, oldest first (some gone)
        self._bytes = 0
        self._ahead: OrderedDict[Key, int] = OrderedDict()  # read-ahead keys, oldest first
        self._ahead_by_queue: dict[int, _QueueAhead] = {}
        self._ahead_bytes = 0
        self._unsettled: dict[int, Sequence[AnyMutation]] = {}  # id(batch) -> batch, in order
        self._reading: dict[int, ReadAhead] = {}  # queue id -> its read-ahead in flight
        self._read_up_to: dict[int, int] = {}  # queue id -> the last seq its read-aheads read
        self._held_bytes: dict[int, int] = {}  # queue id -> bytes of its inserts held

    # ------------------------------------------------------------------ queries

    @property
    def bytes(self) -> int:
        """What the cached messages are counted as, in all."""
        return self._bytes

    @property
    def ahead_bytes(self) -> int:
        """What the read-ahead messages among them are counted as."""
        return self._ahead_bytes

    def get(self, key: Key) -> StoredMessage | None:
        """Return the cached message, without taking it."""
        return self._entries.get(key)

    def cached_keys(self) -> list[Key]:
        """Return the keys of every cached message."""
        return list(self._entries)

    def held_bytes(self, queue_id: int) -> int:
        """What the queue's inserted messages held here are counted as (read-ahead not)."""
        return self._held_bytes.get(queue_id, 0)

    def is_read_ahead(self, key: Key) -> bool:
        """Tell whether the message came in by a read-ahead (and was not taken yet)."""
        return key in self._ahead

    def lookup(self, queue_id: int, seqs: Iterable[int]) -> tuple[list[StoredMessage], list[int]]:
        """Return the cached messages among ``seqs`` (in that order) and the seqs missing.

        A read-ahead message found here is taken out: a receive has it now, and its room
        goes to the messages after it.
        """
        entries = self._entries
        ahead = self._ahead
        found: list[StoredMessage] = []
        missing: list[int] = []
        for seq in seqs:
            key = (queue_id, seq)
            cached = entries.get(key)
            if cached is None:
                missing.append(seq)
                continue
            found.append(cached)
            if ahead and key in ahead:
                self.drop(key)
        return found, missing

    # ------------------------------------------------------------------ following the commits

    def track(self, batch: Sequence[AnyMutation], sealed: Mapping[int, object]) -> None:
        """Follow a commit's mutations, in call order, in the caller's trio step.

        ``sealed``: the queues whose inserted messages this batch seals (not cached). Call
        :meth:`settled` with the same batch once it is durable (or failed).
        """
        for reading in self._reading.values():
            reading.batches.append(batch)
        self._unsettled[id(batch)] = batch
        entries = self._entries
        for mutation in batch:
            kind = type(mutation)  # exact types: cheaper than isinstance on the hot path
            if kind is MessageInserted:
                assert isinstance(mutation, MessageInserted)
                if mutation.queue_id not in sealed:
                    self._insert(mutation)
            elif kind is MessageDeleted:
                assert isinstance(mutation, MessageDeleted)
                self.drop((mutation.queue_id, mutation.seq))
            elif kind is MessageDelivered:
                assert isinstance(mutation, MessageDelivered)
                key = (mutation.queue_id, mutation.seq)
                cached = entries.get(key)
                if cached is not None and cached.first_received_at is None:
                    entries[key] = msgspec.structs.replace(
                        cached, first_received_at=mutation.received_at
                    )
            elif kind is MessageMoved:
                assert isinstance(mutation, MessageMoved)
                self.drop((mutation.source_queue_id, mutation.source_seq))
            elif kind is QueuePurged and entries:
                assert isinstance(mutation, QueuePurged)
                queue_id, below = mutation.queue_id, mutation.below_seq
                for key in [k for k in entries if k[0] == queue_id and k[1] < below]:
                    self.drop(key)

    def settled(self, batch: Sequence[AnyMutation], *, failed: bool = False) -> None:
        """A tracked batch is durable, or failed: then its inserts are forgotten (the file
        is the truth)."""
        self._unsettled.pop(id(batch), None)
        if failed:
            for mutation in batch:
                if isinstance(mutation, MessageInserted):
                    self.drop((mutation.queue_id, mutation.seq))

    def drop_queue(self, queue_id: int) -> None:
        """Forget every message of a deleted queue."""
        for key in [k for k in self._entries if k[0] == queue_id]:
            self.drop(key)
        self._read_up_to.pop(queue_id, None)

    def drop(self, key: Key) -> None:
        """Forget one message (gone ones cost nothing)."""
        cached = self._entries.pop(key, None)
        if cached is None:
            return
        cost = cache_cost(cached.body, cached.attributes)
        self._bytes -= cost
        if self._ahead and self._ahead.pop(key, None) is not None:
            self._ahead_bytes -= cost
            part = self._ahead_by_queue[key[0]]
            del part.costs[key[1]]
            part.bytes -= cost
            if not part.costs:
                del self._ahead_by_queue[key[0]]
            return
        held = self._held_bytes[key[0]] - cost
        if held:
            self._held_bytes[key[0]] = held
        else:
            del self._held_bytes[key[0]]

    def _insert(self, m: MessageInserted) -> None:
        # cache_cost's count, without the call for a message without attributes (most)
        body = m.body
        attributes = m.attributes
        cost = cache_cost(body, attributes) if attributes else CACHE_ENTRY_OVERHEAD + len(body)
        budget = self.budget
        if cost > budget:
            return
        queue_id = m.queue_id
        key = (queue_id, m.seq)
        entries = self._entries
        if key in entries:
            self.drop(key)  # a failing duplicate insert must not skew the byte count
        if self._bytes + cost > budget:
            if self._keeps_older(queue_id, cost):
                return  # the budget holds older messages of at least as deep a backlog
            self._make_room(cost)
        order = self._inserted
        order.append(key)
        if len(order) > 2 * len(entries) + 1024:
            # Keys of messages deleted meanwhile pile up at the front: keep the live ones.
            ahead = self._ahead
            self._inserted = order = deque(k for k in entries if k not in ahead)
            order.append(key)
        self._bytes += cost
        held = self._held_bytes
        held[queue_id] = held.get(queue_id, 0) + cost
        # The message as a receive would read it back from the file.
        entries[key] = StoredMessage(
            seq=m.seq,
            message_id=m.message_id,
            body=body,
            attributes=attributes,
            sent_at=m.sent_at,
            first_received_at=None,
            group_id=m.group_id,
            deduplication_id=m.deduplication_id,
            sender_id=m.sender_id,
            trace_header=m.trace_header,
            dead_letter_source_arn=None,
            body_md5=m.body_md5,
        )

    def _keeps_older(self, queue_id: int, cost: int) -> bool:
        """When the budget is full: True if a new insert of ``queue_id`` (``cost`` bytes) is
        not to be kept.

        So when the oldest insert held is the queue's own, or another queue's whose held
        inserts weigh no more than this queue's would with this one: pushing it out would
        trade the head of a backlog (what receives take next) for the tail of one at least as
        deep. A fan-out to several backlogged queues keeps each one's head; a send to a queue
        holding less than the oldest holder (a queue nobody receives from, say) still pushes
        that one out, until the two hold about as much. Counting the new message in is what
        makes that stable: without it, queues one message apart (as a fan-out leaves them when
        the budget fills in the middle of a publish) push each other's heads out in turn, one
        push-out per copy, for as long as the fan-out goes on.
        """
        oldest = self._oldest_insert_queue()
        if oldest is None:
            return False
        held = self._held_bytes
        return oldest == queue_id or held.get(queue_id, 0) + cost >= held.get(oldest, 0)

    def _oldest_insert_queue(self) -> int | None:
        """The queue of the oldest insert still held (keys of gone ones are dropped here)."""
        order = self._inserted
        entries = self._entries
        ahead = self._ahead
        while order:
            key = order[0]
            if key in entries and key not in ahead:
                return key[0]
            order.popleft()
        return None

    def _make_room(self, cost: int) -> None:
        """Push out the oldest inserts (then the oldest read-ahead) until ``cost`` fits."""
        order = self._inserted
        while self._bytes + cost > self.budget:
            if order:
                self.drop(order.popleft())
            elif self._ahead:
                self.drop(next(iter(self._ahead)))
            else:
                return

    # ------------------------------------------------------------------ read-ahead

    def reading(self, queue_id: int) -> ReadAhead | None:
        """Return the queue's read-ahead in flight, if any."""
        return self._reading.get(queue_id)

    def start_read_ahead(self, queue_id: int, missing: Sequence[int]) -> ReadAhead | None:
        """Plan a read-ahead after a receive's missing seqs, or return None when none is due.

        None: the cache is off or too small, one is in flight for the queue already, the
        message after the missing ones is in memory (the receives reached the cached part), or
        they are behind what the queue's read-aheads read already: messages back from a
        visibility timeout, taken one here and one there, whose next rows are no better a
        guess than any others (the receives of fresh messages are past them).
        The caller reads the rows (:meth:`ReadAhead.after`, bounds) in the trip that reads
        ``missing``, then calls :meth:`finish_read_ahead` -- also when the read failed.
        """
        limit = min(READ_AHEAD_BYTES, READ_AHEAD_QUEUE_BYTES, self.ahead_budget)
        if limit < CACHE_ENTRY_OVERHEAD or not missing or queue_id in self._reading:
            return None
        last = max(missing)
        if last <= self._read_up_to.get(queue_id, -1):
            return None
        if (queue_id, last + 1) in self._entries:
            return None
        reading = ReadAhead(queue_id, last, READ_AHEAD_ROWS, limit, list(self._unsettled.values()))
        self._reading[queue_id] = reading
        return reading

    def finish_read_ahead(self, reading: ReadAhead, rows: Iterable[StoredMessage]) -> int:
        """Replay what the rows' snapshot may lack, then keep them; return how many were kept.

        ``rows``: what the read returned, in seq order (empty when it failed, was cancelled,
        or the queue was deleted or sealed meanwhile).
        """
        queue_id = reading.queue_id
        if self._reading.get(queue_id) is reading:
            del self._reading[queue_id]
        by_seq = {m.seq: m for m in rows}
        if by_seq:
            self._read_up_to[queue_id] = max(self._read_up_to.get(queue_id, 0), max(by_seq))
        for batch in reading.batches:
            if not by_seq:
                break
            replay(batch, queue_id, by_seq)
        # The first rows are the ones the next receives take: keep as many as the bounds allow,
        # from the front, pushing out older read-ahead messages rather than these.
        room_rows = READ_AHEAD_QUEUE_ROWS
        room_bytes = min(self.ahead_budget, READ_AHEAD_QUEUE_BYTES)
        chosen: list[tuple[Key, StoredMessage, int]] = []
        for seq, message in by_seq.items():  # in seq order, as read
            key = (queue_id, seq)
            if key in self._entries:
                continue
            cost = cache_cost(message.body, message.attributes)
            if cost > room_bytes or not room_rows:
                break
            room_bytes -= cost
            room_rows -= 1
            chosen.append((key, message, cost))
        for key, message, cost in chosen:
            self._add_ahead(key, message, cost)
        return len(chosen)

    def _add_ahead(self, key: Key, message: StoredMessage, cost: int) -> None:
        part = self._ahead_by_queue.get(key[0])
        if part is not None:
            while part.costs and (
                len(part.costs) >= READ_AHEAD_QUEUE_ROWS
                or part.bytes + cost > READ_AHEAD_QUEUE_BYTES
            ):
                self.drop((key[0], next(iter(part.costs))))
        while self._ahead and self._ahead_bytes + cost > self.ahead_budget:
            self.drop(next(iter(self._ahead)))
        self._make_room(cost)
        part = self._ahead_by_queue.get(key[0])
        if part is None:
            part = self._ahead_by_queue[key[0]] = _QueueAhead()
        part.costs[key[1]] = cost
        part.bytes += cost
        self._ahead[key] = cost
        self._ahead_bytes += cost
        self._bytes += cost
        self._entries[key] = message


def replay(batch: Iterable[AnyMutation], queue_id: int, by_seq: dict[int, StoredMessage]) -> None:
    """Apply a batch to rows of ``queue_id`` read from the file (seq -> message), in place.

    The same rules as :meth:`BodyCache.track`, and idempotent: a row that already shows a
    mutation is left as it is.
    """
    for mutation in batch:
        kind = type(mutation)
        if kind is MessageDelivered:
            assert isinstance(mutation, MessageDelivered)
            if mutation.queue_id == queue_id:
                row = by_seq.get(mutation.seq)
                if row is not None and row.first_received_at is None:
                    by_seq[mutation.seq] = msgspec.structs.replace(
                        row, first_received_at=mutation.received_at
                    )
        elif kind is MessageDeleted:
            assert isinstance(mutation, MessageDeleted)
            if mutation.queue_id == queue_id:
                by_seq.pop(mutation.seq, None)
        elif kind is MessageMoved:
            assert isinstance(mutation, MessageMoved)
            if mutation.source_queue_id == queue_id:
                by_seq.pop(mutation.source_seq, None)
        elif kind is QueuePurged:
            assert isinstance(mutation, QueuePurged)
            if mutation.queue_id == queue_id:
                for seq in [s for s in by_seq if s < mutation.below_seq]:
                    del by_seq[seq]
