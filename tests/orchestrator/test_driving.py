"""Driving rounds: double texting (reject, enqueue, interrupt), cancel, and quota refusals."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from macp.conversation.v1 import conversation_service_pb2 as conversation_pb
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb

from tests.tokens import bearer
from tests.world import ORCHESTRATOR_AUDIENCE, World

pytestmark = pytest.mark.integration


@pytest.fixture
async def world(module_world: World) -> World:
    """The module's one mesh, as a tenant of this test's own: no test here needs a mesh to itself."""
    return await module_world.other_tenant()


SLOW = "tokens=40,pace=0.05"  # a two-second answer: long enough to act while it streams


async def first_delta(world: World, conversation_id: str, after: str) -> pb.TokenDelta:
    stream = world.orchestrator.StreamEvents(
        pb.StreamEventsRequest(conversation_id=conversation_id, after_event_id=after), metadata=world.as_user
    )
    async for response in stream:
        if response.event.HasField("token_delta"):
            stream.cancel()
            return response.event.token_delta
    raise AssertionError("the stream ended without a delta")


async def test_reject_refuses_a_second_message_while_a_round_runs_and_stores_nothing(world: World) -> None:
    agent = await world.agent("Ada")
    conversation = await world.conversation(
        [agent], double_texting_policy=conversation_pb.DOUBLE_TEXTING_POLICY_REJECT
    )
    world.book(SLOW, times=1)
    first = await world.post(conversation.id, "Tell me a long story")
    await first_delta(world, conversation.id, first.event_id)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await world.post(conversation.id, "Are you there?")
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "double_texting_policy is REJECT" in (refused.value.details() or "")
    await world.round_events(conversation.id, first.event_id, first.message_id)
    stored = await world.messages(conversation.id)
    assert [m.text for m in stored if m.role == conversation_pb.MESSAGE_ROLE_USER] == ["Tell me a long story"]
    # Once the round is over the conversation takes messages again.
    again = await world.post(conversation.id, "Are you there?")
    await world.round_events(conversation.id, again.event_id, again.message_id)


async def test_enqueue_answers_each_message_in_its_own_round_in_order(world: World) -> None:
    agent = await world.agent("Ada")
    conversation = await world.conversation(
        [agent], double_texting_policy=conversation_pb.DOUBLE_TEXTING_POLICY_ENQUEUE
    )
    world.book(SLOW, times=1)
    first = await world.post(conversation.id, "one")
    await first_delta(world, conversation.id, first.event_id)
    second = await world.post(conversation.id, "two")
    third = await world.post(conversation.id, "three")
    assert not second.duplicate
    events = await world.round_events(conversation.id, first.event_id, third.message_id)
    rounds = [e.round_completed for e in events if e.HasField("round_completed")]
    assert [r.trigger_message_id for r in rounds] == [first.message_id, second.message_id, third.message_id]
    assert all(r.reason == pb.ROUND_END_REASON_TURN_LIMIT for r in rounds)
    queued = [e.message_accepted for e in events if e.HasField("message_accepted")]
    assert [q.queue_position for q in queued] == [1, 2]
    stored = await world.messages(conversation.id)
    user, agent_role = conversation_pb.MESSAGE_ROLE_USER, conversation_pb.MESSAGE_ROLE_AGENT
    assert [m.role for m in stored] == [user, user, user, agent_role, agent_role, agent_role]


async def test_interrupt_stops_the_turn_in_flight_and_answers_the_new_message(world: World) -> None:
    agent = await world.agent("Ada")
    conversation = await world.conversation(
        [agent], double_texting_policy=conversation_pb.DOUBLE_TEXTING_POLICY_INTERRUPT
    )
    world.book("tokens=200,pace=0.05", times=1)
    first = await world.post(conversation.id, "Tell me everything")
    await first_delta(world, conversation.id, first.event_id)
    second = await world.post(conversation.id, "Actually, stop: what time is it?")
    events = await world.round_events(conversation.id, first.event_id, second.message_id)
    rounds = [e.round_completed for e in events if e.HasField("round_completed")]
    assert [(r.trigger_message_id, r.reason) for r in rounds] == [
        (first.message_id, pb.ROUND_END_REASON_INTERRUPTED),
        (second.message_id, pb.ROUND_END_REASON_TURN_LIMIT),
    ]
    completed = [e.turn_completed for e in events if e.HasField("turn_completed")]
    assert completed[0].outcome == pb.TURN_OUTCOME_INTERRUPTED
    assert len(completed[0].text.split()) < 200
    # What was streamed before the interruption is what was stored.
    stored = {m.turn_id: m.text for m in await world.messages(conversation.id) if m.turn_id}
    assert stored[completed[0].turn_id] == completed[0].text


async def test_cancel_over_converse_ends_the_round(world: World) -> None:
    agents = [await world.agent("Ada"), await world.agent("Grace")]
    conversation = await world.conversation(agents)
    world.book("tokens=200,pace=0.05", times=1)
    requests: asyncio.Queue[pb.ConverseRequest | None] = asyncio.Queue()

    async def outgoing() -> AsyncIterator[pb.ConverseRequest]:
        while (request := await requests.get()) is not None:
            yield request

    stream = world.orchestrator.Converse(outgoing(), metadata=world.as_user)
    message_id = str(uuid.uuid4())
    await requests.put(
        pb.ConverseRequest(
            conversation_id=conversation.id, user_message=pb.UserMessage(message_id=message_id, text="Go on")
        )
    )
    seen: list[pb.ConversationEvent] = []
    async with asyncio.timeout(30):
        async for response in stream:
            seen.append(response.event)
            if response.event.HasField("token_delta") and response.event.token_delta.index == 2:
                await requests.put(pb.ConverseRequest(conversation_id=conversation.id, cancel=pb.Cancel()))
            if response.event.HasField("round_completed"):
                break
    stream.cancel()
    assert seen[0].message_accepted.message_id == message_id
    assert seen[-1].round_completed.reason == pb.ROUND_END_REASON_CANCELLED
    outcomes = [e.turn_completed.outcome for e in seen if e.HasField("turn_completed")]
    assert outcomes == [pb.TURN_OUTCOME_CANCELLED]  # the second agent never started


async def test_converse_logs_a_bad_action_s_refusal_and_stays_open(world: World) -> None:
    agent = await world.agent("Ada")
    conversation = await world.conversation([agent])
    other = str(uuid.uuid4())
    requests = [
        pb.ConverseRequest(conversation_id=conversation.id, join=pb.Join()),
        pb.ConverseRequest(
            conversation_id=other, user_message=pb.UserMessage(message_id=str(uuid.uuid4()), text="x")
        ),
        pb.ConverseRequest(
            conversation_id=conversation.id,
            user_message=pb.UserMessage(
                message_id=str(uuid.uuid4()), text="hi", mention_agent_ids=[str(uuid.uuid4())]
            ),
        ),
    ]

    async def outgoing() -> AsyncIterator[pb.ConverseRequest]:
        for request in requests:
            yield request
        await asyncio.sleep(30)

    stream = world.orchestrator.Converse(outgoing(), metadata=world.as_user)
    errors = []
    async with asyncio.timeout(20):
        async for response in stream:
            assert response.event.HasField("error")
            # In the log, like every event a client receives: a client that reconnects sees it.
            assert response.event.event_id
            errors.append(response.event.error)
            if len(errors) == 2:
                break
    stream.cancel()
    assert errors[0].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "conversation_id" in errors[0].detail.message
    assert "mention_agent_ids[0]" in errors[1].detail.message
    assert errors[1].detail.metadata["message_id"] == requests[2].user_message.message_id
    replay = world.orchestrator.StreamEvents(
        pb.StreamEventsRequest(conversation_id=conversation.id, after_event_id="0-0"), metadata=world.as_user
    )
    logged = []
    async with asyncio.timeout(10):
        async for replayed in replay:
            logged.append(replayed.event.error)
            if len(logged) == 2:
                break
    replay.cancel()
    assert logged == errors
    assert await world.messages(conversation.id) == []


async def test_another_tenants_conversation_is_not_found_on_every_rpc(world: World) -> None:
    agent = await world.agent("Ada")
    conversation = await world.conversation([agent])
    stranger = await world.tokens.tenant()
    as_stranger = bearer(await world.tokens.user_token(stranger, [ORCHESTRATOR_AUDIENCE]))
    calls = [
        world.orchestrator.PostMessage(
            pb.PostMessageRequest(
                conversation_id=conversation.id,
                message=pb.UserMessage(message_id=str(uuid.uuid4()), text="x"),
            ),
            metadata=as_stranger,
        ),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    stream = world.orchestrator.StreamEvents(
        pb.StreamEventsRequest(conversation_id=conversation.id), metadata=as_stranger
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stream.read()
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    completion = world.orchestrator.Complete(
        pb.CompleteRequest(
            turn_id=str(uuid.uuid4()),
            agent_id=agent.id,
            messages=[pb.CompletionMessage(role=pb.COMPLETION_ROLE_USER, text="hi")],
        ),
        metadata=as_stranger,
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await completion.read()
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND


async def test_complete_runs_one_metered_turn_outside_any_conversation(world: World) -> None:
    agent = await world.agent("Ada", system_prompt="You are Ada.")
    turn_id = str(uuid.uuid4())
    responses = [
        r
        async for r in world.orchestrator.Complete(
            pb.CompleteRequest(
                turn_id=turn_id,
                agent_id=agent.id,
                messages=[
                    pb.CompletionMessage(role=pb.COMPLETION_ROLE_SYSTEM, text="Be brief."),
                    pb.CompletionMessage(role=pb.COMPLETION_ROLE_USER, text="Hello!"),
                ],
                max_tokens=5,
            ),
            metadata=world.as_user,
            timeout=20,
        )
    ]
    deltas = [r.delta for r in responses if r.HasField("delta")]
    done = responses[-1].done
    assert "".join(d.text for d in deltas) == done.text
    assert done.outcome == pb.TURN_OUTCOME_TRUNCATED
    assert done.usage.output_tokens == 5
    assert "You are Ada.\n\nBe brief." in world.provider_server.state.prompts[-1]
