"""`GET /v1/rate-limits`: the limits the edge applies and where the signed-in caller stands on each.

The request counts like any other (it is one Redis call, and a client polling it must not be able
to make those without limit), and the answer is the standing after it: `limits` are the caller's
own (the API as a whole, its client class in its tenant, its tenant) with the requests left and
the seconds until the limit is full again, and the same RateLimit header fields every counted
answer carries; `configured` is every limit the edge is set up with (`MACP_RATE_LIMIT_*`, the
per-source-address ones included), whatever the caller's class.
"""

from __future__ import annotations

import math
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from services.edge.errors import FastJSONResponse
from services.edge.rate_limits import RateLimits, RateLimitSettings, caller_identity, headers
from services.edge.routes import ApiRoute, Content
from services.edge.schema import JsonSchema
from services.runtime.principal import current_caller
from services.runtime.ratelimit import Decision, Limit

_LIMIT: JsonSchema = {
    "type": "object",
    "required": ["name", "limit", "windowSeconds", "burst", "policy"],
    "properties": {
        "name": {"type": "string", "description": "the limit's name, as in RateLimit-Policy"},
        "limit": {"type": "integer", "description": "requests allowed per window"},
        "windowSeconds": {"type": "integer", "description": "the window, in seconds"},
        "burst": {"type": "integer", "description": "requests allowed at once"},
        "policy": {"type": "string", "description": "the limit as a RateLimit-Policy item"},
    },
}
_STANDING: JsonSchema = {
    "type": "object",
    "required": ["scope", "name", "limit", "windowSeconds", "burst", "policy", "remaining", "resetSeconds"],
    "properties": {
        **_LIMIT["properties"],
        "scope": {"type": "string", "enum": ["global", "class", "tenant", "source"]},
        "remaining": {"type": "integer", "description": "requests that may be made now, at once"},
        "resetSeconds": {"type": "integer", "description": "seconds until the limit is full again"},
    },
}
STATUS_SCHEMA: JsonSchema = {
    "type": "object",
    "required": ["counting", "clientClass", "tenantId", "admitted", "limits", "configured"],
    "properties": {
        "counting": {
            "type": "string",
            "enum": ["redis", "local", "off"],
            "description": "where limits are counted: Redis (exact across edges), each edge's memory "
            "while Redis is unreachable, or off (MACP_RATE_LIMITS=off)",
        },
        "clientClass": {"type": "string", "description": "the caller's client class"},
        "clientId": {"type": "string", "description": "the caller's client (the subject without one)"},
        "tenantId": {"type": "string"},
        "admitted": {"type": "boolean", "description": "whether a request made now would be admitted"},
        "retryAfterSeconds": {"type": "integer", "description": "when not admitted: seconds to wait"},
        "limits": {"type": "array", "items": _STANDING},
        "configured": {
            "type": "object",
            "properties": {
                "global": {"type": "array", "items": _LIMIT},
                "classes": {"type": "object", "additionalProperties": {"type": "array", "items": _LIMIT}},
                "tenant": {"type": "array", "items": _LIMIT},
                "source": {"type": "array", "items": _LIMIT},
                "sourceFailures": {"type": "array", "items": _LIMIT},
            },
        },
    },
}


def _limit(limit: Limit) -> dict[str, Any]:
    return {
        "name": limit.name,
        "limit": limit.limit,
        "windowSeconds": math.ceil(limit.period_seconds),
        "burst": limit.burst,
        "policy": limit.policy,
    }


def _configured(settings: RateLimitSettings) -> dict[str, Any]:
    return {
        "global": [_limit(limit) for limit in settings.api],
        "classes": {name: [_limit(limit) for limit in limits] for name, limits in settings.by_class.items()},
        "tenant": [_limit(limit) for limit in settings.tenant],
        "source": [_limit(limit) for limit in settings.source],
        "sourceFailures": [_limit(limit) for limit in settings.source_failures],
    }


def _counting(limits: RateLimits, decision: Decision) -> str:
    if not limits.enabled:
        return "off"
    return "local" if decision.local else "redis"


def status_document(limits: RateLimits, decision: Decision, identity: dict[str, str]) -> dict[str, Any]:
    scopes = {limit.name: scope for scope, limit in limits.settings.scoped()}
    document: dict[str, Any] = {
        "counting": _counting(limits, decision),
        **identity,
        "admitted": decision.admitted,
        "limits": [
            {
                "scope": scopes[state.limit.name],
                **_limit(state.limit),
                "remaining": state.remaining,
                "resetSeconds": math.ceil(state.reset_seconds),
            }
            for state in decision.states
        ],
        "configured": _configured(limits.settings),
    }
    if not decision.admitted:
        document["retryAfterSeconds"] = max(1, math.ceil(decision.retry_after_seconds))
    return document


async def get_rate_limits(request: Request) -> Response:
    caller = current_caller()
    limits: RateLimits = request.app.state.edge.rate_limits
    decision = await limits.peek(caller)
    # The identity the limits are keyed by (RateLimits.keyed), so the answer names what counts.
    client_class, client_id, tenant_id = caller_identity(caller)
    identity = {"clientClass": client_class, "clientId": client_id, "tenantId": tenant_id}
    response = FastJSONResponse(status_document(limits, decision, identity))
    # The RateLimit fields of the standing; no Retry-After, since this answer itself succeeded.
    response.raw_headers.extend(field for field in headers(decision) if field[0] != b"retry-after")
    return response


ROUTES = [
    ApiRoute(
        method="GET",
        path="/v1/rate-limits",
        operation_id="getRateLimits",
        summary="The configured rate limits and the caller's standing on its own (after this request)",
        handler=get_rate_limits,
        response=Content(name="RateLimitStatus", schema=STATUS_SCHEMA),
        errors=(401, 429, 503),
        tags=("rate limits",),
    ),
]
