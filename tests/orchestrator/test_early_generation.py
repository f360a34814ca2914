"""A round's first speaker starts generating while the user's message is still being stored, and
says nothing before it is in; if it cannot be stored, the generation is cut, its holds released,
nothing billed or written, and the poster gets the error.

The store is slowed, or made to fail, in Postgres itself: a trigger on the messages table sleeps
before writing a message whose text asks for it, and raises for one that asks to fail."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from macp.common.v1 import usage_pb2
from macp.conversation.v1 import conversation_service_pb2 as conversation_pb
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb

from services.orchestrator.preparation import first_turn_id
from services.runtime.usage_ids import agent_turn_event_id, orchestration_event_id
from tests.world import World

pytestmark = pytest.mark.integration

SLOW = "slow store:"
FAILING = "failing store:"
STORE_SECONDS = 0.6
# Long enough that a generation which was not cut would still be streaming when the test looks.
LONG_ANSWER = "tokens=200,pace=0.05"

_TRIGGER = f"""
CREATE OR REPLACE FUNCTION test_slow_message_store() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.text LIKE '{SLOW}%' OR NEW.text LIKE '{FAILING}%' THEN
        PERFORM pg_sleep({STORE_SECONDS});
    END IF;
    IF NEW.text LIKE '{FAILING}%' THEN
        RAISE EXCEPTION 'this test refuses the message';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER test_slow_message_store BEFORE INSERT ON conversation_messages
    FOR EACH ROW EXECUTE FUNCTION test_slow_message_store();
"""


@pytest.fixture
async def world(module_world: World) -> AsyncIterator[World]:
    """The module's mesh as a tenant of the test's own, its message store slowed as above."""
    async with module_world.database() as db:
        await db.execute(_TRIGGER)
    try:
        yield await module_world.other_tenant()
    finally:
        async with module_world.database() as db:
            await db.execute(
                "DROP TRIGGER test_slow_message_store ON conversation_messages;"
                "DROP FUNCTION test_slow_message_store();"
            )


async def started_while(world: World, posting: asyncio.Task[pb.PostMessageResponse], streams: int) -> None:
    """Wait until the provider server opened a stream beyond `streams`; the post must be pending."""
    deadline = time.monotonic() + STORE_SECONDS * 5
    while world.provider_server.state.streams_started <= streams:
        assert time.monotonic() < deadline, "no generation started while the message was stored"
        await asyncio.sleep(0.01)
    assert not posting.done(), "the generation started only after the message was stored"


async def test_the_first_speaker_generates_while_the_message_is_stored(world: World) -> None:
    agent = await world.agent("Ada")
    conversation = await world.conversation([agent])
    streams = world.provider_server.state.streams_started
    posting = asyncio.create_task(world.post(conversation.id, f"{SLOW} what is a monad?"))
    await started_while(world, posting, streams)
    accepted = await posting
    events = await world.round_events(conversation.id, "0-0", accepted.message_id)

    # The log's order is as if nothing had started early: the message, then its answer.
    kinds = [event.WhichOneof("payload") for event in events]
    assert kinds[:2] == ["message_accepted", "turn_started"]
    assert kinds[-1] == "round_completed"
    completed = next(e.turn_completed for e in events if e.HasField("turn_completed"))
    assert completed.outcome == pb.TURN_OUTCOME_COMPLETED
    assert completed.text
    stored = await world.messages(conversation.id)
    assert [(m.role, m.sequence) for m in stored] == [
        (conversation_pb.MESSAGE_ROLE_USER, 1),
        (conversation_pb.MESSAGE_ROLE_AGENT, 2),
    ]
    assert stored[1].text == completed.text
    assert await world.open_holds() == []


async def test_a_message_that_cannot_be_stored_cuts_its_generation_and_bills_nothing(world: World) -> None:
    agent = await world.agent("Grace")
    conversation = await world.conversation([agent])
    world.book(LONG_ANSWER, times=1)
    state = world.provider_server.state
    streams, open_before = state.streams_started, state.open_streams
    refused = str(uuid.uuid4())
    posting = asyncio.create_task(world.post(conversation.id, f"{FAILING} hello", message_id=refused))
    await started_while(world, posting, streams)

    # The poster gets the store's error...
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await posting
    details = caught.value.details() or ""
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, details
    assert details.startswith("storing the message failed"), details
    # ...and the generation is cut long before its 10 s answer would have ended.
    deadline = time.monotonic() + 3
    while state.open_streams > open_before:
        assert time.monotonic() < deadline, "the generation went on after its message was refused"
        await asyncio.sleep(0.02)

    # The conversation takes the next message at once, whatever its double-texting policy (the
    # lease was handed on), and its log holds nothing of the refused one.
    accepted = await world.post(conversation.id, "hello again")
    events = await world.round_events(conversation.id, "0-0", accepted.message_id)
    assert events[0].message_accepted.message_id == accepted.message_id
    assert all(refused not in str(event) for event in events)
    stored = await world.messages(conversation.id)
    assert [m.role for m in stored] == [conversation_pb.MESSAGE_ROLE_USER, conversation_pb.MESSAGE_ROLE_AGENT]
    assert stored[0].id == accepted.message_id

    # Billed: the second round only; the refused one's holds were released, not committed.
    usage = [e.usage for e in events if e.HasField("usage")]
    assert sorted(u.type for u in usage) == [
        usage_pb2.USAGE_EVENT_TYPE_AGENT_TURN,
        usage_pb2.USAGE_EVENT_TYPE_ORCHESTRATION,
    ]
    async with world.database() as db:
        rows = await db.fetch(
            "SELECT event_id::text FROM metering_usage_events WHERE conversation_id = $1", conversation.id
        )
    assert sorted(row["event_id"] for row in rows) == sorted(u.event_id for u in usage)
    never_billed = {
        agent_turn_event_id(first_turn_id(conversation.id, refused)),
        orchestration_event_id(conversation.id, refused),
    }
    assert not never_billed & {row["event_id"] for row in rows}
    assert await world.open_holds() == []
