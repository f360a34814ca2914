"""A round's metering calls over the real mesh: its two holds taken in one ReserveHolds call, and
its last turn's usage committed with the round's orchestration in one CommitHolds call; each turn
and the round still billed once, no hold left open, and the usage said in the usual order."""

from __future__ import annotations

import pytest
from macp.common.v1 import usage_pb2
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb

from services.runtime.usage_ids import agent_turn_event_id, orchestration_event_id
from tests.scrape import scrape
from tests.world import World

pytestmark = pytest.mark.integration

METHODS = ("Reserve", "ReserveHolds", "Commit", "CommitHolds", "Release")


@pytest.fixture
async def world(module_world: World) -> World:
    """The module's one mesh, as a tenant of this test's own."""
    return await module_world.other_tenant()


async def calls(world: World) -> dict[str, float]:
    """How many calls of each of METHODS metering has answered OK so far."""
    scraped = await scrape(world.metrics_port("metering"))
    return {
        method: scraped.value(
            "macp_rpc_requests_total",
            service="metering",
            rpc=f"/macp.metering.v1.MeteringService/{method}",
            grpc_status="OK",
        )
        or 0.0
        for method in METHODS
    }


async def round_of(
    world: World, names: tuple[str, ...]
) -> tuple[list[pb.ConversationEvent], dict[str, float]]:
    """A round-robin round of one turn per agent: its events and the metering calls it made."""
    conversation = await world.conversation([await world.agent(name) for name in names])
    before = await calls(world)
    accepted = await world.post(conversation.id, "How many calls?")
    events = await world.round_events(conversation.id, accepted.event_id, accepted.message_id)
    after = await calls(world)
    made = {method: after[method] - before[method] for method in METHODS}

    started = [e.turn_started.turn_id for e in events if e.HasField("turn_started")]
    async with world.database() as db:
        billed = await db.fetch(
            "SELECT event_id::text, event_type FROM metering_usage_events WHERE conversation_id = $1",
            conversation.id,
        )
    assert sorted((row["event_id"], row["event_type"]) for row in billed) == sorted(
        [(agent_turn_event_id(turn), usage_pb2.USAGE_EVENT_TYPE_AGENT_TURN) for turn in started]
        + [
            (
                orchestration_event_id(conversation.id, accepted.message_id),
                usage_pb2.USAGE_EVENT_TYPE_ORCHESTRATION,
            )
        ]
    )
    assert await world.open_holds() == []
    return events, made


def kinds(events: list[pb.ConversationEvent]) -> list[str]:
    """The events' kinds, a usage event by its type."""
    return [
        usage_pb2.UsageEventType.Name(e.usage.type) if e.HasField("usage") else str(e.WhichOneof("payload"))
        for e in events
        if not e.HasField("token_delta")
    ]


async def test_a_one_turn_round_makes_one_reserve_call_and_one_commit_call(world: World) -> None:
    events, made = await round_of(world, ("Ada",))

    assert made == {"Reserve": 0, "ReserveHolds": 1, "Commit": 0, "CommitHolds": 1, "Release": 0}
    # Folded or not, the turn's usage follows its TurnCompleted, the round's comes last.
    assert kinds(events) == [
        "turn_started",
        "turn_completed",
        "USAGE_EVENT_TYPE_AGENT_TURN",
        "USAGE_EVENT_TYPE_ORCHESTRATION",
        "round_completed",
    ]
    assert events[-1].round_completed.reason == pb.ROUND_END_REASON_TURN_LIMIT


async def test_only_the_last_turn_of_a_longer_round_carries_the_rounds_commit(world: World) -> None:
    events, made = await round_of(world, ("Ada", "Grace"))

    # The second turn's hold is its own Reserve; the first turn is committed alone.
    assert made == {"Reserve": 1, "ReserveHolds": 1, "Commit": 1, "CommitHolds": 1, "Release": 0}
    assert kinds(events)[-3:] == [
        "USAGE_EVENT_TYPE_AGENT_TURN",
        "USAGE_EVENT_TYPE_ORCHESTRATION",
        "round_completed",
    ]
    assert events[-1].round_completed.turn_count == 2
