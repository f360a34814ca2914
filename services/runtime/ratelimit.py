"""Rate limits that hold exactly across any number of processes: GCRA in one atomic Redis script.

GCRA (the generic cell rate algorithm, as in ATM networks and Brandur Leach's `redis-cell`) keeps one
number per limited key, its theoretical arrival time (TAT): a request is admitted when
`TAT - burst * interval <= now`, which moves the TAT on by one `interval` (period / limit). It is a
token bucket without a refill loop: at most `burst` requests at once, then `limit` per `period`.
The clock is Redis's own (`TIME`), so processes on hosts with skewed clocks agree.

One request may be under several limits at once (the whole API, the caller's client class, its
tenant). The script checks them all and moves every TAT only when all admit it, so a request
refused by one limit does not use up another; the answer names the limit that refused and when to
come back, and the state of the tightest limit for the RateLimit response headers. A limit may also
be a gate: tested like the others, never moved (the edge lets an unauthenticated request through
only while its source address has failed authentication less than its limit, and counts only the
failures against that limit).

When Redis cannot be reached, `LocalLimiter` applies the same algorithm in process memory (each
process then enforces its own share), and says so: callers report it in their health.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import redis.asyncio as aioredis

from services.runtime.settings import Env, SettingsError

_UNITS: Final = {
    "s": 1,
    "sec": 1,
    "second": 1,
    "min": 60,
    "minute": 60,
    "h": 3600,
    "hour": 3600,
    "day": 86400,
}
_SPEC: Final = re.compile(r"\s*(\d[\d_]*)\s*/\s*([a-z]+)\s*(?:burst\s*=?\s*(\d[\d_]*))?\s*")

# KEYS: one TAT key per limit. ARGV: per limit, its interval (µs), burst and whether the request
# counts against it (1) or the limit is only a gate it must pass (0: tested, never moved).
# Returns {admitted, retry_after_us, refusing_index, then remaining and reset_us per limit}.
# With every limit a gate it is a peek: what a request arriving now would find, moving nothing.
_GCRA: Final = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local admitted, retry, refusing = 1, 0, 0
local tats = {}
for i = 1, #KEYS do
  local interval, burst = tonumber(ARGV[3 * i - 2]), tonumber(ARGV[3 * i - 1])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  tats[i] = tat
  local allow_at = tat + interval - burst * interval
  if allow_at > now and allow_at - now > retry then
    admitted, retry, refusing = 0, allow_at - now, i
  end
end
local out = {admitted, retry, refusing}
for i = 1, #KEYS do
  local interval, burst = tonumber(ARGV[3 * i - 2]), tonumber(ARGV[3 * i - 1])
  local tat = tats[i]
  if admitted == 1 and ARGV[3 * i] == '1' then
    tat = tat + interval
    redis.call('SET', KEYS[i], tat, 'PX', math.ceil((tat - now) / 1000) + 1)
  end
  out[#out + 1] = math.max(0, math.floor((now + burst * interval - tat) / interval))
  out[#out + 1] = tat - now
end
return out
"""


@dataclass(frozen=True)
class Limit:
    """`limit` requests per `period_seconds`, at most `burst` at once; `name` appears in answers."""

    name: str
    limit: int
    period_seconds: float
    burst: int

    @property
    def interval_us(self) -> int:
        return max(1, round(self.period_seconds * 1_000_000 / self.limit))

    @property
    def policy(self) -> str:
        """This limit as an IETF RateLimit-Policy item: `"name";q=<limit>;w=<window seconds>`."""
        return f'"{self.name}";q={self.limit};w={math.ceil(self.period_seconds)}'


def parse_limits(name: str, text: str, variable: str) -> tuple[Limit, ...]:
    """Limits written as `1000/s burst 2000`, several joined by `+` (`1000/hour + 50/min`); the
    burst defaults to the limit. SettingsError names `variable` and the piece it could not read."""
    limits = []
    for index, piece in enumerate(text.split("+")):
        match = _SPEC.fullmatch(piece.lower())
        if match is None or match.group(2) not in _UNITS:
            raise SettingsError(
                f"{variable}: {piece.strip()!r} is not a rate; write it as 1000/s, 50/min burst 10 or "
                "1000/hour + 50/min (units: s, min, hour, day)"
            )
        count = int(match.group(1).replace("_", ""))
        burst = int((match.group(3) or str(count)).replace("_", ""))
        if count < 1 or burst < 1:
            raise SettingsError(f"{variable}: {piece.strip()!r} must allow at least one request")
        suffix = f"-{index + 1}" if "+" in text else ""
        limits.append(Limit(f"{name}{suffix}", count, _UNITS[match.group(2)], burst))
    return tuple(limits)


def limits_from_env(env: Env, variable: str, name: str, default: str) -> tuple[Limit, ...]:
    return parse_limits(name, env.raw(variable) or default, variable)


@dataclass(frozen=True)
class LimitState:
    limit: Limit
    remaining: int
    reset_seconds: float


@dataclass(frozen=True)
class Decision:
    admitted: bool
    retry_after_seconds: float  # 0 when admitted
    refused_by: Limit | None
    states: tuple[LimitState, ...]
    local: bool = False  # decided by the in-process fallback, Redis being unreachable

    @property
    def tightest(self) -> LimitState | None:
        """The state to report in RateLimit headers: the limit closest to refusing."""
        return min(self.states, key=lambda state: state.remaining, default=None)


