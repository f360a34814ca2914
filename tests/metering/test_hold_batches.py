"""ReserveHolds and CommitHolds through the real service, Redis and Postgres: each hold answered as
its own Reserve or Commit would be (a refusal or another tenant's hold refused alone, the others
held), idempotent retries by id, the refusal audited and counted, validation naming the field."""

from __future__ import annotations

import time
import uuid

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from macp.common.v1 import usage_pb2
from macp.metering.v1 import metering_service_pb2 as pb

from services.runtime import audit
from tests.audit.helpers import rows
from tests.metering.conftest import Metering, rpc_code
from tests.metering.usage_events import agent_turn, other_event
from tests.scrape import scrape

pytestmark = pytest.mark.integration

TURNS, ORCHESTRATIONS = pb.METER_AGENT_TURNS, pb.METER_ORCHESTRATIONS
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]


def hold(metering: Metering, meter: pb.Meter.ValueType, quantity: int = 1, ttl: int = 0) -> pb.ReserveRequest:
    request = pb.ReserveRequest(
        reservation_id=str(uuid.uuid4()), tenant_id=metering.tenant_id, meter=meter, quantity=quantity
    )
    if ttl:
        request.ttl.CopyFrom(Duration(seconds=ttl))
    return request


async def reserve_holds(metering: Metering, *holds: pb.ReserveRequest) -> list[pb.ReserveHoldResult]:
    response: pb.ReserveHoldsResponse = await metering.stub.ReserveHolds(
        pb.ReserveHoldsRequest(holds=holds), timeout=10
    )
    assert len(response.results) == len(holds)
    return list(response.results)


async def commit_holds(metering: Metering, *holds: pb.CommitRequest) -> list[pb.CommitHoldResult]:
    response: pb.CommitHoldsResponse = await metering.stub.CommitHolds(
        pb.CommitHoldsRequest(holds=holds), timeout=10
    )
    assert len(response.results) == len(holds)
    return list(response.results)


async def status(metering: Metering, meter: pb.Meter.ValueType) -> pb.QuotaStatus:
    response: pb.CheckQuotaResponse = await metering.stub.CheckQuota(
        pb.CheckQuotaRequest(tenant_id=metering.tenant_id, meter=meter, quantity=1), timeout=10
    )
    return response.quota


async def test_holds_are_answered_each_on_its_own_and_a_retry_is_the_same_hold(metering: Metering) -> None:
    # A free tenant: 100 turns and 50 orchestrations a month, hard limits.
    turns = hold(metering, TURNS, 60, ttl=120)
    too_many = hold(metering, TURNS, 50)  # 60 held + 50 > 100
    orchestration = hold(metering, ORCHESTRATIONS)
    foreign = hold(metering, ORCHESTRATIONS)
    foreign.tenant_id = "someone-else"
    before = time.time()

    held, refused, also_held, not_ours = await reserve_holds(
        metering, turns, too_many, orchestration, foreign
    )

    assert held.WhichOneof("result") == also_held.WhichOneof("result") == "reserved"
    assert held.reserved.reservation_id == turns.reservation_id
    assert (held.reserved.quota.reserved_quantity, held.reserved.quota.remaining_quantity) == (60, 40)
    assert before + 119 < held.reserved.expire_time.ToMilliseconds() / 1000 < time.time() + 121
    assert also_held.reserved.quota.meter == ORCHESTRATIONS
    assert also_held.reserved.quota.reserved_quantity == 1
    assert refused.failure.code == EXHAUSTED
    assert refused.failure.message.startswith("QUOTA_EXCEEDED: the free tier limit of 100 turns")
    assert not_ours.failure.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert "holds[3].tenant_id" in not_ours.failure.message

    # Retried with the same ids: the same holds, nothing held twice, the refusal the same.
    again = await reserve_holds(metering, turns, too_many, orchestration)
    assert again[0].reserved.expire_time == held.reserved.expire_time
    assert again[1].failure.code == EXHAUSTED
    assert again[2].reserved.expire_time == also_held.reserved.expire_time
    assert (await status(metering, TURNS)).reserved_quantity == 60
    assert (await status(metering, ORCHESTRATIONS)).reserved_quantity == 1

    # The refusal is audited once however often it is asked, and counted as Reserve's refusals are.
    [audited] = await rows(metering.db, metering.tenant_id, audit.QUOTA_REFUSE)
    assert audited.resource == f"reservation/{too_many.reservation_id}"
    scraped = await scrape(metering.metrics_port)
    assert scraped.value("macp_quota_refusals_total", tier="free", meter="agent_turns") == 2

    # A hold of the batch is the hold of a single Reserve: a single Reserve of its id finds it.
    single: pb.ReserveResponse = await metering.stub.Reserve(orchestration, timeout=10)
    assert single.expire_time == also_held.reserved.expire_time


