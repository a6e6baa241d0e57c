"""The HTTP/S delivery worker: lanes, bounded concurrency, retries in the store, restore."""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import random
import resource
import socket
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import msgspec
import pytest
import trio

from broker import http_client, http_delivery
from broker.fanout import Batch
from broker.http_client import HttpClient, Outcome
from broker.http_delivery import HttpDeliveries
from broker.model.delivery_policy import (
    EffectiveDeliveryPolicy,
    SubscriptionDeliveryPolicy,
    ThrottlePolicy,
)
from broker.model.sns_mutations import HttpDeliveryRescheduled, SubscriptionSaved
from broker.registry import now_ms
from tests.support.sns import Endpoint
from tests.support.sns_harness import FAST, Harness, build

SLOW = json.dumps(
    {"healthyRetryPolicy": {"numRetries": 3, "minDelayTarget": 30, "maxDelayTarget": 30}}
)


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with trio.open_nursery() as nursery:
        built = await build(tmp_path, nursery)
        yield built
        nursery.cancel_scope.cancel()
    await built.store.aclose()


async def wait_for(endpoint: Endpoint, count: int, seconds: float = 10) -> None:
    await trio.to_thread.run_sync(lambda: endpoint.wait_for(count, timeout=seconds))


async def test_a_hung_endpoint_holds_only_its_own_lane(harness: Harness) -> None:
    with Endpoint(behaviour="hang") as hung, Endpoint() as fine:
        await harness.subscribe(hung.url)
        await harness.subscribe(fine.url)
        for index in range(6):
            await harness.publish(f"m{index}")
        await wait_for(fine, 6, seconds=3)
        await trio.sleep(0.2)
        # Never answered, never proven: one attempt in flight (a probe), not its lane's two.
        assert len(hung.requests) == 1
        assert harness.deliveries.pending(harness.topic.record.topic_id) == 6


async def test_slow_endpoints_that_succeed_fill_only_the_shared_slots(tmp_path: Path) -> None:
    # Two proven endpoints answer 200, but only once the test opens their gate: their backlog
    # holds a lead slot each and all 4 shared slots. The fast subscription still has a lead
    # slot, so a message published then reaches it at once.
    with Endpoint() as slow1, Endpoint() as slow2, Endpoint() as fast:
        for slow in (slow1, slow2):
            slow.behaviour_of = lambda request, slow=slow: (
                "ok" if len(slow.requests) == 0 else "gated"
            )
        harness: Harness | None = None
        try:
            async with trio.open_nursery() as nursery:
                harness = await build(
                    tmp_path,
                    nursery,
                    concurrency=4,
                    endpoint_concurrency=4,
                    response_timeout_ms=20_000,
                )
                try:
                    await _fill_the_shared_slots_then_publish(harness, slow1, slow2, fast)
                finally:
                    nursery.cancel_scope.cancel()  # no checkpoint after it: a failure stays
        finally:
            slow1.gate.set()
            slow2.gate.set()
            if harness is not None:
                await harness.store.aclose()


async def _fill_the_shared_slots_then_publish(
    harness: Harness, slow1: Endpoint, slow2: Endpoint, fast: Endpoint
) -> None:
    for endpoint in (slow1, slow2, fast):
        await harness.subscribe(endpoint.url)
    await harness.publish("proves them")
    for endpoint in (slow1, slow2, fast):
        await wait_for(endpoint, 1)
    await trio.sleep(0.1)  # the 2xx are settled: the lanes are proven
    for index in range(4):
        await harness.publish(f"m{index}")
    with trio.fail_after(5):  # a lead each and the 4 shared slots, all held
        # The counts grow in the endpoints' own threads: nothing here to wait on.
        while len(slow1.requests) + len(slow2.requests) < 2 + 2 + 4:  # noqa: ASYNC110
            await trio.sleep(0.01)
    await harness.publish("while both gates are shut")
    await wait_for(fast, 6, seconds=5)


