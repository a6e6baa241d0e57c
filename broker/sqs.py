"""SQS actions: request parameters in, response values out.

Parameters arrive in the nested shape both protocol decoders produce (JSON member names,
blobs as bytes) and results leave in the same shape; :mod:`broker.frontend` does the wire.
Queue semantics live in :mod:`broker.model`; this module validates the request envelope
(queue URLs, batch rules), calls the model through the registry, commits, and shapes answers.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import trio

from broker.auth import Caller
from broker.model.attributes import render_attributes
from broker.model.conditions import request_context
from broker.model.errors import INVALID_PARAMETER_VALUE, SqsError, invalid_attribute_value
from broker.model.index import resolve_wait_time
from broker.model.messages import (
    AttributeValue,
    SendRequest,
    message_size,
    refuse_incomplete_fifo_batch,
    sequence_number,
)
from broker.model.mutations import MessageDelivered
from broker.model.outcomes import Change, Delivery, ReceiveOutcome
from broker.model.policy import (
    Decision,
    add_permission,
    evaluate,
    remove_permission,
)
from broker.model.settings import QueueSettings
from broker.model.tags import MAX_TAGS, tag_key_problem, tag_problem
from broker.registry import Queue, QueueRegistry, now_ms, queue_does_not_exist
from broker.store.base import (
    KeyUnavailable,
    StoredMessage,
    StoreFailed,
    UnopenedMessage,
    UnopenedMessages,
)
from monitoring.logging import EventLog
from monitoring.throttle import Throttle
from proto.aws.arn import ArnError, build_queue_url, parse_queue_url
from proto.aws.errors import AwsError, common_error
from proto.aws.json_protocol import sqs_error
from proto.aws.md5 import DigestError, md5_of_attributes, md5_of_body

MAX_BATCH_ENTRIES: Final = 10
MAX_BATCH_BYTES: Final = 1_048_576  # SendMessageBatch: "can't exceed 1 MiB" in total
LIST_QUEUES_LIMIT: Final = 1000
QUEUE_URL_CACHE: Final = 1024  # parsed queue URLs remembered (see SqsApi.queue_of)
_BATCH_ENTRY_ID = re.compile(r"[A-Za-z0-9_-]{1,80}")
SYSTEM_ATTRIBUTES: Final = (
    "SenderId",
    "SentTimestamp",
    "ApproximateReceiveCount",
    "ApproximateFirstReceiveTimestamp",
    "SequenceNumber",
    "MessageDeduplicationId",
    "MessageGroupId",
    "AWSTraceHeader",
    "DeadLetterQueueSourceArn",
)

Params = Mapping[str, Any]
Result = dict[str, Any] | None


class Peer(Protocol):
    """The client's connection, as a long poll watches it (``monitoring.httpserver.PeerWatch``)."""

    def gone_nowait(self) -> bool:
        """Whether the client has closed or reset the connection; never waits."""

    async def wait_gone(self) -> None:
        """Return once the client has gone; never while it may still be there."""


@dataclass(frozen=True, slots=True)
class RequestContext:
    """Who asked, what, and how they reached us (queue URLs echo the address used)."""

    base_url: str
    caller: Caller
    action: str
    path: str = "/"
    secure: bool = False  # arrived over TLS (aws:SecureTransport)
    source_ip: str = ""  # the peer's address (aws:SourceIp)
    # Every string of the parameters is ASCII from space up, tab, LF or CR, as the JSON body
    # showed (json_protocol.plain_text): message bodies need no scan of their characters.
    plain_text: bool = False
    # The client's connection, when the listener can watch it: a long poll ends when it goes.
    peer: Peer | None = None


# "Cross-account permissions don't apply to the following actions" (SQS Developer Guide,
# "Limitations of Amazon SQS custom policies"; each action's API reference says it too): only
# the queue's own account may call them, whatever the queue's policy grants another account.
OWNER_ONLY_ACTIONS: Final = frozenset(
    {
        "AddPermission",
        "CancelMessageMoveTask",
        "CreateQueue",
        "DeleteQueue",
        "ListMessageMoveTasks",
        "ListQueues",
        "ListQueueTags",
        "RemovePermission",
        "SetQueueAttributes",
        "StartMessageMoveTask",
        "TagQueue",
        "UntagQueue",
    }
)

# GetQueueUrl's answer for a queue that does not exist and for one the caller may not see.
NOT_FOUND_OR_NOT_YOURS: Final = (
    "The specified queue does not exist or you do not have access to it."
)


