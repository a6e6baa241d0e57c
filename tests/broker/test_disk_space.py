"""The disk alarm: new messages refused below the free-space limit, everything else served."""

from __future__ import annotations

import io

import pytest

from broker.disk_space import ADDING_ACTIONS, DiskSpace, statvfs_free_bytes
from monitoring.logging import EventLog
from proto.aws.errors import AwsError


def make(free: list[int | None], limit: int) -> tuple[DiskSpace, io.StringIO]:
    stream = io.StringIO()
    log = EventLog("broker", level="debug", stream=stream)

    def measure() -> int:
        value = free[0]
        if value is None:
            raise OSError(2, "No such file or directory")
        return value

    return DiskSpace(measure, limit, log), stream


def test_adding_actions_are_refused_below_the_limit_and_admitted_again_above():
    free = [1_000]
    disk, log = make(free, 500)
    for action in (*ADDING_ACTIONS, "ReceiveMessage", "DeleteMessageBatch", "Subscribe"):
        disk.admit(action, 10)
    free[0] = 499
    disk.measure()
    assert disk.low
    with pytest.raises(AwsError) as refused:
        disk.admit("SendMessage", 10)
    assert (refused.value.code, refused.value.status_hint) == ("ServiceUnavailable", 503)
    assert "499 bytes free, below its limit of 500" in refused.value.message
    for action in ADDING_ACTIONS:
        with pytest.raises(AwsError):
            disk.admit(action, 10)
    for action in ("ReceiveMessage", "DeleteMessage", "DeleteMessageBatch", "PurgeQueue"):
        disk.admit(action, 10)  # how consumers make room
    disk.measure()  # still low: logged once
    free[0] = 500
    disk.measure()
    disk.admit("Publish", 10)
    lines = log.getvalue().splitlines()
    assert [line.split("event=")[1].split()[0] for line in lines] == [
        "storage.disk_low",
        "storage.disk_ok",
    ]
    assert "free_bytes=499 min_free_bytes=500" in lines[0]


def test_zero_never_refuses_and_a_failed_measure_keeps_the_verdict():
    free = [-5]  # the WAL alone is larger than the free space
    disk, log = make(free, 0)
    disk.admit("SendMessage", 10)
    assert not disk.low
    assert log.getvalue() == ""
    free[0] = 0
    disk.min_free_bytes = 10  # a reload lowers or raises the limit
    disk.measure()
    assert disk.low
    free[0] = None  # the measurement fails: keep refusing rather than guess
    disk.measure()
    assert disk.low
    with pytest.raises(AwsError):
        disk.admit("SendMessageBatch", 10)


def test_metrics_show_the_free_space_the_limit_and_the_alarm():
    disk, _ = make([42], 100)
    samples = {family.name: family.samples[0].value for family in disk.collect()}
    assert samples == {
        "wharf_storage_free_bytes": 42,
        "wharf_storage_min_free_bytes": 100,
        "wharf_storage_refusing_messages": 1,
    }


def test_statvfs_measures_the_directory_s_filesystem(tmp_path):
    free = statvfs_free_bytes(tmp_path)()
    assert free > 0
    stats = __import__("os").statvfs(tmp_path)
    assert abs(free - stats.f_bavail * stats.f_frsize) < 64 << 20  # the same, give or take


def counted(free: list[int], limit: int) -> tuple[DiskSpace, list[int]]:
    """A DiskSpace over ``free[0]`` that records every measurement it takes."""
    calls: list[int] = []

    def measure() -> int:
        calls.append(free[0])
        return free[0]

    return DiskSpace(measure, limit, EventLog("broker", stream=io.StringIO())), calls


def test_sends_spend_a_budget_and_a_spent_one_measures_again():
    free = [1_000]
    disk, calls = counted(free, 400)
    assert calls == [1_000]  # budget: half the 600 above the limit, spent at 3x the request
    disk.admit("SendMessage", 50)
    disk.admit("SendMessageBatch", 50)
    assert calls == [1_000]  # 300 spent, none left over
    free[0] = 399  # meanwhile the disk filled up
    with pytest.raises(AwsError):
        disk.admit("SendMessage", 1)  # the budget is spent: measured before it is admitted
    assert calls == [1_000, 399]
    disk.admit("ReceiveMessage", 10**9)  # not an adding action: no budget, no measurement
    free[0] = 10_000
    disk.measure()
    assert calls == [1_000, 399, 10_000]
    assert not disk.low


def test_a_publish_spends_what_its_copies_store_and_the_next_send_measures():
    free = [10_000]
    disk, calls = counted(free, 400)
    disk.admit("Publish", 100)  # its request: 300 of the 4,800 budget
    held = disk.reserve(1_000)  # its copies, estimated once its subscriptions are known: 3,000
    held = disk.settle(held, 1_400)  # and exactly, in its model step: 4,200
    disk.admit("Publish", 100)  # all 4,800 spent, none overspent: no measurement yet
    assert calls == [10_000]
    free[0] = 300  # meanwhile the copies (and others) filled the disk
    with pytest.raises(AwsError):
        disk.admit("SendMessage", 1)  # the budget is spent: measured first
    assert calls == [10_000, 300]
    disk.release(held)


def test_publishes_in_progress_are_taken_off_the_room_until_their_commits_are_durable():
    """Publishes that awaited their signatures together were all admitted against the same
    room, and together wrote the disk full (found by a report-only hunt)."""
    free = [10_000]
    disk, calls = counted(free, 4_000)
    first = disk.reserve(1_500)  # 4,500: more than the budget, measured, the room is there
    second = disk.reserve(1_500)  # measured again: 10,000 free less 4,500 held is room
    assert calls == [10_000, 10_000, 10_000]
    with pytest.raises(AwsError) as refused:  # 1,000 left above the limit once both land
        disk.reserve(1_500)
    assert "10000 bytes free, 9000 of them held for publishes in progress, below its limit" in (
        refused.value.message
    )
    with pytest.raises(AwsError):
        disk.admit("SendMessage", 10)
    assert not disk.low  # not below the limit yet: no alarm logged, receives unaffected
    disk.release(first)
    disk.release(second)
    free[0] = 7_000  # both written
    disk.admit("SendMessage", 10)
    held = disk.reserve(500)
    assert disk.settle(held, 0) == 0  # a publish that stored nothing gives its budget back
    disk.release(0)


def test_with_the_limit_off_a_publish_reserves_nothing():
    disk, _ = counted([100], 0)
    held = disk.reserve(10**9)
    assert held == 0
    disk.release(disk.settle(held, 10**9))
    disk.min_free_bytes = 10  # a reload turns it on: nothing is held
    disk.measure()
    disk.admit("Publish", 1)
    disk.release(disk.reserve(1))


def test_below_the_limit_the_store_is_asked_for_room_at_every_measurement():
    free = [100]
    asked = []
    disk = DiskSpace(
        lambda: free[0], 50, EventLog("broker", stream=io.StringIO()), lambda: asked.append(free[0])
    )
    free[0] = 40
    disk.measure()
    disk.measure()
    free[0] = 60
    disk.measure()
    assert asked == [40, 40]
