"""Builders of model mutations for the store tests."""

from __future__ import annotations

from typing import Any

from broker.model.mutations import MessageInserted

MESSAGE_ID = "0b7b1c4e-1d2f-4a6b-8c9d-0e1f2a3b4c5d"


def inserted(queue_id: int, seq: int, body: str = "b", **fields: Any) -> MessageInserted:
    """A plain message's insert (no attributes, group or trace); ``fields`` override any."""
    values: dict[str, Any] = {
        "queue_id": queue_id,
        "seq": seq,
        "message_id": MESSAGE_ID,
        "body": body,
        "attributes": {},
        "sent_at": 1,
        "visible_at": 1,
        "group_id": None,
        "deduplication_id": None,
        "sender_id": "",
        "trace_header": None,
    }
    values.update(fields)
    return MessageInserted(**values)