class SqsApi:
    """Every SQS action, bound to one registry."""

    def __init__(self, registry: QueueRegistry, *, account_id: str) -> None:
        self.registry = registry
        self.store = registry.store
        self.account_id = account_id
        # Queue URL -> queue name, for URLs of this account seen before: a client sends the
        # same few URLs on every request. Cleared when full, so it stays small.
        self._queue_names: dict[str, str] = {}
        self._reads_failing = False  # the last receive's read failed (logged already)
        self._unopened_reports = Throttle()  # see report_unopened
        self._actions: dict[str, Callable[[Params, RequestContext], Awaitable[Result]]] = {
            "CreateQueue": self.create_queue,
            "DeleteQueue": self.delete_queue,
            "GetQueueUrl": self.get_queue_url,
            "ListQueues": self.list_queues,
            "GetQueueAttributes": self.get_queue_attributes,
            "SetQueueAttributes": self.set_queue_attributes,
            "TagQueue": self.tag_queue,
            "UntagQueue": self.untag_queue,
            "ListQueueTags": self.list_queue_tags,
            "SendMessage": self.send_message,
            "SendMessageBatch": self.send_message_batch,
            "ReceiveMessage": self.receive_message,
            "DeleteMessage": self.delete_message,
            "DeleteMessageBatch": self.delete_message_batch,
            "ChangeMessageVisibility": self.change_message_visibility,
            "ChangeMessageVisibilityBatch": self.change_message_visibility_batch,
            "PurgeQueue": self.purge_queue,
            "ListDeadLetterSourceQueues": self.list_dead_letter_source_queues,
            "AddPermission": self.add_permission,
            "RemovePermission": self.remove_permission,
        }

    def supports(self, action: str) -> bool:
        return action in self._actions

    def register(
        self, actions: Mapping[str, Callable[[Params, RequestContext], Awaitable[Result]]]
    ) -> None:
        """Answer ``actions`` with handlers that live elsewhere (:mod:`broker.move_tasks`)."""
        self._actions.update(actions)

    def authorize(self, queue: Queue, context: RequestContext) -> None:
        """Raise ``AccessDenied`` unless the queue's policy lets the caller do the action."""
        self._authorize(queue, context)

    async def handle(self, action: str, params: Params, context: RequestContext) -> Result:
        handler = self._actions.get(action)
        if handler is None:
            raise sqs_error(
                "UnsupportedOperation", f"{action} is not supported by this broker yet."
            )
        return await handler(params, context)

    # ------------------------------------------------------------------ helpers

    def queue_of(self, params: Params, context: RequestContext) -> Queue:
        """The queue a request's ``QueueUrl`` names, if its policy lets the caller act on it.

        Any host is accepted in the URL: clients reach the broker under many names.
        """
        url = params.get("QueueUrl")
        if not url:
            raise common_error(
                "MissingParameter", "The request must contain the parameter QueueUrl."
            )
        name = self._queue_names.get(url)
        if name is None:
            try:
                parsed = parse_queue_url(url)
            except ArnError:
                raise sqs_error(
                    "InvalidAddress", f"The address {url} is not valid for this endpoint."
                ) from None
            if parsed.account != self.account_id:
                raise queue_does_not_exist()
            name = parsed.name
            if len(self._queue_names) >= QUEUE_URL_CACHE:
                self._queue_names.clear()
            self._queue_names[url] = name
        queue = self.registry.require(name)
        self._authorize(queue, context)
        return queue

    def _authorize(self, queue: Queue, context: RequestContext) -> None:
        if not self._allows(queue, context):
            raise access_denied(queue.arn, context.caller)

    def _allows(self, queue: Queue, context: RequestContext, action: str | None = None) -> bool:
        """Whether the queue's policy lets the caller do ``action`` (the request's own)."""
        caller = context.caller
        action = action or context.action
        if action in OWNER_ONLY_ACTIONS and caller.account != self.account_id:
            return False  # (an anonymous caller stands for the broker's own account)
        policy = queue.settings.policy
        if policy is None:  # the common case, kept cheap: no context to build
            return caller.anonymous or caller.account == self.account_id
        conditions = request_context(
            now_ms=now_ms(),
            secure=context.secure,
            source_ip=context.source_ip or None,
            principal_arn=None if caller.anonymous else caller.principal_arn,
            principal_account=None if caller.anonymous else caller.account,
        )
        decision = evaluate(
            policy,
            principal_arn=caller.principal_arn,
            principal_account=caller.account,
            owner_account=self.account_id,
            action=action,
            resource=queue.arn,
            context=conditions,
            anonymous=caller.anonymous,
        )
        return decision is Decision.ALLOW

    def url_of(self, queue: Queue, context: RequestContext) -> str:
        return build_queue_url(context.base_url, self.account_id, queue.name)

    async def _commit(self, change: Change) -> None:
        if change.mutations:
            await self.store.commit(change.mutations, change.on_durable)
        else:
            # Nothing to write, but the answer may rest on an earlier write still on its way
            # to the disk (a FIFO duplicate's original, the first of two deletes).
            await self.store.settled()
            change.on_durable()

    # ------------------------------------------------------------------ queues

    async def create_queue(self, params: Params, context: RequestContext) -> Result:
        name = _required(params, "QueueName")
        caller = context.caller
        if not caller.anonymous and caller.account != self.account_id:
            # AWS creates a queue in the caller's own account; this broker serves one account,
            # and no queue policy can let another account create queues in it.
            raise common_error(
                "AccessDenied",
                f"User: {caller.principal_arn} is not authorized to perform: sqs:CreateQueue "
                f"in account {self.account_id}.",
            )
        existing = self.registry.get(name)
        if existing is not None:
            self._authorize(existing, context)  # an explicit Deny of sqs:CreateQueue
        tags = params.get("tags") or {}
        _check_tags(tags)
        attributes = params.get("Attributes") or {}
        _check_attribute_text(attributes)
        queue = await self.registry.create(name, attributes, tags)
        return {"QueueUrl": self.url_of(queue, context)}

    async def delete_queue(self, params: Params, context: RequestContext) -> Result:
        await self.registry.delete(self.queue_of(params, context))
        return None

    async def get_queue_url(self, params: Params, context: RequestContext) -> Result:
        name = _required(params, "QueueName")
        # Without QueueOwnerAWSAccountId, AWS looks in the caller's own account.
        owner = params.get("QueueOwnerAWSAccountId") or context.caller.account
        queue = self.registry.get(name) if owner == self.account_id else None
        if queue is not None and self._allows(queue, context):
            return {"QueueUrl": self.url_of(queue, context)}
        if queue is None and owner == context.caller.account:
            raise queue_does_not_exist()  # in the caller's own account: plainly not there
        # A queue the caller may not see answers as one that is not there, with AWS's text
        # for both (spring-cloud-aws#417: a queue without sqs:GetQueueUrl granted;
        # fluent-plugin-s3#342: another account's), so another account's key cannot probe
        # which names exist.
        raise sqs_error("QueueDoesNotExist", NOT_FOUND_OR_NOT_YOURS)

    async def list_queues(self, params: Params, context: RequestContext) -> Result:
        prefix = params.get("QueueNamePrefix") or ""
        if context.caller.account != self.account_id:
            # ListQueues lists the caller's own account's queues: none here for another
            # account, whatever the queues' policies grant it.
            return {}
        names = sorted(q.name for q in self.registry if q.name.startswith(prefix))
        page, token = _paginate(names, params.get("MaxResults"), params.get("NextToken"))
        urls = [build_queue_url(context.base_url, self.account_id, n) for n in page]
        result: dict[str, Any] = {"QueueUrls": urls} if urls else {}
        if token is not None:
            result["NextToken"] = token
        return result

    async def get_queue_attributes(self, params: Params, context: RequestContext) -> Result:
        queue = self.queue_of(params, context)
        names = params.get("AttributeNames") or []
        attributes = render_attributes(queue.settings, names, queue.facts(now_ms()))
        return {"Attributes": attributes} if attributes else {}

    async def set_queue_attributes(self, params: Params, context: RequestContext) -> Result:
        queue = self.queue_of(params, context)
        attributes = params.get("Attributes") or {}
        _check_attribute_text(attributes)
        await self.registry.set_attributes(queue, attributes)
        return None

    async def tag_queue(self, params: Params, context: RequestContext) -> Result:
        queue = self.queue_of(params, context)
        added = params.get("Tags") or {}

        def tagged(current: Mapping[str, str]) -> dict[str, str]:
            tags = {**current, **added}
            _check_tags(tags, added)
            return tags

        await self.registry.update_tags(queue, tagged)
        return None

    async def untag_queue(self, params: Params, context: RequestContext) -> Result:
        queue = self.queue_of(params, context)
        drop = _tag_keys(params.get("TagKeys") or [])
        await self.registry.update_tags(
            queue, lambda current: {k: v for k, v in current.items() if k not in drop}
        )
        return None

    async def list_queue_tags(self, params: Params, context: RequestContext) -> Result:
        tags = self.queue_of(params, context).record.tags
        return {"Tags": dict(tags)} if tags else {}

    async def purge_queue(self, params: Params, context: RequestContext) -> Result:
        queue = self.queue_of(params, context)
        await self._commit(queue.index.purge(now_ms()))
        return None

    async def list_dead_letter_source_queues(
        self, params: Params, context: RequestContext
    ) -> Result:
        target = self.queue_of(params, context)
        # A source queue is listed only if the caller may learn its URL (sqs:GetQueueUrl).
        names = sorted(
            q.name
            for q in self.registry
            if q.settings.redrive_policy is not None
            and q.settings.redrive_policy.dead_letter_target_arn == target.arn
            and self._allows(q, context, "GetQueueUrl")
        )
        page, token = _paginate(names, params.get("MaxResults"), params.get("NextToken"))
        result: dict[str, Any] = {
            "queueUrls": [build_queue_url(context.base_url, self.account_id, n) for n in page]
        }
        if token is not None:
            result["NextToken"] = token
        return result

    async def add_permission(self, params: Params, context: RequestContext) -> Result:
        queue = self.queue_of(params, context)
        label = _required(params, "Label")
        accounts = params.get("AWSAccountIds") or []
        actions = params.get("Actions") or []

        def added(settings: QueueSettings) -> dict[str, str]:
            policy = add_permission(
                settings.policy,
                queue_arn=queue.arn,
                label=label,
                accounts=accounts,
                actions=actions,
            )
            return {"Policy": policy}

        await self.registry.update_attributes(queue, added)
        return None

    async def remove_permission(self, params: Params, context: RequestContext) -> Result:
        queue = self.queue_of(params, context)
        label = _required(params, "Label")
        await self.registry.update_attributes(
            queue, lambda settings: {"Policy": remove_permission(settings.policy, label=label)}
        )
        return None

    # ------------------------------------------------------------------ sends

    async def send_message(self, params: Params, context: RequestContext) -> Result:
        queue = self.queue_of(params, context)
        request = _send_request(params, context)
        self.store.check_sealing(queue.settings)  # KMS.NotFoundException before accepting
        size = message_size(request)
        outcome = queue.index.send(
            now_ms(), request, characters_checked=context.plain_text, size=size
        )
        await self._commit(outcome)
        sent = outcome.results[0]
        assert not isinstance(sent, SqsError)  # send() raises instead
        if not sent.duplicate:  # NumberOfMessagesSent counts what the queue took in
            queue.stats.sent += 1
            queue.stats.bytes_sent += size
        return _send_result(params, request, sent.message_id, sent.sequence_number)

    async def send_message_batch(self, params: Params, context: RequestContext) -> Result:
        queue = self.queue_of(params, context)
        entries = _batch_entries(params)
        requests = []
        sizes = []
        failed: list[dict[str, Any]] = []
        valid: list[Params] = []
        for entry in entries:
            try:
                request = _send_request(entry, context)
            except SqsError as error:
                failed.append(_batch_failure(entry["Id"], error))
                continue
            requests.append(request)
            sizes.append(message_size(request))  # for the model too, which checks each
            valid.append(entry)
        if sum(sizes) > MAX_BATCH_BYTES:
            raise sqs_error(
                "BatchRequestTooLong",
                f"Batch requests cannot be longer than {MAX_BATCH_BYTES} bytes. "
                f"You have sent {sum(sizes)} bytes.",
            )
        refuse_incomplete_fifo_batch(queue.settings, requests)
        self.store.check_sealing(queue.settings)  # KMS.NotFoundException before accepting
        outcome = queue.index.send_batch(
            now_ms(), requests, characters_checked=context.plain_text, sizes=sizes
        )
        await self._commit(outcome)
        successful = []
        sent_count = sent_bytes = 0
        for entry, request, size, sent in zip(valid, requests, sizes, outcome.results, strict=True):
            if isinstance(sent, SqsError):
                failed.append(_batch_failure(entry["Id"], sent))
                continue
            if not sent.duplicate:  # a FIFO duplicate succeeds, but adds nothing to count
                sent_count += 1
                sent_bytes += size
            if (
                sent.sequence_number is None
                and request.body_md5 is not None
                and not entry.get("MessageAttributes")
                and not entry.get("MessageSystemAttributes")
            ):
                # _send_result's answer for a plain message, without the call (most are plain)
                result = {
                    "MessageId": sent.message_id,
                    "MD5OfMessageBody": request.body_md5,
                    "Id": entry["Id"],
                }
            else:
                result = _send_result(entry, request, sent.message_id, sent.sequence_number)
                result["Id"] = entry["Id"]
            successful.append(result)
        queue.stats.sent += sent_count
        queue.stats.bytes_sent += sent_bytes
        return {"Successful": successful, "Failed": failed}

    # ------------------------------------------------------------------ receives

    async def receive_message(self, params: Params, context: RequestContext) -> Result:
        queue = self.queue_of(params, context)
        wait_seconds = resolve_wait_time(queue.settings, params.get("WaitTimeSeconds"))
        deadline = trio.current_time() + wait_seconds
        deliveries = await self._receive(queue, params, deadline, context.peer)
        if not deliveries:
            queue.index.check_in_flight_limit(long_poll=wait_seconds > 0)  # OverLimit, 403
            queue.stats.empty_receives += 1
            return {}
        try:
            read = await self.store.read_messages(
                queue.record.queue_id, [d.seq for d in deliveries]
            )
        except UnopenedMessages as partial:
            read = self._opened(queue, partial)
        except BaseException as exc:
            # Marked received, but never to be returned: give them back now rather than
            # after their visibility timeout (cancelled too: the answer will not go out).
            self._give_back(queue, deliveries)
            if isinstance(exc, Exception) and not isinstance(
                exc,
                (StoreFailed, SqsError, AwsError),  # answered as they are (KMS, 503)
            ):
                raise self._read_failed(queue, exc) from exc
            raise
        self._reads_failing = False
        stored = {m.seq: m for m in read}
        system_names = _system_attribute_names(params)
        attribute_filter = params.get("MessageAttributeNames") or []
        messages = [
            _message(d, stored[d.seq], system_names, attribute_filter, fifo=queue.settings.fifo)
            for d in deliveries
            if d.seq in stored  # deleted meanwhile by a stale handle: nothing to return
        ]
        queue.stats.received += len(messages)
        return {"Messages": messages} if messages else {}

    def _opened(self, queue: Queue, partial: UnopenedMessages) -> list[StoredMessage]:
        """The messages of a receive that opened; those that did not stay received.

        A message sealed with a key that left the key file, or whose sealed value fails
        authentication, is left as a consumer that took it and failed would leave it: hidden
        for its visibility timeout and counted in ApproximateReceiveCount, so a RedrivePolicy
        moves it to the dead-letter queue after maxReceiveCount, AWS's answer to "messages
        that can't be processed (consumed) successfully" (SQS Developer Guide, "Using
        dead-letter queues"). Given back at once instead, it would be taken first again by
        every receive and hide every other message of its queue. So the receive answers an
        error only when it opened none of the messages it took.

        Raises:
            KeyUnavailable: none opened, and a key is missing (``KMS.NotFoundException``).
            AwsError: none opened, and they failed authentication (503, which SDKs retry:
                the retry finds them hidden and receives the others).
        """
        report_unopened(
            self.registry.log,
            self._unopened_reports,
            "receive.unopened",
            queue.name,
            partial.unopened,
        )
        if partial.opened:
            return partial.opened
        for message in partial.unopened:
            if isinstance(message.error, KeyUnavailable):
                raise message.error from None
        raise common_error(
            "ServiceUnavailable",
            "The broker could not open the messages it took from its store: they failed "
            "authentication. They stay hidden for their visibility timeout. Retry the request.",
        )

    def _give_back(self, queue: Queue, deliveries: Sequence[Delivery]) -> None:
        """Make the messages of a receive that returns none of them visible again at once.

        As a ChangeMessageVisibility to 0 would: the receive still counts in their
        ApproximateReceiveCount (the model has no undo of a receive).
        """
        now = now_ms()
        changes = []
        for delivery in deliveries:
            try:
                changes.append(queue.index.change_visibility(now, delivery.receipt_handle, 0))
            except SqsError:
                continue  # visible already (VisibilityTimeout=0), or gone meanwhile
        change = Change.combine(changes)
        if not change.mutations:
            return
        try:
            # Not awaited: this runs while the receive fails or is cancelled.
            self.store.commit_later(change.mutations, change.on_durable)
        except Exception as exc:
            # The store is failing too: the messages come back at their visibility timeout.
            self.registry.log.exception("receive.give_back_failed", exc, queue=queue.name)

    def _read_failed(self, queue: Queue, exc: Exception) -> AwsError:
        """The retryable answer to a receive whose messages could not be read; logged once
        for a run of failures, so that a flood of receives does not flood the log too."""
        if not self._reads_failing:
            self._reads_failing = True
            self.registry.log.exception("receive.read_failed", exc, queue=queue.name)
        # 503: every SDK retries it (botocore's legacy and standard retry modes both do).
        return common_error(
            "ServiceUnavailable",
            "The broker could not read the messages from its store; they are visible again. "
            "Retry the request.",
        )

    async def _receive(
        self, queue: Queue, params: Params, deadline: float, peer: Peer | None
    ) -> list[Delivery]:
        """One receive, long-polling until ``deadline``: woken by sends, never by a loop.

        A long poll whose client has gone (``peer``) ends with nothing, taking no message
        its client would never see (it would stay hidden for its visibility timeout, and
        count as received), and lets go of the connection at once.
        """
        while True:
            changed = queue.changed()
            now = now_ms()
            outcome = queue.index.receive(
                now,
                max_messages=params.get("MaxNumberOfMessages", 1),
                visibility_timeout=params.get("VisibilityTimeout"),
                attempt_id=params.get("ReceiveRequestAttemptId"),
                dead_letter=self.registry.dead_letter_index(queue),
            )
            if outcome.mutations and not _receive_waits(queue, outcome):
                self.store.commit_later(outcome.mutations, outcome.on_durable)
            else:
                await self._commit(outcome)
            if outcome.deliveries:
                return outcome.deliveries
            if queue.deleted:
                raise queue_does_not_exist()
            if self.registry.stopping or trio.current_time() >= deadline:
                return []
            wake_at = deadline
            next_due = queue.index.next_wakeup(now)
            if next_due is not None:
                wake_at = min(deadline, trio.current_time() + max(0, next_due - now) / 1000)
            with trio.move_on_at(wake_at):
                if peer is None:
                    await changed.wait()
                else:
                    await _wait_changed_or_gone(changed, peer)
            # Also when woken by a send: the client may have left during the wait.
            if peer is not None and peer.gone_nowait():
                return []

    # ------------------------------------------------------------------ handles

    async def delete_message(self, params: Params, context: RequestContext) -> Result:
        queue = self.queue_of(params, context)
        handle = _required(params, "ReceiptHandle")
        await self._commit(queue.index.delete(now_ms(), handle))
        queue.stats.deleted += 1
        return None

    async def delete_message_batch(self, params: Params, context: RequestContext) -> Result:
        queue = self.queue_of(params, context)
        now = now_ms()

        def apply(entry: Params) -> Change:
            return queue.index.delete(now, _required(entry, "ReceiptHandle"))

        result = await self._handle_batch(_batch_entries(params), apply)
        queue.stats.deleted += len(result["Successful"])
        return result

    async def change_message_visibility(self, params: Params, context: RequestContext) -> Result:
        queue = self.queue_of(params, context)
        change = queue.index.change_visibility(
            now_ms(), _required(params, "ReceiptHandle"), _required(params, "VisibilityTimeout")
        )
        await self._commit(change)
        return None

    async def change_message_visibility_batch(
        self, params: Params, context: RequestContext
    ) -> Result:
        queue = self.queue_of(params, context)
        now = now_ms()

        def apply(entry: Params) -> Change:
            return queue.index.change_visibility(
                now, _required(entry, "ReceiptHandle"), _required(entry, "VisibilityTimeout")
            )

        return await self._handle_batch(_batch_entries(params), apply)

    async def _handle_batch(
        self, entries: Sequence[Params], apply: Callable[[Params], Change]
    ) -> dict[str, Any]:
        """Apply each entry to the model, then commit all of them in one transaction."""
        successful: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        changes: list[Change] = []
        for entry in entries:
            try:
                changes.append(apply(entry))
            except (SqsError, AwsError) as error:
                failed.append(_batch_failure(entry["Id"], error))
                continue
            successful.append({"Id": entry["Id"]})
        # One commit, and one wake-up of the queue's receivers rather than one per entry.
        await self._commit(Change.combine(changes))
        return {"Successful": successful, "Failed": failed}


