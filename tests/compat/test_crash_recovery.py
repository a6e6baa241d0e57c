"""Random programs of SQS calls with SIGKILLs between them: what was acknowledged survives.

Hypothesis draws a program: segments of steps, each ended by a SIGKILL of the broker and a
restart on the same data directory, then a tail of steps and a final drain. The steps are
boto3 calls against a real broker subprocess (tests.support.crash_harness) on a standard and a
FIFO queue, both with a 1 s visibility timeout: SendMessage and SendMessageBatch (unique
bodies, sometimes with message attributes, sometimes delayed), resends of an acknowledged
deduplication id, ReceiveMessage, DeleteMessage(Batch) and ChangeMessageVisibility of the
receipt handles received, and full drains. A kill may come while background clients are busy:
sending, sending the same deduplication ids from two clients at once, or deleting the same
messages from two clients at once; what they were not answered may or may not have happened.

A model of what the broker acknowledged is checked at every delivery, after every restart and
at the end:

- every acknowledged send whose delete was not acknowledged is delivered again, with the
  MessageId, body, attributes and digests it was sent with; no message whose delete was
  acknowledged comes back, nothing that was never sent appears;
- FIFO: a group's messages come in send order (an unacknowledged send may be missing, not
  late), nothing of a group while another of its messages is surely in flight, and a resend
  of an acknowledged deduplication id answers the original MessageId and adds nothing;
- visibility: nothing is delivered before an acknowledged visibility timeout or delay has
  passed (a standard queue's first receive is written behind, so only until a kill, see
  ``_receive_waits`` in broker/sqs.py); a message hidden for a minute by ChangeMessageVisibility
  is still in flight at the end, however many restarts came between;
- after a restart the queues hold exactly the messages the model says (give or take the
  unanswered sends and deletes), and after the final drain none.

Times are compared with the system clock (``time.time``: the broker's clock is exactly it
while it does not step, ``broker/clock.py``) and only one way: a delivery
answered before the earliest moment its deadline can have fallen on broke it; a slow machine
makes the checks weaker, never wrong. ``HYPOTHESIS_PROFILE=deep`` runs twelve times as many
examples. A kill's timing is not part of the example, so a failure may not come back when
hypothesis replays it (it then reports a FlakyFailure with the first one): the steps the
failing run took and what it saw are attached to the exception.
"""

from __future__ import annotations

import functools
import os
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import botocore.exceptions
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.broker import sqs_client
from tests.support.crash_harness import (
    Worker,
    resend_deduplicated,
    run_with_kills,
    stop_workers,
)
from tests.support.digests import expected_attributes_md5, md5_hex

pytestmark = pytest.mark.slow

# Each example starts a broker process per segment (2 s an example, typically): 15 keep the
# default run near half a minute; HYPOTHESIS_PROFILE=deep runs twelve times as many.
EXAMPLES = 15 * (12 if os.environ.get("HYPOTHESIS_PROFILE") == "deep" else 1)
GROUPS = 3  # FIFO message groups g0..g2
QUEUE_VISIBILITY = 1  # seconds, both queues: in-flight messages come back quickly to the drains
HIDE_SECONDS = 60  # a visibility change meant to outlast the example's restarts
LONG_HIDE = 10  # seconds left on a promise that a drain does not wait for
DRAIN_VISIBILITY = 10  # seconds: a drain's deletes come well within it
DRAIN_SECONDS = 30
WARM_UP_SECONDS = 30
SLACK = 0.1  # seconds: the broker's clock is in whole milliseconds
DEDUPLICATION_SECONDS = 290  # resend only well within AWS's 5-minute window
DELETE_RACE_MESSAGES = 30

Queue = Literal["standard", "fifo"]
QUEUES: tuple[Queue, ...] = ("standard", "fifo")
Background = Literal["standard", "fifo", "fifo-duplicates", "delete-races"]
BACKGROUNDS: tuple[Background, ...] = ("standard", "fifo", "fifo-duplicates", "delete-races")


# ---------------------------------------------------------------------- the program


@dataclass(frozen=True)
class Send:
    queue: Queue
    batch: bool  # SendMessageBatch, else SendMessage (one message)
    groups: tuple[int, ...]  # one per message; FIFO only, standard sends have zeros
    attributes: bool
    delay: int  # DelaySeconds; standard only


