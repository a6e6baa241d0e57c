"""HTTP/S subscriptions against real local endpoints: confirm, verify, receive, fail, recover.

The endpoint (tests.support.sns.Endpoint) checks every envelope's signature with the
certificate fetched from its SigningCertURL, confirms by GETting SubscribeURL, and then fails
on purpose: 500, a hang past the broker's response timeout, a TCP reset, bytes that are not
HTTP. The broker must retry per the delivery policy, then dead-letter, while another
subscription of the same topic keeps receiving at once.
"""

from __future__ import annotations

import functools
import itertools
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from broker.config import SnsSettings
from tests.support.auth_guard import AuthGuard
from tests.support.broker import (
    ACCESS_KEY_ID,
    SECRET_ACCESS_KEY,
    BrokerThread,
    broker_config,
    write_credentials,
)
from tests.support.sns import (
    Endpoint,
    Received,
    check_signature,
    fetch,
    queue_arn,
    receive_all,
    sns_client,
)
from tests.support.tls import write_pair

pytestmark = pytest.mark.slow

_unique = itertools.count()
FAST_RETRIES = json.dumps(
    {"healthyRetryPolicy": {"numRetries": 2, "minDelayTarget": 1, "maxDelayTarget": 1}}
)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA) -> Iterator[BrokerThread]:
    directory = tmp_path_factory.mktemp("sns-http")
    ca_file = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    settings = SnsSettings(
        connect_timeout_seconds=1, response_timeout_seconds=1, ca_file=str(ca_file)
    )
    with BrokerThread(broker_config(directory / "data", sns=settings)) as running:
        yield running


def notifications(request: Received) -> bool:
    return request.headers.get("x-amz-sns-message-type") == "Notification"


def message_type(request: Received) -> str | None:
    return request.headers.get("x-amz-sns-message-type")


def pending_deliveries(broker: BrokerThread, topic: str) -> float:
    """The topic's ``wharf_sns_pending_http_deliveries`` gauge."""
    family = broker.metrics()["wharf_sns_pending_http_deliveries"]
    name = topic.rsplit(":", 1)[1]
    return next(s.value for s in family.samples if s.labels["topic"] == name)


