"""The daemon frame: bind, notify READY, reload on SIGHUP, drain on SIGTERM.

Task tree of a running daemon (every task has an owner)::

    run_daemon
    └── control nursery
        ├── app.serve(frame)          the daemon's own resources (store, health checkers, ...)
        │   └── frame.serve_listeners   listener nursery: open until stop
        │       └── one task per listener (more join and leave on a reload: add/stop_listener)
        │           └── handler nursery   one task per connection; grace deadline at stop
        │               └── accept nursery  one accept loop per socket; cancelled at stop
        ├── watchdog pings            when the unit sets WatchdogSec
        └── signal forwarder          SIGHUP -> reload, SIGTERM/SIGINT -> stop,
                                      SIGINT while stopping -> cut the drain short

Stopping (hypercorn's pattern): cancel the accept loops, close idle keep-alive connections at
once, let busy ones finish their request within ``grace_period_seconds``, then cancel what is
left. Only after the handler nursery has closed does ``app.serve`` release its resources, so a
request in flight never finds the store gone. :meth:`Frame.stop_listener` does the same for one
listener while the others serve on (a listener removed by a reload).
"""

from __future__ import annotations

import contextlib
import errno
import math
import resource
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Generic, Protocol, TypeVar

import trio
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from monitoring import fastio
from monitoring.configfile import ConfigError, load
from monitoring.httpserver import Draining
from monitoring.logging import EventLog
from monitoring.metrics import Metrics
from monitoring.sdnotify import Notifier
from monitoring.settings import (
    AdminSettings,
    LifecycleSettings,
    LoggingSettings,
    host_port,
    same_listen_host,
)
from monitoring.throttle import Throttle

# accept() errors that mean "out of a resource right now", not "this listener is broken":
# back off and retry, as trio's serve_listeners does, instead of dying.
ACCEPT_CAPACITY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_BACKOFF_SECONDS: Final = 0.1
# While descriptors stay exhausted the backoff retries ten times a second: one log line per
# listener and interval says so (nginx and HAProxy log it once), the metric counts them all.
ACCEPT_FAILED_LOG_INTERVAL_SECONDS: Final = 60.0
# Descriptors a process needs beyond its connections: listening sockets, log and state
# files, the event loop's own, a few outgoing connections.
DESCRIPTOR_HEADROOM: Final = 256
# Connections accepted one after the other before the accept loop yields to the others.
ACCEPT_BURST: Final = 16
LISTEN_BACKLOG: Final = 0xFFFF  # as trio asks; the kernel caps it at net.core.somaxconn


class DaemonConfig(Protocol):
    """The sections every daemon's configuration has."""

    @property
    def admin(self) -> AdminSettings: ...
    @property
    def logging(self) -> LoggingSettings: ...
    @property
    def lifecycle(self) -> LifecycleSettings: ...


C = TypeVar("C", bound=DaemonConfig)
ConnectionHandler = Callable[[trio.SocketStream], Awaitable[None]]


@dataclass
class Listener:
    """Sockets bound for one purpose ("admin", "api", a balancer listener) and their handler."""

    name: str
    sockets: Sequence[trio.SocketListener]
    handler: ConnectionHandler
    max_connections: int = 10000
    active: int = 0
    accepted: int = 0
    # This listener's own drain: started by Frame.stop and by Frame.stop_listener. Handlers
    # that close idle connections on a drain watch it (frame.draining covers the whole daemon).
    draining: Draining = field(default_factory=Draining)
    # Accepts on while the others drain, stopping once they are done: the admin listener, so
    # that /readyz answers 503 (and /metrics shows the drain) while requests finish.
    serves_the_drain: bool = False
    _accept_scope: trio.CancelScope | None = field(default=None, repr=False)
    _handler_scope: trio.CancelScope | None = field(default=None, repr=False)
    _accepting_done: trio.Event = field(default_factory=trio.Event, repr=False)
    _stop_deadline: float = field(default=math.inf, repr=False)
    _keep_sockets: bool = field(default=False, repr=False)
    _served: trio.Event = field(default_factory=trio.Event, repr=False)
    # One count of open connections for all of the listener's sockets: ``localhost``
    # binds 127.0.0.1 and ::1, and max_connections is the listener's, not each socket's.
    _limiter: trio.CapacityLimiter | None = field(default=None, repr=False)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [s.socket.getsockname()[:2] for s in self.sockets]

    def set_max_connections(self, max_connections: int) -> None:
        """Change the bound of a serving listener (a reload): a higher one lets the clients
        waiting in the backlog in at once, a lower one lets no more in until enough leave."""
        self.max_connections = max_connections
        if self._limiter is not None:
            self._limiter.total_tokens = max_connections


