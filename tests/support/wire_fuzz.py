"""Fuzzing the broker's API listener from the outside: requests drawn from botocore's models.

:func:`calls` draws one operation of a botocore service model with, for each input member, an
omission, a value of the right type at its edges or a value of the wrong type. Queue URLs,
topic ARNs and the like are drawn as :class:`Ref` placeholders that :class:`Targets` resolves
when the request is sent, so that they name queues and topics that exist *then* (an earlier
example may have deleted the ones that existed when the example was drawn).
:func:`encode_call` turns a resolved call into a :class:`Wire` request (awsJson 1.0 or a
query-protocol form post) and :func:`garbage` draws raw-wire garbage.
:func:`check_answer` holds the answer to the project's rule: 200 or an AWS-shaped 4xx.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import http.client
import itertools
import json
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import quote, quote_plus, urlsplit

import botocore.model
import botocore.parsers
from hypothesis import strategies as st

from tests.support.aws_models import botocore_model, legacy_sqs_query_model_document
from tests.support.sns import queue_arn

Protocol = Literal["json", "query"]
Service = Literal["sqs", "sns"]
# How a query request travels: a form post, a GET query string, or posted to the queue's URL
# (without QueueUrl), as older SDKs do.
Via = Literal["body", "query-string", "path"]
JSON_CONTENT_TYPE = "application/x-amz-json-1.0"
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded; charset=utf-8"
SQS_NAMESPACE = "http://queue.amazonaws.com/doc/2012-11-05/"
SNS_NAMESPACE = "http://sns.amazonaws.com/doc/2010-03-31/"
API_VERSIONS = {"sqs": "2012-11-05", "sns": "2010-03-31"}
TIMEOUT_SECONDS = 10.0
# The refusal the HTTP server sends, in AWS's front-end shape, for a body over the limit
# (broker.refusals): plain text, not either protocol's error.
TOO_LARGE = 413
HEAD_TOO_LARGE = 431
# The actions SQS and SNS both have: an unsigned request for one names no service.
SHARED_ACTIONS = frozenset({"AddPermission", "RemovePermission"})
# Longer query strings go in a form post: the request line has a limit of its own.
MAX_QUERY_STRING = 8000


@functools.cache
def service_model(service: Service, protocol: Protocol) -> botocore.model.ServiceModel:
    """botocore's model of ``service`` in ``protocol`` (SQS query: the legacy model)."""
    if service == "sqs" and protocol == "query":
        return botocore.model.ServiceModel(legacy_sqs_query_model_document(), "sqs")
    model = botocore_model(service)
    assert model.protocol == protocol, (service, model.protocol)
    return model


# ---------------------------------------------------------------------- drawn requests


@dataclass(frozen=True)
class Ref:
    """A placeholder for a live name, resolved at send time (see :class:`Targets`).

    ``slot`` picks the fixture; the last slot of each kind names one that does not exist.
    """

    kind: Literal[
        "queue_url", "queue_name", "queue_arn", "topic_arn", "subscription_arn", "receipt_handle"
    ]
    slot: int


QUEUE_SLOTS = 4  # 0, 1: standard queues; 2: a FIFO queue; 3: a queue that does not exist
TOPIC_SLOTS = 2  # 0: a topic; 1: one that does not exist
SUBSCRIPTION_SLOTS = 2  # 0: topic 0 -> queue 0; 1: one that does not exist
RECEIPT_SLOTS = 2  # 0: a fresh receipt handle of queue 0; 1: a well-formed-looking stale one


@dataclass(frozen=True)
class Call:
    """One drawn operation: the service, its wire protocol, and the (symbolic) input."""

    service: Service
    protocol: Protocol
    operation: str
    params: dict[str, Any]
    via: Via = "body"


