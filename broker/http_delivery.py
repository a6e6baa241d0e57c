"""The HTTP/S delivery worker: the outbox in the store, one lane per subscription, retries.

Every POST owed to an endpoint is an outbox row (:class:`~broker.model.sns_mutations.
HttpDelivery`), written in the same commit as the publish or Subscribe that made it, and taken
here only once durable. At start the rows still pending are loaded (without their bodies) and
resume where they were: attempt counts and due times are in the row.

Lanes. Each subscription has a lane: a heap of its deliveries by due time and at most one task
that starts attempts when they fall due, spaced by the throttle policy's
``maxReceivesPerSecond``. A slow or dead endpoint therefore fills only its own lane.

Health. An endpoint is *proven* while its last finished attempt got a 2xx, *failing* while it
got no response or a retryable status (5xx, 429: timeouts, resets, refusals), and *new* before
either. A proven lane may have ``endpoint_concurrency`` attempts in flight; a new or failing
one has one, a probe, until it succeeds.

Slots. A lane's first attempt in flight (its lead) takes a slot from the leads' limiter; a
proven lane's further attempts share a second limiter of the same size
(``delivery_concurrency`` each). So slow endpoints, even ones that answer 200 after many
seconds, can fill the shared slots with their backlog, yet every other lane still starts its
lead: a healthy subscription waits only when ``delivery_concurrency`` distinct endpoints hold a
lead at once. Failing lanes' probes (leads too) also share a limiter of half the leads, so
endpoints known dead, however many, leave half of the leads to the others. The two limiters
bound sockets and memory at twice ``delivery_concurrency``.

After an attempt: 2xx finishes the row; 5xx, 429 and no response are retried when the
subscription's effective delivery policy allows (phases, backoff, the 3,600 s window), each
retry delayed by up to ``RETRY_JITTER`` more than the policy says (AWS adds jitter too: lanes
that failed together do not retry in lockstep), never past the window; other 4xx and an
exhausted policy send the message to the subscription's RedrivePolicy dead-letter queue, in
the same commit that deletes the row.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import trio

from broker.fanout import Batch
from broker.http_client import Outcome
from broker.model.delivery_policy import EffectiveDeliveryPolicy
from broker.model.sns_mutations import (
    HttpDelivery,
    HttpDeliveryFinished,
    HttpDeliveryRescheduled,
    MessageType,
)
from broker.model.subscriptions import masked_endpoint
from broker.registry import now_ms
from broker.store.base import HttpPayload, PendingHttpDelivery, Store
from monitoring.logging import EventLog
from monitoring.throttle import Throttle

if TYPE_CHECKING:
    from broker.fanout import Fanout
    from broker.http_client import HttpClient
    from broker.topic_state import Subscription
    from broker.topics import TopicRegistry

PAYLOAD_CACHE_BYTES: Final = 64 * 1024 * 1024  # bodies kept in memory; the rest read back
RETRY_AFTER_BUG_SECONDS: Final = 30.0  # an attempt that failed inside Wharf is tried again
# A delivery the broker could not open a socket for (out of descriptors or memory) is tried
# again this much later, uncounted: the shortage is the broker's, not the endpoint's.
RETRY_AFTER_EXHAUSTION_SECONDS: Final = 1.0  # the first wait; it doubles while a shortage lasts
MAX_RETRY_AFTER_EXHAUSTION_SECONDS: Final = 60.0
# A retry waits up to this fraction of its delay longer than the policy says: enough to spread
# lanes that failed at the same moment, small enough to keep the policy's schedule recognisable.
RETRY_JITTER: Final = 0.1
# An attempt that starts this much after its retry window ended is not made (see _expire); a
# retry scheduled at the window's very end still gets its attempt.
WINDOW_GRACE_SECONDS: Final = 1.0


class _Item:
    """One pending delivery, as the worker schedules it."""

    __slots__ = (
        "attempts",
        "counted_under",
        "delivery_id",
        "endpoint",
        "first_attempt_at",
        "forgotten",
        "in_flight",
        "message_type",
        "next_attempt_at",
        "payload",
        "payload_cached",
        "published_at",
        "subscription_id",
        "topic_id",
    )

    def __init__(self, row: PendingHttpDelivery | HttpDelivery) -> None:
        self.delivery_id = row.delivery_id
        self.subscription_id = row.subscription_id
        self.topic_id = row.topic_id
        self.message_type: MessageType = row.message_type
        self.endpoint = row.endpoint
        self.attempts = row.attempts
        self.first_attempt_at = row.first_attempt_at
        self.next_attempt_at = row.next_attempt_at
        self.published_at = row.published_at
        self.payload: HttpPayload | None = None
        self.payload_cached = False  # its body counts in the cache: kept between attempts
        self.in_flight = False
        self.forgotten = False  # unsubscribed or deleted during its attempt: no retry
        # The subscription whose topic counted the notification attempt in flight: its
        # outcome counts there too, whatever became of the subscription meanwhile.
        self.counted_under: Subscription | None = None

    def is_forgotten(self) -> bool:
        """``forgotten`` read anew after an await (a check before it does not hold after)."""
        return self.forgotten


class _Lane:
    """One subscription's deliveries."""

    __slots__ = (
        "heap",
        "in_flight",
        "items",
        "leading",
        "next_start",
        "running",
        "subscription_id",
        "wake",
    )

    def __init__(self, subscription_id: str) -> None:
        self.subscription_id = subscription_id
        self.heap: list[tuple[int, int]] = []  # (next_attempt_at, delivery_id); stale ones skipped
        self.items: dict[int, _Item] = {}
        self.in_flight = 0
        self.leading = False  # an attempt of this lane holds a lead slot
        self.next_start = 0.0  # trio clock: the throttle's earliest next attempt
        self.running = False
        self.wake = trio.Event()

    def push(self, item: _Item) -> None:
        heapq.heappush(self.heap, (item.next_attempt_at, item.delivery_id))
        self.notify()

    def notify(self) -> None:
        self.wake.set()
        self.wake = trio.Event()


