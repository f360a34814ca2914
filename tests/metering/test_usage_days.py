"""GetUsage by UTC day, narrowed to one agent, and every group's list price at the tenant's
current plan, over usage that came in through the real topic.

The usage lies in March 2026, a month long past: its days are fixed, and events a moment either
side of the month must stay out of it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest
from aiokafka import AIOKafkaProducer
from macp.common.v1 import principal_pb2, usage_pb2
from macp.metering.v1 import metering_service_pb2 as pb

from tests.metering.conftest import Metering, rpc_code
from tests.metering.test_reports import publish, settle
from tests.metering.usage_events import agent_turn, other_event

AGENT_A = "0b9e3c52-4a8f-4d8e-9a43-5d7f0a1c2b3d"
AGENT_B = "7c1d2e3f-5a6b-4c7d-8e9f-0a1b2c3d4e5f"
MARCH = datetime(2026, 3, 1, tzinfo=UTC)
APRIL = datetime(2026, 4, 1, tzinfo=UTC)


def march() -> pb.Period:
    period = pb.Period()
    period.start_time.FromDatetime(MARCH)
    period.end_time.FromDatetime(APRIL)
    return period


def at(event: usage_pb2.UsageEvent, moment: datetime) -> usage_pb2.UsageEvent:
    event.time.FromDatetime(moment)
    return event


def march_usage(tenant: str) -> list[usage_pb2.UsageEvent]:
    """1 March: 5 turns (3 of agent A at midnight sharp, 2 of B a millisecond before the next
    midnight), 90.5 voice seconds, 4 API calls; 2 March: 1 turn of A and 2,048.5 MB stored;
    31 March, a millisecond before April: 1 orchestration. Outside March: a turn a millisecond
    before it and one at April's first instant."""
    first, second = MARCH, MARCH + timedelta(days=1)
    last_moment = APRIL - timedelta(milliseconds=1)
    voice = usage_pb2.USAGE_EVENT_TYPE_VOICE_SYNTHESIS
    storage = usage_pb2.USAGE_EVENT_TYPE_STORAGE
    events = [
        agent_turn(tenant, agent_id=AGENT_A, input_tokens=100, output_tokens=50, time=first) for _ in range(3)
    ]
    events += [
        agent_turn(
            tenant, agent_id=AGENT_B, input_tokens=7, output_tokens=3, time=second - timedelta(milliseconds=1)
        )
        for _ in range(2)
    ]
    events += [
        at(other_event(tenant, voice, audio_seconds=45.25), first + timedelta(hours=5)) for _ in range(2)
    ]
    events += [
        at(other_event(tenant, usage_pb2.USAGE_EVENT_TYPE_API_CALL), first + timedelta(hours=6))
        for _ in range(4)
    ]
    events += [
        agent_turn(
            tenant, agent_id=AGENT_A, input_tokens=1, output_tokens=1, time=second + timedelta(hours=9)
        )
    ]
    events += [
        at(other_event(tenant, storage, storage_mb=1_024.25), second + timedelta(hours=10)) for _ in range(2)
    ]
    events += [at(other_event(tenant, usage_pb2.USAGE_EVENT_TYPE_ORCHESTRATION), last_moment)]
    events += [agent_turn(tenant, agent_id=AGENT_A, time=MARCH - timedelta(milliseconds=1))]
    events += [agent_turn(tenant, agent_id=AGENT_A, time=APRIL)]
    return events


async def usage(
    metering: Metering, group_by: pb.GroupBy.ValueType, agent_id: str = ""
) -> pb.GetUsageResponse:
    response: pb.GetUsageResponse = await metering.stub.GetUsage(
        pb.GetUsageRequest(
            tenant_id=metering.tenant_id, period=march(), group_by=group_by, agent_id=agent_id
        ),
        timeout=10,
    )
    return response