@dataclass(frozen=True)
class Wire:
    """One HTTP request as it goes on the wire; ``protocol`` is what its errors should be."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    protocol: Protocol
    service: Service
    operation: str | None = None

    def describe(self, limit: int = 600) -> str:
        """The request, for a reproduction: method, target, headers and (the start of) body."""
        body = self.body if len(self.body) <= limit else self.body[:limit] + b"..."
        lines = [f"{self.method} {self.target}"]
        lines += [f"{name}: {value}" for name, value in self.headers]
        lines.append(f"body ({len(self.body)} bytes): {body!r}")
        return "\n".join(lines)


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    elapsed: float

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


# ---------------------------------------------------------------------- value strategies

LONG_LENGTHS = (81, 256, 1025, 262_145)
SURROGATES = ("\ud800", "a\udfffb", "\udc00\ud800")
EDGE_TEXT = (
    "",
    " ",
    "\x00",
    "\t\r\n",
    "<&>\"'",
    "]]>",
    "%00%ff",
    "é",
    "😀",
    "\u2028",
    "\ufeff",
    "\uffff",
    "true",
    "TRUE",
    "false",
    "yes",
    "0",
    "-1",
    "1.5",
    "1e3",
    "99999999999999999999",
    "-99999999999999999999",
    "null",
    "All",
    "*",
    "arn:aws:sqs:us-east-1:000000000000:",
    "arn:aws:sns:us-east-1:000000000000:x:y:z",
    "http://",
    "AAAA",
    "!!!",
)
# JSON text for the members that carry JSON in a string (Policy, RedrivePolicy, FilterPolicy,
# DeliveryPolicy, MessageStructure=json messages).
JSON_TEXT = (
    "{}",
    "[]",
    "{",
    '{"a":',
    "null",
    '{"Version":"2012-10-17","Statement":[{}]}',
    '{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Principal":"*","Action":"*"}]}',
    '{"maxReceiveCount":"x","deadLetterTargetArn":1}',
    '{"maxReceiveCount":0,"deadLetterTargetArn":"arn:aws:sqs:us-east-1:000000000000:nope"}',
    '{"redrivePermission":"byQueue","sourceQueueArns":[]}',
    '{"default":"x"}',
    '{"a":[{"numeric":[">",1e400]}]}',
    '{"a":[{"prefix":{}}]}',
    '{"a":{"b":{"c":{"d":{"e":{"f":["x"]}}}}}}',
    '{"healthyRetryPolicy":{"numRetries":-1}}',
)
# Past the parsers' recursion limits (about 1,000): the broker must refuse such nesting with a
# 400 in the protocol's shape.
MAX_JSON_DEPTH = 3_000


def nested_json(depth: int, kind: str = "array") -> str:
    """JSON text ``depth`` arrays (or objects) deep."""
    if kind == "array":
        return "[" * depth + "1" + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


deep_json_text = st.builds(
    nested_json, st.integers(1, MAX_JSON_DEPTH), st.sampled_from(("array", "object"))
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)

edge_strings: st.SearchStrategy[str] = st.one_of(
    st.sampled_from(EDGE_TEXT),
    st.sampled_from(SURROGATES),
    st.sampled_from(LONG_LENGTHS).flatmap(
        lambda n: st.sampled_from(("x" * n, "é" * (n // 2 + 1), "<" * n))
    ),
    st.text(max_size=12),
    st.sampled_from(JSON_TEXT),
    json_values.map(json.dumps),
    deep_json_text,
)
edge_integers: st.SearchStrategy[int] = st.one_of(
    st.sampled_from(
        (0, -1, 1, 10, 11, 21, 901, 43_201, 2**31 - 1, 2**31, -(2**31) - 1, 2**63, 2**64, 10**30)
    ),
    st.integers(-1000, 1000),
)
# A ReceiveMessage that waits holds its answer for up to 20 s: only waits that do not.
wait_seconds: st.SearchStrategy[int] = st.sampled_from((0, -1, 21, 2**31, 2**63, 10**30))
wrong_values: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from((1.5, -0.0, 1e308, float("nan"), float("inf"))),
    st.text(max_size=8),
    st.lists(st.integers() | st.text(max_size=4), max_size=3),
    st.dictionaries(st.text(max_size=4), json_values, max_size=3),
    st.just({"a": {"b": {"c": [1, {"d": None}]}}}),
)

# Attribute names the SNS model leaves as plain strings (SQS's are enums in the model).
SNS_ATTRIBUTE_NAMES = (
    "Policy",
    "DisplayName",
    "DeliveryPolicy",
    "FilterPolicy",
    "FilterPolicyScope",
    "RawMessageDelivery",
    "RedrivePolicy",
    "FifoTopic",
    "ContentBasedDeduplication",
    "KmsMasterKeyId",
    "SignatureVersion",
    "TracingConfig",
    "SubscriptionRoleArn",
    "ArchivePolicy",
)
# Members whose values name live things, or whose valid values a fuzzer would not guess.
REFS: dict[str, st.SearchStrategy[Any]] = {
    "QueueUrl": st.builds(Ref, st.just("queue_url"), st.integers(0, QUEUE_SLOTS - 1)),
    "QueueName": st.builds(Ref, st.just("queue_name"), st.integers(0, QUEUE_SLOTS - 1)),
    "QueueNamePrefix": st.builds(Ref, st.just("queue_name"), st.integers(0, QUEUE_SLOTS - 1)),
    "SourceArn": st.builds(Ref, st.just("queue_arn"), st.integers(0, QUEUE_SLOTS - 1)),
    "DestinationArn": st.builds(Ref, st.just("queue_arn"), st.integers(0, QUEUE_SLOTS - 1)),
    "ReceiptHandle": st.builds(Ref, st.just("receipt_handle"), st.integers(0, RECEIPT_SLOTS - 1)),
    "TopicArn": st.builds(Ref, st.just("topic_arn"), st.sampled_from((0, 0, 0, TOPIC_SLOTS - 1))),
    "TargetArn": st.builds(Ref, st.just("topic_arn"), st.integers(0, TOPIC_SLOTS - 1)),
    "ResourceArn": st.builds(Ref, st.just("topic_arn"), st.integers(0, TOPIC_SLOTS - 1)),
    "SubscriptionArn": st.builds(
        Ref, st.just("subscription_arn"), st.integers(0, SUBSCRIPTION_SLOTS - 1)
    ),
    "Endpoint": st.builds(Ref, st.just("queue_arn"), st.integers(0, QUEUE_SLOTS - 1)),
    "Protocol": st.sampled_from(("sqs",) * 6 + ("SQS", "http", "https", "email", "sms", "")),
    "AttributeName": st.sampled_from(SNS_ATTRIBUTE_NAMES),
    "AWSAccountIds": st.lists(st.sampled_from(("000000000000", "123456789012", "x")), max_size=2),
    "AWSAccountId": st.lists(st.sampled_from(("000000000000", "123456789012", "x")), max_size=2),
    "Actions": st.lists(st.sampled_from(("SendMessage", "*", "Publish", "Nope")), max_size=2),
    "ActionName": st.lists(st.sampled_from(("SendMessage", "*", "Publish", "Nope")), max_size=2),
    "DataType": st.sampled_from(("String", "Number", "Binary", "String.x", "Number.1", "")),
    "MessageStructure": st.sampled_from(("json", "JSON", "")),
}


plausible_text = st.text(alphabet="abcxyzABC019-_", min_size=1, max_size=10) | st.sampled_from(
    (
        "a",
        "0",
        "1",
        "30",
        "60",
        "true",
        "false",
        "String",
        "hello world",
        "{}",
        '{"default":"x"}',
        '{"a":["b"]}',
        '{"http":{"defaultHealthyRetryPolicy":{"numRetries":3}}}',
    )
)
# Optional members that most calls need all the same: usually there.
ESSENTIAL = frozenset({"TopicArn", "Endpoint"})
# Members that exclude others or fit few queues and topics: usually left out.
RARE = frozenset(
    {"TargetArn", "PhoneNumber", "MessageStructure", "MessageDeduplicationId", "MessageGroupId"}
)


def _plausible(name: str, shape: botocore.model.Shape, depth: int) -> st.SearchStrategy[Any]:
    """Values a client could well send: right types, ordinary sizes, live names."""
    if name == "WaitTimeSeconds":
        return st.just(0)
    if name in REFS:
        return REFS[name]
    kind = shape.type_name
    if kind == "string":
        enum = getattr(shape, "enum", None) or []
        return st.sampled_from(enum) if enum else plausible_text
    if kind in ("integer", "long"):
        return st.integers(0, 10)
    if kind == "boolean":
        return st.booleans()
    if kind == "blob":
        return st.binary(min_size=1, max_size=8)
    if kind == "structure":
        assert isinstance(shape, botocore.model.StructureShape)
        required = set(shape.required_members)
        members = {
            member: _plausible(member, member_shape, depth + 1)
            for member, member_shape in shape.members.items()
        }
        return st.fixed_dictionaries(
            {member: value for member, value in members.items() if member in required},
            optional={member: value for member, value in members.items() if member not in required},
        )
    if kind == "list":
        assert isinstance(shape, botocore.model.ListShape)
        return st.lists(_plausible("", shape.member, depth + 1), min_size=1, max_size=3)
    if kind == "map":
        assert isinstance(shape, botocore.model.MapShape)
        keys = _plausible("", shape.key, depth + 1)
        if "Attribute" in shape.name and not getattr(shape.key, "enum", None):
            keys = st.sampled_from(SNS_ATTRIBUTE_NAMES) | keys
        return st.dictionaries(keys, _plausible("", shape.value, depth + 1), min_size=1, max_size=3)
    raise AssertionError(f"no strategy for {kind} ({shape.name})")


def _edgy(name: str, shape: botocore.model.Shape, depth: int) -> st.SearchStrategy[Any]:
    """Values of the right type at the edges (containers: of mixed members)."""
    if name == "WaitTimeSeconds":
        return wait_seconds
    kind = shape.type_name
    if kind == "string":
        enum = getattr(shape, "enum", None) or []
        return st.one_of(st.sampled_from(enum), edge_strings) if enum else edge_strings
    if kind in ("integer", "long"):
        return edge_integers
    if kind == "boolean":
        return st.booleans()
    if kind == "blob":
        return st.binary(max_size=16) | st.sampled_from((b"", b"\x00" * 300_000))
    if kind == "structure":
        assert isinstance(shape, botocore.model.StructureShape)
        if depth > 4:
            return st.just({})
        return st.fixed_dictionaries(
            {},
            optional={
                member: mixed(member, member_shape, depth + 1)
                for member, member_shape in shape.members.items()
            },
        )
    if kind == "list":
        assert isinstance(shape, botocore.model.ListShape)
        item = mixed("", shape.member, depth + 1)
        return st.lists(item, max_size=3) | st.lists(item, min_size=11, max_size=11)
    if kind == "map":
        assert isinstance(shape, botocore.model.MapShape)
        return st.dictionaries(
            _edgy("", shape.key, depth + 1) | _plausible("", shape.key, depth + 1),
            mixed("", shape.value, depth + 1),
            max_size=3,
        )
    raise AssertionError(f"no strategy for {kind} ({shape.name})")


def mixed(name: str, shape: botocore.model.Shape, depth: int = 0) -> st.SearchStrategy[Any]:
    """A member's value: mostly plausible, sometimes at the edges, sometimes of a wrong type."""
    plausible = _plausible(name, shape, depth)
    return st.one_of(plausible, plausible, _edgy(name, shape, depth), wrong_values)


