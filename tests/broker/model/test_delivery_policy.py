import itertools
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.model.delivery_policy import (
    AWS_MANAGED_RETRY,
    BACKOFF_FUNCTIONS,
    CUSTOMER_MANAGED_RETRY,
    MAX_RECEIVES_PER_SECOND,
    MAX_RETRY_SECONDS,
    EffectiveDeliveryPolicy,
    RequestPolicy,
    RetryPolicy,
    SubscriptionDeliveryPolicy,
    ThrottlePolicy,
    TopicDeliveryPolicy,
    effective_policy,
    parse_subscription_delivery_policy,
    parse_topic_delivery_policy,
    render_subscription_effective,
    render_topic_effective,
    usable_policy,
)
from broker.model.sns_errors import SnsError


def sub_policy(document) -> SubscriptionDeliveryPolicy:
    parsed = parse_subscription_delivery_policy(json.dumps(document), in_attributes_map=False)
    assert parsed is not None
    return parsed


def error_of(document, *, topic=False, in_map=False) -> str:
    parse = parse_topic_delivery_policy if topic else parse_subscription_delivery_policy
    text = document if isinstance(document, str) else json.dumps(document)
    with pytest.raises(SnsError) as caught:
        parse(text, in_attributes_map=in_map)
    assert caught.value.code == "InvalidParameter"
    return caught.value.message


def test_the_default_policy_is_three_retries_twenty_seconds_apart():
    # DeliveryPolicies.md: "the default retry policy calls for a total of 3 retries with a
    # 20 second delay between each retry"
    assert RetryPolicy().schedule() == (20.0, 20.0, 20.0)
    assert RetryPolicy().delay(4) is None
    assert RetryPolicy().delay(0) is None


def test_the_documented_linear_example():
    # DeliveryPolicies.md: maximum delay 40, the rest default: "the first retry after 20
    # seconds, the second retry after 30 seconds, and the final retry after 40 seconds"
    assert RetryPolicy(max_delay_target=40).schedule() == (20.0, 30.0, 40.0)


def test_the_documented_four_phase_example():
    # sns-message-delivery-retries.md: 3 immediately, 2 one second apart, 10 with exponential
    # backoff from 1 to 60 seconds, 35 at 60 seconds: 50 attempts in all.
    policy = sub_policy(
        {
            "healthyRetryPolicy": {
                "minDelayTarget": 1,
                "maxDelayTarget": 60,
                "numRetries": 50,
                "numNoDelayRetries": 3,
                "numMinDelayRetries": 2,
                "numMaxDelayRetries": 35,
                "backoffFunction": "exponential",
            },
            "throttlePolicy": {"maxReceivesPerSecond": 10},
        }
    )
    assert policy.healthy_retry_policy is not None
    schedule = policy.healthy_retry_policy.schedule()
    assert len(schedule) == 50
    assert schedule[:3] == (0.0, 0.0, 0.0)
    assert schedule[3:5] == (1.0, 1.0)
    backoff = schedule[5:15]
    assert backoff[0] == 1.0
    assert backoff[-1] == 60.0
    assert list(backoff) == sorted(backoff)
    assert schedule[15:] == (60.0,) * 35
    assert policy.throttle_policy == ThrottlePolicy(max_receives_per_second=10)
    assert policy.throttle_policy.min_interval == 0.1


def test_the_sns_defined_policies_of_other_protocols():
    # AWS managed endpoints: 3 immediate, 2 at 1 s, 10 backoff 1..20 s, 100,000 at 20 s.
    schedule = [AWS_MANAGED_RETRY.delay(retry) for retry in range(1, 17)]
    assert schedule[:5] == [0.0, 0.0, 0.0, 1.0, 1.0]
    assert schedule[5] == 1.0
    assert schedule[14] == 20.0
    assert schedule[15] == 20.0
    assert AWS_MANAGED_RETRY.num_retries == 100_015
    # Customer managed endpoints: 0, 2 at 10 s, 10 backoff 10..600 s, 38 at 600 s: 50.
    assert CUSTOMER_MANAGED_RETRY.num_retries == 50
    assert CUSTOMER_MANAGED_RETRY.delay(1) == 10.0
    assert CUSTOMER_MANAGED_RETRY.delay(50) == 600.0


