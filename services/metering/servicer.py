"""gRPC surface of the metering service: proto in, domain call, proto out.

The tenant a request names is checked against the caller's principal (`tenancy.tenant_for`):
a caller reads and reserves for its own tenant only, an administrator for any. A call of the
tenant's own tells metering the tenant's tier (`TenantTiers.learn`) before its answer is given, so a
tenant is metered by its tier's plan from its first call on; a plan set with SetPlan still wins.
"""

from __future__ import annotations

from macp.metering.v1 import metering_service_pb2 as pb
from macp.metering.v1 import metering_service_pb2_grpc as pb_grpc

from services.metering.hold_batches import HoldBatches
from services.metering.invoices import Invoices
from services.metering.plans import Plans
from services.metering.quotas import Quotas
from services.metering.refusals import QuotaRefusals
from services.metering.tenancy import tenant_for
from services.metering.tenant_tiers import TenantTiers
from services.metering.usage import UsageReports
from services.runtime.audit import Who
from services.runtime.context import RpcContext
from services.runtime.errors import ResourceExhausted
from services.runtime.principal import Principal, current_principal


class MeteringServicer(pb_grpc.MeteringServiceServicer):
    def __init__(
        self,
        quotas: Quotas,
        plans: Plans,
        reports: UsageReports,
        invoices: Invoices,
        refusals: QuotaRefusals,
        tiers: TenantTiers,
    ) -> None:
        self._quotas = quotas
        self._tiers = tiers
        self._refusals = refusals
        self._plans = plans
        self._reports = reports
        self._invoices = invoices
        self._batches = HoldBatches(quotas, refusals, self._tenant)

    async def _tenant(self, principal: Principal, requested: str, field: str = "tenant_id") -> str:
        """The tenant the call may act on (`tenant_for`), its tier learned from a call of its own."""
        tenant_id = tenant_for(principal, requested, field)
        if await self._tiers.learn(principal, tenant_id):
            await self._quotas.plan_changed(tenant_id)
        return tenant_id

    async def CheckQuota(self, request: pb.CheckQuotaRequest, context: RpcContext) -> pb.CheckQuotaResponse:
        tenant_id = await self._tenant(current_principal(), request.tenant_id)
        return await self._quotas.check(tenant_id, request.meter, request.quantity)

    async def Reserve(self, request: pb.ReserveRequest, context: RpcContext) -> pb.ReserveResponse:
        principal = current_principal()
        tenant_id = await self._tenant(principal, request.tenant_id)
        try:
            return await self._quotas.reserve(tenant_id, request)
        except ResourceExhausted as refusal:
            await self._refusals.record(tenant_id, request, Who.of(principal), refusal.message)
            raise

    async def Commit(self, request: pb.CommitRequest, context: RpcContext) -> pb.CommitResponse:
        # A hold belongs to the caller's tenant: its key is found under that tenant only.
        principal = current_principal()
        tenant_id = await self._tenant(principal, principal.tenant_id)
        return await self._quotas.commit(tenant_id, request.reservation_id, request.usage)

    async def Release(self, request: pb.ReleaseRequest, context: RpcContext) -> pb.ReleaseResponse:
        released = await self._quotas.release(current_principal().tenant_id, request.reservation_id)
        return pb.ReleaseResponse(released=released)

    async def ReserveHolds(
        self, request: pb.ReserveHoldsRequest, context: RpcContext
    ) -> pb.ReserveHoldsResponse:
        return await self._batches.reserve(current_principal(), request.holds)

    async def CommitHolds(
        self, request: pb.CommitHoldsRequest, context: RpcContext
    ) -> pb.CommitHoldsResponse:
        return await self._batches.commit(current_principal(), request.holds)

    async def SetPlan(self, request: pb.SetPlanRequest, context: RpcContext) -> pb.SetPlanResponse:
        principal = current_principal()
        tenant_id = tenant_for(principal, request.tenant_id)
        plan = await self._plans.set(tenant_id, request.tier, list(request.allowances), Who.of(principal))
        await self._quotas.plan_changed(tenant_id)
        return pb.SetPlanResponse(plan=plan)

    async def GetPlan(self, request: pb.GetPlanRequest, context: RpcContext) -> pb.GetPlanResponse:
        tenant_id = await self._tenant(current_principal(), request.tenant_id)
        return pb.GetPlanResponse(plan=await self._plans.get(tenant_id))

    async def GetUsage(self, request: pb.GetUsageRequest, context: RpcContext) -> pb.GetUsageResponse:
        tenant_id = tenant_for(current_principal(), request.tenant_id)
        return await self._reports.usage(tenant_id, request)

    async def GetInvoicePreview(
        self, request: pb.GetInvoicePreviewRequest, context: RpcContext
    ) -> pb.GetInvoicePreviewResponse:
        tenant_id = await self._tenant(current_principal(), request.tenant_id)
        return await self._invoices.preview(tenant_id, request.billing_month)