@functools.cache
def _members(
    service: Service, protocol: Protocol, operation: str
) -> tuple[tuple[str, bool, tuple[st.SearchStrategy[Any], ...]], ...]:
    shape = service_model(service, protocol).operation_model(operation).input_shape
    if shape is None:
        return ()
    required = set(shape.required_members)
    return tuple(
        (
            name,
            name in required,
            (_plausible(name, member, 0), _edgy(name, member, 0), wrong_values),
        )
        for name, member in shape.members.items()
    )


# SNS actions out of Wharf's scope (mobile push, SMS, data protection): each is one refusal.
_OUT_OF_SCOPE = ("Platform", "Endpoint", "SMS", "PhoneNumber", "DataProtection", "Origination")


@functools.cache
def _operations(service: Service, protocol: Protocol) -> list[str]:
    """The operations to draw from: each out-of-scope one appears once, the rest four times."""
    names = sorted(service_model(service, protocol).operation_names)
    return [
        name
        for name in names
        for _ in range(1 if any(part in name for part in _OUT_OF_SCOPE) else 4)
    ]


@st.composite
def calls(draw: st.DrawFn, service: Service, protocol: Protocol) -> Call:
    """One operation of ``service`` with a drawn input.

    A call is clean (every member plausible), a little noisy or very noisy: in a noisy call
    each member may be omitted (even a required one), at its edges or of a wrong type. Most
    calls are clean or a little noisy, so that they get past the first check.
    """
    operation = draw(st.sampled_from(_operations(service, protocol)))
    noise = draw(st.sampled_from((0, 1, 1, 2)))
    params: dict[str, Any] = {}
    for name, required, (plausible, edgy, wrong) in _members(service, protocol, operation):
        omitted_below = 0 if required else 1 if name in ESSENTIAL else 10 if name in RARE else 5
        if draw(st.integers(0, 11)) < omitted_below + noise:
            continue
        flavour = draw(st.integers(0, 11))
        if noise == 0 or flavour < 9:
            params[name] = draw(plausible)
        elif flavour < 11 or noise == 1:
            params[name] = draw(edgy)
        else:
            params[name] = draw(wrong)
    via: Via = "body"
    if protocol == "query":
        via = draw(st.sampled_from(("body", "body", "body", "body", "query-string", "path")))
    return Call(service, protocol, operation, params, via)


