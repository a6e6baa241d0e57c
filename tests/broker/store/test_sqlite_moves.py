"""Move tasks in the SQLite store: saved, updated, forgotten, and read back after a restart."""

from __future__ import annotations

import msgspec

from broker.store.base import StoredMoveTask
from broker.store.sqlite import SqliteStore

SOURCE = "arn:aws:sqs:us-east-1:000000000000:dlq"


def stored(task_id: str, **fields: object) -> StoredMoveTask:
    values: dict[str, object] = {
        "task_id": task_id,
        "source_arn": SOURCE,
        "destination_arn": None,
        "max_per_second": None,
        "started_at": 1_700_000_000_000,
        "to_move": 5,
        "moved": 0,
        "status": "RUNNING",
        "failure_reason": None,
        **fields,
    }
    return StoredMoveTask(**values)  # type: ignore[arg-type]


async def reopen(store: SqliteStore) -> SqliteStore:
    await store.aclose()
    again = SqliteStore(store.path.parent)
    await again.open()
    return again


async def test_tasks_survive_a_restart_in_the_order_they_started(store: SqliteStore):
    assert await store.load_move_tasks() == []
    first = stored("a", destination_arn=SOURCE + "-work", max_per_second=50)
    second = stored("b", started_at=1_700_000_000_001)
    await store.save_move_task(first)
    await store.save_move_task(second)
    # Progress and the end of the first task: an update, which keeps its place.
    done = msgspec.structs.replace(first, moved=5, status="COMPLETED")
    await store.save_move_task(done)
    failed = msgspec.structs.replace(
        second, moved=2, status="FAILED", failure_reason="AWS.SimpleQueueService.NonExistentQueue"
    )
    await store.save_move_task(failed)
    again = await reopen(store)
    try:
        assert await again.load_move_tasks() == [done, failed]
    finally:
        await again.aclose()


async def test_an_update_changes_only_progress_and_status(store: SqliteStore):
    await store.save_move_task(stored("a", to_move=5))
    await store.save_move_task(stored("a", to_move=99, moved=3, started_at=0))
    (loaded,) = await store.load_move_tasks()
    assert (loaded.to_move, loaded.started_at, loaded.moved) == (5, 1_700_000_000_000, 3)


async def test_forgotten_tasks_are_deleted_with_the_save(store: SqliteStore):
    for task_id in "abc":
        await store.save_move_task(stored(task_id, status="COMPLETED"))
    await store.save_move_task(stored("d"), forget=["a", "b", "not-there"])
    assert [task.task_id for task in await store.load_move_tasks()] == ["c", "d"]
