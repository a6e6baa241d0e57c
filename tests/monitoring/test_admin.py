from __future__ import annotations

import json
import os
import subprocess

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from balancer.cli import SPEC as BALANCER
from balancer.cli import main as balancer_main
from balancer.config import BalancerConfig
from broker.cli import SPEC as BROKER
from broker.cli import main as broker_main
from broker.config import ApiSettings, BrokerConfig, StorageSettings
from monitoring.admin import MAX_TOKEN_FILE_BYTES, from_this_host, is_loopback, read_admin_token
from monitoring.configfile import ConfigError, load
from monitoring.httpserver import Request
from monitoring.settings import AdminSettings
from tests.support.daemons import address, running
from tests.support.http import raw_exchange, request


@pytest.fixture
def broker_config(tmp_path):
    """The broker on ephemeral ports with a data directory of its own, so that tests (and
    other runs on the machine) never share a port or a store."""
    return BrokerConfig(
        api=ApiSettings(port=0),
        admin=AdminSettings(port=0),
        storage=StorageSettings(data_dir=str(tmp_path / "data")),
    )


async def test_metrics_parse_with_the_prometheus_parser(broker_config):
    async with running(BROKER, broker_config) as daemon:
        status, headers, body = await request(address(daemon, "admin"), target="/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    info = families["wharf_build_info"].samples[0]
    assert info.labels["daemon"] == "broker"
    assert info.value == 1
    assert "process_resident_memory_bytes" in families
    assert families["wharf_connections_open"].samples[0].labels == {"listener": "admin"}


async def test_openmetrics_is_negotiated(broker_config):
    async with running(BROKER, broker_config) as daemon:
        status, headers, body = await request(
            address(daemon, "admin"),
            target="/metrics",
            headers=[("accept", "application/openmetrics-text; version=1.0.0")],
        )
    assert status == 200
    assert headers["content-type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


async def test_health_readiness_and_unknown_paths(broker_config):
    async with running(BROKER, broker_config) as daemon:
        addr = address(daemon, "admin")
        assert (await request(addr, target="/healthz"))[0] == 200
        assert (await request(addr, target="/readyz"))[0] == 200
        status, headers, body = await request(addr, target="/nope")
        assert status == 404
        assert headers["content-type"] == "application/json"
        assert json.loads(body)["error"] == "NotFound"  # the targets API's error shape
        status, headers, body = await request(addr, "POST", "/metrics")
        assert status == 405
        assert headers["allow"] == "GET, HEAD"  # RFC 9110 10.2.1: every method served
        assert json.loads(body) == {
            "error": "MethodNotAllowed",
            "message": "/metrics takes GET, HEAD",
        }
        daemon.frame.draining.start()
        assert (await request(addr, target="/readyz"))[0] == 503


@pytest.mark.parametrize("daemon_name", ["broker", "balancer"])
async def test_a_reload_asked_while_draining_is_503_and_no_failure(tmp_path, daemon_name):
    """A rolling restart's config run can POST /reload to a daemon that drains: neither a
    refused file nor an applied one (found by a report-only hunt: the balancer answered 400
    ConfigError and counted a failure, the broker applied it)."""
    config_file = tmp_path / f"{daemon_name}.toml"
    if daemon_name == "broker":
        config_file.write_text(
            f'[api]\nport = 0\n[admin]\nport = 0\n[storage]\ndata_dir = "{tmp_path}"\n'
        )
        spec, config = BROKER, load(config_file, BrokerConfig)
    else:
        config_file.write_text("[admin]\nport = 0\n")
        spec, config = BALANCER, load(config_file, BalancerConfig)
    async with running(spec, config, config_path=config_file) as daemon:
        addr = address(daemon, "admin")
        daemon.frame.draining.start()
        status, _, body = await request(addr, "POST", "/reload")
        _, _, metrics = await request(addr, target="/metrics")
    assert status == 503
    assert json.loads(body)["error"] == "Unavailable"
    assert 'wharf_config_reloads_total{outcome="failure"} 0.0' in metrics.decode()
    assert "config.reload_skipped" in daemon.log_output.getvalue()


async def test_an_oversized_body_gets_413_in_the_admin_error_shape(broker_config):
    # A deploy script sending a huge targets document reads the same JSON errors as for any
    # other refusal, not a plain-text line.
    async with running(BROKER, broker_config) as daemon:
        head = b"POST /reload HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n"
        reply = await raw_exchange(address(daemon, "admin"), head + b"x" * 65536)
    status_line, _, rest = reply.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 413 ")
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in headers.lower()
    assert json.loads(body) == {
        "error": "RequestEntityTooLarge",
        "message": "the body is over the admin API's 1048576 bytes",
    }


async def test_malformed_request_gets_400_and_the_listener_keeps_serving(broker_config):
    async with running(BROKER, broker_config) as daemon:
        addr = address(daemon, "admin")
        for garbage in (
            b"GARBAGE\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nbad header\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ):
            reply = await raw_exchange(addr, garbage)
            assert reply.startswith(b"HTTP/1.1 400 "), (garbage, reply)
        assert (await request(addr, target="/healthz"))[0] == 200


async def test_two_daemons_in_one_process_have_separate_registries(broker_config):
    balancer_config = BalancerConfig(admin=AdminSettings(port=0))
    async with (
        running(BROKER, broker_config) as broker,
        running(BALANCER, balancer_config) as balancer,
    ):
        for daemon, name in ((broker, "broker"), (balancer, "balancer")):
            _, _, body = await request(address(daemon, "admin"), target="/metrics")
            families = {f.name: f for f in text_string_to_metric_families(body.decode())}
            labels = [s.labels["daemon"] for s in families["wharf_build_info"].samples]
            assert labels == [name]


async def test_a_hung_client_is_cut_off_by_the_header_timeout(broker_config):
    async with running(BROKER, broker_config) as daemon:
        addr = address(daemon, "admin")
        stream = await trio.open_tcp_stream(*addr)
        async with stream:
            await stream.send_all(b"GET /healthz HTTP/1.1\r\n")
            # Still serving others while this one dawdles.
            assert (await request(addr, target="/healthz"))[0] == 200


# ------------------------------------------------------------------ who may change state

TOKEN = "c2VjcmV0LWFkbWluLXRva2Vu-0123456789abcdef"
BALANCER_CONFIG = BalancerConfig(admin=AdminSettings(port=0))


def admin_request(method: str, path: str, client: str, headers=()) -> Request:
    return Request(
        method=method.encode(),
        target=path.encode(),
        headers=[(name.lower().encode(), value.encode()) for name, value in headers],
        body=b"",
        client=(client, 40000),
    )


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),  # an IPv4 client of a dual-stack socket
        ("10.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("192.0.2.7", False),
        ("fe80::1%eth0", False),
        ("::", False),
        ("0.0.0.0", False),
        ("localhost", False),  # accept() gives addresses, never names
    ],
)
def test_loopback_addresses(host, loopback):
    assert is_loopback(host) is loopback


def test_a_connection_from_this_host_to_its_own_address_is_local():
    assert from_this_host("127.0.0.1", "127.0.0.1")
    assert from_this_host("::ffff:127.0.0.1", "::ffff:10.0.0.5")
    assert from_this_host("10.0.0.5", "10.0.0.5")  # a balancer worker to its sibling
    assert not from_this_host("10.0.0.6", "10.0.0.5")
    assert not from_this_host("::ffff:192.0.2.7", "::ffff:10.0.0.5")


async def test_changes_from_a_network_client_are_refused_and_reads_still_served():
    async with running(BALANCER, BALANCER_CONFIG) as daemon:
        admin = daemon.app.admin
        before = daemon.app.runtime.current.generation
        for method, path in (
            ("POST", "/reload"),
            ("POST", "/targets/register"),
            ("POST", "/targets/deregister"),
            ("PUT", "/targets"),
            ("DELETE", "/metrics"),
        ):
            response = await admin.handle(admin_request(method, path, "192.0.2.7"))
            assert response.status == 403, (method, path)
            assert response.content_type == "application/json"
            error = json.loads(response.body)
            assert error["error"] == "AccessDenied"
            assert "loopback" in error["message"]
        # A network client the connection says is on this host (a worker's sibling) is served.
        local = await admin.handle(admin_request("POST", "/reload", "10.0.0.5"), local_client=True)
        assert local.status != 403
        for path in ("/metrics", "/healthz", "/readyz", "/targets"):
            for method in ("GET", "HEAD"):
                response = await admin.handle(admin_request(method, path, "192.0.2.7"))
                assert response.status == 200, (method, path)
        assert daemon.app.runtime.current.generation == before
        log = daemon.log_output.getvalue()
        assert "event=admin.request_refused" in log
        assert "client=192.0.2.7" in log
        assert "reason=not_loopback" in log


async def test_loopback_clients_change_state_without_a_token(tmp_path):
    config_file = tmp_path / "balancer.toml"
    config_file.write_text("[admin]\nport = 0\n")
    async with running(BALANCER, BALANCER_CONFIG, config_path=config_file) as daemon:
        status, _, body = await request(address(daemon, "admin"), "POST", "/reload")
    assert status == 200, body
    assert json.loads(body)["reloaded"] is True


@pytest.mark.parametrize(
    "browser_header",
    [
        ("Origin", "https://evil.example"),
        ("Sec-Fetch-Site", "cross-site"),
        ("Sec-Fetch-Mode", "no-cors"),
    ],
)
async def test_a_web_page_cannot_change_state_through_a_loopback_browser(tmp_path, browser_header):
    # A page the host's browser opens can post a form to 127.0.0.1 without a CORS preflight:
    # without a token, only requests no browser marked as its own change state.
    config_file = tmp_path / "balancer.toml"
    config_file.write_text("[admin]\nport = 0\n")
    async with running(BALANCER, BALANCER_CONFIG, config_path=config_file) as daemon:
        admin = daemon.app.admin
        before = daemon.app.runtime.current.generation
        for path in ("/reload", "/targets/register"):
            response = await admin.handle(
                admin_request("POST", path, "127.0.0.1", headers=[browser_header])
            )
            assert response.status == 403, path
            assert "web browser" in json.loads(response.body)["message"]
        read = await admin.handle(admin_request("GET", "/targets", "127.0.0.1", [browser_header]))
        assert read.status == 200
        assert daemon.app.runtime.current.generation == before
        assert "reason=browser" in daemon.log_output.getvalue()


async def test_an_sns_delivery_cannot_change_state_through_loopback(tmp_path):
    """Anyone allowed to Subscribe can aim an http subscription at a daemon's admin port on the
    broker's host: the broker's SubscriptionConfirmation POST comes from loopback, for them
    (found by a report-only hunt: it reloaded the broker)."""
    config_file = tmp_path / "balancer.toml"
    config_file.write_text("[admin]\nport = 0\n")
    delivery = ("x-amz-sns-message-type", "SubscriptionConfirmation")
    async with running(BALANCER, BALANCER_CONFIG, config_path=config_file) as daemon:
        admin = daemon.app.admin
        before = daemon.app.runtime.current.generation
        for path in ("/reload", "/targets/register"):
            response = await admin.handle(
                admin_request("POST", path, "127.0.0.1", headers=[delivery])
            )
            assert response.status == 403, path
            assert "SNS delivery" in json.loads(response.body)["message"]
        assert daemon.app.runtime.current.generation == before
        assert "reason=sns_delivery" in daemon.log_output.getvalue()


@pytest.mark.parametrize(
    "proxy_header",
    [
        ("X-Forwarded-For", "203.0.113.7, 127.0.0.1"),
        ("X-Forwarded-Proto", "https"),
        ("Forwarded", "for=203.0.113.7;proto=https"),
    ],
)
@pytest.mark.parametrize("spec", [BALANCER, BROKER], ids=["balancer", "broker"])
async def test_a_request_a_proxy_relayed_cannot_change_state_through_loopback(
    tmp_path, spec, proxy_header
):
    """A proxy on this host (a balancer listener forwarding to the admin port) connects from
    loopback for any client of its own (found by a report-only hunt: a client of such a
    listener registered its own target)."""
    config_file = tmp_path / "daemon.toml"
    broker_only = f'[api]\nport = 0\n[storage]\ndata_dir = "{tmp_path}/data"\n'
    config_file.write_text("[admin]\nport = 0\n" + (broker_only if spec is BROKER else ""))
    async with running(spec, load(config_file, spec.schema), config_path=config_file) as daemon:
        admin = address(daemon, "admin")
        status, _, body = await request(admin, "POST", "/reload", headers=[proxy_header])
        assert status == 403, body
        error = json.loads(body)
        assert error["error"] == "AccessDenied"
        assert "relayed by a proxy" in error["message"]
        assert "reason=relayed" in daemon.log_output.getvalue()
        status, _, _ = await request(admin, "GET", "/metrics", headers=[proxy_header])
        assert status == 200  # a scrape through a proxy still reads
        status, _, body = await request(admin, "POST", "/reload")
        assert status == 200, body  # the operator's own call is served


def curl(url: str, *options: str) -> tuple[int, bytes]:
    reply = subprocess.run(
        ["curl", "-sS", "--max-time", "10", "-w", "\n%{http_code}", *options, url],
        capture_output=True,
        check=True,
    ).stdout
    body, _, status = reply.rpartition(b"\n")
    return int(status), body


async def test_with_a_token_file_every_client_needs_the_bearer_token(tmp_path):
    token_file = tmp_path / "admin.token"
    token_file.write_text(f"  {TOKEN}\n")  # as an editor or `openssl rand` leaves it
    token_file.chmod(0o600)
    config_file = tmp_path / "balancer.toml"
    config_file.write_text(f'[admin]\nport = 0\ntoken_file = "{token_file}"\n')
    config = load(config_file, BalancerConfig)
    async with running(BALANCER, config, config_path=config_file) as daemon:
        host, port = address(daemon, "admin")
        base = f"http://{host}:{port}"

        def post(*headers: str) -> tuple[int, bytes]:
            options = [item for header in headers for item in ("-H", header)]
            return curl(f"{base}/reload", "-X", "POST", *options)

        asked = {
            "none": await trio.to_thread.run_sync(post),
            "wrong": await trio.to_thread.run_sync(post, f"Authorization: Bearer {TOKEN}x"),
            "basic": await trio.to_thread.run_sync(post, f"Authorization: Basic {TOKEN}"),
            "right": await trio.to_thread.run_sync(post, f"Authorization: Bearer {TOKEN}"),
            "scheme case": await trio.to_thread.run_sync(post, f"authorization: bearer {TOKEN}"),
        }
        reads = [
            (await trio.to_thread.run_sync(curl, f"{base}{path}"))[0]
            for path in ("/metrics", "/healthz", "/readyz", "/targets")
        ]
        log = daemon.log_output.getvalue()
    for name in ("none", "wrong", "basic"):
        status, body = asked[name]
        assert status == 403, name
        assert json.loads(body)["error"] == "AccessDenied"
    assert "Bearer" in json.loads(asked["none"][1])["message"]
    assert asked["right"][0] == 200
    assert asked["scheme case"][0] == 200
    assert reads == [200, 200, 200, 200]
    assert "reason=no_token" in log
    assert "reason=wrong_token" in log
    assert TOKEN not in log  # the token itself is never logged


async def test_a_reload_rotates_the_token_and_can_take_it_away(tmp_path):
    """New contents in the same file, then no file: each applies at the reload, no restart
    (found by a report-only hunt: the old token kept working, the new one got 403, and
    nothing said a restart was needed)."""
    token_file = tmp_path / "admin.token"
    token_file.write_text(TOKEN)
    config_file = tmp_path / "balancer.toml"
    config_file.write_text(f'[admin]\nport = 0\ntoken_file = "{token_file}"\n')
    config = load(config_file, BalancerConfig)
    async with running(BALANCER, config, config_path=config_file) as daemon:
        host, port = address(daemon, "admin")

        def reload(token: str | None) -> int:
            headers = [] if token is None else ["-H", f"Authorization: Bearer {token}"]
            return curl(f"http://{host}:{port}/reload", "-X", "POST", *headers)[0]

        token_file.write_text("the-next-token")
        assert await trio.to_thread.run_sync(reload, TOKEN) == 200  # reads the new one
        assert await trio.to_thread.run_sync(reload, TOKEN) == 403
        assert await trio.to_thread.run_sync(reload, None) == 403  # loopback or not
        config_file.write_text("[admin]\nport = 0\n")
        assert await trio.to_thread.run_sync(reload, "the-next-token") == 200
        assert await trio.to_thread.run_sync(reload, None) == 200  # loopback: no token now
        assert "config.restart_required" not in daemon.log_output.getvalue()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "cannot read: No such file or directory"),
        ("", "the token file is empty"),
        (" \n\t\n", "the token file is empty"),
        ("two words", "the token may hold only"),
        ("tökën", "the token may hold only"),
        ("x" * (MAX_TOKEN_FILE_BYTES + 1), f"over {MAX_TOKEN_FILE_BYTES} bytes"),
    ],
)
def test_a_token_file_that_cannot_be_used_is_named_with_its_key(tmp_path, content, reason):
    token_file = tmp_path / "admin.token"
    if content is not None:
        token_file.write_text(content)
    with pytest.raises(ConfigError) as info:
        read_admin_token(AdminSettings(token_file=str(token_file)))
    assert info.value.path == str(token_file)
    assert info.value.reason.startswith(reason)
    assert info.value.reason.endswith("- at `$.admin.token_file`")