def report_unopened(
    log: EventLog,
    throttle: Throttle,
    event: str,
    queue: str,
    unopened: Sequence[UnopenedMessage],
    **fields: object,
) -> None:
    """Log messages of ``queue`` that could not be opened: their id and their key's id.

    Never the key. At most one line a minute for each queue, key and cause, counting the
    others (``held_back``): such a message comes back every visibility timeout, and a queue
    may hold many of them.
    """
    for message in unopened:
        missing = isinstance(message.error, KeyUnavailable)
        cause = "key_unavailable" if missing else "authentication_failed"
        held_back = throttle.admit((queue, message.key_id, cause))
        if held_back is None:
            continue
        log.error(
            event,
            queue=queue,
            message_id=message.message_id,
            key_id=message.key_id,
            cause=cause,
            held_back=held_back,
            hint=(
                "list the key under this id in the key file again and reload"
                if missing
                else "the stored message was altered, or the key file lists another key "
                "under this id"
            ),
            **fields,
        )


async def _wait_changed_or_gone(changed: trio.Event, peer: Peer) -> None:
    """Wait until the queue changes or the client goes (a nursery: long polls only)."""
    async with trio.open_nursery() as nursery:

        async def watch_peer() -> None:
            await peer.wait_gone()
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch_peer)
        await changed.wait()
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------- request envelopes


