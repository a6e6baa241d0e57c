"""The SQS actions without HTTP: SqsApi over a real registry and store, in the test's loop.

The wire-level behaviour of every action is covered with boto3 in tests/compat/; here are the
envelope rules (queue URLs, pagination, batch ids) and what only shows from inside: a
cancelled long poll leaks nothing, a long poll is woken by the send and not by a timer.
"""

from __future__ import annotations

import hashlib
import io
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

import broker.registry
from broker.auth import Caller
from broker.clock import Clock
from broker.model.errors import SqsError
from broker.model.signing import Signer
from broker.registry import QueueRegistry, now_ms
from broker.sqs import RequestContext, SqsApi, _batch_entries, _paginate, _wanted
from broker.store.sqlite import SqliteStore
from monitoring.logging import EventLog
from proto.aws.errors import AwsError
from tests.support.writer_gate import WriterGate

ACCOUNT = "000000000000"
BASE = "http://broker.test:9324"
CALLER = Caller(
    principal_arn=f"arn:aws:iam::{ACCOUNT}:root",
    account=ACCOUNT,
    sender_id=ACCOUNT,
    service="sqs",
    anonymous=True,
)


def context(action: str) -> RequestContext:
    return RequestContext(base_url=BASE, caller=CALLER, action=action)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[SqsApi]:
    store = SqliteStore(tmp_path)
    await store.open()
    try:
        registry = QueueRegistry(
            store,
            Signer(b"sqs api test key, 32 bytes long."),
            region="us-east-1",
            account_id=ACCOUNT,
            log=EventLog("broker", level="debug", stream=io.StringIO()),
        )
        yield SqsApi(registry, account_id=ACCOUNT)
    finally:
        await store.aclose()


async def call(api: SqsApi, action: str, **params: Any) -> Any:
    return await api.handle(action, params, context(action))


async def make_queue(api: SqsApi, name: str, **attributes: str) -> str:
    result = await call(api, "CreateQueue", QueueName=name, Attributes=attributes)
    url: str = result["QueueUrl"]
    return url


# ---------------------------------------------------------------------- envelopes


async def test_queue_urls_are_built_from_the_request_and_parsed_loosely(api: SqsApi):
    url = await make_queue(api, "orders")
    assert url == f"{BASE}/{ACCOUNT}/orders"
    for alias in (
        url,
        f"https://elsewhere:1/{ACCOUNT}/orders",
        f"http://localhost/{ACCOUNT}/orders",
    ):
        await call(api, "SendMessage", QueueUrl=alias, MessageBody="x")
    with pytest.raises(AwsError) as excinfo:
        await call(api, "SendMessage", QueueUrl=f"{BASE}/999999999999/orders", MessageBody="x")
    assert excinfo.value.code == "AWS.SimpleQueueService.NonExistentQueue"
    with pytest.raises(AwsError) as excinfo:
        await call(api, "SendMessage", QueueUrl="orders", MessageBody="x")
    assert excinfo.value.code == "InvalidAddress"


async def test_an_unknown_action_is_an_sqs_error(api: SqsApi):
    assert not api.supports("Teleport")
    with pytest.raises(AwsError) as excinfo:
        await call(api, "Teleport")
    assert excinfo.value.code == "AWS.SimpleQueueService.UnsupportedOperation"


async def test_list_queues_tokens_survive_deletions(api: SqsApi):
    for name in ("a", "b", "c", "d"):
        await make_queue(api, name)
    first = await call(api, "ListQueues", MaxResults=2)
    assert [u.rsplit("/", 1)[1] for u in first["QueueUrls"]] == ["a", "b"]
    await call(api, "DeleteQueue", QueueUrl=f"{BASE}/{ACCOUNT}/b")
    second = await call(api, "ListQueues", MaxResults=2, NextToken=first["NextToken"])
    assert [u.rsplit("/", 1)[1] for u in second["QueueUrls"]] == ["c", "d"]
    assert "NextToken" not in second
    with pytest.raises(AwsError) as excinfo:
        await call(api, "ListQueues", NextToken="%%% not a token")
    assert excinfo.value.code == "InvalidParameterValue"


@given(
    names=st.lists(st.text("abcxyz-_", min_size=1, max_size=5), unique=True, max_size=30),
    page_size=st.integers(1, 7),
)
def test_pages_cover_every_name_once_in_order(names, page_size):
    names = sorted(names)
    seen: list[str] = []
    token = None
    for _ in range(len(names) + 2):
        page, token = _paginate(names, page_size, token)
        assert len(page) <= page_size
        seen.extend(page)
        if token is None:
            break
    assert seen == names


