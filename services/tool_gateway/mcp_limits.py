"""The platform's request limits at `/mcp`, which MCP clients reach straight from Envoy's front
listener, past the edge and its limits (services/runtime/request_limits.py has the limits, their
settings and their counting; both apply them under the same Redis keys).

Two layers around the token check (services/tool_gateway/resource_auth.py), before any JSON-RPC
work (the body is not even read):
- `LimitSources`, before the token is looked at: a request answered 401 (no token, a bad one, one
  for another audience) counts against its source address (`MACP_RATE_LIMIT_SOURCE_FAILURES`, the
  address being the last `x-forwarded-for` entry, Envoy's). While the address is over, each of its
  requests is refused from this process's memory, without a Redis call and before its token is
  verified, so a flood of forged tokens costs no signature check. Unlike the edge, which never
  refuses a request with a token by its address, this refuses them all: every request here carries
  a token, and telling a good one from a guess is the very check the flood must not buy. At most
  `MACP_RATE_LIMIT_SOURCE_IN_FLIGHT` failures of one address are being counted at once in one
  process, more of its requests being refused meanwhile: a burst sent at once is not all verified
  before its first failure is counted.
- `LimitCallers`, after the token is verified: the request counts against its client in its
  tenant (the limit of the client's class) and against its tenant, the very buckets the edge
  counts, so a client's allowance is one across the edge and `/mcp`. The API-wide limit
  (`MACP_RATE_LIMIT_API`) is the edge's own and does not apply here, nor `MACP_RATE_LIMIT_SOURCE`
  (requests without a token are failures here: every request needs one).

A refusal is 429 with `Retry-After` and the RateLimit header fields the edge sends (admitted
answers carry the RateLimit fields too), and its body is a JSON-RPC error (`id` null, code
`RATE_LIMITED`, the wait in `data`): the official SDK's client reads a JSON-RPC error from a non-2xx
answer and raises it for the request (MCPError), where any other body would become a bare
"Server returned an error response". `MACP_RATE_LIMITS=off` leaves both layers out.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Final

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.runtime.ratelimit import Decision, Limit, RedisLimiter, headers, refusal, retry_after
from services.runtime.request_limits import RateLimits, RateLimitSettings
from services.runtime.settings import Env
from services.runtime.source_address import scope_source
from services.tool_gateway.resource_auth import request_caller

# A JSON-RPC server error of its own (the implementation-defined range, clear of the codes the
# SDK and the MCP spec use), its last digits the HTTP status it comes with.
RATE_LIMITED: Final = -32029
_UNAUTHORIZED: Final = 401


def mcp_rate_limits(
    env: Env, redis: aioredis.Redis, key_prefix: str, registry: CollectorRegistry
) -> RateLimits:
    """The platform's limits as `/mcp` applies them: the edge's settings and Redis keys, without the
    API-wide limit and the one on requests without a token (see the module docstring)."""
    settings = dataclasses.replace(RateLimitSettings.from_env(env), api=(), source=())
    return RateLimits(settings, RedisLimiter(redis, key_prefix), registry)


def refusal_response(decision: Decision) -> Response:
    """429 with a JSON-RPC error body, Retry-After and the RateLimit fields."""
    limit = decision.refused_by.name if decision.refused_by else None
    body = {
        "jsonrpc": "2.0",
        "id": None,  # refused before the body is read; the SDK's client answers the request it sent
        "error": {
            "code": RATE_LIMITED,
            "message": refusal(decision),
            "data": {"limit": limit, "retryAfterSeconds": retry_after(decision)},
        },
    }
    response = JSONResponse(body, status_code=429)
    response.raw_headers.extend(headers(decision))
    return response


class LimitSources:
    """Refuses the requests of an address over its failed authentications, and counts each 401
    against its address (see the module docstring); runs before `RequireToken`."""

    def __init__(self, app: ASGIApp, limits: RateLimits) -> None:
        self._app = app
        self._limits = limits
        # address -> its failures being counted now, in this process.
        self._counting: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        address = scope_source(scope)
        refused = self._limits.blocked(address) or self._too_many_counting(address)
        if refused is not None:
            await refusal_response(refused)(scope, receive, send)
            return

        async def send_counting_failures(message: Message) -> None:
            # Counted before the 401 goes out, so the client's next attempt finds it counted.
            if message["type"] == "http.response.start" and message["status"] == _UNAUTHORIZED:
                self._counting[address] += 1  # before the await: a burst sees it at once
                try:
                    await self._limits.count_failure(address)
                finally:
                    self._counting[address] -= 1
                    if not self._counting[address]:
                        del self._counting[address]
            await send(message)

        await self._app(scope, receive, send_counting_failures)

    def _too_many_counting(self, address: str) -> Decision | None:
        most = self._limits.settings.source_in_flight
        if self._counting[address] < most:
            return None
        limit = Limit("source_in_flight", most, 1.0, most)
        return Decision(admitted=False, retry_after_seconds=1.0, refused_by=limit, states=())


class LimitCallers:
    """Counts each request against its client in its tenant and its tenant; runs after
    `RequireToken`, before the body is read."""

    def __init__(self, app: ASGIApp, limits: RateLimits) -> None:
        self._app = app
        self._limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        decision = await self._limits.check(request_caller(scope))
        if not decision.admitted:
            await refusal_response(decision)(scope, receive, send)
            return
        fields = headers(decision)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *fields]}
            await send(message)

        await self._app(scope, receive, send_with_headers)