# ---------------------------------------------------------------------- live names


@dataclass
class Targets:
    """The queues, topic and subscription that :class:`Ref`\\s name, recreated on demand.

    ``sqs`` and ``sns`` are boto3 clients of the broker. A fixture that an example may have
    changed for later examples (deleted it, set a policy or a long-poll wait on it) is
    *retired*: the next use of its slot makes a new one under a new name.
    """

    sqs: Any
    sns: Any
    prefix: str
    queues: dict[int, str] = field(default_factory=dict)
    topics: dict[int, str] = field(default_factory=dict)
    subscriptions: dict[int, str] = field(default_factory=dict)
    _names: Any = field(default_factory=itertools.count)

    def _name(self, kind: str) -> str:
        return f"{self.prefix}-{kind}-{next(self._names)}"

    def queue_url(self, slot: int) -> str:
        if slot == QUEUE_SLOTS - 1:
            return self.missing_queue_url
        if slot not in self.queues:
            if slot == 2:
                name = self._name("fifo") + ".fifo"
                attributes = {"FifoQueue": "true", "ContentBasedDeduplication": "true"}
            else:
                name, attributes = self._name("queue"), {}
            self.queues[slot] = self.sqs.create_queue(QueueName=name, Attributes=attributes)[
                "QueueUrl"
            ]
        return self.queues[slot]

    @property
    def missing_queue_url(self) -> str:
        """A new name each time: a CreateQueue of the last one may have made it exist."""
        endpoint = self.sqs.meta.endpoint_url
        return f"{endpoint}/000000000000/{self._name('missing')}"

    def resolve(self, ref: Ref) -> str:
        slot = ref.slot
        if ref.kind == "queue_url":
            return self.queue_url(slot)
        if ref.kind == "queue_name":
            return self.queue_url(slot).rsplit("/", 1)[1]
        if ref.kind == "queue_arn":
            if slot == QUEUE_SLOTS - 1:
                return f"arn:aws:sqs:us-east-1:000000000000:{self._name('missing')}"
            return queue_arn(self.sqs, self.queue_url(slot))
        if ref.kind == "topic_arn":
            return self.topic_arn(slot)
        if ref.kind == "subscription_arn":
            if slot == SUBSCRIPTION_SLOTS - 1:
                return self.topic_arn(0) + ":00000000-0000-4000-8000-000000000000"
            if slot not in self.subscriptions:
                self.subscriptions[slot] = self.sns.subscribe(
                    TopicArn=self.topic_arn(0),
                    Protocol="sqs",
                    Endpoint=queue_arn(self.sqs, self.queue_url(0)),
                    ReturnSubscriptionArn=True,
                )["SubscriptionArn"]
            return self.subscriptions[slot]
        if ref.kind == "receipt_handle":
            if slot == RECEIPT_SLOTS - 1:
                return base64.b64encode(b"wharf-fuzz-stale-receipt-handle" * 3).decode()
            url = self.queue_url(0)
            self.sqs.send_message(QueueUrl=url, MessageBody="for a receipt handle")
            received = self.sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1)
            assert received.get("Messages"), f"no message in {url} for a receipt handle"
            handle: str = received["Messages"][0]["ReceiptHandle"]
            return handle
        raise AssertionError(ref)

    def topic_arn(self, slot: int) -> str:
        if slot == TOPIC_SLOTS - 1:
            return f"arn:aws:sns:us-east-1:000000000000:{self._name('missing')}"
        if slot not in self.topics:
            self.topics[slot] = self.sns.create_topic(Name=self._name("topic"))["TopicArn"]
        return self.topics[slot]

    def retire(self, refs: set[Ref]) -> None:
        """Forget the fixtures ``refs`` name (and what depends on them): new ones next time."""
        for ref in refs:
            if ref.kind.startswith("queue"):
                self.queues.pop(ref.slot, None)
                if ref.slot == 0:
                    self.subscriptions.clear()
            elif ref.kind == "topic_arn":
                self.topics.pop(ref.slot, None)
                self.subscriptions.clear()
            elif ref.kind == "subscription_arn":
                self.subscriptions.pop(ref.slot, None)

    def resolved(self, value: Any, refs: set[Ref]) -> Any:
        """``value`` with every :class:`Ref` replaced by a live name (collected in ``refs``)."""
        if isinstance(value, Ref):
            refs.add(value)
            return self.resolve(value)
        if isinstance(value, dict):
            return {key: self.resolved(item, refs) for key, item in value.items()}
        if isinstance(value, list):
            return [self.resolved(item, refs) for item in value]
        return value