def test_each_backoff_function_runs_from_min_to_max():
    for function in BACKOFF_FUNCTIONS:
        policy = RetryPolicy(
            min_delay_target=5, max_delay_target=260, num_retries=10, backoff_function=function
        )
        schedule = policy.schedule()
        assert schedule[0] == 5.0
        assert schedule[-1] == pytest.approx(260.0)
        assert list(schedule) == sorted(schedule)
    # The graph's ordering at the middle of the phase: exponential rises last.
    middle = {
        function: RetryPolicy(
            min_delay_target=5, max_delay_target=260, num_retries=10, backoff_function=function
        ).schedule()[4]
        for function in BACKOFF_FUNCTIONS
    }
    assert middle["exponential"] < middle["geometric"] < middle["arithmetic"] < middle["linear"]


def test_a_policy_retrying_for_more_than_an_hour_is_refused():
    over = {"healthyRetryPolicy": {"minDelayTarget": 100, "maxDelayTarget": 100, "numRetries": 37}}
    with pytest.raises(SnsError) as caught:
        sub_policy(over)
    assert "healthyRetryPolicy: Total policy retry time cannot be greater than 3600 seconds" in (
        str(caught.value)
    )
    # Exactly an hour of delays: the last retry would fall after the window (the attempts
    # take time too), so it would never be made.
    for retries, delay in ((36, 100), (1, 3_600), (2, 1_800)):
        exactly = {
            "healthyRetryPolicy": {
                "minDelayTarget": delay,
                "maxDelayTarget": delay,
                "numRetries": retries,
            }
        }
        assert error_of(exactly) == (
            "Invalid parameter: DeliveryPolicy: healthyRetryPolicy: Total policy retry time "
            "must be less than 3600 seconds: a retry due 3600 seconds of delays after the "
            "first attempt falls after the retry window and would never be made"
        )
    within = {"healthyRetryPolicy": {"minDelayTarget": 1, "maxDelayTarget": 3_598, "numRetries": 2}}
    assert sum(sub_policy(within).healthy_retry_policy.schedule()) == 3_600 - 1
    # One stored by an older broker is kept: its earlier retries are still made.
    stored = SubscriptionDeliveryPolicy(
        healthy_retry_policy=RetryPolicy(
            min_delay_target=1_800, max_delay_target=1_800, num_retries=2
        )
    )
    assert effective_policy("http", None, stored).problems == ()


def test_next_attempt_and_the_one_hour_window():
    effective = EffectiveDeliveryPolicy(retry=RetryPolicy(max_delay_target=40))
    assert effective.next_attempt_at(0, first_attempt_at=100.0, failed_at=115.0) == 135.0
    assert effective.next_attempt_at(2, first_attempt_at=100.0, failed_at=200.0) == 240.0
    assert effective.next_attempt_at(3, first_attempt_at=100.0, failed_at=250.0) is None
    long = EffectiveDeliveryPolicy(
        retry=RetryPolicy(min_delay_target=3_600, max_delay_target=3_600)
    )
    assert long.next_attempt_at(0, first_attempt_at=0.0, failed_at=1.0) is None
    unlimited = EffectiveDeliveryPolicy(retry=AWS_MANAGED_RETRY, max_retry_seconds=None)
    assert unlimited.next_attempt_at(100_000, first_attempt_at=0.0, failed_at=1e9) == 1e9 + 20


