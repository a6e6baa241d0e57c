"""The live topics: creation, subscriptions, tokens, filter index, and reload from the store."""

from __future__ import annotations

import functools
import io
import json
from pathlib import Path

import msgspec
import pytest
import trio

from broker.model.filter_policy import check_policy_quota
from broker.model.publishing import Original
from broker.model.sns_errors import SnsError
from broker.model.sns_mutations import (
    SubscriptionDeleted,
    SubscriptionSaved,
    TopicDeduplicationRecorded,
)
from broker.store.sqlite import SqliteStore
from broker.topics import TOKEN_LIFETIME_MS, TopicRegistry
from monitoring.logging import EventLog

QUEUE = "arn:aws:sqs:us-east-1:000000000000:q"


@pytest.fixture
async def store(tmp_path: Path):
    store = SqliteStore(tmp_path)
    await store.open()
    yield store
    await store.aclose()


def registry(store: SqliteStore, **options: int) -> TopicRegistry:
    log = EventLog("test", stream=io.StringIO())
    return TopicRegistry(store, region="us-east-1", account_id="000000000000", log=log, **options)


async def test_create_is_idempotent_and_compares_tags(store: SqliteStore) -> None:
    topics = registry(store)
    topic = await topics.create("t", {}, {"k": "v"}, 1)
    assert await topics.create("t", {}, {"k": "v"}, 2) is topic
    assert await topics.create("t", {}, {}, 2) is topic
    with pytest.raises(SnsError, match="different tags"):
        await topics.create("t", {}, {"k": "w"}, 2)
    assert topics.by_arn("arn:aws:sns:us-east-1:000000000000:t") is topic
    assert topics.by_arn("arn:aws:sns:eu-west-1:000000000000:t") is None


async def test_require_tells_malformed_from_missing(store: SqliteStore) -> None:
    topics = registry(store)
    with pytest.raises(SnsError) as info:
        topics.require("arn:aws:sns:us-east-1:000000000000:nope")
    assert (info.value.code, info.value.status) == ("NotFound", 404)
    for bad in ("nope", "arn:aws:sns:eu-west-1:000000000000:t", ""):
        with pytest.raises(SnsError) as info:
            topics.require(bad)
        assert info.value.code == "InvalidParameter"
    with pytest.raises(SnsError) as info:
        topics.require("arn:aws:sns:us-east-1:t")
    assert info.value.message == (
        "Invalid parameter: TopicArn Reason: An ARN must have at least 6 elements, not 5"
    )


async def test_subscriptions_and_the_filter_index(store: SqliteStore) -> None:
    topics = registry(store)
    topic = await topics.create("t", {}, {}, 1)
    sqs, mutations = topics.subscribe(topic, "sqs", QUEUE, {}, owner="000000000000", now=1)
    assert len(mutations) == 1
    assert not sqs.record.pending
    http, _ = topics.subscribe(topic, "http", "http://h/", {}, owner="000000000000", now=1)
    assert http.record.pending
    assert http.record.token is not None
    # Only confirmed subscriptions are candidates for publishes.
    assert topic.index.match({}, "m").matched == (sqs.subscription_id,)
    again, none = topics.subscribe(topic, "sqs", QUEUE, {}, owner="000000000000", now=2)
    assert again is sqs
    assert none == []
    policy = json.dumps({"a": ["b"]})
    topics.set_subscription_attribute(sqs, "FilterPolicy", policy)
    assert topic.index.match({}, "m").matched == ()
    view = {"a": {"DataType": "String", "StringValue": "b"}}
    assert topic.index.match(view, "m").matched == (sqs.subscription_id,)


async def test_the_filter_policy_quota(store: SqliteStore) -> None:
    topics = registry(store, max_filter_policies=1)
    topic = await topics.create("t", {}, {}, 1)
    attributes = {"FilterPolicy": json.dumps({"a": ["b"]})}
    topics.subscribe(topic, "sqs", QUEUE, attributes, owner="000000000000", now=1)
    with pytest.raises(SnsError) as info:
        topics.subscribe(topic, "sqs", QUEUE + "2", attributes, owner="000000000000", now=1)
    assert (info.value.code, info.value.status) == ("FilterPolicyLimitExceeded", 403)


