"""Plans: what each tier includes per billing month and what use past it costs (DESIGN.md, "Plans").

free: 100 agent turns, 50 orchestrations, 5 voice minutes, 100 MB storage, 1,000 tool calls; hard
     limits (refused).
pro: 10,000 turns, 5,000 orchestrations, 60 voice minutes, 1,000 MB, 25,000 tool calls; then $0.50
     per 1,000 turns, $0.25 per 1,000 orchestrations, $0.10 per voice minute, $0.50 per GB-month
     (1,024 MB), $0.10 per 1,000 tool calls.
enterprise: set per tenant with SetPlan; until then, pro's allowances and prices.

Tool calls: ten per free turn (an agent that looks something up, then computes, then checks), and
two and a half per pro turn, priced at a fifth of a turn's overage: a call costs the platform an
upstream round trip and an audit row, not a model's tokens. docs/plans.md has the table.
A meter a plan does not list (API calls, in both catalog plans) is counted but neither limited
nor priced.

A tenant's plan: the one an administrator set with SetPlan, else the one its tier names (the tier
its tokens carry, services/metering/tenant_tiers.py), else free (no token of the tenant seen yet).
docs/plans.md says the same.
"""

from __future__ import annotations

from macp.common.v1 import principal_pb2
from macp.metering.v1 import metering_service_pb2 as pb

from services.metering.store.plans import PlanStore
from services.runtime import audit
from services.runtime.audit import AuditEvent, Who
from services.runtime.errors import InvalidArgument
from services.runtime.protos import timestamp


def _allowance(
    meter: int, included: int, hard: bool, price_cents: int = 0, block: int = 1
) -> pb.PlanAllowance:
    return pb.PlanAllowance(
        meter=meter,  # type: ignore[arg-type]
        included_quantity=included,
        hard_limit=hard,
        overage_price_cents=price_cents,
        overage_block_size=block,
    )


CATALOG: dict[int, tuple[pb.PlanAllowance, ...]] = {
    principal_pb2.TIER_FREE: (
        _allowance(pb.METER_AGENT_TURNS, 100, True),
        _allowance(pb.METER_ORCHESTRATIONS, 50, True),
        _allowance(pb.METER_VOICE_SECONDS, 5 * 60, True),
        _allowance(pb.METER_STORAGE_MB, 100, True),
        _allowance(pb.METER_TOOL_CALLS, 1_000, True),
    ),
    principal_pb2.TIER_PRO: (
        _allowance(pb.METER_AGENT_TURNS, 10_000, False, 50, 1_000),
        _allowance(pb.METER_ORCHESTRATIONS, 5_000, False, 25, 1_000),
        _allowance(pb.METER_VOICE_SECONDS, 60 * 60, False, 10, 60),
        _allowance(pb.METER_STORAGE_MB, 1_000, False, 50, 1_024),
        _allowance(pb.METER_TOOL_CALLS, 25_000, False, 10, 1_000),
    ),
}


# The catalog each tier is metered by when no plan was set for its tenant: an enterprise tenant
# gets pro's until an administrator sets its own, so that it is never refused at free's limits.
PLAN_OF_TIER: dict[int, tuple[pb.PlanAllowance, ...]] = {
    **CATALOG,
    principal_pb2.TIER_ENTERPRISE: CATALOG[principal_pb2.TIER_PRO],
}


def allowances_of(plan: pb.Plan) -> dict[int, pb.PlanAllowance]:
    return {a.meter: a for a in plan.allowances}


class Plans:
    def __init__(self, store: PlanStore) -> None:
        self._store = store

    async def get(self, tenant_id: str) -> pb.Plan:
        stored = await self._store.get(tenant_id)
        if stored is None:
            return await self._of_tier(tenant_id)
        if stored.tier in CATALOG:
            # The catalog is read at every use, so a price change reaches every FREE and PRO tenant.
            del stored.allowances[:]
            stored.allowances.extend(CATALOG[stored.tier])
        return stored

    async def _of_tier(self, tenant_id: str) -> pb.Plan:
        """The plan the tenant's tier names; free for a tenant whose tokens metering never saw."""
        learned = await self._store.learned_tier(tenant_id)
        if learned is None or learned[0] not in PLAN_OF_TIER:
            return pb.Plan(
                tenant_id=tenant_id, tier=principal_pb2.TIER_FREE, allowances=CATALOG[principal_pb2.TIER_FREE]
            )
        tier, since = learned
        return pb.Plan(
            tenant_id=tenant_id,
            tier=tier,  # type: ignore[arg-type]
            allowances=PLAN_OF_TIER[tier],
            effective_time=timestamp(since),
        )

    async def set(
        self,
        tenant_id: str,
        tier: principal_pb2.Tier.ValueType,
        allowances: list[pb.PlanAllowance],
        who: Who,
    ) -> pb.Plan:
        """Store the tenant's plan; `who` (an administrator, often of another tenant) is audited
        in the tenant whose plan it is."""
        meters = [a.meter for a in allowances]
        repeated = sorted({pb.Meter.Name(m) for m in meters if meters.count(m) > 1})
        if repeated:
            raise InvalidArgument(f"allowances: one allowance per meter; repeated: {', '.join(repeated)}")
        stored = pb.Plan(tenant_id=tenant_id, tier=tier, allowances=allowances)
        audited = AuditEvent(
            Who(tenant_id, who.subject, who.actor_chain, who.client_id),
            audit.PLAN_SET,
            f"plan/{tenant_id}",
            detail={"tier": principal_pb2.Tier.Name(tier)},
        )
        await self._store.put(stored, audited)
        return await self.get(tenant_id)
