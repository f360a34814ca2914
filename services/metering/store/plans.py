"""Plans in Postgres: one row per tenant that ever had a plan set, each change audited in the
same statement; and the tier each tenant's tokens carry (services/metering/tenant_tiers.py)."""

from __future__ import annotations

import json
from datetime import datetime

import asyncpg
from google.protobuf import json_format
from macp.metering.v1 import metering_service_pb2 as pb

from services.runtime import audit
from services.runtime.audit import AuditEvent
from services.runtime.protos import timestamp


class PlanStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def get(self, tenant_id: str) -> pb.Plan | None:
        row = await self._pool.fetchrow("SELECT * FROM metering_plans WHERE tenant_id = $1", tenant_id)
        if row is None:
            return None
        plan = pb.Plan(tenant_id=row["tenant_id"], tier=row["tier"])
        for item in json.loads(row["allowances"]):
            json_format.ParseDict(item, plan.allowances.add())
        plan.effective_time.CopyFrom(timestamp(row["effective_time"]))
        return plan

    async def learned_tier(self, tenant_id: str) -> tuple[int, datetime] | None:
        """The tier the tenant's own tokens carry, and since when metering knows it; None if it
        never saw one."""
        row = await self._pool.fetchrow(
            "SELECT tier, learn_time FROM metering_tenant_tiers WHERE tenant_id = $1", tenant_id
        )
        return None if row is None else (row["tier"], row["learn_time"])

    async def put(self, plan: pb.Plan, audited: AuditEvent) -> None:
        allowances = [json_format.MessageToDict(a) for a in plan.allowances]
        sql, args = audit.with_audit(
            """
            INSERT INTO metering_plans (tenant_id, tier, allowances) VALUES ($1, $2, $3::jsonb)
            ON CONFLICT (tenant_id) DO UPDATE
                SET tier = excluded.tier, allowances = excluded.allowances, effective_time = now()
            RETURNING tenant_id
            """,
            [plan.tenant_id, plan.tier, json.dumps(allowances)],
            audited,
        )
        await self._pool.execute(sql, *args)
