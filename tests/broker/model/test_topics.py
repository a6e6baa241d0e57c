import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.model.sns_errors import SnsError
from broker.model.topics import (
    DEFAULT_MAXIMUM_MESSAGE_SIZE,
    FEEDBACK_ATTRIBUTES,
    LARGE_MESSAGE_PROTOCOLS,
    MAX_LARGE_MESSAGE_SUBSCRIPTIONS,
    TopicFacts,
    apply_update,
    check_create_matches,
    check_large_messages,
    default_policy,
    parse_create,
    render_attributes,
    setting_value,
    validate_topic_name,
)

ARN = "arn:aws:sns:us-east-1:123456789012:orders"
FACTS = TopicFacts(ARN, "123456789012", subscriptions_confirmed=2, subscriptions_pending=1)

POLICY = (
    '{"http":{"defaultHealthyRetryPolicy":{"minDelayTarget":20,"maxDelayTarget":20,'
    '"numRetries":5}}}'
)


def message_of(call) -> str:
    with pytest.raises(SnsError) as caught:
        call()
    assert caught.value.code == "InvalidParameter"
    assert caught.value.status == 400
    return caught.value.message


def test_topic_names():
    validate_topic_name("a" * 256, fifo=False)
    validate_topic_name("Orders_2-x", fifo=False)
    validate_topic_name("a" * 251 + ".fifo", fifo=True)
    for name, fifo in [
        ("", False),
        ("a" * 257, False),
        ("a" * 252 + ".fifo", True),
        ("bad name", False),
        ("bad.name", False),
        ("orders.fifo", False),  # a .fifo name needs FifoTopic=true
        ("orders", True),  # and FifoTopic=true needs the suffix
        (".fifo", True),
    ]:
        check = lambda name=name, fifo=fifo: validate_topic_name(name, fifo=fifo)  # noqa: E731
        assert message_of(check) == "Invalid parameter: Topic Name", name


def test_a_standard_topic_renders_like_aws():
    rendered = render_attributes(parse_create("orders", {}, topic_arn=ARN), FACTS)
    assert rendered == {
        "TopicArn": ARN,
        "Owner": "123456789012",
        "Policy": default_policy(ARN, "123456789012"),
        "SubscriptionsConfirmed": "2",
        "SubscriptionsPending": "1",
        "SubscriptionsDeleted": "0",
        "EffectiveDeliveryPolicy": rendered["EffectiveDeliveryPolicy"],
        "DisplayName": "",
    }
    policy = json.loads(rendered["Policy"])
    assert policy["Statement"][0]["Condition"] == {
        "StringEquals": {"AWS:SourceOwner": "123456789012"}
    }
    assert (
        json.loads(rendered["EffectiveDeliveryPolicy"])["http"]["defaultHealthyRetryPolicy"][
            "numRetries"
        ]
        == 3
    )


def test_a_fifo_topic():
    settings = parse_create(
        "orders.fifo", {"FifoTopic": "true", "ContentBasedDeduplication": "TRUE"}, topic_arn=ARN
    )
    assert settings.fifo
    assert settings.content_based_deduplication
    rendered = render_attributes(settings, FACTS._replace(topic_arn=ARN + ".fifo"))
    assert rendered["FifoTopic"] == "true"
    assert rendered["ContentBasedDeduplication"] == "true"
    settings = apply_update(settings, "FifoThroughputScope", "MessageGroup", topic_arn=ARN)
    assert render_attributes(settings, FACTS)["FifoThroughputScope"] == "MessageGroup"
    assert message_of(lambda: apply_update(settings, "FifoTopic", "false", topic_arn=ARN)) == (
        "Invalid parameter: AttributeName"
    )


def test_fifo_attributes_on_a_standard_topic_are_refused():
    for name, value in [("ContentBasedDeduplication", "true"), ("FifoThroughputScope", "Topic")]:
        assert message_of(
            lambda name=name, value=value: parse_create("orders", {name: value}, topic_arn=ARN)
        ) == (f"Invalid parameter: Attributes Reason: {name}: only FIFO topics have this attribute")


