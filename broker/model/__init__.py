"""SQS queue semantics, pure: no trio, no I/O, no clock reads.

Every operation takes the time as ``now`` (milliseconds since the epoch) and returns what the
shell must make durable (mutation records for :mod:`broker.store`) before it replies. The
index keeps message metadata only; bodies live in the store.
"""

from __future__ import annotations

from collections.abc import Callable

from broker.model.fifo import FifoIndex
from broker.model.index import QueueIndex
from broker.model.settings import QueueSettings
from broker.model.signing import Signer
from broker.model.standard import StandardIndex
from broker.model.state import MAX_IN_FLIGHT_MESSAGES


def new_index(
    *,
    queue_id: int,
    name: str,
    arn: str,
    settings: QueueSettings,
    signer: Signer,
    next_seq: int = 1,
    wake_receivers: Callable[[], None] | None = None,
    in_flight_limit: int = MAX_IN_FLIGHT_MESSAGES,
) -> QueueIndex:
    """Create the message index for a queue of the type its settings name.

    Args:
        queue_id: the store's id for the queue.
        name: the queue name.
        arn: the queue ARN.
        settings: the queue's settings (``fifo`` picks the index type).
        signer: issues receipt handles and message ids.
        next_seq: the first seq to hand out.
        wake_receivers: called when long-pollers should look again.
        in_flight_limit: most messages in flight at once (AWS's quota by default).

    Returns:
        A :class:`StandardIndex` or a :class:`FifoIndex`.
    """
    index_type = FifoIndex if settings.fifo else StandardIndex
    return index_type(
        queue_id=queue_id,
        name=name,
        arn=arn,
        settings=settings,
        signer=signer,
        next_seq=next_seq,
        wake_receivers=wake_receivers,
        in_flight_limit=in_flight_limit,
    )


__all__ = ["FifoIndex", "QueueIndex", "StandardIndex", "new_index"]
