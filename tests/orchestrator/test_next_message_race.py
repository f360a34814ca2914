"""A client that sends its next message the moment it reads RoundCompleted is accepted at once,
whatever the double-texting policy: the round is over for it, so the conversation is not "still
answering an earlier message" (REJECT), and the message is not queued behind a finished round
(ENQUEUE, INTERRUPT). Also when the finished round's driver is slow to let go."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import pytest
from macp.common.v1 import principal_pb2
from macp.conversation.v1 import conversation_service_pb2 as conversation_pb
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb

from services.orchestrator.lease import Lease
from services.orchestrator.markers import RoundMarkers
from services.orchestrator.rounds import RoundJob
from tests.world import World

pytestmark = pytest.mark.integration

SHORT = "tokens=1"  # the shortest answer: the rounds, not the answers, are under test
# Longer than the one second a poster used to wait for a driver letting go.
SLOW_LETTING_GO_SECONDS = 1.5


async def back_to_back(world: World, conversation_id: str, rounds: int) -> list[pb.ConversationEvent]:
    """Post `rounds` messages, each the moment the previous one's RoundCompleted arrives; every
    post must be accepted. The events of the conversation, up to the last RoundCompleted."""
    stream = world.orchestrator.StreamEvents(
        pb.StreamEventsRequest(conversation_id=conversation_id, after_event_id="0-0"), metadata=world.as_user
    )
    events: list[pb.ConversationEvent] = []
    try:
        for index in range(rounds):
            # Raises (FAILED_PRECONDITION under REJECT) if the conversation is called busy.
            accepted = await world.post(conversation_id, f"question {index}", str(uuid.uuid4()))
            assert not accepted.duplicate
            async with asyncio.timeout(10):
                while True:
                    response = await stream.read()
                    assert isinstance(response, pb.StreamEventsResponse), f"the stream ended at {index}"
                    events.append(response.event)
                    done = response.event.round_completed
                    if response.event.HasField("round_completed") and (
                        done.trigger_message_id == accepted.message_id
                    ):
                        break
    finally:
        stream.cancel()
    return events


def round_of(events: list[pb.ConversationEvent], message_id: str) -> list[pb.ConversationEvent]:
    """The events from `message_id`'s MessageAccepted to its RoundCompleted."""
    start = next(i for i, e in enumerate(events) if e.message_accepted.message_id == message_id)
    end = next(i for i, e in enumerate(events) if e.round_completed.trigger_message_id == message_id)
    return events[start : end + 1]


def check_rounds(events: list[pb.ConversationEvent], rounds: int) -> None:
    """Each message was accepted unqueued and answered in a round of its own, in order, once."""
    accepted = [e.message_accepted for e in events if e.HasField("message_accepted")]
    completed = [e.round_completed for e in events if e.HasField("round_completed")]
    assert len(accepted) == len(completed) == rounds
    assert [a.queue_position for a in accepted] == [0] * rounds
    assert [c.trigger_message_id for c in completed] == [a.message_id for a in accepted]
    failed = [c.trigger_message_id for c in completed if c.reason != pb.ROUND_END_REASON_TURN_LIMIT]
    assert not failed, f"{len(failed)} round(s) did not end at the turn limit: {round_of(events, failed[0])}"
    assert [e.error for e in events if e.HasField("error")] == []
    turns = [e.turn_completed for e in events if e.HasField("turn_completed")]
    assert len(turns) == rounds
    assert {t.outcome for t in turns} <= {pb.TURN_OUTCOME_COMPLETED, pb.TURN_OUTCOME_TRUNCATED}


def slow_to_let_go(monkeypatch: pytest.MonkeyPatch, conversation_id: str) -> None:
    """The world's orchestrator (in this process) waits before handing on the lease of a finished
    round of `conversation_id`, as a loaded one might: its RoundCompleted is out, its lease held."""
    hand_on: Callable[[RoundMarkers, Lease], Awaitable[RoundJob | None]] = RoundMarkers.hand_on

    async def slowly(self: RoundMarkers, lease: Lease) -> RoundJob | None:
        if lease.conversation_id == conversation_id:
            await asyncio.sleep(SLOW_LETTING_GO_SECONDS)
        return await hand_on(self, lease)

    monkeypatch.setattr(RoundMarkers, "hand_on", slowly)


async def test_the_next_message_is_accepted_the_moment_the_round_completes(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1,000 rounds back to back under REJECT, and 100 under each of ENQUEUE and INTERRUPT (which
    must not queue, nor interrupt, the next message behind a finished round); and a few under
    REJECT whose driver is slow to let go. Each conversation has a client of its own, all at once
    (one world: its start is most of a test's time)."""
    # The free plan refuses past 50 orchestrations a month.
    await world.set_plan(principal_pb2.TIER_PRO)
    agent = await world.agent("Ada")
    world.book(SHORT)
    runs = [
        (conversation_pb.DOUBLE_TEXTING_POLICY_REJECT, 1000),
        (conversation_pb.DOUBLE_TEXTING_POLICY_ENQUEUE, 100),
        (conversation_pb.DOUBLE_TEXTING_POLICY_INTERRUPT, 100),
        (conversation_pb.DOUBLE_TEXTING_POLICY_REJECT, 3),
    ]
    conversations = [await world.conversation([agent], double_texting_policy=policy) for policy, _ in runs]
    slow_to_let_go(monkeypatch, conversations[-1].id)
    logs = await asyncio.gather(
        *(
            back_to_back(world, conversation.id, rounds)
            for conversation, (_policy, rounds) in zip(conversations, runs, strict=True)
        )
    )
    for events, (_policy, rounds) in zip(logs, runs, strict=True):
        check_rounds(events, rounds)
