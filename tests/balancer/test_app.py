from __future__ import annotations

import h11
import trio

from balancer.cli import SPEC
from balancer.config import BalancerConfig
from monitoring.settings import AdminSettings, LoggingSettings
from tests.support.daemons import address, running
from tests.support.http import request


async def test_serves_its_admin_listener_and_takes_a_new_config():
    config = BalancerConfig(admin=AdminSettings(port=0))
    async with running(SPEC, config) as daemon:
        assert (await request(address(daemon, "admin"), target="/readyz"))[0] == 200
        new = BalancerConfig(admin=config.admin, logging=LoggingSettings(level="error"))
        await daemon.app.reload(new)
        assert daemon.app.config is new


async def test_serves_http_listeners_and_reloads_their_rules_for_keep_alive_clients():
    from balancer.config import Conditions, FixedResponse, Rule
    from tests.support.balancer_http import Client, balancer, config, front, group, listener
    from tests.support.targets import TargetServer, running_targets

    async with running_targets(TargetServer("a")) as (target,):
        cfg = config([listener()], [group("web", target)])
        async with balancer(cfg) as daemon:
            async with Client.connect(front(daemon)) as client:
                assert (await client.request(target="/x"))[0] == 200
                rule = Rule(
                    priority=1,
                    conditions=Conditions(path_pattern=("/x",)),
                    action=FixedResponse(status_code=418, message_body="teapot"),
                )
                await daemon.app.reload(config([listener(rules=[rule])], [group("web", target)]))
                # The same keep-alive connection takes the new rules at its next request.
                assert (await client.request(target="/x"))[0] == 418
            moved = config([listener(name="other")], [group("web", target)])
            await daemon.app.reload(moved)
            assert "config.restart_required" in daemon.log_output.getvalue()


async def test_https_listeners_terminate_tls_then_proxy(tmp_path):
    import ssl

    import trustme

    from balancer.config import Certificate, Forward, HttpsListener
    from tests.support.balancer_http import balancer, config, front, group
    from tests.support.http import read_response
    from tests.support.targets import TargetServer, running_targets

    ca = trustme.CA()
    cert = ca.issue_cert("shop.example.com")
    cert_file, key_file = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    lst = HttpsListener(
        name="front",
        host="127.0.0.1",
        port=0,
        default_action=Forward(target_group="web"),
        certificates=(Certificate(cert_file=str(cert_file), key_file=str(key_file)),),
    )
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    async with (
        running_targets(TargetServer("a")) as (target,),
        balancer(config([lst], [group("web", target)])) as daemon,
    ):
        raw = await trio.open_tcp_stream(*front(daemon))
        stream = trio.SSLStream(raw, client_context, server_hostname="shop.example.com")
        async with stream:
            conn = h11.Connection(h11.CLIENT)
            request = h11.Request(method="GET", target="/s", headers=[("host", "shop")])
            await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
            status, _, _body = await read_response(conn, stream)
        assert status == 200
        assert target.seen[0].header("x-forwarded-proto") == "https"
