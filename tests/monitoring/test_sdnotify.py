from __future__ import annotations

import os
import socket
import uuid

import pytest

from monitoring.sdnotify import Notifier, socket_address


@pytest.fixture
def path_socket(tmp_path):
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield path, sock
    sock.close()


def test_ready_reaches_a_real_datagram_socket(path_socket):
    path, sock = path_socket
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path})
    assert notifier.ready(status="serving")
    assert sock.recv(4096) == b"READY=1\nSTATUS=serving"
    assert notifier.reloading(123)
    assert sock.recv(4096) == b"RELOADING=1\nMONOTONIC_USEC=123"
    assert notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    notifier.close()


def test_a_status_is_one_line_and_any_text_goes(path_socket):
    """systemd reads each line as an assignment; a reason quoting a key with a newline must
    not say READY=1 or MAINPID=, and a non-UTF-8 path (surrogates) must not raise."""
    path, sock = path_socket
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path})
    assert notifier.ready(status="reload refused: unknown field `x\nMAINPID=1\nREADY=1`")
    assert sock.recv(4096) == b"READY=1\nSTATUS=reload refused: unknown field `x MAINPID=1 READY=1`"
    assert notifier.status("/etc/wharf/bad\udcff.toml: refused")
    assert sock.recv(4096) == b"STATUS=/etc/wharf/bad\\udcff.toml: refused"
    notifier.close()


def test_abstract_namespace():
    name = f"wharf-test-{uuid.uuid4()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(5)
    try:
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": "@" + name})
        assert notifier.watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"
        notifier.close()
    finally:
        sock.close()
    assert socket_address("@x") == b"\0x"
    assert socket_address("/run/x") == "/run/x"


def test_without_socket_everything_is_a_no_op():
    notifier = Notifier.from_environ({})
    assert not notifier.enabled
    assert not notifier.ready()


def test_a_vanished_socket_is_counted_not_raised(tmp_path):
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert not notifier.ready()
    assert notifier.failures == 1
    notifier.close()


def test_watchdog_interval_is_half_the_timeout_and_respects_the_pid():
    me = str(os.getpid())
    assert Notifier.from_environ({"WATCHDOG_USEC": "30000000"}).watchdog_interval() == 15
    own = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": me}
    assert Notifier.from_environ(own).watchdog_interval() == 15
    other = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}
    assert Notifier.from_environ(other).watchdog_interval() is None
    assert Notifier.from_environ({"WATCHDOG_USEC": "0"}).watchdog_interval() is None
