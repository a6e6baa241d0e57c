"""The SQLite schema, its version, and the migrations that bring an old file up to date."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

SCHEMA_VERSION = 9


def _create_version_1(connection: sqlite3.Connection) -> None:
    _run_script(
        connection,
        """
        CREATE TABLE queues (
            queue_id INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: ids never reused
            name TEXT NOT NULL,
            settings BLOB NOT NULL,                      -- QueueSettings as JSON
            tags BLOB NOT NULL,                          -- {key: value} as JSON
            created_at INTEGER NOT NULL,
            modified_at INTEGER NOT NULL,
            next_seq INTEGER NOT NULL DEFAULT 1,         -- seqs are never reused either
            purged_below INTEGER NOT NULL DEFAULT 0,     -- rows below are gone, reclaim pending
            deleted INTEGER NOT NULL DEFAULT 0           -- 1: rows are being reclaimed
        );
        CREATE UNIQUE INDEX queues_live_name ON queues (name) WHERE deleted = 0;

        CREATE TABLE messages (
            queue_id INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            message_id BLOB NOT NULL,                    -- UUID, 16 bytes
            visible_at INTEGER NOT NULL,
            receive_count INTEGER NOT NULL,
            received_at INTEGER NOT NULL,
            first_received_at INTEGER,
            enqueued_at INTEGER NOT NULL,                -- retention counts from here
            sent_at INTEGER NOT NULL,
            group_id TEXT,
            deduplication_id TEXT,
            sender_id TEXT NOT NULL,
            trace_header TEXT,
            source_arn TEXT,                             -- DeadLetterQueueSourceArn
            attributes BLOB,                             -- msgpack, NULL when none
            body BLOB NOT NULL,                          -- UTF-8, last, after the small columns
            PRIMARY KEY (queue_id, seq)
        );

        CREATE TABLE deduplication (
            queue_id INTEGER NOT NULL,
            key BLOB NOT NULL,
            seq INTEGER NOT NULL,
            expires_at INTEGER NOT NULL,
            PRIMARY KEY (queue_id, key)
        ) WITHOUT ROWID;
        CREATE INDEX deduplication_expiry ON deduplication (queue_id, expires_at);
        """,
    )


def _add_key_ids(connection: sqlite3.Connection) -> None:
    # Encryption at rest (broker/store/sealing.py): the key that sealed a row's body and
    # attributes; NULL means they are stored in clear, as every row of version 1 was.
    connection.execute("ALTER TABLE messages ADD COLUMN key_id TEXT")


def _create_sns(connection: sqlite3.Connection) -> None:
    # SNS (broker/store/sqlite_sns.py). Topics are deleted at once with their rows: unlike a
    # queue's messages, a topic's rows are few, save for a dead endpoint's pending deliveries.
    _run_script(
        connection,
        """
        CREATE TABLE topics (
            topic_id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: ARNs outlive topics
            name TEXT NOT NULL UNIQUE,
            settings BLOB NOT NULL,                      -- TopicSettings as JSON
            tags BLOB NOT NULL,                          -- {key: value} as JSON
            created_at INTEGER NOT NULL,
            modified_at INTEGER NOT NULL,
            next_seq INTEGER NOT NULL DEFAULT 1          -- FIFO SequenceNumbers, never reused
        );

        CREATE TABLE subscriptions (
            subscription_id TEXT PRIMARY KEY,
            topic_id INTEGER NOT NULL,
            record BLOB NOT NULL                         -- SubscriptionRecord as JSON
        );
        CREATE INDEX subscriptions_topic ON subscriptions (topic_id);

        CREATE TABLE sns_outbox (
            delivery_id INTEGER PRIMARY KEY,
            subscription_id TEXT NOT NULL,
            topic_id INTEGER NOT NULL,
            message_type TEXT NOT NULL,
            endpoint TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            first_attempt_at INTEGER,
            next_attempt_at INTEGER NOT NULL,
            published_at INTEGER NOT NULL,
            headers BLOB NOT NULL,                       -- [[name, value], ...] as JSON
            dead_letter_attributes BLOB,                 -- msgpack, NULL when none
            body BLOB NOT NULL                           -- UTF-8, last, after the small columns
        );
        CREATE INDEX sns_outbox_subscription ON sns_outbox (subscription_id);
        CREATE INDEX sns_outbox_topic ON sns_outbox (topic_id);

        CREATE TABLE sns_deduplication (
            topic_id INTEGER NOT NULL,
            key BLOB NOT NULL,
            message_id TEXT NOT NULL,
            sequence_number TEXT NOT NULL,
            expires_at INTEGER NOT NULL,
            PRIMARY KEY (topic_id, key)
        ) WITHOUT ROWID;
        CREATE INDEX sns_deduplication_expiry ON sns_deduplication (topic_id, expires_at);
        """,
    )


def _create_move_tasks(connection: sqlite3.Connection) -> None:
    # Message move tasks (broker/store/sqlite_moves.py): at most 10 per source queue, so that
    # ListMessageMoveTasks keeps its history and RUNNING tasks resume after a restart.
    _run_script(
        connection,
        """
        CREATE TABLE move_tasks (
            task_id TEXT PRIMARY KEY,                    -- a UUID (rowid keeps the saving order)
            source_arn TEXT NOT NULL,
            destination_arn TEXT,                        -- NULL: back to each original source
            max_per_second INTEGER,                      -- NULL: not paced
            started_at INTEGER NOT NULL,
            to_move INTEGER NOT NULL,
            moved INTEGER NOT NULL,
            status TEXT NOT NULL,                        -- RUNNING, CANCELLING, COMPLETED...
            failure_reason TEXT
        );
        CREATE INDEX move_tasks_source ON move_tasks (source_arn);
        """,
    )


def _create_queue_deletions(connection: sqlite3.Connection) -> None:
    # When each queue name was last deleted, so that CreateQueue keeps answering
    # QueueDeletedRecently for the rest of AWS's 60 seconds after a restart. Rows older than
    # that window are forgotten on the next deletion.
    connection.execute(
        "CREATE TABLE queue_deletions (name TEXT PRIMARY KEY, deleted_at INTEGER NOT NULL) "
        "WITHOUT ROWID"
    )


def _run_script(connection: sqlite3.Connection, script: str) -> None:
    # Not executescript(): it commits first, and migrations must stay inside their transaction.
    # Statements are split on ";", so comments in the script must not contain one.
    for statement in script.split(";"):
        if statement.strip():
            connection.execute(statement)


def _add_body_md5s(connection: sqlite3.Connection) -> None:
    # The MD5 of the body (16 bytes) as the send computed it, so that a receive of a row read
    # from the file need not hash the body again. NULL when unknown (rows of earlier versions,
    # fan-out copies) and for rows sealed at rest: a digest of the clear body would let anyone
    # with the file confirm a guess of a sealed body.
    connection.execute("ALTER TABLE messages ADD COLUMN body_md5 BLOB")


def _keep_unsubscribed_subscriptions(connection: sqlite3.Connection) -> None:
    # No table changes: from version 7 the subscriptions table also holds unsubscribed HTTP/S
    # subscriptions (their record's "unsubscribed" is true) while the token of their
    # UnsubscribeConfirmation can restore them. A broker older than this would load those
    # rows as live subscriptions; the version number keeps it from opening the file at all.
    del connection


def _count_deleted_subscriptions(connection: sqlite3.Connection) -> None:
    # SubscriptionsDeleted, kept per topic and raised in the transaction of each Unsubscribe
    # (broker/store/sqlite_sns.py), so that it survives a restart; a deleted topic's count
    # goes with its row. Version 7 counted in memory only and showed 0 after every restart,
    # so the true count of an older file is unknown: each unsubscribed row kept for its
    # restore link is at least one Unsubscribe of its topic, and that is where the count
    # starts.
    connection.execute(
        "ALTER TABLE topics ADD COLUMN subscriptions_deleted INTEGER NOT NULL DEFAULT 0"
    )
    connection.execute(
        """
        UPDATE topics SET subscriptions_deleted = (
            SELECT count(*) FROM subscriptions
            WHERE subscriptions.topic_id = topics.topic_id
                AND json_extract(CAST(record AS TEXT), '$.unsubscribed') IS 1
        )
        """
    )


def _create_receive_attempts(connection: sqlite3.Connection) -> None:
    # FIFO receives remembered under their ReceiveRequestAttemptId for their 5 minutes, so
    # that the retry of a receive whose answer a crash cut off returns its messages, as AWS
    # promises (broker/model/fifo.py). seqs and deadlines: JSON arrays of integers.
    connection.execute(
        "CREATE TABLE receive_attempts (queue_id INTEGER NOT NULL, attempt_id TEXT NOT NULL, "
        "seqs BLOB NOT NULL, deadlines BLOB NOT NULL, expires_at INTEGER NOT NULL, "
        "PRIMARY KEY (queue_id, attempt_id)) WITHOUT ROWID"
    )
    # Each receive recorded drops its queue's ended ones: found by expiry, not by a scan.
    connection.execute(
        "CREATE INDEX receive_attempts_expiry ON receive_attempts (queue_id, expires_at)"
    )


# MIGRATIONS[n] brings a file at version n to version n + 1.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    0: _create_version_1,
    1: _add_key_ids,
    2: _create_sns,
    3: _create_move_tasks,
    4: _create_queue_deletions,
    5: _add_body_md5s,
    6: _keep_unsubscribed_subscriptions,
    7: _count_deleted_subscriptions,
    8: _create_receive_attempts,
}


def configure(connection: sqlite3.Connection, *, writer: bool) -> None:
    """Set the pragmas every connection needs.

    WAL lets readers run beside the single writer; ``synchronous=FULL`` makes every commit
    fsync the WAL, so a commit that returned survives power loss.
    """
    connection.execute("PRAGMA busy_timeout = 10000")
    connection.execute("PRAGMA synchronous = FULL")
    if writer:
        # Must come first on a new file (before WAL mode initialises it): deleted rows then
        # give their pages back to the filesystem. No effect on an existing file.
        connection.execute("PRAGMA auto_vacuum = INCREMENTAL")
        connection.execute("PRAGMA journal_mode = WAL")
        # Keep the WAL file from staying huge after a burst (bytes).
        connection.execute("PRAGMA journal_size_limit = 67108864")
    else:
        connection.execute("PRAGMA query_only = 1")


def migrate(connection: sqlite3.Connection) -> int:
    """Bring the file to ``SCHEMA_VERSION`` (creating it if empty); return the old version.

    Raises:
        sqlite3.DatabaseError: the file is newer than this code, or not a database.
    """
    version: int = connection.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise sqlite3.DatabaseError(
            f"the store has schema version {version}; this broker knows up to {SCHEMA_VERSION}"
        )
    start = version
    while version < SCHEMA_VERSION:
        connection.execute("BEGIN IMMEDIATE")
        try:
            MIGRATIONS[version](connection)
            version += 1
            connection.execute(f"PRAGMA user_version = {version}")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
    return start
