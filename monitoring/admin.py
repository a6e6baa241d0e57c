"""The admin listener: ``/metrics``, ``/healthz``, ``/readyz`` and routes a daemon mounts.

``/healthz`` answers 200 while the process can serve HTTP at all (liveness). ``/readyz``
answers 200 only once every listener is bound and until the daemon starts draining, so a load
balancer in front stops sending work before the process goes away.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from functools import partial

import trio

from monitoring import fastio
from monitoring.httpserver import Request, Response, serve_http
from monitoring.lifecycle import Frame, Listener, bind_tcp
from monitoring.settings import AdminSettings, HttpLimits

Route = Callable[[Request], Awaitable[Response]]
# Admin requests are small: a route that needs a bigger body (a targets API) is still far below.
ADMIN_MAX_BODY_BYTES = 1 << 20


class AdminServer:
    """Routes admin requests. ``routes`` maps (method, path) to a handler."""

    def __init__(self, frame: Frame, routes: Mapping[tuple[str, str], Route] | None = None) -> None:
        self._frame = frame
        self._routes: dict[tuple[str, str], Route] = {
            ("GET", "/metrics"): self._metrics,
            ("GET", "/healthz"): self._healthz,
            ("GET", "/readyz"): self._readyz,
        }
        self._routes.update(routes or {})

    def mount(self, method: str, path: str, route: Route) -> None:
        self._routes[(method, path)] = route

    async def handle(self, request: Request) -> Response:
        method = request.method.decode("ascii", "replace")
        if method == "HEAD":
            method = "GET"
        path = request.path
        route = self._routes.get((method, path))
        if route is not None:
            return await route(request)
        allowed = sorted(m for (m, p) in self._routes if p == path)
        if allowed:
            return Response(405, b"method not allowed\n", headers=[("allow", ", ".join(allowed))])
        return Response(404, b"not found\n")

    async def _metrics(self, request: Request) -> Response:
        accept = request.header(b"accept")
        body, content_type = self._frame.metrics.render(
            accept.decode("latin-1") if accept else None
        )
        return Response(200, body, content_type=content_type)

    async def _healthz(self, request: Request) -> Response:
        return Response(200, b"ok\n")

    async def _readyz(self, request: Request) -> Response:
        if self._frame.ready and not self._frame.draining.started:
            return Response(200, b"ready\n")
        return Response(503, b"not ready\n")


async def open_admin_listener(
    frame: Frame, settings: AdminSettings, limits: HttpLimits, server: AdminServer
) -> Listener:
    """Bind the admin address and return its listener, ready for ``frame.serve_listeners``."""
    sockets = await bind_tcp(settings.host, settings.port)

    async def handle_connection(stream: trio.SocketStream) -> None:
        addresses = fastio.accepted_addresses(stream.socket)
        if addresses is None:
            return  # reset before it was served: nothing to answer, nothing to log
        peer = addresses[0]
        await serve_http(
            stream,
            server.handle,
            limits,
            client=(str(peer[0]), int(peer[1])),
            draining=frame.draining,
            on_error=partial(_report_error, frame),
            max_body_bytes=ADMIN_MAX_BODY_BYTES,
        )

    return Listener(
        "admin",
        sockets,
        handle_connection,
        max_connections=limits.max_connections,
        serves_the_drain=True,  # /readyz says 503 while the daemon drains
    )


def _report_error(frame: Frame, exc: BaseException) -> None:
    frame.log.exception("admin.handler_failed", exc)
    frame.metrics.handler_errors.labels("admin").inc()