@dataclass(frozen=True)
class Resend:
    pick: int  # which acknowledged FIFO message's deduplication id, modulo their number


@dataclass(frozen=True)
class Receive:
    queue: Queue
    max_messages: int
    visibility: int | None  # None: the queue's


@dataclass(frozen=True)
class Delete:
    queue: Queue
    picks: tuple[int, ...]  # which held receipt handles, modulo their number
    batch: bool


@dataclass(frozen=True)
class ChangeVisibility:
    queue: Queue
    pick: int
    timeout: int


@dataclass(frozen=True)
class Drain:
    pass


Step = Send | Resend | Receive | Delete | ChangeVisibility | Drain


@dataclass(frozen=True)
class Kill:
    background: tuple[Background, ...]  # clients busy when the SIGKILL comes
    acknowledged: int  # answers each of them gets before it


@dataclass(frozen=True)
class Segment:
    steps: tuple[Step, ...]
    kill: Kill


queues = st.sampled_from(QUEUES)


@st.composite
def sends(draw: st.DrawFn) -> Send:
    queue = draw(queues)
    batch = draw(st.booleans())
    count = draw(st.integers(1, 10)) if batch else 1
    if queue == "fifo":
        groups = tuple(draw(st.lists(st.integers(0, GROUPS - 1), min_size=count, max_size=count)))
        delay = 0  # FIFO queues take no per-message delay
    else:
        groups = (0,) * count
        delay = draw(st.sampled_from((0, 1, 2)))
    return Send(queue, batch, groups, draw(st.booleans()), delay)


steps: st.SearchStrategy[Step] = st.one_of(
    sends(),
    st.builds(Receive, queues, st.integers(1, 10), st.sampled_from((None, 0, 1, 3))),
    st.builds(Resend, st.integers(0, 100)),
    st.builds(
        Delete,
        queues,
        st.lists(st.integers(0, 100), min_size=1, max_size=10).map(tuple),
        st.booleans(),
    ),
    st.builds(ChangeVisibility, queues, st.integers(0, 100), st.sampled_from((0, 1, HIDE_SECONDS))),
    sends(),
    st.builds(Receive, queues, st.integers(1, 10), st.sampled_from((None, 0, 1, 3))),
    st.just(Drain()),
)
kills = st.builds(
    Kill,
    st.lists(st.sampled_from(BACKGROUNDS), unique=True, max_size=3).map(tuple),
    st.integers(0, 5),
)
segments = st.builds(Segment, st.lists(steps, max_size=12).map(tuple), kills)


# ---------------------------------------------------------------------- the model


@dataclass(eq=False)
class Message:
    body: str
    queue: Queue
    sent_at: float  # when its send began
    group: str | None = None
    dedup: str | None = None
    attributes: dict[str, dict[str, Any]] = field(default_factory=dict)
    message_id: str | None = None
    sequence_number: str | None = None
    certain: bool = False  # its send was acknowledged, or it was delivered: the broker has it
    deleted: bool = False  # a delete of it was acknowledged
    maybe_deleted: bool = False  # a delete of it was cut off by a kill
    absent: bool = False  # an unacknowledged send the broker showed it does not have
    handle: str | None = None  # of its latest receive
    hidden_until: float = 0.0  # not to be delivered before (time.time())
    hide_durable: bool = True  # whether that promise outlives a kill
    # When its latest hide surely ends (time.time()), kept across kills: a hide that need not
    # outlive a kill may still have been written, and then keeps a message the test is not
    # sure of (an unacknowledged send, a delete a kill cut off) in flight after a restart.
    hide_ends_by: float = 0.0