class StartupError(Exception):
    """The daemon cannot start, for a reason the operator can fix; the message says which.

    Raised by :meth:`Daemon.run` for an ``OSError`` (an address in use, a file it cannot
    read), a ``ConfigError`` (a file the configuration names is refused: a key, a CA bundle)
    or a ``StartupError`` of the app while it starts; the command line prints the
    message alone, without a traceback, and exits 1.
    """


class DaemonFailed(Exception):
    """The daemon stopped itself because it cannot go on (:meth:`Frame.fail`); the message
    says why. The command line prints it and exits 1, so that systemd restarts the daemon."""


def startup_reason(error: BaseException) -> str:
    """The one-line reason an error gives, with the notes added on its way up."""
    if isinstance(error, OSError) and error.strerror:
        reason = error.strerror + (f": {error.filename}" if error.filename else "")
    else:
        reason = str(error) or type(error).__name__
    notes = getattr(error, "__notes__", ())
    return ": ".join([*notes, reason])


async def bind_tcp(host: str, port: int, *, reuse_port: bool = False) -> list[trio.SocketListener]:
    """Bind ``host:port`` (port 0 = any free port) with SO_REUSEADDR, as trio does.

    Args:
        host: address to listen on (every address it resolves to is bound).
        port: TCP port; 0 picks a free one.
        reuse_port: also set SO_REUSEPORT, so that several processes (workers) bind the same
            address and the kernel spreads new connections across their sockets.
    """
    try:
        return await _bind_tcp(host, port, reuse_port=reuse_port)
    except OSError as error:
        error.add_note(f"cannot bind {host_port(host or '*', port)}")
        raise