def test_batch_entry_rules():
    assert _batch_entries({"Entries": [{"Id": "a-1_B"}]}) == [{"Id": "a-1_B"}]
    for entries, code in (
        ([], "AWS.SimpleQueueService.EmptyBatchRequest"),
        (
            [{"Id": str(i)} for i in range(11)],
            "AWS.SimpleQueueService.TooManyEntriesInBatchRequest",
        ),
        ([{"Id": "x"}, {"Id": "x"}], "AWS.SimpleQueueService.BatchEntryIdsNotDistinct"),
        ([{"Id": "a.b"}], "AWS.SimpleQueueService.InvalidBatchEntryId"),
        ([{}], "AWS.SimpleQueueService.InvalidBatchEntryId"),
    ):
        with pytest.raises(AwsError) as excinfo:
            _batch_entries({"Entries": entries})
        assert excinfo.value.code == code


@pytest.mark.parametrize(
    ("name", "patterns", "wanted"),
    [
        ("a", ["All"], True),
        ("a", [".*"], True),
        ("a", ["*"], True),
        ("a.b", ["a.*"], True),
        ("ab", ["a.*"], False),
        ("a", ["a.*"], False),
        ("a", ["a"], True),
        ("A", ["a"], False),
        ("a", [], False),
    ],
)
def test_message_attribute_name_filters(name, patterns, wanted):
    assert _wanted(name, patterns) is wanted


# ---------------------------------------------------------------------- long polls


async def test_a_long_poll_returns_when_the_message_is_sent(api: SqsApi):
    url = await make_queue(api, "polled")
    results: list[Any] = []
    started = trio.current_time()

    async def poll() -> None:
        results.append(await call(api, "ReceiveMessage", QueueUrl=url, WaitTimeSeconds=20))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(poll)
        await trio.sleep(0.1)
        assert results == []
        await call(api, "SendMessage", QueueUrl=url, MessageBody="now")
    ((message,),) = [r["Messages"] for r in results]
    assert message["Body"] == "now"
    assert trio.current_time() - started < 10


async def test_a_cancelled_long_poll_takes_no_message(api: SqsApi):
    url = await make_queue(api, "cancelled")
    with trio.move_on_after(0.2):
        await call(api, "ReceiveMessage", QueueUrl=url, WaitTimeSeconds=20)
    await call(api, "SendMessage", QueueUrl=url, MessageBody="for the next receiver")
    result = await call(api, "ReceiveMessage", QueueUrl=url)
    assert [m["Body"] for m in result["Messages"]] == ["for the next receiver"]


class FakePeer:
    """A client connection the test says is gone: ``leave`` is seen by both calls,
    ``leave_unnoticed`` only by ``gone_nowait`` (as when the client leaves just as a send
    wakes its long poll)."""

    def __init__(self) -> None:
        self.gone = False
        self._left = trio.Event()

    def gone_nowait(self) -> bool:
        return self.gone

    async def wait_gone(self) -> None:
        await self._left.wait()

    def leave(self) -> None:
        self.gone = True
        self._left.set()

    def leave_unnoticed(self) -> None:
        self.gone = True


async def receive_watched(api: SqsApi, peer: FakePeer, **params: Any) -> Any:
    watched = RequestContext(base_url=BASE, caller=CALLER, action="ReceiveMessage", peer=peer)
    return await api.handle("ReceiveMessage", params, watched)


async def receive_counts(api: SqsApi, url: str) -> list[tuple[str, str]]:
    result = await call(
        api,
        "ReceiveMessage",
        QueueUrl=url,
        MaxNumberOfMessages=10,
        MessageSystemAttributeNames=["ApproximateReceiveCount"],
    )
    return [(m["Body"], m["Attributes"]["ApproximateReceiveCount"]) for m in result["Messages"]]


@pytest.mark.parametrize("noticed", [True, False])
async def test_a_long_poll_whose_client_went_takes_no_message(api: SqsApi, noticed: bool):
    url = await make_queue(api, "abandoned")
    peer = FakePeer()
    results: list[Any] = []

    async def poll() -> None:
        results.append(await receive_watched(api, peer, QueueUrl=url, WaitTimeSeconds=20))

    with trio.fail_after(10):  # well before WaitTimeSeconds: the client's going ends it
        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll)
            await trio.testing.wait_all_tasks_blocked()
            if noticed:
                peer.leave()
                await trio.testing.wait_all_tasks_blocked()
                assert results == [{}]
            else:
                peer.leave_unnoticed()  # the send's wake-up finds it gone, before it takes
            await call(api, "SendMessage", QueueUrl=url, MessageBody="for a live consumer")
    assert results == [{}]
    assert await receive_counts(api, url) == [("for a live consumer", "1")]


