"""The SQLite store as a whole: commits in call order, cancellation, closing, kill -9."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio
import trio.lowlevel

from broker.model import new_index
from broker.model.messages import SendRequest
from broker.model.settings import QueueSettings
from broker.model.signing import Signer
from broker.model.topics import TopicSettings
from broker.store.base import StoreError
from broker.store.sqlite import SqliteStore
from tests.support.mutations import inserted

REPO = Path(__file__).resolve().parents[3]
CRASH_CHILD = REPO / "tests" / "support" / "store_crash_child.py"


async def test_commits_land_in_call_order(store):
    queue = await store.create_queue("q", QueueSettings(), {}, 0)
    order: list[int] = []
    async with trio.open_nursery() as nursery:
        for seq in range(1, 50):
            nursery.start_soon(
                store.commit, [inserted(queue.queue_id, seq)], lambda seq=seq: order.append(seq)
            )
            await trio.lowlevel.checkpoint()
    assert order == sorted(order)


async def test_a_cancelled_caller_still_gets_its_batch_committed(store):
    queue = await store.create_queue("q", QueueSettings(), {}, 0)
    durable = trio.Event()
    with trio.CancelScope() as scope:
        scope.cancel()  # cancelled before it even waits
        await store.commit([inserted(queue.queue_id, 1)], durable.set)
    with trio.fail_after(5):
        await durable.wait()
    await store.commit([inserted(queue.queue_id, 2)])
    assert len(await store.read_messages(queue.queue_id, [1, 2])) == 2


async def test_closing_flushes_queued_commits(tmp_path):
    store = SqliteStore(tmp_path)
    await store.open()
    queue = await store.create_queue("q", QueueSettings(), {}, 0)
    async with trio.open_nursery() as nursery:
        for seq in range(1, 20):
            nursery.start_soon(store.commit, [inserted(queue.queue_id, seq)])
        await trio.lowlevel.checkpoint()
        nursery.start_soon(store.aclose)
    reopened = SqliteStore(tmp_path)
    await reopened.open()
    (loaded,) = await reopened.load()
    assert len(loaded.messages) == 19
    await reopened.aclose()
    with pytest.raises(StoreError, match="not open"):
        await store.commit([])


async def test_commit_later_keeps_call_order_with_commits(store):
    queue = await store.create_queue("q", QueueSettings(), {}, 0)
    order: list[int] = []
    store.commit_later([inserted(queue.queue_id, 1)], lambda: order.append(1))
    await store.commit([inserted(queue.queue_id, 2)], lambda: order.append(2))
    assert order == [1, 2]  # durable no later than the commit queued after it
    assert len(await store.read_messages(queue.queue_id, [1, 2])) == 2


def run_child_until_killed(data_dir: Path) -> dict[int, dict[int, tuple[int, str]]]:
    """Start the crash child, read 400 acknowledgements, SIGKILL it mid-stream.

    Returns:
        group -> number -> (seq, message id) of every acknowledged send.
    """
    acknowledged: dict[int, dict[int, tuple[int, str]]] = {}

    def note(line: str) -> None:
        group, number, seq, message_id = line.split()
        acknowledged.setdefault(int(group), {})[int(number)] = (int(seq), message_id)

    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    with subprocess.Popen(
        # -P: tests/support (the script's directory) has broker.py and http.py, which must not
        # shadow the broker package and the standard library's http.
        [sys.executable, "-P", str(CRASH_CHILD), str(data_dir)],
        stdout=subprocess.PIPE,
        env=environment,
        text=True,
    ) as child:
        assert child.stdout is not None
        deadline = time.monotonic() + 60
        count = 0
        while count < 400 and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            note(line)
            count += 1
        child.send_signal(signal.SIGKILL)
        # Lines written before the kill were acknowledged too.
        for line in child.stdout:
            if line.endswith("\n"):
                note(line)
    return acknowledged


@pytest.mark.slow
async def test_nothing_acknowledged_is_lost_on_sigkill(tmp_path):
    """A child sends to a FIFO queue from 8 tasks and prints each acknowledged send; we
    kill it with SIGKILL mid-stream. Every acknowledged message must be there after a
    restart, each group in send order, with its deduplication id still remembered."""
    acknowledged = await trio.to_thread.run_sync(run_child_until_killed, tmp_path)
    assert sum(map(len, acknowledged.values())) >= 400, "the child did not get going"

    store = SqliteStore(tmp_path)
    await store.open()
    (loaded,) = await store.load()
    index = new_index(
        queue_id=loaded.record.queue_id,
        name=loaded.record.name,
        arn="arn:aws:sqs:us-east-1:000000000000:crash.fifo",
        settings=loaded.record.settings,
        signer=Signer(b"crash test key, 32 bytes long..."),
        next_seq=loaded.record.next_seq,
    )
    now = int(time.time() * 1000)
    index.restore(loaded.messages, now)
    for entry in loaded.deduplication:
        index.restore_deduplication(entry.key, entry.seq, entry.expires_at)

    stored_seqs = set(loaded.messages.seq)
    for group, sends in acknowledged.items():
        for number, (seq, _) in sends.items():
            assert seq in stored_seqs, f"acknowledged send {group}:{number} was lost"

    received: dict[int, list[int]] = {}
    while True:
        outcome = index.receive(now, max_messages=10)
        if not outcome.deliveries:
            break
        messages = await store.read_messages(
            loaded.record.queue_id, [d.seq for d in outcome.deliveries]
        )
        for message in messages:
            group, number = map(int, message.body.split(":"))
            received.setdefault(group, []).append(number)
        for delivery in outcome.deliveries:
            index.delete(now, delivery.receipt_handle)
    for group, sends in acknowledged.items():
        numbers = received[group]
        assert numbers == sorted(numbers), f"group {group} out of order"
        assert set(sends) <= set(numbers)

    group, sends = next(iter(acknowledged.items()))
    number, (seq, message_id) = next(iter(sends.items()))
    duplicate = index.send(
        now,
        SendRequest(body="again", group_id=f"g{group}", deduplication_id=f"{group}-{number}"),
    )
    assert duplicate.results[0].duplicate
    assert duplicate.results[0].message_id == message_id
    await store.aclose()


async def test_holds_queues_or_topics_ignores_deleted_queues(store):
    assert not await store.holds_queues_or_topics()
    queue = await store.create_queue("q", QueueSettings(), {}, 0)
    assert await store.holds_queues_or_topics()
    await store.delete_queue(queue.queue_id, deleted_at=1, forget_before=0)
    assert not await store.holds_queues_or_topics()  # its rows may still wait to be reclaimed
    topic = await store.create_topic("t", TopicSettings(), {}, 2)
    assert await store.holds_queues_or_topics()
    await store.delete_topic(topic.topic_id)
    assert not await store.holds_queues_or_topics()