async def test_holds_commit_together_once_each_and_an_invalid_one_alone_fails(metering: Metering) -> None:
    turn, orchestration, untouched = (
        hold(metering, TURNS),
        hold(metering, ORCHESTRATIONS),
        hold(metering, TURNS, 5),
    )
    await reserve_holds(metering, turn, orchestration, untouched)
    turn_event = agent_turn(metering.tenant_id)
    commits = (
        pb.CommitRequest(reservation_id=turn.reservation_id, usage=[turn_event]),
        pb.CommitRequest(
            reservation_id=orchestration.reservation_id,
            usage=[other_event(metering.tenant_id, usage_pb2.USAGE_EVENT_TYPE_ORCHESTRATION)],
        ),
        pb.CommitRequest(reservation_id=untouched.reservation_id, usage=[agent_turn("someone-else")]),
    )

    first = await commit_holds(metering, *commits)

    assert [r.WhichOneof("result") for r in first] == ["committed", "committed", "failure"]
    assert (first[0].committed.recorded_count, first[0].committed.already_committed) == (1, False)
    assert (first[1].committed.recorded_count, first[1].committed.already_committed) == (1, False)
    assert (first[0].committed.quota.used_quantity, first[0].committed.quota.reserved_quantity) == (1, 5)
    assert first[1].committed.quota.meter == ORCHESTRATIONS
    assert first[1].committed.quota.used_quantity == 1
    assert first[2].failure.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert first[2].failure.message.startswith(
        "holds[2].usage[0].tenant_id: must be the reservation's tenant"
    )

    # A retry records nothing again; a single Commit of a hold the batch settled agrees.
    again = await commit_holds(metering, *commits[:2])
    assert [(r.committed.recorded_count, r.committed.already_committed) for r in again] == [(0, True)] * 2
    single: pb.CommitResponse = await metering.stub.Commit(commits[0], timeout=10)
    assert (single.recorded_count, single.already_committed) == (0, True)
    turns_now, orchestrations_now = await status(metering, TURNS), await status(metering, ORCHESTRATIONS)
    assert (turns_now.used_quantity, turns_now.reserved_quantity) == (1, 5)  # the invalid one still held
    assert (orchestrations_now.used_quantity, orchestrations_now.reserved_quantity) == (1, 0)
    stored = await metering.db.fetchval(
        "SELECT count(*) FROM metering_usage_events WHERE tenant_id = $1", metering.tenant_id
    )
    assert stored == 2

    # One event carried by two holds is recorded once, for the first of them.
    shared = agent_turn(metering.tenant_id)
    a, b = hold(metering, TURNS), hold(metering, TURNS)
    await reserve_holds(metering, a, b)
    both = await commit_holds(
        metering,
        pb.CommitRequest(reservation_id=a.reservation_id, usage=[shared]),
        pb.CommitRequest(reservation_id=b.reservation_id, usage=[shared]),
    )
    assert [r.committed.recorded_count for r in both] == [1, 0]
    assert (await status(metering, TURNS)).used_quantity == 2


async def test_invalid_batches_are_refused_naming_the_field(metering: Metering) -> None:
    too_many = [hold(metering, TURNS) for _ in range(17)]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await metering.stub.ReserveHolds(pb.ReserveHoldsRequest(holds=too_many), timeout=10)
    assert rpc_code(refused.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert "holds: " in (refused.value.details() or "")

    bad = hold(metering, TURNS)
    bad.reservation_id = "not-a-uuid"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await metering.stub.ReserveHolds(
            pb.ReserveHoldsRequest(holds=[hold(metering, TURNS), bad]), timeout=10
        )
    assert rpc_code(refused.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert "holds.reservation_id" in (refused.value.details() or "")
    assert (await status(metering, TURNS)).reserved_quantity == 0  # the valid one was not held either

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await metering.stub.CommitHolds(pb.CommitHoldsRequest(), timeout=10)
    assert rpc_code(refused.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert "holds: " in (refused.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await metering.stub.CommitHolds(
            pb.CommitHoldsRequest(holds=[pb.CommitRequest(reservation_id=str(uuid.uuid4()))]), timeout=10
        )
    assert rpc_code(refused.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert "holds.usage" in (refused.value.details() or "")
