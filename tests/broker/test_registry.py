"""The live queues over a real SQLite store: create, update, delete, reload, wake-ups, expiry.

Retention and deduplication windows are minutes long; these tests move time by handing
``expire`` a later ``now`` instead of waiting.
"""

from __future__ import annotations

import contextlib
import io
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from broker.model.errors import SqsError
from broker.model.messages import SendRequest
from broker.model.signing import Signer
from broker.registry import Queue, QueueRegistry, now_ms
from broker.store.sqlite import SqliteStore
from monitoring.logging import EventLog
from proto.aws.errors import AwsError

KEY = b"registry test key: 32 bytes long"
MINUTE_MS = 60_000


@contextlib.asynccontextmanager
async def open_registry(directory: Path, **options: Any) -> AsyncIterator[QueueRegistry]:
    store = SqliteStore(directory)
    await store.open()
    try:
        registry = QueueRegistry(
            store,
            Signer(KEY),
            region="eu-west-1",
            account_id="123456789012",
            log=EventLog("broker", level="debug", stream=io.StringIO()),
            **options,
        )
        await registry.load()
        yield registry
    finally:
        await store.aclose()


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[QueueRegistry]:
    async with open_registry(tmp_path) as opened:
        yield opened


async def send(
    registry: QueueRegistry, queue: Queue, body: str, now: int | None = None, **fields: Any
) -> str:
    outcome = queue.index.send(now or now_ms(), SendRequest(body=body, **fields))
    await registry.store.commit(outcome.mutations, outcome.on_durable)
    result = outcome.results[0]
    assert not isinstance(result, SqsError)
    return result.message_id


async def receive(registry: QueueRegistry, queue: Queue, now: int | None = None) -> list[int]:
    outcome = queue.index.receive(now or now_ms(), max_messages=10)
    await registry.store.commit(outcome.mutations, outcome.on_durable)
    return [delivery.seq for delivery in outcome.deliveries]


# ---------------------------------------------------------------------- queues


async def test_create_get_and_arn(registry: QueueRegistry):
    queue = await registry.create("orders", {"VisibilityTimeout": "5"}, {"team": "a"})
    assert queue.arn == "arn:aws:sqs:eu-west-1:123456789012:orders"
    assert registry.get("orders") is queue
    assert registry.require("orders") is queue
    assert registry.by_arn(queue.arn) is queue
    assert registry.by_arn("arn:aws:sqs:us-east-1:123456789012:orders") is None
    assert registry.get("absent") is None
    with pytest.raises(AwsError) as excinfo:
        registry.require("absent")
    assert excinfo.value.code == "AWS.SimpleQueueService.NonExistentQueue"
    assert list(registry) == [queue]
    assert len(registry) == 1


async def test_create_is_idempotent_only_for_equal_attributes(registry: QueueRegistry):
    queue = await registry.create("q", {"DelaySeconds": "3"}, {})
    assert await registry.create("q", {"DelaySeconds": "3"}, {}) is queue
    assert await registry.create("q", {}, {}) is queue
    with pytest.raises(SqsError) as excinfo:
        await registry.create("q", {"DelaySeconds": "4"}, {})
    assert excinfo.value.code == "QueueAlreadyExists"


async def test_concurrent_creates_of_one_name_make_one_queue(registry: QueueRegistry):
    made: list[Queue] = []

    async def create() -> None:
        made.append(await registry.create("raced", {}, {}))

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(create)
    assert len({id(q) for q in made}) == 1
    assert len(registry) == 1


async def test_concurrent_changes_of_one_queue_all_hold(tmp_path: Path):
    """SetQueueAttributes and tag changes at once: each applies to what the one before it
    left (as SNS topics, where a report-only hunt found the last writer undoing the rest)."""
    async with open_registry(tmp_path) as registry:
        queue = await registry.create("q", {}, {})
        async with trio.open_nursery() as nursery:
            for name, value in (("VisibilityTimeout", "45"), ("DelaySeconds", "7"),
                                ("MaximumMessageSize", "2048")):  # fmt: skip
                nursery.start_soon(registry.set_attributes, queue, {name: value})
            for key in ("team", "env"):
                nursery.start_soon(
                    registry.update_tags, queue, lambda tags, k=key: {**tags, k: "x"}
                )
    async with open_registry(tmp_path) as registry:
        settings = registry.require("q").settings
        assert (settings.visibility_timeout, settings.delay_seconds) == (45, 7)
        assert settings.maximum_message_size == 2048
        assert registry.require("q").record.tags == {"team": "x", "env": "x"}


