"""The admin targets API: target health, register, deregister and reload over HTTP.

Routes, mounted on the admin listener (127.0.0.1:9326 by default)::

    GET  /targets[?target_group=NAME]  every group's targets with state and reason
                                       (ALB's DescribeTargetHealth)
    POST /targets/register             {"target_group": "web",
                                        "targets": [{"host": "10.0.0.5", "port": 8080,
                                                     "weight": 1, "zone": ""}]}
    POST /targets/deregister           same body (weight and zone ignored): the targets drain
                                       for the group's deregistration delay, then leave
    POST /reload                       what SIGHUP does, with the outcome in the reply

Errors are JSON, ``{"error": CODE, "message": TEXT}``: 400 ``ValidationError`` (a body that is
not the shape above), 404 ``TargetGroupNotFound``, 400 ``ConfigError`` (a reload refused:
the old config serves on). Deregistering a target that is not registered succeeds, as AWS's
DeregisterTargets does.

Registrations made here survive a reload, as on ALB, where targets registered through the API
stay until deregistered through the API. The effective target list of a group is the file's
targets, minus those deregistered here, plus those registered here that the file does not
list. A reload re-reads the file under these changes: an API deregistration of a target the
file lists holds until the target is registered again or the file stops listing it; a
registration the file starts listing becomes the file's, with the file's weight and zone
(the file takes over on the target id alone: a registration that kept its own weight would
stay the API's, and outlive the file's listing of it). Registering a target the file lists
undoes its deregistration and leaves it the file's. ``source`` in
``GET /targets`` says where each target comes from. Targets are named by their id
(:func:`balancer.config.target_id`: one spelling of the host, and a registration without a
port under the group's current port), so the file, the API and ``targets.json`` agree on
which target a change is about.

The changes survive a restart too: :class:`StateFile` keeps them in ``state_dir/targets.json``,
written atomically (temp file, fsync, rename, fsync of the directory) before the API answers;
a change that cannot be written is refused and not applied. The balancer loads the file at
start, on top of the configuration file's targets, and refuses to start on a corrupt one.
With ``workers = N``, worker 0 (which applies every change and forwards it to the others)
alone writes the file; every worker loads it when it starts.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from ipaddress import IPv6Address, ip_address
from pathlib import Path
from typing import Annotated, Any, Final, Literal
from urllib.parse import parse_qsl

import msgspec
import trio

from balancer.config import (
    ADMIN_AS_TARGET,
    MAX_TARGETS_PER_GROUP,
    BalancerConfig,
    Endpoint,
    Target,
    TargetGroup,
    parse_target_id,
    target_id,
)
from balancer.health import Reason, TargetHealth
from balancer.peers import PEER_HEADER
from balancer.probes import check_port
from balancer.runtime import GroupRuntime, Runtime, Snapshot
from monitoring.admin import AdminServer
from monitoring.configfile import ConfigError
from monitoring.durable import write_file
from monitoring.httpserver import Request, Response
from monitoring.lifecycle import DaemonStopping
from monitoring.logging import EventLog
from monitoring.safefile import read_regular_file
from monitoring.settings import host_port, zone_problem

JSON: Final = "application/json"
STATE_FILE: Final = "targets.json"

# AWS's descriptions of its reason codes (DescribeTargetHealth ``Description``).
DESCRIPTIONS: Final[Mapping[Reason, str]] = {
    Reason.REGISTRATION_IN_PROGRESS: "Target registration is in progress",
    Reason.INITIAL_HEALTH_CHECKING: "Initial health checks in progress",
    Reason.INTERNAL_ERROR: "Health checks failed due to an internal error",
    Reason.RESPONSE_CODE_MISMATCH: "Health checks failed",
    Reason.TIMEOUT: "Request timed out",
    Reason.FAILED_HEALTH_CHECKS: "Health checks failed",
    Reason.DEREGISTRATION_IN_PROGRESS: "Target deregistration is in progress",
    Reason.HEALTH_CHECK_DISABLED: "Health checks are disabled",
    Reason.NOT_REGISTERED: "Target is not registered to the target group",
    Reason.NOT_IN_USE: "Target group is not configured to receive traffic from the load balancer",
    Reason.INVALID_STATE: "Target is in the stopped or terminated state",
    Reason.IP_UNUSABLE: "The IP address cannot be used as a target",
}


class TargetsRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The body of register and deregister."""

    target_group: str
    targets: Annotated[tuple[Target, ...], msgspec.Meta(min_length=1, max_length=100)]


