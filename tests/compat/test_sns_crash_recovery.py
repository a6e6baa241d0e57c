"""Random programs of SNS calls with SIGKILLs between them: what was acknowledged survives.

Hypothesis draws a program: subscriptions to set up, then segments of steps, each ended by a
SIGKILL of the broker and a restart on the same data directory, then a tail of steps and a
final drain. The steps are boto3 calls against a real broker subprocess
(tests.support.crash_harness): a standard topic with three standard queues subscribed and a
FIFO topic with two FIFO queues, each subscription raw or enveloped, with or without a filter
policy on the message attributes. Steps: Publish and PublishBatch (unique bodies, attributes
that a filter may or may not match, FIFO groups and deduplication ids), resends of an
acknowledged deduplication id, Subscribe (a repeated identical one must answer the same
SubscriptionArn, one with other attributes is refused), Unsubscribe (again: idempotent),
SetSubscriptionAttributes (RawMessageDelivery, FilterPolicy), DeleteTopic and CreateTopic
again, and drains of every queue. A kill may come while background clients are busy:
publishing to either topic, publishing the same deduplication ids from two clients at once,
or subscribing, changing and unsubscribing a queue of its own while the others publish; what
they were not answered may or may not have happened.

The model (tests.support.sns_crash_model) is checked at every delivery, after every restart
and at the end:

- an acknowledged publish is delivered to every queue whose subscription surely delivered
  it: subscribed (Subscribe answered before the publish began, no Unsubscribe begun before
  its answer) with a filter that matches; to no queue that no subscription possibly in force
  while it ran would have delivered it to; a publish never sent, or a deduplicated resend,
  never; a publish cut off by a kill, only where it might have gone, and then everywhere it
  would surely have gone (one publish is one commit, broker/fanout.py);
- each copy is as published: raw (the body, the attributes as SQS attributes) or enveloped
  as its subscription was: Type, the MessageId the publish answered (the same in every
  queue), TopicArn, Message, Timestamp, MessageAttributes, UnsubscribeURL naming the
  subscription, a standard topic's signature (checked against the broker's certificate), a
  FIFO topic's SequenceNumber;
- HTTP: two endpoints in the test process (tests.support.sns_crash_http), one that always
  answers 200 and one that answers some requests with a 500 or a reset (drawn per example),
  are subscriptions of the standard topic like the queues (raw or enveloped, filtered or
  not), pending until a Confirm step follows the SubscribeURL of a SubscriptionConfirmation
  the endpoint got (or calls ConfirmSubscription with its token), also across restarts. At
  every drain, after every restart and at the end, within a bounded wait for the delivery
  worker: every acknowledged publish that a confirmed subscription surely delivered, and that
  no Unsubscribe or DeleteTopic removed since, was POSTed and answered 200 at least once
  (duplicates allowed); every POST names a publish that was made, under a subscription
  possibly confirmed and matching while it ran, with the x-amz-sns-message-type, -message-id
  (the publish's), -topic-arn, -subscription-arn and -rawdelivery headers, and an enveloped
  one's signature valid; a publish a kill cut off reaches the endpoints too, if it reached
  anything;
- FIFO: each queue has a group's messages in publish order, each once; a resend of an
  acknowledged deduplication id (the last ones also after each restart) answers the original
  MessageId and SequenceNumber and delivers nothing; sequence numbers grow;
- after a restart, ListSubscriptionsByTopic lists exactly the subscriptions the model says
  (give or take the changes a kill cut off), with their attributes as last acknowledged.

``HYPOTHESIS_PROFILE=deep`` runs twelve times as many examples. A kill's timing is not part
of the example, so a failure may not come back when hypothesis replays it (it then reports a
FlakyFailure with the first one): the steps the failing run took are attached to the
exception.
"""

from __future__ import annotations

import functools
import os
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

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
from tests.support.sns import Endpoint, Received, check_signature, fetch, queue_arn
from tests.support.sns_crash_http import (
    DELIVERY_POLICY,
    HOOKS,
    Flakiness,
    Hook,
    behaviour,
    follow_subscribe_url,
    moved,
)
from tests.support.sns_crash_model import (
    COLOURS,
    POLICIES,
    SIZES,
    TIMESTAMP,
    TOPIC_NAMES,
    Message,
    Model,
    Slot,
    State,
    TopicKind,
    attributes_for,
    envelope_attributes,
    own_sns_client,
    parse_envelope,
    sqs_attributes,
)

pytestmark = pytest.mark.slow

# Each example starts a broker process per segment (about 2 s an example): 25 keep the
# default run under a minute; HYPOTHESIS_PROFILE=deep runs twelve times as many.
EXAMPLES = 25 * (12 if os.environ.get("HYPOTHESIS_PROFILE") == "deep" else 1)
GROUPS = 3  # the main program's FIFO message groups g0..g2
DRAIN_SECONDS = 20
WARM_UP_SECONDS = 30
DEDUPLICATION_SECONDS = 290  # resend only well within AWS's 5-minute window
VISIBILITY = 30  # seconds: a drain deletes what it receives at once

TOPICS: tuple[TopicKind, ...] = ("standard", "fifo")
HTTP_SECONDS = 30  # for the delivery worker to get an owed POST through (retries included)
CONFIRM_SECONDS = 20  # for a SubscriptionConfirmation to reach its endpoint
# The main program's (topic, queue) pairs and (topic, HTTP endpoint) pairs; "churn" is the
# background subscriber's own.
SQS_PAIRS: tuple[tuple[TopicKind, str], ...] = (
    ("standard", "s0"),
    ("standard", "s1"),
    ("standard", "s2"),
    ("fifo", "f0.fifo"),
    ("fifo", "f1.fifo"),
)
HTTP_PAIRS: tuple[tuple[TopicKind, str], ...] = tuple(("standard", name) for name in HOOKS)
PAIRS = SQS_PAIRS + HTTP_PAIRS
CHURN: tuple[TopicKind, str] = ("standard", "churn")
Background = Literal["standard", "fifo", "fifo-duplicates", "churn"]
BACKGROUNDS: tuple[Background, ...] = ("standard", "fifo", "fifo-duplicates", "churn")


