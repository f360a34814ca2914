"""The platform's request limits, one allowance wherever a caller comes in: the edge (services/edge/
rate_limits.py) and the tool gateway's `/mcp` (services/tool_gateway/mcp_limits.py) count against
the same limits under the same Redis keys.

- The API as a whole (`MACP_RATE_LIMIT_API`, 1,000/s with bursts to 2,000 by default, from the
  platform seed): every request at the edge.
- Each client in each tenant, with the limit of the client's class (004's table: internal
  1,000/min, consumer 10,000/hour, partner 10,000/day, third-party 1,000/hour with bursts of
  50/min; `MACP_RATE_LIMIT_<CLASS>`). The bucket is keyed by client and tenant together: a public
  client that users of many tenants sign in through (the seeded CLI client) gives each tenant a
  bucket of its own, so one tenant's traffic never spends another's allowance.
- Each tenant (`MACP_RATE_LIMIT_TENANT`).
- Each source address before authentication: `MACP_RATE_LIMIT_SOURCE` for requests that carry no
  token and `MACP_RATE_LIMIT_SOURCE_FAILURES` for failed authentications (services/edge/
  source_limits.py and services/tool_gateway/mcp_limits.py say what each counts there).

The counting is GCRA in Redis (services/runtime/ratelimit.py), so the limits hold exactly however
many processes count them. If Redis is unreachable they do not fail open: each process falls back
to the same limits counted in its own memory, each scaled by `MACP_RATE_LIMIT_FALLBACK_SHARE` (the
share of the traffic one process takes, 1 for a single one), logs it, exports
`macp_rate_limit_fallback 1` and says so in its health (`mode`), and goes back to Redis as soon as
it answers again.

`MACP_RATE_LIMITS=off` turns the limits off (default `on`): no Redis call, no RateLimit headers. It
is for measuring what limiting costs (bench/rate_limit.py) and for a deployment that limits in
front of the platform; it never happens by accident, as a malformed value is refused at start-up
like every other setting.

Every decision is counted in `macp_rate_limit_decisions_total{scope, limit, decision}` (scope
`global`, `class`, `tenant` or `source`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge
from redis.exceptions import RedisError

from services.runtime.auth.authenticator import client_class_name
from services.runtime.metrics import RateLimitMetrics
from services.runtime.principal import Caller
from services.runtime.ratelimit import Decision, Keyed, Limit, LocalLimiter, RedisLimiter, limits_from_env
from services.runtime.settings import Env

log = logging.getLogger("macp.ratelimit")

API_DEFAULT: Final = "1000/s burst 2000"
CLASS_DEFAULTS: Final = {
    "internal": "1000/min",
    "consumer": "10000/hour",
    "partner": "10000/day",
    "third_party": "1000/hour + 50/min",
}
TENANT_DEFAULT: Final = "60000/hour burst 1000"
# Per source address, before authentication: requests without a token, and failed authentications.
SOURCE_DEFAULT: Final = "1200/min burst 300"
SOURCE_FAILURES_DEFAULT: Final = "30/min burst 20"
SOURCE_IN_FLIGHT_DEFAULT: Final = 4
# How long a process keeps counting locally after a Redis failure before it tries Redis again.
REDIS_RETRY_SECONDS: Final = 1.0
# Callers whose keyed limits are kept built (a session's requests all count against the same keys).
MAX_KEYED_CALLERS: Final = 10_000
# Source addresses remembered as refused (until their refusal's retry-after has passed).
MAX_BLOCKED_SOURCES: Final = 100_000
# What every request gets while the limits are off: admitted, under no limit.
UNLIMITED: Final = Decision(admitted=True, retry_after_seconds=0.0, refused_by=None, states=())


def caller_identity(caller: Caller) -> tuple[str, str, str]:
    """What the limits count by: the caller's client class, its client (its user for a token that
    names no client) and its tenant."""
    principal = caller.principal
    return client_class_name(principal), principal.client_id or principal.user_id, principal.tenant_id


@dataclass(frozen=True)
class RateLimitSettings:
    api: tuple[Limit, ...]
    by_class: dict[str, tuple[Limit, ...]]
    tenant: tuple[Limit, ...]
    fallback_share: float
    source: tuple[Limit, ...] = ()
    source_failures: tuple[Limit, ...] = ()
    # Requests without a token one address may have answered at once by one process.
    source_in_flight: int = SOURCE_IN_FLIGHT_DEFAULT
    enabled: bool = True

    @classmethod
    def from_env(cls, env: Env) -> RateLimitSettings:
        return cls(
            api=limits_from_env(env, "MACP_RATE_LIMIT_API", "api", API_DEFAULT),
            by_class={
                name: limits_from_env(env, f"MACP_RATE_LIMIT_{name.upper()}", name, default)
                for name, default in CLASS_DEFAULTS.items()
            },
            tenant=limits_from_env(env, "MACP_RATE_LIMIT_TENANT", "tenant", TENANT_DEFAULT),
            # Requests without a token, per source address: sign-ins, discovery, token refreshes
            # of everyone behind one NAT, but not a flood.
            source=limits_from_env(env, "MACP_RATE_LIMIT_SOURCE", "source", SOURCE_DEFAULT),
            # Failed authentications per source address: a mistyped password or an expired token
            # now and then, but no guessing (20 at once, then one every 2 s).
            source_failures=limits_from_env(
                env, "MACP_RATE_LIMIT_SOURCE_FAILURES", "source_failures", SOURCE_FAILURES_DEFAULT
            ),
            source_in_flight=env.integer(
                "MACP_RATE_LIMIT_SOURCE_IN_FLIGHT", SOURCE_IN_FLIGHT_DEFAULT, minimum=1, maximum=1_000_000
            ),
            fallback_share=env.number("MACP_RATE_LIMIT_FALLBACK_SHARE", 1.0, minimum=0.01),
            enabled=env.choice("MACP_RATE_LIMITS", "on", ("on", "off")) == "on",
        )

    def scoped(self) -> list[tuple[str, Limit]]:
        """Every configured limit with its scope: `global`, `class`, `tenant` or `source`."""
        return [
            *(("global", limit) for limit in self.api),
            *(("class", limit) for limits in self.by_class.values() for limit in limits),
            *(("tenant", limit) for limit in self.tenant),
            *(("source", limit) for limit in (*self.source, *self.source_failures)),
        ]


def _scaled(limit: Limit, share: float) -> Limit:
    return dataclasses.replace(
        limit, limit=max(1, math.floor(limit.limit * share)), burst=max(1, math.floor(limit.burst * share))
    )


class RateLimits:
    """The limits of `settings` and where they are counted (Redis, or locally while Redis is away).

    A caller's keys are `client:<client>:tenant:<tenant>:<limit>` and `tenant:<tenant>:<limit>`, a
    source's `source:<address>:<limit>`, and the API's `api`: the same in every process that counts
    them, so a caller's allowance is one wherever it comes in. A process whose settings have no `api`
    limits (the tool gateway's `/mcp`) counts a caller against its client and tenant only."""

    def __init__(
        self,
        settings: RateLimitSettings,
        limiter: RedisLimiter,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._redis = limiter
        self._local = LocalLimiter()
        self._clock = clock
        self._redis_down_since: float | None = None
        # (client class, client, tenant) -> the keyed limits of such a caller, built once.
        self._keyed: dict[tuple[str, str, str | None], Keyed] = {}
        # source address -> (until when on the clock, the limit that refused it).
        self._blocked: dict[str, tuple[float, Limit]] = {}
        self._anonymous: Keyed = tuple(("api", limit) for limit in settings.api)
        self._refused = Counter(
            "macp_rate_limited", "Requests refused by a rate limit, by limit", ("limit",), registry=registry
        )
        self._fallback = Gauge(
            "macp_rate_limit_fallback",
            "1 while limits are counted locally (Redis unreachable)",
            registry=registry,
        )
        self._decisions = RateLimitMetrics(
            registry, [(scope, limit.name) for scope, limit in settings.scoped()]
        )

    @property
    def settings(self) -> RateLimitSettings:
        return self._settings

    @property
    def enabled(self) -> bool:
        return self._settings.enabled

    @property
    def mode(self) -> str:
        """`redis`, `off`, or what health says while the local fallback counts."""
        if not self._settings.enabled:
            return "off"
        if self._redis_down_since is None:
            return "redis"
        return "local fallback: Redis is unreachable, each process counts its own share"

    def keyed(self, caller: Caller | None) -> Keyed:
        if caller is None:
            return self._anonymous
        identity = caller_identity(caller)
        keyed = self._keyed.get(identity)
        if keyed is None:
            if len(self._keyed) >= MAX_KEYED_CALLERS:
                self._keyed.clear()  # rebuilt on the next request of each caller
            keyed = self._keyed[identity] = self._build(*identity)
        return keyed

    def _build(self, client_class: str, client: str, tenant_id: str | None) -> Keyed:
        by_class = self._settings.by_class[client_class]
        return (
            *self._anonymous,
            # The client's bucket is its own in each tenant: a public client shared by tenants
            # never lets one tenant spend another's allowance.
            *((f"client:{client}:tenant:{tenant_id}:{limit.name}", limit) for limit in by_class),
            *((f"tenant:{tenant_id}:{limit.name}", limit) for limit in self._settings.tenant),
        )

    async def peek(self, caller: Caller | None) -> Decision:
        """Where `caller` stands on each of its limits, counting nothing (and no metric)."""
        if not self._settings.enabled:
            return UNLIMITED
        keyed = self.keyed(caller)
        if self._redis_down_since is None:
            try:
                return await self._redis.peek(keyed)
            except (RedisError, OSError, TimeoutError):
                pass  # the next check notices and logs it; this answer comes from local counts
        share = self._settings.fallback_share
        return await self._local.peek([(key, _scaled(limit, share)) for key, limit in keyed])

    async def check(self, caller: Caller | None) -> Decision:
        if not self._settings.enabled:
            return UNLIMITED
        return await self._check(self.keyed(caller))

    def blocked(self, address: str) -> Decision | None:
        """The refusal still standing for `address` (its retry-after not yet passed), else None:
        answered from this process's memory, so a refused source costs no Redis call until it may
        try again."""
        if not self._settings.enabled:
            return None
        found = self._blocked.get(address)
        if found is None:
            return None
        until, limit = found
        now = self._clock()
        if now >= until:
            del self._blocked[address]
            return None
        return Decision(admitted=False, retry_after_seconds=until - now, refused_by=limit, states=())

    async def check_source(self, address: str) -> Decision:
        """Counts a request without a token against its source address, admitted only while the
        address's failed authentications are under their limit too (tested, not counted)."""
        if not self._settings.enabled:
            return UNLIMITED
        keyed = [(f"source:{address}:{limit.name}", limit) for limit in self._settings.source]
        gates = [(f"source:{address}:{limit.name}", limit) for limit in self._settings.source_failures]
        return self._remember(address, await self._check(keyed, gates))

    async def count_failure(self, address: str) -> Decision:
        """Counts a failed authentication against its source address; once over the limit, the
        address is refused (`blocked`) until the limit has room again."""
        if not self._settings.enabled:
            return UNLIMITED
        keyed = [(f"source:{address}:{limit.name}", limit) for limit in self._settings.source_failures]
        return self._remember(address, await self._check(keyed))

    def _remember(self, address: str, decision: Decision) -> Decision:
        """Remembers a source the next request of which Redis would refuse: one refused now, or one
        whose request just took the last room of a limit (so the failure that fills the limit is
        the last one looked at, not the one after it)."""
        refused_by, seconds = decision.refused_by, decision.retry_after_seconds
        if decision.admitted:
            full = [state for state in decision.states if state.remaining == 0]
            if not full:
                return decision
            # When one request is earned back: TAT + interval - burst * interval reaches now.
            waits = [
                (state.reset_seconds - (state.limit.burst - 1) * state.limit.interval_us / 1e6, state.limit)
                for state in full
            ]
            seconds, refused_by = max(waits, key=lambda wait: wait[0])
        if refused_by is None or seconds <= 0:
            return decision
        if len(self._blocked) >= MAX_BLOCKED_SOURCES:
            now = self._clock()
            self._blocked = {key: value for key, value in self._blocked.items() if value[0] > now}
            if len(self._blocked) >= MAX_BLOCKED_SOURCES:
                self._blocked.clear()  # Redis still has every count: the next request asks it
        self._blocked[address] = (self._clock() + seconds, refused_by)
        return decision

    async def _check(self, keyed: Keyed, gates: Keyed = ()) -> Decision:
        now = self._clock()
        if self._redis_down_since is None or now - self._redis_down_since >= REDIS_RETRY_SECONDS:
            try:
                decision = await self._redis.check(keyed, gates)
            except (RedisError, OSError, TimeoutError) as exc:
                if self._redis_down_since is None:
                    log.error("rate limits fall back to local counting: Redis is unreachable: %s", exc)
                self._redis_down_since = now
                self._fallback.set(1)
            else:
                if self._redis_down_since is not None:
                    log.warning("rate limits are counted in Redis again")
                    self._redis_down_since = None
                    self._fallback.set(0)
                return self._counted(decision)
        share = self._settings.fallback_share
        decision = await self._local.check(
            [(key, _scaled(limit, share)) for key, limit in keyed],
            [(key, _scaled(limit, share)) for key, limit in gates],
        )
        return self._counted(decision)

    def _counted(self, decision: Decision) -> Decision:
        if decision.refused_by is not None:
            self._refused.labels(decision.refused_by.name).inc()
            self._decisions.refused(decision.refused_by.name)
        else:
            for state in decision.states:
                self._decisions.admitted(state.limit.name)
        return decision
