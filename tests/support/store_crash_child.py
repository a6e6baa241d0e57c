"""Child process for the store crash test: send forever, print every acknowledged send.

Usage: python store_crash_child.py DATA_DIR

Each of several trio tasks sends to its own message group of one FIFO queue, one message at
a time, and prints ``group number seq message_id`` only after ``Store.commit`` returned.
The parent kills this process with SIGKILL at a random moment.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import trio

from broker.model import new_index
from broker.model.messages import SendRequest
from broker.model.settings import QueueSettings
from broker.store.sqlite import SqliteStore

QUEUE = "crash.fifo"
ARN = f"arn:aws:sqs:us-east-1:000000000000:{QUEUE}"
KEY = b"crash test key, 32 bytes long..."
SENDERS = 8


async def main(data_dir: Path) -> None:
    from broker.model.signing import Signer

    store = SqliteStore(data_dir)
    await store.open()
    record = await store.create_queue(QUEUE, QueueSettings(fifo=True), {}, int(time.time() * 1000))
    index = new_index(
        queue_id=record.queue_id, name=QUEUE, arn=ARN, settings=record.settings, signer=Signer(KEY)
    )

    async def sender(group: int) -> None:
        number = 0
        while True:
            now = int(time.time() * 1000)
            request = SendRequest(
                body=f"{group}:{number}", group_id=f"g{group}", deduplication_id=f"{group}-{number}"
            )
            outcome = index.send(now, request)
            await store.commit(outcome.mutations, outcome.on_durable)
            sent = outcome.results[0]
            assert not isinstance(sent, Exception)
            print(group, number, sent.seq, sent.message_id, flush=True)
            number += 1

    async with trio.open_nursery() as nursery:
        for group in range(SENDERS):
            nursery.start_soon(sender, group)


if __name__ == "__main__":
    trio.run(main, Path(sys.argv[1]))
