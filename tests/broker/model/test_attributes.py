import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.model.attributes import (
    ALL_ATTRIBUTES,
    QueueCounts,
    QueueFacts,
    check_create_matches,
    render_attributes,
)
from broker.model.errors import INVALID_ATTRIBUTE_NAME, QUEUE_ALREADY_EXISTS, SqsError
from broker.model.settings import parse_create

FACTS = QueueFacts(
    queue_arn="arn:aws:sqs:us-east-1:123456789012:q",
    created_at_ms=1_700_000_000_999,
    modified_at_ms=1_700_000_100_000,
    counts=QueueCounts(visible=3, in_flight=2, delayed=1),
)


def test_all_on_a_standard_queue():
    rendered = render_attributes(parse_create({}), ["All"], FACTS)
    assert rendered == {
        "QueueArn": FACTS.queue_arn,
        "ApproximateNumberOfMessages": "3",
        "ApproximateNumberOfMessagesNotVisible": "2",
        "ApproximateNumberOfMessagesDelayed": "1",
        "CreatedTimestamp": "1700000000",
        "LastModifiedTimestamp": "1700000100",
        "VisibilityTimeout": "30",
        "MaximumMessageSize": "1048576",
        "MessageRetentionPeriod": "345600",
        "DelaySeconds": "0",
        "ReceiveMessageWaitTimeSeconds": "0",
        "SqsManagedSseEnabled": "true",
    }


def test_all_on_a_fifo_queue_with_policies():
    redrive = json.dumps({"deadLetterTargetArn": FACTS.queue_arn, "maxReceiveCount": "4"})
    settings = parse_create({"FifoQueue": "true", "RedrivePolicy": redrive, "KmsMasterKeyId": "k"})
    rendered = render_attributes(settings, ["All"], FACTS)
    assert rendered["FifoQueue"] == "true"
    assert rendered["ContentBasedDeduplication"] == "false"
    assert rendered["DeduplicationScope"] == "queue"
    assert rendered["FifoThroughputLimit"] == "perQueue"
    assert json.loads(rendered["RedrivePolicy"]) == {
        "deadLetterTargetArn": FACTS.queue_arn,
        "maxReceiveCount": 4,
    }
    assert rendered["KmsMasterKeyId"] == "k"
    assert rendered["KmsDataKeyReusePeriodSeconds"] == "300"
    assert rendered["SqsManagedSseEnabled"] == "false"


def test_selected_names_and_unknown_names():
    settings = parse_create({})
    assert render_attributes(settings, ["DelaySeconds", "FifoQueue"], FACTS) == {
        "DelaySeconds": "0"
    }
    with pytest.raises(SqsError) as raised:
        render_attributes(settings, ["Colour"], FACTS)
    assert raised.value.code == INVALID_ATTRIBUTE_NAME
    assert set(ALL_ATTRIBUTES) >= set(render_attributes(settings, ["All"], FACTS))


def test_create_again_with_same_or_different_attributes():
    existing = parse_create({"DelaySeconds": "5"})
    check_create_matches(existing, {"DelaySeconds": "5"})
    check_create_matches(existing, {})
    with pytest.raises(SqsError) as raised:
        check_create_matches(existing, {"DelaySeconds": "6"})
    assert (raised.value.code, raised.value.message) == (
        QUEUE_ALREADY_EXISTS,
        "A queue already exists with the same name and a different value for attribute "
        "DelaySeconds",
    )


POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Principal": "*", "Action": "sqs:SendMessage", "Resource": "*"}
    ],
}


@pytest.mark.parametrize(
    "name",
    ["Policy", "RedrivePolicy", "RedriveAllowPolicy"],
)
def test_create_again_compares_json_attributes_as_documents(name):
    """The same document with other whitespace or key order is the same value; a different
    document is not (IaC tools re-render JSON as they please)."""
    document, other = {
        "Policy": (POLICY, {**POLICY, "Version": "2008-10-17"}),
        "RedrivePolicy": (
            {"deadLetterTargetArn": "arn:aws:sqs:us-east-1:123456789012:dlq", "maxReceiveCount": 3},
            {"deadLetterTargetArn": "arn:aws:sqs:us-east-1:123456789012:dlq", "maxReceiveCount": 4},
        ),
        "RedriveAllowPolicy": ({"redrivePermission": "allowAll"}, {"redrivePermission": "denyAll"}),
    }[name]
    existing = parse_create({name: json.dumps(document)})
    reordered = dict(reversed(list(document.items())))
    for same in (
        json.dumps(document),
        json.dumps(document, indent=2),
        json.dumps(reordered, separators=(",", ":")),
    ):
        check_create_matches(existing, {name: same})
    with pytest.raises(SqsError) as raised:
        check_create_matches(existing, {name: json.dumps(other)})
    assert raised.value.code == QUEUE_ALREADY_EXISTS
    assert raised.value.message.endswith(f"attribute {name}")


settable_values = st.fixed_dictionaries(
    {},
    optional={
        "VisibilityTimeout": st.integers(0, 43_200).map(str),
        "MessageRetentionPeriod": st.integers(60, 1_209_600).map(str),
        "MaximumMessageSize": st.integers(1_024, 1_048_576).map(str),
        "DelaySeconds": st.integers(0, 900).map(str),
        "ReceiveMessageWaitTimeSeconds": st.integers(0, 20).map(str),
        "KmsMasterKeyId": st.text("abc/-", min_size=1, max_size=10),
    },
)


@given(settable_values)
def test_rendered_attributes_create_the_same_queue(attributes):
    """GetQueueAttributes output, fed back to CreateQueue, describes the same queue."""
    settings = parse_create(attributes)
    rendered = render_attributes(settings, ["All"], FACTS)
    settable = {
        name: value
        for name, value in rendered.items()
        if name not in ("QueueArn", "CreatedTimestamp", "LastModifiedTimestamp")
        and not name.startswith("Approximate")
        and name != "SqsManagedSseEnabled"
    }
    assert parse_create(settable) == settings
    check_create_matches(settings, settable)