# Actions after whose success the fixtures the request named are retired.
CHANGING_ACTIONS = frozenset(
    {
        "AddPermission",
        "CreateTopic",
        "DeleteQueue",
        "DeleteTopic",
        "PurgeQueue",
        "RemovePermission",
        "SetQueueAttributes",
        "SetSubscriptionAttributes",
        "SetTopicAttributes",
        "StartMessageMoveTask",
        "Unsubscribe",
    }
)


# ---------------------------------------------------------------------- encoding


def _json_ready(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_ready(item) for item in value]
    return value


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if value is None:
        return ""
    return str(value)


def _generic(value: Any, prefix: str, out: list[tuple[str, str]]) -> None:
    """A value that does not fit its shape, flattened by its own type."""
    if isinstance(value, dict | list) and value:
        items = value.items() if isinstance(value, dict) else enumerate(value, 1)
        for key, item in items:
            _generic(item, f"{prefix}.{key}" if prefix else str(key), out)
    else:
        out.append((prefix, "" if isinstance(value, dict | list) else _text(value)))


def flatten(
    shape: botocore.model.Shape | None, value: Any, prefix: str, out: list[tuple[str, str]]
) -> None:
    """Flatten ``value`` into query fields as botocore's ``QuerySerializer`` does."""
    kind = shape.type_name if shape is not None else None
    if kind == "structure" and isinstance(value, dict):
        assert isinstance(shape, botocore.model.StructureShape)
        for name, item in value.items():
            member = shape.members.get(name)
            wire = member.serialization.get("name", name) if member is not None else name
            flatten(member, item, f"{prefix}.{wire}" if prefix else wire, out)
    elif kind == "list" and isinstance(value, list):
        assert isinstance(shape, botocore.model.ListShape)
        if not value:
            out.append((prefix, ""))
            return
        if shape.serialization.get("flattened"):
            list_prefix = prefix
            if shape.member.serialization.get("name"):
                list_prefix = ".".join(
                    [*prefix.split(".")[:-1], shape.member.serialization["name"]]
                )
        else:
            list_prefix = f"{prefix}.{shape.member.serialization.get('name', 'member')}"
        for index, item in enumerate(value, 1):
            flatten(shape.member, item, f"{list_prefix}.{index}", out)
    elif kind == "map" and isinstance(value, dict):
        assert isinstance(shape, botocore.model.MapShape)
        base = prefix if shape.serialization.get("flattened") else f"{prefix}.entry"
        key_name = shape.key.serialization.get("name", "key")
        value_name = shape.value.serialization.get("name", "value")
        for index, (key, item) in enumerate(value.items(), 1):
            flatten(shape.key, key, f"{base}.{index}.{key_name}", out)
            flatten(shape.value, item, f"{base}.{index}.{value_name}", out)
    elif kind in ("string", "integer", "long", "boolean", "blob") and not isinstance(
        value, dict | list
    ):
        out.append((prefix, _text(value)))
    else:
        _generic(value, prefix, out)