async def test_an_empty_filter_policy_removes_the_policy_and_frees_its_quota(
    store: SqliteStore,
) -> None:
    """AWS: to stop filtering, set FilterPolicy to "{}". No policy is kept then: it is not
    echoed, and it does not hold one of the topic's filter-policy slots."""
    topics = registry(store, max_filter_policies=1)
    topic = await topics.create("t", {}, {}, 1)
    attributes = {"FilterPolicy": json.dumps({"a": ["b"]})}
    first, _ = topics.subscribe(topic, "sqs", QUEUE, attributes, owner="000000000000", now=1)
    topics.set_subscription_attribute(first, "FilterPolicy", "{}")
    assert first.settings.filter_policy is None
    assert topic.index.match({}, "m").matched == (first.subscription_id,)
    second, _ = topics.subscribe(topic, "sqs", QUEUE + "2", attributes, owner="000000000000", now=1)
    assert second.settings.filter_policy == attributes["FilterPolicy"]
    # A Subscribe that asks for "{}" on a full topic is not refused either.
    third, _ = topics.subscribe(
        topic, "sqs", QUEUE + "3", {"FilterPolicy": " { } "}, owner="000000000000", now=1
    )
    assert third.settings.filter_policy is None


async def test_an_empty_filter_policy_stored_before_holds_no_quota_slot(
    store: SqliteStore,
) -> None:
    """Brokers before 3 Dec 2026 kept the text "{}": it filters nothing, so it is not counted,
    and replacing it with a real policy is counted."""
    topics = registry(store, max_filter_policies=1)
    topic = await topics.create("t", {}, {}, 1)
    legacy, _ = topics.subscribe(topic, "sqs", QUEUE, {}, owner="000000000000", now=1)
    settings = msgspec.structs.replace(legacy.settings, filter_policy="{}")
    legacy.replace(msgspec.structs.replace(legacy.record, settings=settings))
    assert legacy.policy is None
    policy = json.dumps({"a": ["b"]})
    topics.subscribe(
        topic, "sqs", QUEUE + "2", {"FilterPolicy": policy}, owner="000000000000", now=1
    )
    with pytest.raises(SnsError) as info:
        topics.set_subscription_attribute(legacy, "FilterPolicy", policy)
    assert info.value.code == "FilterPolicyLimitExceeded"