async def test_queues_settings_and_tags_survive_a_restart(tmp_path: Path):
    async with open_registry(tmp_path) as registry:
        queue = await registry.create("kept.fifo", {"FifoQueue": "true"}, {"env": "test"})
        await registry.set_attributes(queue, {"ContentBasedDeduplication": "true"})
        await registry.set_tags(queue, {"env": "prod"})
        await send(registry, queue, "durable", group_id="g")
        doomed = await registry.create("doomed", {}, {})
        await registry.delete(doomed)
    async with open_registry(tmp_path) as registry:
        assert [q.name for q in registry] == ["kept.fifo"]
        queue = registry.require("kept.fifo")
        assert queue.settings.fifo
        assert queue.settings.content_based_deduplication
        assert queue.record.tags == {"env": "prod"}
        assert queue.counts(now_ms()).visible == 1
        assert queue.record.modified_at >= queue.record.created_at


async def test_set_attributes_validates_and_wakes(registry: QueueRegistry):
    queue = await registry.create("q", {}, {})
    changed = queue.changed()
    await registry.set_attributes(queue, {"ReceiveMessageWaitTimeSeconds": "0"})
    assert changed.is_set()
    with pytest.raises(SqsError) as excinfo:
        await registry.set_attributes(queue, {"VisibilityTimeout": "-1"})
    assert excinfo.value.code == "InvalidAttributeValue"


async def test_dead_letter_targets(registry: QueueRegistry):
    dlq = await registry.create("dlq", {}, {})
    source = await registry.create(
        "source",
        {"RedrivePolicy": f'{{"deadLetterTargetArn":"{dlq.arn}","maxReceiveCount":3}}'},
        {},
    )
    assert registry.dead_letter_index(source) is dlq.index
    assert registry.dead_letter_index(dlq) is None
    with pytest.raises(SqsError) as excinfo:
        await registry.create(
            "orphan",
            {
                "RedrivePolicy": '{"deadLetterTargetArn":"arn:aws:sqs:eu-west-1:123456789012:nope",'
                '"maxReceiveCount":3}'
            },
            {},
        )
    assert excinfo.value.code == "InvalidParameterValue"
    # A source whose dead-letter queue was deleted keeps working, without redrive.
    await registry.delete(dlq)
    assert registry.dead_letter_index(source) is None


async def test_delete_wakes_long_polls_and_is_idempotent(registry: QueueRegistry):
    queue = await registry.create("q", {}, {})
    changed = queue.changed()
    await registry.delete(queue)
    assert changed.is_set()
    assert queue.deleted
    assert registry.get("q") is None
    await registry.delete(queue)  # a second delete of the same queue does nothing
    registry.clock = lambda: now_ms() + MINUTE_MS  # past AWS's 60 s before a name is reused
    again = await registry.create("q", {}, {})
    assert again is not queue


async def test_a_deleted_name_is_refused_for_60_seconds(tmp_path: Path):
    clock = [1_700_000_000_000]
    async with open_registry(tmp_path, clock=lambda: clock[0]) as registry:
        queue = await registry.create("reused", {}, {})
        await registry.delete(queue)
        clock[0] += MINUTE_MS - 1
        with pytest.raises(SqsError) as excinfo:
            await registry.create("reused", {}, {})
        assert excinfo.value.code == "AWS.SimpleQueueService.QueueDeletedRecently"
        assert registry.get("reused") is None
        await registry.create("another", {}, {})  # other names are free
        clock[0] += 1
        again = await registry.create("reused", {"VisibilityTimeout": "5"}, {})
        assert again.settings.visibility_timeout == 5


async def test_a_deleted_name_stays_refused_across_a_restart(tmp_path: Path):
    clock = [1_700_000_000_000]
    async with open_registry(tmp_path, clock=lambda: clock[0]) as registry:
        old = await registry.create("old", {}, {})
        await registry.delete(old)
        clock[0] += 30_000
        recent = await registry.create("recent", {}, {})
        await registry.delete(recent)
        clock[0] += 40_000  # "old" was deleted 70 s ago, "recent" 40 s ago
    async with open_registry(tmp_path, clock=lambda: clock[0]) as registry:
        with pytest.raises(SqsError) as excinfo:
            await registry.create("recent", {}, {})
        assert excinfo.value.code == "AWS.SimpleQueueService.QueueDeletedRecently"
        await registry.create("old", {}, {})
        clock[0] += 20_000
        await registry.create("recent", {}, {})


