import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.model.delivery_policy import RetryPolicy, TopicDeliveryPolicy
from broker.model.filter_match import attributes_view
from broker.model.sns_errors import SnsError
from broker.model.subscriptions import (
    SubscriptionContext,
    SubscriptionFacts,
    SubscriptionSettings,
    apply_update,
    compiled_filter,
    effective_delivery,
    masked_endpoint,
    parse_subscribe,
    render_attributes,
)

TOPIC = "arn:aws:sns:us-east-1:123456789012:orders"
QUEUE = "arn:aws:sqs:us-east-1:123456789012:q"
SQS = SubscriptionContext("sqs", QUEUE, topic_fifo=False, topic_arn=TOPIC)
HTTP = SubscriptionContext("https", "https://example.com/hook", topic_fifo=False, topic_arn=TOPIC)
FACTS = SubscriptionFacts(
    subscription_arn=f"{TOPIC}:0b6ed8a1",
    topic_arn=TOPIC,
    protocol="sqs",
    endpoint=QUEUE,
    owner="123456789012",
    pending_confirmation=False,
    confirmation_was_authenticated=True,
)
NESTED = json.dumps({"object": {"key": [{"prefix": "auto-"}]}})


def message_of(call) -> str:
    with pytest.raises(SnsError) as caught:
        call()
    assert caught.value.code == "InvalidParameter"
    return caught.value.message


def test_defaults_render_like_aws():
    # AWS-recorded "sub-attrs-default": no FilterPolicyScope until a FilterPolicy is set.
    assert render_attributes(SubscriptionSettings(), FACTS, None) == {
        "ConfirmationWasAuthenticated": "true",
        "Endpoint": QUEUE,
        "Owner": "123456789012",
        "PendingConfirmation": "false",
        "Protocol": "sqs",
        "RawMessageDelivery": "false",
        "SubscriptionArn": f"{TOPIC}:0b6ed8a1",
        "TopicArn": TOPIC,
    }
    scoped = apply_update(SubscriptionSettings(), "FilterPolicyScope", "MessageBody", SQS)
    assert "FilterPolicyScope" not in render_attributes(scoped, FACTS, None)
    with_policy = apply_update(scoped, "FilterPolicy", '{"attr": ["match-this"]}', SQS)
    rendered = render_attributes(
        with_policy, FACTS._replace(principal="arn:aws:iam::1:user/u"), None
    )
    assert rendered["FilterPolicy"] == '{"attr": ["match-this"]}'
    assert rendered["FilterPolicyScope"] == "MessageBody"
    assert rendered["SubscriptionPrincipal"] == "arn:aws:iam::1:user/u"


def test_filter_policy_scope_errors_and_ordering():
    # AWS-recorded message for a bad scope:
    assert message_of(
        lambda: apply_update(SubscriptionSettings(), "FilterPolicyScope", "RandomValue", SQS)
    ) == (
        "Invalid parameter: FilterPolicyScope: Invalid value [RandomValue]. "
        "Please use either MessageBody or MessageAttributes"
    )
    # AWS-recorded: a nested policy in the default scope.
    assert message_of(
        lambda: apply_update(SubscriptionSettings(), "FilterPolicy", NESTED, SQS)
    ) == (
        "Invalid parameter: Filter policy scope MessageAttributes does not support nested "
        "filter policy"
    )
    # Subscribe applies the scope first, whatever the map's order.
    settings = parse_subscribe({"FilterPolicy": NESTED, "FilterPolicyScope": "MessageBody"}, SQS)
    assert settings.filter_policy_scope == "MessageBody"
    # Switching a nested policy back to the attributes scope is refused.
    assert "does not support nested" in message_of(
        lambda: apply_update(settings, "FilterPolicyScope", "MessageAttributes", SQS)
    )
    assert message_of(lambda: parse_subscribe({"FilterPolicy": '{"a": "b"}'}, SQS)) == (
        'Invalid parameter: Attributes Reason: FilterPolicy: "a" must be an object or an array'
    )


def test_the_compiled_filter_follows_the_stored_text():
    assert compiled_filter(SubscriptionSettings()) is None
    settings = parse_subscribe({"FilterPolicy": '{"k": ["v"]}'}, SQS)
    policy = compiled_filter(settings)
    assert policy is not None
    assert policy.matches(attributes_view({"k": {"DataType": "String", "StringValue": "v"}}))
    cleared = apply_update(settings, "FilterPolicy", "", SQS)
    assert cleared.filter_policy is None
    assert compiled_filter(cleared) is None


