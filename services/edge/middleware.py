"""ASGI middleware of the edge: request id, trace, JSON access log and HTTP metrics for every request.

Written as plain ASGI (not BaseHTTPMiddleware) so streamed responses (SSE, WebSocket) pass through
untouched and the cost per request stays small.

The trace: with tracing on, each request is a SERVER span (`GET /v1/agents/{id}`), child of the
caller's `traceparent` if it sent one (else a new trace), current while the request's handlers call
the mesh, so every call they make is part of it; the response carries the span's `traceparent` so
a client can find its request's trace. With tracing off, a caller's headers are only forwarded.
"""

from __future__ import annotations

import logging
import re
import time

from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.runtime import tracing
from services.runtime.context import (
    REQUEST_ID_HEADER,
    is_request_id,
    new_request_id,
    request_id_var,
    reset_quietly,
)
from services.runtime.metrics import HttpMetrics
from services.runtime.registry import EDGE

log = logging.getLogger("macp.http")

_REQUEST_ID_BYTES = REQUEST_ID_HEADER.encode()
_TRACEPARENT_BYTES = tracing.TRACEPARENT.encode()
_TRACESTATE_BYTES = tracing.TRACESTATE.encode()


# Paths whose route template is remembered (bounded: paths carry ids; emptied when full).
MAX_REMEMBERED_ROUTES = 4096
MAX_REMEMBERED_PATH = 256
# Set in a request's scope by a middleware that reports such requests in bulk (a flood refused by
# its source address): the request is counted in the metrics but writes no access-log line.
UNLOGGED = "macp.unlogged"


class RouteTemplates:
    """The matched route's path template (`/v1/agents/{id}`) of a request, so metrics do not
    explode per id. Remembered per (method, path): matching tries every route's pattern in turn,
    which cost a few tens of µs a request, as much as the rest of this middleware."""

    def __init__(self, router: ASGIApp) -> None:
        self._routes = [route for route in getattr(router, "routes", ()) if isinstance(route, Route)]
        self._known: dict[tuple[str, str], str] = {}

    def of(self, scope: Scope) -> str:
        key = (scope.get("method", ""), scope.get("path", ""))
        template = self._known.get(key)
        if template is None:
            template = self._match(scope)
            if len(key[1]) <= MAX_REMEMBERED_PATH:  # a client's long path is not kept
                if len(self._known) >= MAX_REMEMBERED_ROUTES:
                    self._known.clear()
                self._known[key] = template
        return template

    def _match(self, scope: Scope) -> str:
        for route in self._routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return route.path
        return "unmatched"


# What the edge passes on of the caller's headers: they become gRPC metadata on every call it
# makes, which must be printable ASCII and fit the metadata limit. A request id is the runtime's
# `is_request_id` form (up to 128 visible characters); a traceparent is W3C's (version, trace id,
# parent id, flags, and what a later version may append); a tracestate at most 512 characters (W3C:
# 32 members of up to 256 each, and 512 is what a vendor may rely on being kept). Anything else is
# not passed on: the request gets an id of the edge's own, and starts a trace of its own.
_TRACEPARENT_FORM = re.compile(rb"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(-[\x21-\x7e]{0,64})?")
_TRACESTATE_FORM = re.compile(rb"[\x20-\x7e]{1,512}")


def _incoming(scope: Scope) -> tuple[str | None, str | None, str | None]:
    """The caller's `x-request-id`, `traceparent` and `tracestate` (the last of each, as a dict of
    the headers would give), in one pass over the headers; each only if well formed."""
    request_id = traceparent = tracestate = None
    for name, value in scope.get("headers", ()):
        if name == _REQUEST_ID_BYTES:
            request_id = value
        elif name == _TRACEPARENT_BYTES:
            traceparent = value
        elif name == _TRACESTATE_BYTES:
            tracestate = value
    parent = _well_formed(traceparent, _TRACEPARENT_FORM)
    state = _well_formed(tracestate, _TRACESTATE_FORM) if parent is not None else None
    caller_id = request_id.decode("latin-1") if request_id else None
    return (caller_id if caller_id and is_request_id(caller_id) else None), parent, state


def _well_formed(value: bytes | None, form: re.Pattern[bytes]) -> str | None:
    return value.decode("ascii") if value and form.fullmatch(value) else None


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: HttpMetrics, router: ASGIApp) -> None:
        self._app = app
        self._metrics = metrics
        self._routes = RouteTemplates(router)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self._app(scope, receive, send)
            return
        request_id, traceparent, tracestate = _incoming(scope)
        request_id = request_id or new_request_id()
        token = request_id_var.set(request_id)
        method = scope.get("method", "WS")
        trace = None
        if traceparent is not None or tracing.enabled():
            attributes = {"http.request.method": method, "url.path": scope.get("path", "")}
            trace = tracing.served(method, EDGE.name, traceparent, tracestate, attributes)
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", ()))
                headers.append((_REQUEST_ID_BYTES, request_id.encode("latin-1")))
                if trace is not None and trace.span is not None:
                    headers.append((_TRACEPARENT_BYTES, tracing.headers_of(trace.span)[0].encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self._app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = self._routes.of(scope)
            self._metrics.observe(method, route, str(status or 500), elapsed)
            if trace is not None:
                tracing.end_http(trace, method, route, status or 500)
            if not scope.get(UNLOGGED):
                self._access_log(method, route, status, elapsed, scope)
            reset_quietly(request_id_var, token)

    @staticmethod
    def _access_log(method: str, route: str, status: int, elapsed: float, scope: Scope) -> None:
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
