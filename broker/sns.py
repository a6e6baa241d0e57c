"""SNS actions: request parameters in, response values out.

Parameters arrive in the nested shape :mod:`proto.aws.query_protocol` decodes SNS requests
into; results leave in the same shape; :mod:`broker.sns_http` does the wire. Topic and
subscription semantics live in :mod:`broker.model` and :mod:`broker.topics`, publishing in
:mod:`broker.fanout`. Every subscription change is committed in the trio step that made it,
together with the confirmation POST it owes, so memory and disk never disagree on order.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import msgspec

from broker.auth import Caller
from broker.fanout import Batch, Fanout
from broker.http_delivery import HttpDeliveries
from broker.model.conditions import request_context
from broker.model.page_tokens import PageTokens
from broker.model.policy import Decision, evaluate
from broker.model.publishing import PublishRequest, prepare, publish_size
from broker.model.sns_errors import SnsError, invalid_parameter
from broker.model.sns_mutations import SubscriptionRecord
from broker.model.subscriptions import masked_endpoint
from broker.model.subscriptions import render_attributes as render_subscription
from broker.model.tags import MAX_TAGS, tag_key_problem, tag_problem
from broker.model.topic_permissions import add_permission, remove_permission
from broker.model.topics import TopicSettings
from broker.model.topics import render_attributes as render_topic
from broker.registry import now_ms
from broker.topic_state import Subscription, Topic
from broker.topics import TopicRegistry
from proto.aws.errors import AwsError
from proto.aws.sns_shapes import sns_error

PAGE_SIZE: Final = 100  # ListTopics, ListSubscriptions(ByTopic): "up to 100" per page
MAX_BATCH_ENTRIES: Final = 10
_BATCH_ENTRY_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,80}")

Params = Mapping[str, Any]
Result = dict[str, Any] | None
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SnsContext:
    """Who asked, what, and how they reached us (SNS links echo the address used).

    ``authenticated`` is False for the unsigned ConfirmSubscription and Unsubscribe requests a
    subscriber makes by following SubscribeURL or UnsubscribeURL.
    """

    base_url: str
    caller: Caller
    action: str
    authenticated: bool = True
    secure: bool = False  # arrived over this listener's TLS (aws:SecureTransport)
    source_ip: str = ""  # the peer's address (aws:SourceIp)


class SnsApi:
    """Every SNS action Wharf serves, bound to the topics, the publisher and the worker."""

    def __init__(
        self,
        topics: TopicRegistry,
        fanout: Fanout,
        deliveries: HttpDeliveries,
        *,
        account_id: str,
    ) -> None:
        self.topics = topics
        self.fanout = fanout
        self.deliveries = deliveries
        self.store = topics.store
        self.account_id = account_id
        # Drawn at each start: a NextToken of the broker before is refused, as AWS's expire.
        self._page_tokens = PageTokens(secrets.token_bytes(32))
        self._actions: dict[str, Callable[[Params, SnsContext], Awaitable[Result]]] = {
            "CreateTopic": self.create_topic,
            "DeleteTopic": self.delete_topic,
            "ListTopics": self.list_topics,
            "GetTopicAttributes": self.get_topic_attributes,
            "SetTopicAttributes": self.set_topic_attributes,
            "Subscribe": self.subscribe,
            "ConfirmSubscription": self.confirm_subscription,
            "Unsubscribe": self.unsubscribe,
            "ListSubscriptions": self.list_subscriptions,
            "ListSubscriptionsByTopic": self.list_subscriptions_by_topic,
            "GetSubscriptionAttributes": self.get_subscription_attributes,
            "SetSubscriptionAttributes": self.set_subscription_attributes,
            "Publish": self.publish,
            "PublishBatch": self.publish_batch,
            "TagResource": self.tag_resource,
            "UntagResource": self.untag_resource,
            "ListTagsForResource": self.list_tags_for_resource,
            "AddPermission": self.add_permission,
            "RemovePermission": self.remove_permission,
        }

    def supports(self, action: str) -> bool:
        return action in self._actions

    async def handle(self, action: str, params: Params, context: SnsContext) -> Result:
        handler = self._actions.get(action)
        if handler is None:  # pragma: no cover - the decoder knows only these actions
            raise invalid_parameter(f"Action {action} is not supported")
        return await handler(params, context)

    def _topic(self, params: Params, context: SnsContext, action: str | None = None) -> Topic:
        topic = self.topics.require(params.get("TopicArn"))
        self._authorize(topic, context, action or context.action)
        return topic

    def _authorize(
        self,
        topic: Topic,
        context: SnsContext,
        action: str,
        keys: Mapping[str, tuple[str, ...]] | None = None,
    ) -> None:
        """Raise AuthorizationError unless the caller may take ``action`` on ``topic``;
        ``keys``: the action's own condition keys (Subscribe's ``sns:Protocol``...)."""
        caller = context.caller
        policy = topic.settings.policy
        if policy is None:  # the common case, kept cheap: no condition context to build
            if caller.anonymous or caller.account == self.account_id:
                return
            decision = Decision.DENY
        else:
            # As for queue policies: conditions see the request's keys, and an anonymous
            # caller is held to the statements that name every principal ("*").
            anonymous = caller.anonymous
            condition_keys = request_context(
                now_ms=now_ms(),
                secure=context.secure,
                source_ip=context.source_ip or None,
                principal_arn=None if anonymous else caller.principal_arn,
                principal_account=None if anonymous else caller.account,
            )
            if keys:
                condition_keys.update(keys)
            decision = evaluate(
                policy,
                principal_arn=caller.principal_arn,
                principal_account=caller.account,
                owner_account=self.account_id,
                action=action,
                resource=topic.arn,
                service="sns",
                context=condition_keys,
                anonymous=anonymous,
            )
        if decision is Decision.DENY:
            raise _not_authorized(context, action, topic.arn)

    def _is_owner(self, context: SnsContext) -> bool:
        """Whether the caller is of the broker's account (which owns every topic)."""
        caller = context.caller
        return caller.anonymous or caller.account == self.account_id

    def _require_owner(self, context: SnsContext, action: str, resource: str) -> None:
        """Actions on the account's own resources, which no topic policy grants to others
        (CreateTopic, the tag actions): AWS's "API permissions" reference lists them apart."""
        if not self._is_owner(context):
            raise _not_authorized(context, action, resource)

    def _require_subscriber_or_owner(
        self, subscription: Subscription, context: SnsContext, action: str
    ) -> None:
        """Unsubscribe and the subscription attributes: "only the owner of the subscription
        or the topic's owner" (AWS's Unsubscribe reference)."""
        if not self._is_owner(context) and context.caller.account != subscription.record.owner:
            raise _not_authorized(context, action, subscription.arn)

    # ------------------------------------------------------------------ topics

    async def create_topic(self, params: Params, context: SnsContext) -> Result:
        if params.get("DataProtectionPolicy"):
            raise invalid_parameter(
                "DataProtectionPolicy Reason: message data protection is out of scope for Wharf"
            )
        # An empty name is refused as any invalid one, "Invalid parameter: Topic Name" (AWS's
        # answer in LocalStack's AWS-validated snapshot, name-too-short).
        name = params.get("Name") or ""
        if not self._is_owner(context):  # (the name is checked only after this)
            resource = f"arn:aws:sns:{self.topics.region}:{self.account_id}:{name}"
            raise _not_authorized(context, "CreateTopic", resource)
        tags = _tags(params.get("Tags") or [])
        topic = await self.topics.create(name, params.get("Attributes") or {}, tags, now_ms())
        return {"TopicArn": topic.arn}

    async def delete_topic(self, params: Params, context: SnsContext) -> Result:
        try:
            topic = self._topic(params, context)
        except SnsError as error:
            if error.code == "NotFound":
                await self.store.settled()  # a delete's commit may be under way
                return None  # DeleteTopic is idempotent
            raise
        await self.topics.delete(topic)
        self.deliveries.forget_topic(topic.record.topic_id)
        return None

    async def list_topics(self, params: Params, context: SnsContext) -> Result:
        # Another account's caller lists its own topics: none here (as SQS's ListQueues).
        arns = sorted(topic.arn for topic in self.topics) if self._is_owner(context) else []
        page, token = self._page("ListTopics", arns, lambda arn: arn, params.get("NextToken"))
        result: dict[str, Any] = {"Topics": [{"TopicArn": arn} for arn in page]}
        if token is not None:
            result["NextToken"] = token
        return result

    async def get_topic_attributes(self, params: Params, context: SnsContext) -> Result:
        topic = self._topic(params, context)
        return {"Attributes": render_topic(topic.settings, topic.facts(self.account_id))}

    async def set_topic_attributes(self, params: Params, context: SnsContext) -> Result:
        topic = self._topic(params, context)
        name = _required(params, "AttributeName")
        await self.topics.set_attribute(topic, name, params.get("AttributeValue") or "", now_ms())
        return None

    async def add_permission(self, params: Params, context: SnsContext) -> Result:
        topic = self._topic(params, context)
        label = _required(params, "Label")
        accounts = params.get("AWSAccountId") or []
        actions = params.get("ActionName") or []

        def added(settings: TopicSettings) -> TopicSettings:
            policy = add_permission(
                settings.policy,
                topic_arn=topic.arn,
                owner=self.account_id,
                label=label,
                accounts=accounts,
                actions=actions,
            )
            return msgspec.structs.replace(settings, policy=policy)

        await self.topics.update_settings(topic, added, now_ms())
        return None

    async def remove_permission(self, params: Params, context: SnsContext) -> Result:
        topic = self._topic(params, context)
        label = _required(params, "Label")

        def removed(settings: TopicSettings) -> TopicSettings:
            policy = remove_permission(
                settings.policy, topic_arn=topic.arn, owner=self.account_id, label=label
            )
            return msgspec.structs.replace(settings, policy=policy)

        await self.topics.update_settings(topic, removed, now_ms())
        return None

    # ------------------------------------------------------------------ tags

    def _tagged(self, params: Params, context: SnsContext) -> Topic:
        arn = _required(params, "ResourceArn")
        self._require_owner(context, context.action, arn)
        topic = self.topics.by_arn(arn)
        if topic is None:
            raise sns_error("ResourceNotFoundException", "Resource does not exist")
        return topic

    async def tag_resource(self, params: Params, context: SnsContext) -> Result:
        topic = self._tagged(params, context)
        added = _tags(params.get("Tags") or [])

        def tagged(current: Mapping[str, str]) -> dict[str, str]:
            tags = {**current, **added}
            if len(tags) > MAX_TAGS:
                raise sns_error(
                    "TagLimitExceededException",
                    "Could not complete request: tag quota of per resource exceeded",
                )
            return tags

        await self.topics.update_tags(topic, tagged)
        return {}

    async def untag_resource(self, params: Params, context: SnsContext) -> Result:
        topic = self._tagged(params, context)
        drop = _tag_keys(params.get("TagKeys") or [])
        await self.topics.update_tags(
            topic, lambda current: {k: v for k, v in current.items() if k not in drop}
        )
        return {}

    async def list_tags_for_resource(self, params: Params, context: SnsContext) -> Result:
        topic = self._tagged(params, context)
        return {"Tags": [{"Key": k, "Value": v} for k, v in sorted(topic.record.tags.items())]}

    # ------------------------------------------------------------------ subscriptions

    async def subscribe(self, params: Params, context: SnsContext) -> Result:
        topic = self.topics.require(params.get("TopicArn"))
        protocol = _required(params, "Protocol")
        endpoint = params.get("Endpoint") or ""
        # Subscribe's own condition keys (SNS's "API permissions" reference): a policy can
        # allow, say, only sqs subscriptions, or only endpoints of one domain.
        keys = {"sns:protocol": (protocol,), "sns:endpoint": (endpoint,)}
        self._authorize(topic, context, "Subscribe", keys)
        now = now_ms()
        subscription, mutations = self.topics.subscribe(
            topic,
            protocol,
            endpoint,
            params.get("Attributes") or {},
            owner=context.caller.account,
            principal=context.caller.principal_arn,
            now=now,
        )
        batch = Batch()
        batch.mutations.extend(mutations)
        token = subscription.record.token
        if mutations and subscription.record.pending and token is not None:
            # A new token replaces the old one: the old confirmation's retries would only
            # hand the endpoint a token that no longer confirms (found by a report-only hunt).
            batch.mutations.extend(self.deliveries.drop_confirmations(subscription.subscription_id))
            self.fanout.confirmation(
                batch, subscription, "SubscriptionConfirmation", token, context.base_url, now
            )
        if batch.mutations:
            await self.store.commit(batch.mutations, batch.on_durable)
        else:  # the identical subscription: its creation's commit may be under way
            await self.store.settled()
        pending = subscription.record.pending and not params.get("ReturnSubscriptionArn")
        return {"SubscriptionArn": "pending confirmation" if pending else subscription.arn}

    async def confirm_subscription(self, params: Params, context: SnsContext) -> Result:
        on_unsubscribe = str(params.get("AuthenticateOnUnsubscribe") or "").lower() == "true"
        if on_unsubscribe and not context.authenticated:
            # "This call requires an AWS signature only when the AuthenticateOnUnsubscribe flag
            # is set to true": refused, in anonymous mode too, rather than confirmed with the
            # flag dropped, which would leave the endpoint owner believing it protected.
            raise sns_error(
                "AuthorizationErrorException",
                "AuthenticateOnUnsubscribe=true: ConfirmSubscription needs a signed request.",
            )
        now = now_ms()
        found = self.topics.by_token(_required(params, "TopicArn"), _required(params, "Token"), now)
        if isinstance(found, SubscriptionRecord):
            self._authorize_restore(found)
        subscription, mutations = self.topics.confirm(
            found,
            authenticated=context.authenticated,
            authenticate_on_unsubscribe=on_unsubscribe,
            now=now,
        )
        token = subscription.record.token
        if subscription.record.pending and token is not None:
            # Restored by the link of one never confirmed (TopicRegistry.confirm): back to
            # pending, it is asked to confirm again, with its new token.
            batch = Batch()
            batch.mutations.extend(mutations)
            batch.mutations.extend(self.deliveries.drop_confirmations(subscription.subscription_id))
            self.fanout.confirmation(
                batch, subscription, "SubscriptionConfirmation", token, context.base_url, now
            )
            await self.store.commit(batch.mutations, batch.on_durable)
        elif mutations:
            # Confirmed: the SubscriptionConfirmation POSTs still pending (retries of an
            # endpoint that answered 5xx, or a re-Subscribe's) would only repeat themselves.
            mutations.extend(self.deliveries.drop_confirmations(subscription.subscription_id))
            await self.store.commit(mutations)
        else:  # confirmed already: that commit may be under way
            await self.store.settled()
        return {"SubscriptionArn": subscription.arn}

    def _authorize_restore(self, record: SubscriptionRecord) -> None:
        """Refuse the UnsubscribeConfirmation's link when the topic's policy would now refuse
        the subscriber the Subscribe it restores: a partner whose grant the owner revoked
        (or whose endpoint a new Deny names) must not come back through it."""
        topic = self.topics.topic_by_id(record.topic_id)
        if topic is None:
            return
        owner = record.owner
        subscriber = SnsContext(
            base_url="",
            caller=Caller.account_root(owner, service="sns", anonymous=False),
            action="Subscribe",
            authenticated=True,
            secure=True,
            source_ip="",
        )
        keys = {"sns:protocol": (record.protocol,), "sns:endpoint": (record.endpoint,)}
        self._authorize(topic, subscriber, "Subscribe", keys)

    async def unsubscribe(self, params: Params, context: SnsContext) -> Result:
        subscription = self.topics.subscription(params.get("SubscriptionArn"))
        if subscription is None:
            await self.store.settled()  # an earlier Unsubscribe's commit may be under way
            return None  # Unsubscribe is idempotent
        if not context.authenticated and subscription.record.authenticate_on_unsubscribe:
            raise sns_error(
                "AuthorizationErrorException",
                "The subscription was confirmed with AuthenticateOnUnsubscribe: Unsubscribe "
                "needs a signed request.",
            )
        if context.authenticated:
            self._require_subscriber_or_owner(subscription, context, "Unsubscribe")
        now = now_ms()
        batch = Batch()
        # The Unsubscribe reference: "If the Unsubscribe call does not require authentication
        # and the requester is not the subscription owner, a final cancellation message is
        # delivered to the endpoint", with a link that restores it. An SQS subscription
        # gets it in its queue; the owner's signed Unsubscribe of its own queue, nothing.
        by_owner = context.authenticated and context.caller.account == subscription.record.owner
        batch.mutations.extend(self.topics.unsubscribe(subscription, now, restorable=not by_owner))
        # Its SubscriptionConfirmations go too: their token died with the subscription.
        self.deliveries.forget_subscription(subscription.subscription_id)
        # None for one never confirmed, which gets no UnsubscribeConfirmation (as on AWS; see
        # TopicRegistry.unsubscribe).
        token = self.topics.restore_token(subscription)
        if token is not None:
            self.fanout.confirmation(
                batch, subscription, "UnsubscribeConfirmation", token, context.base_url, now
            )
        await self.store.commit(batch.mutations, batch.on_durable)
        return None

    async def list_subscriptions(self, params: Params, context: SnsContext) -> Result:
        # Another account's caller lists the subscriptions it owns.
        subscriptions = self.topics.subscriptions()
        if not self._is_owner(context):
            account = context.caller.account
            subscriptions = [s for s in subscriptions if s.record.owner == account]
        return self._list("ListSubscriptions", subscriptions, params.get("NextToken"))

    async def list_subscriptions_by_topic(self, params: Params, context: SnsContext) -> Result:
        topic = self._topic(params, context)
        subscriptions = [s for s in self.topics.subscriptions() if s.topic is topic]
        listing = f"ListSubscriptionsByTopic {topic.arn}"
        return self._list(listing, subscriptions, params.get("NextToken"))

    def _page(
        self, listing: str, items: Sequence[T], key: Callable[[T], str], token: str | None
    ) -> tuple[Sequence[T], str | None]:
        """A page of ``items`` (sorted by ``key``) after ``token``, and the token for the next.

        Raises:
            SnsError: ``InvalidParameter`` for a token this broker did not issue for
                ``listing`` (:class:`~broker.model.page_tokens.PageTokens`).
        """
        start = 0
        if token:
            after = self._page_tokens.key_of(listing, token)
            if after is None:
                raise invalid_parameter("NextToken")
            start = next((i for i, item in enumerate(items) if key(item) > after), len(items))
        page = items[start : start + PAGE_SIZE]
        more = start + PAGE_SIZE < len(items)
        next_token = self._page_tokens.issue(listing, key(page[-1])) if more else None
        return page, next_token

    def _list(
        self, listing: str, subscriptions: Sequence[Subscription], token: str | None
    ) -> Result:
        page, next_token = self._page(
            listing,
            subscriptions,
            lambda s: f"{s.record.created_at:020d}:{s.subscription_id}",
            token,
        )
        result: dict[str, Any] = {
            "Subscriptions": [
                {
                    "SubscriptionArn": "PendingConfirmation" if s.record.pending else s.arn,
                    "Owner": s.record.owner,
                    "Protocol": s.protocol,
                    "Endpoint": masked_endpoint(s.endpoint),
                    "TopicArn": s.topic.arn,
                }
                for s in page
            ]
        }
        if next_token is not None:
            result["NextToken"] = next_token
        return result

    async def get_subscription_attributes(self, params: Params, context: SnsContext) -> Result:
        subscription = self.topics.require_subscription(params.get("SubscriptionArn"))
        self._require_subscriber_or_owner(subscription, context, "GetSubscriptionAttributes")
        topic_policy = subscription.topic.settings.delivery_policy_parsed
        rendered = render_subscription(subscription.settings, subscription.facts(), topic_policy)
        return {"Attributes": rendered}

    async def set_subscription_attributes(self, params: Params, context: SnsContext) -> Result:
        subscription = self.topics.require_subscription(params.get("SubscriptionArn"))
        self._require_subscriber_or_owner(subscription, context, "SetSubscriptionAttributes")
        name = _required(params, "AttributeName")
        mutations = self.topics.set_subscription_attribute(
            subscription, name, params.get("AttributeValue") or ""
        )
        await self.store.commit(mutations)
        return None

    # ------------------------------------------------------------------ publishing

    async def publish(self, params: Params, context: SnsContext) -> Result:
        if params.get("PhoneNumber"):
            raise invalid_parameter(
                "PhoneNumber Reason: SMS is out of scope for Wharf; publish to a topic"
            )
        if params.get("TopicArn") and params.get("TargetArn"):
            # Alternatives in the Publish reference: which one the caller meant is unknown.
            raise invalid_parameter(
                "TopicArn or TargetArn Reason: Only one of TopicArn and TargetArn can be specified"
            )
        arn = params.get("TopicArn") or params.get("TargetArn")
        if not arn:
            raise invalid_parameter("TopicArn or TargetArn Reason: no value for required parameter")
        if ":endpoint/" in arn:
            raise invalid_parameter(
                "TargetArn Reason: mobile push endpoints are out of scope for Wharf"
            )
        topic = self.topics.require(arn, "TopicArn" if params.get("TopicArn") else "TargetArn")
        self._authorize(topic, context, "Publish")
        message = prepare(topic.settings, _publish_request(params))
        (result,) = await self.fanout.publish(
            topic, [message], base_url=context.base_url, sender_id=context.caller.sender_id
        )
        answer: dict[str, Any] = {"MessageId": result.message_id}
        if result.sequence_number is not None:
            answer["SequenceNumber"] = result.sequence_number
        return answer

    async def publish_batch(self, params: Params, context: SnsContext) -> Result:
        topic = self._topic(params, context, "Publish")
        entries: list[Params] = params.get("PublishBatchRequestEntries") or []
        _check_batch(entries)
        requests = [_publish_request(entry) for entry in entries]
        if topic.settings.fifo:  # every entry's group first, as LocalStack's provider checks
            for request in requests:
                if not request.group_id:
                    raise invalid_parameter(
                        "The MessageGroupId parameter is required for FIFO topics"
                    )
        if sum(publish_size(r) for r in requests) > topic.settings.effective_maximum_message_size:
            raise sns_error(
                "BatchRequestTooLongException",
                "The length of all the messages put together is more than the limit.",
            )
        # One bad entry refuses the whole request with that entry's error, and nothing is
        # published: AWS answers 400 (LocalStack's AWS-validated snapshots of
        # test_empty_or_wrong_message_attributes and test_publish_batch_exceptions), not a 200
        # listing the entry under Failed.
        prepared = [prepare(topic.settings, request) for request in requests]
        results = await self.fanout.publish(
            topic, prepared, base_url=context.base_url, sender_id=context.caller.sender_id
        )
        successful = []
        for entry, result in zip(entries, results, strict=True):
            item: dict[str, Any] = {"Id": entry["Id"], "MessageId": result.message_id}
            if result.sequence_number is not None:
                item["SequenceNumber"] = result.sequence_number
            successful.append(item)
        # Failed is always empty: past validation the batch is one store transaction, which
        # either commits every entry or fails the request (AWS has shown no per-entry failure
        # either; LocalStack's provider notes it never found one).
        return {"Successful": successful, "Failed": []}


