"""wharf-balancer's root: what it binds and serves inside the lifecycle frame.

Task tree under ``BalancerApp.serve``::

    app nursery
    ├── health checker            probes every target group (balancer.checker)
    ├── housekeeping              once a second: idle upstream connections past the idle
    │                             timeout closed, access log buffers flushed
    └── frame.serve_listeners     admin listener + one per configured HTTP(S) listener

Everything the data path reads lives in :class:`~balancer.runtime.Runtime`; a reload builds
the next snapshot (rules, target lists, cookie keys, TLS contexts) and swaps it in, or
refuses with the old one still serving. Upstream pools, stats and access log writers live
as long as the process.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import trio

from balancer.access_log import AccessLogs
from balancer.checker import HealthChecker
from balancer.config import BalancerConfig, HttpsListener
from balancer.listeners.exchange import ClientInfo, ListenerServices
from balancer.listeners.http import REJECT_HEADROOM, HttpListenerHandler
from balancer.listeners.http_metrics import HttpStats
from balancer.peers import (
    admin_settings,
    current_worker,
    forward,
    sibling_admins,
    stop_self,
    watch_parent,
)
from balancer.runtime import Runtime
from balancer.stickiness import MIN_KEY_BYTES
from balancer.targets_api import Overrides, TargetsApi
from balancer.tls import ServerTls, TlsMetrics, accept_tls, build_all, close_tls
from balancer.upstream import Pools, tune_socket
from monitoring.admin import AdminServer, open_admin_listener
from monitoring.configfile import ConfigError
from monitoring.lifecycle import Frame, Listener, bind_tcp
from monitoring.settings import HttpLimits

HOUSEKEEPING_SECONDS: Final = 1.0


def read_keys(config: BalancerConfig) -> list[bytes]:
    """The stickiness keys' bytes, in order (the first seals).

    Raises:
        ConfigError: a key file is missing or unreadable.
    """
    keys: list[bytes] = []
    for path in config.stickiness.key_files:
        try:
            key = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(path, f"cannot read stickiness key: {exc.strerror}") from None
        if len(key) < MIN_KEY_BYTES:
            raise ConfigError(path, f"a stickiness key needs at least {MIN_KEY_BYTES} bytes")
        keys.append(key)
    return keys


def _now() -> float:
    # The runtime's clock is trio's; the app is built before trio runs (the CLI builds it to
    # report file errors early), when no target can have a health history yet.
    try:
        return trio.current_time()
    except RuntimeError:
        return 0.0


def _compile_inputs(config: BalancerConfig) -> tuple[list[bytes], dict[str, ServerTls]]:
    keys = read_keys(config)
    tls = build_all(config.listeners)
    return keys, tls


class BalancerApp:
    """The balancer daemon: admin listener, HTTP(S) listeners, health checks."""

    def __init__(self, config: BalancerConfig, frame: Frame) -> None:
        self.config = config
        self.frame = frame
        self.admin = AdminServer(frame)
        keys, tls = _compile_inputs(config)
        try:
            self.runtime = Runtime(config, keys=keys, tls=tls, now=_now())
        except ValueError as exc:
            raise ConfigError("<config>", str(exc)) from None
        self.pools = Pools()
        self.stats = HttpStats()
        self.access_logs = AccessLogs()
        self.checker = HealthChecker(self.runtime, frame.log, frame.metrics)
        self.tls_metrics = TlsMetrics(
            frame.metrics, frame.log, lambda: list(self.runtime.current.tls.values())
        )
        frame.metrics.register_collector(self.stats.collect)
        # workers > 1 (balancer.workers): this process is one of several sharing listeners.
        self.worker = current_worker()
        self.supervisor_pid = os.getppid()
        # Targets registered through the admin API, applied on top of the file at every reload.
        self.overrides = Overrides()
        self.targets_api = TargetsApi(
            self.runtime, self.overrides, frame.log, reload=self._reload_file
        )
        if self.worker is not None and self.worker.count > 1:
            siblings = sibling_admins(config.admin, self.worker)
            if self.worker.primary:
                self.targets_api.peers = lambda path, body: forward(siblings, path, body)
            else:
                self.targets_api.primary = siblings[0][1]
        self.targets_api.mount(self.admin)

    async def serve(self, frame: Frame, *, task_status: trio.TaskStatus[None]) -> None:
        with self._resources():
            admin_address = admin_settings(self.config.admin, self.worker)
            admin = await open_admin_listener(frame, admin_address, HttpLimits(), self.admin)
            listeners = [admin]
            listeners += [await self._open(listener.name) for listener in self.config.listeners]
            async with trio.open_nursery() as nursery:
                await nursery.start(self.checker.run)
                nursery.start_soon(self._housekeeping)
                if self.worker is not None:  # never outlive the supervisor holding the ports
                    nursery.start_soon(watch_parent, self.supervisor_pid, stop_self)
                await frame.serve_listeners(listeners, task_status=task_status)
                nursery.cancel_scope.cancel()

    @contextlib.contextmanager
    def _resources(self) -> Iterator[None]:
        try:
            yield
        finally:
            self.pools.close()
            self.access_logs.close()

    async def _open(self, name: str) -> Listener:
        """Bind one configured listener and wrap its handler (TLS first for https)."""
        config = next(li for li in self.config.listeners if li.name == name)
        sockets = await bind_tcp(config.host, config.port, reuse_port=self.worker is not None)
        services = ListenerServices(
            name,
            self.runtime,
            self.pools,
            self.stats,
            self.access_logs,
            self.frame.draining,
            self.frame.log,
        )
        self.stats.listener_started(name)
        handler = HttpListenerHandler(services)
        limit = config.limits.connections + REJECT_HEADROOM
        if not isinstance(config, HttpsListener):
            return Listener(name, sockets, handler.handle, max_connections=limit)

        async def handle_tls(stream: trio.SocketStream) -> None:
            tls = self.runtime.current.tls.get(name)
            if tls is None:
                return  # no longer an https listener in this generation
            sock = stream.socket
            peer, local = sock.getpeername(), sock.getsockname()
            tune_socket(sock)
            accepted = await accept_tls(stream, tls, self.tls_metrics)
            if accepted is None:
                return
            info = ClientInfo(
                str(peer[0]),
                int(peer[1]),
                int(local[1]),
                "https",
                local_ip=str(local[0]),
                tls_protocol=accepted.protocol,
                tls_cipher=accepted.cipher,
                sni=accepted.server_name,
                certificate=accepted.certificate,
            )
            try:
                await handler.serve(accepted.stream, info)
            finally:
                await close_tls(accepted)  # close_notify, bounded

        return Listener(name, sockets, handle_tls, max_connections=limit)

    async def _housekeeping(self) -> None:
        while True:
            await trio.sleep(HOUSEKEEPING_SECONDS)
            self.pools.prune(trio.current_time())
            self.access_logs.flush()

    async def reload(self, config: BalancerConfig) -> None:
        """Swap in a new generation, or raise ConfigError with the old one serving."""
        keys, tls = _compile_inputs(config)
        try:
            for listener in config.listeners:
                self.access_logs.get(listener.access_log)  # opens new files now, or fails
            snapshot = self.runtime.compile(config, keys, tls)
            self.overrides.prune(config)  # only once the new generation compiled
            self.runtime.install(self.overrides.apply(snapshot), trio.current_time())
        except (ValueError, OSError) as exc:
            raise ConfigError("<config>", str(exc)) from None
        self.access_logs.retain(
            {li.access_log.destination for li in config.listeners if li.access_log.enabled}
        )
        if _addresses(config) != _addresses(self.config):
            # Sockets are bound once; new or moved listeners need a restart (for now).
            self.frame.log.warning("config.restart_required", section="listeners")
        if config.workers != self.config.workers:
            self.frame.log.warning("config.restart_required", key="workers")
        self.config = config

    async def _reload_file(self) -> str | None:
        """``POST /reload``: what SIGHUP does (the Daemon sets ``frame.reload`` after build)."""
        if self.frame.reload is None:
            return "no daemon to reload this configuration"
        return await self.frame.reload()


def _addresses(config: BalancerConfig) -> set[tuple[str, str, int, str]]:
    return {(li.name, li.host, li.port, type(li).__name__) for li in config.listeners}


def build(config: BalancerConfig, frame: Frame) -> BalancerApp:
    return BalancerApp(config, frame)