async def test_a_long_poll_of_a_client_still_there_gets_the_message(api: SqsApi):
    url = await make_queue(api, "watched")
    results: list[Any] = []

    async def poll() -> None:
        results.append(await receive_watched(api, FakePeer(), QueueUrl=url, WaitTimeSeconds=20))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll)
            await trio.testing.wait_all_tasks_blocked()
            await call(api, "SendMessage", QueueUrl=url, MessageBody="now")
    assert [m["Body"] for m in results[0]["Messages"]] == ["now"]


async def test_a_watched_long_poll_still_ends_at_its_deadline(api: SqsApi):
    url = await make_queue(api, "deadline")
    with trio.fail_after(10):
        assert await receive_watched(api, FakePeer(), QueueUrl=url, WaitTimeSeconds=1) == {}


# ---------------------------------------------------------------------- failed reads


async def test_a_receive_whose_read_fails_gives_its_messages_back(api: SqsApi, monkeypatch):
    url = await make_queue(api, "unreadable")
    for body in ("a", "b"):
        await call(api, "SendMessage", QueueUrl=url, MessageBody=body)
    read_messages = api.store.read_messages
    failures = 2

    async def failing_read(queue_id: int, seqs: list[int]) -> Any:
        nonlocal failures
        if failures:
            failures -= 1
            raise sqlite3.OperationalError("unable to open database file")
        return await read_messages(queue_id, seqs)

    logged: list[str] = []
    monkeypatch.setattr(api.store, "read_messages", failing_read)
    monkeypatch.setattr(api.registry.log, "exception", lambda event, *_, **__: logged.append(event))
    for _ in range(2):
        with pytest.raises(AwsError) as excinfo:
            await call(api, "ReceiveMessage", QueueUrl=url, MaxNumberOfMessages=10)
        # Retryable: botocore's retry modes retry a 503, whatever its code.
        assert (excinfo.value.code, excinfo.value.status_hint) == ("ServiceUnavailable", 503)
    assert logged == ["receive.read_failed"]  # once for the run of failures
    # Visible again at once; the failed receives still count (the model cannot undo one).
    assert sorted(await receive_counts(api, url)) == [("a", "3"), ("b", "3")]


async def test_receive_reports_bad_counts_before_waiting(api: SqsApi):
    url = await make_queue(api, "bad")
    for params in ({"MaxNumberOfMessages": 0}, {"WaitTimeSeconds": 21}, {"VisibilityTimeout": -1}):
        with pytest.raises((SqsError, AwsError)) as excinfo:
            with trio.fail_after(2):
                await call(api, "ReceiveMessage", QueueUrl=url, **params)
        error = excinfo.value
        assert isinstance(error, SqsError | AwsError)
        assert error.code == "InvalidParameterValue"


async def test_empty_receives_are_counted(api: SqsApi):
    url = await make_queue(api, "counted")
    assert await call(api, "ReceiveMessage", QueueUrl=url) == {}
    queue = api.registry.require("counted")
    assert queue.stats.empty_receives == 1
    await call(api, "SendMessage", QueueUrl=url, MessageBody="one")
    await call(api, "ReceiveMessage", QueueUrl=url)
    assert (queue.stats.sent, queue.stats.received, queue.stats.bytes_sent) == (1, 1, 3)


async def test_queue_attributes_the_store_cannot_write_are_refused(api: SqsApi):
    # A lone surrogate (a JSON escape) in free text: refused, not a failed commit.
    policy = '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": "*", '
    policy += '"Action": "sqs:SendMessage", "Resource": "*", "Sid": "\ud800"}]}'
    for attributes in ({"Policy": policy}, {"KmsMasterKeyId": "alias/\udc00"}):
        with pytest.raises(SqsError) as raised:
            await make_queue(api, "refused", **attributes)
        assert raised.value.code == "InvalidAttributeValue"
        assert raised.value.message == f"Invalid value for the parameter {next(iter(attributes))}."
    url = await make_queue(api, "kept")
    with pytest.raises(SqsError):
        await call(api, "SetQueueAttributes", QueueUrl=url, Attributes={"Policy": policy})
    assert api.registry.get("refused") is None
    assert api.registry.require("kept").settings.policy is None


