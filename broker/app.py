"""wharf-broker's root: what it binds and serves inside the lifecycle frame."""

from __future__ import annotations

import trio

from broker.config import BrokerConfig
from monitoring.admin import AdminServer, open_admin_listener
from monitoring.lifecycle import Frame
from monitoring.settings import HttpLimits


class BrokerApp:
    """The broker daemon."""

    def __init__(self, config: BrokerConfig, frame: Frame) -> None:
        self.config = config
        self.frame = frame
        self.admin = AdminServer(frame)

    async def serve(self, frame: Frame, *, task_status: trio.TaskStatus[None]) -> None:
        admin = await open_admin_listener(frame, self.config.admin, HttpLimits(), self.admin)
        await frame.serve_listeners([admin], task_status=task_status)

    async def reload(self, config: BrokerConfig) -> None:
        self.config = config


def build(config: BrokerConfig, frame: Frame) -> BrokerApp:
    return BrokerApp(config, frame)
