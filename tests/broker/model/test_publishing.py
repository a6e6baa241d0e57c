"""Publish's rules: subject, size, attributes, MessageStructure, FIFO parameters, deduplication."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.model.publishing import (
    Original,
    PublishRequest,
    TopicDeduplication,
    check_attributes,
    check_subject,
    prepare,
    publish_size,
    sequence_number,
    structured_messages,
)
from broker.model.sns_errors import SnsError
from broker.model.topics import TopicSettings

STANDARD = TopicSettings()
FIFO = TopicSettings(fifo=True)
FIFO_CONTENT = TopicSettings(fifo=True, content_based_deduplication=True)


def refused(settings: TopicSettings, **request: Any) -> SnsError:
    with pytest.raises(SnsError) as info:
        prepare(settings, PublishRequest(**request))
    return info.value


def test_a_plain_message_goes_to_every_protocol_as_is() -> None:
    prepared = prepare(STANDARD, PublishRequest(message="m", subject="s"))
    assert prepared.message_for("sqs") == prepared.message_for("https") == "m"
    assert prepared.deduplication_id is None


@pytest.mark.parametrize("subject", ["", "x" * 101, "line\nbreak", "tab\there"])
def test_bad_subjects(subject: str) -> None:
    assert refused(STANDARD, message="m", subject=subject).message == "Invalid parameter: Subject"


@given(
    st.text(max_size=10),
    st.characters(categories=["Cc"]) | st.sampled_from(["\u2028", "\u2029"]),
    st.text(max_size=10),
)
def test_subjects_with_any_control_or_line_separator_are_refused(
    before: str, forbidden: str, after: str
) -> None:
    """Publish: "no line breaks or control characters": C0, DEL, C1 (NEL too), U+2028/9."""
    subject = before + forbidden + after
    assert refused(STANDARD, message="m", subject=subject).message == "Invalid parameter: Subject"


def test_subject_of_100_characters_is_accepted() -> None:
    check_subject("x" * 100)


def test_size_counts_message_and_attributes_against_the_topic_limit() -> None:
    attributes = {"ab": {"DataType": "String", "StringValue": "xyz"}}
    request = PublishRequest(message="m" * 100, attributes=attributes)
    assert publish_size(request) == 100 + 2 + 6 + 3
    small = TopicSettings(maximum_message_size=1024)
    assert refused(small, message="m" * 1025).message == "Invalid parameter: Message too long"
    prepare(small, PublishRequest(message="m" * 1024))
    assert refused(STANDARD, message="").message == "Invalid parameter: Empty message"


def test_message_structure_json() -> None:
    text = json.dumps({"default": "d", "sqs": "q", "http": 5})
    prepared = prepare(STANDARD, PublishRequest(message=text, structure="json"))
    assert prepared.message_for("sqs") == "q"
    assert prepared.message_for("http") == "d"  # not a string: ignored, as SNS ignores it
    assert prepared.message_for("https") == "d"
    assert "No default entry" in refused(STANDARD, message='{"a": "b"}', structure="json").message
    assert "failed to parse" in refused(STANDARD, message="[1]", structure="json").message
    assert refused(STANDARD, message="m", structure="xml").message == (
        "Invalid parameter: MessageStructure"
    )


def test_fifo_rules() -> None:
    assert "MessageGroupId parameter is required" in refused(FIFO, message="m").message
    assert "ContentBasedDeduplication" in refused(FIFO, message="m", group_id="g").message
    explicit = prepare(FIFO, PublishRequest(message="m", group_id="g", deduplication_id="d"))
    assert explicit.deduplication_id == "d"
    content = prepare(FIFO_CONTENT, PublishRequest(message="m", group_id="g"))
    assert content.deduplication_id == hashlib.sha256(b"m").hexdigest()
    assert "MessageDeduplicationId" in refused(STANDARD, message="m", deduplication_id="d").message
    assert prepare(STANDARD, PublishRequest(message="m", group_id="g")).deduplication_id is None
    assert "MessageGroupId" in refused(FIFO, message="m", group_id="bad id \u00e9").message


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ({"a" * 257: {"DataType": "String", "StringValue": "v"}},
         "Length of message attribute name must be less than 256 bytes."),
        ({"a.": {"DataType": "String", "StringValue": "v"}},
         "Invalid message attribute name ending with character '.' was found."),
        ({"a..b": {"DataType": "String", "StringValue": "v"}},
         "Message attribute name can not have successive '.' character."),
        ({"a b": {"DataType": "String", "StringValue": "v"}},
         "Invalid non-alphanumeric character '#x20' was found in the message attribute name. "
         "Can only include alphanumeric characters, hyphens, underscores, or dots."),
        ({"a": {"DataType": "String", "StringValue": ""}},
         "The message attribute 'a' must contain non-empty message attribute value for message "
         "attribute type 'String'."),
        ({"a": {"DataType": "Binary", "StringValue": "v"}},
         "The message attribute 'a' with type 'Binary' must use field 'Binary'."),
        ({"a": {"DataType": "Number", "StringValue": "1e999"}},
         "Could not cast message attribute 'a' value to number."),
        ({"a": {"DataType": "Number", "StringValue": "1_000"}},
         "Could not cast message attribute 'a' value to number."),
        ({"a": {"DataType": "Number", "StringValue": " 1000"}},
         "Could not cast message attribute 'a' value to number."),
        ({"AWS.trace": {"DataType": "String", "StringValue": "v"}},
         "The message attribute name 'AWS.trace' is reserved: names starting with 'AWS.' or "
         "'Amazon.' (in any case) are AWS's."),
        ({"AWS.SNS.other": {"DataType": "String", "StringValue": "v"}},
         "The message attribute name 'AWS.SNS.other' is reserved: names starting with 'AWS.' or "
         "'Amazon.' (in any case) are AWS's."),
        ({"aws.sns.sms.SMSType": {"DataType": "String", "StringValue": "v"}},
         "The message attribute name 'aws.sns.sms.SMSType' is reserved: names starting with "
         "'AWS.' or 'Amazon.' (in any case) are AWS's."),
        ({"amazon.x": {"DataType": "String", "StringValue": "v"}},
         "The message attribute name 'amazon.x' is reserved: names starting with 'AWS.' or "
         "'Amazon.' (in any case) are AWS's."),
        ({"a": {"DataType": "String." + "x" * 250, "StringValue": "v"}},
         "The message attribute 'a' has a type longer than 256 bytes."),
        ({"a": {"DataType": "String.", "StringValue": "v"}},
         "The message attribute 'a' has an invalid message attribute type, the set of supported "
         "type prefixes is Binary, Number, and String."),
        ({"a": {"DataType": "Stringprefixed", "StringValue": "v"}},
         "The message attribute 'a' has an invalid message attribute type, the set of supported "
         "type prefixes is Binary, Number, and String."),
        ({"a": {"DataType": "String.Array", "StringValue": "nope"}},
         "The message attribute 'a' with type 'String.Array' has an invalid value: it must be a "
         "JSON array."),
    ],
)  # fmt: skip
def test_bad_attributes(attributes: dict[str, Any], message: str) -> None:
    with pytest.raises(SnsError) as info:
        check_attributes(attributes)
    assert info.value.code == "ParameterValueInvalid"
    assert info.value.message == message


def test_good_attributes() -> None:
    check_attributes(
        {
            "s": {"DataType": "String", "StringValue": "v"},
            "s.custom": {"DataType": "String.custom", "StringValue": "v"},
            "spaced": {"DataType": "String.  prefixed.", "StringValue": "v"},
            "n.spaced": {"DataType": "Number. x", "StringValue": "1"},
            "n": {"DataType": "Number", "StringValue": "-1.5e10"},
            "b": {"DataType": "Binary", "BinaryValue": b"\x00"},
            "a": {"DataType": "String.Array", "StringValue": '["x", 1, true, null]'},
            # AWS's own per-message settings of SMS and mobile push deliveries.
            "AWS.SNS.SMS.SMSType": {"DataType": "String", "StringValue": "Transactional"},
            "AWS.SNS.MOBILE.APNS.TTL": {"DataType": "String", "StringValue": "60"},
            "AWS.MM.SMS.EntityId": {"DataType": "String", "StringValue": "e"},
        }
    )


@given(
    st.dictionaries(
        st.sampled_from(["default", "sqs", "http", "https", "email"]),
        st.one_of(st.text(max_size=5), st.integers(), st.none()),
    ),
    st.sampled_from(["sqs", "http", "https"]),
)
def test_each_protocol_gets_its_string_entry_else_default(
    document: dict[str, Any], protocol: str
) -> None:
    text = json.dumps(document)
    if not isinstance(document.get("default"), str):
        with pytest.raises(SnsError):
            structured_messages(text)
        return
    prepared = prepare(STANDARD, PublishRequest(message=text, structure="json"))
    own = document.get(protocol)
    expected = own if isinstance(own, str) else document["default"]
    assert prepared.message_for(protocol) == expected


@given(
    st.text(max_size=50),
    st.dictionaries(
        st.from_regex(r"[a-z]{1,8}", fullmatch=True),
        st.one_of(
            st.builds(
                lambda v: {"DataType": "String", "StringValue": v}, st.text(min_size=1, max_size=8)
            ),
            st.builds(
                lambda v: {"DataType": "Binary", "BinaryValue": v},
                st.binary(min_size=1, max_size=8),
            ),
        ),
        max_size=4,
    ),
)
def test_size_is_the_sum_of_utf8_parts(message: str, attributes: dict[str, Any]) -> None:
    expected = len(message.encode("utf-8", "surrogatepass"))
    for name, value in attributes.items():
        expected += len(name) + len(value["DataType"])
        expected += len(value.get("StringValue", "").encode()) + len(value.get("BinaryValue", b""))
    assert publish_size(PublishRequest(message=message, attributes=attributes)) == expected


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 400_000)), max_size=30))
def test_deduplication_window_matches_a_reference(operations: list[tuple[str, int]]) -> None:
    window = TopicDeduplication()
    reference: dict[bytes, tuple[Original, int]] = {}
    now = 0
    for index, (deduplication_id, step) in enumerate(operations):
        now += step
        key = TopicDeduplication.key(deduplication_id, "g", FIFO)
        live = {k: v for k, v in reference.items() if v[1] > now}
        expected = live.get(key)
        assert window.lookup(key, now) == (expected[0] if expected else None)
        if expected is None:
            original = Original(str(index), sequence_number(index))
            window.remember(key, original, TopicDeduplication.expires_at(now))
            reference[key] = (original, TopicDeduplication.expires_at(now))


PER_GROUP = TopicSettings(fifo=True, fifo_throughput_scope="MessageGroup")


@given(
    st.booleans(),
    st.lists(
        st.tuples(st.booleans(), st.sampled_from(["g", "h"]), st.sampled_from(["x", "y"])),
        max_size=8,
    ),
    st.booleans(),
    st.integers(0, 299_999),
)
def test_no_scope_change_lets_a_duplicate_through(
    first_per_group: bool,
    between: list[tuple[bool, str, str]],
    last_per_group: bool,
    later: int,
) -> None:
    """Whatever FifoThroughputScope changes and publishes come between two publishes with
    the same group and id within 5 minutes, the second is answered with the first."""
    window = TopicDeduplication()
    first_key = TopicDeduplication.key("x", "g", PER_GROUP if first_per_group else FIFO)
    first = Original("first", sequence_number(0))
    window.remember(first_key, first, TopicDeduplication.expires_at(0))
    for index, (per_group, group, deduplication_id) in enumerate(between, start=1):
        key = TopicDeduplication.key(deduplication_id, group, PER_GROUP if per_group else FIFO)
        if window.lookup(key, 0) is None:
            original = Original(str(index), sequence_number(index))
            window.remember(key, original, TopicDeduplication.expires_at(0))
    last_key = TopicDeduplication.key("x", "g", PER_GROUP if last_per_group else FIFO)
    assert window.lookup(last_key, later) is not None
    if not between:  # nothing else took "x": the answer is the first publish itself
        assert window.lookup(last_key, later) == first


def test_scope_changes_keep_ids_taken_in_other_groups_conservatively() -> None:
    window = TopicDeduplication()
    g = Original("g", sequence_number(1))
    h = Original("h", sequence_number(2))
    window.remember(TopicDeduplication.key("x", "g", PER_GROUP), g, 10)
    assert window.lookup(TopicDeduplication.key("x", "h", PER_GROUP), 0) is None
    window.remember(TopicDeduplication.key("x", "h", PER_GROUP), h, 20)
    # MessageGroup -> Topic: "x" was taken in some group, so it is taken in every group.
    assert window.lookup(TopicDeduplication.key("x", "k", FIFO), 0) == h
    assert window.lookup(TopicDeduplication.key("x", "k", FIFO), 15) == h
    assert window.lookup(TopicDeduplication.key("x", "g", PER_GROUP), 15) is None  # g's ended
    topic_wide = Original("t", sequence_number(3))
    window.remember(TopicDeduplication.key("y", "g", FIFO), topic_wide, 30)
    # Topic -> MessageGroup: "y" was taken topic-wide, so it stays taken in every group.
    assert window.lookup(TopicDeduplication.key("y", "h", PER_GROUP), 25) == topic_wide
    assert window.lookup(TopicDeduplication.key("y", "h", PER_GROUP), 30) is None
    assert len(window) == 0


def test_deduplication_is_per_group_only_with_message_group_scope() -> None:
    per_group = TopicSettings(fifo=True, fifo_throughput_scope="MessageGroup")
    assert TopicDeduplication.key("d", "g1", FIFO) == TopicDeduplication.key("d", "g2", FIFO)
    assert TopicDeduplication.key("d", "g1", per_group) != TopicDeduplication.key(
        "d", "g2", per_group
    )


def test_sequence_numbers_have_twenty_digits_and_grow() -> None:
    assert len(sequence_number(1)) == 20
    assert int(sequence_number(2)) > int(sequence_number(1))