def settled(read: Callable[[], float], expected: float, *, timeout: float = 5) -> float:
    """``read()`` once it gives ``expected``, or its last value when ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    while (value := read()) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def confirm(endpoint: Endpoint, *, via_url: bool = True) -> str:
    """Answer the SubscriptionConfirmation the endpoint got; return the subscription ARN."""
    (request,) = endpoint.wait_for(
        1, match=lambda r: r.headers["x-amz-sns-message-type"] == "SubscriptionConfirmation"
    )[-1:]
    envelope = request.envelope()
    check_signature(envelope, fetch(envelope["SigningCertURL"]))
    body = fetch(envelope["SubscribeURL"]).decode()  # unsigned GET, like a browser's
    start = body.index("<SubscriptionArn>") + len("<SubscriptionArn>")
    return body[start : body.index("</SubscriptionArn>")]


def topic_and_queue(broker: BrokerThread) -> tuple[Any, str, Any, str, str]:
    sns = sns_client(broker.endpoint)
    sqs = broker.client("json")
    unique = next(_unique)
    topic = sns.create_topic(Name=f"http-{unique}")["TopicArn"]
    dlq = sqs.create_queue(QueueName=f"http-dlq-{unique}")["QueueUrl"]
    return sns, topic, sqs, dlq, queue_arn(sqs, dlq)


def test_subscribe_confirm_receive_and_unsubscribe(broker: BrokerThread) -> None:
    sns, topic, _, _, _ = topic_and_queue(broker)
    with Endpoint() as endpoint:
        answer = sns.subscribe(TopicArn=topic, Protocol="http", Endpoint=endpoint.url)
        assert answer["SubscriptionArn"] == "pending confirmation"
        (request,) = endpoint.wait_for(1)
        assert request.method == "POST"
        assert request.target == "/hook"
        assert request.headers["x-amz-sns-message-type"] == "SubscriptionConfirmation"
        assert request.headers["x-amz-sns-topic-arn"] == topic
        assert "x-amz-sns-subscription-arn" not in request.headers
        assert request.headers["user-agent"] == "Amazon Simple Notification Service Agent"
        pending = sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]
        assert pending[0]["SubscriptionArn"] == "PendingConfirmation"
        subscription = confirm(endpoint)
        attributes = sns.get_subscription_attributes(SubscriptionArn=subscription)["Attributes"]
        assert attributes["PendingConfirmation"] == "false"
        assert attributes["ConfirmationWasAuthenticated"] == "false"  # confirmed by a plain GET

        message_id = sns.publish(TopicArn=topic, Message="hello", Subject="hi")["MessageId"]
        (delivery,) = endpoint.wait_for(1, match=notifications)
        assert delivery.headers["x-amz-sns-message-id"] == message_id
        assert delivery.headers["x-amz-sns-subscription-arn"] == subscription
        assert delivery.headers["x-amz-sns-rawdelivery"] == "false"
        assert delivery.headers["content-type"] == "text/plain; charset=UTF-8"
        envelope = delivery.envelope()
        assert (envelope["Message"], envelope["Subject"]) == ("hello", "hi")
        check_signature(envelope, fetch(envelope["SigningCertURL"]))

        fetch(envelope["UnsubscribeURL"])
        assert sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"] == []
        goodbye = endpoint.wait_for(
            1, match=lambda r: r.headers["x-amz-sns-message-type"] == "UnsubscribeConfirmation"
        )[0]
        assert goodbye.headers["x-amz-sns-subscription-arn"] == subscription
        check_signature(goodbye.envelope(), fetch(goodbye.envelope()["SigningCertURL"]))


def test_confirm_subscription_action_and_signature_version_2(broker: BrokerThread) -> None:
    sns, topic, _, _, _ = topic_and_queue(broker)
    sns.set_topic_attributes(TopicArn=topic, AttributeName="SignatureVersion", AttributeValue="2")
    with Endpoint() as endpoint:
        arn = sns.subscribe(
            TopicArn=topic, Protocol="http", Endpoint=endpoint.url, ReturnSubscriptionArn=True
        )["SubscriptionArn"]
        envelope = endpoint.wait_for(1)[0].envelope()
        assert envelope["SignatureVersion"] == "2"
        check_signature(envelope, fetch(envelope["SigningCertURL"]))
        confirmed = sns.confirm_subscription(TopicArn=topic, Token=envelope["Token"])
        assert confirmed["SubscriptionArn"] == arn
        again = sns.confirm_subscription(TopicArn=topic, Token=envelope["Token"])
        assert again["SubscriptionArn"] == arn  # idempotent
        attributes = sns.get_subscription_attributes(SubscriptionArn=arn)["Attributes"]
        assert attributes["ConfirmationWasAuthenticated"] == "true"
        with pytest.raises(sns.exceptions.InvalidParameterException) as info:
            sns.confirm_subscription(TopicArn=topic, Token="0" * 128)
        assert info.value.response["Error"]["Message"] == "Invalid parameter: Token"
        # Not even shaped like a token: AWS's other answer (LocalStack's AWS-validated
        # snapshot, invalid-token).
        with pytest.raises(sns.exceptions.InvalidParameterException) as info:
            sns.confirm_subscription(TopicArn=topic, Token="randomtoken")
        assert info.value.response["Error"]["Message"] == "Invalid token"


def attempts_of(sent: list[Received]) -> list[list[Received]]:
    """Requests grouped into delivery attempts: one begins 0.5 s or more after the last."""
    attempts: list[list[Received]] = []
    for request in sent:
        if attempts and request.at - attempts[-1][-1].at < 0.5:
            attempts[-1].append(request)
        else:
            attempts.append([request])
    return attempts


@pytest.mark.parametrize("failure", ["500", "hang", "reset", "garbage"])
def test_failing_endpoint_is_retried_then_dead_lettered_while_others_receive(
    broker: BrokerThread, failure: str
) -> None:
    sns, topic, sqs, dlq_url, dlq_arn = topic_and_queue(broker)
    attributes = {
        "DeliveryPolicy": FAST_RETRIES,
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn}),
    }
    with Endpoint() as bad, Endpoint() as good:
        bad.behaviour_of = lambda r: failure if notifications(r) else "ok"
        sns.subscribe(TopicArn=topic, Protocol="http", Endpoint=bad.url, Attributes=attributes)
        sns.subscribe(TopicArn=topic, Protocol="http", Endpoint=good.url)
        confirm(bad)
        confirm(good)
        published = time.monotonic()
        message_id = sns.publish(TopicArn=topic, Message=f"to {failure}")["MessageId"]
        (prompt,) = good.wait_for(1, match=notifications)
        assert prompt.at - published < 0.5  # the failing endpoint delays nobody
        bad.wait_for(3, match=notifications, timeout=20)
        (dead,) = receive_all(sqs, dlq_url, 1, timeout=10)
        envelope = json.loads(dead["Body"])
        assert (envelope["MessageId"], envelope["Message"]) == (message_id, f"to {failure}")
        time.sleep(1.5)
        sent = bad.wait_for(3, match=notifications)
        assert {r.headers["x-amz-sns-message-id"] for r in sent} == {message_id}
        attempts = attempts_of(sent)
        assert len(attempts) == 3, attempts  # numRetries 2: three in all
        # One request per attempt; but a reset on a reused keep-alive connection is taken for
        # a stale connection and the request sent once more at once, on a fresh one
        # (7e7a7eb): only the first attempt can have found the confirmation's connection.
        assert [len(attempt) for attempt in attempts[1:]] == [1, 1], attempts
        assert len(attempts[0]) <= (2 if failure == "reset" else 1), attempts
        starts = [attempt[0].at for attempt in attempts]
        gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
        assert all(gap >= 0.9 for gap in gaps), gaps  # minDelayTarget 1 s between attempts
        counted = broker.metrics()["wharf_sns_notifications_failed"]
        name = topic.rsplit(":", 1)[1]
        failed = {(s.labels["topic"], s.labels["protocol"]): s.value for s in counted.samples}
        assert failed[(name, "http")] == 3  # every failed attempt, as AWS counts HTTP/S


def test_client_errors_are_not_retried_but_throttling_is(broker: BrokerThread) -> None:
    sns, topic, sqs, dlq_url, dlq_arn = topic_and_queue(broker)
    attributes = {
        "DeliveryPolicy": FAST_RETRIES,
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn}),
    }
    with Endpoint() as refusing, Endpoint() as throttling:
        refusing.behaviour_of = lambda r: "404" if notifications(r) else "ok"
        answers = iter(["429", "ok"])
        throttling.behaviour_of = lambda r: next(answers) if notifications(r) else "ok"
        for endpoint in (refusing, throttling):
            sns.subscribe(
                TopicArn=topic, Protocol="http", Endpoint=endpoint.url, Attributes=attributes
            )
            confirm(endpoint)
        sns.publish(TopicArn=topic, Message="m")
        assert len(receive_all(sqs, dlq_url, 1, timeout=10)) == 1
        assert len(throttling.wait_for(2, match=notifications)) == 2
        time.sleep(1.5)
        assert len(refusing.wait_for(1, match=notifications)) == 1


def test_a_confirmed_subscription_gets_no_more_confirmation_retries(
    broker: BrokerThread,
) -> None:
    sns, topic, *_ = topic_and_queue(broker)
    retries = json.dumps(
        {"healthyRetryPolicy": {"numRetries": 5, "minDelayTarget": 1, "maxDelayTarget": 1}}
    )
    with Endpoint(behaviour="500") as endpoint:  # answers the confirmation with 500 ...
        sns.subscribe(
            TopicArn=topic,
            Protocol="http",
            Endpoint=endpoint.url,
            Attributes={"DeliveryPolicy": retries},
        )
        confirm(endpoint)  # ... yet follows its SubscribeURL
        time.sleep(0.2)  # a retry already under way when it confirmed may still land
        seen = len(endpoint.requests)
        time.sleep(2.5)  # the policy would have retried twice more by now
        assert len(endpoint.requests) == seen


def test_unsubscribing_a_pending_subscription_ends_its_confirmations(
    broker: BrokerThread,
) -> None:
    sns, topic, *_ = topic_and_queue(broker)
    retries = json.dumps(
        {"healthyRetryPolicy": {"numRetries": 5, "minDelayTarget": 1, "maxDelayTarget": 1}}
    )
    with Endpoint(behaviour="500") as endpoint:  # fails every SubscriptionConfirmation
        arn = sns.subscribe(
            TopicArn=topic,
            Protocol="http",
            Endpoint=endpoint.url,
            Attributes={"DeliveryPolicy": retries},
            ReturnSubscriptionArn=True,
        )["SubscriptionArn"]
        (first,) = endpoint.wait_for(1)
        sns.unsubscribe(SubscriptionArn=arn)
        # Nothing left to send: the retries went with the subscription (one in flight at
        # the Unsubscribe ends with its attempt).
        assert settled(lambda: pending_deliveries(broker, topic), 0) == 0
        seen = len(endpoint.requests)
        time.sleep(2.5)  # the policy would have retried twice more by now
        assert len(endpoint.requests) == seen
        # Never confirmed, so no UnsubscribeConfirmation: its link would have confirmed it.
        assert {message_type(r) for r in endpoint.requests} == {"SubscriptionConfirmation"}
        with pytest.raises(sns.exceptions.InvalidParameterException):
            sns.confirm_subscription(TopicArn=topic, Token=first.envelope()["Token"])
        with pytest.raises(sns.exceptions.NotFoundException):
            sns.get_subscription_attributes(SubscriptionArn=arn)


def test_an_unsubscribe_confirmation_is_retried_on_the_subscriptions_own_policy(
    broker: BrokerThread,
) -> None:
    sns, topic, *_ = topic_and_queue(broker)

    def goodbyes(request: Received) -> bool:
        return message_type(request) == "UnsubscribeConfirmation"

    with Endpoint() as endpoint:
        endpoint.behaviour_of = lambda r: "500" if goodbyes(r) else "ok"
        sns.subscribe(
            TopicArn=topic,
            Protocol="http",
            Endpoint=endpoint.url,
            Attributes={"DeliveryPolicy": FAST_RETRIES},  # 2 retries, 1 s apart
        )
        arn = confirm(endpoint)
        sns.unsubscribe(SubscriptionArn=arn)
        # AWS's default policy would wait 20 s before the first retry.
        attempts = endpoint.wait_for(3, match=goodbyes, timeout=10)
        assert len({r.headers["x-amz-sns-message-id"] for r in attempts}) == 1
        assert settled(lambda: pending_deliveries(broker, topic), 0) == 0  # then given up
        assert len([r for r in endpoint.requests if goodbyes(r)]) == 3


def test_raw_delivery_throttle_and_content_type(broker: BrokerThread) -> None:
    sns, topic, _, _, _ = topic_and_queue(broker)
    policy = {
        "throttlePolicy": {"maxReceivesPerSecond": 4},
        "requestPolicy": {"headerContentType": "application/json"},
    }
    with Endpoint() as endpoint:
        sns.subscribe(
            TopicArn=topic,
            Protocol="http",
            Endpoint=endpoint.url,
            Attributes={"RawMessageDelivery": "true", "DeliveryPolicy": json.dumps(policy)},
        )
        confirm(endpoint)
        for index in range(5):
            sns.publish(TopicArn=topic, Message=f'{{"n": {index}}}')
        received = endpoint.wait_for(5, match=notifications)
        assert sorted(r.body for r in received) == [f'{{"n": {i}}}'.encode() for i in range(5)]
        assert all(r.headers["x-amz-sns-rawdelivery"] == "true" for r in received)
        assert all(r.headers["content-type"] == "application/json" for r in received)
        assert received[-1].at - received[0].at >= 0.9  # 4 per second: 5 take at least 1 s


def test_https_endpoints_are_verified(broker: BrokerThread, ca: trustme.CA, tmp_path: Path) -> None:
    sns, topic, _, _, _ = topic_and_queue(broker)
    trusted = ca.issue_cert("localhost")
    server = trustme.CA().issue_cert("localhost")  # issued by a CA the broker does not trust
    contexts = []
    for issued in (trusted, server):
        import ssl

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        issued.configure_cert(context)
        contexts.append(context)
    write_pair(ca, tmp_path, "unused", "localhost")  # the helper stays exercised
    with Endpoint(ssl_context=contexts[0]) as good, Endpoint(ssl_context=contexts[1]) as bad:
        sns.subscribe(TopicArn=topic, Protocol="https", Endpoint=good.url)
        sns.subscribe(TopicArn=topic, Protocol="https", Endpoint=bad.url)
        confirm(good)
        time.sleep(0.5)
        assert bad.requests == []  # the handshake failed: nothing reached the handler


def test_pending_confirmation_is_not_delivered_to(broker: BrokerThread) -> None:
    sns, topic, _, _, _ = topic_and_queue(broker)
    with Endpoint() as endpoint:
        sns.subscribe(TopicArn=topic, Protocol="http", Endpoint=endpoint.url)
        endpoint.wait_for(1)
        sns.publish(TopicArn=topic, Message="nobody listens yet")
        time.sleep(0.5)
        assert [r for r in endpoint.requests if notifications(r)] == []
        request = urllib.request.Request(f"{broker.endpoint}/SimpleNotificationService-wharf.pem")
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.read().startswith(b"-----BEGIN CERTIFICATE-----")


ATTRIBUTES = {
    "colour": {"DataType": "String", "StringValue": "red"},
    "count": {"DataType": "Number", "StringValue": "7"},
    "blob": {"DataType": "Binary", "BinaryValue": b"\x00\x01"},
}


def sqs_attributes(message: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: {k: v for k, v in value.items() if k in ("DataType", "StringValue", "BinaryValue")}
        for name, value in message.get("MessageAttributes", {}).items()
    }


def test_dead_letters_keep_the_published_attributes(broker: BrokerThread) -> None:
    sns, topic, sqs, raw_dlq, raw_dlq_arn = topic_and_queue(broker)
    plain_dlq = sqs.create_queue(QueueName=f"http-plain-dlq-{next(_unique)}")["QueueUrl"]
    gone = sqs.create_queue(QueueName=f"http-gone-{next(_unique)}")["QueueUrl"]
    sqs_dlq = sqs.create_queue(QueueName=f"http-sqs-dlq-{next(_unique)}")["QueueUrl"]
    with Endpoint() as raw, Endpoint() as plain:
        for endpoint, dlq_arn, is_raw in (
            (raw, raw_dlq_arn, "true"),
            (plain, queue_arn(sqs, plain_dlq), "false"),
        ):
            endpoint.behaviour_of = lambda r: "404" if notifications(r) else "ok"
            sns.subscribe(
                TopicArn=topic,
                Protocol="http",
                Endpoint=endpoint.url,
                Attributes={
                    "RawMessageDelivery": is_raw,
                    "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn}),
                },
            )
            confirm(endpoint)
        # A raw SQS subscription whose queue is gone: dead-lettered at once, as AWS does.
        sns.subscribe(
            TopicArn=topic,
            Protocol="sqs",
            Endpoint=queue_arn(sqs, gone),
            Attributes={
                "RawMessageDelivery": "true",
                "RedrivePolicy": json.dumps({"deadLetterTargetArn": queue_arn(sqs, sqs_dlq)}),
            },
        )
        sqs.delete_queue(QueueUrl=gone)
        sns.publish(TopicArn=topic, Message="undeliverable", MessageAttributes=ATTRIBUTES)
        (raw_dead,) = receive_all(sqs, raw_dlq, 1, timeout=10)
        assert raw_dead["Body"] == "undeliverable"
        assert sqs_attributes(raw_dead) == ATTRIBUTES
        (sqs_dead,) = receive_all(sqs, sqs_dlq, 1, timeout=10)
        assert sqs_dead["Body"] == "undeliverable"
        assert sqs_attributes(sqs_dead) == ATTRIBUTES
        (plain_dead,) = receive_all(sqs, plain_dlq, 1, timeout=10)
        envelope = json.loads(plain_dead["Body"])  # the envelope carries them
        assert envelope["Message"] == "undeliverable"
        assert envelope["MessageAttributes"] == {
            "colour": {"Type": "String", "Value": "red"},
            "count": {"Type": "Number", "Value": "7"},
            "blob": {"Type": "Binary", "Value": "AAE="},
        }


def test_subscribing_again_while_pending_sends_a_new_confirmation(broker: BrokerThread) -> None:
    sns, topic, _, _, _ = topic_and_queue(broker)

    def confirmations(request: Received) -> bool:
        return request.headers["x-amz-sns-message-type"] == "SubscriptionConfirmation"

    with Endpoint() as endpoint:
        first_arn = sns.subscribe(
            TopicArn=topic, Protocol="http", Endpoint=endpoint.url, ReturnSubscriptionArn=True
        )["SubscriptionArn"]
        endpoint.wait_for(1, match=confirmations)  # the endpoint lets this one lapse
        again = sns.subscribe(
            TopicArn=topic, Protocol="http", Endpoint=endpoint.url, ReturnSubscriptionArn=True
        )
        assert again["SubscriptionArn"] == first_arn  # the same subscription, still pending
        first, second = endpoint.wait_for(2, match=confirmations)
        assert second.envelope()["Token"] != first.envelope()["Token"]
        check_signature(second.envelope(), fetch(second.envelope()["SigningCertURL"]))
        assert confirm(endpoint) == first_arn  # the newest confirmation's SubscribeURL
        attributes = sns.get_subscription_attributes(SubscriptionArn=first_arn)["Attributes"]
        assert attributes["PendingConfirmation"] == "false"
        # Confirmed: a repeated Subscribe answers the ARN and sends nothing more.
        sns.subscribe(TopicArn=topic, Protocol="http", Endpoint=endpoint.url)
        time.sleep(0.3)
        assert len([r for r in endpoint.requests if confirmations(r)]) == 2


def test_a_new_token_ends_the_old_confirmations_retries(broker: BrokerThread) -> None:
    """Subscribed again while pending, against an endpoint answering 500: only the newest
    token's confirmation is retried (found by a report-only hunt: the old one's retries went
    on, each after the new one's, so an endpoint confirming with the last it got failed)."""
    sns, topic, *_ = topic_and_queue(broker)
    retries = json.dumps(
        {"healthyRetryPolicy": {"numRetries": 5, "minDelayTarget": 1, "maxDelayTarget": 1}}
    )
    with Endpoint(behaviour="500") as endpoint:
        subscribe = functools.partial(
            sns.subscribe,
            TopicArn=topic,
            Protocol="http",
            Endpoint=endpoint.url,
            Attributes={"DeliveryPolicy": retries},
        )
        subscribe()
        (first,) = endpoint.wait_for(1)
        subscribe()
        endpoint.wait_for(2)
        time.sleep(3.5)  # the policy retries every second: the old token 3 times more
        tokens = [r.envelope()["Token"] for r in endpoint.requests]
        old = first.envelope()["Token"]
        assert tokens[-1] != old
        assert tokens.count(old) <= 2  # its first try, and a retry under way at the Subscribe


