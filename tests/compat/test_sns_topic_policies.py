"""Topic policies with conditions, through boto3 against a real (anonymous-mode) broker.

The same condition language as queue policies (broker/model/conditions.py): a statement's
Condition sees the request's keys, and a Deny naming every principal binds anonymous callers.
"""

from __future__ import annotations

import json
from typing import Any

import botocore.exceptions
import pytest

from tests.support.broker import BrokerThread
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