async def test_a_proven_endpoint_that_fails_falls_back_to_one_probe(harness: Harness) -> None:
    with Endpoint() as endpoint:
        endpoint.behaviour_of = lambda request: "ok" if len(endpoint.requests) == 0 else "hang"
        await harness.subscribe(endpoint.url, DeliveryPolicy=FAST)
        await harness.publish("proves it")
        await wait_for(endpoint, 1)
        await trio.sleep(0.1)  # the 2xx is settled: the lane is proven
        for index in range(4):
            await harness.publish(f"m{index}")
        hung = await trio.to_thread.run_sync(
            lambda: endpoint.wait_for(6, timeout=10, match=lambda r: r.answered == "hang")
        )
        # Proven: endpoint_concurrency (2) attempts at once; once they timed out (0.5 s),
        # one probe at a time, each holding the lane for its whole response timeout.
        assert hung[1].at - hung[0].at < 0.3
        gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(hung[1:])]
        assert all(gap >= 0.4 for gap in gaps), gaps


async def test_retries_are_jittered_within_the_policy_window(harness: Harness) -> None:
    policy = EffectiveDeliveryPolicy()  # 20 s between retries, 3,600 s window
    times = set()
    for seed in range(20):
        deliveries = HttpDeliveries(
            harness.store,
            harness.topics,
            harness.deliveries.client,
            concurrency=4,
            endpoint_concurrency=2,
            log=harness.deliveries.log,
            rng=random.Random(seed),
        )
        at = deliveries.retry_time(policy, 0, 1_000_000, 1_000_000)
        assert at is not None
        assert 1_000_000 + 20_000 <= at <= 1_000_000 + 20_000 + 2_000  # up to 10 % later
        times.add(at)
        late = deliveries.retry_time(policy, 0, 1_000_000, 1_000_000 + 3_580_000)
        assert late == 1_000_000 + 3_600_000  # never past the window the policy allows
    assert len(times) > 10  # seeds give different delays: no lockstep


async def test_retries_are_persisted_and_the_row_goes_when_delivered(harness: Harness) -> None:
    answers = iter(["500", "500", "ok"])
    with Endpoint() as endpoint:
        endpoint.behaviour_of = lambda request: next(answers)
        await harness.subscribe(endpoint.url, DeliveryPolicy=FAST)
        await harness.publish("m")
        await wait_for(endpoint, 2)
        await trio.sleep(0.1)
        (row,) = (await harness.store.load_sns()).deliveries
        assert (row.attempts, row.first_attempt_at is not None) == (2, True)
        await wait_for(endpoint, 3, seconds=5)
        await trio.sleep(0.1)
        assert (await harness.store.load_sns()).deliveries == []
        assert harness.topic.stats.attempts["http"] == 3
        assert harness.topic.stats.delivered["http"] == 1


async def test_unsubscribing_forgets_pending_notifications(harness: Harness) -> None:
    with Endpoint(behaviour="500") as endpoint:
        subscription = await harness.subscribe(endpoint.url, DeliveryPolicy=FAST)
        await harness.publish("m")
        await wait_for(endpoint, 1)
        batch = Batch()
        batch.mutations.extend(harness.topics.unsubscribe(subscription, 5))
        harness.deliveries.forget_subscription(subscription.subscription_id)
        await harness.store.commit(batch.mutations)
        with trio.fail_after(5):  # the attempt in flight settles without a retry
            while harness.deliveries.pending(harness.topic.record.topic_id):  # noqa: ASYNC110 - bounded poll of an internal count
                await trio.sleep(0.01)
        await trio.sleep(1.5)
        assert len(endpoint.requests) == 1


async def test_an_attempt_in_flight_at_unsubscribe_counts_its_outcome(harness: Harness) -> None:
    """Every attempt counted in delivery_attempts ends in delivered or failed. An attempt in
    flight when its subscription went was counted as an attempt, then its answer (a 2xx
    here: the endpoint took the notification) was dropped from both."""
    with Endpoint(behaviour="gated") as endpoint:
        subscription = await harness.subscribe(endpoint.url, DeliveryPolicy=FAST)
        await harness.publish("m")
        await wait_for(endpoint, 1)
        batch = Batch()
        batch.mutations.extend(harness.topics.unsubscribe(subscription, 5))
        harness.deliveries.forget_subscription(subscription.subscription_id)
        await harness.store.commit(batch.mutations)
        endpoint.gate.set()
        with trio.fail_after(5):
            while harness.deliveries.pending(harness.topic.record.topic_id):  # noqa: ASYNC110 - bounded poll of an internal count
                await trio.sleep(0.01)
        stats = harness.topic.stats
        assert (stats.attempts["http"], stats.delivered["http"], stats.failed["http"]) == (1, 1, 0)