def _quote(text: str) -> str:
    return quote_plus(text.encode("utf-8", "surrogatepass"), safe="")


def form(fields: list[tuple[str, str]]) -> bytes:
    """Form-encode ``fields`` (lone surrogates travel as the bytes Python would give them)."""
    return "&".join(f"{_quote(key)}={_quote(value)}" for key, value in fields).encode("ascii")


def encode_call(call: Call, params: dict[str, Any]) -> Wire:
    """The HTTP request for ``call`` with its resolved ``params``."""
    if call.protocol == "json":
        body = json.dumps(_json_ready(params), ensure_ascii=True).encode("ascii")
        headers = (
            ("Content-Type", JSON_CONTENT_TYPE),
            ("X-Amz-Target", f"AmazonSQS.{call.operation}"),
        )
        return Wire("POST", "/", headers, body, "json", call.service, call.operation)
    model = service_model(call.service, call.protocol)
    path = "/"
    queue_url = params.get("QueueUrl")
    if call.via == "path" and isinstance(queue_url, str) and queue_url.startswith("http://"):
        with contextlib.suppress(ValueError):  # "http://[": no path to post to
            path = urlsplit(queue_url).path or "/"
        params = {name: value for name, value in params.items() if name != "QueueUrl"}
    fields = [("Action", call.operation), ("Version", API_VERSIONS[call.service])]
    flatten(model.operation_model(call.operation).input_shape, params, "", fields)
    encoded = form(fields)
    if call.via == "query-string" and len(encoded) < MAX_QUERY_STRING:
        target = f"{path}?{encoded.decode('ascii')}"
        return Wire("GET", target, (), b"", "query", call.service, call.operation)
    form_headers: tuple[tuple[str, str], ...] = (("Content-Type", FORM_CONTENT_TYPE),)
    return Wire("POST", path, form_headers, encoded, "query", call.service, call.operation)


# ---------------------------------------------------------------------- raw-wire garbage

_QUEUE_PATH = "/000000000000/wharf-fuzz-garbage"
_json_headers = st.sampled_from(
    (
        (("Content-Type", JSON_CONTENT_TYPE), ("X-Amz-Target", "AmazonSQS.ListQueues")),
        (("Content-Type", JSON_CONTENT_TYPE), ("X-Amz-Target", "AmazonSQS.SendMessage")),
        (("Content-Type", JSON_CONTENT_TYPE), ("X-Amz-Target", "AmazonSQS.SendMessageBatch")),
        (("Content-Type", "text/plain"), ("X-Amz-Target", "AmazonSQS.ListQueues")),
        (("Content-Type", FORM_CONTENT_TYPE), ("X-Amz-Target", "AmazonSQS.CreateQueue")),
        (("X-Amz-Target", "AmazonSQS.GetQueueUrl"),),
    )
)
_targets = st.sampled_from(
    (
        "",
        "AmazonSQS",
        "AmazonSQS.",
        "AmazonSQS.Nope",
        "AmazonSQS.listqueues",
        "AmazonSQS.ListQueues.Extra",
        "AmazonSNS.Publish",
        "amazonsqs.ListQueues",
        " AmazonSQS.ListQueues ",
        "AmazonSQS.__init__",
        "AmazonSQS.ListQueues\u00e9",
        "AmazonSQS." + "x" * 4000,
    )
)
_bad_json = st.one_of(
    st.sampled_from(
        (
            b"{",
            b'{"QueueUrl":',
            b"[]",
            b'"x"',
            b"1",
            b"null",
            b"true",
            b"NaN",
            b"\xef\xbb\xbf{}",
            b"{}garbage",
            b'{"QueueName":"a","QueueName":{}}',
            b'{"QueueName":"\\ud800"}',
            b'{"QueueName":"\\u0000"}',
            b'{"MaxResults":1e400}',
            b'{"MaxResults":1.0}',
            b'{"MaxResults":123456789012345678901234567890}',
            b"\xff\xfe{\x00}\x00",
            b'{"a":1}' * 1000,
            b" " * 10000,
        )
    ),
    st.binary(max_size=64),
    json_values.map(lambda v: json.dumps(v).encode()),
)
_form_keys = st.sampled_from(
    (
        "QueueName",
        "QueueUrl",
        "MaxResults",
        "Attribute.1.Name",
        "Attribute.1.Value",
        "Attribute.Name",
        "AttributeName",
        "AttributeName.1",
        "SendMessageBatchRequestEntry.1.Id",
        "SendMessageBatchRequestEntry.99999.Id",
        "SendMessageBatchRequestEntry.999999.MessageBody",
        "SendMessageBatchRequestEntry.9999999.Id",
        "SendMessageBatchRequestEntry.0.Id",
        "SendMessageBatchRequestEntry.01.Id",
        "SendMessageBatchRequestEntry.-1.Id",
        "Entries.member.99999.Id",
        "MessageAttribute.1.Value.StringListValue.99999",
        "MessageAttribute.1.Name",
        "MessageAttribute.1.Value.DataType",
        "MessageAttributes.entry.1.Value.DataType",
        "Tag.1.Key",
        "Tags.member.1.Key",
        "MessageBody",
        "Message",
        "TopicArn",
        "Name",
        "Attributes.entry.1.key",
        "Attributes.entry.1.value",
        "PublishBatchRequestEntries.member.99999.Id",
        "",
        ".",
        "..",
        "a" + ".a" * 2000,
        "Attribute." + "1." * 500 + "Name",
    )
)
_form_values = st.one_of(
    st.sampled_from(("", "1", "x", "%", "%Z", "%zz", "%FF", "%C3", "%00", "%ED%A0%80", "+", "=")),
    st.text(max_size=8),
)
_actions = st.sampled_from(
    (
        "ListQueues",
        "CreateQueue",
        "SendMessage",
        "SendMessageBatch",
        "SetQueueAttributes",
        "TagQueue",
        "Publish",
        "PublishBatch",
        "CreateTopic",
        "Subscribe",
        "AddPermission",
        "Nope",
        "",
        "listqueues",
        "CreatePlatformApplication",
    )
)


