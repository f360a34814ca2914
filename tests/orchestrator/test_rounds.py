"""Rounds end to end over the real mesh: a posted message starts a round, each policy picks its
speakers, the deltas streamed reassemble exactly to the stored answers, and the usage is metered."""

from __future__ import annotations

import uuid

import pytest
import redis.asyncio as aioredis
from google.protobuf.field_mask_pb2 import FieldMask
from macp.common.v1 import usage_pb2
from macp.conversation.v1 import conversation_service_pb2 as conversation_pb
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb

from services.runtime.resource_cache import AGENT, CONVERSATION, value_key
from tests.tokens import bearer
from tests.world import World

pytestmark = pytest.mark.integration


@pytest.fixture
async def world(module_world: World) -> World:
    """The module's one mesh, as a tenant of this test's own: no test here needs a mesh to itself."""
    return await module_world.other_tenant()


@pytest.fixture
def redis_url(world: World) -> str:
    return world.environ["MACP_REDIS_URL"]


@pytest.fixture
def prefix(world: World) -> str:
    """The shared mesh's key prefix (the per-test one of tests/orchestrator/conftest.py is not its)."""
    return world.environ["MACP_REDIS_KEY_PREFIX"]


def turns_of(events: list[pb.ConversationEvent]) -> dict[str, str]:
    """Each turn's text as reassembled from its deltas, checking their indexes are gap-free."""
    texts: dict[str, list[str]] = {}
    for event in events:
        if event.HasField("token_delta"):
            delta = event.token_delta
            pieces = texts.setdefault(delta.turn_id, [])
            assert delta.index == len(pieces)
            pieces.append(delta.text)
    return {turn: "".join(pieces) for turn, pieces in texts.items()}


async def test_a_round_robin_round_streams_every_agent_and_stores_what_was_streamed(world: World) -> None:
    agents = [await world.agent(name) for name in ("Ada", "Grace", "Edsger")]
    conversation = await world.conversation(agents)
    accepted = await world.post(conversation.id, "What is a monad?")
    assert not accepted.duplicate
    events = await world.round_events(conversation.id, accepted.event_id, accepted.message_id)

    started = [e.turn_started for e in events if e.HasField("turn_started")]
    assert [s.agent_id for s in started] == [a.id for a in agents]
    assert [s.turn_index for s in started] == [1, 2, 3]
    completed = [e.turn_completed for e in events if e.HasField("turn_completed")]
    assert all(c.outcome == pb.TURN_OUTCOME_COMPLETED for c in completed)
    streamed = turns_of(events)
    assert {c.turn_id: c.text for c in completed} == streamed

    stored = await world.messages(conversation.id)
    assert [m.role for m in stored] == [conversation_pb.MESSAGE_ROLE_USER] + [
        conversation_pb.MESSAGE_ROLE_AGENT
    ] * 3
    assert {m.turn_id: m.text for m in stored[1:]} == streamed
    assert [m.id for m in stored[1:]] == [c.message_id for c in completed]

    usage = [e.usage for e in events if e.HasField("usage")]
    kinds = [u.type for u in usage]
    assert kinds.count(usage_pb2.USAGE_EVENT_TYPE_AGENT_TURN) == 3  # one per turn
    assert kinds.count(usage_pb2.USAGE_EVENT_TYPE_ORCHESTRATION) == 1  # one per round
    assert all(u.tenant_id == world.tenant.tenant_id for u in usage)
    ended = events[-1].round_completed
    assert (ended.turn_count, ended.reason) == (3, pb.ROUND_END_REASON_TURN_LIMIT)


async def test_a_retried_message_is_accepted_once_and_starts_one_round(world: World) -> None:
    agent = await world.agent("Ada")
    conversation = await world.conversation([agent])
    first = await world.post(conversation.id, "Hello", message_id="6f1b1c2e-9a8d-4c3b-8e7f-1a2b3c4d5e6f")
    again = [await world.post(conversation.id, "Hello", message_id=first.message_id) for _ in range(5)]
    assert all(a.duplicate and a.event_id == first.event_id for a in again)
    await world.round_events(conversation.id, first.event_id, first.message_id)
    stored = await world.messages(conversation.id)
    assert [m.role for m in stored] == [conversation_pb.MESSAGE_ROLE_USER, conversation_pb.MESSAGE_ROLE_AGENT]


async def test_a_round_sees_the_newest_context_of_a_long_conversation_in_order(world: World) -> None:
    agent = await world.agent("Ada")
    conversation = await world.conversation([agent])
    # More history than a round's context (MACP_ORCHESTRATOR_CONTEXT_MESSAGES, 40 by default).
    for index in range(45):
        await world.conversations.AppendMessage(
            conversation_pb.AppendMessageRequest(
                message=conversation_pb.Message(
                    id=str(uuid.uuid4()),
                    conversation_id=conversation.id,
                    role=conversation_pb.MESSAGE_ROLE_USER,
                    author_id=conversation.owner_id,
                    text=f"note-{index:02d}",
                )
            ),
            metadata=bearer(world.conversation_token),
            timeout=10,
        )
    accepted = await world.post(conversation.id, "And now?")
    await world.round_events(conversation.id, accepted.event_id, accepted.message_id)
    prompt = world.provider_server.state.prompts[-1]
    assert all(f"note-{index:02d}" not in prompt for index in range(5))
    positions = [prompt.index(f"note-{index:02d}") for index in range(5, 45)]
    assert positions == sorted(positions)
    assert positions[-1] < prompt.index("And now?")


async def test_a_round_reads_its_conversation_and_agents_as_updated_even_when_they_were_cached(
    world: World, redis: aioredis.Redis, prefix: str
) -> None:
    ada, grace = await world.agent("Ada"), await world.agent("Grace")
    conversation = await world.conversation([ada, grace])
    first = await world.post(conversation.id, "First question")
    events = await world.round_events(conversation.id, first.event_id, first.message_id)
    assert [e.turn_started.agent_id for e in events if e.HasField("turn_started")] == [ada.id, grace.id]
    # The round read the conversation and both agents through the read cache, which holds them.
    tenant = world.tenant.tenant_id
    assert await redis.exists(value_key(prefix, CONVERSATION, tenant, conversation.id))
    for agent in (ada, grace):
        assert await redis.exists(value_key(prefix, AGENT, tenant, agent.id))

    metadata = bearer(world.conversation_token)
    await world.conversations.UpdateAgent(
        conversation_pb.UpdateAgentRequest(
            agent=conversation_pb.Agent(id=ada.id, etag=ada.etag, model="echo-2"),
            update_mask=FieldMask(paths=["model"]),
        ),
        metadata=metadata,
        timeout=10,
    )
    await world.conversations.UpdateConversation(
        conversation_pb.UpdateConversationRequest(
            conversation=conversation_pb.Conversation(
                id=conversation.id, etag=conversation.etag, participant_agent_ids=[ada.id]
            ),
            update_mask=FieldMask(paths=["participant_agent_ids"]),
        ),
        metadata=metadata,
        timeout=10,
    )
    second = await world.post(conversation.id, "Second question")
    events = await world.round_events(conversation.id, second.event_id, second.message_id)
    assert [e.turn_started.agent_id for e in events if e.HasField("turn_started")] == [ada.id]
    turns = [
        e.usage
        for e in events
        if e.HasField("usage") and e.usage.type == usage_pb2.USAGE_EVENT_TYPE_AGENT_TURN
    ]
    assert [u.dimensions.model for u in turns] == ["echo-2"]
