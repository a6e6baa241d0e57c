"""``workers = N``: a supervisor process running N balancer workers that share the listeners.

``wharf-balancer serve --config FILE`` with ``workers`` above 1 runs this supervisor instead
of the daemon. It starts N children, each ``python -m balancer.cli serve --config FILE`` with
its index in the environment (:mod:`balancer.peers` is the children's side), and:

- **Listeners.** Each worker binds every listener itself with SO_REUSEPORT; the kernel
  spreads new connections across the workers' sockets. Ports must be fixed (not 0).
- **Readiness (sd_notify).** Each child gets its own ``NOTIFY_SOCKET``: a datagram socket of
  the supervisor's, so the children's unchanged notifications (READY=1, RELOADING=1,
  STATUS=...) come here, per worker. The supervisor alone talks to systemd
  (``NotifyAccess=main``): READY=1 once every worker has reported ready, RELOADING=1 and
  READY=1 around a reload (after every worker has reported back, or a timeout), STOPPING=1,
  and the watchdog pings. The children's own watchdog variables are removed.
- **Hung workers.** When the unit sets ``WatchdogSec`` the supervisor's pings say nothing of
  its workers', so each worker gets the same ``WATCHDOG_USEC`` and pings the supervisor's
  socket for it from its own event loop, as a single process pings systemd. A worker that
  reported ready and then sends no ``WATCHDOG=1`` for a whole watchdog timeout (two pings
  missed) is logged (``event=worker.hung``) and killed with SIGKILL; the crash restart below
  replaces it. Without ``WatchdogSec`` nothing is watched, as for a single process.
- **Signals.** SIGTERM/SIGINT are forwarded to every worker. After SIGTERM the supervisor
  waits for the workers to drain (their ``grace_period_seconds``, plus a margin) and kills
  what is left, then exits 0. A second SIGINT (Ctrl-C again) while they drain goes to every
  worker as SIGINT, which cuts its drain short as it does a single process's, and the
  supervisor then exits 130 as a single process does. SIGHUP goes to every worker that has
  reported ready since its process started; one still starting (at the supervisor's start,
  or a replacement after a crash) has no signal handling yet, and SIGHUP's default action
  would kill it, so it gets the SIGHUP once it reports ready (it may have read the file
  before the change).
- **Start failures.** Until every worker has reported ready, a worker process that exits
  before it reported ready cannot start (a certificate file missing, an address in use): the
  supervisor does not restart it but logs ``event=daemon.start_failed`` with the worker's
  reason (the ``STATUS=cannot start: ...`` it sent, :mod:`monitoring.cli`), stops the other
  workers as SIGTERM does, prints ``wharf-balancer: cannot start: <reason>`` and exits 1, as
  the single-process daemon does; systemd's ``Restart=on-failure`` tries again. The
  notifications a worker sent before it exited are all read before that decision (the
  sockets are drained when the exit is seen), so a worker that was ready and crashed at once
  is never taken for one that could not start.
- **Crashes.** A worker that exits after it was ready, or any worker once the supervisor is
  ready (a replacement that cannot start, e.g. a certificate deleted since, is retried while
  the others serve), is restarted after a backoff that doubles from 0.1 s to 10 s and resets
  once a worker has run for 30 s.
- **Admin and metrics.** Worker 0 serves the admin listener on the configured port, worker
  ``i`` on ``admin.port + i``; metrics are per process, so scrape every worker's port (a
  Prometheus job with the N targets, each labelled with its worker). The targets API and
  ``POST /reload`` are served by worker 0, which forwards each change to the others.
- **Reload.** Each worker reloads on its own (SIGHUP here, or ``POST /reload`` forwarded by
  worker 0) and binds the listeners the new file adds with SO_REUSEPORT; a worker that cannot
  bind refuses, and its ``reload refused`` status becomes the supervisor's. A ``POST
  /reload`` never reaches the supervisor, but the workers' RELOADING=1 and READY=1 do: it
  passes them on to systemd, with the status (``serving with N workers`` or the refusal).
- **State.** Worker 0 alone writes the targets API's state file (``state_dir/targets.json``);
  every worker loads it at start, so a worker restarted after a crash has the API's
  registrations too.
- **Limits.** Each worker runs its own health checks (N times the check traffic).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Final

import trio

from balancer.config import BalancerConfig
from balancer.peers import COUNT_ENV, INDEX_ENV, SUPERVISOR_ENV, check_workers
from monitoring.cli import EXIT_INTERRUPTED, EXIT_START, START_FAILED_STATUS
from monitoring.configfile import ConfigError, load
from monitoring.logging import EventLog
from monitoring.sdnotify import Notifier

BACKOFF_MIN_SECONDS: Final = 0.1
BACKOFF_MAX_SECONDS: Final = 10.0
STABLE_SECONDS: Final = 30.0  # a worker that ran this long crashed "fresh": no backoff
STOP_MARGIN_SECONDS: Final = 5.0  # beyond the workers' grace period before SIGKILL
RELOAD_WAIT_SECONDS: Final = 60.0  # a reload reads every certificate; then report anyway
NOTIFY_MAX_BYTES: Final = 4096
# The children's view of the service manager: theirs is the supervisor's socket.
_CHILD_ENV_DROPPED: Final = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class _Worker:
    """One worker slot: its notification socket, its current process and what it reported."""

    def __init__(self, index: int, socket_path: str) -> None:
        self.index = index
        self.socket_path = socket_path
        self.process: trio.Process | None = None
        self.ready = 0  # READY=1 messages received since the supervisor started
        self.ready_at_start = 0  # ``ready`` when the current process started
        self.status = ""
        # When it last showed its event loop turning (WATCHDOG=1 or READY=1), trio's clock.
        self.heartbeat = -math.inf
        self.draining = False  # its current process has sent STOPPING=1
        self.reloading = False  # sent RELOADING=1 and no READY=1 since
        # Told of a reload this worker began (None) or ended (its STATUS), whoever asked it.
        self.on_reload: Callable[[_Worker, str | None], None] = lambda worker, outcome: None
        self._changed = trio.Event()
        self._socket: socket.socket | None = None

    def open_socket(self) -> None:
        """Bind this worker's notification socket (non-blocking: see :meth:`drain`)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.setblocking(False)
            sock.bind(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self._socket = sock

    def close_socket(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    async def listen(self) -> None:
        """Take in the worker's notifications as they come, until cancelled."""
        while self._socket is not None:
            await trio.lowlevel.wait_readable(self._socket)
            self.drain()

    def drain(self) -> None:
        """Take in every notification already queued, without waiting.

        A datagram a worker sent is in this socket's queue before the worker can have
        exited, so draining once its exit is seen gives everything it said.
        """
        while self._socket is not None:
            try:
                message = self._socket.recv(NOTIFY_MAX_BYTES)
            except (BlockingIOError, InterruptedError):
                return
            self.received(message)

    def received(self, message: bytes) -> None:
        ready = reloading = False
        for line in message.decode("utf-8", "replace").splitlines():
            key, _, value = line.partition("=")
            if key == "READY" and value == "1":
                ready = True
                self.ready += 1
                self.heartbeat = trio.current_time()
            elif key == "RELOADING" and value == "1":
                reloading = True
            elif key == "WATCHDOG" and value == "1":
                self.heartbeat = trio.current_time()
            elif key == "STOPPING" and value == "1":
                self.draining = True
            elif key == "STATUS":
                self.status = value
        if reloading:
            self.reloading = True
            self.on_reload(self, None)
        if ready and self.reloading:  # READY=1 and STATUS= come in one message
            self.reloading = False
            self.on_reload(self, self.status)
        self._changed.set()
        self._changed = trio.Event()

    @property
    def serving(self) -> bool:
        """Its current process has reported ready: it handles signals (a worker installs its
        signal handling before it sends READY=1; until then SIGHUP's default action kills)."""
        return self.process is not None and self.ready > self.ready_at_start

    async def changed(self) -> None:
        """Until the next notification or exit."""
        await self._changed.wait()

    def exited(self) -> None:
        self.process = None
        if self.reloading:
            self.reloading = False
            self.on_reload(self, None)
        self._changed.set()
        self._changed = trio.Event()

    def start_failure(self, code: int) -> str:
        """Why the process of this slot that exited with ``code`` could not start."""
        if self.status.startswith(START_FAILED_STATUS):
            return self.status.removeprefix(START_FAILED_STATUS)
        return f"worker {self.index} exited with code {code} before it was ready"

    async def wait_ready(self, more_than: int, *, while_running: bool = True) -> None:
        """Until this worker has sent more READY=1 than ``more_than``.

        ``while_running``: give up once it has no process (it crashed mid-reload; its
        replacement loads the new file anyway).
        """
        while self.ready <= more_than and not (while_running and self.process is None):
            await self._changed.wait()


def child_environment(
    environ: Mapping[str, str],
    index: int,
    count: int,
    notify_socket: str,
    watchdog_usec: int | None = None,
) -> dict[str, str]:
    """The environment of worker ``index``: ours, with its identity and its notify socket
    (and ``watchdog_usec``, the timeout within which it must ping that socket)."""
    env = {k: v for k, v in environ.items() if k not in _CHILD_ENV_DROPPED}
    if watchdog_usec is not None:
        env["WATCHDOG_USEC"] = str(watchdog_usec)  # no WATCHDOG_PID: it is the worker's own
    env.update(
        {
            INDEX_ENV: str(index),
            COUNT_ENV: str(count),
            SUPERVISOR_ENV: str(os.getpid()),
            "NOTIFY_SOCKET": notify_socket,
        }
    )
    return env


def next_backoff(previous: float, ran_for: float) -> float:
    """How long to wait before restarting a worker that exited after ``ran_for`` seconds."""
    if ran_for >= STABLE_SECONDS:
        return BACKOFF_MIN_SECONDS
    return min(max(previous * 2, BACKOFF_MIN_SECONDS), BACKOFF_MAX_SECONDS)


class Supervisor:
    """Runs and watches the worker processes of one balancer.

    Args:
        config: the loaded configuration (``workers`` and the grace period are read).
        config_path: the file the workers load.
        notifier: the service manager, as the parent sees it.
        log: the supervisor's own log.
        command: how to start one worker (``--config`` is appended).
    """

    def __init__(
        self,
        config: BalancerConfig,
        config_path: Path,
        *,
        notifier: Notifier,
        log: EventLog,
        command: Sequence[str] = (sys.executable, "-m", "balancer.cli", "serve"),
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.notifier = notifier
        self.log = log
        self.command = [*command, "--config", str(config_path)]
        self.stopping = trio.Event()
        self._directory = tempfile.mkdtemp(prefix="wharf-balancer-")
        self.workers = [
            _Worker(i, os.path.join(self._directory, f"worker-{i}.sock"))
            for i in range(config.workers)
        ]
        self._reload_lock = trio.Lock()
        # A reload the workers began without the supervisor (POST /reload on worker 0,
        # which forwards it to the others) that systemd has been told of (RELOADING=1).
        self._passing_on_reload = False
        self._passed_on_refusal: str | None = None
        for worker in self.workers:
            worker.on_reload = self._pass_on_reload
        self._all_exited = trio.Event()
        self._running = 0
        self._finish = trio.Event()  # SIGTERM/SIGINT, or a worker that cannot start
        self.ready_announced = False  # READY=1 sent: every worker reported ready once
        self.failure: str | None = None  # why the workers cannot start
        self._nursery: trio.Nursery | None = None
        # A second SIGINT cut the workers' drains short; the supervisor exits 130.
        self.drain_cut_short = False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> int:
        """Supervise until SIGTERM or SIGINT (returns 0; 130 when a second SIGINT cut the
        drains short) or until a worker cannot start (returns 1, the reason in
        :attr:`failure`)."""
        try:
            with trio.open_signal_receiver(signal.SIGHUP, signal.SIGTERM, signal.SIGINT) as sigs:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    for worker in self.workers:
                        worker.open_socket()
                        nursery.start_soon(worker.listen)
                        nursery.start_soon(self._keep_running, worker)
                    nursery.start_soon(self._announce_ready)
                    interval = self.notifier.watchdog_interval()
                    if interval is not None:
                        nursery.start_soon(self._watchdog, interval)
                        nursery.start_soon(self._watch_workers, interval)
                    nursery.start_soon(self._handle_signals, sigs, nursery)
                    task_status.started()
                    await self._finish.wait()
                    await self.stop()
                    nursery.cancel_scope.cancel()
        finally:
            for worker in self.workers:
                worker.close_socket()
            shutil.rmtree(self._directory, ignore_errors=True)
        self.log.info("supervisor.stopped")
        if self.failure is not None:
            return EXIT_START
        return EXIT_INTERRUPTED if self.drain_cut_short else 0

    def request_stop(self) -> None:
        """Stop as SIGTERM does: drain every worker, then :meth:`run` returns."""
        self._finish.set()

    async def _handle_signals(self, signals: AsyncIterator[int], nursery: trio.Nursery) -> None:
        # Read until the end (this task is cancelled with the rest): a signal left unread
        # when the receiver closes is delivered again, and SIGHUP's default action kills.
        async for signum in signals:
            if self._finish.is_set() and signum == signal.SIGINT:
                # Ctrl-C again: the operator will not wait. A second SIGTERM stays ignored:
                # systemd sends one, then SIGKILL once TimeoutStopSec is over.
                self.cut_drain_short()
            elif self._finish.is_set():
                name = signal.Signals(signum).name
                self.log.info("daemon.signal_ignored", signal=name, reason="stopping")
            elif signum == signal.SIGHUP:
                nursery.start_soon(self.reload)
            else:
                self.request_stop()

    def cut_drain_short(self) -> None:
        """Stop now: every worker cuts the requests it still has in flight."""
        if not self.drain_cut_short:
            self.drain_cut_short = True
            self.log.warning("daemon.drain_cut_short", signal="SIGINT")
        self._finish.set()
        if self.stopping.is_set():  # else stop() sends it, after the SIGTERM that starts drains
            self._cut_drains()

    def _cut_drains(self) -> None:
        for worker in self.workers:
            if worker.process is not None and self._nursery is not None:
                self._nursery.start_soon(self._cut_drain, worker, worker.process)

    async def _cut_drain(self, worker: _Worker, process: trio.Process) -> None:
        """SIGINT to ``process`` once its drain has begun: a SIGINT that reaches it with the
        SIGTERM still unread may be read first, and start a drain (the SIGTERM then ignored)
        instead of cutting it. One still starting has no handler: SIGINT ends it at once."""
        if worker.serving:
            with trio.move_on_after(STOP_MARGIN_SECONDS):  # it may never say STOPPING=1
                while worker.process is process and not worker.draining:
                    await worker.changed()
        if process.returncode is None:
            process.send_signal(signal.SIGINT)

    def _send_to_workers(self, signum: signal.Signals) -> None:
        for worker in self.workers:
            process = worker.process
            if process is not None and process.returncode is None:
                process.send_signal(signum)

    def _cannot_start(self, worker: _Worker, pid: int, code: int) -> None:
        """A worker exited before it was ready, during the start: stop, and exit 1."""
        if self.failure is not None or self._finish.is_set():
            return  # already stopping: one reason is enough
        self.failure = worker.start_failure(code)
        self.log.error(
            "daemon.start_failed", reason=self.failure, index=worker.index, pid=pid, code=code
        )
        self.notifier.status(f"{START_FAILED_STATUS}{self.failure}")
        self._finish.set()

    async def _keep_running(self, worker: _Worker) -> None:
        self._running += 1
        backoff = 0.0
        try:
            while not self.stopping.is_set():
                env = child_environment(
                    os.environ,
                    worker.index,
                    len(self.workers),
                    worker.socket_path,
                    self._worker_watchdog_usec(),
                )
                started = trio.current_time()
                try:
                    process = await trio.lowlevel.open_process(self.command, env=env)
                except OSError as exc:  # fork or exec failed: out of memory or processes
                    backoff = next_backoff(backoff, 0.0)
                    self.log.error("worker.start_failed", index=worker.index, error=str(exc))
                    with trio.move_on_after(backoff):
                        await self.stopping.wait()
                    continue
                worker.process = process
                worker.status = ""  # a reason it gives is its own, not its predecessor's
                worker.draining = False
                worker.ready_at_start = worker.ready
                self.log.info("worker.started", index=worker.index, pid=process.pid)
                if self.stopping.is_set():  # the stop began while it was starting
                    process.send_signal(signal.SIGTERM)
                code = await process.wait()
                worker.drain()  # whatever it said before it exited (READY=1, its reason)
                worker.exited()
                if self.stopping.is_set():
                    self.log.info("worker.stopped", index=worker.index, pid=process.pid, code=code)
                    return
                if worker.ready == worker.ready_at_start and not self.ready_announced:
                    self._cannot_start(worker, process.pid, code)
                    return
                backoff = next_backoff(backoff, trio.current_time() - started)
                self.log.error(
                    "worker.exited",
                    index=worker.index,
                    pid=process.pid,
                    code=code,
                    restart_in_seconds=backoff,
                )
                with trio.move_on_after(backoff):
                    await self.stopping.wait()
        finally:
            self._running -= 1
            if self._running == 0:
                self._all_exited.set()

    async def _announce_ready(self) -> None:
        # A worker that was ready and crashed is restarted: keep waiting for the others.
        for worker in self.workers:
            await worker.wait_ready(0, while_running=False)
        if self._finish.is_set():  # stopping, or one could not start: never READY=1 now
            return
        self.ready_announced = True
        self.notifier.ready(status=self._serving_status())
        self.log.info("supervisor.ready", workers=len(self.workers))

    async def _watchdog(self, interval: float) -> None:
        while True:
            self.notifier.watchdog()
            await trio.sleep(interval)

    def _worker_watchdog_usec(self) -> int | None:
        interval = self.notifier.watchdog_interval()
        return None if interval is None else round(interval * 2 * 1_000_000)

    async def _watch_workers(self, interval: float) -> None:
        """Kill a ready worker whose loop has not pinged for a watchdog timeout (2 pings)."""
        timeout = interval * 2
        while not self.stopping.is_set():
            await trio.sleep(interval)
            now = trio.current_time()
            for worker in self.workers:
                process = worker.process
                if process is None or process.returncode is not None or not worker.serving:
                    continue
                worker.drain()  # a ping already queued counts
                silent = now - worker.heartbeat
                if silent > timeout and not self.stopping.is_set():
                    self.log.error(
                        "worker.hung",
                        index=worker.index,
                        pid=process.pid,
                        silent_seconds=round(silent, 1),
                        watchdog_seconds=timeout,
                    )
                    process.kill()  # _keep_running sees the exit and restarts it

    async def reload(self) -> None:
        """Forward SIGHUP to every worker, those still starting once they are ready; READY=1
        once every worker has reported back (or after a wait).

        During the start (before the supervisor's READY=1) nothing is said to systemd:
        ``_announce_ready`` sends READY=1 when every worker is ready.
        """
        async with self._reload_lock:
            self._passing_on_reload = False  # this reload's READY=1 ends it for systemd
            announce = self.ready_announced
            if announce:
                self.notifier.reloading(time.monotonic_ns() // 1000)
            for worker in self.workers:
                worker.drain()  # a READY=1 already sent counts: that worker can take SIGHUP
            running = [w for w in self.workers if w.process is not None]
            starting = sum(not w.serving for w in running)
            self.log.info("supervisor.reload", workers=len(running), starting=starting)
            signalled: list[_Worker] = []
            with trio.move_on_after(RELOAD_WAIT_SECONDS):
                async with trio.open_nursery() as nursery:
                    for worker in running:
                        nursery.start_soon(self._reload_worker, worker, signalled)
            refused = [w.status for w in signalled if w.status.startswith("reload refused")]
            self._follow_reloaded_file(applied=not refused)
            if announce:
                self.notifier.ready(status=refused[0] if refused else self._serving_status())
            elif refused and self.ready_announced:
                self.notifier.status(refused[0])

    def _serving_status(self) -> str:
        return f"serving with {len(self.workers)} workers"

    def _pass_on_reload(self, worker: _Worker, outcome: str | None) -> None:
        """Tell systemd of a reload the workers made on their own (``POST /reload`` goes to
        worker 0, which applies it and then forwards it to the others): RELOADING=1 when the
        first begins, READY=1 with the status once none is reloading any more, as a single
        process does for each of its reloads. Its own reloads (SIGHUP) say it themselves."""
        if self._reload_lock.locked() or not self.ready_announced or self._finish.is_set():
            return
        if not self._passing_on_reload:
            if not worker.reloading:
                return  # ended (or exited) with no beginning seen: nothing to pass on
            self._passing_on_reload = True
            self._passed_on_refusal = None
            self.notifier.reloading(time.monotonic_ns() // 1000)
        if outcome is not None and outcome.startswith("reload refused"):
            self._passed_on_refusal = self._passed_on_refusal or outcome
        if any(w.reloading for w in self.workers):
            return
        self._passing_on_reload = False
        self._follow_reloaded_file(applied=self._passed_on_refusal is None)
        self.notifier.ready(status=self._passed_on_refusal or self._serving_status())

    async def _reload_worker(self, worker: _Worker, signalled: list[_Worker]) -> None:
        """SIGHUP to ``worker``'s process once it is ready, then until it has reported back."""
        process = worker.process
        if process is None:
            return
        if not worker.serving:
            # Still starting: no signal handling yet. It may have read the file before the
            # change, so it reloads once ready; if it exits first, its replacement reads the
            # file anew.
            await worker.wait_ready(worker.ready_at_start)
            if worker.process is not process or not worker.serving:
                return
        before = worker.ready
        process.send_signal(signal.SIGHUP)
        signalled.append(worker)
        await worker.wait_ready(before)

    def _follow_reloaded_file(self, *, applied: bool) -> None:
        """After a reload: say when its ``workers`` needs a restart and, when the workers
        took the file, log at its ``logging.level`` as they now do."""
        try:
            new = load(self.config_path, BalancerConfig)
        except Exception:  # anything: the workers refused it and said why
            return
        if applied:
            self.log.set_level(new.logging.level)
        if new.workers != len(self.workers):
            self.log.warning("config.restart_required", section="workers")

    def grace_period(self) -> float:
        """The longest grace period a worker may be draining with: the start's, or that of
        the file now. A reload (SIGHUP, or ``POST /reload``, which the supervisor never sees)
        applies the file's to the workers; killing them on the start's deadline would reset
        requests the new one lets finish. A file the workers refused leaves the start's."""
        grace = self.config.lifecycle.grace_period_seconds
        try:
            now = load(self.config_path, BalancerConfig)
        except Exception:  # anything: the workers refused it and said why
            return grace
        return max(grace, now.lifecycle.grace_period_seconds)

    async def stop(self) -> None:
        """Forward SIGTERM, wait for the workers to drain, kill what outlives the deadline."""
        self.stopping.set()
        self.notifier.stopping()
        grace = self.grace_period()
        self.log.info("supervisor.stopping", grace_period_seconds=grace)
        self._send_to_workers(signal.SIGTERM)
        if self.drain_cut_short:
            self._cut_drains()
        with trio.move_on_after(grace + STOP_MARGIN_SECONDS):
            await self._all_exited.wait()
        for worker in self.workers:
            process = worker.process
            if process is not None and process.returncode is None:
                self.log.error("worker.killed", index=worker.index, pid=process.pid)
                process.kill()
        with trio.move_on_after(STOP_MARGIN_SECONDS):
            await self._all_exited.wait()


def supervise_from_argv(argv: Sequence[str] | None) -> int | None:
    """Run the supervisor when ``argv`` serves a config with ``workers`` above 1.

    Returns:
        The exit code, or None when the ordinary command line should run: another command,
        no config file, arguments besides ``serve --config FILE`` (``--help``, ``--version``
        or a mistake, which it prints or refuses), ``workers = 1``, a file that does not load
        or that several workers cannot share (the daemon reports it the usual way), or this
        process is itself a worker.
    """
    if INDEX_ENV in os.environ:
        return None
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("command", nargs="?")
    parser.add_argument("--config", type=Path)
    args, others = parser.parse_known_args(argv)
    # Anything more (--help, --version, a typo) is the CLI's to print or refuse, not a start.
    if others or args.command != "serve" or args.config is None:
        return None
    try:
        config = load(args.config, BalancerConfig)
    except ConfigError:
        return None
    if config.workers <= 1:
        return None
    try:
        check_workers(config, str(args.config))
    except ConfigError:
        # The start refuses it as it refuses any file (BalancerApp runs the same check): one
        # "cannot start:" line, event=daemon.start_failed and STATUS, as documented.
        return None
    log = EventLog("balancer", level=config.logging.level).bind(role="supervisor")
    supervisor = Supervisor(config, args.config, notifier=Notifier.from_environ(), log=log)
    code = trio.run(supervisor.run)
    if supervisor.failure is not None:
        print(f"wharf-balancer: cannot start: {supervisor.failure}", file=sys.stderr)
    return code
