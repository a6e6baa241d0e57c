"""Topic policies with conditions, through boto3 against a real (anonymous-mode) broker.

The same condition language as queue policies (broker/model/conditions.py): a statement's
Condition sees the request's keys, and a Deny naming every principal binds anonymous callers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import botocore.exceptions
import msgspec
import pytest

from tests.support.broker import BrokerThread, broker_config
from tests.support.sns import sns_client


def _deny_publish(topic_arn: str, secure_transport: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Deny",
                    "Principal": "*",
                    "Action": "SNS:Publish",
                    "Resource": topic_arn,
                    "Condition": {"Bool": {"aws:SecureTransport": secure_transport}},
                }
            ],
        }
    )


def test_a_secure_transport_deny_binds_plain_http_only(shared_broker: BrokerThread) -> None:
    sns: Any = sns_client(shared_broker.endpoint)
    arn = sns.create_topic(Name="topic-policy-secure-transport")["TopicArn"]
    try:
        sns.publish(TopicArn=arn, Message="before any policy")
        sns.set_topic_attributes(
            TopicArn=arn, AttributeName="Policy", AttributeValue=_deny_publish(arn, "false")
        )
        with pytest.raises(botocore.exceptions.ClientError) as info:
            sns.publish(TopicArn=arn, Message="over plain HTTP")
        assert info.value.response["Error"]["Code"] == "AuthorizationError"
        # The same statement for TLS requests only: this plain-HTTP request is not one.
        sns.set_topic_attributes(
            TopicArn=arn, AttributeName="Policy", AttributeValue=_deny_publish(arn, "true")
        )
        sns.publish(TopicArn=arn, Message="the condition is false for this request")
    finally:
        sns.delete_topic(TopicArn=arn)


def test_a_topic_policy_past_100_statements_is_refused_and_the_old_one_kept(
    shared_broker: BrokerThread,
) -> None:
    sns: Any = sns_client(shared_broker.endpoint)
    arn = sns.create_topic(Name="topic-policy-quota")["TopicArn"]
    try:
        statement = json.loads(_deny_publish(arn, "true"))["Statement"][0]
        many = {"Version": "2012-10-17", "Statement": [statement] * 101}
        with pytest.raises(botocore.exceptions.ClientError) as info:
            sns.set_topic_attributes(
                TopicArn=arn, AttributeName="Policy", AttributeValue=json.dumps(many)
            )
        error = info.value.response["Error"]
        assert error["Code"] == "InvalidParameter"
        assert "at most 100 statements" in error["Message"]
        shown = sns.get_topic_attributes(TopicArn=arn)["Attributes"]["Policy"]
        assert len(json.loads(shown)["Statement"]) == 1  # the default policy, unchanged
    finally:
        sns.delete_topic(TopicArn=arn)


def _statement(topic_arn: str, sid: str, **elements: object) -> dict[str, object]:
    return {
        "Sid": sid,
        "Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::111122223333:root"},
        "Action": "SNS:Publish",
        "Resource": topic_arn,
        **elements,
    }


def _refusal(call: Any, **kwargs: Any) -> str:
    with pytest.raises(botocore.exceptions.ClientError) as info:
        call(**kwargs)
    error = info.value.response["Error"]
    assert (info.value.response["ResponseMetadata"]["HTTPStatusCode"], error["Code"]) == (
        400,
        "InvalidParameter",
    )
    message: str = error["Message"]
    return message


def test_a_topic_policy_breaking_sns_policy_rules_is_refused(shared_broker: BrokerThread) -> None:
    # SNS's API permissions reference: unique Sids, one Resource that is the topic's ARN.
    sns: Any = sns_client(shared_broker.endpoint)
    arn = sns.create_topic(Name="topic-policy-rules")["TopicArn"]
    try:
        refused = [
            [_statement(arn, "a"), _statement(arn, "a")],
            [_statement(arn, "a", Resource=arn + "-other")],
            [_statement(arn, "a", Resource=[arn, arn + "-other"])],
        ]
        for statements in refused:
            policy = json.dumps({"Version": "2012-10-17", "Statement": statements})
            message = _refusal(
                sns.set_topic_attributes,
                TopicArn=arn,
                AttributeName="Policy",
                AttributeValue=policy,
            )
            assert message.startswith("Invalid parameter: Policy Error: ")
        unknown_version = {"Version": "2099-01-01", "Statement": [_statement(arn, "a")]}
        message = _refusal(
            sns.set_topic_attributes,
            TopicArn=arn,
            AttributeName="Policy",
            AttributeValue=json.dumps(unknown_version),
        )
        assert message.endswith("Version must be 2008-10-17 or 2012-10-17")
        shown = sns.get_topic_attributes(TopicArn=arn)["Attributes"]["Policy"]
        assert json.loads(shown)["Id"] == "__default_policy_ID"  # unchanged

        foreign = json.dumps({"Statement": [_statement(arn, "a")]})  # names the other topic
        message = _refusal(
            sns.create_topic, Name="topic-policy-rules-2", Attributes={"Policy": foreign}
        )
        assert message.startswith("Invalid parameter: Attributes Reason: Policy Error: ")
        assert arn + "-2" not in [t["TopicArn"] for t in sns.list_topics()["Topics"]]
    finally:
        sns.delete_topic(TopicArn=arn)


def test_add_permission_extends_a_policy_the_user_set(shared_broker: BrokerThread) -> None:
    sns: Any = sns_client(shared_broker.endpoint)
    arn = sns.create_topic(Name="topic-policy-then-add-permission")["TopicArn"]
    try:
        policy = json.dumps({"Version": "2012-10-17", "Statement": [_statement(arn, "mine")]})
        sns.set_topic_attributes(TopicArn=arn, AttributeName="Policy", AttributeValue=policy)
        sns.add_permission(
            TopicArn=arn, Label="added", AWSAccountId=["444455556666"], ActionName=["Subscribe"]
        )
        shown = json.loads(sns.get_topic_attributes(TopicArn=arn)["Attributes"]["Policy"])
        assert [s["Sid"] for s in shown["Statement"]] == ["mine", "added"]
        message = _refusal(
            sns.add_permission,
            TopicArn=arn,
            Label="many",
            AWSAccountId=[f"{n:012d}" for n in range(200)],
            ActionName=["Publish"],
        )
        assert message == (
            "Invalid parameter: Policy Error: AddPermission would exceed the policy quota: "
            "a policy names at most 200 principals"
        )
    finally:
        sns.delete_topic(TopicArn=arn)


def test_a_policy_an_older_broker_stored_still_loads(tmp_path: Path) -> None:
    config = broker_config(tmp_path / "data")
    with BrokerThread(config) as first:
        sns: Any = sns_client(first.endpoint)
        arn = sns.create_topic(Name="topic-policy-legacy")["TopicArn"]
        legacy = json.dumps(
            {"Statement": [_statement(arn, "a"), _statement(arn, "a", Resource="*")]}
        )
        registry = first.app.topics
        assert registry is not None
        topic = registry.require(arn)
        settings = msgspec.structs.replace(topic.settings, policy=legacy)
        # What an older broker, which did not check Sids and Resources, may have stored.
        first.call(registry.store.update_topic, topic.record.topic_id, settings, 0)
    with BrokerThread(config) as second:
        sns = sns_client(second.endpoint)
        assert sns.get_topic_attributes(TopicArn=arn)["Attributes"]["Policy"] == legacy
        sns.publish(TopicArn=arn, Message="the owner may still publish")
        sns.add_permission(
            TopicArn=arn, Label="added", AWSAccountId=["444455556666"], ActionName=["Publish"]
        )
        sns.remove_permission(TopicArn=arn, Label="added")
        message = _refusal(
            sns.set_topic_attributes, TopicArn=arn, AttributeName="Policy", AttributeValue=legacy
        )
        assert "is repeated" in message
