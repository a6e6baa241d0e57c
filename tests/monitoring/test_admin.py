from __future__ import annotations

import trio
from prometheus_client.parser import text_string_to_metric_families

from balancer.cli import SPEC as BALANCER
from balancer.config import BalancerConfig
from broker.cli import SPEC as BROKER
from broker.config import BrokerConfig
from monitoring.settings import AdminSettings
from tests.support.daemons import address, running
from tests.support.http import raw_exchange, request

BROKER_CONFIG = BrokerConfig(admin=AdminSettings(port=0))


async def test_metrics_parse_with_the_prometheus_parser():
    async with running(BROKER, BROKER_CONFIG) as daemon:
        status, headers, body = await request(address(daemon, "admin"), target="/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    info = families["wharf_build_info"].samples[0]
    assert info.labels["daemon"] == "broker"
    assert info.value == 1
    assert "process_resident_memory_bytes" in families
    assert families["wharf_connections_open"].samples[0].labels == {"listener": "admin"}


async def test_openmetrics_is_negotiated():
    async with running(BROKER, BROKER_CONFIG) as daemon:
        status, headers, body = await request(
            address(daemon, "admin"),
            target="/metrics",
            headers=[("accept", "application/openmetrics-text; version=1.0.0")],
        )
    assert status == 200
    assert headers["content-type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


async def test_health_readiness_and_unknown_paths():
    async with running(BROKER, BROKER_CONFIG) as daemon:
        addr = address(daemon, "admin")
        assert (await request(addr, target="/healthz"))[0] == 200
        assert (await request(addr, target="/readyz"))[0] == 200
        assert (await request(addr, target="/nope"))[0] == 404
        status, headers, _ = await request(addr, "POST", "/metrics")
        assert status == 405
        assert headers["allow"] == "GET"
        daemon.frame.draining.start()
        assert (await request(addr, target="/readyz"))[0] == 503


async def test_malformed_request_gets_400_and_the_listener_keeps_serving():
    async with running(BROKER, BROKER_CONFIG) as daemon:
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


async def test_two_daemons_in_one_process_have_separate_registries():
    balancer_config = BalancerConfig(admin=AdminSettings(port=0))
    async with (
        running(BROKER, BROKER_CONFIG) as broker,
        running(BALANCER, balancer_config) as balancer,
    ):
        for daemon, name in ((broker, "broker"), (balancer, "balancer")):
            _, _, body = await request(address(daemon, "admin"), target="/metrics")
            families = {f.name: f for f in text_string_to_metric_families(body.decode())}
            labels = [s.labels["daemon"] for s in families["wharf_build_info"].samples]
            assert labels == [name]


async def test_a_hung_client_is_cut_off_by_the_header_timeout():
    async with running(BROKER, BROKER_CONFIG) as daemon:
        addr = address(daemon, "admin")
        stream = await trio.open_tcp_stream(*addr)
        async with stream:
            await stream.send_all(b"GET /healthz HTTP/1.1\r\n")
            # Still serving others while this one dawdles.
            assert (await request(addr, target="/healthz"))[0] == 200
