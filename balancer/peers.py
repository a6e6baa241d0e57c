"""What a worker process knows about itself and its siblings (``workers = N``).

The supervisor (:mod:`balancer.workers`) starts every worker with its index and the worker
count in the environment. A worker then:

- binds every listener with SO_REUSEPORT, so the kernel spreads new connections across the
  workers' sockets (at start, and the listeners a reload adds);
- serves its admin listener on ``admin.port + index``: worker 0 holds the configured port
  (the admin listener operators and deploy scripts talk to), worker ``i`` the port ``i``
  above it, so each process's own ``/metrics`` can be scraped (metrics are per process);
- on worker 0, applies the targets API's changes and reloads to its siblings as well, by
  forwarding the request to their admin ports (:func:`forward`), and owns the state file the
  changes are saved in (the siblings only load it at start);
- stops when its supervisor is gone, instead of holding the ports as an orphan.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import h11
import msgspec
import trio

from balancer.config import BalancerConfig
from monitoring.configfile import ConfigError
from monitoring.settings import AdminSettings

INDEX_ENV: Final = "WHARF_BALANCER_WORKER_INDEX"
COUNT_ENV: Final = "WHARF_BALANCER_WORKERS"
# The supervisor's pid, given rather than read with getppid(): a worker whose supervisor died
# while it was starting would read its new parent (init) and outlive the supervisor.
SUPERVISOR_ENV: Final = "WHARF_BALANCER_SUPERVISOR_PID"
PEER_HEADER: Final = "x-wharf-worker-peer"  # marks a forwarded request: apply, never forward
FORWARD_TIMEOUT_SECONDS: Final = 10.0  # a sibling's reload reads every certificate file
MAX_REPLY_BYTES: Final = 1 << 20
_LOOPBACK: Final[Mapping[str, str]] = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


@dataclass(frozen=True, slots=True)
class WorkerIdentity:
    """This process's place among the workers."""

    index: int
    count: int

    @property
    def primary(self) -> bool:
        """Worker 0 serves the configured admin port and forwards admin changes."""
        return self.index == 0


def current_worker(environ: Mapping[str, str] | None = None) -> WorkerIdentity | None:
    """This process's identity, or None when it is not a supervised worker."""
    env = os.environ if environ is None else environ
    index, count = env.get(INDEX_ENV, ""), env.get(COUNT_ENV, "")
    if not (index.isdigit() and count.isdigit()) or int(index) >= int(count):
        return None
    return WorkerIdentity(int(index), int(count))


def supervisor_pid(environ: Mapping[str, str] | None = None) -> int:
    """The pid of the supervisor this worker must not outlive (its parent when not given)."""
    env = os.environ if environ is None else environ
    given = env.get(SUPERVISOR_ENV, "")
    return int(given) if given.isdigit() else os.getppid()


def check_workers(config: BalancerConfig, path: str, *, workers: int | None = None) -> None:
    """Refuse settings that several workers cannot share.

    Args:
        workers: the processes that will share them (a reload's: those running, whatever
            the file's ``workers``, which applies at a restart); None: the file's.

    Raises:
        ConfigError: with ``workers > 1``, a listener or the admin listener on port 0 (each
            worker would get a different port), or admin ports running past 65535.
    """
    count = config.workers if workers is None else workers
    if count <= 1:
        return
    for i, listener in enumerate(config.listeners):
        if listener.port == 0:
            raise ConfigError(
                path, f"workers = {count} needs a fixed port - at `$.listeners[{i}].port`"
            )
    if config.admin.port == 0:
        raise ConfigError(path, f"workers = {count} needs a fixed admin port - at `$.admin.port`")
    if config.admin.port + count - 1 > 65535:
        raise ConfigError(path, "admin.port + workers - 1 must stay within 65535")


def admin_settings(settings: AdminSettings, identity: WorkerIdentity | None) -> AdminSettings:
    """The admin address of this process: the configured one shifted by the worker index."""
    if identity is None or settings.port == 0:
        return settings
    return msgspec.structs.replace(settings, port=settings.port + identity.index)


def sibling_admins(
    settings: AdminSettings, identity: WorkerIdentity
) -> list[tuple[int, tuple[str, int]]]:
    """(index, address) of the other workers' admin listeners."""
    host = _LOOPBACK.get(settings.host, settings.host)
    return [
        (index, (host, settings.port + index))
        for index in range(identity.count)
        if index != identity.index
    ]


async def _post(
    address: tuple[str, int], path: str, body: bytes, authorization: str | None = None
) -> tuple[int, bytes]:
    stream = await trio.open_tcp_stream(*address)
    async with stream:
        connection = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_REPLY_BYTES)
        host = f"[{address[0]}]:{address[1]}" if ":" in address[0] else f"{address[0]}:{address[1]}"
        head = h11.Request(
            method="POST",
            target=path,
            headers=[
                ("host", host),
                ("content-type", "application/json"),
                ("content-length", str(len(body))),
                (PEER_HEADER, "1"),
                ("connection", "close"),
                *([("authorization", authorization)] if authorization else []),
            ],
        )
        data = connection.send(head) + (connection.send(h11.Data(data=body)) or b"")
        await stream.send_all(data + (connection.send(h11.EndOfMessage()) or b""))
        status, reply = 0, b""
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                connection.receive_data(bytes(await stream.receive_some(65536)))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                reply += event.data
                if len(reply) > MAX_REPLY_BYTES:
                    break
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
        return status, reply


async def forward(
    siblings: Sequence[tuple[int, tuple[str, int]]],
    path: str,
    body: bytes,
    authorization: str | None = None,
) -> dict[str, str]:
    """POST ``body`` to ``path`` on every sibling's admin listener, all at once, with the
    ``authorization`` header the admin listeners ask changes for (``admin.token_file``).

    Returns:
        Per worker index: ``ok``, or what went wrong (its status and reply, or the error).
    """
    outcomes: dict[str, str] = {}

    async def one(index: int, address: tuple[str, int]) -> None:
        outcome = "timed out"
        with trio.move_on_after(FORWARD_TIMEOUT_SECONDS):
            try:
                status, reply = await _post(address, path, body, authorization)
            except (OSError, trio.BrokenResourceError, h11.ProtocolError) as exc:
                outcome = f"unreachable: {exc}"
            else:
                text = reply.decode("utf-8", "replace").strip()
                outcome = "ok" if status == 200 else f"HTTP {status}: {text}"
        outcomes[str(index)] = outcome

    async with trio.open_nursery() as nursery:
        for index, address in siblings:
            nursery.start_soon(one, index, address)
    return dict(sorted(outcomes.items()))


async def watch_parent(parent_pid: int, on_gone: Callable[[], None]) -> None:
    """Call ``on_gone`` once the supervisor ``parent_pid`` has exited.

    A pidfd (Linux >= 5.3) becomes readable when its process exits, so this waits without
    polling; a parent already gone (we were re-parented) counts at once.
    """
    try:
        fd = os.pidfd_open(parent_pid)
    except OSError:  # ESRCH: it is gone already
        on_gone()
        return
    try:
        if os.getppid() == parent_pid:  # opened the right process, not a recycled pid
            await trio.lowlevel.wait_readable(fd)
    finally:
        os.close(fd)
    on_gone()


def stop_self() -> None:
    """Ask this process's own signal handling to drain and stop, as systemd's SIGTERM does."""
    os.kill(os.getpid(), signal.SIGTERM)
