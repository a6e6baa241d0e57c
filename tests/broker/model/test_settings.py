import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.model.errors import (
    INVALID_ATTRIBUTE_NAME,
    INVALID_ATTRIBUTE_VALUE,
    INVALID_PARAMETER_VALUE,
    SqsError,
)
from broker.model.settings import (
    INTEGER_RANGES,
    QueueSettings,
    RedriveAllowPolicy,
    RedrivePolicy,
    apply_update,
    check_dead_letter_target,
    parse_create,
)

DLQ = "arn:aws:sqs:us-east-1:123456789012:dlq"
SOURCE = "arn:aws:sqs:us-east-1:123456789012:source"
FIFO = {"FifoQueue": "true"}


def error_of(call):
    with pytest.raises(SqsError) as raised:
        call()
    return raised.value.code, raised.value.message


def test_defaults_are_aws_defaults():
    settings = parse_create({})
    assert settings == QueueSettings()
    assert (settings.visibility_timeout, settings.message_retention_period) == (30, 345_600)
    assert (settings.maximum_message_size, settings.delay_seconds) == (1_048_576, 0)
    assert settings.sqs_managed_sse_enabled is True


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [
        ("VisibilityTimeout", 0, 43_200),
        ("MessageRetentionPeriod", 60, 1_209_600),
        ("MaximumMessageSize", 1_024, 1_048_576),
        ("DelaySeconds", 0, 900),
        ("ReceiveMessageWaitTimeSeconds", 0, 20),
        ("KmsDataKeyReusePeriodSeconds", 60, 86_400),
    ],
)
def test_integer_ranges(name, low, high):
    parse_create({name: str(low)})
    parse_create({name: str(high)})
    for bad in [str(high + 1), "-1" if low == 0 else str(low - 1), "", "1.5", "ten", "１"]:
        assert error_of(lambda bad=bad: parse_create({name: bad})) == (
            INVALID_ATTRIBUTE_VALUE,
            f"Invalid value for the parameter {name}.",
        )


def test_unknown_and_read_only_attributes():
    assert error_of(lambda: parse_create({"Colour": "x"})) == (
        INVALID_ATTRIBUTE_NAME,
        "Unknown Attribute Colour.",
    )
    assert error_of(lambda: parse_create({"QueueArn": "x"}))[0] == INVALID_ATTRIBUTE_NAME


def test_fifo_attributes_on_a_standard_queue():
    assert error_of(lambda: parse_create({"ContentBasedDeduplication": "true"})) == (
        INVALID_ATTRIBUTE_NAME,
        "Unknown Attribute ContentBasedDeduplication.",
    )
    assert error_of(lambda: parse_create({"DeduplicationScope": "queue"})) == (
        INVALID_ATTRIBUTE_NAME,
        "You can specify the DeduplicationScope only when FifoQueue is set to true.",
    )
    assert error_of(lambda: parse_create({"FifoQueue": "false"}))[0] == INVALID_ATTRIBUTE_NAME


def test_fifo_settings():
    settings = parse_create(
        {
            **FIFO,
            "ContentBasedDeduplication": "TRUE",
            "DeduplicationScope": "messageGroup",
            "FifoThroughputLimit": "perMessageGroupId",
        }
    )
    assert settings.fifo
    assert settings.content_based_deduplication
    assert settings.deduplication_scope == "messageGroup"
    assert error_of(lambda: parse_create({**FIFO, "DeduplicationScope": "group"}))[0] == (
        INVALID_ATTRIBUTE_VALUE
    )


def test_per_message_group_throughput_needs_message_group_deduplication():
    # SetQueueAttributes: "The perMessageGroupId value is allowed only when the value for
    # DeduplicationScope is messageGroup."
    for attributes in (
        {**FIFO, "FifoThroughputLimit": "perMessageGroupId"},
        {**FIFO, "FifoThroughputLimit": "perMessageGroupId", "DeduplicationScope": "queue"},
    ):
        code, message = error_of(lambda attributes=attributes: parse_create(attributes))
        assert code == INVALID_ATTRIBUTE_VALUE
        assert "FifoThroughputLimit" in message
    high = parse_create(
        {**FIFO, "DeduplicationScope": "messageGroup", "FifoThroughputLimit": "perMessageGroupId"}
    )
    assert error_of(lambda: apply_update(high, {"DeduplicationScope": "queue"}))[0] == (
        INVALID_ATTRIBUTE_VALUE
    )
    # Both changed in one request, as AWS's guide turns high throughput off: accepted.
    back = apply_update(high, {"DeduplicationScope": "queue", "FifoThroughputLimit": "perQueue"})
    assert (back.deduplication_scope, back.fifo_throughput_limit) == ("queue", "perQueue")


def test_queue_type_cannot_change():
    fifo = parse_create(FIFO)
    assert apply_update(fifo, {"FifoQueue": "true"}) is fifo
    assert error_of(lambda: apply_update(fifo, {"FifoQueue": "false"})) == (
        INVALID_ATTRIBUTE_VALUE,
        "Invalid value for the parameter FifoQueue. Reason: Modifying queue type is not supported.",
    )


def test_update_keeps_other_values():
    settings = apply_update(parse_create({"DelaySeconds": "5"}), {"VisibilityTimeout": "60"})
    assert (settings.delay_seconds, settings.visibility_timeout) == (5, 60)