def test_effective_policy_precedence():
    topic = TopicDeliveryPolicy(default_healthy_retry_policy=RetryPolicy(num_retries=7))
    own = SubscriptionDeliveryPolicy(healthy_retry_policy=RetryPolicy(num_retries=2))
    assert effective_policy("https", None, None).retry == RetryPolicy()
    assert effective_policy("http", topic, None).retry.num_retries == 7
    assert effective_policy("http", topic, own).retry.num_retries == 2
    locked = TopicDeliveryPolicy(
        default_healthy_retry_policy=RetryPolicy(num_retries=7), disable_subscription_overrides=True
    )
    assert effective_policy("http", locked, own).retry.num_retries == 7
    # Only HTTP/S policies can be changed; SQS follows SNS's own.
    sqs = effective_policy("sqs", topic, own)
    assert sqs.retry == AWS_MANAGED_RETRY
    assert sqs.max_retry_seconds is None
    assert effective_policy("email", None, None).retry == CUSTOMER_MANAGED_RETRY
    partial = SubscriptionDeliveryPolicy(throttle_policy=ThrottlePolicy(max_receives_per_second=5))
    combined = effective_policy("http", topic, partial)
    assert combined.retry.num_retries == 7
    assert combined.throttle.max_receives_per_second == 5


def test_parse_the_documented_shapes():
    # set-sub-attributes-delivery-policy-json.md shows {"healthyRetryPolicy":{"numRetries":5}},
    # which AWS itself refuses (minDelayTarget, maxDelayTarget and numRetries are required).
    policy = sub_policy(
        {"healthyRetryPolicy": {"minDelayTarget": 20, "maxDelayTarget": 20, "numRetries": 5}}
    )
    assert policy.healthy_retry_policy == RetryPolicy(num_retries=5)
    topic = parse_topic_delivery_policy(
        '{"http":{"defaultHealthyRetryPolicy":{"minDelayTarget":20,"maxDelayTarget":20,'
        '"numRetries":5},"disableSubscriptionOverrides":true,'
        '"defaultThrottlePolicy":{"maxReceivesPerSecond":3},'
        '"defaultRequestPolicy":{"headerContentType":"application/json"}}}',
        in_attributes_map=False,
    )
    assert topic == TopicDeliveryPolicy(
        default_healthy_retry_policy=RetryPolicy(num_retries=5),
        default_throttle_policy=ThrottlePolicy(max_receives_per_second=3),
        default_request_policy=RequestPolicy(header_content_type="application/json"),
        disable_subscription_overrides=True,
    )
    # What LocalStack's AWS-validated test sends, nulls and "guaranteed" included.
    sub_policy(
        {
            "healthyRetryPolicy": {"minDelayTarget": 1, "maxDelayTarget": 1, "numRetries": 0},
            "sicklyRetryPolicy": None,
            "throttlePolicy": {"maxReceivesPerSecond": 1000},
            "guaranteed": False,
        }
    )
    assert parse_subscription_delivery_policy("", in_attributes_map=True) is None
    assert parse_topic_delivery_policy("", in_attributes_map=True) is None
    assert parse_topic_delivery_policy("{}", in_attributes_map=True) == TopicDeliveryPolicy()


def full(fields: dict[str, object]) -> dict[str, object]:
    """A retry policy with the members AWS requires, and ``fields`` over them."""
    return {"minDelayTarget": 20, "maxDelayTarget": 20, "numRetries": 3, **fields}