@st.composite
def _raw_form(draw: st.DrawFn) -> str:
    """A form body or query string, percent-encoding and all, written by hand."""
    parts = []
    if draw(st.booleans()):
        parts.append(f"Action={draw(_actions)}")
    for _ in range(draw(st.integers(0, 5))):
        key, value = draw(_form_keys), draw(_form_values)
        parts.append(f"{key}={value}" if draw(st.integers(0, 5)) else key)
        if draw(st.integers(0, 4)) == 0:
            parts.append(parts[-1])  # a duplicate key
    if draw(st.integers(0, 4)) == 0:
        parts.insert(draw(st.integers(0, len(parts))), f"Action={draw(_actions)}")
    return "&".join(parts)


@st.composite
def _deep(draw: st.DrawFn, limit: int) -> bytes:
    text = nested_json(draw(st.integers(1, limit)), draw(st.sampled_from(("array", "object"))))
    return draw(st.sampled_from((text, '{"QueueName":' + text + "}"))).encode()


def _quote_query(text: str) -> str:
    # Only what a request line cannot carry: the percent signs, good or bad, stay as drawn.
    return quote(text.encode("utf-8", "surrogatepass"), safe="&=%+./-_~")


def garbage() -> st.SearchStrategy[Wire]:
    """Raw-wire garbage: bad JSON, bad targets, content types, forms, indexes and nesting.

    JSON nesting goes up to :data:`MAX_JSON_DEPTH` levels.
    """
    json_bodies = st.builds(
        lambda headers, body: Wire("POST", "/", headers, body, "json", "sqs"),
        _json_headers,
        _bad_json | _deep(MAX_JSON_DEPTH),
    )
    json_targets = st.builds(
        lambda target, body, twice: Wire(
            "POST",
            "/",
            (("Content-Type", JSON_CONTENT_TYPE), ("X-Amz-Target", target))
            + ((("X-Amz-Target", "AmazonSQS.ListQueues"),) if twice else ()),
            body,
            "json",
            "sqs",
        ),
        _targets,
        st.sampled_from((b"", b"{}", b"Action=ListQueues")),
        st.booleans(),
    )
    content_types = st.sampled_from(
        (
            FORM_CONTENT_TYPE,
            "application/x-www-form-urlencoded; charset=latin-1",
            "application/json",
            "text/xml",
            "multipart/form-data",
            "",
        )
    )
    forms = st.builds(
        lambda method, path, content_type, text, in_query: Wire(
            method,
            path + ("?" + _quote_query(text) if in_query else ""),
            (("Content-Type", content_type),) if content_type else (),
            b"" if in_query else text.encode("utf-8", "surrogatepass"),
            "query",
            "sqs",
        ),
        st.sampled_from(("POST", "GET", "PUT", "DELETE")),
        st.sampled_from(("/", _QUEUE_PATH, "/000000000000/", "//", "/a/b/c/d", "/%ff")),
        content_types,
        _raw_form(),
        st.booleans(),
    )
    return st.one_of(json_bodies, json_targets, forms)


# ---------------------------------------------------------------------- sending and checking


def send(address: tuple[str, int], request: Wire) -> Answer:
    """Send ``request`` on a new connection and read the whole answer (timeouts on)."""
    started = time.monotonic()
    connection = http.client.HTTPConnection(*address, timeout=TIMEOUT_SECONDS)
    try:
        connection.putrequest(request.method, request.target, skip_accept_encoding=True)
        for name, value in request.headers:
            connection.putheader(name, value.encode("latin-1", "replace"))
        connection.putheader("Content-Length", str(len(request.body)))
        connection.endheaders(request.body)
        response = connection.getresponse()
        body = response.read()
        return Answer(response.status, response.getheaders(), body, time.monotonic() - started)
    finally:
        connection.close()


def _parser_output(request: Wire) -> botocore.model.Shape | None:
    if request.operation is None:
        return None
    model = service_model(request.service, request.protocol)
    output: botocore.model.Shape | None = model.operation_model(request.operation).output_shape
    return output