def test_settable_attributes_and_their_errors():
    settings = parse_create(
        "orders",
        {
            "DisplayName": "Orders",
            "SignatureVersion": "2",
            "TracingConfig": "Active",
            "KmsMasterKeyId": "alias/aws/sns",
            "MaximumMessageSize": "1048576",
            "DeliveryPolicy": POLICY,
            "Policy": '{"Version":"2012-10-17","Statement":[]}',
            "SQSSuccessFeedbackRoleArn": "arn:aws:iam::123456789012:role/feedback",
        },
        topic_arn=ARN,
    )
    rendered = render_attributes(settings, FACTS)
    assert rendered["DisplayName"] == "Orders"
    assert rendered["SignatureVersion"] == "2"
    assert settings.effective_signature_version == "2"
    assert rendered["TracingConfig"] == "Active"
    assert rendered["KmsMasterKeyId"] == "alias/aws/sns"
    assert rendered["MaximumMessageSize"] == "1048576"
    assert settings.effective_maximum_message_size == 1_048_576
    assert rendered["Policy"] == '{"Version":"2012-10-17","Statement":[]}'
    assert rendered["SQSSuccessFeedbackRoleArn"].endswith("role/feedback")
    effective = json.loads(rendered["EffectiveDeliveryPolicy"])
    assert effective["http"]["defaultHealthyRetryPolicy"]["numRetries"] == 5
    assert rendered["DeliveryPolicy"] == POLICY
    cleared = apply_update(settings, "SQSSuccessFeedbackRoleArn", "", topic_arn=ARN)
    assert "SQSSuccessFeedbackRoleArn" not in render_attributes(cleared, FACTS)
    assert (
        apply_update(settings, "DeliveryPolicy", "", topic_arn=ARN).delivery_policy_parsed is None
    )
    assert (
        parse_create("t", {}, topic_arn=ARN).effective_maximum_message_size
        == DEFAULT_MAXIMUM_MESSAGE_SIZE
    )
    assert parse_create("t", {}, topic_arn=ARN).effective_signature_version == "1"

    errors = {
        ("Unknown", "x"): "Invalid parameter: AttributeName",
        (
            "SignatureVersion",
            "3",
        ): "Invalid parameter: SignatureVersion: Invalid value [3]. Please use 1 or 2",
        ("TracingConfig", "On"): (
            "Invalid parameter: TracingConfig: Invalid value [On]. Please use PassThrough or Active"
        ),
        ("MaximumMessageSize", "1023"): (
            "Invalid parameter: MaximumMessageSize: Invalid value [1023]. "
            "Must be between 1024 and 1048576"
        ),
        ("MaximumMessageSize", "1048577"): (
            "Invalid parameter: MaximumMessageSize: Invalid value [1048577]. "
            "Must be between 1024 and 1048576"
        ),
        ("Policy", "[]"): "Invalid parameter: Policy: failed to parse JSON.",
        ("SQSSuccessFeedbackSampleRate", "101"): (
            "Invalid parameter: SQSSuccessFeedbackSampleRate: Invalid value [101]. "
            "Must be an integer from 0 to 100"
        ),
        ("HTTPSuccessFeedbackSampleRate", "half"): (
            "Invalid parameter: HTTPSuccessFeedbackSampleRate: Invalid value [half]. "
            "Must be an integer from 0 to 100"
        ),
        (
            "DeliveryPolicy",
            '{"x":1}',
        ): "Invalid parameter: DeliveryPolicy: Unexpected JSON member: x",
    }
    for (name, value), message in errors.items():
        assert (
            message_of(
                lambda name=name, value=value: apply_update(settings, name, value, topic_arn=ARN)
            )
            == message
        )
    assert message_of(lambda: parse_create("t", {"FifoTopic": "maybe"}, topic_arn=ARN)) == (
        "Invalid parameter: Attributes Reason: FifoTopic: Invalid value [maybe]. "
        "Must be true or false."
    )
    assert message_of(lambda: parse_create("t", {"Nope": "x"}, topic_arn=ARN)) == (
        "Invalid parameter: Attributes Reason: AttributeName"
    )