def test_a_digest_protected_endpoint_is_confirmed_and_delivered_to(broker: BrokerThread) -> None:
    sns, topic, _, _, _ = topic_and_queue(broker)
    guard = AuthGuard("alice", "s3cret", algorithm="SHA-256", qop="auth,auth-int")
    with Endpoint(auth=guard) as endpoint:
        secret_url = endpoint.url.replace("http://", "http://alice:s3cret@")
        sns.subscribe(TopicArn=topic, Protocol="http", Endpoint=secret_url)
        endpoint.wait_for(1, match=lambda r: r.answered == "ok")
        confirm(endpoint)
        sns.publish(TopicArn=topic, Message="hello")
        (delivery,) = endpoint.wait_for(1, match=notifications)
        assert delivery.envelope()["Message"] == "hello"
        assert delivery.answered == "ok"  # the remembered nonce went up front: no second 401
    assert [r.answered for r in endpoint.requests] == ["401", "ok", "ok"]
    assert guard.accepted == ["Digest", "Digest"]
    assert not any("s3cret" in str(r.headers) for r in endpoint.requests)


def test_an_endpoints_password_is_shown_only_by_get_subscription_attributes(
    broker: BrokerThread,
) -> None:
    sns, topic, _, _, _ = topic_and_queue(broker)
    with Endpoint(auth=AuthGuard("alice", "s3cret", schemes=("Basic",))) as endpoint:
        secret_url = endpoint.url.replace("http://", "http://alice:s3cret@")
        arn = sns.subscribe(
            TopicArn=topic, Protocol="http", Endpoint=secret_url, ReturnSubscriptionArn=True
        )["SubscriptionArn"]
        (request,) = endpoint.wait_for(1, match=lambda r: r.answered == "ok")
        assert request.headers["authorization"] == "Basic YWxpY2U6czNjcmV0"  # alice:s3cret
        listed = sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]
        assert [s["Endpoint"] for s in listed] == [secret_url.replace("s3cret", "****")]
        assert not any("s3cret" in s["Endpoint"] for s in sns.list_subscriptions()["Subscriptions"])
        attributes = sns.get_subscription_attributes(SubscriptionArn=arn)["Attributes"]
        assert attributes["Endpoint"] == secret_url