async def test_usage_per_utc_day_with_its_list_price(metering: Metering, producer: AIOKafkaProducer) -> None:
    events = march_usage(metering.tenant_id)
    events += [at(agent_turn("another-tenant", agent_id=AGENT_A), MARCH) for _ in range(3)]
    await publish(producer, metering.topic, events)
    await settle(metering, len(events))

    # On the free plan (no plan set): every meter is under a hard limit, nothing is ever billed.
    free = await usage(metering, pb.GROUP_BY_DAY)
    assert [(g.key, g.totals.agent_turns, g.totals.cost_cents) for g in free.groups] == [
        ("2026-03-01", 5, 0),
        ("2026-03-02", 1, 0),
        ("2026-03-31", 0, 0),
    ]
    assert free.totals.cost_cents == 0

    await metering.stub.SetPlan(
        pb.SetPlanRequest(tenant_id=metering.tenant_id, tier=principal_pb2.TIER_PRO),
        metadata=metering.as_admin(),
        timeout=10,
    )
    by_day = await usage(metering, pb.GROUP_BY_DAY)
    days = {g.key: g.totals for g in by_day.groups}
    assert list(days) == ["2026-03-01", "2026-03-02", "2026-03-31"]
    first, second, last = days.values()
    assert (first.agent_turns, first.input_tokens, first.output_tokens) == (5, 314, 156)
    assert (first.voice_seconds, first.api_calls, first.event_count) == (90.5, 4, 11)
    # Pro's prices, nothing included: 5 turns at 50 cents per 1,000 is 0.25, billed 1; 90.5 s rounds
    # up to 91, at 10 cents a minute 15.2, billed 16; API calls are not priced.
    assert first.cost_cents == 1 + 16
    # 1 turn: 1 cent; 2,048.5 MB rounds up to 2,049, at 50 cents per 1,024 MB 100.05, billed 101.
    assert (second.agent_turns, second.storage_mb, second.cost_cents) == (1, 2_048.5, 1 + 101)
    # 1 orchestration at 25 cents per 1,000: 1 cent.
    assert (last.orchestrations, last.event_count, last.cost_cents) == (1, 1, 1)
    # The month's totals are priced whole (6 turns: 1 cent), so they cost less than their days' sum.
    assert (by_day.totals.agent_turns, by_day.totals.event_count) == (6, 15)
    assert by_day.totals.cost_cents == 1 + 16 + 101 + 1
    assert sum(g.totals.cost_cents for g in by_day.groups) == by_day.totals.cost_cents + 1

    # The same month from the rollups (grouped by agent) has the same totals and prices.
    by_agent = await usage(metering, pb.GROUP_BY_AGENT)
    agents = {g.key: (g.totals.agent_turns, g.totals.cost_cents) for g in by_agent.groups}
    assert agents == {"": (0, 16 + 101 + 1), AGENT_A: (4, 1), AGENT_B: (2, 1)}
    assert by_agent.totals == by_day.totals

    # One agent's days.
    a_days = await usage(metering, pb.GROUP_BY_DAY, AGENT_A)
    assert [
        (g.key, g.totals.agent_turns, g.totals.input_tokens, g.totals.cost_cents) for g in a_days.groups
    ] == [
        ("2026-03-01", 3, 300, 1),
        ("2026-03-02", 1, 1, 1),
    ]
    assert (a_days.totals.agent_turns, a_days.totals.event_count) == (4, 4)


async def test_days_are_paged_in_the_calendars_order(metering: Metering, producer: AIOKafkaProducer) -> None:
    # Fewer events on earlier days: largest-first would put the last day first.
    events = [
        agent_turn(metering.tenant_id, time=MARCH + timedelta(days=day))
        for day in range(5)
        for _ in range(day + 1)
    ]
    await publish(producer, metering.topic, events)
    await settle(metering, len(events))
    keys: list[str] = []
    token = ""
    while True:
        page: pb.GetUsageResponse = await metering.stub.GetUsage(
            pb.GetUsageRequest(
                tenant_id=metering.tenant_id,
                period=march(),
                group_by=pb.GROUP_BY_DAY,
                page_size=2,
                page_token=token,
            ),
            timeout=10,
        )
        keys += [g.key for g in page.groups]
        assert page.totals.agent_turns == 15
        token = page.next_page_token
        if not token:
            break
    assert keys == [f"2026-03-0{day}" for day in range(1, 6)]


@pytest.mark.parametrize("agent_id", ["agent-1", "0b9e3c52", "x" * 37])
async def test_an_agent_id_that_is_not_a_uuid_is_refused_by_name(metering: Metering, agent_id: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await usage(metering, pb.GROUP_BY_DAY, agent_id)
    assert rpc_code(refused.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert "agent_id" in (refused.value.details() or "")