async def test_pending_rows_resume_from_the_store(tmp_path: Path) -> None:
    with Endpoint(behaviour="500") as endpoint:
        async with trio.open_nursery() as nursery:
            first = await build(tmp_path, nursery)
            await first.subscribe(endpoint.url, DeliveryPolicy=FAST)
            await first.publish("survives")
            await wait_for(endpoint, 1)
            nursery.cancel_scope.cancel()
        await first.store.aclose()
        endpoint.behaviour = "ok"
        async with trio.open_nursery() as nursery:
            second = await build(tmp_path, nursery)
            await wait_for(endpoint, 2, seconds=5)  # the body came back from the store
            assert json.loads(endpoint.requests[-1].body)["Message"] == "survives"
            await trio.sleep(0.1)
            assert (await second.store.load_sns()).deliveries == []
            nursery.cancel_scope.cancel()
        await second.store.aclose()


async def test_a_retry_due_after_its_window_goes_to_the_dead_letter_queue(tmp_path: Path) -> None:
    # AWS's 3,600 s retry window is a hard limit. Here the broker was down past it (a failing
    # lane's backlog does the same): the retry is not made, the message is dead-lettered with
    # its body, which after a restart only the store still holds.
    with Endpoint(behaviour="500") as endpoint:
        async with trio.open_nursery() as nursery:
            first = await build(tmp_path, nursery)
            dlq = await first.queues.create("dlq", {}, {})
            redrive = json.dumps({"deadLetterTargetArn": dlq.arn})
            await first.subscribe(endpoint.url, DeliveryPolicy=FAST, RedrivePolicy=redrive)
            await first.publish("too late")
            await wait_for(endpoint, 1)
            nursery.cancel_scope.cancel()
        (row,) = (await first.store.load_sns()).deliveries
        now = now_ms()
        aged = HttpDeliveryRescheduled(
            delivery_id=row.delivery_id,
            attempts=1,
            first_attempt_at=now - 3_602_000,
            next_attempt_at=now,
        )
        await first.store.commit([aged])
        await first.store.aclose()
        async with trio.open_nursery() as nursery:
            second = await build(tmp_path, nursery)
            with trio.fail_after(5):
                while second.deliveries.pending(second.topic.record.topic_id):  # noqa: ASYNC110 - bounded poll of an internal count
                    await trio.sleep(0.01)
            assert len(endpoint.requests) == 1  # no attempt after the window
            assert (await second.store.load_sns()).deliveries == []
            queue = second.queues.get("dlq")
            assert queue is not None
            outcome = queue.index.receive(now_ms(), max_messages=10)
            (dead,) = await second.store.read_messages(
                queue.record.queue_id, [d.seq for d in outcome.deliveries]
            )
            assert json.loads(dead.body)["Message"] == "too late"
            assert dead.sender_id == "000000000000"  # the subscriber's account, as SNS's copies
            nursery.cancel_scope.cancel()
        await second.store.aclose()


async def test_the_window_ends_a_grace_second_after_its_last_scheduled_retry(
    harness: Harness,
) -> None:
    with Endpoint(behaviour="500") as endpoint:
        await harness.subscribe(endpoint.url, DeliveryPolicy=FAST)
        await harness.publish("m")
        await wait_for(endpoint, 2)  # the first retry: one second later, well inside
        (item,) = harness.deliveries._lanes[next(iter(harness.deliveries._lanes))].items.values()
        # The policy's window ends now; the capped retry is made, not expired.
        item.first_attempt_at = now_ms() - 3_600_000
        assert not harness.deliveries._window_passed(item)
        item.first_attempt_at = now_ms() - 3_602_000
        assert harness.deliveries._window_passed(item)


