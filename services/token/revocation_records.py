"""Revocation records: a Postgres row (durable) and the Redis mark every verifier checks.

The mark is the runtime's (`services.runtime.auth.revocation`): `<MACP_REDIS_KEY_PREFIX>revoked:<jti>`
= "1", expiring when no verifier would accept the token any more (its `exp` plus the verifiers'
leeway), so the set never outgrows the tokens still alive. Redis may lose marks (a restart of a
non-persistent server): the token service republishes the live rows at start-up and checks both.

Revocation cascades: revoking a token also revokes, row and mark, every live token exchanged from
it (RFC 8693, as the subject or the actor), at any depth. The cost falls on the revocation, once,
not on verification: a verifier still asks about one jti, the token's own, whose mark is there.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.runtime.audit import AuditEvent
from services.runtime.auth.revocation import mark_revoked, revocation_key
from services.runtime.errors import Unavailable
from services.token.store.tokens import Revocation, TokenStore

_BATCH = 100
# The reason recorded for a token revoked because a token it was exchanged from was.
EXCHANGED_FROM_REVOKED = "exchanged from a revoked token"

log = logging.getLogger("macp.token.revocation")


class RevocationRecords:
    def __init__(self, redis: aioredis.Redis, key_prefix: str, store: TokenStore) -> None:
        self._redis = redis
        self._prefix = key_prefix
        self._store = store

    async def revoke(self, revocations: list[Revocation], reason: str, audited: AuditEvent | None) -> None:
        """Revoke these tokens and every token exchanged from them (audited once, when `audited`)."""
        if not revocations:
            return
        await self._store.record_revocations(revocations, reason, audited)
        await self._publish([*revocations, *await self._descendants(revocations)])

    async def revoke_family(self, family_id: uuid.UUID, reason: str, audited: AuditEvent) -> None:
        """Revoke a refresh-token family, every live access token issued from it and every token
        exchanged from those."""
        live = await self._store.revoke_family(family_id, reason, audited)
        await self._publish([*live, *await self._descendants(live)])

    async def _descendants(self, revocations: list[Revocation]) -> list[Revocation]:
        return await self._store.revoke_descendants([r.jti for r in revocations], EXCHANGED_FROM_REVOKED)

    async def is_revoked(self, jti: str) -> bool:
        try:
            if await self._redis.exists(revocation_key(self._prefix, jti)):
                return True
        except (RedisError, OSError) as exc:
            # Postgres holds every revocation too: answer from it rather than fail the check.
            log.warning("redis unavailable for a revocation check", extra={"error": str(exc)})
        return await self._store.is_revoked(jti)

    async def any_revoked_durably(self, jtis: list[str]) -> bool:
        """Whether Postgres, which a revocation commits to before it cascades, holds any of `jtis`."""
        return await self._store.any_revoked(jtis)

    async def republish(self) -> int:
        """Write every live revocation to Redis again; returns how many."""
        live = await self._store.live_revocations()
        await self._publish(live)
        return len(live)

    async def _publish(self, revocations: list[Revocation]) -> None:
        try:
            await self._mark(revocations)
        except (RedisError, OSError) as exc:
            # Durable already; the caller retries (revocation is idempotent) or the next start republishes.
            raise Unavailable("revoked in Postgres but not yet in Redis; retry the revocation") from exc

    async def _mark(self, revocations: list[Revocation]) -> None:
        for start in range(0, len(revocations), _BATCH):
            await asyncio.gather(
                *(
                    mark_revoked(
                        self._redis, self._prefix, revocation.jti, revocation.expire_time.timestamp()
                    )
                    for revocation in revocations[start : start + _BATCH]
                )
            )
