"""Rounds end to end over the real mesh: a posted message starts a round, each policy picks its
speakers, the deltas streamed reassemble exactly to the stored answers, and the usage is metered."""

from __future__ import annotations

import uuid

import pytest
from macp.common.v1 import usage_pb2
from macp.conversation.v1 import conversation_service_pb2 as conversation_pb
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb

from tests.tokens import bearer
from tests.world import World

pytestmark = pytest.mark.integration


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
