"""The model of the SNS crash-recovery test (tests/compat/test_sns_crash_recovery.py).

What the broker acknowledged, and what it may or may not have done with the calls a SIGKILL
cut off: the subscriptions of each (topic, queue) pair as a history of changes with their
start and answer times, the publishes with theirs, and what each queue delivered.

A publish may have been delivered under any subscription state that was possibly in force
while it ran: the state after the last change answered before the publish began, and the
state after every change that began before the publish was answered (or, cut off, before the
kill). It must have been delivered where every such state delivers it. The history of a pair
is written by one client at a time (the main program, or one background client at a kill),
and after each restart a ``resync`` entry records what the broker lists, so a change cut off
by a kill stays open only for the publishes of its own run.

HTTP subscriptions (to the standard topic) are pairs too, with the endpoint's name for the
queue's: pending until a confirmation was answered, and delivering nothing until then. Their
POSTs come later than a publish's answer (the delivery worker, retries), so a publish must
reach an endpoint only if, besides, no change since it began removed the subscription.
"""

from __future__ import annotations

import base64
import json
import math
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import boto3
import botocore.config

from tests.support.broker import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, botocore_session

TopicKind = Literal["standard", "fifo"]
TOPIC_NAMES: dict[TopicKind, str] = {"standard": "crash-topic", "fifo": "crash-topic.fifo"}
COLOURS = (None, "red", "green", "blue")
SIZES = (None, 3, 7)

Attributes = dict[str, dict[str, Any]]


def _colour(attributes: Attributes) -> str | None:
    value = attributes.get("colour")
    return None if value is None else str(value["StringValue"])


def _size(attributes: Attributes) -> float | None:
    value = attributes.get("size")
    return None if value is None else float(value["StringValue"])


def _filterable(attributes: Attributes) -> bool:
    """Whether a filter sees any attribute: Binary ones it does not look at."""
    return any(not value["DataType"].startswith("Binary") for value in attributes.values())


# Filter policies on message attributes, each with what it matches (AWS's "Amazon SNS message
# filtering": a key missing from the attributes matches only {"exists": false}, and that "only
# matches if at least one attribute is present. An empty set of attributes results in the
# filter not matching" (attribute-key-matching); a Binary attribute is not looked at). "{}" is
# how a policy is removed (set-subscription-attributes --attribute-value "{}"): it matches
# everything.
FILTERS: dict[str, Callable[[Attributes], bool]] = {
    '{"colour": ["red"]}': lambda a: _colour(a) == "red",
    '{"colour": ["green", "blue"]}': lambda a: _colour(a) in ("green", "blue"),
    '{"colour": [{"anything-but": "red"}]}': lambda a: _colour(a) not in (None, "red"),
    '{"colour": [{"exists": false}]}': lambda a: _colour(a) is None and _filterable(a),
    '{"size": [{"numeric": [">=", 5]}]}': lambda a: (_size(a) or 0) >= 5,
    "{}": lambda a: True,
}
POLICIES = tuple(policy for policy in FILTERS if policy != "{}")


def attributes_for(colour: str | None, size: int | None, blob: bool, n: int) -> Attributes:
    attributes: Attributes = {}
    if colour is not None:
        attributes["colour"] = {"DataType": "String", "StringValue": colour}
    if size is not None:
        attributes["size"] = {"DataType": "Number", "StringValue": str(size)}
    if blob:
        attributes["blob"] = {"DataType": "Binary", "BinaryValue": n.to_bytes(4, "big") + b"\xff"}
    return attributes


_session_lock = threading.Lock()
_session: boto3.Session | None = None


def own_sns_client(endpoint: str, read_timeout: float = 20) -> Any:
    """An SNS client of its own (tests.support.sns caches one per endpoint: a background
    client closes its own when it stops, which must not close the main program's)."""
    global _session
    with _session_lock:  # one session: it caches the models it has loaded
        if _session is None:
            _session = boto3.Session(botocore_session=botocore_session("json"))
        return _session.client(
            "sns",
            endpoint_url=endpoint,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
            config=botocore.config.Config(
                retries={"total_max_attempts": 1}, read_timeout=read_timeout, connect_timeout=5
            ),
        )


# ---------------------------------------------------------------------- subscriptions


@dataclass(frozen=True)
class State:
    """A live subscription: its ARN (None while a cut-off Subscribe, or an HTTP Subscribe
    answered "pending confirmation", left it unknown); an HTTP one delivers only once its
    confirmation was answered."""

    arn: str | None
    raw: bool
    filter: str | None
    confirmed: bool = True

    def delivers(self, attributes: Attributes) -> bool:
        if not self.confirmed:
            return False
        return self.filter is None or FILTERS[self.filter](attributes)