Keyed = Sequence[tuple[str, Limit]]


class RedisLimiter:
    def __init__(self, redis: aioredis.Redis, prefix: str) -> None:
        self._prefix = prefix
        self._script = redis.register_script(_GCRA)

    async def check(self, keyed: Keyed, gates: Keyed = ()) -> Decision:
        """Counts a request against every limit of `keyed` when all of them and every one of `gates`
        admit it; `gates` are only tested (a request must find room in them, and moves none)."""
        return await self._run(keyed, gates, counts=True)

    async def peek(self, keyed: Keyed) -> Decision:
        """What `check` would decide now, without counting a request: `remaining` is how many
        requests may still be made at once (one more than a check's answer, which counts itself)."""
        return await self._run((), keyed, counts=False)

    async def _run(self, keyed: Keyed, gates: Keyed, *, counts: bool) -> Decision:
        everything = [*keyed, *gates]
        keys = [f"{self._prefix}ratelimit:{key}" for key, _ in everything]
        args: list[int] = []
        for index, (_, limit) in enumerate(everything):
            args += [limit.interval_us, limit.burst, int(counts and index < len(keyed))]
        reply = [int(value) for value in await self._script(keys=keys, args=args)]
        return _decision(everything, reply, local=False)


class LocalLimiter:
    """The same algorithm in this process's memory: the fallback while Redis is unreachable."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tats: dict[str, int] = {}

    async def check(self, keyed: Keyed, gates: Keyed = ()) -> Decision:
        return self._decide(keyed, gates)

    async def peek(self, keyed: Keyed) -> Decision:
        """What `check` would decide now, moving nothing (as `RedisLimiter.peek`)."""
        return self._decide((), keyed)

    def _decide(self, keyed: Keyed, gates: Keyed) -> Decision:
        now = int(self._clock() * 1_000_000)
        everything = [*keyed, *gates]
        admitted, retry, refusing = 1, 0, 0
        tats = []
        for index, (key, limit) in enumerate(everything, start=1):
            tat = max(self._tats.get(key, now), now)
            tats.append(tat)
            allow_at = tat + limit.interval_us - limit.burst * limit.interval_us
            if allow_at > now and allow_at - now > retry:
                admitted, retry, refusing = 0, allow_at - now, index
        reply = [admitted, retry, refusing]
        for index, ((key, limit), tat) in enumerate(zip(everything, tats, strict=True)):
            if admitted and index < len(keyed):
                tat += limit.interval_us
                self._tats[key] = tat
            reply += [max(0, (now + limit.burst * limit.interval_us - tat) // limit.interval_us), tat - now]
        if len(self._tats) > 100_000:  # keys of idle callers: their TATs are in the past anyway
            self._tats = {key: tat for key, tat in self._tats.items() if tat > now}
        return _decision(everything, reply, local=True)


def _decision(keyed: Keyed, reply: Sequence[int], *, local: bool) -> Decision:
    admitted, retry_us, refusing = reply[0], reply[1], reply[2]
    states = tuple(
        LimitState(limit, reply[3 + 2 * index], reply[4 + 2 * index] / 1_000_000)
        for index, (_, limit) in enumerate(keyed)
    )
    return Decision(
        admitted=bool(admitted),
        retry_after_seconds=retry_us / 1_000_000,
        refused_by=keyed[refusing - 1][1] if refusing else None,
        states=states,
        local=local,
    )


def retry_after(decision: Decision) -> int:
    """Whole seconds until the refused request would be admitted (Retry-After has no fractions)."""
    return max(1, math.ceil(decision.retry_after_seconds))


def refusal(decision: Decision) -> str:
    """What a refused request is told, naming the limit and the wait (HTTP 429s and WebSocket alike)."""
    limit = decision.refused_by.name if decision.refused_by else "a limit"
    return f"rate limit {limit} exceeded; retry after {retry_after(decision)} s"


def headers(decision: Decision) -> list[tuple[bytes, bytes]]:
    """The IETF RateLimit header fields of a decision (draft-ietf-httpapi-ratelimit-headers), and
    Retry-After when it refused: `RateLimit-Policy` lists the limits that applied, `RateLimit` the
    tightest one's remaining requests and seconds to reset, and the older `RateLimit-Limit`,
    `-Remaining` and `-Reset` the same for clients that read those."""
    fields = []
    if decision.states:  # none when a refused source is answered from memory
        policy = ", ".join(state.limit.policy for state in decision.states)
        fields.append((b"ratelimit-policy", policy.encode()))
    tightest = decision.tightest
    if tightest is not None:
        reset = math.ceil(tightest.reset_seconds)
        fields += [
            (b"ratelimit", f'"{tightest.limit.name}";r={tightest.remaining};t={reset}'.encode()),
            (b"ratelimit-limit", str(tightest.limit.limit).encode()),
            (b"ratelimit-remaining", str(tightest.remaining).encode()),
            (b"ratelimit-reset", str(reset).encode()),
        ]
    if not decision.admitted:
        fields.append((b"retry-after", str(retry_after(decision)).encode()))
    return fields
