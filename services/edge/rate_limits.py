"""Rate limits at the edge: the API as a whole, each client in each tenant by its class, each
tenant, and each source address before authentication.

The limits, their settings and their counting are the platform's (services/runtime/
request_limits.py), shared with the tool gateway's `/mcp` under the same Redis keys, so a client's
allowance is one wherever it comes in. Here they are applied to the edge's requests:

Every request counts against the whole API (`MACP_RATE_LIMIT_API`, 1,000/s with bursts to 2,000 by
default, from the platform seed); an authenticated one also against its client in its tenant, with
the limit of the client's class (004's table: internal 1,000/min, consumer 10,000/hour, partner
10,000/day, third-party 1,000/hour with bursts of 50/min; `MACP_RATE_LIMIT_<CLASS>`), and against its
tenant (`MACP_RATE_LIMIT_TENANT`).

Before authentication, each source address (services/edge/source_limits.py) is held to
`MACP_RATE_LIMIT_SOURCE` for requests that carry no token (OAuth endpoints, discovery, a route
called without one) and to `MACP_RATE_LIMIT_SOURCE_FAILURES` for failed authentications (a refused
bearer token, a failed `/oauth2/token` attempt): past the failures' limit, the address's requests
without a token get 429, before any password or secret in them is looked at, until the limit has
room. Requests with a valid token go on, limited by their client and tenant.

Answers carry the IETF RateLimit header fields (services/runtime/ratelimit.py `headers`). A refused
request is 429 with `Retry-After` and the edge's error shape.

If Redis is unreachable the edge does not fail open: it counts locally (request_limits.py says how)
and says so in /healthz. `MACP_RATE_LIMITS=off` turns the limits off: no Redis call, no RateLimit
headers, /healthz says `off`.

Every decision is counted in `macp_rate_limit_decisions_total{scope, limit, decision}`, and
`GET /v1/rate-limits` (services/edge/rest/rate_limit_status.py) shows a caller its limits and where
it stands; it counts as one request like any other, so it is no way to reach Redis without limit.
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.edge.errors import error_response
from services.runtime.principal import caller_var
from services.runtime.ratelimit import Decision, headers, refusal, retry_after
from services.runtime.request_limits import (
    SOURCE_DEFAULT,
    SOURCE_FAILURES_DEFAULT,
    SOURCE_IN_FLIGHT_DEFAULT,
    RateLimits,
    RateLimitSettings,
    caller_identity,
)

# The platform's limits as the edge's modules (and their tests and benches) have always named them.
__all__ = [
    "SOURCE_DEFAULT",
    "SOURCE_FAILURES_DEFAULT",
    "SOURCE_IN_FLIGHT_DEFAULT",
    "UNCOUNTED_PATHS",
    "RateLimitMiddleware",
    "RateLimitSettings",
    "RateLimits",
    "caller_identity",
    "headers",
    "refusal",
    "refusal_response",
    "retry_after",
]

# Answered without counting a request: health probes.
UNCOUNTED_PATHS = frozenset({"/healthz", "/livez"})


def refusal_response(decision: Decision) -> Response:
    """The 429 of a refused HTTP request: the edge's error shape, Retry-After and RateLimit fields."""
    response = error_response(HTTPStatus.TOO_MANY_REQUESTS, "RESOURCE_EXHAUSTED", refusal(decision))
    response.raw_headers.extend(headers(decision))
    return response


class RateLimitMiddleware:
    """Counts each HTTP request (after authentication, so the caller's class and tenant are known)."""

    def __init__(self, app: ASGIApp, limits: Callable[[], RateLimits]) -> None:
        self._app = app
        self._limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in UNCOUNTED_PATHS or not self._limits().enabled:
            await self._app(scope, receive, send)
            return
        decision = await self._limits().check(caller_var.get())
        fields = headers(decision)
        if not decision.admitted:
            await refusal_response(decision)(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *fields]}
            await send(message)

        await self._app(scope, receive, send_with_headers)