async def test_fifo_duplicates_are_not_counted_as_sent(api: SqsApi):
    # CloudWatch's NumberOfMessagesSent counts the messages added to the queue; a duplicate
    # is answered as a success but added to nothing.
    url = await make_queue(api, "counted.fifo", FifoQueue="true")
    queue = api.registry.require("counted.fifo")

    def entry(n: int) -> dict[str, str]:
        return {"Id": f"e{n}", "MessageBody": f"body{n}", "MessageGroupId": "g",
                "MessageDeduplicationId": f"d{n}"}  # fmt: skip

    for _ in range(2):
        for n in range(3):
            fields = entry(n)
            del fields["Id"]
            await call(api, "SendMessage", QueueUrl=url, **fields)
    assert (queue.stats.sent, queue.stats.bytes_sent) == (3, 15)
    result = await call(api, "SendMessageBatch", QueueUrl=url, Entries=[entry(2), entry(3)])
    assert len(result["Successful"]) == 2
    assert (queue.stats.sent, queue.stats.bytes_sent) == (4, 20)
    assert queue.index.counts(now_ms()).visible == 4


@pytest.mark.parametrize("cache_bytes", [0, 1 << 20])
async def test_a_redelivery_keeps_the_first_receive_timestamp(tmp_path: Path, cache_bytes: int):
    # A standard queue's first receive does not wait for its commit; a redelivery must still
    # see the first receive's timestamp, from the body cache or from the file.
    store = SqliteStore(tmp_path, body_cache_bytes=cache_bytes)
    await store.open()
    try:
        registry = QueueRegistry(
            store,
            Signer(b"sqs api test key, 32 bytes long."),
            region="us-east-1",
            account_id=ACCOUNT,
            log=EventLog("broker", level="debug", stream=io.StringIO()),
        )
        api = SqsApi(registry, account_id=ACCOUNT)
        url = await make_queue(api, "again")
        await call(api, "SendMessage", QueueUrl=url, MessageBody="hello")
        received = []
        for _ in range(2):
            result = await call(
                api,
                "ReceiveMessage",
                QueueUrl=url,
                VisibilityTimeout=0,
                MessageSystemAttributeNames=["All"],
            )
            (message,) = result["Messages"]
            assert message["Body"] == "hello"
            received.append(message["Attributes"])
        first, second = received
        assert (first["ApproximateReceiveCount"], second["ApproximateReceiveCount"]) == ("1", "2")
        assert int(first["ApproximateFirstReceiveTimestamp"]) > 0
        assert (
            second["ApproximateFirstReceiveTimestamp"] == first["ApproximateFirstReceiveTimestamp"]
        )
    finally:
        await store.aclose()


@pytest.mark.parametrize("cache_bytes", [0, 1 << 20])
async def test_body_md5s_agree_from_the_send_the_cache_and_the_file(
    tmp_path: Path, cache_bytes: int
):
    # The send computes MD5OfMessageBody once; the body cache and the row keep it for the
    # receives. A row without one (written before schema 6) is hashed again on receive.
    # Either way: the MD5 of the UTF-8.
    store = SqliteStore(tmp_path, body_cache_bytes=cache_bytes)
    await store.open()
    try:
        registry = QueueRegistry(
            store,
            Signer(b"sqs api test key, 32 bytes long."),
            region="us-east-1",
            account_id=ACCOUNT,
            log=EventLog("broker", level="debug", stream=io.StringIO()),
        )
        api = SqsApi(registry, account_id=ACCOUNT)
        url = await make_queue(api, "digests")
        bodies = ["hello", "h\u00e9llo \u4e16\u754c \U0001f600", "x" * 1024]
        expected = {body: hashlib.md5(body.encode()).hexdigest() for body in bodies}
        sent = await call(api, "SendMessage", QueueUrl=url, MessageBody=bodies[0])
        assert sent["MD5OfMessageBody"] == expected[bodies[0]]
        batch = await call(
            api,
            "SendMessageBatch",
            QueueUrl=url,
            Entries=[{"Id": str(i), "MessageBody": body} for i, body in enumerate(bodies[1:])],
        )
        assert [e["MD5OfMessageBody"] for e in batch["Successful"]] == [
            expected[body] for body in bodies[1:]
        ]
        for _ in range(2):  # a first delivery, then a redelivery
            result = await call(
                api, "ReceiveMessage", QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0
            )
            messages = result["Messages"]
            assert sorted(m["Body"] for m in messages) == sorted(bodies)
            assert all(m["MD5OfBody"] == expected[m["Body"]] for m in messages)
        file = sqlite3.connect(tmp_path / "wharf.sqlite3", isolation_level=None)
        stored = dict(file.execute("SELECT body, body_md5 FROM messages"))
        assert stored == {body.encode(): bytes.fromhex(expected[body]) for body in bodies}
        if not cache_bytes:  # rows as an older file holds them: no digest
            file.execute("UPDATE messages SET body_md5 = NULL")
            result = await call(
                api, "ReceiveMessage", QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0
            )
            assert {m["Body"]: m["MD5OfBody"] for m in result["Messages"]} == expected
        file.close()
    finally:
        await store.aclose()