async def test_the_account_wide_filter_policy_quota(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # AWS's 10,000 per account, lowered to 2 here: the third policy fails although each topic
    # is far below its own quota, on Subscribe and on SetSubscriptionAttributes alike.
    monkeypatch.setattr(
        "broker.topics.check_policy_quota", functools.partial(check_policy_quota, per_account=2)
    )
    topics = registry(store)
    first = await topics.create("t1", {}, {}, 1)
    second = await topics.create("t2", {}, {}, 1)
    attributes = {"FilterPolicy": json.dumps({"a": ["b"]})}
    topics.subscribe(first, "sqs", QUEUE, attributes, owner="000000000000", now=1)
    topics.subscribe(second, "sqs", QUEUE, attributes, owner="000000000000", now=1)
    with pytest.raises(SnsError) as info:
        topics.subscribe(second, "sqs", QUEUE + "2", attributes, owner="000000000000", now=1)
    assert (info.value.code, info.value.status) == ("FilterPolicyLimitExceeded", 403)
    plain, _ = topics.subscribe(second, "sqs", QUEUE + "3", {}, owner="000000000000", now=1)
    with pytest.raises(SnsError, match="limit"):
        topics.set_subscription_attribute(plain, "FilterPolicy", attributes["FilterPolicy"])


async def test_tokens_confirm_once_expire_and_restore(store: SqliteStore) -> None:
    topics = registry(store)
    topic = await topics.create("t", {}, {}, 1)
    http, _ = topics.subscribe(topic, "http", "http://h/", {}, owner="000000000000", now=1)
    token = http.record.token
    assert token is not None
    with pytest.raises(SnsError, match="Token"):
        topics.by_token(topic.arn, token, 1 + TOKEN_LIFETIME_MS)
    with pytest.raises(SnsError, match="Topic"):
        topics.by_token(topic.arn + "x", token, 2)
    found = topics.by_token(topic.arn, token, 2)
    confirmed, mutations = topics.confirm(
        found, authenticated=True, authenticate_on_unsubscribe=True
    )
    assert not confirmed.record.pending
    assert confirmed.record.authenticate_on_unsubscribe
    assert len(mutations) == 1
    assert topics.confirm(topics.by_token(topic.arn, token, 3), authenticated=True,
                          authenticate_on_unsubscribe=False)[1] == []  # fmt: skip
    topics.unsubscribe(confirmed, 4)
    assert topic.subscriptions == {}
    assert topic.facts("o").subscriptions_deleted == 1
    restore = topics.restore_token(confirmed)
    assert restore is not None
    restored, _ = topics.confirm(
        topics.by_token(topic.arn, restore, 5),
        authenticated=False,
        authenticate_on_unsubscribe=False,
    )
    assert restored.arn == confirmed.arn
    assert topic.index.match({}, "m").matched == (restored.subscription_id,)


async def test_a_restore_link_never_makes_a_second_subscription_to_an_endpoint(
    store: SqliteStore,
) -> None:
    """Unsubscribed, then subscribed again and confirmed: the first one's restore link must
    not bring it back beside the new one (found by a report-only hunt: every message then
    reached the endpoint twice)."""
    topics = registry(store)
    topic = await topics.create("t", {}, {}, 1)
    first, _ = topics.subscribe(topic, "http", "http://h/", {}, owner="000000000000", now=1)
    assert first.record.token is not None
    topics.confirm(topics.by_token(topic.arn, first.record.token, 2), authenticated=True,
                   authenticate_on_unsubscribe=False)  # fmt: skip
    topics.unsubscribe(first, 3)
    restore = topics.restore_token(first)
    assert restore is not None
    second, _ = topics.subscribe(topic, "http", "http://h/", {}, owner="000000000000", now=4)
    assert second.record.token is not None
    topics.confirm(topics.by_token(topic.arn, second.record.token, 5), authenticated=True,
                   authenticate_on_unsubscribe=False)  # fmt: skip
    found, mutations = topics.confirm(
        topics.by_token(topic.arn, restore, 6),
        authenticated=False,
        authenticate_on_unsubscribe=False,
    )
    assert found is second
    assert mutations == [SubscriptionDeleted(subscription_id=first.subscription_id)]
    assert list(topic.subscriptions) == [second.subscription_id]
    with pytest.raises(SnsError, match="Token"):  # used
        topics.by_token(topic.arn, restore, 7)


async def test_a_refused_restore_keeps_its_link_for_another_try(store: SqliteStore) -> None:
    topics = registry(store)
    topic = await topics.create("t", {}, {}, 1)
    http, _ = topics.subscribe(topic, "http", "http://h/", {}, owner="000000000000", now=1)
    assert http.record.token is not None
    topics.confirm(topics.by_token(topic.arn, http.record.token, 2), authenticated=True,
                   authenticate_on_unsubscribe=False)  # fmt: skip
    topics.unsubscribe(http, 3)
    restore = topics.restore_token(http)
    assert restore is not None
    await topics.set_attribute(topic, "MaximumMessageSize", str(1024 * 1024), 4)
    with pytest.raises(SnsError):  # HTTP endpoints take 256 KiB at most
        topics.confirm(topics.by_token(topic.arn, restore, 5), authenticated=False,
                       authenticate_on_unsubscribe=False)  # fmt: skip
    await topics.set_attribute(topic, "MaximumMessageSize", str(256 * 1024), 6)
    restored, _ = topics.confirm(
        topics.by_token(topic.arn, restore, 7),
        authenticated=False,
        authenticate_on_unsubscribe=False,
    )
    assert restored.arn == http.arn


async def test_a_restored_subscription_keeps_its_authenticated_unsubscribes(
    store: SqliteStore,
) -> None:
    """The link restores the subscription as it was: re-confirmed by the unsigned link, it
    lost AuthenticateOnUnsubscribe (found by a report-only hunt)."""
    topics = registry(store)
    topic = await topics.create("t", {}, {}, 1)
    http, _ = topics.subscribe(topic, "http", "http://h/", {}, owner="000000000000", now=1)
    assert http.record.token is not None
    topics.confirm(topics.by_token(topic.arn, http.record.token, 2), authenticated=True,
                   authenticate_on_unsubscribe=True)  # fmt: skip
    topics.unsubscribe(http, 3)
    restore = topics.restore_token(http)
    assert restore is not None
    restored, mutations = topics.confirm(
        topics.by_token(topic.arn, restore, 4),
        authenticated=False,
        authenticate_on_unsubscribe=False,
    )
    assert restored.arn == http.arn
    assert not restored.record.pending
    assert restored.record.authenticated
    assert restored.record.authenticate_on_unsubscribe
    assert mutations == [SubscriptionSaved(subscription=restored.record)]
    assert topic.index.match({}, "m").matched == (restored.subscription_id,)


async def test_subscribing_again_while_pending_reissues_the_token(
    store: SqliteStore, tmp_path: Path
) -> None:
    topics = registry(store)
    topic = await topics.create("t", {}, {}, 1)
    http, created = topics.subscribe(topic, "http", "http://h/", {}, owner="000000000000", now=1)
    old = http.record.token
    again, reissued = topics.subscribe(topic, "http", "http://h/", {}, owner="000000000000", now=5)
    assert again is http
    assert len(reissued) == 1  # the new token, to commit: a new confirmation goes with it
    new = http.record.token
    assert new is not None
    assert new != old
    assert http.record.token_expires_at == 5 + TOKEN_LIFETIME_MS
    with pytest.raises(SnsError, match="Token"):
        topics.by_token(topic.arn, old or "", 6)
    assert topics.by_token(topic.arn, new, 6) is http
    await store.commit([*created, *reissued])
    reopened = registry(store)
    await reopened.load()
    loaded = reopened.subscription(http.arn)
    assert loaded is not None
    assert loaded.record.token == new  # durable
    topics.confirm(http, authenticated=True, authenticate_on_unsubscribe=False)
    _, none = topics.subscribe(topic, "http", "http://h/", {}, owner="000000000000", now=7)
    assert none == []  # confirmed: nothing to send


async def test_everything_comes_back_after_a_restart(store: SqliteStore, tmp_path: Path) -> None:
    topics = registry(store)
    topic = await topics.create("t.fifo", {"FifoTopic": "true"}, {"k": "v"}, 1)
    sub, mutations = topics.subscribe(
        topic, "sqs", QUEUE + ".fifo", {}, owner="000000000000", now=1
    )
    dedup = TopicDeduplicationRecorded(
        topic_id=topic.record.topic_id,
        key=b"k" * 16,
        message_id="m",
        sequence_number="10000000000000000001",
        expires_at=10**15,
    )
    await store.commit([*mutations, dedup])
    await store.aclose()
    reopened = SqliteStore(tmp_path)
    await reopened.open()
    try:
        again = registry(reopened)
        await again.load()
        loaded = again.get("t.fifo")
        assert loaded is not None
        assert loaded.record.tags == {"k": "v"}
        assert list(loaded.subscriptions) == [sub.subscription_id]
        assert loaded.deduplication.lookup(b"k" * 16, 1) == Original("m", "10000000000000000001")
        assert again.subscription(sub.arn) is not None
        with pytest.raises(SnsError, match="6 elements"):
            again.subscription("arn:aws:sns")
        dropped = await again.delete(loaded)
        assert [s.subscription_id for s in dropped] == [sub.subscription_id]
        assert again.subscription(sub.arn) is None
    finally:
        await reopened.aclose()


async def test_concurrent_changes_of_one_topic_all_hold(store: SqliteStore) -> None:
    """Three SetTopicAttributes at once, and tag changes: each applies to what the one
    before it left, in memory and in the store (found by a report-only hunt: the last
    writer's settings, read before the others' writes, undid them)."""
    topics = registry(store)
    topic = await topics.create("t", {}, {}, 1)
    retries = {"numRetries": 7, "minDelayTarget": 1, "maxDelayTarget": 9}
    policy = json.dumps({"http": {"defaultHealthyRetryPolicy": retries}})
    async with trio.open_nursery() as nursery:
        nursery.start_soon(topics.set_attribute, topic, "DisplayName", "Orders", 2)
        nursery.start_soon(topics.set_attribute, topic, "SignatureVersion", "2", 2)
        nursery.start_soon(topics.set_attribute, topic, "DeliveryPolicy", policy, 2)
        for key in ("team", "env"):
            nursery.start_soon(topics.update_tags, topic, lambda tags, k=key: {**tags, k: "x"})
    again = registry(store)  # what a restart loads
    await again.load()
    for loaded in (topic, again.get("t")):
        assert loaded is not None
        settings = loaded.settings
        assert (settings.display_name, settings.signature_version) == ("Orders", "2")
        assert settings.delivery_policy is not None
        assert loaded.record.tags == {"team": "x", "env": "x"}


async def test_deduplication_expiry_produces_mutations(store: SqliteStore) -> None:
    topics = registry(store)
    topic = await topics.create("t.fifo", {"FifoTopic": "true"}, {}, 1)
    topic.deduplication.remember(b"k" * 16, Original("m", "1"), 100)
    assert topics.expire_deduplication(50) == []
    (expired,) = topics.expire_deduplication(100)
    assert expired.topic_id == topic.record.topic_id


async def test_an_unsubscribe_restore_link_outlives_a_restart_until_it_expires(
    store: SqliteStore,
) -> None:
    topics = registry(store)
    topic = await topics.create("t", {}, {}, 1)
    http, created = topics.subscribe(topic, "http", "http://h/", {}, owner="000000000000", now=1)
    assert http.record.token is not None
    found = topics.by_token(topic.arn, http.record.token, 2)
    confirmed, saved = topics.confirm(found, authenticated=True, authenticate_on_unsubscribe=False)
    await store.commit([*created, *saved])
    await store.commit(topics.unsubscribe(confirmed, 3))
    restore = topics.restore_token(confirmed)
    assert restore is not None

    again = registry(store)  # what a restart loads from the same store
    await again.load()
    reloaded = again.get("t")
    assert reloaded is not None
    assert reloaded.subscriptions == {}  # kept for its link only: not live, not listed
    assert list(again.subscriptions()) == []
    with pytest.raises(SnsError, match="Token"):
        again.by_token(topic.arn, restore, 3 + TOKEN_LIFETIME_MS)
    restored, mutations = again.confirm(
        again.by_token(topic.arn, restore, 4),
        authenticated=False,
        authenticate_on_unsubscribe=False,
    )
    assert restored.arn == confirmed.arn
    assert not restored.record.unsubscribed
    assert reloaded.index.match({}, "m").matched == (restored.subscription_id,)
    await store.commit(mutations)

    third = registry(store)
    await third.load()
    assert [s.arn for s in third.subscriptions()] == [confirmed.arn]


async def test_expired_restore_links_leave_the_store_at_the_next_unsubscribe(
    store: SqliteStore,
) -> None:
    topics = registry(store)
    topic = await topics.create("t", {}, {}, 1)
    made = []
    for endpoint in ("http://a/", "http://b/"):
        subscription, created = topics.subscribe(
            topic, "http", endpoint, {}, owner="000000000000", now=1
        )
        _, confirmed = topics.confirm(
            subscription, authenticated=True, authenticate_on_unsubscribe=False
        )
        await store.commit([*created, *confirmed])
        made.append(subscription)
    first, second = made
    await store.commit(topics.unsubscribe(first, 2))
    mutations = topics.unsubscribe(second, 3 + TOKEN_LIFETIME_MS)
    assert [type(m).__name__ for m in mutations] == [
        "SubscriptionDeleted",  # the subscription itself
        "SubscriptionDeleted",  # the first one's expired restore link
        "SubscriptionSaved",  # the second one's restore link
    ]
    assert topics.restore_token(first) is None
    await store.commit(mutations)
    reloaded = registry(store)
    await reloaded.load()
    assert reloaded.restore_token(first) is None
    assert reloaded.restore_token(second) is not None


async def test_unconfirmed_subscriptions_are_deleted_when_their_token_expires(
    store: SqliteStore,
) -> None:
    # AWS deletes unconfirmed subscriptions after 48 hours; confirmed ones and SQS stay.
    topics = registry(store)
    topic = await topics.create("t", {}, {}, 1)
    pending, made = topics.subscribe(topic, "http", "http://p/", {}, owner="000000000000", now=1)
    kept, made2 = topics.subscribe(topic, "http", "http://k/", {}, owner="000000000000", now=1)
    _, confirmed = topics.confirm(kept, authenticated=True, authenticate_on_unsubscribe=False)
    queue, made3 = topics.subscribe(topic, "sqs", QUEUE, {}, owner="000000000000", now=1)
    await store.commit([*made, *made2, *confirmed, *made3])
    assert topics.expire_pending(TOKEN_LIFETIME_MS) == []  # a millisecond before
    deleted = topics.expire_pending(1 + TOKEN_LIFETIME_MS)
    assert deleted == [SubscriptionDeleted(subscription_id=pending.subscription_id)]
    assert topics.subscription(pending.arn) is None
    assert set(topic.subscriptions) == {kept.subscription_id, queue.subscription_id}
    assert topic.facts("o").subscriptions_pending == 0
    assert topic.facts("o").subscriptions_deleted == 1
    assert topics.expire_pending(2 + TOKEN_LIFETIME_MS) == []
    await store.commit(deleted)
    reopened = registry(store)
    await reopened.load()
    assert reopened.subscription(pending.arn) is None
    assert reopened.subscription(kept.arn) is not None


ONE_SECOND = json.dumps(
    {"healthyRetryPolicy": {"numRetries": 2, "minDelayTarget": 1, "maxDelayTarget": 1}}
)


async def test_a_pending_subscription_unsubscribed_keeps_no_restore_link(
    store: SqliteStore,
) -> None:
    # AWS sends UnsubscribeConfirmation (whose link restores) for confirmed ones only.
    topics = registry(store)
    topic = await topics.create("t", {}, {}, 1)
    pending, created = topics.subscribe(
        topic, "http", "http://p/", {"DeliveryPolicy": ONE_SECOND}, owner="000000000000", now=1
    )
    await store.commit(created)
    mutations = topics.unsubscribe(pending, 2)
    assert mutations == [SubscriptionDeleted(subscription_id=pending.subscription_id)]
    assert topics.restore_token(pending) is None
    assert topics.delivery_policy(pending.subscription_id) is None  # nothing is owed to it
    assert topic.facts("o").subscriptions_deleted == 1
    await store.commit(mutations)
    reloaded = registry(store)
    await reloaded.load()
    assert reloaded.restore_token(pending) is None
    assert (await store.load_sns()).subscriptions == []


async def test_an_unsubscribed_subscription_keeps_its_delivery_policy(store: SqliteStore) -> None:
    # Its UnsubscribeConfirmation is retried as its own POSTs were, also after a restart.
    topics = registry(store)
    topic = await topics.create("t", {}, {}, 1)
    http, created = topics.subscribe(
        topic, "http", "http://h/", {"DeliveryPolicy": ONE_SECOND}, owner="000000000000", now=1
    )
    _, confirmed = topics.confirm(http, authenticated=True, authenticate_on_unsubscribe=False)
    own = http.effective_delivery()
    assert own.retry.min_delay_target == 1
    await store.commit([*created, *confirmed])
    await store.commit(topics.unsubscribe(http, 2))
    assert topics.subscription_by_id(http.subscription_id) is None
    assert topics.delivery_policy(http.subscription_id) == own
    reloaded = registry(store)
    await reloaded.load()
    assert reloaded.delivery_policy(http.subscription_id) == own
    assert reloaded.delivery_policy("unknown") is None


async def test_the_link_of_one_never_confirmed_restores_it_pending(store: SqliteStore) -> None:
    # An older broker kept restore links of pending subscriptions too; following one must not
    # confirm what the endpoint never confirmed: back as pending, with a new token.
    topics = registry(store)
    topic = await topics.create("t", {}, {}, 1)
    pending, created = topics.subscribe(topic, "http", "http://p/", {}, owner="000000000000", now=1)
    link = "cd" * 64
    legacy = msgspec.structs.replace(
        pending.record, token=link, token_expires_at=2 + TOKEN_LIFETIME_MS, unsubscribed=True
    )
    await store.commit(
        [
            *created,
            SubscriptionDeleted(subscription_id=pending.subscription_id),
            SubscriptionSaved(subscription=legacy),
        ]
    )
    reloaded = registry(store)
    await reloaded.load()
    restored, mutations = reloaded.confirm(
        reloaded.by_token(topic.arn, link, 3),
        authenticated=False,
        authenticate_on_unsubscribe=False,
        now=3,
    )
    assert restored.arn == pending.arn
    assert restored.record.pending
    assert not restored.record.unsubscribed
    new_token = restored.record.token
    assert new_token is not None
    assert new_token != link
    assert restored.record.token_expires_at == 3 + TOKEN_LIFETIME_MS
    assert mutations == [SubscriptionSaved(subscription=restored.record)]
    with pytest.raises(SnsError, match="Token"):  # the link is spent
        reloaded.by_token(topic.arn, link, 4)
    assert reloaded.restore_token(restored) is None
    loaded = reloaded.get("t")
    assert loaded is not None
    assert loaded.index.match({}, "m").matched == ()  # pending: not delivered to
    # The new token (sent in a new SubscriptionConfirmation) is what confirms it.
    confirmed, _ = reloaded.confirm(
        reloaded.by_token(topic.arn, new_token, 5),
        authenticated=False,
        authenticate_on_unsubscribe=False,
    )
    assert not confirmed.record.pending