async def test_a_declared_queue_is_created_within_the_60_seconds(tmp_path: Path):
    clock = [1_700_000_000_000]
    output = io.StringIO()
    async with open_registry(tmp_path, clock=lambda: clock[0]) as registry:
        registry.log = EventLog("broker", level="debug", stream=output)
        await registry.delete(await registry.create("declared", {}, {}))
        clock[0] += 1_000
        with pytest.raises(SqsError):  # CreateQueue through the API still waits
            await registry.create("declared", {}, {})
        queue = await registry.create("declared", {"DelaySeconds": "2"}, {}, declared=True)
        assert registry.get("declared") is queue
        assert queue.settings.delay_seconds == 2
    assert "event=queue.recreated" in output.getvalue()
    assert "queue=declared" in output.getvalue()


async def test_the_in_flight_limit_reaches_every_queue(tmp_path: Path):
    async with open_registry(tmp_path, in_flight_limit=2) as registry:
        queue = await registry.create("few", {}, {})
        for body in "abc":
            await send(registry, queue, body)
        assert len(await receive(registry, queue)) == 2
    async with open_registry(tmp_path, in_flight_limit=2) as registry:  # loaded queues too
        queue = registry.require("few")
        assert queue.counts(now_ms()).in_flight == 2
        assert await receive(registry, queue) == []


# ---------------------------------------------------------------------- wake-ups


async def test_a_durable_send_wakes_waiting_receives(registry: QueueRegistry):
    queue = await registry.create("q", {}, {})
    changed = queue.changed()
    assert not changed.is_set()
    outcome = queue.index.send(now_ms(), SendRequest(body="hello"))
    assert not changed.is_set()  # not before it is durable
    await registry.store.commit(outcome.mutations, outcome.on_durable)
    assert changed.is_set()
    assert queue.changed() is not changed  # the next wait gets a fresh event


async def test_a_wake_nobody_waits_for_keeps_the_event_and_one_taken_is_set(
    registry: QueueRegistry,
):
    queue = await registry.create("q", {}, {})
    first = queue.changed()
    queue.wake()
    assert first.is_set()
    untaken = queue._changed
    queue.wake()  # nobody took the new event: nothing to set, nothing to replace
    assert queue._changed is untaken
    assert not untaken.is_set()
    taken = queue.changed()
    assert taken is untaken  # a receive that looks now sees what the wakes announced
    queue.wake()
    assert taken.is_set()
    assert queue.changed() is not taken


async def test_stop_waiting_wakes_every_queue(registry: QueueRegistry):
    events = [(await registry.create(name, {}, {})).changed() for name in ("a", "b")]
    registry.stop_waiting()
    assert registry.stopping
    assert all(event.is_set() for event in events)


# ---------------------------------------------------------------------- expiry


async def test_retention_removes_old_messages_durably(tmp_path: Path):
    async with open_registry(tmp_path) as registry:
        queue = await registry.create("short", {"MessageRetentionPeriod": "60"}, {})
        keep = await registry.create("long", {}, {})
        now = now_ms()
        for i in range(3):
            await send(registry, queue, f"old {i}", now)
            await send(registry, keep, f"kept {i}", now)
        await registry.expire(now + 59_000)
        assert queue.counts(now + 59_000).visible == 3
        await registry.expire(now + 61_000)
        assert queue.counts(now + 61_000).visible == 0
        assert keep.counts(now + 61_000).visible == 3
        assert await receive(registry, queue, now + 61_000) == []
    # The deletions were committed: a restart does not bring the messages back.
    async with open_registry(tmp_path) as registry:
        assert registry.require("short").counts(now_ms()).visible == 0
        assert registry.require("long").counts(now_ms()).visible == 3


