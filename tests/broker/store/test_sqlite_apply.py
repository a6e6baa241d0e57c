import hashlib
import sqlite3
import uuid

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.model.messages import AttributeValue
from broker.model.mutations import (
    DeduplicationExpired,
    DeduplicationRecorded,
    MessageDeleted,
    MessageDelivered,
    MessageInserted,
    MessageMoved,
    QueuePurged,
    ReceiveAttemptRecorded,
    VisibilityChanged,
)
from broker.model.settings import QueueSettings
from broker.store.base import ReceiveAttemptEntry
from broker.store.sealing import SealingKey
from broker.store.sqlite_apply import (
    ATTRIBUTES_DECODER,
    ATTRIBUTES_ENCODER,
    apply_mutations,
    reclaim_step,
)
from broker.store.sqlite_reads import load_queues
from broker.store.sqlite_schema import configure, migrate

ID = str(uuid.UUID(int=1, version=4))


@pytest.fixture
def db(tmp_path):
    connection = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    configure(connection, writer=True)
    migrate(connection)
    for name in ("a", "b"):
        connection.execute(
            "INSERT INTO queues (name, settings, tags, created_at, modified_at) "
            "VALUES (?, x'', '{}', 0, 0)",
            (name,),
        )
    return connection


def inserted(seq, queue_id=1, **fields):
    values = {
        "queue_id": queue_id,
        "seq": seq,
        "message_id": ID,
        "body": "hé",
        "attributes": {},
        "sent_at": 100,
        "visible_at": 100,
        "group_id": "g",
        "deduplication_id": None,
        "sender_id": "s",
        "trace_header": None,
    }
    values.update(fields)
    return MessageInserted(**values)


def row(db, seq, queue_id=1, columns="*"):
    return db.execute(
        f"SELECT {columns} FROM messages WHERE queue_id = ? AND seq = ?", (queue_id, seq)
    ).fetchone()


def test_insert_deliver_change_delete(db):
    attributes = {"a": AttributeValue("Binary", None, b"\x01")}
    apply_mutations(db, [inserted(1, attributes=attributes), inserted(2)], set())
    body, encoded, enqueued = row(db, 1, columns="body, attributes, enqueued_at")
    assert body == "hé".encode()
    assert enqueued == 100
    assert ATTRIBUTES_DECODER.decode(encoded) == attributes
    assert row(db, 2, columns="attributes") == (None,)
    apply_mutations(
        db,
        [
            MessageDelivered(queue_id=1, seq=1, visible_at=500, receive_count=1, received_at=200),
            MessageDelivered(queue_id=1, seq=1, visible_at=900, receive_count=2, received_at=600),
            VisibilityChanged(queue_id=1, seq=1, visible_at=700),
            MessageDeleted(queue_id=1, seq=2),
        ],
        set(),
    )
    assert row(db, 1, columns="visible_at, receive_count, received_at, first_received_at") == (
        700,
        2,
        600,
        200,
    )
    assert row(db, 2) is None
    assert db.execute("SELECT next_seq FROM queues WHERE queue_id = 1").fetchone() == (3,)


def test_insert_then_delete_in_one_batch_keeps_order(db):
    apply_mutations(db, [inserted(1), MessageDeleted(queue_id=1, seq=1), inserted(2)], set())
    assert row(db, 1) is None
    assert row(db, 2) is not None


@pytest.mark.parametrize("enqueued_at", [None, 555])
def test_move_copies_the_row(db, enqueued_at):
    apply_mutations(db, [inserted(1)], set())
    move = MessageMoved(
        source_queue_id=1,
        source_seq=1,
        target_queue_id=2,
        target_seq=9,
        enqueued_at=enqueued_at,
        visible_at=800,
        source_arn="arn:src",
    )
    apply_mutations(db, [move], set())
    assert row(db, 1) is None
    assert row(db, 9, queue_id=2, columns="message_id, body, source_arn, enqueued_at") == (
        uuid.UUID(ID).bytes,
        "hé".encode(),
        "arn:src",
        enqueued_at or 100,
    )
    assert db.execute("SELECT next_seq FROM queues WHERE queue_id = 2").fetchone() == (10,)


@pytest.mark.parametrize("sealed", [False, True], ids=["clear", "sealed on the way"])
def test_a_fifo_move_takes_the_message_id_for_deduplication_id(db, sealed):
    """AWS: moved to a FIFO DLQ, the deduplication id becomes the original message id."""
    message_id = str(uuid.UUID(int=0xABCDEF0123456789ABCDEF0123456789, version=4))
    apply_mutations(
        db,
        [
            inserted(1, message_id=message_id, deduplication_id="shared"),
            inserted(2, deduplication_id=None, group_id=None),  # standard: none
        ],
        set(),
    )
    keys = {2: SealingKey("k1", b"k" * 32)} if sealed else None
    moves = [
        MessageMoved(
            source_queue_id=1,
            source_seq=seq,
            target_queue_id=2,
            target_seq=seq,
            enqueued_at=555,
            visible_at=800,
            source_arn="arn:src",
        )
        for seq in (1, 2)
    ]
    apply_mutations(db, moves, set(), keys)
    assert row(db, 1, queue_id=2, columns="deduplication_id, group_id, key_id") == (
        message_id,
        "g",
        "k1" if sealed else None,
    )
    assert row(db, 2, queue_id=2, columns="deduplication_id") == (None,)


def test_deduplication_rows(db):
    apply_mutations(
        db,
        [
            DeduplicationRecorded(queue_id=1, key=b"k1", seq=1, expires_at=10),
            DeduplicationRecorded(queue_id=1, key=b"k2", seq=2, expires_at=20),
            DeduplicationExpired(queue_id=1, now=10),
        ],
        set(),
    )
    assert db.execute("SELECT key FROM deduplication").fetchall() == [(b"k2",)]


