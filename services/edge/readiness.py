"""The edge's readiness: it takes work only while it can do it.

Ready means: the token verifier holds the token service's signing keys, and every service the edge
needs (the registry's `EDGE.needs`: orchestrator, conversation, token; `MACP_EDGE_NEEDS`) answers
SERVING through the mesh. Checked in the background every half second by the runtime's
`Readiness` (services/runtime/readiness.py, which also says why a blip shorter than that does not
count), never per request: a request only reads the verdict.

Until the edge is ready, and again whenever it stops being ready:
- `GET /healthz` answers 503 with a JSON body naming what is not ready (`not_ready`), so Envoy's
  health check and `macp up`'s probe wait for real readiness;
- every other HTTP request is refused at once with 503, the edge's error shape, code `NOT_READY`
  and `Retry-After`, before authentication, rate limits or any RPC;
- a WebSocket connect is accepted and closed at once with 4503 (services/edge/ws/handshake.py), the
  reason naming what is not ready, before its token is looked at.
Without this, a client reaching an edge that has just started (or whose orchestrator restarts)
got a 4503 "signing keys are not loaded yet", or a turn that failed at once deep in the mesh.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from http import HTTPStatus

import grpc
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from services.edge.errors import FastJSONResponse, error_response
from services.runtime.auth.jwks import JwksCache
from services.runtime.readiness import Readiness, keys_check, mesh_check

log = logging.getLogger("macp.edge.readiness")

HEALTH_PATH = "/healthz"
# Liveness: 200 while the process serves HTTP at all, ready or not, so an orchestrator restarts an
# edge that hangs and never one that only waits for a store or a service (docs/deploy.md).
LIVENESS_PATH = "/livez"
PROBE_PATHS = frozenset({HEALTH_PATH, LIVENESS_PATH})
NOT_READY = "NOT_READY"
# The verdict is checked every half second: a client told to come back in a second sees a new one.
RETRY_AFTER_SECONDS = 1


def edge_readiness(jwks: JwksCache, probes: grpc.aio.Channel, needs: Sequence[str]) -> Readiness:
    """The edge's checks: its verifier's keys, and each needed service through the mesh."""
    return Readiness([keys_check(jwks), *(mesh_check(probes, name) for name in needs)])


def not_ready_message(not_ready: Sequence[str]) -> str:
    return f"the edge is not ready yet (waiting for {', '.join(not_ready)}); retry shortly"


def _retry_after() -> dict[str, str]:
    return {"retry-after": str(RETRY_AFTER_SECONDS)}


def health_response(readiness: Readiness, rate_limits: str) -> JSONResponse:
    """`/healthz`: 200 when ready, else 503 naming what is not; both say how rate limits count
    (still 200 while they are counted locally: the edge serves, and says how it limits)."""
    not_ready = readiness.not_ready
    if not not_ready:
        return FastJSONResponse({"status": "ok", "rate_limits": rate_limits})
    body = {"status": "not_ready", "not_ready": list(not_ready), "rate_limits": rate_limits}
    return FastJSONResponse(body, status_code=HTTPStatus.SERVICE_UNAVAILABLE.value, headers=_retry_after())


class ReadinessMiddleware:
    """Refuses every HTTP request but the probes with 503 `NOT_READY` while the edge is not ready."""

    def __init__(self, app: ASGIApp, readiness: Callable[[], Readiness]) -> None:
        self._app = app
        self._readiness = readiness

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in PROBE_PATHS:
            await self._app(scope, receive, send)
            return
        readiness = self._readiness()
        if readiness.ready:
            await self._app(scope, receive, send)
            return
        not_ready = readiness.not_ready
        response = error_response(HTTPStatus.SERVICE_UNAVAILABLE, NOT_READY, not_ready_message(not_ready))
        response.headers.update(_retry_after())
        await response(scope, receive, send)
