"""The tier of each tenant, learned from its own callers' tokens.

Every token of a tenant carries its `tier` claim (user, exchanged and agent tokens alike), so a
call whose principal belongs to the tenant it meters says which plan the tenant is on. Metering
keeps the last tier seen per tenant in Postgres, so that answers given to anyone else (an
administrator of another tenant, the rebuild of the month's counters) use it too. A process
remembers what it wrote: the hot path costs one dict lookup, and Postgres is written once per
tenant and process, or when a tenant's tier changes. A change rebuilds the month's counters, so the
tier's limits apply from the next answer.
"""

from __future__ import annotations

import asyncpg
from macp.common.v1 import principal_pb2

from services.runtime.principal import Principal

KNOWN_TIERS = frozenset({principal_pb2.TIER_FREE, principal_pb2.TIER_PRO, principal_pb2.TIER_ENTERPRISE})
# Tenants remembered per process; past it the oldest is forgotten (and written again when seen).
MAX_REMEMBERED = 100_000


class TenantTiers:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._seen: dict[str, int] = {}

    async def learn(self, principal: Principal, tenant_id: str) -> bool:
        """Record the tier of `principal` for `tenant_id` if the principal is one of the tenant's
        own; True when that changed what metering knew (the counters must then be rebuilt)."""
        tier = principal.tier
        if principal.tenant_id != tenant_id or tier not in KNOWN_TIERS or self._seen.get(tenant_id) == tier:
            return False
        changed = await self._pool.fetchval(
            """
            INSERT INTO metering_tenant_tiers (tenant_id, tier) VALUES ($1, $2)
            ON CONFLICT (tenant_id) DO UPDATE SET tier = excluded.tier, learn_time = now()
                WHERE metering_tenant_tiers.tier <> excluded.tier
            RETURNING true
            """,
            tenant_id,
            tier,
        )
        self._seen.pop(tenant_id, None)
        if len(self._seen) >= MAX_REMEMBERED:
            del self._seen[next(iter(self._seen))]
        self._seen[tenant_id] = tier
        return bool(changed)