def attempt(attempt_id: str, seqs: list[int], expires_at: int, queue_id: int = 1):
    return ReceiveAttemptRecorded(
        queue_id=queue_id,
        attempt_id=attempt_id,
        seqs=seqs,
        deadlines=[expires_at - 1 for _ in seqs],
        expires_at=expires_at,
    )


def test_receive_attempts_are_kept_for_their_5_minutes(db):
    window = 300_000
    db.execute("UPDATE queues SET settings = ?", (msgspec.json.encode(QueueSettings()),))
    apply_mutations(db, [attempt("a", [1, 2], window), attempt("b", [3], window + 10)], set())
    apply_mutations(db, [attempt("a", [1, 2], window + 5), attempt("c", [1], window, 2)], set())
    loaded = {queue.record.queue_id: queue.attempts for queue in load_queues(db)}
    assert loaded == {
        1: [
            ReceiveAttemptEntry("a", [1, 2], [window + 4] * 2, window + 5),  # a retry's
            ReceiveAttemptEntry("b", [3], [window + 9], window + 10),
        ],
        2: [ReceiveAttemptEntry("c", [1], [window - 1], window)],
    }
    # A receive recorded at 2 x window: the attempts of its queue that ended by then go.
    apply_mutations(db, [attempt("d", [4], 2 * window + 5)], set())
    assert [a.attempt_id for a in load_queues(db)[0].attempts] == ["b", "d"]
    db.execute("UPDATE queues SET deleted = 1 WHERE queue_id = 1")
    assert reclaim_step(db, 1, limit=10) is True
    assert db.execute("SELECT DISTINCT queue_id FROM receive_attempts").fetchall() == [(2,)]


def test_deduplication_expired_deletes_the_receive_attempts_ended_too(db):
    db.execute("UPDATE queues SET settings = ?", (msgspec.json.encode(QueueSettings()),))
    apply_mutations(
        db, [attempt("a", [1], 10), attempt("b", [2], 20), attempt("c", [1], 10, 2)], set()
    )
    apply_mutations(db, [DeduplicationExpired(queue_id=1, now=10)], set())
    assert db.execute(
        "SELECT queue_id, attempt_id FROM receive_attempts ORDER BY 1"
    ).fetchall() == [
        (1, "b"),
        (2, "c"),
    ]


def test_purge_then_reclaim_in_steps(db):
    apply_mutations(db, [inserted(seq) for seq in range(1, 6)], set())
    purged: set[int] = set()
    apply_mutations(db, [QueuePurged(queue_id=1, below_seq=4)], purged)
    assert purged == {1}
    assert reclaim_step(db, 1, limit=2) is False
    assert reclaim_step(db, 1, limit=2) is True
    remaining = [seq for (seq,) in db.execute("SELECT seq FROM messages ORDER BY seq")]
    assert remaining == [4, 5]


def test_reclaim_of_a_deleted_queue_removes_it(db):
    apply_mutations(
        db,
        [inserted(1), DeduplicationRecorded(queue_id=1, key=b"k", seq=1, expires_at=9)],
        set(),
    )
    db.execute("UPDATE queues SET deleted = 1 WHERE queue_id = 1")
    assert reclaim_step(db, 1, limit=10) is True
    assert db.execute("SELECT count(*) FROM messages").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM deduplication").fetchone() == (0,)
    assert db.execute("SELECT queue_id FROM queues").fetchall() == [(2,)]
    assert reclaim_step(db, 1, limit=10) is True


COLUMNS = (
    "message_id, visible_at, receive_count, received_at, first_received_at, enqueued_at, "
    "sent_at, group_id, deduplication_id, sender_id, trace_header, source_arn, attributes, "
    "body, key_id, body_md5"
)


def expected_row(m: MessageInserted) -> tuple[object, ...]:
    return (
        uuid.UUID(m.message_id).bytes,
        m.visible_at,
        0,
        0,
        None,
        m.sent_at,
        m.sent_at,
        m.group_id,
        m.deduplication_id,
        m.sender_id,
        m.trace_header,
        None,
        ATTRIBUTES_ENCODER.encode(m.attributes) if m.attributes else None,
        m.body.encode(),
        None,
        bytes.fromhex(m.body_md5) if m.body_md5 is not None else None,
    )


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    messages=st.lists(
        st.builds(
            lambda seq, body, group, dedup, trace, md5, attrs, sent, delay: inserted(
                seq,
                sent_at=sent,
                visible_at=sent + delay,
                body=body,
                group_id=group,
                deduplication_id=dedup,
                trace_header=trace,
                body_md5=hashlib.md5(body.encode()).hexdigest() if md5 else None,
                attributes={"a": AttributeValue("String", "v", None)} if attrs else {},
            ),
            st.integers(1, 10**6),
            st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20),
            st.none() | st.just("g"),
            st.none() | st.just("d"),
            st.none() | st.just("Root=1"),
            st.booleans(),
            st.booleans(),
            st.integers(0, 2**41),
            st.integers(0, 900_000),
        ),
        min_size=1,
        max_size=8,
        unique_by=lambda m: m.seq,
    )
)
def test_plain_and_full_inserts_write_the_same_columns(db, messages):
    # Plain messages take a shorter statement; every row must read back as the long one wrote.
    db.execute("DELETE FROM messages")
    apply_mutations(db, messages, set())
    for m in messages:
        assert row(db, m.seq, columns=COLUMNS) == expected_row(m)
