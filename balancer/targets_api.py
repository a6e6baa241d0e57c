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
not the shape above), 400 ``InvalidTarget`` (deregistering a target that is not registered),
404 ``TargetGroupNotFound``, 400 ``ConfigError`` (a reload refused: the old config serves on).

Registrations made here survive a reload, as on ALB, where targets registered through the API
stay until deregistered through the API. The effective target list of a group is the file's
targets, minus those deregistered here, plus those registered here (with the weight given
here when both name a target). A reload re-reads the file under these changes: an API
deregistration of a target the file lists holds until the target is registered again or the
file stops listing it; a registration the file starts listing becomes the file's. The changes
live in the process's memory: a restart starts from the file alone, so make lasting changes
in the file. ``source`` in ``GET /targets`` says where each target comes from.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Annotated, Any, Final
from urllib.parse import parse_qsl

import msgspec
import trio

from balancer.config import (
    MAX_TARGETS_PER_GROUP,
    BalancerConfig,
    Endpoint,
    Target,
    TargetGroup,
    target_id,
)
from balancer.health import Reason, TargetHealth, TargetState
from balancer.peers import PEER_HEADER
from balancer.probes import check_port
from balancer.runtime import GroupRuntime, Runtime, Snapshot
from monitoring.admin import AdminServer
from monitoring.httpserver import Request, Response
from monitoring.logging import EventLog

JSON: Final = "application/json"

# AWS's descriptions of its reason codes (DescribeTargetHealth ``Description``).
DESCRIPTIONS: Final[Mapping[Reason, str]] = {
    Reason.REGISTRATION_IN_PROGRESS: "Target registration is in progress",
    Reason.INITIAL_HEALTH_CHECKING: "Initial health checks in progress",
    Reason.INTERNAL_ERROR: "Health checks failed with an internal error",
    Reason.RESPONSE_CODE_MISMATCH: "Health checks failed with a status code outside the matcher",
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

    def endpoints(self, group: TargetGroup) -> list[Endpoint]:
        """The group's effective targets: the file's, minus removed, plus (re)registered."""
        added = self._added.get(group.name, {})
        removed = self._removed.get(group.name, set())
        found: list[Endpoint] = []
        for endpoint in group.endpoints():
            if endpoint.target_id in removed:
                continue
            override = added.get(endpoint.target_id)
            found.append(endpoint if override is None else _endpoint(group, override))
        listed = {e.target_id for e in found}
        found += [_endpoint(group, t) for key, t in added.items() if key not in listed]
        return found

    def source(self, group: str, target: str) -> str:
        """``api`` for a target registered through the API, else ``config``."""
        return "api" if target in self._added.get(group, {}) else "config"

    def register(self, group: TargetGroup, targets: Iterable[Target]) -> None:
        for target in targets:
            key = target_id(target.host, target.port or group.port)
            self._added.setdefault(group.name, {})[key] = target
            self._removed.get(group.name, set()).discard(key)

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
            in_file = {e.target_id: e for e in group.endpoints()}
            added = self._added.get(name, {})
            for key, target in list(added.items()):
                file_endpoint = in_file.get(key)
                if file_endpoint is not None and _endpoint(group, target) == file_endpoint:
                    del added[key]
            self._removed[name] = self._removed.get(name, set()) & in_file.keys()

    def apply(self, snapshot: Snapshot) -> Snapshot:
        """``snapshot`` with every group's target list under these overrides."""
        groups: dict[str, GroupRuntime] = {}
        changed = False
        for name, group in snapshot.groups.items():
            endpoints = self.endpoints(group.config)
            if list(group.endpoints) != endpoints:
                group = GroupRuntime(group.config, group.live, endpoints, in_use=group.in_use)
                changed = True
            groups[name] = group
        return replace(snapshot, groups=groups) if changed else snapshot


def _endpoint(group: TargetGroup, target: Target) -> Endpoint:
    port = target.port or group.port
    return Endpoint(target_id(target.host, port), target.host, port, target.weight, target.zone)


# ---------------------------------------------------------------------------------------------
# The routes.

Peers = Callable[[str, bytes], Awaitable[dict[str, Any]]]


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
    ) -> None:
        self._runtime = runtime
        self._overrides = overrides
        self._log = log
        self._reload = reload
        self._clock = clock
        self.peers = peers
        self.primary = primary

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
                        f"send admin changes to worker 0 at {host}:{port}; it applies them to "
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
        group = self._group(body.target_group)
        current = {e.target_id for e in self._overrides.endpoints(group.config)}
        new = {target_id(t.host, t.port or group.config.port) for t in body.targets}
        if len(current | new) > MAX_TARGETS_PER_GROUP:
            raise ApiError(
                400, "ValidationError", f"at most {MAX_TARGETS_PER_GROUP} targets per group"
            )
        self._overrides.register(group.config, body.targets)
        return await self._apply("register", group, sorted(new), request)

    async def deregister(self, request: Request) -> Response:
        body = _decode(request.body)
        group = self._group(body.target_group)
        ids = sorted({target_id(t.host, t.port or group.config.port) for t in body.targets})
        registered = {e.target_id for e in group.endpoints}
        for key in ids:
            record = group.live.health.get(key)
            draining = record is not None and record.state is TargetState.DRAINING
            if key not in registered and not draining:
                raise ApiError(400, "InvalidTarget", f"{key} is not registered in {group.name}")
        self._overrides.deregister(group.config, ids)
        return await self._apply("deregister", group, ids, request)

    async def reload(self, request: Request) -> Response:
        if self._reload is None:
            raise ApiError(503, "Unavailable", "reload is not available in this process")
        refused = await self._reload()
        if refused is not None:
            raise ApiError(400, "ConfigError", refused)
        reply: dict[str, Any] = {"reloaded": True, "generation": self._runtime.current.generation}
        if self.peers is not None and not _from_peer(request):
            reply["workers"] = await self.peers("/reload", b"")
        return _json(200, reply)

    async def _apply(
        self, action: str, group: GroupRuntime, ids: Sequence[str], request: Request
    ) -> Response:
        endpoints = self._overrides.endpoints(group.config)
        self._runtime.replace_targets(group.name, endpoints, self._clock())
        self._log.info(f"targets.{action}ed", target_group=group.name, targets=",".join(ids))
        current = self._runtime.current.groups[group.name]
        targets = [t for t in self._describe_group(current) if t["id"] in ids]
        reply: dict[str, Any] = {"target_group": group.name, "targets": targets}
        if self.peers is not None and not _from_peer(request):
            reply["workers"] = await self.peers(f"/targets/{action}", request.body)
        return _json(200, reply)

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
        # Deregistered targets stay visible while they drain, as in DescribeTargetHealth.
        for record in group.live.health:
            if record.target_id in listed:
                continue
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


def _health(record: TargetHealth | None, now: float) -> dict[str, Any]:
    if record is None:  # listed but not yet in the table: a reload is being applied
        reason = Reason.REGISTRATION_IN_PROGRESS
        return {"state": "initial", "reason": reason.value, "description": DESCRIPTIONS[reason]}
    return {
        "state": record.state.value,
        "reason": record.reason.value if record.reason else None,
        "description": DESCRIPTIONS[record.reason] if record.reason else None,
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
    for name, value in parse_qsl(request.query.decode("latin-1")):
        if name == key:
            return value
    return None


def _from_peer(request: Request) -> bool:
    """A request forwarded by a sibling worker: apply it here only, never forward again."""
    return request.header(PEER_HEADER.encode()) is not None


def _json(status: int, body: object) -> Response:
    return Response(status, msgspec.json.encode(body) + b"\n", content_type=JSON)
