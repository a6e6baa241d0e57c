"""wharf-balancer's root: what it binds and serves inside the lifecycle frame.

Task tree under ``BalancerApp.serve``::

    app nursery
    ├── health checker            probes every target group (balancer.checker)
    ├── housekeeping              once a second: idle upstream connections past the idle
    │                             timeout closed, access log buffers flushed
    └── frame.serve_listeners     admin listener + one per configured HTTP(S) listener
                                  (a reload adds and stops listeners: Frame.add_listener,
                                  Frame.stop_listener)

Everything the data path reads lives in :class:`~balancer.runtime.Runtime`; a reload builds
the next snapshot (rules, target lists, cookie keys, TLS contexts) and swaps it in, or
refuses with the old one still serving. Upstream pools, stats and access log writers live
as long as the process.

Listeners on reload: one whose name, host, port and protocol stay is kept (its connections
and socket carry on under the new rules). Any other is removed (it stops accepting; its
connections in flight finish within ``lifecycle.grace_period_seconds``, as on SIGTERM) or
added (bound with the new generation). A listener that moves, or turns from http to https or
back, is both. Every new socket is bound before the new generation is installed, so a bind
failure (port taken, no permission) refuses the whole reload with the old one serving. A
listener added on the same fixed host and port as one removed takes over its socket, so that
address never stops accepting. A listener moved to an address its old socket blocks (between
``0.0.0.0:80`` and ``10.0.0.1:80``, see :mod:`balancer.rebind`) cannot be bound first: the
old one stops accepting just before the bind, and is bound again on its old addresses if the
bind or the rest of the reload fails.

Targets registered through the admin API are loaded from ``state_dir/targets.json`` at start
and applied on top of the file's targets (:mod:`balancer.targets_api`).
"""

from __future__ import annotations

import contextlib
import errno
import math
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final

import trio
from prometheus_client.metrics_core import CounterMetricFamily, Metric

from balancer.access_log import AccessLogs
from balancer.checker import HealthChecker
from balancer.config import STATE_DIR_FALLBACK, BalancerConfig, HttpsListener
from balancer.config import Listener as ListenerConfig
from balancer.fail_open import FailOpenWatch
from balancer.health import TargetState, TargetStateChanged
from balancer.listeners.cutoffs import DrainCutoffs
from balancer.listeners.exchange import ClientInfo, ListenerServices
from balancer.listeners.http import REJECT_HEADROOM, HttpListenerHandler
from balancer.listeners.http_metrics import PREFIX, HttpStats
from balancer.peers import (
    admin_settings,
    check_workers,
    current_worker,
    forward,
    sibling_admins,
    stop_self,
    supervisor_pid,
    watch_parent,
)
from balancer.rebind import Address, in_the_way, passive_addresses
from balancer.runtime import Runtime
from balancer.stickiness import MIN_KEY_BYTES
from balancer.targets_api import Overrides, StateFile, TargetsApi
from balancer.tls import (
    ServerTls,
    TlsMetrics,
    accept_tls,
    build_all,
    close_tls,
    log_certificate_warnings,
    undecodable_server_names_logged,
)
from balancer.upstream import Pools, tune_socket
from monitoring import fastio
from monitoring.admin import AdminServer, open_admin_listener
from monitoring.configfile import ConfigError
from monitoring.httpserver import Draining
from monitoring.lifecycle import Frame, Listener, StartupError, bind_tcp
from monitoring.logging import EventLog
from monitoring.safefile import MAX_KEY_FILE_BYTES, read_regular_file
from monitoring.settings import HttpLimits, listen_addresses, state_directory

HOUSEKEEPING_SECONDS: Final = 1.0
# How long the series of a listener or target group a reload removed stay in /metrics once
# it is gone for good: several scrapes of every scraper at the usual 15-60 s intervals.
REMOVED_SERIES_SECONDS = 300.0


