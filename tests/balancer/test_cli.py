from __future__ import annotations

import signal

from balancer.cli import main
from tests.support.http import request
from tests.support.processes import daemon_process


def test_check_config(tmp_path, capsys):
    bad = tmp_path / "balancer.toml"
    bad.write_text("[lifecycle]\ngrace_period_seconds = -1\n")
    assert main(["check-config", str(bad)]) == 1
    assert capsys.readouterr().err == (
        f"{bad}: Expected `float` >= 0.0 - at `$.lifecycle.grace_period_seconds`\n"
    )


async def test_serves_admin_and_stops_on_sigterm(tmp_path):
    config = tmp_path / "balancer.toml"
    config.write_text("[admin]\nport = 0\n")
    async with daemon_process("balancer", config, tmp_path) as daemon:
        assert await daemon.next_notification() == b"READY=1\nSTATUS=serving"
        await daemon.wait_log("event=daemon.ready")
        assert (await request(daemon.addresses["admin"], target="/healthz"))[0] == 200
        daemon.signal(signal.SIGTERM)
        assert await daemon.next_notification() == b"STOPPING=1"
    assert daemon.process.returncode == 0