def test_validation_messages():
    retry = "healthyRetryPolicy"
    # AWS refuses a retry policy without minDelayTarget, maxDelayTarget and numRetries.
    for missing in ("minDelayTarget", "maxDelayTarget", "numRetries"):
        partial = {k: v for k, v in full({}).items() if k != missing}
        assert error_of({retry: partial}) == (
            f"Invalid parameter: DeliveryPolicy: {retry}.{missing} must be specified"
        )
        assert error_of({"http": {"defaultHealthyRetryPolicy": partial}}, topic=True) == (
            f"Invalid parameter: DeliveryPolicy: http.defaultHealthyRetryPolicy.{missing} "
            "must be specified"
        )
    # The AWS message clients quote, for the topic shape:
    assert error_of(
        {"http": {"defaultHealthyRetryPolicy": full({"numRetries": 101})}}, topic=True
    ) == (
        "Invalid parameter: DeliveryPolicy: "
        "http.defaultHealthyRetryPolicy.numRetries must be less than or equal to 100"
    )
    assert error_of({"throttlePolicy": {}}, topic=True) == (
        "Invalid parameter: DeliveryPolicy: Unexpected JSON member: throttlePolicy"
    )
    assert error_of({retry: full({"numRetries": 101})}, in_map=True) == (
        "Invalid parameter: Attributes Reason: DeliveryPolicy: "
        "healthyRetryPolicy.numRetries must be less than or equal to 100"
    )
    cases = {
        "{": "failed to parse JSON.",
        "[]": "Delivery policy must be a JSON object",
        json.dumps({"x": 1}): "Unexpected JSON member: x",
        json.dumps(
            {retry: full({"minDelayTarget": 0})}
        ): f"{retry}.minDelayTarget must be greater than or equal to 1",
        json.dumps(
            {retry: full({"maxDelayTarget": 3601})}
        ): f"{retry}.maxDelayTarget must be less than or equal to 3600",
        json.dumps(
            {retry: full({"minDelayTarget": 30})}
        ): f"{retry}.maxDelayTarget must be greater than or equal to minDelayTarget",
        json.dumps(
            {retry: full({"numRetries": -1})}
        ): f"{retry}.numRetries must be greater than or equal to 0",
        json.dumps(
            {retry: full({"numNoDelayRetries": -1})}
        ): f"{retry}.numNoDelayRetries must be greater than or equal to 0",
        json.dumps({retry: full({"numRetries": 2, "numMinDelayRetries": 3})}): (
            f"{retry}.numRetries must be greater than or equal to total of "
            "numMinDelayRetries, numNoDelayRetries and numMaxDelayRetries"
        ),
        json.dumps({retry: full({"numRetries": "5"})}): f"{retry}.numRetries must be an integer",
        json.dumps({retry: full({"numRetries": True})}): f"{retry}.numRetries must be an integer",
        json.dumps({retry: full({"backoffFunction": "cubic"})}): (
            f"{retry}.backoffFunction must be one of linear, arithmetic, geometric, exponential"
        ),
        json.dumps({retry: []}): f"{retry} must be a JSON object",
        json.dumps({retry: {"other": 1}}): f"Unexpected JSON member: {retry}.other",
        json.dumps({"throttlePolicy": {"maxReceivesPerSecond": 0}}): (
            "throttlePolicy.maxReceivesPerSecond must be greater than or equal to 1"
        ),
        json.dumps({"throttlePolicy": {"maxReceivesPerSecond": 1.5}}): (
            "throttlePolicy.maxReceivesPerSecond must be an integer"
        ),
        json.dumps({"requestPolicy": {"headerContentType": "json"}}): (
            "requestPolicy.headerContentType must be a media type such as application/json, "
            "with parameters such as charset=UTF-8, in visible ASCII"
        ),
    }
    for text, reason in cases.items():
        assert error_of(text) == f"Invalid parameter: DeliveryPolicy: {reason}", text
    assert error_of({"http": []}, topic=True).endswith("http must be a JSON object")
    assert error_of({"http": {"disableSubscriptionOverrides": "yes"}}, topic=True).endswith(
        "http.disableSubscriptionOverrides must be a boolean"
    )