# ---------------------------------------------------------------------- request envelopes


def _required(params: Params, name: str) -> Any:
    value = params.get(name)
    if value is None or value == "":
        raise invalid_parameter(f"{name} Reason: no value for required parameter")
    return value


def _tags(entries: Sequence[Mapping[str, str]]) -> dict[str, str]:
    keys = [entry.get("Key", "") for entry in entries]
    if len(set(keys)) != len(keys):
        raise invalid_parameter("Duplicated keys are not allowed.")
    tags = {entry.get("Key", ""): entry.get("Value", "") for entry in entries}
    if len(tags) > MAX_TAGS:
        raise sns_error(
            "TagLimitExceededException",
            "Could not complete request: tag quota of per resource exceeded",
        )
    for key, value in tags.items():
        problem = tag_problem(key, value)
        if problem is not None:
            raise invalid_parameter(f"Tags Reason: {problem}")
    return tags


def _tag_keys(keys: Sequence[str]) -> set[str]:
    """UntagResource's TagKeys: the keys TagResource would take (botocore's model: TagKey is
    1-128 characters), at least one."""
    if not keys:
        raise invalid_parameter("TagKeys Reason: no value for required parameter")
    for key in keys:
        problem = tag_key_problem(key)
        if problem is not None:
            raise invalid_parameter(f"TagKeys Reason: {problem}")
    return set(keys)