# ---------------------------------------------------------------------- the program


@dataclass(frozen=True)
class Initial:
    raw: bool
    filter: str | None
    confirm: bool  # HTTP: confirmed at once (else left pending)


@dataclass(frozen=True)
class Entry:
    colour: str | None
    size: int | None
    blob: bool
    group: int


@dataclass(frozen=True)
class Publish:
    topic: TopicKind
    batch: bool  # PublishBatch, else Publish (one message)
    entries: tuple[Entry, ...]


@dataclass(frozen=True)
class Resend:
    pick: int  # which acknowledged FIFO publish's deduplication id, modulo their number
    count: int  # how many from there on (PublishBatch if more than one)


@dataclass(frozen=True)
class Subscribe:
    pair: int
    raw: bool | None  # None: RawMessageDelivery not given
    filter: str | None  # None: FilterPolicy not given
    return_arn: bool


@dataclass(frozen=True)
class Unsubscribe:
    pair: int


@dataclass(frozen=True)
class SetAttribute:
    pair: int
    name: str
    value: str


@dataclass(frozen=True)
class Recreate:
    topic: TopicKind


@dataclass(frozen=True)
class Confirm:
    hook: int  # which HTTP pair
    via_url: bool  # GET SubscribeURL, else ConfirmSubscription


@dataclass(frozen=True)
class Drain:
    pass


Step = Publish | Resend | Subscribe | Unsubscribe | SetAttribute | Recreate | Confirm | Drain


@dataclass(frozen=True)
class Kill:
    background: tuple[Background, ...]  # clients busy when the SIGKILL comes
    acknowledged: int  # answers each of them gets before it


@dataclass(frozen=True)
class Segment:
    steps: tuple[Step, ...]
    kill: Kill


topics = st.sampled_from(TOPICS)
pairs = st.integers(0, len(PAIRS) - 1)
policies = st.sampled_from(POLICIES)
entries = st.builds(
    Entry,
    st.sampled_from(COLOURS),
    st.sampled_from(SIZES),
    st.booleans(),
    st.integers(0, GROUPS - 1),
)


@st.composite
def publishes(draw: st.DrawFn) -> Publish:
    batch = draw(st.booleans())
    count = draw(st.integers(1, 10)) if batch else 1
    drawn = draw(st.lists(entries, min_size=count, max_size=count))
    return Publish(draw(topics), batch, tuple(drawn))


attribute_changes = st.one_of(
    st.tuples(st.just("RawMessageDelivery"), st.sampled_from(("true", "false"))),
    st.tuples(st.just("FilterPolicy"), st.sampled_from((*POLICIES, "{}"))),
)
steps: st.SearchStrategy[Step] = st.one_of(
    publishes(),
    st.builds(
        Subscribe,
        pairs,
        st.sampled_from((None, True, False)),
        st.one_of(st.none(), policies),
        st.booleans(),
    ),
    publishes(),
    st.builds(Unsubscribe, pairs),
    st.builds(Resend, st.integers(0, 100), st.integers(1, 3)),
    attribute_changes.flatmap(
        lambda c: st.builds(SetAttribute, pairs, st.just(c[0]), st.just(c[1]))
    ),
    publishes(),
    st.just(Drain()),
    st.builds(Recreate, topics),
    st.builds(Confirm, st.integers(0, len(HTTP_PAIRS) - 1), st.booleans()),
    publishes(),
)
initial_states = st.builds(Initial, st.booleans(), st.one_of(st.none(), policies), st.booleans())
# The endpoints are subscribed at first more often than the queues (three in four, mostly
# confirmed): few steps name them, and an endpoint without a subscription tests little.
initial_hooks = st.one_of(
    st.none(),
    *[st.builds(Initial, st.booleans(), st.one_of(st.none(), policies), st.just(True))] * 2,
    initial_states,
)
initials = st.tuples(
    *[st.one_of(st.none(), initial_states)] * len(SQS_PAIRS),
    *[initial_hooks] * len(HTTP_PAIRS),
).map(list)
flakiness = st.builds(
    Flakiness,
    st.sampled_from(("none", "500", "reset")),
    st.sampled_from((0.2, 0.5)),
    st.integers(0, 2**32 - 1),
)
kills = st.builds(
    Kill,
    st.lists(st.sampled_from(BACKGROUNDS), unique=True, max_size=3).map(tuple),
    st.integers(0, 5),
)
segments = st.builds(Segment, st.lists(steps, max_size=10).map(tuple), kills)