@pytest.mark.parametrize("anonymous", [False, True], ids=["signatures-required", "anonymous"])
def test_an_unsigned_confirmation_asking_for_authenticated_unsubscribes_is_refused(
    tmp_path: Path, anonymous: bool
) -> None:
    """ "This call requires an AWS signature only when the AuthenticateOnUnsubscribe flag is
    set to true": unsigned, it is refused rather than confirmed with the flag dropped (the
    endpoint owner would believe the subscription protected); in anonymous mode too, which
    tells signed requests from unsigned ones (found there by a report-only hunt)."""
    auth = {} if anonymous else {"auth": write_credentials(tmp_path)}
    with BrokerThread(broker_config(tmp_path / "data", **auth)) as broker:
        sns = sns_client(broker.endpoint)
        topic = sns.create_topic(Name="protected")["TopicArn"]
        with Endpoint() as endpoint:
            sns.subscribe(TopicArn=topic, Protocol="http", Endpoint=endpoint.url)
            (request,) = endpoint.wait_for(1)
            link = request.envelope()["SubscribeURL"]
            with pytest.raises(urllib.error.HTTPError) as refused:
                fetch(link + "&AuthenticateOnUnsubscribe=true")
            answer = refused.value.read().decode()
            refused.value.close()  # the error holds the response's socket
            assert refused.value.code == 403
            # Signatures required, the front door refuses it before SNS sees it.
            code = "AuthorizationError" if anonymous else "MissingAuthenticationToken"
            assert f"<Code>{code}</Code>" in answer
            (pending,) = sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]
            assert pending["SubscriptionArn"] == "PendingConfirmation"
            assert "<SubscriptionArn>" in fetch(link).decode()  # the plain link confirms


