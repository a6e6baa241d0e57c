"""What model operations return: the mutations to commit and what happens once they are durable."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple, Protocol

import msgspec

from broker.model.errors import SqsError
from broker.model.mutations import Mutation

if TYPE_CHECKING:
    from broker.model.state import QueueState


class Change:
    """The durable effect of one operation, and what must wait until it is durable.

    The shell passes ``mutations`` to ``Store.commit`` together with :meth:`on_durable`; the
    store calls it once the commit is on disk, even if the caller was cancelled meanwhile.
    Sends use it to become receivable only when nothing can lose them any more.
    """

    __slots__ = ("_after", "mutations")

    def __init__(
        self,
        mutations: Sequence[Mutation] = (),
        after: Sequence[Callable[[], None]] = (),
    ) -> None:
        self.mutations: list[Mutation] = list(mutations)
        self._after = list(after)

    def on_durable(self) -> None:
        """Apply what had to wait for durability; call once, after the commit."""
        after, self._after = self._after, []
        for callback in after:
            callback()

    @classmethod
    def combine(cls, changes: Sequence[Change]) -> Change:
        """One change doing what ``changes`` do, in order (a batch commits them together).

        A callback equal to one already taken (the same bound method of the same object,
        such as a queue's wake-up, which every delete of a batch carries) runs once: the
        model's callbacks are idempotent that way. Distinct callables all run.
        """
        mutations: list[Mutation] = []
        after: list[Callable[[], None]] = []
        for change in changes:
            mutations.extend(change.mutations)
            for callback in change._after:
                if callback not in after:
                    after.append(callback)
        return cls(mutations, after)


class SentMessage(msgspec.Struct, frozen=True):
    """The answer to one accepted send (or to a duplicate of an earlier one).

    A struct, not a NamedTuple: one is made per message sent, and a NamedTuple's ``__new__``
    is a Python function (some 2,000 instructions more per message).
    """

    message_id: str
    sequence_number: str | None
    seq: int
    duplicate: bool


class SendOutcome(Change):
    """A send or send batch: one result per request, in request order."""

    __slots__ = ("results",)

    def __init__(
        self,
        results: Sequence[SentMessage | SqsError],
        mutations: Sequence[Mutation],
        after: Sequence[Callable[[], None]],
    ) -> None:
        super().__init__(mutations, after)
        self.results = list(results)


class Delivery(msgspec.Struct, frozen=True):
    """One message returned by a receive; the shell reads its body from the store by ``seq``.

    ``first_receive_at`` is set on a message's first receive; otherwise the store has it.
    A struct, as :class:`SentMessage` is: one per message received.
    """

    seq: int
    receipt_handle: str
    receive_count: int
    first_receive_at: int | None


class ReceiveOutcome(Change):
    """A receive: the deliveries in the order to return them."""

    __slots__ = ("deliveries",)

    def __init__(
        self,
        deliveries: Sequence[Delivery],
        mutations: Sequence[Mutation],
        after: Sequence[Callable[[], None]] = (),
    ) -> None:
        super().__init__(mutations, after)
        self.deliveries = list(deliveries)


class RestoredMessage(NamedTuple):
    """The metadata of one stored message, as the store loads it at start."""

    seq: int
    visible_at: int
    receive_count: int
    received_at: int
    enqueued_at: int
    group_id: str | None


class MutationSink(Protocol):
    """Where mutations are collected: a list of them, or of them and other records."""

    def append(self, mutation: Mutation, /) -> None: ...


class SentCopies:
    """The copies of published messages that one commit sends to many queues (SNS fan-out).

    What :class:`SendOutcome` is to one send, for every copy of a
    commit at once: their records, and one activation per queue once they are durable.
    """

    __slots__ = ("accepted", "mutations")

    def __init__(self, mutations: MutationSink | None = None) -> None:
        """Collect the copies' records into ``mutations`` (the commit's list), else a new list."""
        self.mutations: MutationSink = [] if mutations is None else mutations
        # index -> (seq, visible_at, group id) of each copy it accepted, in send order (on a
        # FIFO queue the send time instead of visible_at: see QueueState._activate_sent)
        self.accepted: dict[QueueState, list[tuple[int, int, str | None]]] = {}

    def on_durable(self) -> None:
        """Make the copies receivable; call once, after the commit."""
        accepted, self.accepted = self.accepted, {}
        for index, copies in accepted.items():
            index._activate_sent(copies)