def test_a_throttle_beyond_the_cap_is_refused():
    # 10**400 has no float interval: accepted, it crashed the lane that delivered with it.
    assert MAX_RECEIVES_PER_SECOND == 1_000_000
    assert sub_policy({"throttlePolicy": {"maxReceivesPerSecond": MAX_RECEIVES_PER_SECOND}})
    for rate in (MAX_RECEIVES_PER_SECOND + 1, 10**400):
        throttle = {"maxReceivesPerSecond": rate}
        assert error_of({"throttlePolicy": throttle}) == (
            "Invalid parameter: DeliveryPolicy: throttlePolicy.maxReceivesPerSecond "
            "must be less than or equal to 1000000"
        )
        topic = {"http": {"defaultThrottlePolicy": throttle}}
        assert error_of(topic, topic=True).endswith(
            "http.defaultThrottlePolicy.maxReceivesPerSecond must be less than or equal to 1000000"
        )


def test_stored_values_the_parser_refuses_fall_back_to_the_defaults():
    # What an older broker stored without today's checks: the delivery must go on, with
    # AWS's defaults for the parts that cannot be used, and say why.
    stored = SubscriptionDeliveryPolicy(
        healthy_retry_policy=RetryPolicy(num_retries=10**30),
        throttle_policy=ThrottlePolicy(max_receives_per_second=10**400),
    )
    assert ThrottlePolicy(max_receives_per_second=10**400).min_interval == 0.0
    effective = effective_policy("https", None, stored)
    assert effective.retry == RetryPolicy()
    assert effective.throttle == ThrottlePolicy()
    assert effective.problems == (
        "healthyRetryPolicy.numRetries must be less than or equal to 100",
        "throttlePolicy.maxReceivesPerSecond must be less than or equal to 1000000",
    )
    fine = effective_policy(
        "https", None, sub_policy({"throttlePolicy": {"maxReceivesPerSecond": 2}})
    )
    assert usable_policy(fine) is fine
    assert fine.problems == ()


def test_header_content_types_are_media_types_a_request_can_carry():
    # The value becomes every POST's Content-Type field: RFC 9110 8.3.1 media-type, 5.5
    # field-value (visible ASCII, no CR, LF or other controls). Accepted before, these made
    # every delivery fail before a byte was sent.
    for fine in (
        "application/json",
        "text/plain; charset=UTF-8",
        'text/xml;charset="utf-8"',
        'text/plain ; a=b; q="x \\" y"',
    ):
        assert sub_policy({"requestPolicy": {"headerContentType": fine}}).request_policy == (
            RequestPolicy(header_content_type=fine)
        )
    media_type = (
        "headerContentType must be a media type such as application/json, "
        "with parameters such as charset=UTF-8, in visible ASCII"
    )
    for bad in (
        "text/plain; charset=\u00e9",
        "text/plain; a\rb",
        "text/plain; a=b\r\nX-Injected: 1",
        "text/plain; a=b\u0000",
        "text/plain; charset",
        "text/plain;",
        "text/plain; a=b c",
        5,
    ):
        assert error_of({"requestPolicy": {"headerContentType": bad}}).endswith(
            f"requestPolicy.{media_type}"
        ), bad
        topic = {"http": {"defaultRequestPolicy": {"headerContentType": bad}}}
        assert error_of(topic, topic=True).endswith(f"http.defaultRequestPolicy.{media_type}")
    long = "text/plain; a=" + "b" * 20_000
    assert error_of({"requestPolicy": {"headerContentType": long}}).endswith(
        "requestPolicy.headerContentType must be at most 256 characters long"
    )
    stored = SubscriptionDeliveryPolicy(request_policy=RequestPolicy(header_content_type="a\rb"))
    effective = effective_policy("http", None, stored)
    assert effective.request == RequestPolicy()
    assert effective.problems == (f"requestPolicy.{media_type}",)


