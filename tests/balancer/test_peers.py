"""A worker's view of itself and its siblings: identity, admin ports, forwarding, its parent."""

from __future__ import annotations

import os
import sys

import pytest
import trio

from balancer.config import BalancerConfig, FixedResponse, HttpListener
from balancer.peers import (
    COUNT_ENV,
    INDEX_ENV,
    PEER_HEADER,
    WorkerIdentity,
    admin_settings,
    check_workers,
    current_worker,
    forward,
    sibling_admins,
    watch_parent,
)
from monitoring.configfile import ConfigError
from monitoring.settings import AdminSettings
from tests.support.check_targets import StubTarget


def test_identity_comes_from_the_environment():
    assert current_worker({}) is None
    assert current_worker({INDEX_ENV: "1", COUNT_ENV: "4"}) == WorkerIdentity(1, 4)
    assert current_worker({INDEX_ENV: "4", COUNT_ENV: "4"}) is None
    assert current_worker({INDEX_ENV: "x", COUNT_ENV: "4"}) is None
    assert WorkerIdentity(0, 2).primary
    assert not WorkerIdentity(1, 2).primary


def test_admin_ports_are_the_base_plus_the_index():
    base = AdminSettings(host="0.0.0.0", port=9326)
    assert admin_settings(base, None) == base
    assert admin_settings(base, WorkerIdentity(2, 3)).port == 9328
    assert admin_settings(AdminSettings(port=0), WorkerIdentity(2, 3)).port == 0
    assert sibling_admins(base, WorkerIdentity(0, 3)) == [
        (1, ("127.0.0.1", 9327)),
        (2, ("127.0.0.1", 9328)),
    ]
    assert sibling_admins(AdminSettings(host="10.1.2.3", port=9326), WorkerIdentity(1, 2)) == [
        (0, ("10.1.2.3", 9326))
    ]


def test_check_workers_wants_fixed_ports():
    listener = HttpListener(name="web", port=0, default_action=FixedResponse(status_code=200))
    check_workers(BalancerConfig(listeners=(listener,)), "f.toml")  # one worker: anything goes
    with pytest.raises(ConfigError, match=r"\$.listeners\[0\].port"):
        check_workers(BalancerConfig(workers=2, listeners=(listener,)), "f.toml")
    with pytest.raises(ConfigError, match="fixed admin port"):
        check_workers(BalancerConfig(workers=2, admin=AdminSettings(port=0)), "f.toml")
    with pytest.raises(ConfigError, match="65535"):
        check_workers(BalancerConfig(workers=3, admin=AdminSettings(port=65534)), "f.toml")
    check_workers(BalancerConfig(workers=2, admin=AdminSettings(port=65534)), "f.toml")
    # A reload is checked against the workers running: a file saying workers = 1 (applied only
    # at a restart) must not let a port-0 listener in, bound on a different port by each.
    with pytest.raises(ConfigError, match=r"workers = 2 needs a fixed port"):
        check_workers(BalancerConfig(listeners=(listener,)), "f.toml", workers=2)


async def test_forward_reports_each_sibling(nursery):
    happy, unhappy = StubTarget(status=200), StubTarget(status=400)
    unhappy.body = b'{"error": "InvalidTarget"}'
    await happy.start(nursery)
    await unhappy.start(nursery)
    closed = StubTarget()
    await closed.start(nursery)
    closed.stop()
    await trio.sleep(0.01)
    siblings = [
        (1, ("127.0.0.1", happy.port)),
        (2, ("127.0.0.1", unhappy.port)),
        (3, ("127.0.0.1", closed.port)),
    ]
    outcomes = await forward(siblings, "/targets/register", b'{"x": 1}')
    assert outcomes["1"] == "ok"
    assert outcomes["2"] == 'HTTP 400: {"error": "InvalidTarget"}'
    assert outcomes["3"].startswith("unreachable")
    (sent,) = happy.requests
    assert sent.method == b"POST"
    assert sent.target == b"/targets/register"
    assert dict(sent.headers)[PEER_HEADER.encode()] == b"1"
    happy.stop()
    unhappy.stop()


async def test_watch_parent_waits_for_the_parent_to_exit():
    called: list[bool] = []
    with trio.move_on_after(0.2):
        await watch_parent(os.getppid(), lambda: called.append(True))
    assert called == []  # our parent (pytest's launcher) is alive
    # A process that is not our parent counts as gone at once (we were re-parented) ...
    with trio.fail_after(2):
        await watch_parent(os.getpid(), lambda: called.append(True))
    # ... and so does one that has exited and been reaped.
    process = await trio.lowlevel.open_process([sys.executable, "-c", "pass"])
    await process.wait()
    with trio.fail_after(2):
        await watch_parent(process.pid, lambda: called.append(True))
    assert called == [True, True]


def test_a_workers_admin_settings_keep_the_token_file():
    base = AdminSettings(host="10.1.2.3", port=9326, token_file="/etc/wharf/admin.token")
    shifted = admin_settings(base, WorkerIdentity(1, 2))
    assert (shifted.port, shifted.token_file) == (9327, "/etc/wharf/admin.token")


async def test_forward_sends_the_admin_token_the_siblings_ask_for(nursery):
    sibling = StubTarget(status=200)
    await sibling.start(nursery)
    siblings = [(1, ("127.0.0.1", sibling.port))]
    assert await forward(siblings, "/reload", b"", "Bearer s3cret") == {"1": "ok"}
    assert await forward(siblings, "/reload", b"") == {"1": "ok"}
    with_token, without = sibling.requests
    assert dict(with_token.headers)[b"authorization"] == b"Bearer s3cret"
    assert b"authorization" not in dict(without.headers)
    sibling.stop()
