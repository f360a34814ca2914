"""Each turn policy over the real mesh, three agents each: who speaks, in which order, on what."""

from __future__ import annotations

import pytest
from macp.common.v1 import agent_settings_pb2
from macp.conversation.v1 import conversation_service_pb2 as conversation_pb
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb

from tests.orchestrator.test_rounds import turns_of
from tests.world import World

pytestmark = pytest.mark.integration


@pytest.fixture
async def world(module_world: World) -> World:
    """The module's one mesh, as a tenant of this test's own: no test here needs a mesh to itself."""
    return await module_world.other_tenant()


def speakers(events: list[pb.ConversationEvent]) -> list[str]:
    return [e.turn_started.agent_id for e in events if e.HasField("turn_started")]


async def test_bid_the_most_relevant_agent_speaks_and_the_bids_are_streamed(world: World) -> None:
    agents = [
        await world.agent("Chef", bidding=agent_settings_pb2.BiddingHints(keywords=["recipe", "cooking"])),
        await world.agent(
            "Dba", bidding=agent_settings_pb2.BiddingHints(keywords=["database", "index", "query"])
        ),
        await world.agent("Poet", bidding=agent_settings_pb2.BiddingHints(keywords=["poem", "rhyme"])),
    ]
    conversation = await world.conversation(
        agents,
        conversation_pb.TURN_POLICY_BID,
        limits=conversation_pb.ConversationLimits(max_agent_turns_per_user_message=1),
    )
    accepted = await world.post(conversation.id, "Why is my database query slow without an index?")
    events = await world.round_events(conversation.id, accepted.event_id, accepted.message_id)

    opened = [e.bidding_opened for e in events if e.HasField("bidding_opened")]
    results = [e.bid_results for e in events if e.HasField("bid_results")]
    assert len(opened) == len(results) == 1
    assert set(opened[0].agent_ids) == {a.id for a in agents}
    assert results[0].winner_agent_id == agents[1].id
    assert len(results[0].bids) == 3
    assert [b.score for b in results[0].bids] == sorted((b.score for b in results[0].bids), reverse=True)
    assert all(b.source == pb.BID_SOURCE_AGENT_PROXY for b in results[0].bids)
    assert speakers(events) == [agents[1].id]
    started = next(e.turn_started for e in events if e.HasField("turn_started"))
    assert started.turn_id == results[0].turn_id == opened[0].turn_id
    assert events[-1].round_completed.reason == pb.ROUND_END_REASON_TURN_LIMIT


async def test_pipeline_each_agent_works_on_the_previous_output(world: World) -> None:
    agents = [await world.agent(name) for name in ("Drafter", "Editor", "Translator")]
    conversation = await world.conversation(agents, conversation_pb.TURN_POLICY_PIPELINE)
    accepted = await world.post(conversation.id, "Write a tagline for a bakery.")
    events = await world.round_events(conversation.id, accepted.event_id, accepted.message_id)

    assert speakers(events) == [a.id for a in agents]
    texts = list(turns_of(events).values())
    prompts = list(world.provider_server.state.prompts)[-3:]
    # Stage 2 was given stage 1's output, stage 3 stage 2's.
    assert texts[0] in prompts[1]
    assert texts[1] in prompts[2]
    assert events[-1].round_completed.reason == pb.ROUND_END_REASON_COMPLETED


async def test_coordinator_plans_delegates_and_composes(world: World) -> None:
    coordinator = await world.agent("Lead", system_prompt="You coordinate.")
    specialists = [await world.agent(name) for name in ("Finance", "Legal")]
    conversation = await world.conversation(
        [coordinator, *specialists],
        conversation_pb.TURN_POLICY_COORDINATOR,
        coordinator_agent_id=coordinator.id,
    )
    accepted = await world.post(conversation.id, "Can we open an office in Lisbon?")
    events = await world.round_events(conversation.id, accepted.event_id, accepted.message_id)

    # The plan, each specialist once, then the composed answer.
    assert speakers(events) == [coordinator.id, specialists[0].id, specialists[1].id, coordinator.id]
    texts = list(turns_of(events).values())
    compose_prompt = world.provider_server.state.prompts[-1]
    assert texts[1] in compose_prompt
    assert texts[2] in compose_prompt
    assert events[-1].round_completed.reason == pb.ROUND_END_REASON_COMPLETED
    assert events[-1].round_completed.turn_count == 4
