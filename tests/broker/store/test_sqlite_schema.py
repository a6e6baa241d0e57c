import sqlite3

import pytest

from broker.store.sqlite_schema import SCHEMA_VERSION, configure, migrate


def connect(path):
    connection = sqlite3.connect(path, isolation_level=None)
    configure(connection, writer=True)
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