def _check_batch(entries: Sequence[Params]) -> None:
    if not entries:
        raise sns_error(
            "EmptyBatchRequestException", "The batch request doesn't contain any entries"
        )
    if len(entries) > MAX_BATCH_ENTRIES:
        raise sns_error(
            "TooManyEntriesInBatchRequestException",
            "The batch request contains more entries than permissible.",
        )
    ids = [entry.get("Id") or "" for entry in entries]
    if len(set(ids)) != len(ids):
        raise sns_error(
            "BatchEntryIdsNotDistinctException",
            "Two or more batch entries in the request have the same Id.",
        )
    for entry_id in ids:
        if _BATCH_ENTRY_ID.fullmatch(entry_id) is None:
            raise sns_error(
                "InvalidBatchEntryIdException",
                "The Id of a batch entry in a batch request doesn't abide by the specification.",
            )


def _publish_request(params: Params) -> PublishRequest:
    return PublishRequest(
        message=params.get("Message") or "",
        subject=params.get("Subject"),
        structure=params.get("MessageStructure") or None,
        attributes=dict(params.get("MessageAttributes") or {}),
        group_id=params.get("MessageGroupId"),
        deduplication_id=params.get("MessageDeduplicationId"),
    )


def _not_authorized(context: SnsContext, action: str, resource: str) -> AwsError:
    return sns_error(
        "AuthorizationErrorException",
        f"User: {context.caller.principal_arn} is not authorized to perform: SNS:{action} on "
        f"resource: {resource}",
    )