# ---------------------------------------------------------------------- durability of answers


async def test_an_answer_that_writes_nothing_waits_for_the_write_it_rests_on(
    api: SqsApi, monkeypatch: pytest.MonkeyPatch
):
    """A second delete of a message, and a FIFO duplicate send, write nothing themselves, but
    what they report (deleted; accepted as the original) is true only once the first call's
    commit is durable: answered earlier, a crash in between loses an acknowledged call.
    Found by tests/compat/test_crash_recovery.py."""
    gate = WriterGate(monkeypatch)
    standard = await make_queue(api, "deleted-twice")
    fifo = await make_queue(api, "sent-twice.fifo", FifoQueue="true")
    await call(api, "SendMessage", QueueUrl=standard, MessageBody="m")
    (message,) = (await call(api, "ReceiveMessage", QueueUrl=standard))["Messages"]
    twice = {
        "DeleteMessage": {"QueueUrl": standard, "ReceiptHandle": message["ReceiptHandle"]},
        "SendMessage": {
            "QueueUrl": fifo,
            "MessageBody": "b",
            "MessageGroupId": "g",
            "MessageDeduplicationId": "d",
        },
    }
    for action, params in twice.items():
        answered: list[str] = []

        async def answer(
            which: str, action: str = action, params: Any = params, answered: Any = answered
        ) -> None:
            await call(api, action, **params)
            answered.append(which)

        gate.close()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(answer, "first")
            assert await trio.to_thread.run_sync(gate.writing.wait, 10)  # its commit is under way
            nursery.start_soon(answer, "second")
            await trio.testing.wait_all_tasks_blocked()
            assert answered == [], f"{action}: answered before the first call was durable"
            gate.open.set()
        assert sorted(answered) == ["first", "second"], action  # woken by the same commit


async def test_a_step_of_the_system_clock_moves_no_deadline(
    api: SqsApi, monkeypatch: pytest.MonkeyPatch
):
    # NTP (or date -s) stepping the wall clock half an hour either way, between two calls.
    step = [0.0]
    system_time = time.time
    monkeypatch.setattr(time, "time", lambda: system_time() + step[0])
    monkeypatch.setattr(broker.registry, "CLOCK", Clock())  # this test's steps only
    url = await make_queue(api, "stepped", MessageRetentionPeriod="60")
    for body in ("held", "kept", "brief"):
        await call(api, "SendMessage", QueueUrl=url, MessageBody=body)
    await call(api, "SendMessage", QueueUrl=url, MessageBody="delayed", DelaySeconds=600)
    received = await call(api, "ReceiveMessage", QueueUrl=url, VisibilityTimeout=600)
    assert [m["Body"] for m in received["Messages"]] == ["held"]

    step[0] = 1800.0
    await api.registry.expire(now_ms())  # the retention pass
    got = await call(api, "ReceiveMessage", QueueUrl=url, MaxNumberOfMessages=10)
    # "held" still in flight, "delayed" still delayed, the others within their 60 s.
    assert [m["Body"] for m in got["Messages"]] == ["kept", "brief"]

    step[0] = -1800.0
    (brief,) = [m for m in got["Messages"] if m["Body"] == "brief"]
    await call(
        api,
        "ChangeMessageVisibility",
        QueueUrl=url,
        ReceiptHandle=brief["ReceiptHandle"],
        VisibilityTimeout=1,
    )
    await trio.sleep(1.5)  # its timeout ends after a second, not 30 minutes later
    again = await call(api, "ReceiveMessage", QueueUrl=url, MaxNumberOfMessages=10)
    assert [m["Body"] for m in again["Messages"]] == ["brief"]
