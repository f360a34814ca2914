"""Tool calls in the plans: counted on their own meter, a hard monthly limit on the free tier, priced
per call past the included amount on pro, and shown in the invoice preview and usage reports like
the other meters."""

from __future__ import annotations

from macp.common.v1 import principal_pb2, usage_pb2
from macp.metering.v1 import metering_service_pb2 as pb

from services.metering.invoices import line_item
from services.metering.meters import METER_OF_TYPE
from services.metering.plans import CATALOG, allowances_of
from services.runtime.usage_ids import tool_call_event_id
from tests.metering.conftest import Metering
from tests.metering.test_reports import settle, this_month
from tests.metering.topics import eventually
from tests.metering.usage_events import other_event

FREE_TOOL_CALLS = 1_000


def tool_calls(plan_tier: int) -> pb.PlanAllowance:
    return allowances_of(pb.Plan(allowances=CATALOG[plan_tier]))[pb.METER_TOOL_CALLS]


def test_tool_calls_have_their_own_meter_limited_on_free_and_priced_on_pro() -> None:
    assert METER_OF_TYPE[usage_pb2.USAGE_EVENT_TYPE_TOOL_CALL] == pb.METER_TOOL_CALLS
    free = tool_calls(principal_pb2.TIER_FREE)
    assert (free.included_quantity, free.hard_limit) == (FREE_TOOL_CALLS, True)
    pro = tool_calls(principal_pb2.TIER_PRO)
    assert (pro.included_quantity, pro.hard_limit, pro.overage_price_cents, pro.overage_block_size) == (
        25_000,
        False,
        10,
        1_000,
    )
    # $0.10 per 1,000 calls: 1,500 over is 15 cents; 1 over is 0.01 cent, billed as a whole cent.
    assert line_item(pb.METER_TOOL_CALLS, 26_500, pro).amount_cents == 15
    assert line_item(pb.METER_TOOL_CALLS, 25_001, pro).amount_cents == 1
    assert line_item(pb.METER_TOOL_CALLS, 25_000, pro).amount_cents == 0
    # Past the free limit nothing is billed: such calls were refused.
    over = line_item(pb.METER_TOOL_CALLS, FREE_TOOL_CALLS + 3, free)
    assert (over.overage_quantity, over.amount_cents) == (0, 0)


async def test_a_free_tenants_tool_calls_show_in_reports_and_stop_at_the_limit(metering: Metering) -> None:
    tenant = metering.tenant_id
    events = []
    for index in range(FREE_TOOL_CALLS):
        event = other_event(tenant, usage_pb2.USAGE_EVENT_TYPE_TOOL_CALL)
        event.event_id = tool_call_event_id(f"{tenant}-{index}")
        event.dimensions.tool_server, event.dimensions.tool = "weather", "forecast"
        events.append(event)
    # Committed as the gateway commits its calls (one hold each would take a thousand round
    # trips; one Commit of a hundred events settles the same way).
    for start in range(0, FREE_TOOL_CALLS, 100):
        await metering.stub.Commit(
            pb.CommitRequest(
                reservation_id=tool_call_event_id(f"batch-{tenant}-{start}"),
                usage=events[start : start + 100],
            ),
            timeout=10,
        )
    await settle(metering, FREE_TOOL_CALLS)

    preview: pb.GetInvoicePreviewResponse = await metering.stub.GetInvoicePreview(
        pb.GetInvoicePreviewRequest(tenant_id=tenant), timeout=10
    )
    [line] = [line for line in preview.line_items if line.meter == pb.METER_TOOL_CALLS]
    assert (line.description, line.unit, line.quantity, line.included_quantity) == (
        "Tool calls",
        "calls",
        FREE_TOOL_CALLS,
        FREE_TOOL_CALLS,
    )
    assert (line.amount_cents, preview.total_cents) == (0, 0)
    usage: pb.GetUsageResponse = await metering.stub.GetUsage(
        pb.GetUsageRequest(tenant_id=tenant, period=this_month(), group_by=pb.GROUP_BY_EVENT_TYPE), timeout=10
    )
    assert usage.totals.tool_calls == FREE_TOOL_CALLS
    assert [group.key for group in usage.groups] == ["USAGE_EVENT_TYPE_TOOL_CALL"]

    async def refused() -> bool:
        check: pb.CheckQuotaResponse = await metering.stub.CheckQuota(
            pb.CheckQuotaRequest(tenant_id=tenant, meter=pb.METER_TOOL_CALLS, quantity=1), timeout=10
        )
        return not check.allowed and "1000 calls (tool calls)" in check.reason

    await eventually(refused, 10, "the free tool-call limit to refuse")
