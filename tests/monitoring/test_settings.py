from __future__ import annotations

import socket
from pathlib import Path

import msgspec
import pytest

from monitoring.settings import (
    AdminSettings,
    HttpLimits,
    check_host,
    listen_addresses,
    same_listen_host,
    url_host_port,
)


@pytest.mark.parametrize(
    ("host", "written"),
    [
        ("127.0.0.1", "127.0.0.1:9324"),
        ("::1", "[::1]:9324"),
        # RFC 6874: a zone id's "%" is "%25" inside the brackets of a URL.
        ("fe80::1%eth0", "[fe80::1%25eth0]:9324"),
    ],
)
def test_url_host_port(host, written):
    assert url_host_port(host, 9324) == written


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "0.0.0.0", "localhost", "a.example"])
def test_valid_hosts(host):
    check_host(host)


# Not ASCII: the resolver raised UnicodeError (not OSError) when a reload bound it, and the
# running balancer died (found by tests/compat/test_config_fuzz.py).
@pytest.mark.parametrize(
    "host", ["", "a b", "x" * 300, "\u00bb", "b\u00fccher.example", "-a.example"]
)
def test_invalid_hosts(host):
    with pytest.raises(ValueError, match="invalid listen host"):
        check_host(host)


# Found by the IPv6 hunt: check-config passed these, and the daemon then failed to start
# ("cannot bind ::1%lo:9324: Name or service not known", "... ::ffff:127.0.0.1: Invalid
# argument"); a bracketed address was refused without saying what was wrong with it.
@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("[::1]", "write an IPv6 address without brackets ('::1')"),
        ("::ffff:127.0.0.1", "an IPv6-only socket cannot bind; listen on '127.0.0.1'"),
        ("::1%lo", "an interface name is a zone id only on a link-local address"),
        ("2001:db8::1%eth0", "an interface name is a zone id only on a link-local address"),
    ],
)
def test_hosts_no_bind_could_take_are_refused_with_the_fix(host, reason):
    with pytest.raises(ValueError, match="invalid listen host") as info:
        check_host(host)
    assert reason in str(info.value)


@pytest.mark.parametrize("host", ["fe80::1%lo", "fe80::1%1", "::1%1", "ff02::1%lo", "::"])
def test_zone_ids_the_resolver_reads_are_accepted(host):
    check_host(host)
    socket.getaddrinfo(host, 80, type=socket.SOCK_STREAM)  # and the resolver does read them


@pytest.mark.parametrize(
    ("host", "other", "same"),
    [
        ("::1", "0:0::1", True),
        ("127.1", "127.0.0.1", True),
        ("a.example", "A.example.", True),
        ("::1", "::2", False),
        ("::", "0.0.0.0", False),
        ("a.example", "b.example", False),
    ],
)
def test_same_listen_host_compares_addresses_not_spellings(host, other, same):
    assert same_listen_host(host, other) is same


def test_sections_are_frozen_and_strict():
    admin = AdminSettings()
    with pytest.raises(AttributeError):
        admin.port = 1  # type: ignore[misc]
    with pytest.raises(msgspec.ValidationError, match="unknown field `x`"):
        msgspec.convert({"x": 1}, HttpLimits)


def test_the_minimum_body_rate_is_a_whole_number_of_bytes_a_second_and_zero_turns_it_off():
    assert HttpLimits().min_body_rate_bytes_per_second == 500
    off = msgspec.convert({"min_body_rate_bytes_per_second": 0}, HttpLimits)
    assert off.min_body_rate_bytes_per_second == 0
    for bad in (-1, 1.5, "fast", 1 << 31):
        with pytest.raises(msgspec.ValidationError, match="min_body_rate_bytes_per_second"):
            msgspec.convert({"min_body_rate_bytes_per_second": bad}, HttpLimits)


def test_state_directory_prefers_the_config_then_systemd_then_the_fallback(monkeypatch, tmp_path):
    from monitoring.settings import state_directory

    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path}/a:{tmp_path}/b")
    assert state_directory("/etc/x", "here") == Path("/etc/x")
    assert state_directory("", "here") == tmp_path / "a"  # the first of systemd's list
    monkeypatch.delenv("STATE_DIRECTORY")
    assert state_directory("", "here") == Path("here")


@pytest.mark.parametrize(
    ("host", "addresses"),
    [
        ("127.0.0.1", {"127.0.0.1"}),
        ("127.1", {"127.0.0.1"}),  # inet_aton's short form, which the bind accepts
        ("0:0::1", {"::1"}),
        ("fe80::1%eth0", {"fe80::1%eth0"}),
        ("edge.example", None),  # not looked up
    ],
)
def test_listen_addresses_are_those_the_bind_resolves(host, addresses):
    found = listen_addresses(host)
    assert (None if found is None else {str(a) for a in found}) == addresses


def test_localhost_resolves_as_the_bind_resolves_it():
    bound = {info[4][0] for info in socket.getaddrinfo("localhost", 0, flags=socket.AI_PASSIVE)}
    assert {str(a) for a in listen_addresses("localhost") or ()} == bound