def test_rendering_the_effective_policies():
    # The get-topic-attributes CLI example shows this healthy retry policy and member order.
    assert render_topic_effective(None) == (
        '{"http":{"defaultHealthyRetryPolicy":{"minDelayTarget":20,"maxDelayTarget":20,'
        '"numRetries":3,"numMaxDelayRetries":0,"numNoDelayRetries":0,"numMinDelayRetries":0,'
        '"backoffFunction":"linear"},"disableSubscriptionOverrides":false,'
        '"defaultRequestPolicy":{"headerContentType":"text/plain; charset=UTF-8"}}}'
    )
    throttled = TopicDeliveryPolicy(
        default_throttle_policy=ThrottlePolicy(max_receives_per_second=4)
    )
    assert json.loads(render_topic_effective(throttled))["http"]["defaultThrottlePolicy"] == {
        "maxReceivesPerSecond": 4
    }
    document = json.loads(render_subscription_effective(EffectiveDeliveryPolicy()))
    assert document["sicklyRetryPolicy"] is None
    assert document["throttlePolicy"] is None
    assert document["guaranteed"] is False
    assert document["healthyRetryPolicy"]["numRetries"] == 3


retry_policies = st.builds(
    lambda minimum, extra, counts, function, total_extra: RetryPolicy(
        min_delay_target=minimum,
        max_delay_target=min(minimum + extra, 3_600),
        num_retries=sum(counts) + total_extra,
        num_no_delay_retries=counts[0],
        num_min_delay_retries=counts[1],
        num_max_delay_retries=counts[2],
        backoff_function=function,
    ),
    st.integers(1, 3_600),
    st.integers(0, 3_600),
    st.tuples(st.integers(0, 30), st.integers(0, 30), st.integers(0, 30)),
    st.sampled_from(BACKOFF_FUNCTIONS),
    st.integers(0, 10),
)


@given(policy=retry_policies)
def test_schedules_follow_the_four_phases(policy):
    document = {
        "healthyRetryPolicy": {
            "minDelayTarget": policy.min_delay_target,
            "maxDelayTarget": policy.max_delay_target,
            "numRetries": policy.num_retries,
            "numNoDelayRetries": policy.num_no_delay_retries,
            "numMinDelayRetries": policy.num_min_delay_retries,
            "numMaxDelayRetries": policy.num_max_delay_retries,
            "backoffFunction": policy.backoff_function,
        }
    }
    schedule = policy.schedule()
    # sns-message-delivery-retries: the total policy retry time is at most 3,600 s.
    if sum(schedule) > MAX_RETRY_SECONDS:
        with pytest.raises(SnsError, match="Total policy retry time cannot be greater than 3600"):
            sub_policy(document)
    elif round(sum(schedule), 6) >= MAX_RETRY_SECONDS:
        with pytest.raises(SnsError, match="Total policy retry time must be less than 3600"):
            sub_policy(document)
    else:
        assert sub_policy(document).healthy_retry_policy == policy
    assert len(schedule) == policy.num_retries
    phases = [0.0] * policy.num_no_delay_retries + [
        float(policy.min_delay_target)
    ] * policy.num_min_delay_retries
    assert list(schedule[: len(phases)]) == phases
    tail = (
        schedule[len(schedule) - policy.num_max_delay_retries :]
        if policy.num_max_delay_retries
        else ()
    )
    assert all(delay == policy.max_delay_target for delay in tail)
    backoff = schedule[len(phases) : len(schedule) - policy.num_max_delay_retries]
    assert len(backoff) == policy.num_backoff_retries
    for earlier, later in itertools.pairwise(backoff):
        assert earlier <= later + 1e-9
    for delay in backoff:
        assert policy.min_delay_target - 1e-9 <= delay <= policy.max_delay_target + 1e-9
    if len(backoff) >= 2:
        assert backoff[0] == policy.min_delay_target
        assert backoff[-1] == pytest.approx(policy.max_delay_target)


@given(policy=retry_policies, start=st.floats(0, 1e9))
def test_retries_stay_inside_the_one_hour_window(policy, start):
    effective = EffectiveDeliveryPolicy(retry=policy)
    now, retries = start, 0
    while (at := effective.next_attempt_at(retries, start, now)) is not None:
        assert at >= now
        assert at - start <= MAX_RETRY_SECONDS
        now, retries = at, retries + 1
    assert retries <= policy.num_retries
