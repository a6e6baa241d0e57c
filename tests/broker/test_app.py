from __future__ import annotations

from broker.cli import SPEC
from broker.config import BrokerConfig
from monitoring.settings import AdminSettings, LoggingSettings
from tests.support.daemons import address, running
from tests.support.http import request


async def test_serves_its_admin_listener_and_takes_a_new_config():
    config = BrokerConfig(admin=AdminSettings(port=0))
    async with running(SPEC, config) as daemon:
        assert (await request(address(daemon, "admin"), target="/readyz"))[0] == 200
        new = BrokerConfig(admin=config.admin, logging=LoggingSettings(level="error"))
        await daemon.app.reload(new)
        assert daemon.app.config is new
