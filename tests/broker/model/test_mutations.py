import msgspec
from hypothesis import given
from hypothesis import strategies as st

from broker.model.messages import AttributeValue
from broker.model.mutations import MessageInserted, MessageMoved, Mutation


def test_mutations_round_trip_through_msgpack_with_their_tag():
    records = [
        MessageInserted(
            queue_id=1,
            seq=2,
            message_id="0b7b1c4e-0000-4000-8000-000000000000",
            body="hi",
            attributes={"a": AttributeValue("String", "v")},
            sent_at=3,
            visible_at=4,
            group_id=None,
            deduplication_id=None,
            sender_id="me",
            trace_header=None,
        ),
        MessageMoved(
            source_queue_id=1,
            source_seq=2,
            target_queue_id=3,
            target_seq=4,
            enqueued_at=None,
            visible_at=5,
            source_arn="arn:aws:sqs:us-east-1:000000000000:q",
        ),
    ]
    encoded = msgspec.msgpack.encode(records)
    assert msgspec.msgpack.decode(encoded, type=list[Mutation]) == records


@given(
    st.integers(0, 2**40),
    st.integers(0, 2**40),
    st.text(),
    st.dictionaries(st.text(min_size=1), st.binary(min_size=1), max_size=3),
)
def test_any_insert_round_trips(queue_id, seq, body, binaries):
    record = MessageInserted(
        queue_id=queue_id,
        seq=seq,
        message_id="0b7b1c4e-0000-4000-8000-000000000000",
        body=body,
        attributes={k: AttributeValue("Binary", None, v) for k, v in binaries.items()},
        sent_at=seq,
        visible_at=seq,
        group_id=body or None,
        deduplication_id=None,
        sender_id="",
        trace_header=None,
    )
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(record), type=Mutation) == record