class Model:
    """What the broker acknowledged. Background clients change it under ``lock``; everything
    else runs while they are stopped."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.messages: dict[str, Message] = {}  # by body
        self.order: dict[Queue, list[Message]] = {"standard": [], "fifo": []}
        self.phantoms: set[str] = set()  # bodies of duplicates that must never be delivered
        self.urls: dict[Queue, str] = {}
        self.trace: list[str] = []
        self._count = 0

    def new_message(
        self, queue: Queue, group: str | None = None, *, attributes: bool = False
    ) -> Message:
        with self.lock:
            self._count += 1
            n = self._count
            message = Message(
                # Unique, and not all ASCII: the body must come back exactly.
                body=f"{queue} {n} ✓",
                queue=queue,
                sent_at=time.time(),
                group=group,
                dedup=f"d{n}" if queue == "fifo" else None,
                attributes=attributes_of(n) if attributes else {},
            )
            self.messages[message.body] = message
            self.order[queue].append(message)
            return message

    def phantom(self) -> str:
        with self.lock:
            self._count += 1
            body = f"duplicate {self._count}"
            self.phantoms.add(body)
            return body

    def acknowledged(self, message: Message, answer: dict[str, Any]) -> None:
        """Record a send's answer (from either client, for a deduplication id sent by two)."""
        assert answer["MD5OfMessageBody"] == md5_hex(message.body.encode()), answer
        if message.attributes:
            assert answer["MD5OfMessageAttributes"] == expected_attributes_md5(
                message.attributes
            ), answer
        with self.lock:
            if message.message_id is not None:
                assert answer["MessageId"] == message.message_id, (message.body, answer)
            message.message_id = answer["MessageId"]
            if message.queue == "fifo":
                if message.sequence_number is not None:
                    assert answer["SequenceNumber"] == message.sequence_number, answer
                message.sequence_number = answer["SequenceNumber"]
            message.certain = True

    def present(self, queue: Queue) -> tuple[int, int]:
        """How many messages the queue surely holds, and how many more it may hold."""
        live = [m for m in self.order[queue] if not m.deleted and not m.absent]
        surely = sum(m.certain and not m.maybe_deleted for m in live)
        return surely, len(live) - surely

    def killed(self) -> None:
        for message in self.messages.values():
            if not message.hide_durable:
                message.hidden_until = 0.0

    def note(self, line: str) -> None:
        self.trace.append(line)


def attributes_of(n: int) -> dict[str, dict[str, Any]]:
    return {
        "index": {"DataType": "Number", "StringValue": str(n)},
        "tag": {"DataType": "String.custom", "StringValue": f"t{n} é"},
        "raw": {"DataType": "Binary", "BinaryValue": n.to_bytes(4, "big") + b"\x00\xff"},
    }


