import sqlite3

import pytest

from broker.store.sqlite_schema import MIGRATIONS, SCHEMA_VERSION, configure, migrate


def connect(path):
    connection = sqlite3.connect(path, isolation_level=None)
    configure(connection, writer=True)
    return connection


def file_at_version(tmp_path, version: int) -> sqlite3.Connection:
    """A store file as a broker of schema ``version`` left it (its migrations, nothing more)."""
    connection = connect(tmp_path / "s.db")
    connection.execute("BEGIN")
    for step in range(version):
        MIGRATIONS[step](connection)
    connection.execute(f"PRAGMA user_version = {version}")
    connection.execute("COMMIT")
    return connection


def test_a_new_file_gets_the_current_schema(tmp_path):
    connection = connect(tmp_path / "s.db")
    assert migrate(connection) == 0
    assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert connection.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert connection.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    assert {"queues", "messages", "deduplication"} <= tables


def test_migrating_twice_is_a_no_op(tmp_path):
    migrate(connect(tmp_path / "s.db"))
    assert migrate(connect(tmp_path / "s.db")) == SCHEMA_VERSION


def test_a_newer_file_is_refused(tmp_path):
    connection = connect(tmp_path / "s.db")
    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(sqlite3.DatabaseError, match="schema version"):
        migrate(connection)


def test_live_queue_names_are_unique(tmp_path):
    connection = connect(tmp_path / "s.db")
    migrate(connection)
    insert = "INSERT INTO queues (name, settings, tags, created_at, modified_at, deleted) "
    connection.execute(insert + "VALUES ('q', x'', '{}', 0, 0, 1)")
    connection.execute(insert + "VALUES ('q', x'', '{}', 0, 0, 0)")  # the old one is deleted
    with pytest.raises(sqlite3.IntegrityError):
        connection.execute(insert + "VALUES ('q', x'', '{}', 0, 0, 0)")


def test_a_version_1_file_gains_key_ids_and_keeps_its_rows_in_clear(tmp_path):
    connection = file_at_version(tmp_path, 1)
    connection.execute(
        "INSERT INTO messages (queue_id, seq, message_id, visible_at, receive_count, "
        "received_at, enqueued_at, sent_at, sender_id, body) "
        "VALUES (1, 1, x'00', 0, 0, 0, 0, 0, '', CAST('old body' AS BLOB))"
    )
    assert migrate(connection) == 1
    rows = connection.execute("SELECT body, key_id FROM messages").fetchall()
    assert rows == [(b"old body", None)]


def test_a_version_2_file_gains_the_sns_tables_and_keeps_its_queues(tmp_path):
    connection = file_at_version(tmp_path, 2)
    connection.execute(
        "INSERT INTO queues (name, settings, tags, created_at, modified_at) "
        "VALUES ('q', x'', '{}', 0, 0)"
    )
    assert migrate(connection) == 2
    tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    assert {"topics", "subscriptions", "sns_outbox", "sns_deduplication"} <= tables
    assert connection.execute("SELECT name FROM queues").fetchall() == [("q",)]


def test_a_version_3_file_gains_the_move_task_table_and_keeps_its_rows(tmp_path):
    connection = file_at_version(tmp_path, 3)
    connection.execute(
        "INSERT INTO topics (name, settings, tags, created_at, modified_at) "
        "VALUES ('t', x'', '{}', 0, 0)"
    )
    assert migrate(connection) == 3
    tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    assert "move_tasks" in tables
    assert connection.execute("SELECT count(*) FROM move_tasks").fetchone() == (0,)
    assert connection.execute("SELECT name FROM topics").fetchall() == [("t",)]


def test_a_version_4_file_gains_the_queue_deletions_table_and_keeps_its_rows(tmp_path):
    connection = file_at_version(tmp_path, 4)
    connection.execute(
        "INSERT INTO queues (name, settings, tags, created_at, modified_at) "
        "VALUES ('q', x'', '{}', 0, 0)"
    )
    assert migrate(connection) == 4
    assert connection.execute("SELECT count(*) FROM queue_deletions").fetchone() == (0,)
    assert connection.execute("SELECT name FROM queues").fetchall() == [("q",)]


def test_a_version_5_file_gains_body_md5s_and_its_rows_have_none(tmp_path):
    connection = file_at_version(tmp_path, 5)
    connection.execute(
        "INSERT INTO messages (queue_id, seq, message_id, visible_at, receive_count, "
        "received_at, enqueued_at, sent_at, sender_id, body) "
        "VALUES (1, 1, x'00', 0, 0, 0, 0, 0, 's', x'68')"
    )
    assert migrate(connection) == 5
    assert connection.execute("SELECT seq, body, body_md5 FROM messages").fetchall() == [
        (1, b"h", None)
    ]


def test_a_version_6_file_keeps_its_subscriptions_as_they_were(tmp_path):
    connection = file_at_version(tmp_path, 6)
    connection.execute(
        "INSERT INTO subscriptions (subscription_id, topic_id, record) VALUES ('s', 1, '{}')"
    )
    assert migrate(connection) == 6
    assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert connection.execute("SELECT subscription_id, record FROM subscriptions").fetchall() == [
        ("s", "{}")
    ]


def test_a_version_7_file_gains_deleted_counts_from_its_kept_unsubscribed_rows(tmp_path):
    connection = file_at_version(tmp_path, 7)
    for name in ("kept", "none"):
        connection.execute(
            "INSERT INTO topics (name, settings, tags, created_at, modified_at) "
            "VALUES (?, x'', '{}', 0, 0)",
            (name,),
        )
    connection.executemany(
        "INSERT INTO subscriptions (subscription_id, topic_id, record) VALUES (?, ?, ?)",
        [
            ("live", 1, b'{"unsubscribed":false}'),
            ("older", 1, b"{}"),  # written before version 7
            ("gone", 1, b'{"unsubscribed":true}'),
            ("gone too", 1, b'{"unsubscribed":true}'),
            ("other", 2, b'{"unsubscribed":false}'),
        ],
    )
    assert migrate(connection) == 7
    assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    counts = connection.execute("SELECT name, subscriptions_deleted FROM topics ORDER BY name")
    assert counts.fetchall() == [("kept", 2), ("none", 0)]
    assert connection.execute("SELECT count(*) FROM subscriptions").fetchone() == (5,)
