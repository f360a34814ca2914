"""GetUsage, GetInvoicePreview and SetPlan over usage that came in through the real topic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest
from aiokafka import AIOKafkaProducer
from macp.common.v1 import principal_pb2, usage_pb2
from macp.metering.v1 import metering_service_pb2 as pb

from services.runtime.periods import billing_month, month_end, month_start
from tests.metering.conftest import Metering, rpc_code
from tests.metering.topics import eventually
from tests.metering.usage_events import MODELS, agent_turn, other_event


async def publish(producer: AIOKafkaProducer, topic: str, events: list[usage_pb2.UsageEvent]) -> None:
    for event in events:
        await producer.send(topic, value=event.SerializeToString(), key=event.tenant_id.encode())
    await producer.flush()


async def settle(metering: Metering, count: int) -> None:
    async def stored() -> bool:
        return bool(await metering.db.fetchval("SELECT count(*) FROM metering_usage_events") == count)

    await eventually(stored, 60, f"{count} events recorded")


def this_month() -> pb.Period:
    month = billing_month(datetime.now(UTC))
    period = pb.Period()
    period.start_time.FromDatetime(month_start(month))
    period.end_time.FromDatetime(month_end(month))
    return period


async def test_a_pro_tenants_overage_is_priced_as_the_plan_says(
    metering: Metering, producer: AIOKafkaProducer
) -> None:
    tenant = metering.tenant_id
    plan: pb.SetPlanResponse = await metering.stub.SetPlan(
        pb.SetPlanRequest(tenant_id=tenant, tier=principal_pb2.TIER_PRO),
        metadata=metering.as_admin(),
        timeout=10,
    )
    assert plan.plan.tier == principal_pb2.TIER_PRO
    events = [agent_turn(tenant, model=MODELS[i % 2]) for i in range(10_000 + 1_001)]
    events += [other_event(tenant, usage_pb2.USAGE_EVENT_TYPE_ORCHESTRATION) for _ in range(5_000 + 2_000)]
    voice = usage_pb2.USAGE_EVENT_TYPE_VOICE_SYNTHESIS
    events += [other_event(tenant, voice, audio_seconds=60.0) for _ in range(61)]  # 3,660 s: 60 s over
    events += [other_event(tenant, usage_pb2.USAGE_EVENT_TYPE_VOICE_TRANSCRIPTION, audio_seconds=29.5)]
    events += [other_event(tenant, usage_pb2.USAGE_EVENT_TYPE_STORAGE, storage_mb=500.25) for _ in range(2)]
    await publish(producer, metering.topic, events)
    await settle(metering, len(events))

    preview: pb.GetInvoicePreviewResponse = await metering.stub.GetInvoicePreview(
        pb.GetInvoicePreviewRequest(tenant_id=tenant), timeout=10
    )
    lines = {line.meter: line for line in preview.line_items}
    turns = lines[pb.METER_AGENT_TURNS]
    # $0.50 per 1,000 turns: 1,001 turns over is 50.05 cents, rounded up to 51.
    assert (turns.quantity, turns.included_quantity, turns.overage_quantity, turns.amount_cents) == (
        11_001,
        10_000,
        1_001,
        51,
    )
    orchestrations = lines[pb.METER_ORCHESTRATIONS]
    assert (orchestrations.overage_quantity, orchestrations.amount_cents) == (2_000, 50)  # $0.25 per 1,000
    seconds = lines[pb.METER_VOICE_SECONDS]
    # 3,689.5 s rounds up to 3,690: 90 s over at $0.10 per minute is 15 cents.
    assert (seconds.quantity, seconds.overage_quantity, seconds.amount_cents) == (3_690, 90, 15)
    storage = lines[pb.METER_STORAGE_MB]
    # 1,000.5 MB rounds up to 1,001: 1 MB over at $0.50 per 1,024 MB is 0.049 cents, billed as 1.
    assert (storage.quantity, storage.overage_quantity, storage.amount_cents) == (1_001, 1, 1)
    assert preview.total_cents == 51 + 50 + 15 + 1
    assert (preview.currency, preview.tier, preview.final) == ("USD", principal_pb2.TIER_PRO, False)

    check: pb.CheckQuotaResponse = await metering.stub.CheckQuota(
        pb.CheckQuotaRequest(tenant_id=tenant, meter=pb.METER_AGENT_TURNS, quantity=1), timeout=10
    )
    assert (check.allowed, check.overage, check.quota.used_quantity) == (True, True, 11_001)


async def test_usage_is_grouped_and_paged(metering: Metering, producer: AIOKafkaProducer) -> None:
    tenant = metering.tenant_id
    events = [agent_turn(tenant, model=MODELS[i % 3], input_tokens=1, output_tokens=2) for i in range(30)]
    events += [agent_turn(tenant, user_id="u-2", model=MODELS[0]) for _ in range(5)]
    events += [agent_turn("another-tenant") for _ in range(7)]
    await publish(producer, metering.topic, events)
    await settle(metering, len(events))

    by_model: pb.GetUsageResponse = await metering.stub.GetUsage(
        pb.GetUsageRequest(tenant_id=tenant, period=this_month(), group_by=pb.GROUP_BY_MODEL, page_size=2),
        timeout=10,
    )
    assert [(g.key, g.totals.agent_turns) for g in by_model.groups] == [(MODELS[0], 15), (MODELS[1], 10)]
    assert by_model.totals.event_count == 35
    assert by_model.next_page_token
    rest: pb.GetUsageResponse = await metering.stub.GetUsage(
        pb.GetUsageRequest(
            tenant_id=tenant,
            period=this_month(),
            group_by=pb.GROUP_BY_MODEL,
            page_size=2,
            page_token=by_model.next_page_token,
        ),
        timeout=10,
    )
    assert [(g.key, g.totals.agent_turns) for g in rest.groups] == [(MODELS[2], 10)]
    assert not rest.next_page_token

    # A period that cuts the month is answered from the raw events, by time.
    recent = pb.Period()
    recent.start_time.FromDatetime(datetime.now(UTC) - timedelta(hours=1))
    recent.end_time.FromDatetime(datetime.now(UTC) + timedelta(minutes=1))
    by_type: pb.GetUsageResponse = await metering.stub.GetUsage(
        pb.GetUsageRequest(tenant_id=tenant, period=recent, group_by=pb.GROUP_BY_EVENT_TYPE, user_id="u-1"),
        timeout=10,
    )
    assert [(g.key, g.totals.event_count) for g in by_type.groups] == [("USAGE_EVENT_TYPE_AGENT_TURN", 30)]
    assert (by_type.totals.input_tokens, by_type.totals.output_tokens) == (30, 60)

    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await metering.stub.GetUsage(
            pb.GetUsageRequest(
                tenant_id=tenant, period=this_month(), group_by=pb.GROUP_BY_MODEL, page_token="x"
            ),
            timeout=10,
        )
    assert rpc_code(bad.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in (bad.value.details() or "")


async def test_only_an_administrator_sets_plans(metering: Metering) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await metering.stub.SetPlan(
            pb.SetPlanRequest(tenant_id=metering.tenant_id, tier=principal_pb2.TIER_PRO), timeout=10
        )
    assert rpc_code(refused.value) == grpc.StatusCode.PERMISSION_DENIED
    assert "macp:admin" in (refused.value.details() or "")
    custom = pb.PlanAllowance(
        meter=pb.METER_AGENT_TURNS, included_quantity=7, hard_limit=True, overage_block_size=1
    )
    enterprise: pb.SetPlanResponse = await metering.stub.SetPlan(
        pb.SetPlanRequest(
            tenant_id=metering.tenant_id, tier=principal_pb2.TIER_ENTERPRISE, allowances=[custom]
        ),
        metadata=metering.as_admin(),
        timeout=10,
    )
    assert list(enterprise.plan.allowances) == [custom]
    check: pb.CheckQuotaResponse = await metering.stub.CheckQuota(
        pb.CheckQuotaRequest(tenant_id=metering.tenant_id, meter=pb.METER_AGENT_TURNS, quantity=8), timeout=10
    )
    assert (check.allowed, check.quota.included_quantity, check.quota.tier) == (
        False,
        7,
        principal_pb2.TIER_ENTERPRISE,
    )
    with pytest.raises(grpc.aio.AioRpcError) as invalid:
        await metering.stub.SetPlan(
            pb.SetPlanRequest(tenant_id=metering.tenant_id, tier=principal_pb2.TIER_PRO, allowances=[custom]),
            metadata=metering.as_admin(),
            timeout=10,
        )
    assert rpc_code(invalid.value) == grpc.StatusCode.INVALID_ARGUMENT
