"""Quota refusals on the metering service's real /metrics endpoint: every (tier, meter) series is
there at 0 before any call, and a Reserve refused with RESOURCE_EXHAUSTED counts once, under the
tenant's tier and the meter it asked for, beside the RPC metrics of that same refusal."""

from __future__ import annotations

import uuid

import grpc
import pytest
from macp.metering.v1 import metering_service_pb2 as pb

from tests.metering.conftest import Metering, rpc_code
from tests.scrape import scrape

pytestmark = pytest.mark.integration

RESERVE = "/macp.metering.v1.MeteringService/Reserve"


async def _reserve(metering: Metering, quantity: int) -> None:
    await metering.stub.Reserve(
        pb.ReserveRequest(
            reservation_id=str(uuid.uuid4()),
            tenant_id=metering.tenant_id,
            meter=pb.METER_AGENT_TURNS,
            quantity=quantity,
        ),
        timeout=10,
    )


async def test_a_refused_reserve_counts_one_refusal_by_tier_and_meter(metering: Metering) -> None:
    before = await scrape(metering.metrics_port)
    refusals = "macp_quota_refusals_total"
    assert before.families["macp_quota_refusals"] == "counter"
    for tier in ("free", "pro", "enterprise"):
        for meter in ("agent_turns", "orchestrations", "voice_seconds", "storage_mb", "api_calls"):
            assert before.value(refusals, service="metering", tier=tier, meter=meter) == 0, (tier, meter)

    await _reserve(metering, 10)  # within the free tier's 100 turns: held, not refused
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _reserve(metering, 91)  # 10 held + 91 > 100
    assert rpc_code(refused.value) == grpc.StatusCode.RESOURCE_EXHAUSTED

    after = await scrape(metering.metrics_port)
    assert after.value(refusals, tier="free", meter="agent_turns") == 1
    assert after.value(refusals, tier="free", meter="orchestrations") == 0
    assert after.value(refusals, tier="pro", meter="agent_turns") == 0
    # The same refusal in the shared RPC metrics, and the held Reserve beside it.
    requests = "macp_rpc_requests_total"
    assert after.value(requests, service="metering", rpc=RESERVE, grpc_status="RESOURCE_EXHAUSTED") == 1
    assert after.value(requests, service="metering", rpc=RESERVE, grpc_status="OK") == 1
    observed = after.value(
        "macp_rpc_duration_seconds_count", service="metering", rpc=RESERVE, grpc_status="RESOURCE_EXHAUSTED"
    )
    assert observed == 1