def error_code(error: botocore.exceptions.ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def same(model: State | None, actual: State | None) -> bool:
    """Whether the broker's subscription is the model's (whose ARN may be unknown)."""
    if model is None or actual is None:
        return model is actual
    return model.arn in (None, actual.arn) and (model.raw, model.filter, model.confirmed) == (
        actual.raw,
        actual.filter,
        actual.confirmed,
    )


def publish_params(message: Message) -> dict[str, Any]:
    params: dict[str, Any] = {"Message": message.body}
    if message.attributes:
        params["MessageAttributes"] = message.attributes
    if message.group is not None:
        params["MessageGroupId"] = message.group
        params["MessageDeduplicationId"] = message.dedup
    return params


# ---------------------------------------------------------------------- one broker run


class Runner:
    """The program's steps against one broker run (blocking calls: run in a worker thread)."""

    def __init__(
        self,
        model: Model,
        endpoint: str,
        queue_arns: dict[str, str],
        initial: list[Initial | None],
        hooks: dict[str, Hook],
    ) -> None:
        self.model = model
        self.hooks = hooks  # the HTTP endpoints by name (the same in every run)
        self.initial = initial  # the subscriptions the first run sets up
        self.endpoint = endpoint
        self.sns = own_sns_client(endpoint)
        self.sqs = sqs_client(endpoint, read_timeout=20)
        self.queue_arns = queue_arns  # name -> ARN (the same in every run)
        self.urls: dict[str, str] = {}
        self._certificate: bytes | None = None

    def close(self) -> None:
        self.sns.close()
        self.sqs.close()

    def begin(self, run: int) -> None:
        if run == 1:
            self.create(self.initial)
        else:
            self.restarted()

    def busy(self, kill: Kill, run: int) -> Busy:
        return Busy(self, kill, run)

    def killed(self) -> None:
        self.model.killed(time.monotonic())

    # ---- set-up and checks after a restart

    def create(self, initial: list[Initial | None]) -> None:
        for kind in TOPICS:
            self.model.arns[kind] = self.create_topic(kind)
        for _, name in (*SQS_PAIRS, CHURN):
            attributes = {"VisibilityTimeout": str(VISIBILITY)}
            if name.endswith(".fifo"):
                attributes["FifoQueue"] = "true"
            self.urls[name] = self.sqs.create_queue(QueueName=name, Attributes=attributes)[
                "QueueUrl"
            ]
            self.queue_arns[name] = queue_arn(self.sqs, self.urls[name])
        for n, first in enumerate(initial):
            if first is not None:
                self.subscribe(Subscribe(n, first.raw, first.filter, True))
                if PAIRS[n] in HTTP_PAIRS and first.confirm:
                    self.confirm(self.slot(n), via_url=n % 2 == 0)

    def create_topic(self, kind: TopicKind) -> str:
        attributes = {"FifoTopic": "true"} if kind == "fifo" else {}
        arn: str = self.sns.create_topic(Name=TOPIC_NAMES[kind], Attributes=attributes)["TopicArn"]
        return arn

    def restarted(self) -> None:
        for _, name in (*SQS_PAIRS, CHURN):
            self.urls[name] = self.sqs.get_queue_url(QueueName=name)["QueueUrl"]
        listed = {t["TopicArn"] for t in self.sns.list_topics()["Topics"]}
        assert listed == set(self.model.arns.values()), listed
        # First the deliveries (of the publishes before the kill: the resync's entries do not
        # bear on them), then the subscriptions, which the deliveries may vouch for. The
        # delivery worker resumes the POSTs still owed: they come within the drain's wait.
        self.drain()
        self.check_cut_off()
        for kind in TOPICS:
            self.resync(kind)
        # The deduplication ids closest to the kill are the likeliest to have been lost.
        self.resend(self.resendable()[-10:])

    def resync(self, kind: TopicKind) -> None:
        """Check what the broker lists against the model; take it as the truth from now on."""
        topic_arn = self.model.arns[kind]
        listed = self.sns.list_subscriptions_by_topic(TopicArn=topic_arn)
        assert "NextToken" not in listed
        by_endpoint: dict[str, dict[str, Any]] = {}
        for entry in listed["Subscriptions"]:
            assert entry["Protocol"] in ("sqs", "http"), entry
            assert entry["TopicArn"] == topic_arn, entry
            assert entry["Endpoint"] not in by_endpoint, f"listed twice: {entry}"
            by_endpoint[entry["Endpoint"]] = entry
        addresses = {slot.queue: self.address(slot) for slot in self.model.slots_of(kind)}
        now = time.monotonic()
        for endpoint, entry in by_endpoint.items():
            assert endpoint in addresses.values(), f"a subscription never made: {entry}"
        for slot in self.model.slots_of(kind):
            possible = slot.possible_now()
            entry = by_endpoint.get(addresses[slot.queue])
            actual: State | None = None
            if entry is not None:
                assert entry["Protocol"] == slot.protocol, entry
                actual = self.listed_state(slot, entry["SubscriptionArn"], possible)
                assert any(same(s, actual) for s in possible), (
                    f"{slot.queue}: after a restart the broker lists {actual}, "
                    f"the model allows {possible}"
                )
            else:
                assert None in possible, (
                    f"{slot.queue}: after a restart no subscription to {kind}, "
                    f"the model allows only {possible}"
                )
            self.check_vouched(slot, actual)
            slot.record("resync", actual, now, now)
            self.model.note(f"restarted: {kind} -> {slot.queue} is {actual}")

    def address(self, slot: Slot) -> str:
        """What the slot's subscription names as its Endpoint."""
        if slot.protocol == "http":
            return self.hooks[slot.queue].url
        return self.queue_arns[slot.queue]

    def listed_state(self, slot: Slot, listed_arn: str, possible: list[State | None]) -> State:
        """The subscription the broker lists for ``slot``, as a State."""
        pending = listed_arn == "PendingConfirmation"
        arn: str | None = listed_arn
        if pending:
            # A pending subscription is listed without its ARN: the model's, if it knows it.
            known = {s.arn for s in possible if s is not None and s.arn is not None}
            assert slot.protocol == "http", (slot.queue, possible)
            assert len(known) <= 1, (slot.queue, possible)
            if not known:  # Subscribe answered "pending confirmation": no ARN to look up
                (model,) = {s for s in possible if s is not None and not s.confirmed}
                return State(None, model.raw, model.filter, confirmed=False)
            (arn,) = known
        assert arn is not None
        attributes = self.sns.get_subscription_attributes(SubscriptionArn=arn)["Attributes"]
        assert attributes["SubscriptionArn"] == arn, attributes
        assert attributes["PendingConfirmation"] == ("true" if pending else "false"), attributes
        return State(
            arn,
            attributes["RawMessageDelivery"] == "true",
            attributes.get("FilterPolicy"),
            confirmed=not pending,
        )

    # ---- steps

    def run(self, step: Step) -> None:
        match step:
            case Publish():
                self.publish(step)
            case Resend(pick, count):
                candidates = self.resendable()
                if candidates:
                    start = pick % len(candidates)
                    self.resend(candidates[start : start + count])
            case Subscribe():
                self.subscribe(step)
            case Unsubscribe(pair):
                self.unsubscribe(self.slot(pair))
            case SetAttribute(pair, name, value):
                self.set_attribute(self.slot(pair), name, value)
            case Recreate(kind):
                self.recreate(kind)
            case Confirm(hook, via_url):
                self.confirm(self.model.slots[HTTP_PAIRS[hook]], via_url=via_url)
            case Drain():
                self.drain()

    def slot(self, pair: int) -> Slot:
        return self.model.slots[PAIRS[pair]]

    def publish(self, step: Publish) -> None:
        fifo = step.topic == "fifo"
        messages = [
            self.model.new_message(
                step.topic,
                attributes_for(e.colour, e.size, e.blob, n),
                f"g{e.group}" if fifo else None,
            )
            for n, e in enumerate(step.entries)
        ]
        arn = self.model.arns[step.topic]
        if step.batch:
            answer = self.sns.publish_batch(
                TopicArn=arn,
                PublishBatchRequestEntries=[
                    {"Id": str(n), **publish_params(m)} for n, m in enumerate(messages)
                ],
            )
            assert not answer.get("Failed"), answer
            answers = {int(entry["Id"]): entry for entry in answer["Successful"]}
        else:
            answers = {0: self.sns.publish(TopicArn=arn, **publish_params(messages[0]))}
        assert sorted(answers) == list(range(len(messages))), answers
        for n, message in enumerate(messages):
            self.model.acknowledged(message, answers[n])
        self.model.note(f"published to {step.topic}: {[m.body for m in messages]}")

    def resendable(self) -> list[Message]:
        """FIFO publishes whose deduplication id the topic surely still knows."""
        since = time.monotonic() - DEDUPLICATION_SECONDS
        generation = self.model.generation["fifo"]
        return [
            m
            for m in self.model.messages.values()
            if m.topic == "fifo"
            and m.acknowledged
            and m.generation == generation
            and m.start > since
        ]

    def resend(self, originals: list[Message]) -> None:
        """Publish each one's deduplication id again with another body: the original answers."""
        if not originals:
            return
        arn = self.model.arns["fifo"]
        resend_deduplicated(
            originals,
            self.model.phantom,
            "Message",
            functools.partial(self.sns.publish, TopicArn=arn),
            lambda entries: self.sns.publish_batch(
                TopicArn=arn, PublishBatchRequestEntries=entries
            ),
        )
        self.model.note(f"resent {[m.dedup for m in originals]}")

    def subscribe(self, step: Subscribe) -> None:
        slot = self.slot(step.pair)
        attributes: dict[str, str] = {}
        if step.raw is not None:
            attributes["RawMessageDelivery"] = "true" if step.raw else "false"
        if step.filter is not None:
            attributes["FilterPolicy"] = step.filter
        current = slot.current
        conflict = current is not None and (
            (step.raw is not None and step.raw != current.raw)
            or (step.filter is not None and step.filter != current.filter)
        )
        http = slot.protocol == "http"
        if http:  # always the same: never a conflict of its own
            attributes["DeliveryPolicy"] = DELIVERY_POLICY
        params = {
            "TopicArn": self.model.arns[slot.topic],
            "Protocol": slot.protocol,
            "Endpoint": self.address(slot),
            "Attributes": attributes,
            "ReturnSubscriptionArn": step.return_arn,
        }
        if conflict:  # AWS: "Subscription already exists with different attributes"
            with pytest.raises(botocore.exceptions.ClientError) as refused:
                self.sns.subscribe(**params)
            assert error_code(refused.value) == "InvalidParameter", refused.value
            self.model.note(f"subscribe {slot.queue} {attributes}: refused, {current} stays")
            return
        start = time.monotonic()
        answer = self.sns.subscribe(**params)
        pending = http and (current is None or not current.confirmed)
        known: str | None = answer["SubscriptionArn"]
        if pending and not step.return_arn:  # AWS answers no ARN for a pending one
            assert known == "pending confirmation", answer
            known = None
        else:
            assert str(known).startswith(self.model.arns[slot.topic] + ":"), answer
        if current is not None:
            assert current.arn in (None, known) or known is None, (
                f"a repeated Subscribe answered {known}, not {current.arn}"
            )
            if pending:  # a new token and SubscriptionConfirmation; the old token is void
                state = replace(current, arn=current.arn or known)
                slot.record("subscribe again", state, start, time.monotonic())
            self.model.note(f"subscribed {slot.queue} again: {known}")
            return
        state = State(known, bool(step.raw), step.filter, confirmed=not http)
        slot.record("subscribe", state, start, time.monotonic())
        self.model.note(f"subscribed {slot.queue}: {state}")

    def confirm(self, slot: Slot, *, via_url: bool) -> None:
        """Confirm a pending HTTP subscription with the token of a SubscriptionConfirmation
        its endpoint got (and answered 200), newest first: a repeated Subscribe voids the
        earlier tokens, which the broker then refuses."""
        current = slot.current
        if current is None or current.confirmed:
            return
        hook = self.hooks[slot.queue]
        topic_arn = self.model.arns[slot.topic]
        deadline = time.monotonic() + CONFIRM_SECONDS
        while True:
            for request in hook.confirmations(topic_arn):
                envelope = request.envelope()
                token = envelope["Token"]
                if token in hook.stale or token in hook.used:
                    continue
                self.check_confirmation(request, topic_arn)
                start = time.monotonic()
                if via_url:
                    arn = follow_subscribe_url(moved(envelope["SubscribeURL"], self.endpoint))
                else:
                    arn = self.confirm_subscription(topic_arn, token)
                if arn is None:  # void (a later Subscribe, an Unsubscribe), or lost
                    hook.stale.add(token)
                    self.model.note(f"{slot.queue}: the token of {envelope['MessageId']} refused")
                    continue
                end = time.monotonic()
                hook.used.add(token)
                assert current.arn in (None, arn), f"confirmed {arn}, subscribed {current.arn}"
                state = replace(current, arn=arn, confirmed=True)
                slot.record("confirm", state, start, end)
                self.model.note(f"confirmed {slot.queue} ({'URL' if via_url else 'action'})")
                return
            assert time.monotonic() < deadline, (
                f"{slot.queue}: no SubscriptionConfirmation with a live token came in "
                f"{CONFIRM_SECONDS} s (refused tokens: {len(hook.stale)})"
            )
            time.sleep(0.02)

    def confirm_subscription(self, topic_arn: str, token: str) -> str | None:
        """ConfirmSubscription: the SubscriptionArn, or None when the token is refused."""
        try:
            answer = self.sns.confirm_subscription(TopicArn=topic_arn, Token=token)
        except botocore.exceptions.ClientError as error:
            if error_code(error) == "InvalidParameter":
                return None
            raise
        arn: str = answer["SubscriptionArn"]
        return arn

    def check_confirmation(self, request: Received, topic_arn: str) -> None:
        envelope = request.envelope()
        headers = request.headers
        assert request.method == "POST", request
        assert envelope["Type"] == headers["x-amz-sns-message-type"], (envelope, headers)
        assert headers["x-amz-sns-message-id"] == envelope["MessageId"], (envelope, headers)
        assert envelope["TopicArn"] == topic_arn, envelope
        assert "x-amz-sns-subscription-arn" not in headers, headers
        check_signature(envelope, self.certificate(envelope["SigningCertURL"]))

    def stale_arn(self, slot: Slot) -> str | None:
        arns = [c.after.arn for c in slot.history if c.after is not None]
        return arns[-1] if arns else None

    def unsubscribe(self, slot: Slot) -> None:
        current = slot.current
        if current is None:
            stale = self.stale_arn(slot)
            if stale is not None:  # gone already: Unsubscribe is idempotent
                self.sns.unsubscribe(SubscriptionArn=stale)
                self.model.note(f"unsubscribed {slot.queue} again")
            return
        if current.arn is None:  # pending, answered without its ARN: nothing to name
            return
        start = time.monotonic()
        self.sns.unsubscribe(SubscriptionArn=current.arn)
        slot.record("unsubscribe", None, start, time.monotonic())
        self.model.note(f"unsubscribed {slot.queue}")

    def set_attribute(self, slot: Slot, name: str, value: str) -> None:
        current = slot.current
        if current is None:
            stale = self.stale_arn(slot)
            if stale is not None:
                with pytest.raises(botocore.exceptions.ClientError) as refused:
                    self.sns.set_subscription_attributes(
                        SubscriptionArn=stale, AttributeName=name, AttributeValue=value
                    )
                assert error_code(refused.value) == "NotFound", refused.value
            return
        if current.arn is None:  # pending, answered without its ARN: nothing to name
            return
        start = time.monotonic()
        self.sns.set_subscription_attributes(
            SubscriptionArn=current.arn, AttributeName=name, AttributeValue=value
        )
        if name == "RawMessageDelivery":
            state = replace(current, raw=value == "true")
        else:  # "{}" removes the policy (AWS's documented way): none is kept
            state = replace(current, filter=None if value == "{}" else value)
        slot.record(f"set {name}", state, start, time.monotonic())
        self.model.note(f"set {slot.queue}'s {name} to {value}")

    def recreate(self, kind: TopicKind) -> None:
        start = time.monotonic()
        self.sns.delete_topic(TopicArn=self.model.arns[kind])
        end = time.monotonic()
        with self.model.lock:
            for slot in self.model.slots_of(kind):
                if slot.current is not None:
                    slot.record("delete-topic", None, start, end)
            self.model.generation[kind] += 1
        assert self.create_topic(kind) == self.model.arns[kind]
        listed = self.sns.list_subscriptions_by_topic(TopicArn=self.model.arns[kind])
        assert listed["Subscriptions"] == [], listed
        self.model.note(f"deleted and created {kind} again")

    # ---- deliveries

    def drain(self) -> None:
        """Receive and delete until every queue had what it surely holds, and then nothing;
        then wait until every endpoint had every POST it is owed."""
        for (kind, name), slot in self.model.slots.items():
            if slot.protocol != "sqs":
                continue
            expected = [
                m
                for m in self.model.messages.values()
                if m.topic == kind
                and m.acknowledged
                and not m.delivered[name]
                and self.model.must_deliver(m, slot)
            ]
            deadline = time.monotonic() + DRAIN_SECONDS
            while True:
                waiting = [m for m in expected if not m.delivered[name]]
                got = self.sqs.receive_message(
                    QueueUrl=self.urls[name],
                    MaxNumberOfMessages=10,
                    WaitTimeSeconds=1 if waiting else 0,
                    AttributeNames=["All"],
                    MessageAttributeNames=["All"],
                ).get("Messages", [])
                for raw in got:
                    self.check_delivery(slot, raw)
                if got:
                    answer = self.sqs.delete_message_batch(
                        QueueUrl=self.urls[name],
                        Entries=[
                            {"Id": str(n), "ReceiptHandle": r["ReceiptHandle"]}
                            for n, r in enumerate(got)
                        ],
                    )
                    assert not answer.get("Failed"), answer
                    self.model.note(f"drained {len(got)} from {name}")
                elif not waiting:
                    break
                assert time.monotonic() < deadline, (
                    f"{name}: acknowledged publishes never delivered: {[m.body for m in waiting]}"
                )
        self.collect_posts()

    def collect_posts(self) -> None:
        """Check what the endpoints got; wait (bounded) until each had every POST it is owed:
        those of the acknowledged publishes it must get, and of the publishes a kill cut off
        that reached some queue or endpoint (they were committed, with the outbox rows)."""
        deadline = time.monotonic() + HTTP_SECONDS
        while True:
            for hook in self.hooks.values():
                for request in hook.unread():
                    self.check_post(self.model.slots[("standard", hook.name)], request)
            waiting = {
                slot.queue: [m.body for m in self.owed_posts(slot)]
                for slot in self.model.slots_of("standard", "http")
            }
            if not any(waiting.values()):
                return
            assert time.monotonic() < deadline, (
                f"publishes owed to HTTP endpoints not POSTed (answered 200) within "
                f"{HTTP_SECONDS} s: {waiting}; attempts at them: {self.attempts(waiting)}"
            )
            time.sleep(0.02)

    def owed_posts(self, slot: Slot) -> list[Message]:
        return [
            m
            for m in self.model.messages.values()
            if m.topic == slot.topic
            and not m.delivered[slot.queue]
            and (m.acknowledged or any(m.delivered.values()))
            and self.model.must_post(m, slot)
        ]

    def attempts(self, waiting: dict[str, list[str]]) -> dict[str, list[str]]:
        """What each endpoint answered to the POSTs of the messages it still waits for."""
        found: dict[str, list[str]] = {}
        for name, bodies in waiting.items():
            ids = {self.model.messages[b].message_id for b in bodies}
            found[name] = [
                f"{r.headers.get('x-amz-sns-message-id')}: {r.answered}"
                for r in self.hooks[name].endpoint.requests
                if r.headers.get("x-amz-sns-message-id") in ids
            ]
        return found

    def check_post(self, slot: Slot, request: Received) -> None:
        """One request an endpoint got (whatever it answered): a confirmation, or a POST of
        a publish made, that a subscription possibly in force while it ran delivers, as that
        subscription delivered (raw or enveloped, its ARN), with AWS's headers."""
        name = slot.queue
        headers = request.headers
        assert request.method == "POST", (name, request)
        assert request.target == urlsplit(self.hooks[name].url).path, (name, request)
        topic_arn = self.model.arns[slot.topic]
        kind = headers.get("x-amz-sns-message-type")
        if kind == "SubscriptionConfirmation":
            self.check_confirmation(request, topic_arn)
            return
        if kind == "UnsubscribeConfirmation":
            goodbye = request.envelope()
            assert goodbye["Type"] == kind, goodbye
            assert headers["x-amz-sns-topic-arn"] == goodbye["TopicArn"] == topic_arn, goodbye
            assert headers["x-amz-sns-subscription-arn"].startswith(topic_arn + ":"), headers
            check_signature(goodbye, self.certificate(goodbye["SigningCertURL"]))
            return
        assert kind == "Notification", (name, headers)
        raw = headers["x-amz-sns-rawdelivery"] == "true"
        assert headers["x-amz-sns-rawdelivery"] in ("true", "false"), headers
        body = request.body.decode()
        envelope = parse_envelope(body)
        assert (envelope is None) == raw, (name, headers, body)
        text = body if envelope is None else envelope["Message"]
        message, _, delivering = self.published(slot, text, "POSTed", " (and confirmed)")
        shaped = [s for s in delivering if s.raw == raw]
        assert shaped, f"{name}: {text!r} POSTed raw={raw}, subscriptions: {delivering}"
        if message.message_id is None:  # cut off by a kill: every copy has the same id
            message.message_id = headers["x-amz-sns-message-id"]
        assert headers["x-amz-sns-message-id"] == message.message_id, (text, headers)
        assert headers["x-amz-sns-topic-arn"] == topic_arn, (text, headers)
        assert headers["content-type"] == "text/plain; charset=UTF-8", (text, headers)
        arn = headers["x-amz-sns-subscription-arn"]
        arns = {s.arn for s in shaped}
        assert None in arns or arn in arns, f"{name}: {text!r} POSTed under {arn}, not {arns}"
        if envelope is not None:
            assert self.check_envelope(message, envelope, shaped) == arn, (text, envelope)
        if request.answered != "ok":
            return  # a failed attempt: the broker owes it still
        message.delivered[name] += 1
        message.forms[name].add("raw" if raw else arn)
        if message.delivered[name] > 1:
            self.model.note(f"{name}: {text!r} POSTed again")  # at least once

    def check_delivery(self, slot: Slot, raw: dict[str, Any]) -> None:
        name = slot.queue
        envelope = parse_envelope(raw["Body"])
        text = raw["Body"] if envelope is None else envelope["Message"]
        assert text not in self.model.phantoms, f"a deduplicated resend was delivered: {text!r}"
        message, fates, _ = self.published(slot, text, "delivered")
        live = [s for s in fates if s is not None]
        if envelope is None:
            assert any(s.raw for s in live), f"{name}: {text!r} raw, subscriptions: {fates}"
            attributes = sqs_attributes(raw)
            assert attributes == message.attributes, (text, attributes)
            form = "raw"
        else:
            assert any(not s.raw for s in live), f"{name}: {text!r} enveloped, {fates}"
            form = self.check_envelope(message, envelope, live)
            assert not raw.get("MessageAttributes"), raw
        if slot.fifo:
            system = raw["Attributes"]
            assert system["MessageGroupId"] == message.group, (text, system)
            assert system["MessageDeduplicationId"] == message.dedup, (text, system)
            self.check_group_order(slot, message)
        message.delivered[name] += 1
        message.forms[name].add(form)
        if message.delivered[name] > 1:
            # AWS allows a standard topic's deliveries to repeat (at least once), not FIFO's.
            assert not slot.fifo, f"{name}: {text!r} delivered twice"
            self.model.note(f"{name}: {text!r} delivered again")

    def published(
        self, slot: Slot, text: str, verb: str, condition: str = ""
    ) -> tuple[Message, list[State | None], list[State]]:
        """The published message ``text`` that ``slot`` got (by HTTP POST or from its queue),
        the subscription states possibly in force while it was published, and those of them
        that deliver it: at least one must."""
        name = slot.queue
        message = self.model.messages.get(text)
        assert message is not None, f"{name}: {verb} a message never published: {text!r}"
        assert message.topic == slot.topic, (name, text)
        fates = self.model.fates(message, slot)
        delivering = [s for s in fates if s is not None and s.delivers(message.attributes)]
        assert delivering, (
            f"{name}: {verb} {text!r}, which no subscription possibly in force{condition} "
            f"while it was published would deliver ({fates})"
        )
        return message, fates, delivering

    def check_envelope(self, message: Message, envelope: dict[str, Any], live: list[State]) -> str:
        """Check an envelope; return the SubscriptionArn its UnsubscribeURL names."""
        text = message.body
        assert envelope["Type"] == "Notification", envelope
        assert envelope["TopicArn"] == self.model.arns[message.topic], envelope
        assert TIMESTAMP.fullmatch(envelope["Timestamp"]), envelope
        if message.message_id is None:  # cut off by a kill: every copy has the same id
            message.message_id = envelope["MessageId"]
        assert envelope["MessageId"] == message.message_id, (text, envelope)
        assert envelope.get("MessageAttributes", {}) == envelope_attributes(message.attributes)
        if message.topic == "fifo":
            if message.sequence_number is None:
                message.sequence_number = envelope["SequenceNumber"]
            assert envelope["SequenceNumber"] == message.sequence_number, (text, envelope)
        else:
            assert "SequenceNumber" not in envelope, envelope
            assert envelope["SignatureVersion"] == "1", envelope
            check_signature(envelope, self.certificate(envelope["SigningCertURL"]))
        query: dict[str, list[str]] = parse_qs(urlsplit(envelope["UnsubscribeURL"]).query)
        assert query["Action"] == ["Unsubscribe"], envelope
        (arn,) = query["SubscriptionArn"]
        arns = {s.arn for s in live if not s.raw}
        assert None in arns or arn in arns, f"{text!r} delivered under {arn}, not {arns}"
        return arn

    def certificate(self, url: str) -> bytes:
        """The signing certificate, from this run (the URL names the run that published)."""
        if self._certificate is None:
            moved = urlsplit(url)._replace(netloc=urlsplit(self.endpoint).netloc).geturl()
            self._certificate = fetch(moved)
        return self._certificate

    def check_group_order(self, slot: Slot, message: Message) -> None:
        """No message of its group that this queue surely gets, published before it, is still
        to come; and none published after it came already."""
        for other in self.model.messages.values():
            if other.topic != "fifo" or other.group != message.group or other is message:
                continue
            if other.order < message.order:
                assert (
                    other.delivered[slot.queue]
                    or not other.acknowledged
                    or not self.model.must_deliver(other, slot)
                ), f"{slot.queue}: {message.body!r} delivered before {other.body!r}"
            else:
                assert not other.delivered[slot.queue], (
                    f"{slot.queue}: {message.body!r} delivered after {other.body!r}, "
                    "published after it"
                )

    def check_vouched(self, slot: Slot, actual: State | None) -> None:
        """A change a kill cut off that an acknowledged publish saw has survived the kill.

        A change is in memory and its commit queued in one trio step, before it is answered;
        an acknowledged publish's commit is durable and was queued after every change it saw
        (broker/sns.py, broker/fanout.py): commits complete in order.
        """
        history = slot.history
        change = history[-1]
        if change.end is None:
            reason = self.model.evidence(slot)
            after = change.after
            if reason is not None:
                assert same(after, actual), (
                    f"{slot.queue}: {change.what} -> {after}, cut off by the kill, was seen by "
                    f"an acknowledged publish ({reason}), but after the restart it is {actual}"
                )
                self.model.note(f"{slot.queue}: {change.what} vouched for by {reason}")

    def check_cut_off(self) -> None:
        """A publish a kill cut off went everywhere it was bound for, or nowhere: it is one
        commit (broker/fanout.py)."""
        for message in self.model.messages.values():
            if message.acknowledged or not any(message.delivered.values()):
                continue
            for slot in self.model.slots_of(message.topic):
                if self.model.owed(message, slot):
                    assert message.delivered[slot.queue], (
                        f"{message.body!r}, cut off by a kill, delivered to "
                        f"{dict(message.delivered)} but not to {slot.queue}"
                    )

    def finish(self) -> None:
        self.drain()
        for message in self.model.messages.values():
            if not message.acknowledged:
                continue
            for slot in self.model.slots_of(message.topic):
                if self.model.owed(message, slot):
                    assert message.delivered[slot.queue], (message.body, slot.queue)


# ---------------------------------------------------------------------- background clients


class Busy:
    """The background clients of one kill."""

    def __init__(self, runner: Runner, kill: Kill, number: int) -> None:
        self.runner = runner
        self.model = runner.model
        self.kill = kill
        self.number = number
        self.stop = threading.Event()
        self.workers: list[Worker] = []

    def start(self) -> None:
        """Start the clients; return once each has its answers (or has run out of work)."""
        for kind in self.kill.background:
            # Groups of their own per kind, so that send order is the order of the model.
            if kind == "standard":
                self.spawn(lambda client: self.publish_new(client, "standard", None))
            elif kind == "fifo":
                group = f"b{self.number}"
                self.spawn(lambda client, group=group: self.publish_new(client, "fifo", group))
            elif kind == "fifo-duplicates":
                shared = SharedPublishes(self.model, f"d{self.number}")
                for _ in range(2):
                    self.spawn(shared.stepper())
            else:
                self.spawn(self.churn)
        deadline = time.monotonic() + WARM_UP_SECONDS
        while not all(w.done or w.answers >= self.kill.acknowledged for w in self.workers):
            assert time.monotonic() < deadline, "the background clients got no answers"
            time.sleep(0.001)
        for worker in self.workers:
            assert worker.error is None, worker.error

    def spawn(self, step: Any) -> None:
        worker = Worker(own_sns_client(self.runner.endpoint, read_timeout=10), step, self.stop)
        self.workers.append(worker)
        worker.thread.start()

    def publish_new(self, client: Any, kind: TopicKind, group: str | None) -> bool:
        n = len(self.model.messages)
        attributes = attributes_for(COLOURS[n % 4], SIZES[n % 3], False, n)
        message = self.model.new_message(kind, attributes, group, label="bg")
        answer = client.publish(TopicArn=self.model.arns[kind], **publish_params(message))
        self.model.acknowledged(message, answer)
        return True

    def churn(self, client: Any) -> bool:
        """One change of the churn queue's subscription: subscribe (enveloped), filtered, raw,
        unfiltered (FilterPolicy "{}"), unsubscribed, and again. Each state has its own shape,
        which says what comes next."""
        slot = self.model.slots[CHURN]
        current = slot.current
        start = time.monotonic()
        if current is None:
            with self.model.lock:
                change = slot.record("subscribe", State(None, False, None), start, None)
            answer = client.subscribe(
                TopicArn=self.model.arns["standard"],
                Protocol="sqs",
                Endpoint=self.runner.queue_arns[CHURN[1]],
                ReturnSubscriptionArn=True,
            )
            with self.model.lock:
                change.after = State(answer["SubscriptionArn"], False, None)
                change.end = time.monotonic()
            return True
        assert current.arn is not None
        arn = current.arn
        shape = (current.raw, current.filter)
        if shape == (False, None):
            name, value = "FilterPolicy", POLICIES[0]
            after = State(arn, False, POLICIES[0])
        elif shape == (False, POLICIES[0]):
            name, value, after = "RawMessageDelivery", "true", State(arn, True, POLICIES[0])
        elif shape == (True, POLICIES[0]):
            name, value, after = "FilterPolicy", "{}", State(arn, True, None)
        else:
            with self.model.lock:
                change = slot.record("unsubscribe", None, start, None)
            client.unsubscribe(SubscriptionArn=arn)
            change.end = time.monotonic()
            return True
        with self.model.lock:
            change = slot.record(f"set {name}", after, start, None)
        client.set_subscription_attributes(
            SubscriptionArn=arn, AttributeName=name, AttributeValue=value
        )
        change.end = time.monotonic()
        return True

    def finish(self) -> None:
        answers = stop_workers(self.stop, self.workers)
        self.model.note(f"killed with {self.kill.background}: {answers} answers")


class SharedPublishes:
    """Two clients publishing the same deduplication ids (and bodies) in the same order, as a
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
                    self.messages.append(
                        self.model.new_message("fifo", {}, self.group, label="dup")
                    )
                message = self.messages[n]
            answer = client.publish(TopicArn=self.model.arns["fifo"], **publish_params(message))
            self.model.acknowledged(message, answer)
            return True

        return step


# ---------------------------------------------------------------------- the test


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    initial=initials,
    program=st.lists(segments, min_size=1, max_size=3),
    tail=st.lists(steps, max_size=10),
    flaky=flakiness,
)
def test_what_sns_acknowledged_survives_random_sigkills(
    initial: list[Initial | None], program: list[Segment], tail: list[Step], flaky: Flakiness
) -> None:
    model = Model(
        [Slot(kind, name) for kind, name in (*SQS_PAIRS, CHURN)]
        + [Slot(kind, name, "http") for kind, name in HTTP_PAIRS]
    )
    model.note(f"the flaky endpoint: {flaky}")
    queue_arns: dict[str, str] = {}  # name -> ARN (the same in every run)
    with (
        tempfile.TemporaryDirectory(prefix="wharf-sns-crash-") as tmp,
        Endpoint() as steady,
        Endpoint(behaviour_of=behaviour(flaky)) as failing,
    ):
        hooks = {HOOKS[0]: Hook(HOOKS[0], steady), HOOKS[1]: Hook(HOOKS[1], failing)}
        trio.run(
            run_with_kills,
            Path(tmp),
            program,
            tuple(tail),
            lambda endpoint: Runner(model, endpoint, queue_arns, initial, hooks),
            lambda: model.trace,
        )