async def test_messages_whose_retention_ended_while_stopped_are_gone_at_the_start(
    tmp_path: Path,
):
    async with open_registry(tmp_path) as registry:
        queue = await registry.create("short", {"MessageRetentionPeriod": "60"}, {})
        sent_at = now_ms() - 61_000  # as if the broker had been stopped for the last 61 s
        for i in range(3):
            await send(registry, queue, f"old {i}", sent_at)
        await send(registry, queue, "young")
    async with open_registry(tmp_path) as registry:
        # Counted neither in ApproximateNumberOfMessages nor in the oldest message's age
        # before the first retention pass, a second after the start.
        queue = registry.require("short")
        assert queue.counts(now_ms()).visible == 1
        oldest = queue.index.oldest_enqueued_at(now_ms())
        assert oldest is not None
        assert oldest > sent_at


async def rows_of(registry: QueueRegistry, queue: Queue, *seqs: int) -> list[str]:
    return [m.body for m in await registry.store.read_messages(queue.record.queue_id, list(seqs))]


@pytest.mark.parametrize("fifo", [False, True], ids=["standard", "fifo"])
async def test_retention_removes_received_and_dead_lettered_messages_durably(
    tmp_path: Path, fifo: bool
):
    """In flight, visible again, moved in: the sweep deletes their rows, no receive needed."""
    suffix = ".fifo" if fifo else ""
    kind = {"FifoQueue": "true", "ContentBasedDeduplication": "true"} if fifo else {}
    async with open_registry(tmp_path) as registry:
        short = await registry.create(
            f"short{suffix}", {**kind, "MessageRetentionPeriod": "60"}, {}
        )
        dlq = await registry.create(f"dlq{suffix}", {**kind, "MessageRetentionPeriod": "60"}, {})
        policy = f'{{"deadLetterTargetArn":"{dlq.arn}","maxReceiveCount":1}}'
        source = await registry.create(f"source{suffix}", {**kind, "RedrivePolicy": policy}, {})
        now = now_ms()
        fields = {"group_id": "g"} if fifo else {}
        for body in ("in-flight", "returned"):
            await send(registry, short, body, now, **({"group_id": body} if fifo else {}))
        await send(registry, source, "poison", now, **fields)
        outcome = short.index.receive(now, visibility_timeout=600)
        await registry.store.commit(outcome.mutations, outcome.on_durable)
        outcome = short.index.receive(now, visibility_timeout=0)
        await registry.store.commit(outcome.mutations, outcome.on_durable)
        for _ in range(2):  # the second receive moves it
            outcome = source.index.receive(now, visibility_timeout=0, dead_letter=dlq.index)
            await registry.store.commit(outcome.mutations, outcome.on_durable)
        assert short.counts(now) == (1, 1, 0)
        assert dlq.counts(now) == (1, 0, 0)
        await registry.expire(now + 61_000)
        assert short.counts(now + 61_000) == (0, 0, 0)
        assert dlq.counts(now + 61_000) == (0, 0, 0)
        assert await rows_of(registry, short, 1, 2) == []
        assert await rows_of(registry, dlq, 1) == []
    async with open_registry(tmp_path) as registry:
        assert registry.require(f"short{suffix}").counts(now_ms()) == (0, 0, 0)
        assert registry.require(f"dlq{suffix}").counts(now_ms()) == (0, 0, 0)


@pytest.mark.parametrize("fifo", [False, True], ids=["standard", "fifo"])
async def test_retention_wakes_long_polls_when_it_makes_messages_receivable(
    tmp_path: Path, fifo: bool
):
    """An expired in-flight head unblocks its FIFO group; on a standard queue at its in-flight
    limit, an expired in-flight message makes room. A long poll waiting on either is woken
    by the sweep, as it is by a delete, rather than at the end of its WaitTimeSeconds."""
    suffix = ".fifo" if fifo else ""
    kind = {"FifoQueue": "true", "ContentBasedDeduplication": "true"} if fifo else {}
    fields = {"group_id": "A"} if fifo else {}
    async with open_registry(tmp_path, in_flight_limit=1) as registry:
        queue = await registry.create(
            f"swept{suffix}", {**kind, "MessageRetentionPeriod": "60"}, {}
        )
        now = now_ms()
        await send(registry, queue, "head", now, **fields)
        outcome = queue.index.receive(now, visibility_timeout=600)
        await registry.store.commit(outcome.mutations, outcome.on_durable)
        await send(registry, queue, "next", now + 30_000, **fields)
        assert await receive(registry, queue, now + 50_000) == []  # what a long poll sees
        changed = queue.changed()  # ... before it waits
        await registry.expire(now + 59_000)
        assert not changed.is_set()
        await registry.expire(now + 61_000)
        assert changed.is_set()
        assert await receive(registry, queue, now + 61_000) == [2]