_DECODER: Final = msgspec.json.Decoder(TargetsRequest)


class GroupOverrides(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One group's API changes in the state file."""

    registered: tuple[Target, ...] = ()
    deregistered: tuple[str, ...] = ()  # target ids (host:port) of targets the file lists


class SavedOverrides(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The state file's content: every group's API changes."""

    version: Literal[1] = 1
    target_groups: dict[str, GroupOverrides] = {}


_STATE_DECODER: Final = msgspec.json.Decoder(SavedOverrides)
_STATE_ENCODER: Final = msgspec.json.Encoder(order="sorted")


class ApiError(Exception):
    """A request the API refuses; rendered as ``{"error": code, "message": ...}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


# ---------------------------------------------------------------------------------------------
# What the API changed, applied on top of the file at every generation.


class Overrides:
    """Targets registered and deregistered through the API, per target group."""

    def __init__(self) -> None:
        self._added: dict[str, dict[str, Target]] = {}
        self._removed: dict[str, set[str]] = {}

    def copy(self) -> Overrides:
        """An independent copy: change it, save it, then :meth:`assign` it."""
        other = Overrides()
        other.assign(self)
        return other

    def assign(self, other: Overrides) -> None:
        """Take ``other``'s content (in place: the app and the API share this object)."""
        self._added = {name: dict(added) for name, added in other._added.items() if added}
        self._removed = {name: set(ids) for name, ids in other._removed.items() if ids}

    def dump(self) -> SavedOverrides:
        """What the state file holds (groups without changes left out, in a stable order)."""
        groups: dict[str, GroupOverrides] = {}
        for name in sorted(self._added.keys() | self._removed.keys()):
            added = self._added.get(name, {})
            removed = self._removed.get(name, set())
            if added or removed:
                groups[name] = GroupOverrides(
                    registered=tuple(added[key] for key in sorted(added)),
                    deregistered=tuple(sorted(removed)),
                )
        return SavedOverrides(target_groups=groups)

    @classmethod
    def restore(cls, saved: SavedOverrides, config: BalancerConfig) -> Overrides:
        """The overrides ``saved`` describes, under the groups (and ports) of ``config``.

        Groups the file no longer has, and entries it now agrees with, are dropped.
        """
        overrides = cls()
        groups = {g.name: g for g in config.target_groups}
        for name, entry in saved.target_groups.items():
            group = groups.get(name)
            if group is None:
                continue
            overrides.register(group, entry.registered)
            in_file = {e.target_id for e in group.endpoints()}
            # Ids saved before ids were normalised (``[0::1]:80``) name ``[::1]:80`` now.
            parsed = [parse_target_id(text) for text in entry.deregistered]
            removed = {target_id(*found) for found in parsed if found is not None} & in_file
            if removed:
                overrides._removed.setdefault(name, set()).update(removed)
        overrides.prune(config)
        return overrides

    def check_totals(
        self, config: BalancerConfig, config_file: str, state_file: Path | None
    ) -> None:
        """Refuse ``config`` if, under these changes, a group would have too many targets.

        The API refuses a registration past the quota, but the file can grow past it later
        (a reload adding targets), or ``targets.json`` be edited while the balancer is down.

        Raises:
            ConfigError: naming the group, the two sources and how to get under the quota.
        """
        for index, group in enumerate(config.target_groups):
            count = len(self.endpoints(group))
            if count > MAX_TARGETS_PER_GROUP:
                registered = len(self._added.get(group.name, {}))
                kept = "" if state_file is None else f" (kept in {state_file})"
                raise ConfigError(
                    config_file,
                    f"target group {group.name!r} would have {count} targets, above the "
                    f"{MAX_TARGETS_PER_GROUP} a group may have: {registered} of them were "
                    f"registered through the admin API{kept}; deregister some, or list "
                    f"fewer in the file - at `$.target_groups[{index}]`",
                )

    def endpoints(self, group: TargetGroup) -> list[Endpoint]:
        """The group's effective targets: the file's, minus removed, plus those registered
        that the file does not list (where both name a target, the file's weight and zone)."""
        added = self._added.get(group.name, {})
        removed = self._removed.get(group.name, set())
        in_file = group.endpoints()
        found = [e for e in in_file if e.target_id not in removed]
        listed = {e.target_id for e in in_file}
        for target in added.values():
            endpoint = _endpoint(group, target)
            if endpoint.target_id not in listed:
                listed.add(endpoint.target_id)
                found.append(endpoint)
        return found

    def source(self, group: str, target: str) -> str:
        """``api`` for a target registered through the API, else ``config``."""
        return "api" if target in self._added.get(group, {}) else "config"

    def register(self, group: TargetGroup, targets: Iterable[Target]) -> None:
        """Add or replace registrations; keyed by the id under ``group``'s current port (a
        target registered without a port keeps none: :meth:`prune` re-keys it)."""
        in_file = {e.target_id for e in group.endpoints()}
        for target in targets:
            key = target_id(target.host, target.port or group.port)
            added = self._added.setdefault(group.name, {})
            added.pop(key, None)  # to the end: the latest registration of an id comes last
            self._removed.get(group.name, set()).discard(key)
            if key in in_file:
                # The file lists it already: it stays the file's, with the file's weight and
                # zone, now as at the next reload's prune (a later file without it removes
                # it, whatever reloads came between; found by report-only hunts).
                continue
            added[key] = target

    def deregister(self, group: TargetGroup, ids: Iterable[str]) -> None:
        in_file = {e.target_id for e in group.endpoints()}
        for key in ids:
            self._added.get(group.name, {}).pop(key, None)
            if key in in_file:
                self._removed.setdefault(group.name, set()).add(key)

    def prune(self, config: BalancerConfig) -> None:
        """Forget what a new file made moot: gone groups, and entries the file now agrees with."""
        groups = {g.name: g for g in config.target_groups}
        for name in list(self._added.keys() | self._removed.keys()):
            group = groups.get(name)
            if group is None:
                self._added.pop(name, None)
                self._removed.pop(name, None)
                continue
            in_file = {e.target_id for e in group.endpoints()}
            # Registrations without a port follow the group's: under a new port their id
            # is a new one, which deregister, source and the listing must all agree on (the
            # later registration wins where two now name one target).
            added = {
                target_id(t.host, t.port or group.port): t
                for t in self._added.get(name, {}).values()
            }
            self._added[name] = added
            for key in added.keys() & in_file:
                del added[key]  # the file lists it now: the file's, on the id alone
            self._removed[name] = self._removed.get(name, set()) & in_file

    def apply(self, snapshot: Snapshot) -> Snapshot:
        """``snapshot`` with every group's target list under these overrides."""
        groups: dict[str, GroupRuntime] = {}
        changed = False
        for name, group in snapshot.groups.items():
            endpoints = self.endpoints(group.config)
            if list(group.endpoints) != endpoints:
                group = GroupRuntime(
                    group.config, group.live, endpoints, in_use=group.in_use, tls=group.tls
                )
                changed = True
            groups[name] = group
        return replace(snapshot, groups=groups) if changed else snapshot


def _endpoint(group: TargetGroup, target: Target) -> Endpoint:
    port = target.port or group.port
    return Endpoint(target_id(target.host, port), target.host, port, target.weight, target.zone)


class StateFile:
    """``targets.json`` in the state directory: the API's changes, across restarts."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / STATE_FILE

    def load(self) -> SavedOverrides:
        """The saved changes; none when the file does not exist yet.

        Raises:
            ConfigError: the file cannot be read or is not a state file (corrupt, truncated,
                from an unknown version): the balancer must not start half-configured.
        """
        try:
            # Never blocks: a FIFO in its place hung the start, silently.
            data = read_regular_file(self.path, None)
        except FileNotFoundError:
            return SavedOverrides()
        except OSError as exc:
            raise ConfigError(self.path, f"cannot read the state file: {exc.strerror}") from None
        try:
            return _STATE_DECODER.decode(data)
        except (msgspec.DecodeError, ValueError) as exc:
            raise ConfigError(
                self.path,
                f"corrupt state file ({exc}); it holds the targets registered and deregistered "
                "through the admin API: repair it, or remove it to start from the "
                "configuration file's targets alone",
            ) from None

    def save(self, saved: SavedOverrides) -> None:
        """Replace the file atomically and durably (blocking: run it in a thread).

        Raises:
            OSError: nothing was replaced.
        """
        data = _STATE_ENCODER.encode(saved) + b"\n"
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_file(self.path, data, 0o600)

    async def save_async(self, overrides: Overrides) -> None:
        """:meth:`save` in a worker thread, so the event loop serves on during the fsyncs."""
        await trio.to_thread.run_sync(self.save, overrides.dump())


# ---------------------------------------------------------------------------------------------
# The routes.

# (path, body, the Authorization header to send): the change's own, as the client sent it,
# which the siblings still take (a reload that rotates admin.token_file gives worker 0 the new
# token before it forwards; the siblings get it only from the reload forwarded to them).
Peers = Callable[[str, bytes, str | None], Awaitable[dict[str, Any]]]


class TargetsApi:
    """The admin routes over a :class:`Runtime`.

    Args:
        runtime: the balancer's runtime.
        overrides: API changes, shared with the app's reload.
        log: where registrations and deregistrations are logged.
        reload: re-read the configuration file (``Frame.reload``); None or the refusal.
        clock: the runtime's monotonic clock.
        peers: on worker 0 of several, applies a change to the other workers too
            (:func:`balancer.peers.forward`); returns per-worker outcomes for the reply.
        primary: on the other workers, the address of worker 0's admin listener: changes
            sent here directly (not forwarded by worker 0) are refused with a pointer to it,
            since they would reach this one process only.
        state: where changes are saved before they apply (None: in memory only, as on the
            workers other than worker 0, which owns the file).
    """

    def __init__(
        self,
        runtime: Runtime,
        overrides: Overrides,
        log: EventLog,
        *,
        reload: Callable[[], Awaitable[str | None]] | None = None,
        clock: Callable[[], float] = trio.current_time,
        peers: Peers | None = None,
        primary: tuple[str, int] | None = None,
        state: StateFile | None = None,
    ) -> None:
        self._runtime = runtime
        self._overrides = overrides
        self._log = log
        self._reload = reload
        self._clock = clock
        self.peers = peers
        self.primary = primary
        self.state = state
        # Held from a change's decision to its generation being current, around the state
        # file's write, and until the other workers have it: changes (and a reload's
        # pruning) apply, reach the file and reach every worker in one order. Forwarded
        # after the lock was let go, two changes to one target sent at once could reach a
        # sibling the other way round, and leave it routing to a target worker 0 and
        # targets.json have deregistered.
        self.lock = trio.Lock()

    def mount(self, admin: AdminServer) -> None:
        """Add the routes to the admin listener."""
        admin.mount("GET", "/targets", self._guarded(self.describe))
        admin.mount("POST", "/targets/register", self._guarded(self.register))
        admin.mount("POST", "/targets/deregister", self._guarded(self.deregister))
        admin.mount("POST", "/reload", self._guarded(self.reload))

    def _guarded(
        self, route: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def guarded(request: Request) -> Response:
            try:
                if request.method == b"POST" and self.primary and not _from_peer(request):
                    host, port = self.primary
                    raise ApiError(
                        409,
                        "NotPrimaryWorker",
                        f"send admin changes to worker 0 at {host_port(host, port)}; it applies "
                        "them to "
                        "every worker",
                    )
                return await route(request)
            except ApiError as exc:
                return _json(exc.status, {"error": exc.code, "message": str(exc)})

        return guarded

    async def describe(self, request: Request) -> Response:
        wanted = _query_value(request, "target_group")
        snapshot = self._runtime.current
        if wanted is not None and wanted not in snapshot.groups:
            raise ApiError(404, "TargetGroupNotFound", f"no target group named {wanted!r}")
        names = [wanted] if wanted is not None else list(snapshot.groups)
        groups = [
            {"name": name, "targets": self._describe_group(snapshot.groups[name])} for name in names
        ]
        return _json(200, {"generation": snapshot.generation, "target_groups": groups})

    async def register(self, request: Request) -> Response:
        body = _decode(request.body)
        async with self.lock:
            group = self._group(body.target_group)
            _refuse_unresolvable_zones(body.targets)
            self._refuse_admin_targets(group, body.targets)
            current = {e.target_id for e in self._overrides.endpoints(group.config)}
            new = {target_id(t.host, t.port or group.config.port) for t in body.targets}
            if len(current | new) > MAX_TARGETS_PER_GROUP:
                raise ApiError(
                    400, "ValidationError", f"at most {MAX_TARGETS_PER_GROUP} targets per group"
                )
            changed = self._overrides.copy()
            changed.register(group.config, body.targets)
            await self._commit(changed, "register", group, sorted(new))
            return await self._reply("register", group.name, sorted(new), request)

    async def deregister(self, request: Request) -> Response:
        body = _decode(request.body)
        async with self.lock:
            group = self._group(body.target_group)
            # A target that is not registered is no error: AWS's DeregisterTargets "returns
            # successfully" for it, so a deploy script may deregister twice.
            ids = sorted({target_id(t.host, t.port or group.config.port) for t in body.targets})
            changed = self._overrides.copy()
            changed.deregister(group.config, ids)
            await self._commit(changed, "deregister", group, ids)
            return await self._reply("deregister", group.name, ids, request)

    async def reload(self, request: Request) -> Response:
        if self._reload is None:
            raise ApiError(503, "Unavailable", "reload is not available in this process")
        try:
            refused = await self._reload()
        except DaemonStopping as stopping:
            raise ApiError(503, "Unavailable", str(stopping)) from None
        if refused is not None:
            raise ApiError(400, "ConfigError", refused)
        reply: dict[str, Any] = {"reloaded": True, "generation": self._runtime.current.generation}
        if self.peers is not None and not _from_peer(request):
            reply["workers"] = await self.peers("/reload", b"", _authorization(request))
        return _json(200, reply)

    async def _commit(
        self, changed: Overrides, action: str, group: GroupRuntime, ids: Sequence[str]
    ) -> None:
        """Save ``changed`` (when this process owns the state file), then apply it."""
        if self.state is not None:
            try:
                await self.state.save_async(changed)
            except OSError as exc:
                self._log.error(
                    "targets.state_not_saved", file=str(self.state.path), error=str(exc)
                )
                raise ApiError(
                    500,
                    "StateNotSaved",
                    f"cannot write {self.state.path}: {exc.strerror or exc}; nothing changed",
                ) from None
        self._overrides.assign(changed)
        endpoints = self._overrides.endpoints(group.config)
        self._runtime.replace_targets(group.name, endpoints, self._clock())
        self._log.info(f"targets.{action}ed", target_group=group.name, targets=",".join(ids))

    async def _reply(
        self, action: str, name: str, ids: Sequence[str], request: Request
    ) -> Response:
        current = self._runtime.current.groups.get(name)  # a reload may have removed it since
        described = self._describe_group(current) if current is not None else []
        targets = [t for t in described if t["id"] in ids]
        reply: dict[str, Any] = {"target_group": name, "targets": targets}
        if self.peers is not None and not _from_peer(request):
            reply["workers"] = await self.peers(
                f"/targets/{action}", request.body, _authorization(request)
            )
        return _json(200, reply)

    def _refuse_admin_targets(self, group: GroupRuntime, targets: Sequence[Target]) -> None:
        """As the file's check does (:meth:`BalancerConfig.admin_listener_at`)."""
        config = self._runtime.current.config
        for target in targets:
            port = target.port or group.config.port
            admin = config.admin_listener_at(target.host, port)
            if admin is not None:
                raise ApiError(
                    400,
                    "ValidationError",
                    f"target {target_id(target.host, port)} is this balancer's own admin "
                    f"listener ({admin}): {ADMIN_AS_TARGET}",
                )

    def _group(self, name: str) -> GroupRuntime:
        group = self._runtime.current.groups.get(name)
        if group is None:
            raise ApiError(404, "TargetGroupNotFound", f"no target group named {name!r}")
        return group

    def _describe_group(self, group: GroupRuntime) -> list[dict[str, Any]]:
        now = self._clock()
        check = group.config.health_check
        described: list[dict[str, Any]] = []
        listed = set()
        for endpoint in group.endpoints:
            listed.add(endpoint.target_id)
            record = group.live.health.get(endpoint.target_id)
            described.append(
                {
                    "id": endpoint.target_id,
                    "host": endpoint.host,
                    "port": endpoint.port,
                    "weight": endpoint.weight,
                    "zone": endpoint.zone,
                    "source": self._overrides.source(group.name, endpoint.target_id),
                    "health_check_port": check_port(check, endpoint.port),
                    **_health(record, now),
                    "in_flight": group.live.in_flight(endpoint.target_id),
                }
            )
        # Deregistered targets stay visible while they drain, as in DescribeTargetHealth, and
        # until the deregistration delay ends even when they finished early.
        for record in [*group.live.health, *group.live.health.departed(now)]:
            if record.target_id in listed:
                continue
            listed.add(record.target_id)
            host, port = _split(record.target_id)
            described.append(
                {
                    "id": record.target_id,
                    "host": host,
                    "port": port,
                    "source": "deregistered",
                    **_health(record, now),
                    "in_flight": group.live.in_flight(record.target_id),
                }
            )
        return described


def _refuse_unresolvable_zones(targets: Sequence[Target]) -> None:
    """Refuse a new registration the resolver can never look up (``::1%lo``: an interface
    name is a zone on link-local addresses only), which would stay unhealthy for good.
    Checked here, not in :class:`Target`: a ``targets.json`` that holds one already must
    not stop the start."""
    for target in targets:
        try:
            address = ip_address(target.host)
        except ValueError:  # a DNS name
            continue
        problem = zone_problem(address) if isinstance(address, IPv6Address) else None
        if problem is not None:
            raise ApiError(400, "ValidationError", f"target host {target.host!r}: {problem}")


def _health(record: TargetHealth | None, now: float) -> dict[str, Any]:
    if record is None:  # listed but not yet in the table: a reload is being applied
        reason = Reason.REGISTRATION_IN_PROGRESS
        return {"state": "initial", "reason": reason.value, "description": DESCRIPTIONS[reason]}
    description = DESCRIPTIONS[record.reason] if record.reason else None
    if record.reason is Reason.RESPONSE_CODE_MISMATCH and record.failed_status is not None:
        description = f"Health checks failed with these codes: [{record.failed_status}]"
    return {
        "state": record.state.value,
        "reason": record.reason.value if record.reason else None,
        "description": description,
        "seconds_in_state": round(max(0.0, now - record.since), 3),
    }


def _split(key: str) -> tuple[str, int]:
    host, _, port = key.rpartition(":")
    return host.strip("[]"), int(port)


def _decode(body: bytes) -> TargetsRequest:
    try:
        return _DECODER.decode(body)
    except msgspec.ValidationError as exc:
        raise ApiError(400, "ValidationError", str(exc)) from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, "ValidationError", f"the body is not JSON: {exc}") from None


def _query_value(request: Request, key: str) -> str | None:
    # Blank values kept: "?target_group=" names no group (a 404), it does not ask for all.
    for name, value in parse_qsl(request.query.decode("latin-1"), keep_blank_values=True):
        if name == key:
            return value
    return None


def _from_peer(request: Request) -> bool:
    """A request forwarded by a sibling worker: apply it here only, never forward again."""
    return request.header(PEER_HEADER.encode()) is not None


def _json(status: int, body: object) -> Response:
    return Response(status, msgspec.json.encode(body) + b"\n", content_type=JSON)


def _authorization(request: Request) -> str | None:
    header = request.header(b"authorization")
    return None if header is None else header.decode("latin-1")