async def test_a_stored_policy_this_broker_refuses_is_delivered_with_the_defaults(
    tmp_path: Path,
) -> None:
    # An older broker accepted any maxReceivesPerSecond and stored it; 10**400 has no float
    # interval, and the lane that met it stopped the whole broker, again at every start.
    with Endpoint() as endpoint:
        async with trio.open_nursery() as nursery:
            first = await build(tmp_path, nursery)
            subscription = await first.subscribe(endpoint.url)
            nursery.cancel_scope.cancel()
        huge = SubscriptionDeliveryPolicy(
            throttle_policy=ThrottlePolicy(max_receives_per_second=10**400)
        )
        settings = msgspec.structs.replace(
            subscription.settings,
            delivery_policy=json.dumps({"throttlePolicy": {"maxReceivesPerSecond": 10**400}}),
            delivery_policy_parsed=huge,
        )
        record = msgspec.structs.replace(subscription.record, settings=settings)
        await first.store.commit([SubscriptionSaved(subscription=record)])
        await first.store.aclose()
        async with trio.open_nursery() as nursery:
            second = await build(tmp_path, nursery)
            for index in range(3):
                await second.publish(f"m{index}")
            notifications = await trio.to_thread.run_sync(
                lambda: endpoint.wait_for(
                    3, timeout=5, match=lambda r: r.envelope()["Type"] == "Notification"
                )
            )
            assert sorted(r.envelope()["Message"] for r in notifications) == ["m0", "m1", "m2"]
            logged = second.deliveries.log._settings.stream
            assert logged is not None
            lines = [
                line
                for line in logged.getvalue().splitlines()
                if "delivery_policy_unusable" in line
            ]
            assert len(lines) == 1, lines  # once per subscription, not per delivery
            assert "maxReceivesPerSecond must be less than or equal to 1000000" in lines[0]
            nursery.cancel_scope.cancel()
        await second.store.aclose()


