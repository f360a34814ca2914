"""Real-time quotas through the real service, Redis and Postgres: no overshoot under concurrency,
refusals that name the limit and its reset, holds that expire or are released, and counters
rebuilt from Postgres after Redis loses them."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from macp.common.v1 import usage_pb2
from macp.metering.v1 import metering_service_pb2 as pb

from services.metering.quotas import utc_now
from services.runtime.periods import billing_month, month_end
from tests.metering.conftest import Metering, rpc_code
from tests.metering.usage_events import agent_turn, other_event

TURNS = pb.METER_AGENT_TURNS


async def reserve(metering: Metering, quantity: int = 1, ttl_seconds: int = 0) -> pb.ReserveResponse:
    request = pb.ReserveRequest(
        reservation_id=str(uuid.uuid4()), tenant_id=metering.tenant_id, meter=TURNS, quantity=quantity
    )
    if ttl_seconds:
        request.ttl.CopyFrom(Duration(seconds=ttl_seconds))
    response: pb.ReserveResponse = await metering.stub.Reserve(request, timeout=10)
    return response


async def turn(metering: Metering, events: int = 1) -> pb.CommitResponse:
    """One turn as the turn engine runs it: Reserve, then Commit its AGENT_TURN events."""
    held = await reserve(metering, events)
    usage = [agent_turn(metering.tenant_id) for _ in range(events)]
    response: pb.CommitResponse = await metering.stub.Commit(
        pb.CommitRequest(reservation_id=held.reservation_id, usage=usage), timeout=10
    )
    return response


async def check(metering: Metering, quantity: int = 1) -> pb.CheckQuotaResponse:
    response: pb.CheckQuotaResponse = await metering.stub.CheckQuota(
        pb.CheckQuotaRequest(tenant_id=metering.tenant_id, meter=TURNS, quantity=quantity), timeout=10
    )
    return response


async def test_twenty_concurrent_turns_near_the_free_limit_never_overshoot(metering: Metering) -> None:
    first = await turn(metering, 95)  # a free tenant: 100 turns a month, hard limit
    assert first.recorded_count == 95
    assert first.quota.used_quantity == 95

    outcomes = await asyncio.gather(*(turn(metering) for _ in range(20)), return_exceptions=True)

    succeeded = [o for o in outcomes if isinstance(o, pb.CommitResponse)]
    refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert (len(succeeded), len(refused)) == (5, 15)
    reset = month_end(billing_month(utc_now())).strftime("%Y-%m-%dT%H:%M:%SZ")
    for error in refused:
        assert rpc_code(error) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "limit of 100 turns" in (error.details() or "")
        assert f"resets at {reset}" in (error.details() or "")
    status = await check(metering)
    assert not status.allowed
    assert "limit of 100 turns" in status.reason
    assert (status.quota.used_quantity, status.quota.reserved_quantity, status.quota.remaining_quantity) == (
        100,
        0,
        0,
    )
    stored = await metering.db.fetchval(
        "SELECT sum(event_count) FROM metering_usage_rollups WHERE tenant_id = $1", metering.tenant_id
    )
    assert stored == 100


async def test_commit_is_idempotent_and_release_and_expiry_give_holds_back(metering: Metering) -> None:
    held = await reserve(metering, 3)
    assert held.quota.reserved_quantity == 3
    assert held.quota.remaining_quantity == 97
    usage = [agent_turn(metering.tenant_id)]
    commit = pb.CommitRequest(reservation_id=held.reservation_id, usage=usage)
    once: pb.CommitResponse = await metering.stub.Commit(commit, timeout=10)
    again: pb.CommitResponse = await metering.stub.Commit(commit, timeout=10)
    assert (once.recorded_count, once.already_committed) == (1, False)
    assert (again.recorded_count, again.already_committed) == (0, True)
    assert (again.quota.used_quantity, again.quota.reserved_quantity) == (1, 0)

    released = await reserve(metering, 10)
    first: pb.ReleaseResponse = await metering.stub.Release(
        pb.ReleaseRequest(reservation_id=released.reservation_id, reason="turn cancelled"), timeout=10
    )
    second: pb.ReleaseResponse = await metering.stub.Release(
        pb.ReleaseRequest(reservation_id=released.reservation_id), timeout=10
    )
    assert (first.released, second.released) == (True, False)

    await reserve(metering, 50, ttl_seconds=1)
    assert (await check(metering)).quota.reserved_quantity == 50
    await asyncio.sleep(1.2)
    assert (await check(metering)).quota.reserved_quantity == 0


async def test_counters_are_rebuilt_from_postgres_after_redis_loses_them(metering: Metering) -> None:
    await turn(metering, 60)
    redis = metering.tokens.harness.redis
    prefix = metering.environ["MACP_REDIS_KEY_PREFIX"]
    keys = [key async for key in redis.scan_iter(match=f"{prefix}metering:*")]
    assert keys
    await redis.delete(*keys)  # what a restart without persistence leaves: nothing

    status = await check(metering, 40)
    assert status.allowed
    assert status.quota.used_quantity == 60
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await reserve(metering, 41)
    assert rpc_code(refused.value) == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_another_tenants_quota_is_refused(metering: Metering) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await metering.stub.CheckQuota(
            pb.CheckQuotaRequest(tenant_id="someone-else", meter=TURNS, quantity=1), timeout=10
        )
    assert rpc_code(refused.value) == grpc.StatusCode.PERMISSION_DENIED
    assert "tenant_id" in (refused.value.details() or "")
    foreign = agent_turn("someone-else")
    held = await reserve(metering)
    with pytest.raises(grpc.aio.AioRpcError) as mixed:
        await metering.stub.Commit(
            pb.CommitRequest(reservation_id=held.reservation_id, usage=[foreign]), timeout=10
        )
    assert rpc_code(mixed.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert "usage[0].tenant_id" in (mixed.value.details() or "")


async def test_a_commits_counted_deltas_are_deleted_soon_without_the_sweep(metering: Metering) -> None:
    """The Commit's delta rows go a few milliseconds after it (CountedDeltas), long before the
    sweep would touch them: it only takes rows older than its interval (0.5 s here)."""
    committed_at = asyncio.get_running_loop().time()
    await turn(metering)
    remaining = -1
    while asyncio.get_running_loop().time() - committed_at < 0.4:
        remaining = await metering.db.fetchval(
            "SELECT count(*) FROM metering_quota_deltas WHERE tenant_id = $1", metering.tenant_id
        )
        if remaining == 0:
            break
        await asyncio.sleep(0.01)
    assert remaining == 0


async def test_a_commit_of_several_meters_counts_each_of_them(metering: Metering) -> None:
    """One batch, one month, two meters: two deltas under one `applied` mark, both counted."""
    held = await reserve(metering)
    usage = [
        agent_turn(metering.tenant_id),
        other_event(metering.tenant_id, usage_pb2.USAGE_EVENT_TYPE_API_CALL),
    ]
    committed: pb.CommitResponse = await metering.stub.Commit(
        pb.CommitRequest(reservation_id=held.reservation_id, usage=usage), timeout=10
    )
    assert committed.recorded_count == 2
    assert (await check(metering)).quota.used_quantity == 1
    api_calls: pb.CheckQuotaResponse = await metering.stub.CheckQuota(
        pb.CheckQuotaRequest(tenant_id=metering.tenant_id, meter=pb.METER_API_CALLS, quantity=1), timeout=10
    )
    assert api_calls.quota.used_quantity == 1
