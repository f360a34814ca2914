"""The audit row of a refused hold (Reserve past a hard limit: RESOURCE_EXHAUSTED).

A refusal changes nothing in Postgres (the hold was never taken; the counters live in Redis), so
its row is written on its own, keyed by the tenant and reservation id: a retried Reserve of the same
hold, refused again, is the same refusal and adds no second row.
"""

from __future__ import annotations

import asyncpg
from macp.metering.v1 import metering_service_pb2 as pb

from services.runtime import audit
from services.runtime.audit import AuditEvent, Who


class QuotaRefusals:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def record(self, tenant_id: str, request: pb.ReserveRequest, who: Who, reason: str) -> bool:
        """Audit the refusal of `request`; False when this hold's refusal was audited before."""
        return await audit.record(
            self._pool,
            AuditEvent(
                Who(tenant_id, who.subject, who.actor_chain, who.client_id),
                audit.QUOTA_REFUSE,
                f"reservation/{request.reservation_id}",
                outcome=audit.DENIED,
                detail={
                    "meter": pb.Meter.Name(request.meter),
                    "quantity": str(request.quantity),
                    "reason": reason,
                },
                dedupe_key=f"{audit.QUOTA_REFUSE}:{tenant_id}:{request.reservation_id}",
            ),
        )