def read_keys(config: BalancerConfig) -> list[bytes]:
    """The stickiness keys' bytes, in order (the first seals).

    Raises:
        ConfigError: a key file is missing or unreadable.
    """
    keys: list[bytes] = []
    for i, path in enumerate(config.stickiness.key_files):
        where = f"- at `$.stickiness.key_files[{i}]`"
        try:
            # Never blocks on a FIFO, nor reads /dev/zero without end: a reload runs on the
            # event loop, and would freeze or exhaust the whole daemon.
            key = read_regular_file(path, MAX_KEY_FILE_BYTES)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ConfigError(path, f"cannot read stickiness key: {reason} {where}") from None
        if len(key) < MIN_KEY_BYTES:
            raise ConfigError(
                path, f"a stickiness key needs at least {MIN_KEY_BYTES} bytes {where}"
            )
        keys.append(key)
    return keys


def open_access_logs(
    logs: AccessLogs, config: BalancerConfig, *, unopenable: Mapping[str, OSError] | None = None
) -> None:
    """Open every access log file ``config`` names that ``logs`` has not open yet.

    Args:
        unopenable: destinations open already whose reopen failed just now (a reload's
            :meth:`AccessLogs.reopen_all`): ``config`` may not keep one of them.

    Raises:
        ConfigError: one cannot be opened; it names the file, the key and the reason.
    """
    failed = unopenable or {}
    for i, listener in enumerate(config.listeners):
        settings = listener.access_log
        try:
            if settings.enabled and settings.destination in failed:
                raise failed[settings.destination]
            logs.get(settings)
        except OSError as exc:
            raise ConfigError(
                settings.destination,
                f"cannot open the access log of listener {listener.name!r}: "
                f"{exc.strerror or exc} - at `$.listeners[{i}].access_log.destination`",
            ) from None


def _now() -> float:
    # The runtime's clock is trio's; the app is built before trio runs (the CLI builds it to
    # report file errors early), when no target can have a health history yet.
    try:
        return trio.current_time()
    except RuntimeError:
        return 0.0


def _clock_running() -> bool:
    try:
        trio.current_time()
    except RuntimeError:
        return False
    return True


def _compile_inputs(
    config: BalancerConfig, log: EventLog
) -> tuple[list[bytes], dict[str, ServerTls]]:
    keys = read_keys(config)
    tls = build_all(config.listeners)
    log_certificate_warnings(tls.values(), log)  # served anyway: said at every load
    return keys, tls