def test_create_topic_is_idempotent_only_with_the_same_attributes():
    existing = parse_create("orders", {"DisplayName": "Orders"}, topic_arn=ARN)
    check_create_matches(existing, "orders", {"DisplayName": "Orders"}, topic_arn=ARN)
    check_create_matches(existing, "orders", {}, topic_arn=ARN)
    assert message_of(
        lambda: check_create_matches(existing, "orders", {"DisplayName": "Other"}, topic_arn=ARN)
    ) == ("Invalid parameter: Attributes Reason: Topic already exists with different attributes")


def test_create_topic_naming_a_documented_default_matches_a_topic_that_never_set_it():
    """Tools that write every default out ("ensure topic" at each start) must get the topic
    back, not "different attributes"."""
    standard = parse_create("orders", {}, topic_arn=ARN)
    defaults = {"SignatureVersion": "1", "TracingConfig": "PassThrough"}
    check_create_matches(
        standard, "orders", {**defaults, "MaximumMessageSize": "262144"}, topic_arn=ARN
    )
    fifo = parse_create("orders.fifo", {"FifoTopic": "true"}, topic_arn=ARN)
    check_create_matches(
        fifo, "orders.fifo", {"FifoTopic": "true", "FifoThroughputScope": "Topic"}, topic_arn=ARN
    )
    assert message_of(
        lambda: check_create_matches(standard, "orders", {"SignatureVersion": "2"}, topic_arn=ARN)
    ) == ("Invalid parameter: Attributes Reason: Topic already exists with different attributes")


def test_create_topic_compares_json_attributes_as_documents():
    """Other whitespace or key order is the same document (as CreateQueue's rule; a
    report-only hunt found both compared the text)."""
    policy = {
        "defaultHealthyRetryPolicy": {"numRetries": 5, "minDelayTarget": 2, "maxDelayTarget": 9}
    }
    sent = {"http": policy}
    existing = parse_create("orders", {"DeliveryPolicy": json.dumps(sent)}, topic_arn=ARN)
    reordered = {"http": dict(reversed(list(policy.items())))}
    check_create_matches(
        existing, "orders", {"DeliveryPolicy": json.dumps(reordered, indent=2)}, topic_arn=ARN
    )
    other = {
        "http": {
            "defaultHealthyRetryPolicy": {**policy["defaultHealthyRetryPolicy"], "numRetries": 6}
        }
    }
    assert message_of(
        lambda: check_create_matches(
            existing, "orders", {"DeliveryPolicy": json.dumps(other)}, topic_arn=ARN
        )
    ) == ("Invalid parameter: Attributes Reason: Topic already exists with different attributes")


settable = st.one_of(
    st.tuples(st.just("DisplayName"), st.text(max_size=20)),
    st.tuples(st.just("SignatureVersion"), st.sampled_from(["1", "2"])),
    st.tuples(st.just("TracingConfig"), st.sampled_from(["PassThrough", "Active"])),
    st.tuples(st.just("MaximumMessageSize"), st.integers(1_024, 1_048_576).map(str)),
    st.tuples(st.just("KmsMasterKeyId"), st.text(min_size=1, max_size=20)),
    st.tuples(
        st.sampled_from(sorted(a for a in FEEDBACK_ATTRIBUTES if not a.endswith("SampleRate"))),
        st.text(min_size=1, max_size=20),
    ),
    st.tuples(
        st.sampled_from(sorted(a for a in FEEDBACK_ATTRIBUTES if a.endswith("SampleRate"))),
        st.integers(0, 100).map(str),
    ),
)


@given(updates=st.lists(settable, max_size=8))
def test_what_is_set_is_what_get_topic_attributes_shows(updates):
    settings = parse_create("t", {}, topic_arn=ARN)
    expected = {}
    for name, value in updates:
        settings = apply_update(settings, name, value, topic_arn=ARN)
        expected[name] = value
    rendered = render_attributes(settings, FACTS)
    for name, value in expected.items():
        assert setting_value(settings, name) == value
        assert rendered[name] == value