def test_a_revoked_partner_cannot_restore_its_subscription_through_the_link(
    tmp_path: Path,
) -> None:
    """The UnsubscribeConfirmation's SubscribeURL restores a subscription: a Subscribe the
    topic's policy must still allow, or a partner whose grant the owner revoked comes back
    (found by a report-only hunt)."""
    partner = (
        "AKIAPARTNER000000002",
        "partner-secret-access-key",
        "arn:aws:iam::111111111111:user/p",
    )
    auth = write_credentials(tmp_path, [(ACCESS_KEY_ID, SECRET_ACCESS_KEY, ""), partner])
    with BrokerThread(broker_config(tmp_path / "data", auth=auth)) as signed_broker:
        sns = sns_client(signed_broker.endpoint)
        partner_sns = sns_client(
            signed_broker.endpoint, access_key_id=partner[0], secret_access_key=partner[1]
        )
        topic = sns.create_topic(Name="partnered")["TopicArn"]
        sns.add_permission(
            TopicArn=topic, Label="p", AWSAccountId=["111111111111"], ActionName=["Subscribe"]
        )
        with Endpoint() as endpoint:
            partner_sns.subscribe(TopicArn=topic, Protocol="http", Endpoint=endpoint.url)
            arn = confirm(endpoint)
            sns.remove_permission(TopicArn=topic, Label="p")
            sns.unsubscribe(SubscriptionArn=arn)
            (goodbye,) = endpoint.wait_for(
                1, match=lambda r: message_type(r) == "UnsubscribeConfirmation"
            )
            with pytest.raises(urllib.error.HTTPError) as refused:
                fetch(goodbye.envelope()["SubscribeURL"])
            refused.value.close()
            assert refused.value.code == 403
            assert sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"] == []