@pytest.mark.parametrize("cidr", ["10.0.0.1/32", "2001:db8::1/128", "fe80::%eth0/64"])
def test_a_stored_cidr_wharf_took_before_still_compiles(cidr):
    # A store written before cidr followed event-ruler holds such policies: the broker must
    # still load them (a refusal here stopped it from starting), though a new one is refused.
    text = json.dumps({"ip": [{"cidr": cidr}]})
    with pytest.raises(SnsError):
        parse_subscribe({"FilterPolicy": text}, SQS)
    policy = compiled_filter(SubscriptionSettings(filter_policy=text))
    address = cidr.split("/")[0].split("%")[0]
    view = attributes_view({"ip": {"DataType": "String", "StringValue": address}})
    assert policy is not None
    assert policy.matches(view)


@pytest.mark.parametrize(
    ("rule", "value", "matches"),
    [
        ('{"numeric": [">", 2000000000]}', 5, False),
        ('{"numeric": ["<", 1e400]}', 5, True),
        ('{"numeric": [">=", 0, "<", 2e9]}', 5, True),
        ('{"anything-but": [5, 3e9]}', 5, False),
        ('{"anything-but": 3e9}', 5, True),
    ],
)
def test_a_stored_numeric_operand_beyond_the_range_still_compiles(rule, value, matches):
    # Wharf took operands beyond +-1e9 until 29 Nov 2026; a store holding one stopped the
    # broker from starting. They compile as floats (no number beyond 1e9 is compared).
    text = f'{{"price": [{rule}]}}'
    with pytest.raises(SnsError):
        parse_subscribe({"FilterPolicy": text}, SQS)
    policy = compiled_filter(SubscriptionSettings(filter_policy=text))
    assert policy is not None
    view = attributes_view({"price": {"DataType": "Number", "StringValue": str(value)}})
    assert policy.matches(view) is matches


def test_raw_message_delivery():
    assert parse_subscribe({"RawMessageDelivery": "True"}, SQS).raw_message_delivery
    assert message_of(lambda: parse_subscribe({"RawMessageDelivery": "yes"}, SQS)) == (
        "Invalid parameter: Attributes Reason: RawMessageDelivery: Invalid value [yes]. "
        "Must be true or false."
    )
    email = SubscriptionContext("email", "someone@example.com", topic_fifo=False, topic_arn=TOPIC)
    assert "does not support raw message delivery" in message_of(
        lambda: apply_update(SubscriptionSettings(), "RawMessageDelivery", "true", email)
    )


def test_redrive_policy():
    policy = json.dumps({"deadLetterTargetArn": QUEUE + "-dlq"})
    settings = apply_update(SubscriptionSettings(), "RedrivePolicy", policy, SQS)
    assert settings.dead_letter_target_arn == QUEUE + "-dlq"
    assert render_attributes(settings, FACTS, None)["RedrivePolicy"] == policy
    assert apply_update(settings, "RedrivePolicy", "", SQS).dead_letter_target_arn is None
    assert message_of(lambda: apply_update(settings, "RedrivePolicy", "{", SQS)) == (
        "Invalid parameter: RedrivePolicy: failed to parse JSON."
    )
    bad = json.dumps({"deadLetterTargetArn": "arn:aws:sns:us-east-1:1:t"})
    assert message_of(lambda: apply_update(settings, "RedrivePolicy", bad, SQS)) == (
        "Invalid parameter: RedrivePolicy: deadLetterTargetArn is an invalid arn"
    )
    fifo = SubscriptionContext("sqs", QUEUE + ".fifo", topic_fifo=True, topic_arn=TOPIC + ".fifo")
    assert message_of(lambda: apply_update(settings, "RedrivePolicy", policy, fifo)) == (
        "Invalid parameter: RedrivePolicy: must use a FIFO queue as DLQ for a FIFO Subscription "
        "to a FIFO Topic."
    )
    fifo_dlq = json.dumps({"deadLetterTargetArn": QUEUE + "-dlq.fifo"})
    assert apply_update(settings, "RedrivePolicy", fifo_dlq, fifo).dead_letter_target_arn