@pytest.mark.parametrize(("initial", "changed"), [(60, 0), (0, 60)])
async def test_a_fifo_delay_change_moves_messages_already_sent_across_a_restart(
    tmp_path: Path, initial: int, changed: int
):
    """AWS: a FIFO queue's DelaySeconds is retroactive (a standard queue's is not)."""
    async with open_registry(tmp_path) as registry:
        fifo = await registry.create(
            "d.fifo",
            {
                "FifoQueue": "true",
                "ContentBasedDeduplication": "true",
                "DelaySeconds": str(initial),
            },
            {},
        )
        standard = await registry.create("d", {"DelaySeconds": str(initial)}, {})
        sent_at = now_ms()
        await send(registry, fifo, "m", sent_at, group_id="g")
        await send(registry, standard, "m", sent_at)
        await registry.set_attributes(fifo, {"DelaySeconds": str(changed)})
        await registry.set_attributes(standard, {"DelaySeconds": str(changed)})
        now = now_ms()
        assert fifo.counts(now).delayed == (1 if changed else 0)
        assert standard.counts(now).delayed == (1 if initial else 0)
    async with open_registry(tmp_path) as registry:
        fifo, standard = registry.require("d.fifo"), registry.require("d")
        now = now_ms()
        assert fifo.counts(now).delayed == (1 if changed else 0)
        assert standard.counts(now).delayed == (1 if initial else 0)
        if changed:
            assert fifo.index.next_wakeup(now) == sent_at + changed * 1_000
        else:
            assert await receive(registry, fifo, now) == [1]


async def test_a_fifo_message_moved_to_its_dead_letter_queue_takes_its_id_for_deduplication(
    registry: QueueRegistry,
):
    dlq = await registry.create("dlq.fifo", {"FifoQueue": "true"}, {})
    policy = f'{{"deadLetterTargetArn":"{dlq.arn}","maxReceiveCount":1}}'
    source = await registry.create(
        "source.fifo", {"FifoQueue": "true", "RedrivePolicy": policy}, {}
    )
    now = now_ms()
    ids = [
        await send(registry, source, body, now, group_id=body, deduplication_id=f"d-{body}")
        for body in ("a", "b")
    ]
    for _ in range(2):
        outcome = source.index.receive(
            now, max_messages=10, visibility_timeout=0, dead_letter=dlq.index
        )
        await registry.store.commit(outcome.mutations, outcome.on_durable)
    assert dlq.counts(now).visible == 2
    moved = await registry.store.read_messages(dlq.record.queue_id, [1, 2])
    assert [(m.message_id, m.deduplication_id) for m in moved] == [(i, i) for i in ids]


async def test_a_receive_does_not_return_expired_messages(registry: QueueRegistry):
    queue = await registry.create("short", {"MessageRetentionPeriod": "60"}, {})
    now = now_ms()
    await send(registry, queue, "old", now)
    await send(registry, queue, "young", now + 30_000)
    seqs = await receive(registry, queue, now + 61_000)
    messages = await registry.store.read_messages(queue.record.queue_id, seqs)
    assert [m.body for m in messages] == ["young"]


async def test_deduplication_window_ends_after_five_minutes(registry: QueueRegistry):
    queue = await registry.create("d.fifo", {"FifoQueue": "true"}, {})
    now = now_ms()
    first = await send(registry, queue, "a", now, group_id="g", deduplication_id="x")
    assert (
        await send(registry, queue, "b", now + 4 * MINUTE_MS, group_id="g", deduplication_id="x")
        == first
    )
    await registry.expire(now + 5 * MINUTE_MS + 1)
    later = await send(
        registry, queue, "c", now + 5 * MINUTE_MS + 1, group_id="g", deduplication_id="x"
    )
    assert later != first