def error_code(error: botocore.exceptions.ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def in_force(message: Message, at: float) -> bool:
    """Whether the broker surely still keeps ``message`` from being delivered at ``at``."""
    return at < message.hidden_until - SLACK


# ---------------------------------------------------------------------- one broker run


class Runner:
    """The program's steps against one broker run (blocking calls: run in a worker thread)."""

    def __init__(self, model: Model, endpoint: str) -> None:
        self.model = model
        self.endpoint = endpoint
        self.client = sqs_client(endpoint, read_timeout=20)

    def close(self) -> None:
        self.client.close()

    def begin(self, run: int) -> None:
        if run == 1:
            self.create_queues()
        else:
            self.restarted()

    def busy(self, kill: Kill, run: int) -> Busy:
        return Busy(self, kill, run)

    def killed(self) -> None:
        self.model.killed()

    # ---- set-up and checks after a restart

    def create_queues(self) -> None:
        visibility = str(QUEUE_VISIBILITY)
        self.model.urls["standard"] = self.client.create_queue(
            QueueName="crash", Attributes={"VisibilityTimeout": visibility}
        )["QueueUrl"]
        self.model.urls["fifo"] = self.client.create_queue(
            QueueName="crash.fifo",
            Attributes={"VisibilityTimeout": visibility, "FifoQueue": "true"},
        )["QueueUrl"]

    def restarted(self) -> None:
        names: dict[Queue, str] = {"standard": "crash", "fifo": "crash.fifo"}
        for queue, name in names.items():
            url = self.client.get_queue_url(QueueName=name)["QueueUrl"]
            # The same queue, on the new run's port.
            assert urlsplit(url).path == urlsplit(self.model.urls[queue]).path, url
            self.model.urls[queue] = url
        for queue in QUEUES:
            counts = self.counts(queue)
            total = sum(int(value) for value in counts.values())
            surely, maybe = self.model.present(queue)
            self.model.note(f"restarted: {queue} holds {total} ({surely} + up to {maybe})")
            if not surely <= total <= surely + maybe:
                self.drain(final=False)  # names the message, if a delivery shows which
            assert surely <= total <= surely + maybe, (queue, counts, surely, maybe)
        # The deduplication ids closest to the kill are the likeliest to have been lost.
        self.resend(self.resendable()[-10:])

    # ---- steps

    def run(self, step: Step) -> None:
        match step:
            case Send():
                self.send(step)
            case Resend(pick):
                candidates = self.resendable()
                if candidates:
                    self.resend([candidates[pick % len(candidates)]])
            case Receive(queue, max_messages, visibility):
                self.receive(queue, max_messages=max_messages, visibility=visibility, wait=0)
            case Delete(queue, picks, batch):
                held = self.held(queue)
                if held:
                    chosen = list(dict.fromkeys(held[p % len(held)] for p in picks))
                    self.delete(queue, chosen, batch=batch)
            case ChangeVisibility(queue, pick, timeout):
                held = self.held(queue)
                if held:
                    self.change_visibility(held[pick % len(held)], timeout)
            case Drain():
                self.drain(final=False)

    def resendable(self) -> list[Message]:
        """FIFO messages whose deduplication id the broker surely still knows."""
        since = time.time() - DEDUPLICATION_SECONDS
        return [m for m in self.model.order["fifo"] if m.certain and m.sent_at > since]

    def held(self, queue: Queue) -> list[Message]:
        return [m for m in self.model.order[queue] if m.handle is not None and not m.deleted]

    def send(self, step: Send) -> None:
        fifo = step.queue == "fifo"
        messages = [
            self.model.new_message(
                step.queue, f"g{group}" if fifo else None, attributes=step.attributes
            )
            for group in step.groups
        ]
        entries = [send_params(m, step.delay) for m in messages]
        url = self.model.urls[step.queue]
        started = time.time()
        if step.batch:
            answer = self.client.send_message_batch(
                QueueUrl=url, Entries=[{"Id": str(n), **e} for n, e in enumerate(entries)]
            )
            assert not answer.get("Failed"), answer
            answers = {int(entry["Id"]): entry for entry in answer["Successful"]}
        else:
            answers = {0: self.client.send_message(QueueUrl=url, **entries[0])}
        assert sorted(answers) == list(range(len(messages)))
        for n, message in enumerate(messages):
            self.model.acknowledged(message, answers[n])
            if step.delay:
                message.hidden_until = started + step.delay
                message.hide_ends_by = time.time() + step.delay
        self.model.note(f"sent {[m.body for m in messages]}")

    def resend(self, originals: list[Message]) -> None:
        """Send each one's deduplication id again with another body: the original answers."""
        if not originals:
            return
        url = self.model.urls["fifo"]
        resend_deduplicated(
            originals,
            self.model.phantom,
            "MessageBody",
            functools.partial(self.client.send_message, QueueUrl=url),
            lambda entries: self.client.send_message_batch(QueueUrl=url, Entries=entries),
        )
        self.model.note(f"resent {[m.dedup for m in originals]}")

    def receive(
        self, queue: Queue, *, max_messages: int, visibility: int | None, wait: int
    ) -> list[Message]:
        params: dict[str, Any] = {
            "QueueUrl": self.model.urls[queue],
            "MaxNumberOfMessages": max_messages,
            "WaitTimeSeconds": wait,
            "AttributeNames": ["All"],
            "MessageAttributeNames": ["All"],
        }
        if visibility is not None:
            params["VisibilityTimeout"] = visibility
        started = time.time()
        delivered = self.client.receive_message(**params).get("Messages", [])
        answered = time.time()
        messages = [self.check_delivery(queue, raw, answered) for raw in delivered]
        if queue == "fifo":
            self.check_group_order(messages, answered)
        timeout = QUEUE_VISIBILITY if visibility is None else visibility
        for message, raw in zip(messages, delivered, strict=True):
            message.certain = True  # delivered only once durable (Change.on_durable)
            message.maybe_deleted = False
            message.handle = raw["ReceiptHandle"]
            message.hidden_until = started + timeout
            message.hide_ends_by = answered + timeout
            # A standard queue's first receive is written behind: a kill may undo it.
            count = int(raw["Attributes"]["ApproximateReceiveCount"])
            message.hide_durable = queue == "fifo" or count > 1
        self.model.note(f"received from {queue}: {[m.body for m in messages]}")
        return messages

    def check_delivery(self, queue: Queue, raw: dict[str, Any], answered: float) -> Message:
        body = raw["Body"]
        assert body not in self.model.phantoms, f"a deduplicated resend was delivered: {body!r}"
        message = self.model.messages.get(body)
        assert message is not None, f"delivered a message never sent: {body!r}"
        assert message.queue == queue, (body, queue)
        assert not message.deleted, f"delivered after its delete was acknowledged: {body!r}"
        assert not message.absent, f"delivered after a later message of its group: {body!r}"
        assert not in_force(message, answered), (
            f"{body!r} delivered {message.hidden_until - answered:.2f} s before its "
            "visibility timeout or delay ended"
        )
        assert raw["MD5OfBody"] == md5_hex(body.encode()), raw
        attributes = {
            name: {
                k: v for k, v in value.items() if k in ("DataType", "StringValue", "BinaryValue")
            }
            for name, value in raw.get("MessageAttributes", {}).items()
        }
        assert attributes == message.attributes, (body, attributes)
        if message.attributes:
            assert raw["MD5OfMessageAttributes"] == expected_attributes_md5(message.attributes)
        if message.message_id is not None:
            assert raw["MessageId"] == message.message_id, (body, raw["MessageId"])
        message.message_id = raw["MessageId"]
        if queue == "fifo":
            system = raw["Attributes"]
            assert system["MessageGroupId"] == message.group, (body, system)
            assert system["MessageDeduplicationId"] == message.dedup, (body, system)
            if message.sequence_number is not None:
                assert system["SequenceNumber"] == message.sequence_number, (body, system)
            message.sequence_number = system["SequenceNumber"]
        return message

    def check_group_order(self, delivered: list[Message], answered: float) -> None:
        """Each group's messages in a receive are the head of what it holds, in send order;
        and none come while another of the group is surely in flight."""
        by_group: dict[str | None, list[Message]] = defaultdict(list)
        for message in delivered:
            by_group[message.group].append(message)
        for group, messages in by_group.items():
            live = [
                m
                for m in self.model.order["fifo"]
                if m.group == group and not m.deleted and not m.absent
            ]
            blocking = [m.body for m in live if m not in messages and in_force(m, answered)]
            assert not blocking, f"{group}: delivered while {blocking} in flight"
            position = 0
            for message in messages:
                while live[position] is not message:
                    skipped = live[position]
                    assert not skipped.certain, (
                        f"{group}: {message.body!r} delivered before {skipped.body!r}, "
                        "which was sent before it and not deleted"
                    )
                    skipped.absent = True  # an unacknowledged send that was lost: fine
                    position += 1
                position += 1

    def delete(self, queue: Queue, messages: list[Message], *, batch: bool) -> None:
        url = self.model.urls[queue]
        started = time.time()
        refused: dict[int, str] = {}
        if batch:
            answer = self.client.delete_message_batch(
                QueueUrl=url,
                Entries=[{"Id": str(n), "ReceiptHandle": m.handle} for n, m in enumerate(messages)],
            )
            refused = {int(entry["Id"]): entry["Code"] for entry in answer.get("Failed", [])}
            assert len(answer.get("Successful", [])) + len(refused) == len(messages), answer
        else:
            for n, message in enumerate(messages):
                try:
                    self.client.delete_message(QueueUrl=url, ReceiptHandle=message.handle)
                except botocore.exceptions.ClientError as error:
                    refused[n] = error_code(error)
        for n, message in enumerate(messages):
            if n in refused:
                # Only a FIFO queue refuses a handle, and only one whose timeout has passed.
                assert queue == "fifo", (message.body, refused[n])
                assert refused[n] == "InvalidParameterValue", (message.body, refused[n])
                assert not in_force(message, started), f"refused a current handle: {message.body}"
            else:
                message.deleted = True
        self.model.note(
            f"deleted from {queue}: {[m.body for m in messages]}, refused {sorted(refused)}"
        )

    def change_visibility(self, message: Message, timeout: int) -> None:
        started = time.time()
        try:
            self.client.change_message_visibility(
                QueueUrl=self.model.urls[message.queue],
                ReceiptHandle=message.handle,
                VisibilityTimeout=timeout,
            )
        except botocore.exceptions.ClientError as error:
            code = error_code(error)
            assert code.endswith("MessageNotInflight") or code == "InvalidParameterValue", code
            assert not in_force(message, started), (
                f"refused to change the visibility of {message.body!r}, surely in flight: {code}"
            )
            self.model.note(f"visibility of {message.body!r} not changed: {code}")
            return
        message.hidden_until = started + timeout
        message.hide_ends_by = time.time() + timeout
        message.hide_durable = True
        self.model.note(f"visibility of {message.body!r} changed to {timeout} s")

    def drain(self, *, final: bool) -> None:
        """Receive and delete until every message the queues surely hold came, and then
        nothing; not waiting for the long-hidden ones (and their FIFO groups)."""
        if final:
            for message in self.model.messages.values():
                long_hidden = in_force(message, time.time() + LONG_HIDE)
                if long_hidden and message.handle is not None and not message.deleted:
                    # Must succeed: the hide is durable, the message still in flight.
                    self.change_visibility(message, 0)
        for queue in QUEUES:
            now = time.time()
            hidden = [
                m for m in self.model.order[queue] if not m.deleted and in_force(m, now + LONG_HIDE)
            ]
            blocked = {m.group for m in hidden} if queue == "fifo" else set()
            expected = [
                m
                for m in self.model.order[queue]
                if m.certain
                and not m.deleted
                and not m.maybe_deleted
                and m not in hidden
                and m.group not in blocked
            ]
            assert not (final and hidden), hidden
            # The final drain must leave the queue empty: it also waits out the hides of the
            # messages the queue may hold without the test being sure of them.
            settled_at = max(
                (
                    m.hide_ends_by
                    for m in self.model.order[queue]
                    if final and not m.deleted and not m.absent
                ),
                default=0.0,
            )
            deadline = time.monotonic() + DRAIN_SECONDS
            while True:
                waiting = [m for m in expected if not m.deleted]
                unsettled = time.time() < settled_at + SLACK
                delivered = self.receive(
                    queue,
                    max_messages=10,
                    visibility=DRAIN_VISIBILITY,
                    wait=1 if waiting or unsettled else 0,
                )
                if delivered:
                    self.delete(queue, delivered, batch=True)
                elif not waiting and not unsettled:
                    break
                assert time.monotonic() < deadline, (
                    f"{queue}: acknowledged, not deleted, never delivered again: "
                    f"{[m.body for m in waiting]}"
                )

    def finish(self) -> None:
        self.drain(final=True)
        for queue in QUEUES:
            counts = self.counts(queue)
            assert set(counts.values()) == {"0"}, (queue, counts)

    def counts(self, queue: Queue) -> dict[str, str]:
        """The queue's visible, in-flight and delayed counts, as the broker reports them."""
        attributes: dict[str, str] = self.client.get_queue_attributes(
            QueueUrl=self.model.urls[queue],
            AttributeNames=[
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
                "ApproximateNumberOfMessagesDelayed",
            ],
        )["Attributes"]
        return attributes


def send_params(message: Message, delay: int = 0) -> dict[str, Any]:
    params: dict[str, Any] = {"MessageBody": message.body}
    if message.attributes:
        params["MessageAttributes"] = message.attributes
    if delay:
        params["DelaySeconds"] = delay
    if message.group is not None:
        params["MessageGroupId"] = message.group
        params["MessageDeduplicationId"] = message.dedup
    return params


# ---------------------------------------------------------------------- background clients


class Busy:
    """The background clients of one kill."""

    def __init__(self, runner: Runner, kill: Kill, number: int) -> None:
        self.runner = runner
        self.kill = kill
        self.number = number
        self.stop = threading.Event()
        self.workers: list[Worker] = []

    def start(self) -> None:
        """Start the clients; return once each has its answers (or has run out of work)."""
        model = self.runner.model
        for kind in self.kill.background:
            # Groups of their own per kind, so that send order is the order of the model.
            if kind == "standard":
                self.spawn(lambda client: self.send_new(client, "standard", None))
            elif kind == "fifo":
                group = f"g{self.number % GROUPS}"
                self.spawn(lambda client, group=group: self.send_new(client, "fifo", group))
            elif kind == "fifo-duplicates":
                shared = SharedSends(model, f"g{(self.number + 1) % GROUPS}")
                for _ in range(2):
                    self.spawn(shared.stepper())
            else:
                handles = self.receive_for_races()
                races = SharedDeletes(model, self.runner.model.urls["standard"], handles)
                for _ in range(2):
                    self.spawn(races.stepper())
        deadline = time.monotonic() + WARM_UP_SECONDS
        while not all(w.done or w.answers >= self.kill.acknowledged for w in self.workers):
            assert time.monotonic() < deadline, "the background clients got no answers"
            time.sleep(0.001)
        for worker in self.workers:
            assert worker.error is None, worker.error

    def spawn(self, step: Any) -> None:
        worker = Worker(sqs_client(self.runner.endpoint, read_timeout=10), step, self.stop)
        self.workers.append(worker)
        worker.thread.start()

    def send_new(self, client: Any, queue: Queue, group: str | None) -> bool:
        model = self.runner.model
        message = model.new_message(queue, group)
        answer = client.send_message(QueueUrl=model.urls[queue], **send_params(message))
        model.acknowledged(message, answer)
        return True

    def receive_for_races(self) -> list[Message]:
        """Messages in flight in the standard queue for two clients to delete at once."""
        runner = self.runner
        fresh = [runner.model.new_message("standard") for _ in range(DELETE_RACE_MESSAGES)]
        for start in range(0, len(fresh), 10):
            batch = fresh[start : start + 10]
            answer = runner.client.send_message_batch(
                QueueUrl=runner.model.urls["standard"],
                Entries=[{"Id": str(n), **send_params(m)} for n, m in enumerate(batch)],
            )
            assert not answer.get("Failed"), answer
            for entry in answer["Successful"]:
                runner.model.acknowledged(batch[int(entry["Id"])], entry)
        held: list[Message] = []
        for _ in range(DELETE_RACE_MESSAGES // 10 + 2):
            held += runner.receive("standard", max_messages=10, visibility=2, wait=0)
        return held

    def finish(self) -> None:
        answers = stop_workers(self.stop, self.workers)
        self.runner.model.note(f"killed with {self.kill.background}: {answers} answers")


class SharedSends:
    """Two clients sending the same deduplication ids (and bodies) in the same order, as a
    retrying client or two producers of the same events would."""

    def __init__(self, model: Model, group: str) -> None:
        self.model = model
        self.group = group
        self.messages: list[Message] = []

    def stepper(self) -> Any:
        position = iter(range(10**9))

        def step(client: Any) -> bool:
            n = next(position)
            with self.model.lock:
                while len(self.messages) <= n:  # made in order: send order is model order
                    self.messages.append(self.model.new_message("fifo", self.group))
                message = self.messages[n]
            answer = client.send_message(QueueUrl=self.model.urls["fifo"], **send_params(message))
            self.model.acknowledged(message, answer)
            return True

        return step


class SharedDeletes:
    """Two clients deleting the same messages in the same order (a retry, two consumers)."""

    def __init__(self, model: Model, url: str, messages: list[Message]) -> None:
        self.model = model
        self.url = url
        self.messages = messages

    def stepper(self) -> Any:
        position = iter(range(10**9))

        def step(client: Any) -> bool:
            n = next(position)
            if n >= len(self.messages):
                return False
            message = self.messages[n]
            with self.model.lock:
                message.maybe_deleted = not message.deleted
            client.delete_message(QueueUrl=self.url, ReceiptHandle=message.handle)
            with self.model.lock:
                message.deleted = True
                message.maybe_deleted = False
            return True

        return step


# ---------------------------------------------------------------------- the test


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(program=st.lists(segments, min_size=1, max_size=3), tail=st.lists(steps, max_size=12))
def test_what_the_broker_acknowledged_survives_random_sigkills(
    program: list[Segment], tail: list[Step]
) -> None:
    model = Model()
    with tempfile.TemporaryDirectory(prefix="wharf-crash-") as tmp:
        trio.run(
            run_with_kills,
            Path(tmp),
            program,
            tuple(tail),
            lambda endpoint: Runner(model, endpoint),
            lambda: model.trace,
        )