def check_answer(request: Wire, answer: Answer) -> dict[str, Any]:
    """Assert the project's rule for ``answer``; returns what botocore's parser made of it."""
    where = (
        f"\n--- request\n{request.describe()}\n--- answer {answer.status}\n{answer.body[:600]!r}"
    )
    assert answer.elapsed < TIMEOUT_SECONDS, f"answered after {answer.elapsed:.1f} s{where}"
    assert answer.status == 200 or 400 <= answer.status < 500, f"status {answer.status}{where}"
    if answer.status == TOO_LARGE:
        assert answer.body.startswith(b"HTTP content length exceeded"), where
        return {}
    headers = {name.lower(): value for name, value in answer.headers}
    raw = {"status_code": answer.status, "headers": headers, "body": answer.body}
    parser = botocore.parsers.create_parser(request.protocol)
    if answer.status == 200:
        if request.operation is None:
            return {}
        try:
            parsed: dict[str, Any] = parser.parse(raw, _parser_output(request))
        except Exception as exc:  # a success botocore cannot read is a broken answer
            raise AssertionError(f"botocore cannot parse the success: {exc!r}{where}") from exc
        return parsed
    if answer.status == HEAD_TOO_LARGE and (answer.header("content-type") or "").startswith(
        "text/xml"
    ):
        # The head was not read whole: when X-Amz-Target was not among what was read, nothing
        # told the broker the request's protocol, and the error comes in the query protocol's
        # shape, the default (broker/refusals.py).
        request = replace(request, protocol="query")
        parser = botocore.parsers.create_parser("query")
    if request.method != "HEAD":
        if request.protocol == "json":
            _check_json_error(answer, where)
        else:
            _check_xml_error(request, answer, where)
    try:
        parsed = parser.parse(raw, _parser_output(request))
    except Exception as exc:
        raise AssertionError(f"botocore cannot parse the error: {exc!r}{where}") from exc
    error = parsed.get("Error", {})
    assert isinstance(error.get("Code"), str), f"no error code for botocore: {parsed}{where}"
    assert error["Code"], f"an empty error code for botocore: {parsed}{where}"
    return parsed


def _check_json_error(answer: Answer, where: str) -> None:
    assert answer.header("content-type") == JSON_CONTENT_TYPE, f"content type{where}"
    try:
        document = json.loads(answer.body)
    except ValueError as exc:
        raise AssertionError(f"a JSON error that is not JSON{where}") from exc
    assert isinstance(document, dict), where
    assert isinstance(document.get("__type"), str), where
    assert document["__type"], where
    assert isinstance(document.get("message"), str), where
    query_error = answer.header("x-amzn-query-error")
    assert query_error is not None, f"no x-amzn-query-error{where}"
    code, _, fault = query_error.partition(";")
    assert code, where
    assert fault in ("Sender", "Receiver"), where


def _check_xml_error(request: Wire, answer: Answer, where: str) -> None:
    assert (answer.header("content-type") or "").startswith("text/xml"), f"content type{where}"
    try:
        root = ET.fromstring(answer.body)
    except ET.ParseError as exc:
        raise AssertionError(f"an XML error that is not XML{where}") from exc
    # A modeled call is its service's; raw garbage may be routed to either (by its Action), and
    # so may an unsigned AddPermission or RemovePermission, which only its TopicArn makes SNS's.
    namespaces: tuple[str, ...] = (SQS_NAMESPACE, SNS_NAMESPACE)
    if request.operation is not None and request.operation not in SHARED_ACTIONS:
        namespaces = (SQS_NAMESPACE if request.service == "sqs" else SNS_NAMESPACE,)
    assert root.tag in {f"{{{ns}}}ErrorResponse" for ns in namespaces}, f"root {root.tag}{where}"
    namespace = root.tag[1:].partition("}")[0]
    code = root.findtext(f"{{{namespace}}}Error/{{{namespace}}}Code")
    message = root.findtext(f"{{{namespace}}}Error/{{{namespace}}}Message")
    assert code, f"no Code{where}"
    assert message is not None, f"no Message{where}"


def health_check(address: tuple[str, int]) -> None:
    """The broker still answers ListQueues (in awsJson), promptly."""
    answer = send(
        address,
        Wire(
            "POST",
            "/",
            (("Content-Type", JSON_CONTENT_TYPE), ("X-Amz-Target", "AmazonSQS.ListQueues")),
            b'{"MaxResults":1}',
            "json",
            "sqs",
            "ListQueues",
        ),
    )
    assert answer.status == 200, f"ListQueues after the example: {answer.status} {answer.body!r}"
    assert answer.elapsed < TIMEOUT_SECONDS


def error_lines(log: str) -> list[str]:
    """The lines of a broker log that report errors (a handler that failed, say)."""
    return [line for line in log.splitlines() if " level=error " in line]


@contextlib.contextmanager
def no_new_errors(output: Any) -> Any:
    """Assert that the broker's log (a StringIO) gains no error lines inside the block."""
    start = len(output.getvalue())
    yield
    new = error_lines(output.getvalue()[start:])
    assert not new, "the broker logged errors:\n" + "\n".join(new)