async def test_expiry_at_the_start_is_one_commit_for_every_queue(tmp_path: Path):
    # Deduplication windows that ended while the broker was stopped, in many FIFO queues:
    # their rows go before the listener opens, in one fsync'd commit, not one per queue.
    async with open_registry(tmp_path) as registry:
        sent_at = now_ms() - 6 * MINUTE_MS
        for i in range(20):
            queue = await registry.create(f"q{i}.fifo", {"FifoQueue": "true"}, {})
            await send(registry, queue, "x", sent_at, group_id="g", deduplication_id="d")
    store = SqliteStore(tmp_path)
    await store.open()
    try:
        registry = QueueRegistry(
            store,
            Signer(KEY),
            region="eu-west-1",
            account_id="123456789012",
            log=EventLog("broker", level="debug", stream=io.StringIO()),
        )
        before = store.statistics().commits
        await registry.load()
        assert store.statistics().commits - before == 1
        # The windows ended: the same deduplication id is a new message again.
        queue = registry.require("q0.fifo")
        await send(registry, queue, "y", now_ms(), group_id="g", deduplication_id="d")
        assert queue.counts(now_ms()).visible == 2
    finally:
        await store.aclose()
    with contextlib.closing(sqlite3.connect(tmp_path / "wharf.sqlite3")) as db:
        # Only the new message's entry is left.
        assert db.execute("SELECT count(*) FROM deduplication").fetchone() == (1,)


def attempt_rows(directory: Path) -> int:
    with contextlib.closing(sqlite3.connect(directory / "wharf.sqlite3")) as db:
        count: int = db.execute("SELECT count(*) FROM receive_attempts").fetchone()[0]
        return count


async def receive_attempt(registry: QueueRegistry, queue: Queue, now: int, attempt: str) -> None:
    outcome = queue.index.receive(now, max_messages=10, attempt_id=attempt)
    await registry.store.commit(outcome.mutations, outcome.on_durable)
    assert outcome.deliveries


async def test_receive_attempts_go_from_the_store_after_their_5_minutes(tmp_path: Path):
    # A burst of attempts then silence: no later attempt of the queue prunes their rows, the
    # expiry pass does (they were read back and discarded at every start, for good).
    async with open_registry(tmp_path) as registry:
        queue = await registry.create("a.fifo", {"FifoQueue": "true"}, {})
        now = now_ms()
        for i in range(3):
            await send(registry, queue, f"m{i}", now, group_id=f"g{i}", deduplication_id=f"{i}")
            await receive_attempt(registry, queue, now + i, f"attempt-{i}")
        await registry.expire(now + 5 * MINUTE_MS + 1)
        assert attempt_rows(tmp_path) == 1  # the last one's 5 minutes are not over
        await registry.expire(now + 5 * MINUTE_MS + 2)
        assert attempt_rows(tmp_path) == 0
        # Attempts whose 5 minutes end while the broker is stopped go at the start.
        earlier = now_ms() - 6 * MINUTE_MS
        await send(registry, queue, "late", earlier, group_id="h", deduplication_id="late")
        await receive_attempt(registry, queue, earlier, "attempt-late")
        assert attempt_rows(tmp_path) == 1
    async with open_registry(tmp_path):
        assert attempt_rows(tmp_path) == 0


async def test_expire_skips_deleted_queues(registry: QueueRegistry):
    queue = await registry.create("q", {"MessageRetentionPeriod": "60"}, {})
    await send(registry, queue, "x")
    await registry.delete(queue)
    await registry.expire(now_ms() + 120_000)  # must not touch the deleted queue's rows


# ---------------------------------------------------------------------- the oldest message


@pytest.mark.parametrize("fifo", [False, True])
async def test_oldest_message_is_tracked_through_receives_and_deletes(
    registry: QueueRegistry, fifo: bool
):
    attributes = {"FifoQueue": "true", "ContentBasedDeduplication": "true"} if fifo else {}
    queue = await registry.create("aged.fifo" if fifo else "aged", attributes, {})
    index = queue.index
    start = now_ms()
    assert index.oldest_enqueued_at(start) is None
    group = {"group_id": "g"} if fifo else {}
    for offset in (0, 2_000, 4_000):
        await send(registry, queue, f"sent at {offset}", start + offset, **group)
    assert index.oldest_enqueued_at(start + 5_000) == start
    # In flight still counts: the message is not deleted.
    outcome = index.receive(start + 5_000, visibility_timeout=60)
    await registry.store.commit(outcome.mutations, outcome.on_durable)
    (delivery,) = outcome.deliveries
    assert index.oldest_enqueued_at(start + 5_000) == start
    change = index.delete(start + 6_000, delivery.receipt_handle)
    await registry.store.commit(change.mutations, change.on_durable)
    assert index.oldest_enqueued_at(start + 6_000) == start + 2_000