class HttpDeliveries:
    """Schedules, attempts, retries and dead-letters the outbox's POSTs."""

    def __init__(
        self,
        store: Store,
        topics: TopicRegistry,
        client: HttpClient,
        *,
        concurrency: int,
        endpoint_concurrency: int,
        log: EventLog,
        rng: random.Random | None = None,
    ) -> None:
        """Wire the worker.

        Args:
            store: the outbox's store.
            topics: the live subscriptions (policies, endpoints, counters).
            client: the outbound HTTP client.
            concurrency: lanes' first attempts in flight, and as many more shared by proven
                lanes' further attempts (at most twice this many sockets); failing lanes'
                probes hold at most half of the first.
            endpoint_concurrency: attempts in flight per proven lane.
            log: the daemon's event log.
            rng: the source of retry jitter (tests pass a seeded one).
        """
        self.store = store
        self.topics = topics
        self.client = client
        self.endpoint_concurrency = endpoint_concurrency
        self.log = log
        self.fanout: Fanout | None = None  # set by the app: dead letters go through it
        self._leads = trio.CapacityLimiter(concurrency)
        self._shared = trio.CapacityLimiter(concurrency)
        self._probes = trio.CapacityLimiter(max(1, concurrency // 2))
        self._awaiting_shared: set[_Lane] = set()  # lanes that found no shared slot free
        self._proven: set[str] = set()  # subscription ids whose last attempt got a 2xx
        self._failing: set[str] = set()  # ... whose last attempt got no answer, 5xx or 429
        self._rng = rng or random.Random()
        self._lanes: dict[str, _Lane] = {}
        self._next_id = 1
        self._cached_bytes = 0
        self._unusable_policies_logged: set[str] = set()  # subscription ids
        self._exhaustion = Throttle()  # sns.out_of_resources: once a minute
        # Tries in a row that found no descriptor: each waits twice as long as the last, so a
        # backlog of thousands does not spin the loop while the shortage lasts.
        self._exhausted_tries = 0
        self._pending_by_topic: dict[int, int] = {}
        self._nursery: trio.Nursery | None = None

    # ------------------------------------------------------------------ the schedule

    def next_id(self) -> int:
        """A delivery id no live outbox row has (ids only grow while the broker runs)."""
        delivery_id = self._next_id
        self._next_id += 1
        return delivery_id

    def pending(self, topic_id: int) -> int:
        """Deliveries of a topic not finished yet (the pending-deliveries gauge)."""
        return self._pending_by_topic.get(topic_id, 0)

    def restore(self, rows: list[PendingHttpDelivery]) -> None:
        """Take the outbox rows found at start; their bodies stay in the store until needed."""
        for row in rows:
            self._add(_Item(row))
            self._next_id = max(self._next_id, row.delivery_id + 1)

    def track(self, delivery: HttpDelivery) -> None:
        """Take a durable outbox row (called from the commit's ``on_durable``)."""
        item = _Item(delivery)
        size = len(delivery.body)
        if self._cached_bytes + size <= PAYLOAD_CACHE_BYTES:
            item.payload = HttpPayload(
                headers=delivery.headers,
                body=delivery.body,
                dead_letter_attributes=delivery.dead_letter_attributes,
            )
            item.payload_cached = True
            self._cached_bytes += size
        self._add(item)

    def _add(self, item: _Item) -> None:
        lane = self._lanes.get(item.subscription_id)
        if lane is None:
            lane = self._lanes[item.subscription_id] = _Lane(item.subscription_id)
        lane.items[item.delivery_id] = item
        self._pending_by_topic[item.topic_id] = self._pending_by_topic.get(item.topic_id, 0) + 1
        lane.push(item)
        self._start(lane)

    def _remove(self, lane: _Lane, item: _Item) -> None:
        if lane.items.pop(item.delivery_id, None) is None:
            return
        if item.payload is not None and item.payload_cached:
            self._cached_bytes -= len(item.payload.body)
        item.payload = None
        item.payload_cached = False
        left = self._pending_by_topic.get(item.topic_id, 1) - 1
        if left > 0:
            self._pending_by_topic[item.topic_id] = left
        else:
            self._pending_by_topic.pop(item.topic_id, None)

    def forget_subscription(self, subscription_id: str) -> None:
        """Unsubscribe: its pending notifications and SubscriptionConfirmations are gone (the
        store's SubscriptionDeleted drops their rows too); its UnsubscribeConfirmations stay,
        owed to the endpoint whatever becomes of the subscription."""
        self._proven.discard(subscription_id)
        self._failing.discard(subscription_id)
        lane = self._lanes.get(subscription_id)
        if lane is not None:
            self._take(lane, lambda item: item.message_type != "UnsubscribeConfirmation")
            if not lane.items and not lane.running:
                del self._lanes[subscription_id]

    def drop_confirmations(self, subscription_id: str) -> list[HttpDeliveryFinished]:
        """The rows that end a subscription's pending SubscriptionConfirmations, once it is
        confirmed (or sent a new one whose token replaces theirs).

        Those not in flight leave the lane now (were the commit lost, the restarted broker
        would send them once more, which a confirmed endpoint ignores); one in flight ends
        with its attempt, whatever the answer.
        """
        lane = self._lanes.get(subscription_id)
        if lane is None:
            return []
        taken = self._take(lane, lambda item: item.message_type == "SubscriptionConfirmation")
        return [HttpDeliveryFinished(delivery_id=item.delivery_id) for item in taken]

    def _take(self, lane: _Lane, wanted: Callable[[_Item], bool]) -> list[_Item]:
        """Take a lane's ``wanted`` deliveries out of it; those in flight end with their
        attempt (marked forgotten), the others now: returned."""
        taken = []
        for item in list(lane.items.values()):
            if not wanted(item):
                continue
            if item.in_flight:
                item.forgotten = True
            else:
                self._remove(lane, item)
                taken.append(item)
        return taken

    def forget_topic(self, topic_id: int) -> None:
        """DeleteTopic: every pending delivery of the topic is gone (called after the delete)."""
        live = self.topics.subscription_by_id
        self._proven = {s for s in self._proven if live(s) is not None}
        self._failing = {s for s in self._failing if live(s) is not None}
        for lane in list(self._lanes.values()):
            self._take(lane, lambda item: item.topic_id == topic_id)

    # ------------------------------------------------------------------ tasks

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the lanes' tasks until cancelled (at shutdown); what is left resumes at start."""
        # Endpoint names are looked up apart from trio's default thread limiter (see
        # NameLookups); the broker looks up no other names once it serves.
        trio.socket.set_custom_hostname_resolver(self.client.name_lookups)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self.client.keep_closing_idle)
                for lane in list(self._lanes.values()):
                    self._start(lane)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            with trio.move_on_after(1, shield=True):
                await self.client.aclose()

    def _start(self, lane: _Lane) -> None:
        if lane.running or self._nursery is None:
            return
        lane.running = True
        self._nursery.start_soon(self._run_lane, lane)

    async def _run_lane(self, lane: _Lane) -> None:
        try:
            await self._schedule_lane(lane)
        except Exception as exc:  # a bug in one lane must not stop the others, nor the broker
            self.log.exception("sns.lane_bug", exc, subscription=lane.subscription_id)
            assert self._nursery is not None
            self._nursery.start_soon(self._restart_lane_later, lane)
        finally:
            lane.running = False
            # An idle lane goes, unless it still holds a throttle interval: the next delivery
            # must keep maxReceivesPerSecond even if it comes after the lane emptied.
            idle = not lane.items and lane.next_start <= trio.current_time()
            if idle and self._lanes.get(lane.subscription_id) is lane:
                del self._lanes[lane.subscription_id]

    async def _restart_lane_later(self, lane: _Lane) -> None:
        await trio.sleep(RETRY_AFTER_BUG_SECONDS)
        if self._lanes.get(lane.subscription_id) is lane:
            self._start(lane)

    async def _schedule_lane(self, lane: _Lane) -> None:
        """Start the lane's attempts as they fall due; return once it has nothing left."""
        while True:
            proven = lane.subscription_id in self._proven
            limit = self.endpoint_concurrency if proven else 1
            if not lane.heap or lane.in_flight >= limit:
                if not lane.heap and lane.in_flight == 0:
                    return
                await lane.wake.wait()
                continue
            due, delivery_id = lane.heap[0]
            item = lane.items.get(delivery_id)
            if item is None or item.in_flight or item.next_attempt_at != due:
                heapq.heappop(lane.heap)  # finished, forgotten or rescheduled meanwhile
                continue
            delay = max((due - now_ms()) / 1000, lane.next_start - trio.current_time())
            if delay > 0:
                with trio.move_on_after(delay):
                    await lane.wake.wait()
                continue
            if self._window_passed(item):
                heapq.heappop(lane.heap)
                item.in_flight = True
                lane.in_flight += 1
                assert self._nursery is not None
                self._nursery.start_soon(self._expire, lane, item)
                continue
            interval = self._policy(item).throttle.min_interval
            lead = not lane.leading
            if not lead:
                # A further attempt starts only on a shared slot free now: queued for one,
                # it would hold this lane back when its lead ends, behind slow endpoints.
                try:
                    self._shared.acquire_on_behalf_of_nowait(item)
                except trio.WouldBlock:
                    self._awaiting_shared.add(lane)
                    await lane.wake.wait()  # a shared slot freed, its lead's end, new work
                    continue
            heapq.heappop(lane.heap)
            item.in_flight = True
            lane.leading = True
            lane.in_flight += 1
            lane.next_start = max(lane.next_start, trio.current_time()) + interval
            assert self._nursery is not None
            probe = lane.subscription_id in self._failing
            self._nursery.start_soon(self._attempt, lane, item, probe, lead)

    def _subscription(self, item: _Item) -> Subscription | None:
        return self.topics.subscription_by_id(item.subscription_id)

    def _policy(self, item: _Item) -> EffectiveDeliveryPolicy:
        """The subscription's effective policy; an UnsubscribeConfirmation keeps the one its
        subscription had (the registry holds the unsubscribed record for its restore link)."""
        policy = self.topics.delivery_policy(item.subscription_id)
        if policy is None:  # nothing left of the subscription (topic deleted, link expired)
            return EffectiveDeliveryPolicy()
        if policy.problems and item.subscription_id not in self._unusable_policies_logged:
            self._unusable_policies_logged.add(item.subscription_id)
            self.log.warning(
                "sns.delivery_policy_unusable",
                subscription=item.subscription_id,
                problems="; ".join(policy.problems),
                using="defaults for those parts",
            )
        return policy

    async def _attempt(self, lane: _Lane, item: _Item, probe: bool, lead: bool) -> None:
        try:
            if probe:
                async with self._probes, self._leads:
                    outcome = await self._post(item)
            elif lead:
                async with self._leads:
                    outcome = await self._post(item)
            else:  # its shared slot was taken when it started
                try:
                    outcome = await self._post(item)
                finally:
                    self._shared.release_on_behalf_of(item)
                    waiting, self._awaiting_shared = self._awaiting_shared, set()
                    for other in waiting:
                        other.notify()
            if outcome is not None and outcome.error == "local":
                if not item.is_forgotten():
                    self._retry_after_exhaustion(lane, item, outcome)
                    return
            else:  # nothing reached the endpoint on a local error: its health is unknown
                if outcome is not None:
                    self._exhausted_tries = 0  # a socket was had: the shortage is over
                self._note_health(lane, outcome)
            await self._settle(lane, item, outcome)
        except Exception as exc:  # a bug here must not stop the other deliveries
            self._retry_after_bug(lane, item, exc)
        finally:
            lane.in_flight -= 1
            if lead:
                lane.leading = False
            lane.notify()

    def _window_passed(self, item: _Item) -> bool:
        """Whether the policy's retry window, counted from the first attempt, has ended.

        Retries are scheduled inside the window, but a failing endpoint's lane makes one
        attempt at a time, so a retry can fall due while others hold the lane, or the broker
        can be down past it; AWS calls the 3,600 s a hard limit, so such a message goes to
        the dead-letter queue without the late attempt.
        """
        first = item.first_attempt_at
        if first is None:
            return False
        window = self._policy(item).max_retry_seconds
        return window is not None and now_ms() - first > (window + WINDOW_GRACE_SECONDS) * 1000

    async def _expire(self, lane: _Lane, item: _Item) -> None:
        try:
            await self._load_payload(item)  # the dead letter needs the body
            window = self._policy(item).max_retry_seconds or 0
            outcome = Outcome(None, "expired", f"retry window of {window:g} s ended")
            await self._give_up(lane, item, outcome, self._subscription(item), now_ms())
        except Exception as exc:  # as in _attempt: a bug here must not stop the others
            self._retry_after_bug(lane, item, exc)
        finally:
            lane.in_flight -= 1
            lane.notify()

    def _retry_after_bug(self, lane: _Lane, item: _Item, exc: Exception) -> None:
        """An attempt failed inside Wharf: log it, and try again ``RETRY_AFTER_BUG_SECONDS``
        later."""
        self.log.exception("sns.delivery_bug", exc, delivery=item.delivery_id)
        self._release_payload(item)
        item.in_flight = False
        item.next_attempt_at = now_ms() + int(RETRY_AFTER_BUG_SECONDS * 1000)
        lane.push(item)

    def _retry_after_exhaustion(self, lane: _Lane, item: _Item, outcome: Outcome) -> None:
        """The broker could not open a socket to the endpoint (out of descriptors or memory):
        nothing reached it, so this was no attempt. Its retries are left whole and the
        endpoint's health as it was; the delivery is tried again, for as long as the shortage
        lasts (its retry window, once it has had an attempt, still ends it), after a wait that
        doubles with each such try in a row (1 s to 60 s), whichever delivery makes it. Logged
        at most once a minute."""
        held_back = self._exhaustion.admit()
        if held_back is not None:
            self.log.error(
                "sns.out_of_resources",
                detail=outcome.detail,
                held_back=held_back,
                hint="raise the descriptor limit (LimitNOFILE= in the unit) or lower "
                "sns.delivery_concurrency",
            )
        self._release_payload(item)
        item.in_flight = False
        wait = min(
            RETRY_AFTER_EXHAUSTION_SECONDS * 2**self._exhausted_tries,
            MAX_RETRY_AFTER_EXHAUSTION_SECONDS,
        )
        self._exhausted_tries = min(self._exhausted_tries + 1, 32)
        item.next_attempt_at = now_ms() + int(wait * 1000)
        lane.push(item)

    def _note_health(self, lane: _Lane, outcome: Outcome | None) -> None:
        """Open the lane up after a 2xx; hold it to probes after the endpoint failed."""
        if outcome is None:
            return
        subscription_id = lane.subscription_id
        if outcome.delivered:
            self._failing.discard(subscription_id)
            if self.topics.subscription_by_id(subscription_id) is not None:
                self._proven.add(subscription_id)
        elif outcome.status is None or outcome.retryable:
            self._proven.discard(subscription_id)
            if self.topics.subscription_by_id(subscription_id) is not None:
                self._failing.add(subscription_id)

    def retry_time(
        self, policy: EffectiveDeliveryPolicy, retries_done: int, first: int, now: int
    ) -> int | None:
        """When to retry (ms): the policy's time plus jitter, within its window; None: give up."""
        at = policy.next_attempt_at(retries_done, first / 1000, now / 1000)
        if at is None:
            return None
        delay = max(0.0, at - now / 1000)
        at += delay * RETRY_JITTER * self._rng.random()
        window = policy.max_retry_seconds
        if window is not None:
            at = min(at, first / 1000 + window)
        return int(at * 1000)

    async def _load_payload(self, item: _Item) -> bool:
        """Read the body back if only the row's schedule is in memory; False: the row is gone.

        A body read back joins the cache while it fits; the others are held for this attempt
        only (:meth:`_release_payload`), so a failing backlog is not kept in memory for its
        retries."""
        if item.payload is None:
            payload = await self.store.read_http_payload(item.delivery_id)
            if payload is None:
                return False
            item.payload = payload
            size = len(payload.body)
            if self._cached_bytes + size <= PAYLOAD_CACHE_BYTES:
                item.payload_cached = True
                self._cached_bytes += size
        return True

    def _release_payload(self, item: _Item) -> None:
        """Drop a body held beyond the cache once its attempt is over (read back next time)."""
        if not item.payload_cached:
            item.payload = None

    async def _post(self, item: _Item) -> Outcome | None:
        """One attempt; None when there is nothing (left) to deliver."""
        item.counted_under = None
        subscription = self._subscription(item)
        if subscription is None and item.message_type != "UnsubscribeConfirmation":
            # Unsubscribed or deleted while it waited (a pending one expired too): nothing but
            # an UnsubscribeConfirmation is owed to it, and a SubscriptionConfirmation's token
            # is dead. (The store's delete dropped the row already.)
            return None
        if not await self._load_payload(item):
            return None  # the row is gone (the topic was deleted)
        started = now_ms()
        payload = item.payload
        assert payload is not None  # loaded above
        outcome = await self.client.post(item.endpoint, payload.headers, payload.body.encode())
        if outcome.error == "local":
            return outcome  # no socket to send it on: nothing reached the endpoint
        if item.first_attempt_at is None:
            item.first_attempt_at = started
        item.attempts += 1
        self._count_attempt(item, subscription)
        if self._counts(item):
            item.counted_under = subscription
        return outcome

    def _count_attempt(self, item: _Item, subscription: Subscription | None) -> None:
        if item.message_type == "Notification":
            if subscription is not None:
                subscription.topic.stats.attempts[subscription.protocol] += 1
            return
        # Confirmations count apart; an UnsubscribeConfirmation outlives its subscription.
        topic = self.topics.topic_by_id(item.topic_id)
        if topic is not None:
            protocol = "https" if item.endpoint.startswith("https:") else "http"
            topic.stats.confirmations[protocol] += 1

    async def _settle(self, lane: _Lane, item: _Item, outcome: Outcome | None) -> None:
        now = now_ms()
        finished = HttpDeliveryFinished(delivery_id=item.delivery_id)
        subscription = self._subscription(item)
        # Every attempt counted ends delivered or failed, under the topic that counted it,
        # also one whose subscription went while it was in flight (a 2xx then delivered it).
        counted, item.counted_under = item.counted_under, None
        if outcome is not None and counted is not None:
            stats = counted.topic.stats
            if outcome.delivered:
                seconds = max(0.0, (now - item.published_at) / 1000)
                stats.deliveries(counted.protocol, ok=True, seconds=seconds)
            else:
                # As AWS's NumberOfNotificationsFailed for HTTP/S: every failed attempt
                # counts, the retries included (SQS copies fail once, for good).
                stats.deliveries(counted.protocol, ok=False)
        if outcome is None or outcome.delivered or item.forgotten:
            await self.store.commit([finished], lambda: self._remove(lane, item))
            return
        if outcome.retryable:
            first = item.first_attempt_at or now
            retry_at = self.retry_time(self._policy(item), item.attempts - 1, first, now)
            if retry_at is not None:
                item.next_attempt_at = retry_at
                rescheduled = HttpDeliveryRescheduled(
                    delivery_id=item.delivery_id,
                    attempts=item.attempts,
                    first_attempt_at=first,
                    next_attempt_at=item.next_attempt_at,
                )
                await self.store.commit([rescheduled])
                if item.is_forgotten():  # unsubscribed, or confirmed, while that committed
                    await self.store.commit([finished], lambda: self._remove(lane, item))
                    return
                self._release_payload(item)
                item.in_flight = False
                lane.push(item)
                return
        await self._give_up(lane, item, outcome, subscription, now)

    def _counts(self, item: _Item) -> bool:
        return item.message_type == "Notification"

    async def _give_up(
        self,
        lane: _Lane,
        item: _Item,
        outcome: Outcome,
        subscription: Subscription | None,
        now: int,
    ) -> None:
        batch = Batch()
        moved = False
        payload = item.payload
        if self._counts(item) and subscription is not None and payload is not None:
            assert self.fanout is not None
            moved = self.fanout.dead_letter(
                batch, subscription, payload.body, payload.dead_letter_attributes, None, None, now
            )
        batch.mutations.append(HttpDeliveryFinished(delivery_id=item.delivery_id))
        batch.after.append(lambda: self._remove(lane, item))
        reason = outcome.detail or f"HTTP {outcome.status}"
        self.log.warning(
            "sns.http_delivery_failed",
            endpoint=masked_endpoint(item.endpoint),
            subscription=item.subscription_id,
            message_type=item.message_type,
            attempts=item.attempts,
            reason=reason,
            dead_letter="moved" if moved else "none",
        )
        await self.store.commit(batch.mutations, batch.on_durable)