@given(
    size=st.integers(min_value=1_024, max_value=1_048_576),
    protocols=st.lists(
        st.sampled_from(["sqs", "lambda", "firehose", "http", "https"]), max_size=120
    ),
)
def test_large_message_topics_take_few_subscriptions_of_aws_managed_protocols(size, protocols):
    # large-message-payloads: above 256 KiB, at most 100 subscriptions, SQS/Lambda/Firehose.
    allowed = size <= DEFAULT_MAXIMUM_MESSAGE_SIZE or (
        len(protocols) <= MAX_LARGE_MESSAGE_SUBSCRIPTIONS
        and set(protocols) <= LARGE_MESSAGE_PROTOCOLS
    )
    if allowed:
        check_large_messages(size, protocols)
    else:
        assert "MaximumMessageSize is above 262144 bytes" in message_of(
            lambda: check_large_messages(size, protocols)
        )


def test_the_large_message_limits_at_their_edges():
    check_large_messages(DEFAULT_MAXIMUM_MESSAGE_SIZE, ["http"] * 500)
    check_large_messages(DEFAULT_MAXIMUM_MESSAGE_SIZE + 1, ["sqs"] * 100)
    assert "at most 100 subscriptions" in message_of(
        lambda: check_large_messages(DEFAULT_MAXIMUM_MESSAGE_SIZE + 1, ["sqs"] * 101)
    )
    assert message_of(lambda: check_large_messages(262_145, ["sqs", "https"])).endswith("not https")


def test_a_topic_policy_whose_condition_cannot_be_evaluated_is_refused():
    statement = {
        "Effect": "Deny",
        "Principal": "*",
        "Action": "SNS:Publish",
        "Resource": ARN,
        "Condition": {"StringSoundsLike": {"aws:username": "alice"}},
    }
    odd = json.dumps({"Version": "2012-10-17", "Statement": [statement]})
    settings = parse_create("t", {}, topic_arn=ARN)
    assert message_of(lambda: apply_update(settings, "Policy", odd, topic_arn=ARN)).startswith(
        "Invalid parameter: Policy: "
    )
    statement["Condition"] = {"StringEquals": {"aws:username": "alice"}}
    readable = json.dumps({"Version": "2012-10-17", "Statement": [statement]})
    assert apply_update(settings, "Policy", readable, topic_arn=ARN).policy == readable


def _topic_policy(statements: int, principals_each: int = 1, padding: int = 0) -> str:
    def statement(n: int) -> dict[str, object]:
        accounts = [
            f"arn:aws:iam::{100000000000 + n * 1000 + i}:root" for i in range(principals_each)
        ]
        return {
            "Sid": f"s{n}",
            "Effect": "Allow",
            "Principal": {"AWS": accounts},
            "Action": "SNS:Publish",
            "Resource": ARN,
        }

    document = {
        "Version": "2012-10-17",
        "Id": "x" * padding,
        "Statement": [statement(n) for n in range(statements)],
    }
    return json.dumps(document)


def _statement(sid: str = "s", **elements: object) -> dict[str, object]:
    return {
        "Sid": sid,
        "Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::111122223333:root"},
        "Action": "SNS:Publish",
        **({"Resource": ARN} if elements.keys().isdisjoint({"Resource", "NotResource"}) else {}),
        **elements,
    }


def _unnamed() -> dict[str, object]:
    return {k: v for k, v in _statement().items() if k != "Sid"}


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        (
            {"Version": "2012-10-17", "Statement": [_statement("a"), _statement("a")]},
            "every statement needs its own Sid: a is repeated",
        ),
        (
            {"Statement": [_statement(Resource=ARN + "-other")]},
            f"every statement's Resource must be this topic's ARN, {ARN}, alone",
        ),
        ({"Statement": [_statement(Resource=[ARN, ARN + "-x"])]}, "this topic's ARN"),
        ({"Statement": [_statement(Resource="*")]}, "this topic's ARN"),
        ({"Statement": [_statement(NotResource=ARN + "-other")]}, "this topic's ARN"),
        ({"Statement": [{k: v for k, v in _statement().items() if k != "Resource"}]}, "ARN"),
        ({"Statement": [_statement(Sid=7)]}, "a Sid must be a string"),
        (
            {"Version": "2099-01-01", "Statement": [_statement()]},
            "Version must be 2008-10-17 or 2012-10-17",
        ),
    ],
)
def test_a_topic_policy_breaking_sns_policy_rules_is_refused(document: object, reason: str):
    # SNS's API permissions reference: one topic per policy, unique Sids, exactly one
    # Resource, the topic's ARN; IAM's two Versions.
    settings = parse_create("orders", {}, topic_arn=ARN)
    policy = json.dumps(document)
    message = message_of(lambda: apply_update(settings, "Policy", policy, topic_arn=ARN))
    assert message.startswith("Invalid parameter: Policy Error: ")
    assert reason in message
    attributes = {"Policy": policy}
    message = message_of(lambda: parse_create("orders", attributes, topic_arn=ARN))
    assert message.startswith("Invalid parameter: Attributes Reason: Policy Error: ")