@pytest.mark.parametrize(
    "elsewhere",
    ["arn:aws:sqs:us-west-2:123456789012:dlq", "arn:aws:sqs:us-east-1:111111111111:dlq"],
)
@pytest.mark.parametrize("context", [SQS, HTTP])
def test_a_dead_letter_queue_in_another_account_or_region_is_refused(
    context: SubscriptionContext, elsewhere: str
) -> None:
    """The broker could never deliver there: accepted, it would lose what it was meant to
    keep."""
    policy = json.dumps({"deadLetterTargetArn": elsewhere})
    assert message_of(
        lambda: apply_update(SubscriptionSettings(), "RedrivePolicy", policy, context)
    ) == (
        "Invalid parameter: RedrivePolicy: the dead-letter queue must be in the topic's account "
        "and region (123456789012, us-east-1)"
    )
    assert message_of(lambda: parse_subscribe({"RedrivePolicy": policy}, context)) == (
        "Invalid parameter: Attributes Reason: RedrivePolicy: the dead-letter queue must be in "
        "the topic's account and region (123456789012, us-east-1)"
    )


@pytest.mark.parametrize("standard", [SQS, HTTP])
def test_a_standard_topic_subscription_refuses_a_fifo_dead_letter_queue(
    standard: SubscriptionContext,
) -> None:
    """SNS dead-letter queues: "standard topic subscriptions use standard queues"."""
    fifo_dlq = json.dumps({"deadLetterTargetArn": QUEUE + "-dlq.fifo"})
    with pytest.raises(SnsError) as info:
        apply_update(SubscriptionSettings(), "RedrivePolicy", fifo_dlq, standard)
    assert info.value.code == "InvalidParameter"
    assert info.value.message == (
        "Invalid parameter: RedrivePolicy: must use a standard queue as DLQ for a subscription "
        "to a standard Topic."
    )
    standard_dlq = json.dumps({"deadLetterTargetArn": QUEUE + "-dlq"})
    assert apply_update(SubscriptionSettings(), "RedrivePolicy", standard_dlq, standard)


def test_delivery_policy_and_the_effective_policy():
    text = json.dumps(
        {"healthyRetryPolicy": {"minDelayTarget": 20, "maxDelayTarget": 20, "numRetries": 5}}
    )
    settings = parse_subscribe({"DeliveryPolicy": text}, HTTP)
    assert effective_delivery(settings, "https", None).retry == RetryPolicy(num_retries=5)
    topic = TopicDeliveryPolicy(
        default_healthy_retry_policy=RetryPolicy(num_retries=9), disable_subscription_overrides=True
    )
    assert effective_delivery(settings, "https", topic).retry.num_retries == 9
    rendered = render_attributes(settings, FACTS._replace(protocol="https"), None)
    assert rendered["DeliveryPolicy"] == text
    assert json.loads(rendered["EffectiveDeliveryPolicy"])["healthyRetryPolicy"]["numRetries"] == 5
    assert "EffectiveDeliveryPolicy" not in render_attributes(settings, FACTS, None)  # sqs
    assert message_of(lambda: parse_subscribe({"DeliveryPolicy": "[]"}, HTTP)) == (
        "Invalid parameter: Attributes Reason: DeliveryPolicy: "
        "Delivery policy must be a JSON object"
    )


FIFO_SQS = SubscriptionContext("sqs", QUEUE + ".fifo", topic_fifo=True, topic_arn=TOPIC + ".fifo")
ROLE = "arn:aws:iam::123456789012:role/service-role/sns-firehose"
REPLAY = '{"PointType":"Timestamp","StartingPoint":"2026-12-01T00:00:00Z"}'


def test_other_attributes():
    settings = parse_subscribe({"SubscriptionRoleArn": ROLE, "ReplayPolicy": REPLAY}, FIFO_SQS)
    rendered = render_attributes(settings, FACTS, None)
    assert rendered["SubscriptionRoleArn"] == ROLE
    assert rendered["ReplayPolicy"] == REPLAY
    cleared = apply_update(settings, "ReplayPolicy", "", FIFO_SQS)
    assert "ReplayPolicy" not in render_attributes(cleared, FACTS, None)
    assert message_of(lambda: parse_subscribe({"Unknown": "x"}, SQS)) == (
        "Invalid parameter: Attributes Reason: AttributeName"
    )
    assert message_of(lambda: apply_update(settings, "Owner", "x", SQS)) == (
        "Invalid parameter: AttributeName"
    )


