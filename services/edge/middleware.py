"""ASGI middleware of the edge: request id, JSON access log and HTTP metrics for every request.

Written as plain ASGI (not BaseHTTPMiddleware) so streamed responses (SSE, WebSocket) pass through
untouched and the cost per request stays small.
"""

from __future__ import annotations

import logging
import time

from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.runtime.context import REQUEST_ID_HEADER, new_request_id, request_id_var
from services.runtime.metrics import HttpMetrics

log = logging.getLogger("macp.http")

_REQUEST_ID_BYTES = REQUEST_ID_HEADER.encode()


def _route_template(app: ASGIApp, scope: Scope) -> str:
    """The matched route's path template (`/v1/agents/{id}`), so metrics do not explode per id."""
    for route in getattr(app, "routes", ()):
        if isinstance(route, Route):
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return route.path
    return "unmatched"


def _incoming_request_id(scope: Scope) -> str | None:
    """The caller's `x-request-id` (the last one, as a dict of the headers would give)."""
    found: bytes | None = None
    for name, value in scope.get("headers", ()):
        if name == _REQUEST_ID_BYTES:
            found = value
    return found.decode("latin-1") if found else None


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: HttpMetrics, router: ASGIApp) -> None:
        self._app = app
        self._metrics = metrics
        self._router = router

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self._app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope) or new_request_id()
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", ()))
                headers.append((_REQUEST_ID_BYTES, request_id.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self._app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = _route_template(self._router, scope)
            method = scope.get("method", "WS")
            self._metrics.observe(method, route, str(status or 500), elapsed)
            log.info(
                "http",
                extra={
                    "method": method,
                    "path": scope.get("path"),
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                },
            )
            request_id_var.reset(token)