@pytest.mark.parametrize(
    "document",
    [
        {"Version": "2008-10-17", "Statement": [_statement("a"), _statement("b")]},
        {"Statement": [_statement(), _statement(""), _unnamed(), _unnamed()]},
        {"Version": "2012-10-17", "Statement": _statement(Resource=[ARN])},
    ],
)
def test_a_topic_policy_within_sns_policy_rules_is_stored(document: object):
    policy = json.dumps(document)
    settings = parse_create("orders", {"Policy": policy}, topic_arn=ARN)
    assert apply_update(settings, "Policy", policy, topic_arn=ARN).policy == policy


@pytest.mark.parametrize(
    ("within", "beyond", "reason"),
    [
        (_topic_policy(100), _topic_policy(101), "at most 100 statements"),
        (_topic_policy(2, 100), _topic_policy(3, 67), "at most 200 principals"),
    ],
)
def test_a_topic_policy_past_sns_quotas_is_refused(within: str, beyond: str, reason: str):
    # SNS's policy quotas (30 KB, 100 statements, 200 principals), not SQS's smaller ones.
    settings = parse_create("t", {}, topic_arn=ARN)
    assert apply_update(settings, "Policy", within, topic_arn=ARN).policy == within
    message = message_of(lambda: apply_update(settings, "Policy", beyond, topic_arn=ARN))
    assert message.startswith("Invalid parameter: Policy Error: ")
    assert reason in message


def test_a_topic_policy_past_30_kb_is_refused():
    settings = parse_create("t", {}, topic_arn=ARN)
    base = len(_topic_policy(1))
    exactly = _topic_policy(1, padding=30 * 1024 - base)
    assert len(exactly) == 30 * 1024
    assert apply_update(settings, "Policy", exactly, topic_arn=ARN).policy == exactly
    over = _topic_policy(1, padding=30 * 1024 - base + 1)
    assert "at most 30,720 bytes" in message_of(
        lambda: apply_update(settings, "Policy", over, topic_arn=ARN)
    )


def test_fifo_topics_archive_for_1_to_365_days_and_trace_nothing():
    fifo = parse_create("orders.fifo", {"FifoTopic": "true"}, topic_arn=ARN)
    for period in ("1", "365", 30):
        policy = json.dumps({"MessageRetentionPeriod": period})
        assert apply_update(fifo, "ArchivePolicy", policy, topic_arn=ARN).archive_policy == policy
    assert apply_update(fifo, "ArchivePolicy", "{}", topic_arn=ARN).archive_policy == "{}"
    assert apply_update(fifo, "ArchivePolicy", "", topic_arn=ARN).archive_policy is None
    for bad in ('{"MessageRetentionPeriod": "0"}', '{"MessageRetentionPeriod": "366"}',
                '{"MessageRetentionPeriod": 1.5}', '{"MessageRetentionPeriod": true}',
                '{"Retention": "30"}'):  # fmt: skip
        assert message_of(
            lambda bad=bad: apply_update(fifo, "ArchivePolicy", bad, topic_arn=ARN)
        ) == (
            f"Invalid parameter: ArchivePolicy: Invalid value [{bad}]. Must be {{}} or "
            '{"MessageRetentionPeriod": <days from 1 to 365>}'
        )
    assert (
        apply_update(fifo, "TracingConfig", "PassThrough", topic_arn=ARN).tracing_config
        == "PassThrough"
    )
    assert message_of(
        lambda: parse_create(
            "o.fifo", {"FifoTopic": "true", "TracingConfig": "Active"}, topic_arn=ARN
        )
    ) == (
        "Invalid parameter: Attributes Reason: TracingConfig: Active tracing is only supported "
        "on standard topics"
    )
