"""The CHOREOGRAPHY policy over the real mesh: every agent that does not decline answers the user's
message at the same time, each in a turn of its own; the round ends when the last turn does."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Callable, Sequence

import grpc
import pytest
from macp.common.v1 import agent_settings_pb2, usage_pb2
from macp.conversation.v1 import conversation_service_pb2 as conversation_pb
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb

from tests.orchestrator.test_rounds import turns_of
from tests.world import World

pytestmark = pytest.mark.integration

CHOREOGRAPHY = conversation_pb.TURN_POLICY_CHOREOGRAPHY
# Each answer streams for about two seconds, one word every 50 ms: three of them at once overlap
# for most of that time, whatever the machine's speed.
PACED = "tokens=40,pace=0.05"
# Long enough to act while every turn is still streaming.
LONG = "tokens=200,pace=0.05"


@pytest.fixture
async def world(module_world: World) -> World:
    """The module's one mesh, as a tenant of this test's own: no test here needs a mesh to itself."""
    return await module_world.other_tenant()


@pytest.fixture(autouse=True)
def clear_bookings(module_world: World) -> None:
    """No booked behavior outlives its test (the bookings are the shared provider server's)."""
    module_world.provider_server.state.book.clear()


async def agents_named(
    world: World,
    *names: str,
    model: str = "echo-1",
    bidding: agent_settings_pb2.BiddingHints | None = None,
) -> list[conversation_pb.Agent]:
    # A prompt of its own each, so that each answer is a text of its own (answers.py).
    return [
        await world.agent(name, model=model, system_prompt=f"You are {name}.", bidding=bidding)
        for name in names
    ]


def of_kind(events: Sequence[pb.ConversationEvent], kind: str) -> list[pb.ConversationEvent]:
    return [e for e in events if e.WhichOneof("payload") == kind]


def outcomes(events: Sequence[pb.ConversationEvent]) -> dict[str, pb.TurnOutcome.ValueType]:
    """Each agent's turn outcome."""
    return {e.turn_completed.agent_id: e.turn_completed.outcome for e in of_kind(events, "turn_completed")}


async def post(
    world: World, conversation_id: str, text: str, mentions: Sequence[str] = ()
) -> pb.PostMessageResponse:
    return await world.orchestrator.PostMessage(
        pb.PostMessageRequest(
            conversation_id=conversation_id,
            message=pb.UserMessage(message_id=str(uuid.uuid4()), text=text, mention_agent_ids=mentions),
        ),
        metadata=world.as_user,
        timeout=10,
    )


async def conversed(
    world: World,
    conversation_id: str,
    text: str,
    act: Callable[[list[pb.ConversationEvent]], pb.Cancel | None],
) -> list[pb.ConversationEvent]:
    """Post `text` over Converse and follow its round to its RoundCompleted; after each event
    `act` may answer a Cancel to send (once)."""
    requests: asyncio.Queue[pb.ConverseRequest | None] = asyncio.Queue()

    async def outgoing() -> AsyncIterator[pb.ConverseRequest]:
        while (request := await requests.get()) is not None:
            yield request

    stream = world.orchestrator.Converse(outgoing(), metadata=world.as_user)
    message = pb.UserMessage(message_id=str(uuid.uuid4()), text=text)
    await requests.put(pb.ConverseRequest(conversation_id=conversation_id, user_message=message))
    seen: list[pb.ConversationEvent] = []
    cancelled = False
    try:
        async with asyncio.timeout(30):
            async for response in stream:
                seen.append(response.event)
                if response.event.HasField("round_completed"):
                    break
                if not cancelled and (cancel := act(seen)) is not None:
                    cancelled = True
                    await requests.put(pb.ConverseRequest(conversation_id=conversation_id, cancel=cancel))
    finally:
        stream.cancel()
    assert seen[0].message_accepted.message_id == message.message_id
    return seen


def turn_of(events: Sequence[pb.ConversationEvent], agent_id: str) -> str:
    """The turn id of `agent_id`'s turn."""
    return next(
        e.turn_started.turn_id for e in of_kind(events, "turn_started") if e.turn_started.agent_id == agent_id
    )


def streaming(events: Sequence[pb.ConversationEvent]) -> set[str]:
    """The turns that have streamed some of their answer so far."""
    return {e.token_delta.turn_id for e in of_kind(events, "token_delta")}


async def test_every_agent_answers_at_once_and_the_events_reassemble_to_the_stored_answers(
    world: World,
) -> None:
    agents = await agents_named(world, "Ada", "Grace", "Edsger")
    conversation = await world.conversation(agents, CHOREOGRAPHY)
    world.book(PACED, times=3)
    accepted = await world.post(conversation.id, "What makes a program correct?")
    events = await world.round_events(conversation.id, accepted.event_id, accepted.message_id)

    kinds = [e.WhichOneof("payload") for e in events]
    started = [e.turn_started for e in of_kind(events, "turn_started")]
    assert {s.agent_id for s in started} == {a.id for a in agents}
    assert sorted(s.turn_index for s in started) == [1, 2, 3]
    assert len({s.turn_id for s in started}) == 3
    assert all(s.trigger_message_id == accepted.message_id for s in started)
    # At the same time: every turn started before any completed, and their deltas interleave (the
    # log does not hold one turn's deltas, then the next one's).
    last_started = max(i for i, kind in enumerate(kinds) if kind == "turn_started")
    assert last_started < kinds.index("turn_completed")
    delta_turns = [e.token_delta.turn_id for e in of_kind(events, "token_delta")]
    runs = [turn for turn, _ in itertools.groupby(delta_turns)]
    assert len(runs) > len(set(runs)), "each turn's deltas came in one run: the turns did not overlap"

    # One bidding for the round, every agent invited; the best bid took the round's first turn.
    (opened,) = [e.bidding_opened for e in of_kind(events, "bidding_opened")]
    (results,) = [e.bid_results for e in of_kind(events, "bid_results")]
    assert set(opened.agent_ids) == {a.id for a in agents}
    assert len(results.bids) == 3
    assert not any(b.declined for b in results.bids)
    first = next(s for s in started if s.turn_index == 1)
    assert (first.turn_id, first.agent_id) == (opened.turn_id, results.winner_agent_id)

    # Per turn: the deltas (gap-free indexes), the TurnCompleted text and the stored message agree.
    streamed = turns_of(events)
    completed = [e.turn_completed for e in of_kind(events, "turn_completed")]
    assert all(c.outcome == pb.TURN_OUTCOME_COMPLETED for c in completed)
    assert {c.turn_id: c.text for c in completed} == streamed
    assert set(streamed) == {s.turn_id for s in started}
    assert all(len(text.split()) == 40 for text in streamed.values())
    stored = [m for m in await world.messages(conversation.id) if m.turn_id]
    assert {m.turn_id: m.text for m in stored} == streamed
    assert {m.turn_id: m.id for m in stored} == {c.turn_id: c.message_id for c in completed}
    assert {m.turn_id: m.author_id for m in stored} == {s.turn_id: s.agent_id for s in started}

    # Each speaker answered the user's message alone, not another speaker's answer of this round.
    prompts = list(world.provider_server.state.prompts)[-3:]
    assert all("What makes a program correct?" in prompt for prompt in prompts)
    assert not any(text in prompt for text in streamed.values() for prompt in prompts)

    usage = [e.usage for e in of_kind(events, "usage")]
    turn_usage = [u for u in usage if u.type == usage_pb2.USAGE_EVENT_TYPE_AGENT_TURN]
    assert sorted(u.turn_id for u in turn_usage) == sorted(streamed)
    assert [u.type for u in usage].count(usage_pb2.USAGE_EVENT_TYPE_ORCHESTRATION) == 1
    assert not of_kind(events, "error")
    (ended,) = [e.round_completed for e in of_kind(events, "round_completed")]
    assert events[-1].round_completed == ended
    assert (ended.turn_count, ended.reason) == (3, pb.ROUND_END_REASON_COMPLETED)
    assert await world.open_holds() == []


async def test_an_agent_that_declines_does_not_speak_and_when_all_decline_nobody_does(world: World) -> None:
    shy = agent_settings_pb2.BiddingHints(keywords=["astronomy"], eagerness=0.0, min_score=0.9)
    cooks = await agents_named(world, "Chef", "Baker")
    (astronomer,) = await agents_named(world, "Astronomer", bidding=shy)
    conversation = await world.conversation([cooks[0], astronomer, cooks[1]], CHOREOGRAPHY)
    accepted = await world.post(conversation.id, "How long should bread rise?")
    events = await world.round_events(conversation.id, accepted.event_id, accepted.message_id)

    (results,) = [e.bid_results for e in of_kind(events, "bid_results")]
    assert {b.agent_id for b in results.bids if b.declined} == {astronomer.id}
    assert {s.turn_started.agent_id for s in of_kind(events, "turn_started")} == {a.id for a in cooks}
    assert outcomes(events) == {a.id: pb.TURN_OUTCOME_COMPLETED for a in cooks}
    ended = events[-1].round_completed
    assert (ended.turn_count, ended.reason) == (2, pb.ROUND_END_REASON_COMPLETED)

    alone = await world.conversation([astronomer], CHOREOGRAPHY)
    accepted = await world.post(alone.id, "How long should bread rise?")
    events = await world.round_events(alone.id, accepted.event_id, accepted.message_id)
    assert not of_kind(events, "turn_started")
    (results,) = [e.bid_results for e in of_kind(events, "bid_results")]
    assert results.winner_agent_id == ""
    ended = events[-1].round_completed
    assert (ended.turn_count, ended.reason) == (0, pb.ROUND_END_REASON_NO_BIDDER)
    assert [m.role for m in await world.messages(alone.id)] == [conversation_pb.MESSAGE_ROLE_USER]
    assert await world.open_holds() == []


async def test_the_turn_limit_keeps_the_best_bids_and_a_mention_goes_first(world: World) -> None:
    def keen(*keywords: str) -> agent_settings_pb2.BiddingHints:
        return agent_settings_pb2.BiddingHints(keywords=list(keywords), eagerness=0.5)

    dba, chef, poet = [
        await world.agent(name, system_prompt=f"You are {name}.", bidding=keen(word))
        for name, word in (("Dba", "database"), ("Chef", "soup"), ("Poet", "rhyme"))
    ]
    conversation = await world.conversation(
        [poet, chef, dba],
        CHOREOGRAPHY,
        limits=conversation_pb.ConversationLimits(max_agent_turns_per_user_message=2),
    )
    # The database and the soup are named: their agents outbid the poet, who is left out.
    accepted = await world.post(conversation.id, "Which database suits my soup shop?")
    events = await world.round_events(conversation.id, accepted.event_id, accepted.message_id)
    started = sorted((e.turn_started for e in of_kind(events, "turn_started")), key=lambda s: s.turn_index)
    # Tied scores go to the earlier participant: the chef before the database engineer.
    assert [s.agent_id for s in started] == [chef.id, dba.id]
    ended = events[-1].round_completed
    assert (ended.turn_count, ended.reason) == (2, pb.ROUND_END_REASON_TURN_LIMIT)

    # Mentioned, the poet takes the first turn whatever it bid.
    accepted = await post(world, conversation.id, "Which database suits my soup shop?", [poet.id])
    events = await world.round_events(conversation.id, accepted.event_id, accepted.message_id)
    started = sorted((e.turn_started for e in of_kind(events, "turn_started")), key=lambda s: s.turn_index)
    assert [s.agent_id for s in started] == [poet.id, chef.id]
    assert events[-1].round_completed.reason == pb.ROUND_END_REASON_TURN_LIMIT


async def test_a_cancel_naming_one_turn_stops_it_alone(world: World) -> None:
    steady = await agents_named(world, "Ada", "Grace")
    (chatty,) = await agents_named(world, "Edsger", model="echo-2")
    conversation = await world.conversation([steady[0], chatty, steady[1]], CHOREOGRAPHY)
    world.book("tokens=60,pace=0.05", times=2)  # three seconds each: they go on after the cancel
    world.book(LONG, times=1, model="echo-2")
    cancelled: list[str] = []

    def cancel_the_chatty_one(seen: list[pb.ConversationEvent]) -> pb.Cancel | None:
        if len(streaming(seen)) < 3:
            return None  # every turn streams before the cancel: it can only stop one of them
        turn_id = turn_of(seen, chatty.id)
        cancelled.append(turn_id)
        return pb.Cancel(turn_id=turn_id, reason="enough from this one")

    events = await conversed(world, conversation.id, "Tell me all about proofs.", cancel_the_chatty_one)

    assert outcomes(events) == {
        steady[0].id: pb.TURN_OUTCOME_COMPLETED,
        chatty.id: pb.TURN_OUTCOME_CANCELLED,
        steady[1].id: pb.TURN_OUTCOME_COMPLETED,
    }
    completed = [e.turn_completed for e in of_kind(events, "turn_completed")]
    # The cancelled turn ended first; the others went on to the end of their answers.
    assert completed[0].turn_id == cancelled[0]
    assert 0 < len(completed[0].text.split()) < 200
    assert all(len(c.text.split()) == 60 for c in completed[1:])
    # What the cancelled turn said before it stopped is stored and billed, like the others' answers.
    stored = {m.turn_id: m.text for m in await world.messages(conversation.id) if m.turn_id}
    assert stored == {c.turn_id: c.text for c in completed} == turns_of(events)
    billed = {e.usage.turn_id for e in of_kind(events, "usage") if e.usage.turn_id}
    assert billed == set(stored)
    ended = events[-1].round_completed
    assert (ended.turn_count, ended.reason) == (3, pb.ROUND_END_REASON_COMPLETED)
    assert await world.open_holds() == []


async def test_a_cancel_of_the_round_stops_every_turn(world: World) -> None:
    agents = await agents_named(world, "Ada", "Grace", "Edsger")
    conversation = await world.conversation(agents, CHOREOGRAPHY)
    world.book(LONG, times=3)

    def cancel_when_all_stream(seen: list[pb.ConversationEvent]) -> pb.Cancel | None:
        return pb.Cancel(reason="stop, all of you") if len(streaming(seen)) == 3 else None

    events = await conversed(world, conversation.id, "Tell me all about proofs.", cancel_when_all_stream)

    assert outcomes(events) == {a.id: pb.TURN_OUTCOME_CANCELLED for a in agents}
    assert all(len(e.turn_completed.text.split()) < 200 for e in of_kind(events, "turn_completed"))
    ended = events[-1].round_completed
    assert (ended.turn_count, ended.reason) == (3, pb.ROUND_END_REASON_CANCELLED)
    assert await world.open_holds() == []


async def test_a_failing_provider_fails_its_own_turn_only(world: World) -> None:
    steady = await agents_named(world, "Ada", "Grace")
    (failing,) = await agents_named(world, "Edsger", model="echo-2")
    conversation = await world.conversation([steady[0], failing, steady[1]], CHOREOGRAPHY)
    world.book(PACED, times=2)
    # Refused outright (no retry, no fallback to another model): the agent proxy's call fails.
    world.book("status=400", times=1, model="echo-2")
    accepted = await world.post(conversation.id, "What makes a program correct?")
    events = await world.round_events(conversation.id, accepted.event_id, accepted.message_id)

    assert outcomes(events) == {
        steady[0].id: pb.TURN_OUTCOME_COMPLETED,
        failing.id: pb.TURN_OUTCOME_FAILED,
        steady[1].id: pb.TURN_OUTCOME_COMPLETED,
    }
    (error,) = [e.error for e in of_kind(events, "error")]
    assert (error.turn_id, error.detail.reason) == (turn_of(events, failing.id), "GENERATE_FAILED")
    stored = await world.messages(conversation.id)
    assert {m.author_id for m in stored if m.turn_id} == {a.id for a in steady}
    ended = events[-1].round_completed
    assert (ended.turn_count, ended.reason) == (3, pb.ROUND_END_REASON_COMPLETED)
    assert await world.open_holds() == []


async def test_turns_refused_for_quota_are_refused_each_like_any_other(world: World) -> None:
    broke = await world.tenant_without_turns()
    agents = await agents_named(broke, "Ada", "Grace")
    conversation = await broke.conversation(agents, CHOREOGRAPHY)
    accepted = await broke.post(conversation.id, "What makes a program correct?")
    events = await broke.round_events(conversation.id, accepted.event_id, accepted.message_id)

    turns = {e.turn_started.turn_id for e in of_kind(events, "turn_started")}
    errors = [e.error for e in of_kind(events, "error")]
    assert len(turns) == 2
    assert {e.turn_id for e in errors} == turns
    assert all(e.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0] for e in errors)
    assert outcomes(events) == {a.id: pb.TURN_OUTCOME_FAILED for a in agents}
    assert not of_kind(events, "token_delta")
    assert [m.role for m in await broke.messages(conversation.id)] == [conversation_pb.MESSAGE_ROLE_USER]
    ended = events[-1].round_completed
    assert (ended.turn_count, ended.reason) == (2, pb.ROUND_END_REASON_FAILED)
    assert await broke.open_holds() == []