def access_denied(arn: str, caller: Caller) -> AwsError:
    who = "anonymous" if caller.anonymous else caller.principal_arn
    return common_error("AccessDenied", f"Access to the resource {arn} is denied for {who}.")


def _required(params: Params, name: str) -> Any:
    value = params.get(name)
    if value is None or value == "":
        raise common_error("MissingParameter", f"The request must contain the parameter {name}.")
    return value


def _check_attribute_text(attributes: Mapping[str, Any]) -> None:
    """Refuse a queue attribute value the store cannot write: one with a lone surrogate.

    Only JSON can bring one (an escape such as ``\\ud800``, see proto.aws.json_protocol).
    Free text (a Policy's strings, KmsMasterKeyId) would otherwise reach SQLite, whose
    UTF-8 encoding fails the commit: a 500 for a client's mistake.
    """
    for name, value in attributes.items():
        if isinstance(value, str) and not value.isascii():
            try:
                value.encode()
            except UnicodeEncodeError:
                raise invalid_attribute_value(name) from None


def _check_tags(tags: Mapping[str, str], new: Mapping[str, str] | None = None) -> None:
    """The tag count of ``tags`` (a queue's, after the request) and the rules of the ``new``
    ones (all of ``tags`` when not given: tags stored earlier are not judged again)."""
    if len(tags) > MAX_TAGS:
        raise common_error(
            "InvalidParameterValue", f"Too many tags: a queue can have at most {MAX_TAGS}."
        )
    for key, value in (new or tags).items():
        problem = tag_problem(key, value)
        if problem is not None:
            raise common_error("InvalidParameterValue", f"Invalid tag: {problem}.")


