"""ARNs and queue URLs; botocore's ArnParser is the outside opinion on ARN fields."""

from __future__ import annotations

import pytest
from botocore.utils import ArnParser, InvalidArnException
from hypothesis import assume, given
from hypothesis import strategies as st

from proto.aws.arn import (
    Arn,
    ArnError,
    QueueUrl,
    build_queue_url,
    parse_arn,
    parse_queue_arn,
    parse_queue_url,
    parse_subscription_arn,
    parse_topic_arn,
    queue_arn,
    subscription_arn,
    topic_arn,
)

regions = st.sampled_from(["us-east-1", "eu-west-1", "ap-southeast-2", "local", "us-gov-west-1"])
accounts = st.from_regex(r"\d{12}", fullmatch=True)
base_names = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-", min_size=1, max_size=75
)
queue_names = st.builds(lambda n, fifo: n + (".fifo" if fifo else ""), base_names, st.booleans())
topic_names = st.builds(
    lambda n, fifo: n + (".fifo" if fifo else ""),
    st.text(
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-", min_size=1, max_size=251
    ),
    st.booleans(),
)


def test_examples_from_the_sqs_and_sns_docs():
    arn = parse_queue_arn("arn:aws:sqs:us-east-2:123456789012:MyQueue")
    assert arn == Arn("aws", "sqs", "us-east-2", "123456789012", "MyQueue")
    assert str(arn) == "arn:aws:sqs:us-east-2:123456789012:MyQueue"
    topic, sub = parse_subscription_arn(
        "arn:aws:sns:us-east-1:123456789012:MyTopic:6b0e71bd-7e97-4d97-80ce-4a0994e55286"
    )
    assert topic.resource == "MyTopic"
    assert sub == "6b0e71bd-7e97-4d97-80ce-4a0994e55286"
    assert parse_queue_url("https://sqs.us-east-2.amazonaws.com/123456789012/MyQueue") == QueueUrl(
        "https://sqs.us-east-2.amazonaws.com", "123456789012", "MyQueue"
    )
    assert build_queue_url("http://127.0.0.1:9324", "000000000000", "jobs.fifo") == (
        "http://127.0.0.1:9324/000000000000/jobs.fifo"
    )
    # IAM ARNs have no region; S3 ARNs no region and no account.
    assert parse_arn("arn:aws:iam::123456789012:user/David").region == ""
    assert parse_arn("arn:aws:s3:::my_corporate_bucket/Development/*").account == ""


@given(regions, accounts, queue_names)
def test_queue_arn_round_trip(region, account, name):
    text = queue_arn(region, account, name)
    assert parse_queue_arn(text) == Arn("aws", "sqs", region, account, name)
    parsed = ArnParser().parse_arn(text)
    assert (parsed["region"], parsed["account"], parsed["resource"]) == (region, account, name)


@given(regions, accounts, topic_names, st.uuids())
def test_topic_and_subscription_round_trip(region, account, name, uuid):
    topic = topic_arn(region, account, name, partition="aws-cn")
    assert parse_topic_arn(topic).resource == name
    sub = subscription_arn(topic, str(uuid))
    assert parse_subscription_arn(sub) == (parse_topic_arn(topic), str(uuid))
    with pytest.raises(ArnError):
        parse_topic_arn(sub)


@given(
    st.text(max_size=60)
    | st.builds(lambda parts: "arn:" + ":".join(parts), st.lists(st.text(max_size=8), max_size=7))
)
def test_parse_arn_is_total_and_agrees_with_botocore(text):
    try:
        ours = parse_arn(text)
    except ArnError:
        return
    theirs = ArnParser().parse_arn(text)
    assert theirs == {
        "partition": ours.partition,
        "service": ours.service,
        "region": ours.region,
        "account": ours.account,
        "resource": ours.resource,
    }
    assert str(ours) == text


@given(st.text(max_size=60))
def test_botocore_rejects_what_has_too_few_fields(text):
    try:
        ArnParser().parse_arn(text)
    except InvalidArnException:
        with pytest.raises(ArnError):
            parse_arn(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "arn:aws:sqs:us-east-1:123456789012",
        "arn:aws:sqs:us-east-1:123456789012:",
        "arn:aws:sns:us-east-1:123456789012:q",
        "arn:aws:sqs::123456789012:q",
        "arn:aws:sqs:us-east-1::q",
        "arn:aws:sqs:us-east-1:1234:q",
        "arn:aws:sqs:us-east-1:123456789012:bad name",
        "arn:aws:sqs:us-east-1:123456789012:" + "q" * 81,
        "arn:aws:sqs:us-east-1:123456789012:q.fifo.fifo",
        "arn:AWS:sqs:us-east-1:123456789012:q",
        "urn:aws:sqs:us-east-1:123456789012:q",
    ],
)
def test_bad_queue_arns(text):
    with pytest.raises(ArnError) as caught:
        parse_queue_arn(text)
    assert caught.value.status_hint == 400


@given(
    st.sampled_from(["http", "https"]),
    st.sampled_from(["localhost", "127.0.0.1", "[::1]", "sqs.example.com"]),
    st.none() | st.integers(1, 65535),
    accounts,
    queue_names,
)
def test_queue_url_round_trip(scheme, host, port, account, name):
    base = f"{scheme}://{host}" + (f":{port}" if port else "")
    url = build_queue_url(base, account, name)
    assert parse_queue_url(url) == QueueUrl(base, account, name)
    assert str(parse_queue_url(url)) == url


@pytest.mark.parametrize(
    "url",
    [
        "ftp://h/123456789012/q",
        "http:///123456789012/q",
        "http://h/123456789012",
        "http://h/123456789012/q/",
        "http://h/123456789012/q?x=1",
        "http://h/123456789012/q#f",
        "http://h/12345/q",
        "http://h/123456789012/a b",
        "http://user@h/123456789012/q",
        "http://h:99999/123456789012/q",
        "http://h:port/123456789012/q",
        "queue",
    ],
)
def test_bad_queue_urls(url):
    with pytest.raises(ArnError):
        parse_queue_url(url)


@given(st.text(max_size=80))
def test_queue_url_parser_is_total(text):
    try:
        parsed = parse_queue_url(text)
    except ArnError:
        return
    assume(parsed)
    assert str(parsed) == text