def test_a_token_file_that_is_not_a_regular_file_is_refused_without_waiting(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    for path in (fifo, tmp_path):
        with pytest.raises(ConfigError, match=r"not a regular file|Is a directory"):
            read_admin_token(AdminSettings(token_file=str(path)))
    assert read_admin_token(AdminSettings()) is None


def test_check_config_and_the_start_refuse_a_bad_token_file(tmp_path, capsys):
    missing = tmp_path / "missing.token"
    expected = f"{missing}: cannot read: No such file or directory - at `$.admin.token_file`"
    broker_file = tmp_path / "broker.toml"
    broker_file.write_text(
        f'[admin]\nport = 0\ntoken_file = "{missing}"\n[api]\nport = 0\n'
        f'[storage]\ndata_dir = "{tmp_path / "data"}"\n'
    )
    assert broker_main(["check-config", str(broker_file)]) == 1
    assert expected in capsys.readouterr().err
    balancer_file = tmp_path / "balancer.toml"
    balancer_file.write_text(
        f'state_dir = "{tmp_path / "state"}"\n[admin]\nport = 0\ntoken_file = "{missing}"\n'
    )
    assert balancer_main(["check-config", str(balancer_file)]) == 1
    assert expected in capsys.readouterr().err
    assert balancer_main(["serve", "--config", str(balancer_file)]) == 1
    assert f"cannot start: {expected}" in capsys.readouterr().err


async def test_a_reload_queued_when_the_drain_begins_is_skipped_not_refused(tmp_path):
    """Reloads wait for one another: one queued behind another when SIGTERM came read the
    file after the drain began, and was answered 400 ConfigError, counted as a failure and
    told systemd READY=1 after STOPPING=1 (found by a report-only hunt)."""
    config_file = tmp_path / "balancer.toml"
    config_file.write_text("[admin]\nport = 0\n")
    async with running(
        BALANCER, load(config_file, BalancerConfig), config_path=config_file
    ) as daemon:
        addr = address(daemon, "admin")
        answers: list[tuple[int, bytes]] = []

        async def post_reload() -> None:
            status, _, body = await request(addr, "POST", "/reload")
            answers.append((status, body))

        await daemon._reload_lock.acquire()  # another reload under way
        async with trio.open_nursery() as nursery:
            nursery.start_soon(post_reload)
            await trio.sleep(0.2)  # the POST waits for the lock
            daemon.frame.draining.start()
            daemon._reload_lock.release()
        _, _, metrics = await request(addr, target="/metrics")
    assert [(status, json.loads(body)["error"]) for status, body in answers] == [
        (503, "Unavailable")
    ]
    assert 'wharf_config_reloads_total{outcome="failure"} 0.0' in metrics.decode()
