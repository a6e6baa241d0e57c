"""The message move tasks of the SQLite store: one row per task in ``move_tasks``.

Schema version 4 (:mod:`broker.store.sqlite_schema`). A save is an upsert that keeps the
row's rowid, so loading in rowid order gives the tasks in the order they started. Functions
here run inside the writer's transaction (saves) or a reader's snapshot (loading);
:mod:`broker.store.sqlite` owns the threads.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Final

from broker.store.base import StoredMoveTask

_SAVE: Final = """
    INSERT INTO move_tasks (task_id, source_arn, destination_arn, max_per_second, started_at,
        to_move, moved, status, failure_reason)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (task_id) DO UPDATE SET moved = excluded.moved, status = excluded.status,
        failure_reason = excluded.failure_reason
"""
_FORGET: Final = "DELETE FROM move_tasks WHERE task_id = ?"
_LOAD: Final = (
    "SELECT task_id, source_arn, destination_arn, max_per_second, started_at, to_move, moved, "
    "status, failure_reason FROM move_tasks ORDER BY rowid"
)


def save_move_task(
    connection: sqlite3.Connection, task: StoredMoveTask, forget: Sequence[str]
) -> None:
    """Insert ``task`` or update its progress and status; delete the ``forget`` rows."""
    connection.execute(
        _SAVE,
        (
            task.task_id,
            task.source_arn,
            task.destination_arn,
            task.max_per_second,
            task.started_at,
            task.to_move,
            task.moved,
            task.status,
            task.failure_reason,
        ),
    )
    connection.executemany(_FORGET, [(task_id,) for task_id in forget])


def load_move_tasks(connection: sqlite3.Connection) -> list[StoredMoveTask]:
    """Every stored task, in the order each was first saved."""
    return [
        StoredMoveTask(
            task_id=task_id,
            source_arn=source_arn,
            destination_arn=destination_arn,
            max_per_second=max_per_second,
            started_at=started_at,
            to_move=to_move,
            moved=moved,
            status=status,
            failure_reason=failure_reason,
        )
        for (
            task_id,
            source_arn,
            destination_arn,
            max_per_second,
            started_at,
            to_move,
            moved,
            status,
            failure_reason,
        ) in connection.execute(_LOAD)
    ]
