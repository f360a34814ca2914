"""Rate limits of tool calls: each tenant's calls of each tool, counted in Redis.

The counting is the edge's: GCRA in one atomic Redis script (services/runtime/ratelimit.py), so a
limit holds exactly however many gateway processes there are, and a tenant's bucket for a tool is
its own: one tenant's flood never slows another tenant, nor the same tenant's other tools.

Unlike the edge, the gateway has no in-memory fallback while Redis is away: a call that reaches
an upstream is usage, whose outbox is in the same Redis (services/runtime/usage_publisher.py), so
a gateway that cannot reach Redis cannot bill a call either and refuses it UNAVAILABLE.
"""

from __future__ import annotations

import math

from services.runtime.errors import ResourceExhausted
from services.runtime.ratelimit import Limit, RedisLimiter

# The reason trailer of a refusal (services/runtime/errors.py), so callers can tell it from a quota.
RATE_LIMITED = "RATE_LIMITED"


class ToolRateLimited(ResourceExhausted):
    reason = RATE_LIMITED

    def __init__(self, message: str, retry_after_seconds: int) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class CallLimits:
    """`limits` per tenant per tool, counted by `limiter`; no limits at all when `limits` is empty."""

    def __init__(self, limiter: RedisLimiter, limits: tuple[Limit, ...]) -> None:
        self._limiter = limiter
        self._limits = limits

    async def admit(self, tenant_id: str, tool_name: str) -> None:
        """Counts one call of `tool_name` (`<server>__<tool>`) by `tenant_id`, or raises
        `ToolRateLimited` naming the tool, the limit and when to try again."""
        if not self._limits:
            return
        decision = await self._limiter.check(
            [(f"tool-call:{tenant_id}:{tool_name}:{limit.name}", limit) for limit in self._limits]
        )
        if decision.admitted:
            return
        # Whole seconds, as a Retry-After header carries them, and never 0: a caller told to come
        # back at once would be refused again.
        wait = max(1, math.ceil(decision.retry_after_seconds))
        limit = decision.refused_by
        rate = f" ({limit.limit} per {_period(limit.period_seconds)})" if limit else ""
        raise ToolRateLimited(
            f"tool {tool_name}: the tenant's rate limit{rate} is reached; retry after {wait} s",
            wait,
        )


def _period(seconds: float) -> str:
    names = {1: "second", 60: "minute", 3600: "hour", 86400: "day"}
    return names.get(int(seconds), f"{seconds:g} s")