def test_redrive_policy():
    raw = json.dumps({"deadLetterTargetArn": DLQ, "maxReceiveCount": "5"})
    assert parse_create({"RedrivePolicy": raw}).redrive_policy == RedrivePolicy(
        dead_letter_target_arn=DLQ, max_receive_count=5
    )
    with_policy = parse_create({"RedrivePolicy": raw})
    assert apply_update(with_policy, {"RedrivePolicy": ""}).redrive_policy is None


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ("[1]", "Redrive policy is not a valid JSON map"),
        ("{", "Redrive policy is not a valid JSON map"),
        (
            json.dumps({"maxReceiveCount": 3}),
            "Redrive policy does not contain mandatory attribute: deadLetterTargetArn",
        ),
        (
            json.dumps({"deadLetterTargetArn": "dummy", "maxReceiveCount": 42}),
            "Invalid value for deadLetterTargetArn",
        ),
        (
            json.dumps({"deadLetterTargetArn": DLQ, "maxReceiveCount": 1001}),
            "Invalid value for maxReceiveCount: 1001, "
            "valid values are from 1 to 1000 both inclusive",
        ),
        (
            json.dumps({"deadLetterTargetArn": DLQ, "maxReceiveCount": True}),
            "Invalid value for maxReceiveCount: True, "
            "valid values are from 1 to 1000 both inclusive",
        ),
    ],
)
def test_bad_redrive_policies(document, reason):
    assert error_of(lambda: parse_create({"RedrivePolicy": document})) == (
        INVALID_PARAMETER_VALUE,
        f"Value {document} for parameter RedrivePolicy is invalid. Reason: {reason}.",
    )


def test_redrive_allow_policy():
    by_queue = json.dumps({"redrivePermission": "byQueue", "sourceQueueArns": [SOURCE]})
    policy = parse_create({"RedriveAllowPolicy": by_queue}).redrive_allow_policy
    assert policy == RedriveAllowPolicy(permission="byQueue", source_queue_arns=(SOURCE,))
    assert policy.allows(SOURCE)
    assert not policy.allows(DLQ)
    for bad in [
        "x",
        json.dumps({"redrivePermission": "some"}),
        json.dumps({"redrivePermission": "byQueue"}),
        json.dumps({"redrivePermission": "allowAll", "sourceQueueArns": [SOURCE]}),
        json.dumps({"redrivePermission": "byQueue", "sourceQueueArns": [SOURCE] * 11}),
    ]:
        assert error_of(lambda bad=bad: parse_create({"RedriveAllowPolicy": bad}))[0] == (
            INVALID_PARAMETER_VALUE
        )


def test_dead_letter_target_checks():
    raw = json.dumps({"deadLetterTargetArn": DLQ, "maxReceiveCount": 3})
    source = parse_create({"RedrivePolicy": raw})
    check_dead_letter_target(source, SOURCE, QueueSettings())
    reasons = [
        error_of(lambda target=target: check_dead_letter_target(source, SOURCE, target))[1]
        for target in [
            None,
            parse_create(FIFO),
            parse_create({"RedriveAllowPolicy": json.dumps({"redrivePermission": "denyAll"})}),
        ]
    ]
    assert "Dead letter target does not exist" in reasons[0]
    assert "must be same type of queue" in reasons[1]
    assert "does not have permission" in reasons[2]


def test_encryption_kinds_exclude_each_other():
    kms = parse_create({"KmsMasterKeyId": "alias/key"})
    assert kms.kms_master_key_id == "alias/key"
    assert not kms.sqs_managed_sse_enabled
    assert error_of(lambda: apply_update(kms, {"SqsManagedSseEnabled": "true"})) == (
        INVALID_ATTRIBUTE_NAME,
        "You can use one type of server-side encryption (SSE) at one time. "
        "You can either enable KMS SSE or SQS SSE.",
    )
    cleared = apply_update(kms, {"KmsMasterKeyId": "", "SqsManagedSseEnabled": "true"})
    assert cleared.kms_master_key_id is None
    assert cleared.sqs_managed_sse_enabled


def test_policy_must_be_a_json_object():
    allow_all = '{"Statement": {"Effect": "Allow", "Principal": "*", "Action": "sqs:*"}}'
    assert parse_create({"Policy": allow_all}).policy == allow_all
    assert error_of(lambda: parse_create({"Policy": '{"Version": "2012-10-17"}'}))[0] == (
        INVALID_ATTRIBUTE_VALUE
    )
    assert parse_create({"Policy": ""}).policy is None
    assert error_of(lambda: parse_create({"Policy": "[]"}))[0] == INVALID_ATTRIBUTE_VALUE


@given(st.sampled_from(sorted(INTEGER_RANGES)), st.integers(-10, 2_000_000))
def test_integers_are_accepted_exactly_in_range(name, value):
    low, high, _ = INTEGER_RANGES[name]
    try:
        parse_create({name: str(value)})
        accepted = True
    except SqsError:
        accepted = False
    assert accepted == (low <= value <= high)


def test_a_policy_whose_condition_cannot_be_evaluated_is_refused() -> None:
    # Also for queues declared in the TOML file, which never pass through the API handlers.
    statement = {
        "Effect": "Deny",
        "Principal": "*",
        "Action": "sqs:*",
        "Resource": "*",
        "Condition": {"NoSuchOperator": {"aws:SecureTransport": "false"}},
    }
    document = json.dumps({"Version": "2012-10-17", "Statement": [statement]})
    assert error_of(lambda: parse_create({"Policy": document}))[0] == "InvalidAttributeValue"
    statement["Condition"] = {"Bool": {"aws:SecureTransport": "false"}}
    allowed = json.dumps({"Version": "2012-10-17", "Statement": [statement]})
    assert parse_create({"Policy": allowed}).policy == allowed