class BalancerApp:
    """The balancer daemon: admin listener, HTTP(S) listeners, health checks."""

    def __init__(self, config: BalancerConfig, frame: Frame) -> None:
        self.config = config
        # workers > 1 (balancer.workers): this process is one of several sharing listeners
        # (its log says which: balancer.cli binds worker=<index>).
        self.worker = current_worker()
        self.frame = frame
        # With workers > 1 outside a worker, the supervisor refused the file and left its
        # start to report it; in a worker, the ports it shares with its siblings.
        running = None if self.worker is None else self.worker.count
        check_workers(config, self._config_file, workers=running)
        self.admin = AdminServer(frame)
        keys, tls = _compile_inputs(config, frame.log)
        # Built before trio runs (the CLI does, to report file errors early), the health
        # tables start at time 0; serve() moves them onto trio's clock.
        self._built_at = _now()
        self._clock_started = _clock_running()
        try:
            self.runtime = Runtime(config, keys=keys, tls=tls, now=self._built_at)
        except ValueError as exc:
            raise ConfigError(self._config_file, f"{exc} - at `$.stickiness.key_files`") from None
        # Targets registered through the admin API, applied on top of the file at every reload
        # and kept in the state file (written by this process alone: one worker owns it).
        # Applied before anything observes the runtime: they are this process's first targets.
        state = StateFile(state_directory(config.state_dir, STATE_DIR_FALLBACK))
        self._state = state
        self._running_state_dir = config.state_dir  # until a restart, whatever reloads say
        self.overrides = Overrides.restore(state.load(), config)
        self.overrides.check_totals(config, self._config_file, state.path)
        self._apply_saved_overrides(self._built_at)
        self.pools = Pools()
        self.cutoffs = DrainCutoffs()  # shared by the listeners, told by the runtime
        self.runtime.observers.append(self.cutoffs.on_events)
        self.stats = HttpStats()
        self._routes_known: BalancerConfig | None = None  # the config routes_known was told
        self.access_logs = AccessLogs(frame.log)
        self._unopenable: dict[str, OSError] = {}  # the last reopen's failures
        frame.on_reload_attempt.append(self.reopen_access_logs)
        self.checker = HealthChecker(self.runtime, frame.log, frame.metrics)
        # The listener and target group names the last scrape found gone (see _forget_gone).
        # ("listener" or "group", name) of those a reload removed, and when a scrape first
        # found them gone for good.
        self._gone_since: dict[tuple[str, str], float] = {}
        self.fail_open = FailOpenWatch(self.runtime, frame.log, frame.metrics)
        self.tls_metrics = TlsMetrics(
            frame.metrics, frame.log, lambda: list(self.runtime.current.tls.values())
        )
        frame.metrics.register_collector(self._collect_http)
        frame.metrics.register_collector(self._collect_access_logs)
        self.supervisor_pid = supervisor_pid()
        owns_state = self.worker is None or self.worker.primary
        self.targets_api = TargetsApi(
            self.runtime,
            self.overrides,
            frame.log,
            reload=self._reload_file,
            state=state if owns_state else None,
        )
        # The HTTP(S) listeners serving now, by name (the admin listener is not among them).
        self.listeners: dict[str, Listener] = {}
        if self.worker is not None and self.worker.count > 1:
            siblings = sibling_admins(config.admin, self.worker)
            if self.worker.primary:
                self.targets_api.peers = lambda path, body, authorization: forward(
                    siblings, path, body, authorization
                )
            else:
                self.targets_api.primary = siblings[0][1]
        self.targets_api.mount(self.admin)

    async def serve(self, frame: Frame, *, task_status: trio.TaskStatus[None]) -> None:
        if not self._clock_started:  # else seconds_in_state would count from trio's epoch
            self.runtime.shift_clock(trio.current_time() - self._built_at)
            self._clock_started = True
        with self._resources():
            try:
                # Before any listener: a log that cannot be written stops the start, naming
                # its file and key, instead of failing the first request.
                open_access_logs(self.access_logs, self.config)
            except ConfigError as exc:
                raise StartupError(str(exc)) from None
            admin_address = admin_settings(self.config.admin, self.worker)
            admin = await open_admin_listener(frame, admin_address, HttpLimits(), self.admin)
            if self.worker is not None and not self.worker.primary:
                self._catch_up_saved_overrides()
            listeners = [admin]
            for config in self.config.listeners:
                sockets = await bind_tcp(config.host, config.port, reuse_port=self._reuse_port)
                self.listeners[config.name] = self._listener(config, sockets)
                listeners.append(self.listeners[config.name])
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
            with undecodable_server_names_logged(self.frame.log):
                yield
        finally:
            self.pools.close()
            self.access_logs.close()

    def _collect_http(self) -> Iterable[Metric]:
        self._forget_gone()
        current = self.runtime.current
        for name in current.groups:  # every group's series, from 0
            self.stats.group_known(name)
        if current.config is not self._routes_known:  # every route's series, from 0
            self.stats.routes_known(
                (listener.config.name, listener.config.rules, listener.config.default_action)
                for listener in current.listeners.values()
            )
            self._routes_known = current.config
        # Connections to targets open now: idle in the pools, or held by a request in flight.
        open_now = self.pools.idle_by_group()
        for name, live in self.runtime.live.items():
            open_now[name] = open_now.get(name, 0) + sum(live.outstanding.values())
        groups = {name: open_now.get(name, 0) for name in current.groups}
        return self.stats.collect(groups)

    def _forget_gone(self) -> None:
        """At a scrape, drop the series of listeners and target groups a reload removed, once
        gone for good (a listener when its last connection ended, a group when the runtime
        forgot it, its last draining target gone) for ``REMOVED_SERIES_SECONDS``: every
        scraper (an HA pair of Prometheus servers, an operator's curl) gets their last counts
        in that time, not only the one whose scrape came first."""
        now = time.monotonic()  # also at the collector's registration, outside trio
        live_listeners = {li.name for li in self.config.listeners} | self.frame.listener_names()
        known_listeners = set(self.frame.connection_counts()) | self.stats.listeners()
        live_groups = set(self.runtime.live)
        known_groups = self.checker.counted_groups() | self.stats.groups()
        gone = {("listener", name) for name in known_listeners - live_listeners}
        gone |= {("group", name) for name in known_groups - live_groups}
        self._gone_since = {key: self._gone_since.get(key, now) for key in gone}
        dropped = {
            key for key, since in self._gone_since.items() if now - since >= REMOVED_SERIES_SECONDS
        }
        keep_listeners = (known_listeners | live_listeners) - {
            name for kind, name in dropped if kind == "listener"
        }
        keep_groups = (known_groups | live_groups) - {
            name for kind, name in dropped if kind == "group"
        }
        self.frame.forget_listeners(keep_listeners)
        self.stats.retain(keep_listeners, keep_groups)
        self.checker.forget_groups(keep_groups)

    def _collect_access_logs(self) -> Iterable[Metric]:
        errors = CounterMetricFamily(
            PREFIX + "access_log_write_errors",
            "Access log writes and flushes that failed (a full disk); their lines are lost.",
            labels=["destination"],
        )
        for destination, count in sorted(self.access_logs.statistics().items()):
            errors.add_metric([destination], count)
        return [errors]

    @property
    def _reuse_port(self) -> bool:
        return self.worker is not None  # every worker binds its own socket (SO_REUSEPORT)

    def _apply_saved_overrides(self, now: float) -> list[TargetStateChanged]:
        """At start: the file's targets under the saved API changes, before any traffic (at
        construction also before any observer: nothing logs or counts these steps).

        Returns:
            The events of the targets that left at once, for observers there are.
        """
        snapshot = self.overrides.apply(self.runtime.current)
        if snapshot is self.runtime.current:
            return []
        self.runtime.install(snapshot, now)
        # Targets deregistered through the API before the restart were never registered in
        # this process: they leave at once (nothing can be in flight to them), and are not
        # listed as draining for a deregistration delay, as targets that left early are.
        events: list[TargetStateChanged] = []
        for live in self.runtime.live.values():
            for record in list(live.health):
                if record.state is TargetState.DRAINING:
                    events += live.health.target_idle(record.target_id, now)
            live.health.departed(math.inf)  # forgets every target that left
        return events

    def _catch_up_saved_overrides(self) -> None:
        """A worker other than 0, once its admin port is bound and before any traffic: the
        API changes worker 0 saved since this process read the state file. Worker 0 forwards
        each change to this port after saving it, so one saved while this worker was starting
        (a crash's replacement) met a closed port and would be missing here until the next
        restart. From the bind on, forwards wait in the backlog and apply after this one; a
        change read here and forwarded again is a no-op (register and deregister are)."""
        try:
            saved = self._state.load()
        except ConfigError as exc:  # the start read it: keep what was read then
            self.frame.log.warning("targets.state_unreadable", error=str(exc))
            return
        restored = Overrides.restore(saved, self.config)
        if restored.dump() == self.overrides.dump():
            return
        self.overrides.assign(restored)
        self.runtime.notify(self._apply_saved_overrides(trio.current_time()))
        self.frame.log.info("targets.caught_up", file=str(self._state.path))

    def _listener(self, config: ListenerConfig, sockets: list[trio.SocketListener]) -> Listener:
        """One configured listener on ``sockets``, its handler wrapped (TLS first for https)."""
        name = config.name
        draining = Draining()  # started by a stop of the daemon or of this listener alone
        services = ListenerServices(
            name,
            self.runtime,
            self.pools,
            self.stats,
            self.access_logs,
            draining,
            self.frame.log,
            self.cutoffs,
        )
        self.stats.listener_started(name)
        handler = HttpListenerHandler(services)
        limit = config.limits.connections + REJECT_HEADROOM
        if not isinstance(config, HttpsListener):
            return Listener(name, sockets, handler.handle, max_connections=limit, draining=draining)

        async def handle_tls(stream: trio.SocketStream) -> None:
            tls = self.runtime.current.tls.get(name)
            if tls is None:
                return  # no longer an https listener in this generation
            sock = stream.socket
            addresses = fastio.accepted_addresses(sock)
            if addresses is None:  # reset before the handshake: nothing to answer
                self.stats.connection_not_served(name)  # but a TCP connection, as ALB counts
                return
            peer, local = addresses
            self.stats.connection_opened(name)  # a TCP connection, handshake or not (as ALB)
            try:
                await serve_tls(stream, tls, peer, local)
            finally:
                self.stats.connection_closed(name)

        async def serve_tls(
            stream: trio.SocketStream, tls: ServerTls, peer: Any, local: Any
        ) -> None:
            sock = stream.socket
            # One deadline from the accept for the wait below and the handshake both: a
            # client idling until just before it must not get a second full timeout.
            deadline = trio.current_time() + tls.handshake_timeout
            if not fastio.readable_now(sock.fileno()):
                # Until its hello arrives a client is idle: a stop closes it at once, as it
                # does an idle keep-alive connection (not after the handshake timeout).
                with draining.idle(deadline) as wait:
                    await trio.lowlevel.wait_readable(sock)
                if wait.cancelled_caught:
                    if not draining.started:
                        self.tls_metrics.handshake_failed(name, "timeout")
                    return
            accepted = await accept_tls(stream, tls, self.tls_metrics, deadline=deadline)
            if accepted is None:
                return
            tune_socket(accepted.stream.socket)  # after SocketStream, which sets trio's 16 KiB
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
                await handler.serve(accepted.stream, info, counted=True)
            finally:
                close_tls(accepted)  # close_notify if it fits now, never waits

        return Listener(name, sockets, handle_tls, max_connections=limit, draining=draining)

    async def _housekeeping(self) -> None:
        while True:
            await trio.sleep(HOUSEKEEPING_SECONDS)
            self.pools.prune(trio.current_time())
            self.access_logs.flush()

    def reopen_access_logs(self) -> None:
        """Open the running configuration's access log files again (logrotate's ``mv`` then
        SIGHUP, as nginx's reopen), whatever becomes of the new file. One that cannot be
        opened is logged (``access_log.reopen_failed``), keeps its open file, and is kept in
        ``_unopenable`` for the reload that follows (its new file may not keep it).
        """
        failed = self.access_logs.reopen_all()
        for destination, exc in failed.items():
            reason = exc.strerror or str(exc)
            self.frame.log.error("access_log.reopen_failed", destination=destination, error=reason)
        self._unopenable = failed

    async def reload(self, config: BalancerConfig) -> None:
        """Swap in a new generation, or raise ConfigError with the old one serving.

        The access logs were reopened when the reload began (``Frame.on_reload_attempt``),
        before the file was read: a reload refused, for any reason, still rotates them.
        """
        unopenable, self._unopenable = self._unopenable, {}
        if self.frame.draining.started:
            raise ConfigError(self._config_file, "the balancer is stopping")
        running_workers = 1 if self.worker is None else self.worker.count
        # A new listener needs a fixed port with the workers running; a new count applies at
        # the next start, which must accept it (the check check-config and the start make).
        check_workers(config, self._config_file, workers=running_workers)
        if config.workers != running_workers:
            check_workers(config, self._config_file)
        keys, tls = _compile_inputs(config, self.frame.log)
        open_access_logs(self.access_logs, config, unopenable=unopenable)  # the new ones
        try:
            removed, taken_over, bound = await self._install(config, keys, tls)
        except BaseException:
            # Refused: the files this reload opened for its new destinations are closed
            # (each refused reload held one more open, created for nothing).
            self.access_logs.retain(_access_log_destinations(self.config))
            raise
        self.access_logs.retain(_access_log_destinations(config))
        # Against what runs, not the last file: 1 -> 2 -> 2 needs a restart at both reloads.
        if config.workers != running_workers:
            self.frame.log.warning("config.restart_required", section="workers")
        if config.state_dir != self._running_state_dir:
            # The targets API's state file was opened at start: registrations go on being
            # written where they were, and the new directory is read at the next start.
            self.frame.log.warning("config.restart_required", section="state_dir")
        self.config = config
        with trio.CancelScope(shield=True):  # short, and never to be left halfway
            await self._switch_listeners(config, removed, taken_over, bound)

    async def _install(
        self, config: BalancerConfig, keys: list[bytes], tls: dict[str, ServerTls]
    ) -> tuple[list[str], dict[str, Listener], dict[str, list[trio.SocketListener]]]:
        """Compile, bind and install ``config``'s generation, or raise with none of it left;
        the listeners to remove, those taking over a removed one's sockets, and the new
        sockets, for :meth:`_switch_listeners`."""
        try:
            snapshot = self.runtime.compile(config, keys, tls)
        except ValueError as exc:
            raise ConfigError(self._config_file, f"{exc} - at `$.stickiness.key_files`") from None
        removed, added = self._listener_changes(config)
        taken_over = self._take_over(config, removed, added)
        handed = {id(listener) for listener in taken_over.values()}
        # Removed listeners whose sockets go away: they may be stopped early to free an address.
        movable = {
            name: self.listeners[name].addresses
            for name in removed
            if name in self.listeners and id(self.listeners[name]) not in handed
        }
        vacated: dict[str, list[Address]] = {}  # those stopped early, and where they were
        bound = await self._bind(
            config, [name for name in added if name not in taken_over], movable, vacated
        )
        try:
            async with self.targets_api.lock:
                await self._prune_overrides(config)  # only once the new generation compiled
                self.runtime.install(self.overrides.apply(snapshot), trio.current_time())
        except BaseException:
            await _close(bound)
            await self._restore(vacated)
            raise
        return removed, taken_over, bound

    @property
    def _config_file(self) -> str:
        """The configuration file, as the app's refusals name it."""
        path = self.frame.config_path
        return "<config>" if path is None else str(path)

    async def _prune_overrides(self, config: BalancerConfig) -> None:
        """Forget the API changes ``config`` makes moot, in the state file first."""
        pruned = self.overrides.copy()
        pruned.prune(config)
        state = self.targets_api.state
        pruned.check_totals(config, self._config_file, None if state is None else state.path)
        if state is not None and pruned.dump() != self.overrides.dump():
            try:
                await state.save_async(pruned)
            except OSError as exc:
                raise ConfigError(state.path, f"cannot write the state file: {exc}") from None
        self.overrides.assign(pruned)

    def _listener_changes(self, config: BalancerConfig) -> tuple[list[str], list[str]]:
        """(removed, added) listener names: a listener moved or changed protocol is in both.

        A listener configured on port 0 stays when the new file names the port it got.
        """
        old = {li.name: li for li in self.config.listeners}
        new = {li.name: li for li in config.listeners}

        def stays(name: str) -> bool:
            before, after = old.get(name), new.get(name)
            if before is None or after is None:
                return False
            if _where(before) == _where(after):
                return True
            serving = self.listeners.get(name)
            return (
                _where(before) == (_host_key(after.host), 0, type(after).__name__)
                and serving is not None
                and after.port in {port for _, port in serving.addresses}
            )

        return [name for name in old if not stays(name)], [name for name in new if not stays(name)]

    def _take_over(
        self, config: BalancerConfig, removed: list[str], added: list[str]
    ) -> dict[str, Listener]:
        """Added listeners that reuse the socket of a removed one on the same fixed address."""
        leaving = {
            (_host_key(li.host), li.port): self.listeners[li.name]
            for li in self.config.listeners
            if li.name in removed and li.port != 0 and li.name in self.listeners
        }
        new = {li.name: li for li in config.listeners}
        found: dict[str, Listener] = {}
        for name in added:
            old = leaving.pop((_host_key(new[name].host), new[name].port), None)
            if old is not None:
                found[name] = old
        return found

    async def _bind(
        self,
        config: BalancerConfig,
        names: list[str],
        movable: dict[str, list[Address]],
        vacated: dict[str, list[Address]],
    ) -> dict[str, list[trio.SocketListener]]:
        """Bind the listeners ``names`` of ``config``, or raise ConfigError with none bound
        (and those of ``movable`` stopped to make way serving again).

        ``movable``: removed listeners (by name, with their addresses) that may be stopped
        early, when an address they hold blocks a new listener; those stopped go to
        ``vacated``.
        """
        bound: dict[str, list[trio.SocketListener]] = {}
        try:
            for i, listener in enumerate(config.listeners):
                if listener.name not in names:
                    continue
                try:
                    try:
                        bound[listener.name] = await bind_tcp(
                            listener.host, listener.port, reuse_port=self._reuse_port
                        )
                    except OSError as exc:
                        if exc.errno != errno.EADDRINUSE or not await self._make_way(
                            config, listener, movable, vacated
                        ):
                            raise
                        bound[listener.name] = await bind_tcp(
                            listener.host, listener.port, reuse_port=self._reuse_port
                        )
                except OSError as exc:
                    where = _format_address(listener.host, listener.port)
                    raise ConfigError(
                        self._config_file,
                        f"listener {listener.name!r} cannot bind {where}: "
                        f"{exc.strerror or exc} - at `$.listeners[{i}]`",
                    ) from None
        except BaseException:
            await _close(bound)
            await self._restore(vacated)
            raise
        return bound

    async def _make_way(
        self,
        config: BalancerConfig,
        listener: ListenerConfig,
        movable: dict[str, list[Address]],
        vacated: dict[str, list[Address]],
    ) -> bool:
        """Stop the removed listeners whose sockets keep ``listener`` from binding; whether
        there were any (a port held by anything else is no reason to stop one)."""
        if listener.port == 0:
            return False
        held = {name: where for name, where in movable.items() if name not in vacated}
        blocking = in_the_way(held, await passive_addresses(listener.host, listener.port))
        for name in blocking:
            old = self.listeners.pop(name)
            vacated[name] = held[name]
            self.frame.log.info("listener.making_way", name=name, to=listener.name)
            await self.frame.stop_listener(old, config.lifecycle.grace_period_seconds)
        return bool(blocking)

    async def _restore(self, vacated: dict[str, list[Address]]) -> None:
        """Serve the listeners stopped early again, on their old addresses and configuration
        (the reload that stopped them is refused)."""
        old_configs = {li.name: li for li in self.config.listeners}
        with trio.CancelScope(shield=True):  # short, and the old config must keep serving
            for name, addresses in vacated.items():
                sockets: list[trio.SocketListener] = []
                try:
                    for host, port in addresses:
                        sockets += await bind_tcp(host, port, reuse_port=self._reuse_port)
                except OSError as exc:
                    await _close({name: sockets})
                    self.frame.log.error("listener.restore_failed", name=name, error=str(exc))
                    continue
                listener = self._listener(old_configs[name], sockets)
                try:
                    await self.frame.add_listener(listener)
                except RuntimeError:  # the daemon began to stop meanwhile
                    continue
                self.listeners[name] = listener
            vacated.clear()

    async def _switch_listeners(
        self,
        config: BalancerConfig,
        removed: list[str],
        taken_over: dict[str, Listener],
        bound: dict[str, list[trio.SocketListener]],
    ) -> None:
        """Stop the removed listeners (they drain), then serve the added ones."""
        grace = config.lifecycle.grace_period_seconds
        handed = {id(listener) for listener in taken_over.values()}
        for name in removed:
            old = self.listeners.pop(name, None)
            if old is not None:
                await self.frame.stop_listener(old, grace, keep_sockets=id(old) in handed)
        for listener_config in config.listeners:
            name = listener_config.name
            if name in taken_over:
                sockets = list(taken_over[name].sockets)
            elif name in bound:
                sockets = bound.pop(name)
            else:  # it stays, serving: only its connection bound may have changed
                serving = self.listeners.get(name)
                if serving is not None:
                    limit = listener_config.limits.connections + REJECT_HEADROOM
                    serving.set_max_connections(limit)
                continue
            listener = self._listener(listener_config, sockets)
            try:
                await self.frame.add_listener(listener)
            except RuntimeError:  # the daemon began to stop meanwhile; the sockets are closed
                self.frame.log.warning("listener.not_started", name=name)
                continue
            self.listeners[name] = listener

    async def _reload_file(self) -> str | None:
        """``POST /reload``: what SIGHUP does (the Daemon sets ``frame.reload`` after build)."""
        if self.frame.reload is None:
            return "no daemon to reload this configuration"
        return await self.frame.reload()


def _access_log_destinations(config: BalancerConfig) -> set[str]:
    return {li.access_log.destination for li in config.listeners if li.access_log.enabled}


def _where(listener: ListenerConfig) -> tuple[object, int, str]:
    return _host_key(listener.host), listener.port, type(listener).__name__


def _host_key(host: str) -> object:
    """A listen host as the bind takes it: "0::" and "::" (or "127.1" and "127.0.0.1") are
    one address, so a reload that only writes it another way keeps the listener's socket
    rather than closing it (resetting the connections in its accept queue) and binding
    again. A DNS name is its name."""
    addresses = listen_addresses(host)
    return host.lower().removesuffix(".") if addresses is None else addresses


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _close(bound: dict[str, list[trio.SocketListener]]) -> None:
    with trio.CancelScope(shield=True):
        for sockets in bound.values():
            for sock in sockets:
                await sock.aclose()


def build(config: BalancerConfig, frame: Frame) -> BalancerApp:
    return BalancerApp(config, frame)