@pytest.mark.parametrize(
    "value",
    [
        "not an arn",
        "arn:aws:iam::123456789012:user/alice",
        "arn:aws:iam::1:role/r",  # not an account id
        "arn:aws:iam:us-east-1:123456789012:role/r",  # IAM ARNs have no region
        "arn:aws:sts::123456789012:role/r",
        "arn:aws:iam::123456789012:role/",
        "arn:aws:iam::123456789012:role/" + "r" * 65,
    ],
)
def test_a_subscription_role_arn_must_name_an_iam_role(value: str):
    for context in (SQS, FIFO_SQS):
        assert message_of(lambda context=context: apply_update(
            SubscriptionSettings(), "SubscriptionRoleArn", value, context
        )) == (
            "Invalid parameter: SubscriptionRoleArn: must be an IAM role ARN, "
            "arn:aws:iam::<account>:role/<name>"
        )  # fmt: skip


def test_a_replay_policy_is_a_json_object_on_a_fifo_topic_only():
    assert message_of(lambda: parse_subscribe({"ReplayPolicy": REPLAY}, SQS)) == (
        "Invalid parameter: Attributes Reason: ReplayPolicy: only subscriptions to FIFO topics "
        "replay messages"
    )
    assert apply_update(SubscriptionSettings(), "ReplayPolicy", "", SQS).replay_policy is None
    for bad in ("garbage", "[]", '"x"', "{", '{"a": NaN}'):
        assert message_of(
            lambda bad=bad: apply_update(SubscriptionSettings(), "ReplayPolicy", bad, FIFO_SQS)
        ) == ("Invalid parameter: ReplayPolicy: failed to parse JSON.")


@given(
    path=st.lists(st.from_regex(r"[A-Za-z0-9_-]{1,10}", fullmatch=True), max_size=3),
    name=st.from_regex(r"[A-Za-z0-9+=,.@_-]{1,64}", fullmatch=True),
)
def test_every_iam_role_arn_is_a_subscription_role_arn(path: list[str], name: str):
    arn = f"arn:aws:iam::123456789012:role/{''.join(p + '/' for p in path)}{name}"
    settings = apply_update(SubscriptionSettings(), "SubscriptionRoleArn", arn, SQS)
    assert settings.subscription_role_arn == arn


@given(
    raw=st.sampled_from(["true", "false", "TRUE", "False"]),
    scope=st.sampled_from(["MessageAttributes", "MessageBody"]),
    values=st.lists(st.text(max_size=5), min_size=1, max_size=3),
)
def test_subscribe_keeps_what_it_was_given(raw, scope, values):
    policy = json.dumps({"key": values})
    settings = parse_subscribe(
        {"RawMessageDelivery": raw, "FilterPolicy": policy, "FilterPolicyScope": scope}, SQS
    )
    rendered = render_attributes(settings, FACTS, None)
    assert rendered["RawMessageDelivery"] == raw.lower()
    assert rendered["FilterPolicy"] == policy
    assert rendered["FilterPolicyScope"] == scope
    compiled = compiled_filter(settings)
    assert compiled is not None
    assert compiled.scope == scope


@pytest.mark.parametrize(
    ("endpoint", "shown"),
    [
        ("http://alice:s3cret@h:8080/p?q=1", "http://alice:****@h:8080/p?q=1"),
        ("https://bob:p%40ss@h", "https://bob:****@h"),
        ("https://u:a@b@h/x", "https://u:****@h/x"),
        ("https://nopass@h/x", "https://nopass@h/x"),
        ("https://h/path@x:y", "https://h/path@x:y"),
        ("arn:aws:sqs:us-east-1:000000000000:q", "arn:aws:sqs:us-east-1:000000000000:q"),
    ],
)  # fmt: skip
def test_endpoint_passwords_are_masked(endpoint, shown):
    assert masked_endpoint(endpoint) == shown


@given(
    st.from_regex(r"[a-z]{1,8}", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9%!$]{1,12}", fullmatch=True),
    st.from_regex(r"[a-z0-9.]{1,12}(:[0-9]{1,5})?", fullmatch=True),
    st.from_regex(r"(/[a-z0-9@:]*)?(\?[a-z=&@:]*)?", fullmatch=True),
)
def test_a_masked_endpoint_keeps_everything_but_the_password(user, password, host, tail):
    shown = masked_endpoint(f"https://{user}:{password}@{host}{tail}")
    assert shown == f"https://{user}:****@{host}{tail}"
    assert masked_endpoint(f"https://{host}{tail}") == f"https://{host}{tail}"
