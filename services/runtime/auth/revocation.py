"""Revoked tokens: the token service marks a jti in Redis, every process checks it.

The mark is `<prefix>revoked:<jti>` = "1", expiring `leeway` seconds after the token does: verifiers
accept a token up to `leeway` past its `exp`, so a mark that vanished at `exp` would let a revoked
token back in for that long.

Why a local cache instead of one EXISTS per verification: an EXISTS is a network round trip plus
roughly as much client CPU as the RSA verify itself, which would halve the verifications a core
can do. Each process instead remembers, per jti, "revoked" (for good: a revoked token never becomes
valid again) or "not revoked" for at most `max_staleness` seconds, counted from before the question
was sent. A revocation written at time t is therefore seen by every process by t + max_staleness
(1 s by default), and a token in steady use costs one EXISTS per second per process, not one per
call. Redis stays the truth: when the cache is full it is simply emptied.

A token exchanged from a revoked one (RFC 8693, at any depth) is revoked too: the token service
marks every live descendant when it revokes the ancestor (services/token/revocation_records.py), so
this one lookup of the token's own jti covers its whole lineage, at no extra cost per verification.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

import redis.asyncio as aioredis

from services.runtime.auth.jwt import DEFAULT_LEEWAY_SECONDS

DEFAULT_MAX_STALENESS_SECONDS = 1.0
DEFAULT_MAX_ENTRIES = 100_000
DEFAULT_TIMEOUT_SECONDS = 1.0


def revocation_key(key_prefix: str, jti: str) -> str:
    return f"{key_prefix}revoked:{jti}"


async def mark_revoked(
    redis: aioredis.Redis,
    key_prefix: str,
    jti: str,
    expires_at: float,
    *,
    now: float | None = None,
    leeway: int = DEFAULT_LEEWAY_SECONDS,
) -> None:
    """Mark `jti` (a token expiring at `expires_at`, epoch seconds) revoked for as long as any
    verifier could still accept it. A token already past that needs no mark."""
    seconds = math.ceil(expires_at + leeway - (time.time() if now is None else now))
    if seconds > 0:
        await redis.set(revocation_key(key_prefix, jti), b"1", ex=seconds)


class RevocationChecker:
    """`is_revoked(jti)` against Redis, answered from a per-process cache at most `max_staleness` old.

    Redis errors and timeouts propagate: the caller decides (the verifier fails closed).
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        key_prefix: str,
        *,
        max_staleness: float = DEFAULT_MAX_STALENESS_SECONDS,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._prefix = key_prefix
        self._max_staleness = max_staleness
        self._max_entries = max_entries
        self._timeout = timeout
        self._clock = clock
        # jti -> until when (clock) "not revoked" may be believed; math.inf once revoked.
        self._believed_until: dict[str, float] = {}
        self.lookups = 0  # EXISTS sent; tests and the benchmark read it

    def __len__(self) -> int:
        """How many answers are remembered."""
        return len(self._believed_until)

    async def is_revoked(self, jti: str) -> bool:
        until = self._believed_until.get(jti)
        if until is not None:
            if until == math.inf:
                return True
            if self._clock() < until:
                return False
        asked_at = self._clock()
        self.lookups += 1
        async with asyncio.timeout(self._timeout):
            revoked = bool(await self._redis.exists(revocation_key(self._prefix, jti)))
        self._remember(jti, math.inf if revoked else asked_at + self._max_staleness)
        return revoked

    def _remember(self, jti: str, until: float) -> None:
        if len(self._believed_until) >= self._max_entries and jti not in self._believed_until:
            now = self._clock()
            fresh = {key: value for key, value in self._believed_until.items() if value > now}
            # Mostly revoked marks still then: drop them all, Redis has them.
            self._believed_until = fresh if len(fresh) < self._max_entries // 2 else {}
        self._believed_until[jti] = until