@dataclass
class Change:
    """One change of a pair's subscription: what it left, when it began and was answered
    (``end`` None: cut off by a kill, so it may or may not have happened)."""

    what: str
    after: State | None
    start: float
    end: float | None


@dataclass
class Slot:
    """One (topic, queue) pair, or (topic, HTTP endpoint), and its subscription's history."""

    topic: TopicKind
    queue: str  # queue name, or the endpoint's name (tests.support.sns_crash_http.HOOKS)
    protocol: Literal["sqs", "http"] = "sqs"
    history: list[Change] = field(
        default_factory=lambda: [Change("start", None, -math.inf, -math.inf)]
    )

    @property
    def fifo(self) -> bool:
        return self.topic == "fifo"

    @property
    def current(self) -> State | None:
        """The state the last change left (the main program's view: no change is open)."""
        return self.history[-1].after

    def record(self, what: str, after: State | None, start: float, end: float | None) -> Change:
        change = Change(what, after, start, end)
        self.history.append(change)
        return change

    def possible(self, start: float, end: float) -> list[State | None]:
        """The states possibly in force at some moment between ``start`` and ``end``."""
        last = max(i for i, c in enumerate(self.history) if c.end is not None and c.end < start)
        return [self.history[last].after] + [
            c.after for c in self.history[last + 1 :] if c.start < end
        ]

    def possible_now(self) -> list[State | None]:
        """The states the broker may hold now (after a kill, before the resync)."""
        return self.possible(math.inf, math.inf)


# ---------------------------------------------------------------------- publishes


@dataclass(eq=False)
class Message:
    body: str
    topic: TopicKind
    generation: int  # of the topic: a DeleteTopic and CreateTopic make a new one
    attributes: Attributes
    start: float
    group: str | None = None
    dedup: str | None = None
    order: int = 0  # position among all messages made: a group's send order
    end: float | None = None  # when its answer came
    cut_at: float | None = None  # cut off by a kill at (no answer)
    message_id: str | None = None
    sequence_number: str | None = None
    delivered: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    # queue -> how it came: "raw", or enveloped under the SubscriptionArn it names
    forms: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))

    @property
    def acknowledged(self) -> bool:
        return self.end is not None

    @property
    def finished(self) -> float:
        """By when the broker had done whatever it did with it."""
        if self.end is not None:
            return self.end
        return self.cut_at if self.cut_at is not None else math.inf