async def test_bodies_read_back_for_retries_stay_within_the_cache(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Bodies beyond the cache are read back from the store for each attempt. Kept after it,
    # a dead endpoint's whole backlog ended up in memory while it waited for its retries.
    body = "x" * 10_000
    monkeypatch.setattr(http_delivery, "PAYLOAD_CACHE_BYTES", 25_000)  # two envelopes
    with Endpoint(behaviour="500") as endpoint:
        await harness.subscribe(endpoint.url, DeliveryPolicy=SLOW)
        for _ in range(6):
            await harness.publish(body)
        await wait_for(endpoint, 6)  # every first attempt made; the retries wait 30 s
        await trio.sleep(0.1)  # the last one is settled
        (lane,) = harness.deliveries._lanes.values()
        held = [len(item.payload.body) for item in lane.items.values() if item.payload]
        assert len(lane.items) == 6
        assert sum(held) <= 25_000, held
        assert harness.deliveries._cached_bytes == sum(held)


async def test_unresolvable_endpoint_names_leave_the_default_thread_limiter_alone(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Looking these names up blocks, as against a DNS server that does not answer. Trio's own
    # resolver held a default-limiter token per abandoned lookup until it ended: 45 such
    # names took all 40, and the store's reads (bodies read back, ReceiveMessage) and
    # /metrics, which share that limiter, waited with them.
    real_lookup = socket.getaddrinfo
    answer = threading.Event()

    def lookup(host: bytes | str | None, port: object, family: int = 0, *args: int) -> list[object]:
        name = host.decode() if isinstance(host, bytes) else host or ""
        numeric_only = bool(args[-1:] and args[-1] & socket.AI_NUMERICHOST)
        if name.endswith(".unresolvable.test") and not numeric_only:
            answer.wait(30)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real_lookup(host, port, family, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    monkeypatch.setattr(http_delivery, "PAYLOAD_CACHE_BYTES", 0)  # every body is read back
    try:
        with Endpoint() as fine:
            for index in range(45):
                await harness.subscribe(f"http://n{index}.unresolvable.test:9/")
            await harness.subscribe(fine.url)
            await harness.publish("first")
            with trio.fail_after(15):  # every lane's first attempt is made (0.5 s each)
                while harness.topic.stats.attempts["http"] < 46:  # noqa: ASYNC110 - bounded poll of an internal count
                    await trio.sleep(0.05)
            await harness.publish("second")
            with trio.fail_after(5):
                await harness.store.load_sns()  # a store read, on the default limiter
            await wait_for(fine, 2, seconds=5)  # its bodies were read back from the store
            # The failed lanes' next attempts read their bodies back meanwhile (a moment
            # each); a hung lookup would hold its token until the 30 s answer.
            default_limiter = trio.to_thread.current_default_thread_limiter()
            with trio.fail_after(5):
                while default_limiter.borrowed_tokens > 1:  # noqa: ASYNC110 - bounded poll
                    await trio.sleep(0.01)
            lookups = harness.deliveries.client.name_lookups.limiter
            assert lookups.borrowed_tokens == lookups.total_tokens  # the hung lookups' slots
    finally:
        answer.set()


@contextlib.contextmanager
def descriptors_exhausted() -> Iterator[None]:
    """While this holds, this process can open no descriptor: every socket() fails with
    EMFILE, as in a broker whose open-files limit its connections have reached."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(map(int, os.listdir("/proc/self/fd"))), hard))
    fillers: list[int] = []
    try:
        while True:
            try:
                fillers.append(os.open(os.devnull, os.O_RDONLY))
            except OSError as exc:
                if exc.errno != errno.EMFILE:
                    raise
                break
        yield
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_the_brokers_own_descriptor_shortage_spends_no_retries(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Out of descriptors, the broker could not open a socket to the endpoint, and counted
    # each failure as the endpoint's: a shortage that outlasted the retry policy (FAST: 5
    # retries a second apart) lost the notification, logged as the endpoint's failure.
    monkeypatch.setattr(http_delivery, "RETRY_AFTER_EXHAUSTION_SECONDS", 0.05, raising=False)
    client = harness.deliveries.client
    outcomes: list[Outcome] = []
    real_post = client.post

    async def post(url: str, headers: Sequence[tuple[str, str]], body: bytes) -> Outcome:
        outcome = await real_post(url, headers, body)
        outcomes.append(outcome)
        return outcome

    monkeypatch.setattr(client, "post", post)
    with Endpoint() as endpoint:
        await harness.subscribe(endpoint.url, DeliveryPolicy=FAST)
        with descriptors_exhausted():
            await harness.publish("kept through the shortage")
            with trio.fail_after(15):  # as many failed tries as the policy has attempts
                while len(outcomes) < 6:  # noqa: ASYNC110 - bounded poll of the tries made
                    await trio.sleep(0.01)
            await trio.sleep(0.1)  # the last one is settled
        assert all(outcome.status is None for outcome in outcomes[:6])
        await wait_for(endpoint, 1)
        assert endpoint.requests[0].envelope()["Message"] == "kept through the shortage"
        await trio.sleep(0.1)  # the 2xx is settled
        assert harness.topic.stats.attempts["http"] == 1  # only the one that reached it
        assert harness.topic.stats.delivered["http"] == 1


async def test_a_long_descriptor_shortage_backs_off_instead_of_spinning(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each delivery that found no descriptor was tried again a second later, however many
    # waited: 1,000 pending deliveries made 1,000 tries a second (41% of a core) for as long
    # as the shortage lasted. The wait now doubles with each such try in a row.
    monkeypatch.setattr(http_delivery, "RETRY_AFTER_EXHAUSTION_SECONDS", 0.05, raising=False)
    monkeypatch.setattr(http_delivery, "MAX_RETRY_AFTER_EXHAUSTION_SECONDS", 1.0, raising=False)
    client = harness.deliveries.client
    tries = 0
    real_post = client.post

    async def post(url: str, headers: Sequence[tuple[str, str]], body: bytes) -> Outcome:
        nonlocal tries
        tries += 1
        return await real_post(url, headers, body)

    monkeypatch.setattr(client, "post", post)
    with Endpoint() as endpoint:
        await harness.subscribe(endpoint.url, DeliveryPolicy=FAST)
        with descriptors_exhausted():
            for index in range(40):
                await harness.publish(f"pending {index}")
            await trio.sleep(2)  # 40 retries every 0.05 s would be 1,600 tries
        assert 40 <= tries < 400  # each waits up to 1 s here: about 2 tries each
        await wait_for(endpoint, 40)  # the backlog is delivered once it is over


async def test_idle_connections_to_an_endpoint_that_gets_nothing_more_are_closed(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The delivery worker closes idle keep-alive connections itself: an endpoint that gets
    # nothing more (its subscription gone) no longer holds a descriptor in the broker until
    # the broker stops.
    monkeypatch.setattr(http_client, "IDLE_SECONDS", 0.05)
    closed: list[int] = []
    close_idle = HttpClient.close_idle

    async def counting(self: HttpClient) -> int:
        closed.append(await close_idle(self))
        return closed[-1]

    monkeypatch.setattr(HttpClient, "close_idle", counting)
    with Endpoint() as endpoint:
        await harness.subscribe(endpoint.url)
        await harness.publish("m")
        await wait_for(endpoint, 1)
        with trio.fail_after(10):
            while not sum(closed) or harness.deliveries.client._idle:  # noqa: ASYNC110 - bounded poll of an internal count
                await trio.sleep(0.01)
        assert sum(closed) == endpoint.connections
