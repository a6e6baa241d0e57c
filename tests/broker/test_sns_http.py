"""SNS on the shared listener: routing by scope and action, unsigned links, errors, the cert."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import botocore.exceptions
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from broker import sns_http
from monitoring.httpserver import Request
from tests.support.broker import (
    ACCESS_KEY_ID,
    SECRET_ACCESS_KEY,
    BrokerThread,
    broker_config,
    write_credentials,
)
from tests.support.sns import Endpoint, sns_client

OTHER_KEY = "AKIAWHARFTESTKEY0002"
OTHER_SECRET = "wharf-test-secret-access-key-0002"
OTHER_PRINCIPAL = "arn:aws:iam::111122223333:user/stranger"


@pytest.fixture(scope="module")
def signed_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerThread]:
    directory = tmp_path_factory.mktemp("signed")
    auth = write_credentials(
        directory,
        [(ACCESS_KEY_ID, SECRET_ACCESS_KEY, ""), (OTHER_KEY, OTHER_SECRET, OTHER_PRINCIPAL)],
    )
    with BrokerThread(broker_config(directory / "data", auth=auth)) as broker:
        yield broker


def form(broker: BrokerThread, body: str, method: str = "POST") -> tuple[int, str]:
    if method == "GET":
        status, _, answer = broker.http("GET", f"/?{body}")
    else:
        status, _, answer = broker.http(
            "POST",
            "/",
            headers=[("content-type", "application/x-www-form-urlencoded")],
            body=body.encode(),
        )
    return status, answer.decode()


def test_the_signing_certificate_is_served(shared_broker: BrokerThread) -> None:
    status, headers, body = shared_broker.http("GET", "/SimpleNotificationService-wharf.pem")
    assert status == 200
    assert headers["content-type"] == "application/x-pem-file"
    assert body.startswith(b"-----BEGIN CERTIFICATE-----")


def test_unsigned_requests_are_routed_by_action(shared_broker: BrokerThread) -> None:
    status, body = form(shared_broker, "Action=ListTopics&Version=2010-03-31")
    assert status == 200
    assert "<ListTopicsResponse" in body
    status, body = form(shared_broker, "Action=ListQueues&Version=2012-11-05")
    assert status == 200
    assert "<ListQueuesResponse" in body
    topic = "arn:aws:sns:us-east-1:000000000000:nope"
    status, body = form(
        shared_broker,
        f"Action=AddPermission&TopicArn={quote(topic)}&Label=l&AWSAccountId.member.1=1"
        "&ActionName.member.1=Publish",
    )
    assert (status, "<Code>NotFound</Code>" in body) == (404, True)
    status, body = form(shared_broker, "Action=ListPlatformApplications")
    assert status == 400
    assert "ListPlatformApplications is out of scope for Wharf" in body
    assert 'xmlns="http://sns.amazonaws.com/doc/2010-03-31/"' in body


def test_signed_sqs_requests_still_reach_sqs(shared_broker: BrokerThread) -> None:
    for protocol in ("json", "query"):
        answer = shared_broker.client(protocol).list_queues()
        assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
    sns = sns_client(shared_broker.endpoint)
    assert "Topics" in sns.list_topics()
    requests = shared_broker.metrics()["wharf_broker_requests"]
    services = {sample.labels["service"] for sample in requests.samples if sample.value}
    assert {"sqs", "sns"} <= services


def test_signatures_are_required_except_for_subscriber_links(signed_broker: BrokerThread) -> None:
    sns = sns_client(signed_broker.endpoint)
    topic = sns.create_topic(Name="links")["TopicArn"]
    status, body = form(signed_broker, "Action=ListTopics")
    assert status == 403
    assert "<Code>MissingAuthenticationToken</Code>" in body
    with Endpoint() as endpoint:
        sns.subscribe(TopicArn=topic, Protocol="http", Endpoint=endpoint.url)
        envelope = endpoint.wait_for(1)[0].envelope()
        url = envelope["SubscribeURL"].split("/", 3)[3]
        status, body = form(signed_broker, url.removeprefix("?"), method="GET")
        assert status == 200, body
        arn = body.split("<SubscriptionArn>")[1].split("<")[0]
        status, body = form(signed_broker, f"Action=Unsubscribe&SubscriptionArn={arn}", "GET")
        assert status == 200, body
        assert sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"] == []


def test_authenticate_on_unsubscribe_needs_a_signature(signed_broker: BrokerThread) -> None:
    sns = sns_client(signed_broker.endpoint)
    topic = sns.create_topic(Name="guarded")["TopicArn"]
    with Endpoint() as endpoint:
        sns.subscribe(TopicArn=topic, Protocol="http", Endpoint=endpoint.url)
        token = endpoint.wait_for(1)[0].envelope()["Token"]
        arn = sns.confirm_subscription(
            TopicArn=topic, Token=token, AuthenticateOnUnsubscribe="true"
        )["SubscriptionArn"]
        status, body = form(signed_broker, f"Action=Unsubscribe&SubscriptionArn={arn}", "GET")
        assert status == 403
        assert "<Code>AuthorizationError</Code>" in body
        sns.unsubscribe(SubscriptionArn=arn)


def test_topic_policies_apply_to_other_accounts(signed_broker: BrokerThread) -> None:
    owner = sns_client(signed_broker.endpoint)
    stranger = sns_client(
        signed_broker.endpoint, access_key_id=OTHER_KEY, secret_access_key=OTHER_SECRET
    )
    topic = owner.create_topic(Name="policed")["TopicArn"]
    with pytest.raises(botocore.exceptions.ClientError) as info:
        stranger.publish(TopicArn=topic, Message="m")
    error: dict[str, Any] = info.value.response["Error"]
    assert error["Code"] == "AuthorizationError"
    assert error["Message"] == (
        f"User: {OTHER_PRINCIPAL} is not authorized to perform: SNS:Publish on resource: {topic}"
    )
    owner.add_permission(
        TopicArn=topic, Label="open", AWSAccountId=["111122223333"], ActionName=["Publish"]
    )
    assert stranger.publish(TopicArn=topic, Message="m")["MessageId"]
    with pytest.raises(botocore.exceptions.ClientError):
        stranger.delete_topic(TopicArn=topic)


def test_malformed_signatures_go_to_the_sqs_error_path(shared_broker: BrokerThread) -> None:
    status, _, body = shared_broker.http(
        "POST",
        "/",
        headers=[("authorization", "AWS4-HMAC-SHA256 nonsense")],
        body=b"Action=ListTopics",
    )
    assert status == 400
    assert b"IncompleteSignature" in body


def _signed_json(broker: BrokerThread, service: str, target: str) -> tuple[int, str, str]:
    """An awsJson request (X-Amz-Target), signed for ``service`` with the test key."""
    body = json.dumps({"Name": "json-topic"}).encode()
    headers = {"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": target}
    signed = AWSRequest(method="POST", url=broker.endpoint + "/", data=body, headers=headers)
    credentials = Credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY)
    SigV4Auth(credentials, service, "us-east-1").add_auth(signed)
    status, answer_headers, answer = broker.http(
        "POST", "/", headers=list(signed.headers.items()), body=body
    )
    return status, answer_headers["content-type"], answer.decode()


def test_a_json_request_signed_for_sns_gets_an_sns_error(signed_broker: BrokerThread) -> None:
    # SNS has no JSON protocol; a request whose credential scope says sns is SNS's all the
    # same, so its error is SNS's (query XML), not SQS's UnknownOperationException.
    status, content_type, body = _signed_json(signed_broker, "sns", "AmazonSNS.CreateTopic")
    assert (status, content_type) == (400, "text/xml")
    assert 'xmlns="http://sns.amazonaws.com/doc/2010-03-31/"' in body
    assert "<Code>InvalidAction</Code>" in body
    assert "AmazonSNS.CreateTopic is not valid for this web service" in body
    assert "json-topic" not in str(sns_client(signed_broker.endpoint).list_topics())
    # The same request signed for SQS is SQS's, as before.
    status, content_type, body = _signed_json(signed_broker, "sqs", "AmazonSQS.ListQueues")
    assert (status, content_type) == (200, "application/x-amz-json-1.0")


def test_data_protection_on_create_topic_is_refused(shared_broker: BrokerThread) -> None:
    sns = sns_client(shared_broker.endpoint)
    with pytest.raises(botocore.exceptions.ClientError) as info:
        sns.create_topic(Name="dp", DataProtectionPolicy=json.dumps({"Name": "x"}))
    assert "out of scope" in info.value.response["Error"]["Message"]


def test_public_url_shapes_the_links(tmp_path: Path) -> None:
    config = broker_config(tmp_path / "data", api={"public_url": "https://sns.internal:8443"})
    with BrokerThread(config) as broker:
        sns = sns_client(broker.endpoint)
        sqs = broker.client("json")
        topic = sns.create_topic(Name="t")["TopicArn"]
        url = sqs.create_queue(QueueName="q")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)
        sns.publish(TopicArn=topic, Message="m")
        body = json.loads(sqs.receive_message(QueueUrl=url)["Messages"][0]["Body"])
        assert re.fullmatch(
            r"https://sns\.internal:8443/SimpleNotificationService-[0-9a-f]{32}\.pem",
            body["SigningCertURL"],
        )
        assert body["UnsubscribeURL"].startswith("https://sns.internal:8443/?Action=Unsubscribe")


def test_another_account_reaches_only_what_it_owns_or_is_granted(
    signed_broker: BrokerThread,
) -> None:
    owner = sns_client(signed_broker.endpoint)
    stranger = sns_client(
        signed_broker.endpoint, access_key_id=OTHER_KEY, secret_access_key=OTHER_SECRET
    )
    topic = owner.create_topic(Name="owned")["TopicArn"]
    with Endpoint() as endpoint:
        mine = owner.subscribe(
            TopicArn=topic,
            Protocol="http",
            Endpoint=endpoint.url.replace("://", "://user:s3cret@"),
            ReturnSubscriptionArn=True,
        )["SubscriptionArn"]

        def refused(call: Any, **params: Any) -> str:
            with pytest.raises(botocore.exceptions.ClientError) as info:
                call(**params)
            assert info.value.response["Error"]["Code"] == "AuthorizationError"
            return str(info.value.response["Error"]["Message"])

        # Actions on the account's own resources, which no topic policy grants:
        assert "SNS:CreateTopic on resource: arn:aws:sns:us-east-1:000000000000:theirs" in (
            refused(stranger.create_topic, Name="theirs")
        )
        refused(stranger.tag_resource, ResourceArn=topic, Tags=[{"Key": "k", "Value": "v"}])
        refused(stranger.untag_resource, ResourceArn=topic, TagKeys=["k"])
        refused(stranger.list_tags_for_resource, ResourceArn=topic)
        # Another's subscription: neither its attributes (an endpoint's password) nor a change.
        refused(stranger.get_subscription_attributes, SubscriptionArn=mine)
        refused(
            stranger.set_subscription_attributes,
            SubscriptionArn=mine,
            AttributeName="RawMessageDelivery",
            AttributeValue="true",
        )
        refused(stranger.unsubscribe, SubscriptionArn=mine)
        # Its own listings: none of the owner's topics or subscriptions.
        assert stranger.list_topics()["Topics"] == []
        assert stranger.list_subscriptions()["Subscriptions"] == []
        # Granted Subscribe, it owns its subscription: it may read, change and end it.
        owner.add_permission(
            TopicArn=topic, Label="sub", AWSAccountId=["111122223333"], ActionName=["Subscribe"]
        )
        queue = "arn:aws:sqs:us-east-1:000000000000:never-created"
        theirs = stranger.subscribe(
            TopicArn=topic, Protocol="sqs", Endpoint=queue, ReturnSubscriptionArn=True
        )["SubscriptionArn"]
        listed = stranger.list_subscriptions()["Subscriptions"]
        assert [s["SubscriptionArn"] for s in listed] == [theirs]
        attributes = stranger.get_subscription_attributes(SubscriptionArn=theirs)["Attributes"]
        assert attributes["Owner"] == "111122223333"
        stranger.unsubscribe(SubscriptionArn=theirs)
        owner.unsubscribe(SubscriptionArn=mine)
    owner.delete_topic(TopicArn=topic)


def test_subscribe_policies_see_the_protocol_and_the_endpoint(signed_broker: BrokerThread) -> None:
    owner = sns_client(signed_broker.endpoint)
    stranger = sns_client(
        signed_broker.endpoint, access_key_id=OTHER_KEY, secret_access_key=OTHER_SECRET
    )
    topic = owner.create_topic(Name="sqs-only")["TopicArn"]
    queue = "arn:aws:sqs:us-east-1:000000000000:never-created"
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {  # others may subscribe their queues, nothing else
                "Effect": "Allow",
                "Principal": {"AWS": "111122223333"},
                "Action": "SNS:Subscribe",
                "Resource": topic,
                "Condition": {"StringEquals": {"sns:Protocol": "sqs"}},
            },
            {  # and no one endpoints outside example.com over HTTP(S)
                "Effect": "Deny",
                "Principal": "*",
                "Action": "SNS:Subscribe",
                "Resource": topic,
                "Condition": {
                    "StringEquals": {"sns:Protocol": ["http", "https"]},
                    "StringNotLike": {"sns:Endpoint": "https://*.example.com/*"},
                },
            },
        ],
    }
    owner.set_topic_attributes(
        TopicArn=topic, AttributeName="Policy", AttributeValue=json.dumps(policy)
    )
    arn = stranger.subscribe(
        TopicArn=topic, Protocol="sqs", Endpoint=queue, ReturnSubscriptionArn=True
    )["SubscriptionArn"]
    for client, endpoint in ((stranger, "https://hooks.example.com/x"), (owner, "http://a.b/")):
        with pytest.raises(botocore.exceptions.ClientError) as info:
            client.subscribe(TopicArn=topic, Protocol="https", Endpoint=endpoint)
        assert info.value.response["Error"]["Code"] == "AuthorizationError"
    stranger.unsubscribe(SubscriptionArn=arn)
    owner.delete_topic(TopicArn=topic)


def test_a_url_named_by_a_link_local_address_encodes_its_zone() -> None:
    """HTTP/1.0 without Host, to fe80::1%eth0: the URL is ``http://[fe80::1%25eth0]:9324``
    (RFC 6874), not ``[fe80::1%eth0]``, which URL parsers refuse or read as another zone."""
    serving = object.__new__(sns_http.SnsFrontend)  # _base_url reads public_url and scheme only
    serving.public_url = ""
    serving.scheme = "http"
    request = Request(
        method=b"POST",
        target=b"/",
        headers=[],
        body=b"",
        client=("fe80::2%eth0", 50000),
        local=("fe80::1%eth0", 9324),
    )
    assert serving._base_url(request) == "http://[fe80::1%25eth0]:9324"
