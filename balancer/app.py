"""wharf-balancer's root: what it binds and serves inside the lifecycle frame."""

from __future__ import annotations

import trio

from balancer.config import BalancerConfig
from monitoring.admin import AdminServer, open_admin_listener
from monitoring.lifecycle import Frame
from monitoring.settings import HttpLimits


class BalancerApp:
    """The balancer daemon. Listeners and target groups plug in here."""

    def __init__(self, config: BalancerConfig, frame: Frame) -> None:
        self.config = config
        self.frame = frame
        self.admin = AdminServer(frame)

    async def serve(self, frame: Frame, *, task_status: trio.TaskStatus[None]) -> None:
        admin = await open_admin_listener(frame, self.config.admin, HttpLimits(), self.admin)
        await frame.serve_listeners([admin], task_status=task_status)

    async def reload(self, config: BalancerConfig) -> None:
        self.config = config


def build(config: BalancerConfig, frame: Frame) -> BalancerApp:
    return BalancerApp(config, frame)