def _tag_keys(keys: Sequence[str]) -> set[str]:
    """UntagQueue's TagKeys: keys TagQueue would take (botocore's model: required)."""
    if not keys:
        raise common_error("MissingParameter", "The request must contain the parameter TagKeys.")
    for key in keys:
        problem = tag_key_problem(key)
        if problem is not None:
            raise common_error("InvalidParameterValue", f"Invalid tag key: {problem}.")
    return set(keys)


def _paginate(
    names: Sequence[str], max_results: int | None, token: str | None
) -> tuple[Sequence[str], str | None]:
    """A page of ``names`` after ``token``; tokens are opaque, as AWS's are."""
    start = 0
    if token:
        try:
            # validate: a token with characters outside the alphabet is not ours (without
            # it, '!!!' would decode to nothing and restart the listing)
            after = base64.b64decode(token.encode(), altchars=b"-_", validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            raise common_error("InvalidParameterValue", "Invalid NextToken value.") from None
        if not after:
            raise common_error("InvalidParameterValue", "Invalid NextToken value.")
        start = next((i for i, n in enumerate(names) if n > after), len(names))
    if max_results is None:
        return names[start : start + LIST_QUEUES_LIMIT], None
    if not 1 <= max_results <= LIST_QUEUES_LIMIT:
        raise common_error(
            "InvalidParameterValue",
            f"Value {max_results} for parameter MaxResults is invalid. "
            f"Reason: MaxResults must be an integer between 1 and {LIST_QUEUES_LIMIT}.",
        )
    page = names[start : start + max_results]
    more = start + max_results < len(names)
    next_token = base64.urlsafe_b64encode(page[-1].encode()).decode() if more and page else None
    return page, next_token


def _batch_entries(params: Params) -> list[Params]:
    entries: list[Params] = params.get("Entries") or []
    if not entries:
        raise sqs_error("EmptyBatchRequest", "There should be at least one entry in the request.")
    if len(entries) > MAX_BATCH_ENTRIES:
        raise sqs_error(
            "TooManyEntriesInBatchRequest",
            f"Maximum number of entries per request are {MAX_BATCH_ENTRIES}. "
            f"You have sent {len(entries)}.",
        )
    ids = set()
    for entry in entries:
        entry_id = entry.get("Id") or ""
        if not _BATCH_ENTRY_ID.fullmatch(entry_id):
            raise sqs_error(
                "InvalidBatchEntryId",
                "A batch entry id can only contain alphanumeric characters, hyphens and "
                "underscores. It can be at most 80 letters long.",
            )
        if entry_id in ids:
            raise sqs_error("BatchEntryIdsNotDistinct", f"Id {entry_id} repeated.")
        ids.add(entry_id)
    return entries


def _batch_failure(entry_id: str, error: SqsError | AwsError) -> dict[str, Any]:
    return {
        "Id": entry_id,
        "SenderFault": error.sender_fault,
        "Code": error.code,
        "Message": error.message,
    }


def _send_request(params: Params, context: RequestContext) -> SendRequest:
    body = params.get("MessageBody")
    if body is None:
        raise common_error(
            "MissingParameter", "The request must contain the parameter MessageBody."
        )
    system = params.get("MessageSystemAttributes")
    trace_header = None
    if system:
        trace = system.get("AWSTraceHeader")
        for name in system:
            if name != "AWSTraceHeader":
                raise SqsError(
                    INVALID_PARAMETER_VALUE, f"Message system attribute name '{name}' is invalid."
                )
        if trace is not None and (
            trace.get("DataType") != "String" or not trace.get("StringValue")
        ):
            # The only system attribute: "Its type must be String" (SendMessage API reference).
            raise SqsError(
                INVALID_PARAMETER_VALUE,
                "Message (system) attribute 'AWSTraceHeader' must contain a non-empty value of "
                "type 'String'.",
            )
        trace_header = trace.get("StringValue") if trace else None
    try:
        body_md5: str | None = md5_of_body(body)
    except DigestError:  # a lone surrogate: the model refuses the body (InvalidMessageContents)
        body_md5 = None
    attributes = params.get("MessageAttributes")
    return SendRequest(
        body=body,
        attributes={
            name: AttributeValue(
                value.get("DataType", ""), value.get("StringValue"), value.get("BinaryValue")
            )
            for name, value in attributes.items()
        }
        if attributes
        else {},
        delay_seconds=params.get("DelaySeconds"),
        group_id=params.get("MessageGroupId"),
        deduplication_id=params.get("MessageDeduplicationId"),
        trace_header=trace_header,
        sender_id=context.caller.sender_id,
        body_md5=body_md5,
    )


def _send_result(
    params: Params, request: SendRequest, message_id: str, sequence_number: str | None
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "MessageId": message_id,
        "MD5OfMessageBody": request.body_md5 or md5_of_body(request.body),
    }
    if params.get("MessageAttributes"):
        result["MD5OfMessageAttributes"] = md5_of_attributes(params["MessageAttributes"])
    if params.get("MessageSystemAttributes"):
        result["MD5OfMessageSystemAttributes"] = md5_of_attributes(
            params["MessageSystemAttributes"]
        )
    if sequence_number is not None:
        result["SequenceNumber"] = sequence_number
    return result


# ---------------------------------------------------------------------- receive results


def _receive_waits(queue: Queue, outcome: ReceiveOutcome) -> bool:
    """Whether a receive's reply waits for its commit (receive count, deadline) to be durable.

    A standard queue's first receive of a message does not: lost in a crash, the receive
    leaves the message visible again with its former count after the restart -- one more
    delivery, which at-least-once allows; nothing the client was told is contradicted (the
    store writes the record ahead of any later write that touches the message, and drops it
    when the message is deleted first: ``commit_later``). A FIFO queue waits: its
    exactly-once processing and its ReceiveRequestAttemptId retries rest on the receive
    surviving. So does a redelivery, whose
    ApproximateFirstReceiveTimestamp may have to be read back from the file, and a receive
    that also moved messages to the dead-letter queue or dropped expired ones: those are there
    (and gone) when the reply arrives, as before.
    """
    if queue.settings.fifo:
        return True
    if any(type(mutation) is not MessageDelivered for mutation in outcome.mutations):
        return True
    return any(delivery.receive_count > 1 for delivery in outcome.deliveries)


def _system_attribute_names(params: Params) -> frozenset[str]:
    names = [
        *(params.get("AttributeNames") or []),
        *(params.get("MessageSystemAttributeNames") or []),
    ]
    if "All" in names:
        return frozenset(SYSTEM_ATTRIBUTES)
    return frozenset(names)


def _wanted(name: str, patterns: Sequence[str]) -> bool:
    for pattern in patterns:
        # "*" is undocumented, but SQS answers it like "All" (localstack#8566, confirmed).
        if pattern in ("All", ".*", "*") or pattern == name:
            return True
        if pattern.endswith(".*") and name.startswith(pattern[:-1]):
            return True
    return False


def _attribute_map(attributes: Mapping[str, AttributeValue]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in attributes.items():
        entry: dict[str, Any] = {"DataType": value.data_type}
        if value.string_value is not None:
            entry["StringValue"] = value.string_value
        if value.binary_value is not None:
            entry["BinaryValue"] = value.binary_value
        out[name] = entry
    return out


def _message(
    delivery: Delivery,
    stored: StoredMessage,
    system_names: frozenset[str],
    attribute_filter: Sequence[str],
    *,
    fifo: bool,
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "MessageId": stored.message_id,
        "ReceiptHandle": delivery.receipt_handle,
        # Carried from the send by the store's body cache when it has it (see SendRequest).
        "MD5OfBody": stored.body_md5 or md5_of_body(stored.body),
        "Body": stored.body,
    }
    if system_names:
        first = delivery.first_receive_at or stored.first_received_at or 0
        values = {
            "SenderId": stored.sender_id,
            "SentTimestamp": str(stored.sent_at),
            "ApproximateReceiveCount": str(delivery.receive_count),
            "ApproximateFirstReceiveTimestamp": str(first),
            "SequenceNumber": sequence_number(stored.seq) if fifo else None,
            "MessageDeduplicationId": stored.deduplication_id,
            "MessageGroupId": stored.group_id,
            "AWSTraceHeader": stored.trace_header,
            "DeadLetterQueueSourceArn": stored.dead_letter_source_arn,
        }
        attributes = {k: v for k, v in values.items() if k in system_names and v is not None}
        if attributes:
            message["Attributes"] = attributes
    if attribute_filter and stored.attributes:
        chosen = {k: v for k, v in stored.attributes.items() if _wanted(k, attribute_filter)}
        if chosen:
            mapped = _attribute_map(chosen)
            message["MessageAttributes"] = mapped
            message["MD5OfMessageAttributes"] = md5_of_attributes(mapped)
    return message