class Model:
    """What the broker acknowledged. Background clients change it under ``lock``."""

    def __init__(self, slots: list[Slot]) -> None:
        self.lock = threading.RLock()
        self.slots = {(s.topic, s.queue): s for s in slots}
        self.messages: dict[str, Message] = {}
        self.phantoms: set[str] = set()
        self.generation: dict[TopicKind, int] = {"standard": 0, "fifo": 0}
        self.arns: dict[TopicKind, str] = {}
        # Per FIFO topic generation: (answered at, SequenceNumber) of acknowledged publishes.
        self.sequences: dict[int, list[tuple[float, int]]] = defaultdict(list)
        self.trace: list[str] = []
        self._count = 0

    def note(self, line: str) -> None:
        with self.lock:
            self.trace.append(f"{time.monotonic():.3f} {line}")

    def new_message(
        self, topic: TopicKind, attributes: Attributes, group: str | None = None, label: str = "m"
    ) -> Message:
        with self.lock:
            self._count += 1
            n = self._count
            message = Message(
                body=f"{label} {n} ✓",  # unique, and not all ASCII: it must come back exactly
                topic=topic,
                generation=self.generation[topic],
                attributes=attributes,
                start=time.monotonic(),
                group=group,
                dedup=f"d{n}" if topic == "fifo" else None,
                order=n,
            )
            self.messages[message.body] = message
            return message

    def phantom(self) -> str:
        with self.lock:
            self._count += 1
            body = f"duplicate {self._count}"
            self.phantoms.add(body)
            return body

    def acknowledged(self, message: Message, answer: dict[str, Any]) -> None:
        """Record a publish's answer (from either client, for a deduplication id sent by two)."""
        now = time.monotonic()
        with self.lock:
            if message.message_id is not None:
                assert answer["MessageId"] == message.message_id, (message.body, answer)
            message.message_id = answer["MessageId"]
            if message.topic == "fifo":
                sequence = answer["SequenceNumber"]
                if message.sequence_number is not None:
                    assert sequence == message.sequence_number, (message.body, answer)
                else:
                    earlier = [
                        s for at, s in self.sequences[message.generation] if at < message.start
                    ]
                    assert all(s < int(sequence) for s in earlier), (
                        f"{message.body!r} got SequenceNumber {sequence}, not above "
                        f"{max(earlier)} of a publish answered before it began"
                    )
                    self.sequences[message.generation].append((now, int(sequence)))
                message.sequence_number = sequence
            else:
                assert "SequenceNumber" not in answer, answer
            if message.end is None:
                message.end = now

    def killed(self, at: float) -> None:
        with self.lock:
            for message in self.messages.values():
                if message.end is None and message.cut_at is None:
                    message.cut_at = at
            for slot in self.slots.values():
                for change in slot.history:
                    assert change.end is not None or change.start < at

    # ---- what a queue may and must deliver

    def fates(self, message: Message, slot: Slot) -> list[State | None]:
        return slot.possible(message.start, message.finished)

    def must_deliver(self, message: Message, slot: Slot) -> bool:
        """Whether ``slot``'s queue must have ``message`` (were it acknowledged)."""
        # A DeleteTopic is a change of each of its subscriptions (to none): no special case.
        return all(
            state is not None and state.delivers(message.attributes)
            for state in self.fates(message, slot)
        )

    def must_post(self, message: Message, slot: Slot) -> bool:
        """Whether ``slot``'s HTTP endpoint must get ``message`` (were it acknowledged): a
        subscription that surely delivered it, and that nothing removed since (an Unsubscribe
        or DeleteTopic drops the POSTs still owed, as AWS's do), however late the POST."""
        if not self.must_deliver(message, slot):
            return False
        history = slot.history
        last = max(i for i, c in enumerate(history) if c.end is not None and c.end < message.start)
        return all(c.after is not None for c in history[last + 1 :])

    def may_deliver(self, message: Message, slot: Slot) -> bool:
        return any(
            state is not None and state.delivers(message.attributes)
            for state in self.fates(message, slot)
        )

    def evidence(self, slot: Slot) -> str | None:
        """Why the slot's last change, cut off by a kill, surely took effect, if it did:
        an acknowledged publish, begun once only that change was open, came (or did not come)
        as only the state after it explains. None: no publish tells."""
        *_, before, change = slot.history
        if change.end is not None or before.end is None:
            return None
        prior = before.after
        for message in self.messages.values():
            if message.topic != slot.topic or not message.acknowledged:
                continue
            if message.start <= before.end:
                continue
            delivered = message.delivered[slot.queue] > 0
            if prior is None or not prior.delivers(message.attributes):
                if delivered:
                    return f"{message.body!r} came"
                continue
            if not delivered:
                return f"{message.body!r} did not come"
            form = "raw" if prior.raw else prior.arn
            if message.forms[slot.queue] != {form}:
                return f"{message.body!r} came as {message.forms[slot.queue]}"
        return None

    def slots_of(self, topic: TopicKind, protocol: str | None = None) -> list[Slot]:
        return [
            s for s in self.slots.values() if s.topic == topic and protocol in (None, s.protocol)
        ]

    def owed(self, message: Message, slot: Slot) -> bool:
        """Whether ``slot`` must have ``message`` by now: SQS copies at once, HTTP POSTs once
        the delivery worker got them through."""
        if slot.protocol == "http":
            return self.must_post(message, slot)
        return self.must_deliver(message, slot)


# ---------------------------------------------------------------------- deliveries


TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def envelope_attributes(attributes: Attributes) -> dict[str, dict[str, str]]:
    """Publish's message attributes as the envelope shows them (AWS's sns-message-and-json
    formats: Type and Value, binary values base64-encoded)."""
    rendered = {}
    for name, value in attributes.items():
        if "BinaryValue" in value:
            text = base64.b64encode(value["BinaryValue"]).decode()
        else:
            text = value["StringValue"]
        rendered[name] = {"Type": value["DataType"], "Value": text}
    return rendered


def sqs_attributes(raw: dict[str, Any]) -> Attributes:
    """A received SQS message's attributes, without the MD5 and list fields."""
    return {
        name: {k: v for k, v in value.items() if k in ("DataType", "StringValue", "BinaryValue")}
        for name, value in raw.get("MessageAttributes", {}).items()
    }


def parse_envelope(body: str) -> dict[str, Any] | None:
    """The notification envelope in an SQS body, or None for a raw body (not JSON here)."""
    if not body.startswith("{"):
        return None
    document: dict[str, Any] = json.loads(body)
    return document
