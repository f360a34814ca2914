"""ReserveHolds and CommitHolds: several holds in one call, each answered as its own call would be.

A round takes two holds before it starts (its orchestration, its first turn) and settles two at
its last turn's end; each call through the mesh costs its client, Envoy and this service more CPU
than a hold costs Redis, so the holds travel together. Together is not one verdict: each hold gets
the answer its own Reserve or Commit would have got (a refusal past a hard limit, another
tenant's hold refused, an invalid event) and the others go on; only what would fail every hold
alike (an invalid request, a missing scope, a store that is away) fails the call. A refusal is
audited and counted exactly as Reserve's (refusals.py, the quota metrics).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from macp.metering.v1 import metering_service_pb2 as pb

from services.metering.quotas import Quotas
from services.metering.refusals import QuotaRefusals
from services.runtime.audit import Who
from services.runtime.errors import DomainError
from services.runtime.principal import Principal

# The tenant a caller may act on (servicer's `_tenant`): `(principal, requested, field)`.
TenantOf = Callable[[Principal, str, str], Awaitable[str]]


def failure(error: DomainError) -> pb.HoldFailure:
    """The status `error` would have given its own call."""
    return pb.HoldFailure(code=error.code.value[0], message=error.message, reason=error.reason)


class HoldBatches:
    def __init__(self, quotas: Quotas, refusals: QuotaRefusals, tenant_of: TenantOf) -> None:
        self._quotas = quotas
        self._refusals = refusals
        self._tenant_of = tenant_of

    async def reserve(
        self, principal: Principal, holds: Sequence[pb.ReserveRequest]
    ) -> pb.ReserveHoldsResponse:
        results = [pb.ReserveHoldResult() for _ in holds]
        # Holds grouped by tenant (one script call each; a caller's own tenant is the usual one).
        by_tenant: dict[str, list[int]] = {}
        for index, hold in enumerate(holds):
            try:
                tenant_id = await self._tenant_of(principal, hold.tenant_id, f"holds[{index}].tenant_id")
            except DomainError as refused:
                results[index].failure.CopyFrom(failure(refused))
                continue
            by_tenant.setdefault(tenant_id, []).append(index)
        who = Who.of(principal)
        for tenant_id, indexes in by_tenant.items():
            outcomes = await self._quotas.reserve_many(tenant_id, [holds[i] for i in indexes])
            for index, outcome in zip(indexes, outcomes, strict=True):
                if isinstance(outcome, pb.ReserveResponse):
                    results[index].reserved.CopyFrom(outcome)
                    continue
                await self._refusals.record(tenant_id, holds[index], who, outcome.message)
                results[index].failure.CopyFrom(failure(outcome))
        return pb.ReserveHoldsResponse(results=results)

    async def commit(self, principal: Principal, holds: Sequence[pb.CommitRequest]) -> pb.CommitHoldsResponse:
        # A hold belongs to the caller's tenant: its key is found under that tenant only (as Commit).
        tenant_id = await self._tenant_of(principal, principal.tenant_id, "tenant_id")
        results: list[pb.CommitHoldResult] = []
        for outcome in await self._quotas.commit_many(tenant_id, holds):
            if isinstance(outcome, pb.CommitResponse):
                results.append(pb.CommitHoldResult(committed=outcome))
            else:
                results.append(pb.CommitHoldResult(failure=failure(outcome)))
        return pb.CommitHoldsResponse(results=results)