async def _bind_tcp(host: str, port: int, *, reuse_port: bool) -> list[trio.SocketListener]:
    if not reuse_port:
        return list(await trio.open_tcp_listeners(port, host=host))
    found = await trio.socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    listeners: list[trio.SocketListener] = []
    try:
        for family, kind, proto, _, address in found:
            sock = trio.socket.socket(family, kind, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:  # as trio does: one family per socket
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                await sock.bind(address)
                sock.listen(LISTEN_BACKLOG)
            except BaseException:
                sock.close()
                raise
            listeners.append(trio.SocketListener(sock))
    except BaseException:
        for listener in listeners:
            listener.socket.close()
        raise
    return listeners


class DaemonStopping(Exception):
    """A reload asked of a daemon that has begun to stop (an admin route answers 503)."""


@dataclass
class Frame:
    """What the lifecycle gives a daemon's app: connection serving with drain, log, metrics."""

    log: EventLog
    metrics: Metrics
    ready: bool = False  # every listener bound and not yet draining: what /readyz reports
    draining: Draining = field(default_factory=Draining)
    listeners: list[Listener] = field(default_factory=list)
    # Set by the Daemon: re-read the configuration file now, as SIGHUP does, and return None
    # or the reason it was refused (an admin route's "reload" calls it and reports the outcome).
    reload: Callable[[], Awaitable[str | None]] | None = None
    # Set by the Daemon: stop now, as SIGTERM does, then exit with this reason (status 1).
    fail: Callable[[str], None] | None = None
    # Set by the Daemon: the configuration file (None: embedded defaults), for the app's errors.
    config_path: Path | None = None
    # Called at every reload, before the file is read: what a SIGHUP must do even when the new
    # file is refused (the balancer reopens its access logs for logrotate, as nginx does).
    on_reload_attempt: list[Callable[[], object]] = field(default_factory=list)
    # Set by the admin listener: the bearer token its requests that change state need from
    # now on (None: loopback clients only), which a reload reads anew from admin.token_file.
    use_admin_token: Callable[[bytes | None], None] | None = None
    _stop_deadline: float = math.inf
    _nursery: trio.Nursery | None = None
    _stopped: trio.Event = field(default_factory=trio.Event)
    # Listeners stopped alone (stop_listener) whose connections are still finishing, and the
    # connections accepted by those already gone: the accepted counter never goes backwards.
    _retiring: list[Listener] = field(default_factory=list)
    _accepted_before: dict[str, int] = field(default_factory=dict)
    _accept_failures: Throttle = field(
        default_factory=lambda: Throttle(ACCEPT_FAILED_LOG_INTERVAL_SECONDS)
    )

    async def serve_listeners(
        self,
        listeners: Sequence[Listener],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept on every listener until :meth:`stop`, then wait for connections to finish.

        Listeners added later (:meth:`add_listener`) are served the same way.
        """
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                await nursery.start(self._serve_one, listener)
            self._nursery = nursery
            task_status.started()
            await self._stopped.wait()
            for listener in [*self.listeners, *self._retiring]:
                if not listener.serves_the_drain:
                    await listener._served.wait()
            for listener in [*self.listeners, *self._retiring]:
                if listener.serves_the_drain:  # the others are done: now these stop too
                    self._stop_accepting(listener)
        self._nursery = None

    async def add_listener(self, listener: Listener) -> None:
        """Serve ``listener`` too, from now until it is stopped or the daemon stops.

        Raises:
            RuntimeError: the frame is not serving (before serve_listeners, or after stop);
                the listener's sockets are closed.
        """
        if self._nursery is None or self._stopped.is_set():
            for sock in listener.sockets:
                await sock.aclose()
            raise RuntimeError("the daemon is not serving listeners")
        await self._nursery.start(self._serve_one, listener)

    async def stop_listener(
        self, listener: Listener, grace_period: float, *, keep_sockets: bool = False
    ) -> None:
        """Stop accepting on ``listener`` alone, as :meth:`stop` does for every listener.

        Returns once no accept loop runs on its sockets; its connections in flight go on
        finishing (idle ones close now, busy ones get ``grace_period`` seconds) while the
        other listeners serve.

        Args:
            keep_sockets: leave the listening sockets open, for another Listener to accept on
                (a listener whose handler changes but whose address stays); else close them.
        """
        if listener in self.listeners:
            self.listeners.remove(listener)
            self._retiring.append(listener)
        listener._keep_sockets = keep_sockets
        listener._stop_deadline = min(listener._stop_deadline, trio.current_time() + grace_period)
        if not listener.draining.started:
            listener.draining.start()
        if listener._handler_scope is not None:
            listener._handler_scope.deadline = min(self._stop_deadline, listener._stop_deadline)
        if listener._accept_scope is not None:
            listener._accept_scope.cancel()
            await listener._accepting_done.wait()
        self.log.info("listener.stopped", name=listener.name)

    def stop(self, grace_period: float) -> None:
        """Stop accepting; idle connections close now, busy ones get ``grace_period`` seconds.

        Called again while stopping, it can only shorten the time left (``stop(0)`` cuts
        what is in flight now).
        """
        if not self.draining.started:
            self.draining.start()
        self._stop_deadline = min(self._stop_deadline, trio.current_time() + grace_period)
        for listener in [*self.listeners, *self._retiring]:
            # One that serves the drain stops once the others are done; if it is stopping
            # already, a shorter time left (stop(0)) applies to its connections too.
            if not listener.serves_the_drain or listener.draining.started:
                self._stop_accepting(listener)
        self._stopped.set()

    def _stop_accepting(self, listener: Listener) -> None:
        if not listener.draining.started:
            listener.draining.start()
        if listener._accept_scope is not None:
            listener._accept_scope.cancel()
        if listener._handler_scope is not None:
            listener._handler_scope.deadline = min(self._stop_deadline, listener._stop_deadline)

    def listener_names(self) -> set[str]:
        """The names of the listeners serving or finishing their connections."""
        return {listener.name for listener in [*self.listeners, *self._retiring]}

    def forget_listeners(self, keep: Iterable[str]) -> None:
        """Drop the series of the listeners gone for good: not named in ``keep`` (the
        configuration's), neither serving nor finishing their connections.

        Kept, every listener name a reload ever retired stayed in ``/metrics`` (its accepted
        connections, handler and accept errors) until the daemon stopped. A listener added
        again later under the same name starts from 0, a counter reset ``rate()`` handles.
        """
        live = {*keep, *self.listener_names()}
        for name in [name for name in self._accepted_before if name not in live]:
            del self._accepted_before[name]
            self.metrics.handler_errors.remove(name)
            for code in errno.errorcode.values():
                self.metrics.accept_errors.remove(name, code)

    def connection_counts(self) -> dict[str, tuple[int, int]]:
        """Per listener name: (open connections, connections accepted since start)."""
        counts = {name: (0, total) for name, total in self._accepted_before.items()}
        for lst in [*self.listeners, *self._retiring]:
            active, accepted = counts.get(lst.name, (0, 0))
            counts[lst.name] = (active + lst.active, accepted + lst.accepted)
        return counts

    async def _serve_one(
        self, listener: Listener, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """One listener's accept loops and connections, until it or the daemon stops."""
        self.listeners.append(listener)
        self.metrics.handler_errors.labels(listener.name)  # the series exists at 0 from now
        for number in sorted(ACCEPT_CAPACITY_ERRNOS):
            self.metrics.accept_errors.labels(listener.name, errno.errorcode[number])
        if listener._limiter is None:
            listener._limiter = trio.CapacityLimiter(listener.max_connections)
        for address in listener.addresses:
            self.log.info("listener.bound", name=listener.name, addr=_format(address))
        try:
            async with trio.open_nursery() as handlers:
                listener._handler_scope = handlers.cancel_scope
                handlers.cancel_scope.deadline = min(self._stop_deadline, listener._stop_deadline)
                try:
                    async with trio.open_nursery() as accepting:
                        listener._accept_scope = accepting.cancel_scope
                        if listener.draining.started or (
                            self.draining.started and not listener.serves_the_drain
                        ):
                            accepting.cancel_scope.cancel()
                        for sock in listener.sockets:
                            accepting.start_soon(
                                self._accept_loop, listener, listener._limiter, sock, handlers
                            )
                        task_status.started()
                finally:
                    # Closing a listening socket does not wait on any peer; shield it so that
                    # a cancellation still releases the port.
                    with trio.CancelScope(shield=True):
                        if not listener._keep_sockets:
                            for sock in listener.sockets:
                                await sock.aclose()
                    listener._accepting_done.set()
        finally:
            listener._served.set()
            if listener in self._retiring:
                self._retiring.remove(listener)
                before = self._accepted_before.get(listener.name, 0)
                self._accepted_before[listener.name] = before + listener.accepted

    async def _accept_loop(
        self,
        listener: Listener,
        limiter: trio.CapacityLimiter,
        sock: trio.SocketListener,
        handlers: trio.Nursery,
    ) -> None:
        # A full house stops accept(): new clients wait in the kernel's backlog instead of
        # being accepted and dropped, as HAProxy's maxconn does.
        in_a_row = 0  # connections taken from the backlog without a trip through the scheduler
        # The limiter is shared by the listener's sockets: a loop that held a slot while it
        # waited for a client would keep it from a sibling socket whose client is waiting.
        shared = len(listener.sockets) > 1
        while True:
            token = object()  # the connection's slot; its handler task releases it
            try:
                limiter.acquire_on_behalf_of_nowait(token)
            except trio.WouldBlock:
                await limiter.acquire_on_behalf_of(token)
            if shared and not fastio.readable_now(sock.socket.fileno()):
                limiter.release_on_behalf_of(token)
                await trio.lowlevel.wait_readable(sock.socket)
                continue
            in_a_row += 1
            try:
                stream = await fastio.accept(sock, checkpoint=in_a_row % ACCEPT_BURST == 0)
            except OSError as exc:
                limiter.release_on_behalf_of(token)
                if exc.errno in ACCEPT_CAPACITY_ERRNOS:
                    self._accept_failed(listener, exc)
                    await trio.sleep(ACCEPT_BACKOFF_SECONDS)
                    continue
                raise
            except BaseException:
                limiter.release_on_behalf_of(token)
                raise
            listener.accepted += 1
            listener.active += 1
            handlers.start_soon(self._run_handler, listener, stream, limiter, token)

    def _accept_failed(self, listener: Listener, error: OSError) -> None:
        code = errno.errorcode.get(error.errno or 0, str(error.errno))
        self.metrics.accept_errors.labels(listener.name, code).inc()
        held_back = self._accept_failures.admit(listener.name)
        if held_back is not None:
            self.log.error(
                "listener.accept_failed",
                name=listener.name,
                error=str(error),
                retry_in_seconds=ACCEPT_BACKOFF_SECONDS,
                held_back=held_back,
            )

    async def _run_handler(
        self,
        listener: Listener,
        stream: trio.SocketStream,
        limiter: trio.CapacityLimiter,
        token: object,
    ) -> None:
        try:
            await listener.handler(stream)
        except Exception as exc:
            # A bug in one connection stays in that connection.
            self.log.exception("connection.handler_failed", exc, listener=listener.name)
            self.metrics.handler_errors.labels(listener.name).inc()
        finally:
            listener.active -= 1
            limiter.release_on_behalf_of(token)
            # What the stream's aclose() does, without its checkpoint (a trip through the
            # scheduler per connection): closing a socket never waits on the peer.
            stream.socket.close()


def connection_metrics(frame: Frame) -> Callable[[], Iterable[Metric]]:
    """A scrape-time collector of open and accepted connections per listener."""

    def collect() -> Iterable[Metric]:
        open_ = GaugeMetricFamily(
            "wharf_connections_open", "Connections open now, per listener.", labels=["listener"]
        )
        accepted = CounterMetricFamily(
            "wharf_connections_accepted",
            "Connections accepted since start, per listener.",
            labels=["listener"],
        )
        for name, (active, total) in sorted(frame.connection_counts().items()):
            open_.add_metric([name], active)
            accepted.add_metric([name], total)
        return [open_, accepted]

    return collect


def descriptors_needed(listeners: Iterable[Listener]) -> int:
    """Open files a process needs for its listeners' connection limits, plus headroom."""
    return sum(listener.max_connections for listener in listeners) + DESCRIPTOR_HEADROOM


def warn_if_descriptors_short(listeners: Iterable[Listener], log: EventLog) -> None:
    """Warn once when RLIMIT_NOFILE cannot hold the configured connection limits.

    Past the limit accept() fails with EMFILE and clients wait in the backlog: better said
    at the start, with the fix, than found in the middle of a peak (nginx warns likewise,
    "worker_connections exceed open file resource limit").
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = descriptors_needed(listeners)
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning(
            "daemon.open_files_limit_low",
            limit=soft,
            needed=needed,
            fix="raise LimitNOFILE= in the systemd unit (ulimit -n by hand) "
            "or lower the listeners' connection limits",
        )


def _format(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


C_contra = TypeVar("C_contra", contravariant=True)


class App(Protocol[C_contra]):
    """A daemon's own work, plugged into the frame."""

    async def serve(self, frame: Frame, *, task_status: trio.TaskStatus[None]) -> None:
        """Bind, call ``task_status.started()``, serve until ``frame`` stops, release."""

    async def reload(self, config: C_contra) -> None:
        """Apply a new, already validated config; raise ConfigError to refuse it."""


@dataclass(frozen=True)
class DaemonSpec(Generic[C]):
    """How the lifecycle builds one daemon: its name, schema and app factory."""

    name: str
    schema: type[C]
    build: Callable[[C, Frame], App[C]]
    version: str = "0.0.0"


class Daemon(Generic[C]):
    """A running daemon: its config, frame and app, and the controls signals also use."""

    def __init__(
        self,
        spec: DaemonSpec[C],
        config: C,
        *,
        config_path: Path | None,
        notifier: Notifier | None = None,
        log: EventLog | None = None,
    ) -> None:
        self.spec = spec
        self.config = config
        self.config_path = config_path
        self.notifier = notifier or Notifier(None)
        self.log = log or EventLog(spec.name, level=config.logging.level)
        self.metrics = Metrics(spec.name, version=spec.version)
        self.frame = Frame(self.log, self.metrics, config_path=config_path)
        self.metrics.register_collector(connection_metrics(self.frame))
        self.app = spec.build(config, self.frame)
        self._commands_send, self._commands = trio.open_memory_channel[str](16)
        # One reload at a time, whether SIGHUP or an admin route asked for it.
        self._reload_lock = trio.Lock()
        self.frame.reload = self.reload
        self.frame.fail = self.fail
        self.failure: str | None = None
        self._stopping = False
        # A second SIGINT (Ctrl-C) gave up on the grace period; the command line exits 130.
        self.drain_cut_short = False
        self._bound_admin = config.admin  # a changed admin address applies at a restart

    def request_reload(self) -> None:
        self._command("reload")

    def request_stop(self) -> None:
        self._command("stop")

    def _command(self, command: str) -> None:
        if self._stopping:
            return  # nothing reads commands any more; the stop under way goes on
        try:
            self._commands_send.send_nowait(command)
        except trio.WouldBlock:
            pass  # sixteen commands wait already: a burst of signals, one more adds nothing

    def fail(self, reason: str) -> None:
        """Stop because the app cannot go on: not ready at once, drained, then DaemonFailed."""
        if self.failure is None:
            self.failure = reason
            self.frame.ready = False
            self.notifier.status(f"failed: {reason}")
            self.request_stop()

    async def run(
        self,
        *,
        handle_signals: bool = False,
        task_status: trio.TaskStatus[Daemon[C]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until a stop request (or SIGTERM/SIGINT when ``handle_signals``)."""
        with _signal_receiver(handle_signals) as signals:
            async with trio.open_nursery() as nursery:
                # Signals are read until the app has drained: one left unread when the
                # receiver closes is delivered again, and SIGHUP's default action kills.
                helpers = trio.CancelScope()
                try:
                    await nursery.start(self._serve_app, helpers)
                except (StartupError, OSError, ConfigError) as error:
                    reason = startup_reason(error)
                    self.log.error("daemon.start_failed", reason=reason)
                    raise StartupError(reason) from error
                warn_if_descriptors_short(self.frame.listeners, self.log)
                self.frame.ready = True
                self.notifier.ready(status="serving")
                self.log.info("daemon.ready", version=self.spec.version)
                task_status.started(self)
                nursery.start_soon(self._helpers, helpers, signals)
                async for command in self._commands:
                    if command == "reload":
                        await self.reload()
                    elif command == "stop":
                        break
                self._stopping = True
                self.frame.ready = False
                self.notifier.stopping()
                grace = self.config.lifecycle.grace_period_seconds
                self.log.info("daemon.stopping", grace_period_seconds=grace)
                self.frame.stop(grace)
        self.log.info("daemon.stopped")
        if self.failure is not None:
            raise DaemonFailed(self.failure)

    async def _serve_app(
        self, helpers: trio.CancelScope, *, task_status: trio.TaskStatus[None]
    ) -> None:
        """The app's serve; the helpers (signals, watchdog) end when it has."""
        try:
            await self.app.serve(self.frame, task_status=task_status)
        finally:
            helpers.cancel()

    async def _helpers(
        self, scope: trio.CancelScope, signals: trio.abc.ReceiveChannel[int] | None
    ) -> None:
        with scope:
            async with trio.open_nursery() as nursery:
                interval = self.notifier.watchdog_interval()
                if interval is not None:
                    nursery.start_soon(self._watchdog, interval)
                if signals is not None:
                    nursery.start_soon(self._forward_signals, signals)

    async def _watchdog(self, interval: float) -> None:
        while True:
            self.notifier.watchdog()
            await trio.sleep(interval)

    async def _forward_signals(self, signals: trio.abc.ReceiveChannel[int]) -> None:
        stop_requested = False  # before run() reads the stop command, _stopping is not set yet
        async for signum in signals:
            name = signal.Signals(signum).name
            stopping = self._stopping or stop_requested
            if stopping and signum == signal.SIGINT:
                # Ctrl-C again: the operator will not wait. A second SIGTERM stays ignored:
                # systemd sends one, then SIGKILL once TimeoutStopSec is over.
                self.cut_drain_short(name)
            elif stopping:
                self.log.info("daemon.signal_ignored", signal=name, reason="stopping")
            elif signum == signal.SIGHUP:
                self.log.info("daemon.signal", signal=name)
                self.request_reload()
            else:
                self.log.info("daemon.signal", signal=name)
                stop_requested = True
                self.request_stop()

    def cut_drain_short(self, signal_name: str) -> None:
        """Stop now: cut the requests still in flight instead of waiting out the grace period."""
        if not self.drain_cut_short:
            self.drain_cut_short = True
            self.log.warning("daemon.drain_cut_short", signal=signal_name)
        self.request_stop()
        self.frame.stop(0)

    def _refuse(self, path: str, reason: str, message: str) -> str:
        self.log.error("config.reload_refused", file=path, reason=reason)
        self.metrics.config_reloads.labels("failure").inc()
        self.notifier.ready(status=f"reload refused: {message}")
        return message

    async def reload(self) -> str | None:
        """Load the configuration file again and apply it; None, or why it was refused.

        Raises:
            DaemonStopping: the daemon drains; nothing was read (not a refused file: a
                reload during a rolling restart is no failure to count or alert on).
        """
        self._skip_if_stopping()
        async with self._reload_lock:
            # Again: the drain may have begun while this one waited for another reload (a
            # deploy's POST /reload racing systemd's stop).
            self._skip_if_stopping()
            return await self._reload()

    def _skip_if_stopping(self) -> None:
        if self.frame.draining.started:
            self.log.info("config.reload_skipped", reason="stopping")
            raise DaemonStopping("the daemon is stopping: a reload is not applied while it drains")

    async def _reload(self) -> str | None:
        self.notifier.reloading(time.monotonic_ns() // 1000)
        for attempt in self.frame.on_reload_attempt:
            try:
                attempt()
            except Exception as exc:  # a bug in the hook must not stop the reload
                self.log.exception("config.reload_hook_failed", exc)
        path = self.config_path
        try:
            if path is None:
                raise ConfigError("<defaults>", "no configuration file to reload")
            new_config = load(path, self.spec.schema)
            # The token is read anew, so that rotating it (a new file, or new contents) needs
            # no restart; a file the start would refuse refuses the reload. (monitoring.admin
            # builds on this module: imported here, where it is needed.)
            from monitoring.admin import read_admin_token

            admin_token = read_admin_token(new_config.admin)
            await self.app.reload(new_config)
        except ConfigError as exc:
            # The old config keeps serving; the operator sees why in the log and the metric.
            return self._refuse(str(exc.path), exc.reason, str(exc))
        except Exception as exc:
            # Something no check foresaw in the file or one it names: still only a refused
            # reload (a running daemon keeps its old config), with the traceback for a report.
            self.log.exception("config.reload_error", exc, file=str(path))
            reason = f"unexpected {type(exc).__name__}: {exc}"
            return self._refuse(str(path), reason, f"{path}: {reason}")
        if self.frame.use_admin_token is not None:
            self.frame.use_admin_token(admin_token)
        bound = self._bound_admin  # the address bound, not the last file's
        if new_config.admin.port != bound.port or not same_listen_host(
            new_config.admin.host, bound.host
        ):
            self.log.warning("config.restart_required", section="admin")
        self.log.set_level(new_config.logging.level)
        self.config = new_config
        self.metrics.config_reloads.labels("success").inc()
        self.log.info("config.reloaded", file=str(path))
        self.notifier.ready(status="serving")
        return None


@contextlib.contextmanager
def _signal_receiver(enabled: bool) -> Iterator[Any]:
    if not enabled:
        yield None
        return
    # What the receiver restores when it closes, after the drain, and what a signal still
    # pending then is delivered to: ignored, not the default action (death by signal, exit
    # 129 or 143: a logrotate SIGHUP or a second SIGTERM would fail a clean stop).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with trio.open_signal_receiver(signal.SIGHUP, signal.SIGTERM, signal.SIGINT) as signals:
        yield signals
