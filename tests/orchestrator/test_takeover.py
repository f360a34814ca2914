"""One driver per conversation across processes: two orchestrators raced never run two rounds at
once, and when the one driving is killed mid-round the other takes over within the lease time and
the client gets an error event, not a hang."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import grpc
import pytest
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2
from macp.common.v1 import principal_pb2
from macp.conversation.v1 import conversation_service_pb2 as conversation_pb
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb
from macp.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc

from services.orchestrator.event_log import EventLog
from services.orchestrator.markers import RoundMarkers
from services.orchestrator.round_jobs import RoundJobCodec
from services.orchestrator.rounds import RoundJob
from services.orchestrator.settings import SEALING_KEY
from services.runtime.principal import Caller
from services.runtime.sealing import Sealer, sealing_key
from services.runtime.settings import Env
from services.runtime.usage_ids import agent_turn_event_id, orchestration_event_id
from services.stack.config import free_port
from tests.runtime.serving import channel, health_status
from tests.tokens import bearer
from tests.world import World

pytestmark = pytest.mark.integration

SLOW_CLEAR_SECONDS = 1.0


@asynccontextmanager
async def orchestrator_process(world: World) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """A second orchestrator as its own OS process (`python -m services.orchestrator`), beside the
    world's; it reaches the other services through the same Envoy and shares Redis."""
    port = free_port()
    environ = {**os.environ, **world.environ, "MACP_ORCHESTRATOR_PORT": str(port)}
    environ["MACP_ORCHESTRATOR_METRICS_PORT"] = str(free_port())
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.orchestrator", env=environ, stdout=asyncio.subprocess.DEVNULL
    )
    try:
        async with channel(port) as opened:
            for _ in range(200):
                with contextlib.suppress(grpc.aio.AioRpcError):
                    if await health_status(opened) == health_pb2.HealthCheckResponse.SERVING:
                        break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the second orchestrator never became SERVING")
        yield process, port
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


def post_request(conversation_id: str, text: str) -> pb.PostMessageRequest:
    return pb.PostMessageRequest(
        conversation_id=conversation_id, message=pb.UserMessage(message_id=str(uuid.uuid4()), text=text)
    )


async def test_two_orchestrators_raced_never_run_two_rounds_at_once(world: World) -> None:
    agents = [await world.agent("Ada"), await world.agent("Grace")]
    conversation = await world.conversation(
        agents, double_texting_policy=conversation_pb.DOUBLE_TEXTING_POLICY_ENQUEUE
    )
    async with (
        orchestrator_process(world) as (_process, port),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as direct,
    ):
        stubs = [world.orchestrator, pb_grpc.OrchestratorServiceStub(direct)]
        posts = [
            stubs[i % 2].PostMessage(post_request(conversation.id, f"question {i}"), metadata=world.as_user)
            for i in range(10)
        ]
        accepted = await asyncio.gather(*posts)
        first = min(accepted, key=lambda a: tuple(int(x) for x in a.event_id.split("-")))
        events = await world.round_events(conversation.id, "0-0", first.message_id, seconds=60)
        # Follow on until all ten rounds completed.
        stream = world.orchestrator.StreamEvents(
            pb.StreamEventsRequest(conversation_id=conversation.id, after_event_id=events[-1].event_id),
            metadata=world.as_user,
        )
        done = sum(1 for e in events if e.HasField("round_completed"))
        async with asyncio.timeout(90):
            async for response in stream:
                events.append(response.event)
                done += response.event.HasField("round_completed")
                if done == 10:
                    break
        stream.cancel()

    running: str | None = None
    rounds: list[str] = []
    for event in events:
        if event.HasField("turn_started"):
            trigger = event.turn_started.trigger_message_id
            assert running in (None, trigger), "a turn of another round started while one was running"
            if running is None:
                running = trigger
                rounds.append(trigger)
        elif event.HasField("round_completed"):
            assert event.round_completed.trigger_message_id == running
            running = None
    assert sorted(rounds) == sorted(a.message_id for a in accepted)
    assert all(
        e.round_completed.reason == pb.ROUND_END_REASON_TURN_LIMIT
        for e in events
        if e.HasField("round_completed")
    )


def slow_to_clear(monkeypatch: pytest.MonkeyPatch, conversation_id: str) -> None:
    """The world's orchestrator (in this process) waits before clearing the marker of a round of
    `conversation_id` it closed, as a loaded one might: its RoundCompleted is out, the marker kept."""
    clear = RoundMarkers.clear

    async def slowly(self: RoundMarkers, closed: str) -> None:
        if closed == conversation_id:
            await asyncio.sleep(SLOW_CLEAR_SECONDS)
        await clear(self, closed)

    monkeypatch.setattr(RoundMarkers, "clear", slowly)


async def test_killing_the_driver_mid_round_hands_over_within_the_lease_time(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = await world.agent("Ada")
    # REJECT: the next message, sent the moment the takeover's RoundCompleted arrives, must find
    # the round ending, not in flight.
    conversation = await world.conversation(
        [agent], double_texting_policy=conversation_pb.DOUBLE_TEXTING_POLICY_REJECT
    )
    slow_to_clear(monkeypatch, conversation.id)
    world.book("tokens=400,pace=0.05", times=1)
    lease_seconds = int(world.environ["MACP_ORCHESTRATOR_LEASE_MS"]) / 1000
    async with (
        orchestrator_process(world) as (process, port),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as direct,
    ):
        doomed = pb_grpc.OrchestratorServiceStub(direct)
        first = await doomed.PostMessage(
            post_request(conversation.id, "a long answer, please"), metadata=world.as_user
        )
        # The client follows through the world's orchestrator (another process than the driver).
        stream = world.orchestrator.StreamEvents(
            pb.StreamEventsRequest(conversation_id=conversation.id, after_event_id=first.event_id),
            metadata=world.as_user,
        )
        seen: list[pb.ConversationEvent] = []
        killed_at = 0.0
        async with asyncio.timeout(lease_seconds * 6 + 10):
            async for response in stream:
                seen.append(response.event)
                if response.event.HasField("token_delta") and not killed_at:
                    process.send_signal(signal.SIGKILL)
                    killed_at = time.monotonic()
                if response.event.HasField("error"):
                    error_at = time.monotonic()
                if response.event.HasField("round_completed"):
                    break
        stream.cancel()
        again = await world.post(conversation.id, "are you still there?")
    # Answered by the surviving orchestrator (its holds settled before the books are checked).
    events = await world.round_events(conversation.id, again.event_id, again.message_id)
    error = next(e.error for e in seen if e.HasField("error"))
    assert error.detail.reason == "DRIVER_LOST"
    assert error.code == grpc.StatusCode.UNAVAILABLE.value[0]
    started = next(e.turn_started for e in seen if e.HasField("turn_started"))
    assert error.turn_id == started.turn_id
    failed = [e.turn_completed for e in seen if e.HasField("turn_completed")]
    assert [(f.turn_id, f.outcome) for f in failed] == [(started.turn_id, pb.TURN_OUTCOME_FAILED)]
    assert seen[-1].round_completed.reason == pb.ROUND_END_REASON_FAILED
    # Within the lease time, plus one sweep interval (half a lease) and scheduling slack.
    assert error_at - killed_at < lease_seconds * 1.5 + 1.0

    # The books: what the log holds of the cut answer is stored and billed as the turn, the round
    # is billed once, no hold is left open, and nobody is told to send the message again.
    said = "".join(e.token_delta.text for e in seen if e.HasField("token_delta"))
    assert said
    assert failed[0].text == said
    assert failed[0].message_id
    next_turns = {e.turn_started.turn_id for e in events if e.HasField("turn_started")}
    answers = [
        m
        for m in await world.messages(conversation.id)
        if m.role == conversation_pb.MESSAGE_ROLE_AGENT and m.turn_id not in next_turns
    ]
    assert [(m.id, m.text, m.turn_id) for m in answers] == [(failed[0].message_id, said, started.turn_id)]
    assert "stored" in error.detail.message
    assert "sent again" not in error.detail.message
    billed = {e.usage.event_id for e in seen if e.HasField("usage")}
    turn_usage, round_usage = (
        agent_turn_event_id(started.turn_id),
        orchestration_event_id(conversation.id, first.message_id),
    )
    assert billed == {turn_usage, round_usage}
    async with world.database() as db:
        rows = await db.fetch(
            "SELECT event_id::text, event_type FROM metering_usage_events WHERE conversation_id = $1",
            conversation.id,
        )
    next_usage = {e.usage.event_id for e in events if e.HasField("usage")}
    first_rows = [row["event_id"] for row in rows if row["event_id"] not in next_usage]
    assert sorted(first_rows) == sorted([turn_usage, round_usage])
    assert await world.open_holds() == []

    # The conversation carried on.
    assert events[-1].round_completed.reason == pb.ROUND_END_REASON_TURN_LIMIT


def unverified_claims(token: str) -> dict[str, Any]:
    """A JWT's claims, unchecked (the test's own token: only to learn its user)."""
    payload = token.split(".")[1]
    return cast(dict[str, Any], json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


async def test_a_round_whose_driver_died_before_its_first_turn_is_run_by_the_takeover(world: World) -> None:
    """What a driver leaves when it dies just after accepting a message (the message stored, its
    MessageAccepted and `accepted` key written, the round's marker written with the lease, the
    lease lapsed): the sweep runs the round rather than failing it."""
    agent = await world.agent("Ada")
    conversation = await world.conversation([agent])
    message_id = str(uuid.uuid4())
    user_id = unverified_claims(world.conversation_token)["user_id"]
    stored = await world.conversations.AppendMessage(
        conversation_pb.AppendMessageRequest(
            message=conversation_pb.Message(
                id=message_id,
                conversation_id=conversation.id,
                role=conversation_pb.MESSAGE_ROLE_USER,
                author_id=user_id,
                text="are you there?",
            )
        ),
        metadata=bearer(world.conversation_token),
        timeout=10,
    )
    redis = aioredis.from_url(world.environ["MACP_REDIS_URL"])
    prefix = world.environ["MACP_REDIS_KEY_PREFIX"]
    try:
        markers = RoundMarkers(
            redis, prefix, RoundJobCodec(Sealer(sealing_key(Env(world.environ), SEALING_KEY)))
        )
        principal = principal_pb2.Principal(tenant_id=world.tenant.tenant_id, user_id=user_id)
        caller = Caller(world.orchestrator_token, principal)
        # The marker as the lease writes it: before the message was stored, so without its sequence.
        note = markers.note(RoundJob(caller, conversation.id, message_id, "are you there?", 0))
        await redis.hset(note.key, mapping={"job": note.job, "turn_id": "", "ending": ""})
        accepted, _value = await EventLog(redis, prefix).append_once(
            conversation.id,
            pb.ConversationEvent(
                message_accepted=pb.MessageAccepted(message_id=message_id, sequence=stored.message.sequence)
            ),
            None,
            (markers.accepted(conversation.id, message_id), str(stored.message.sequence), 60),
        )
        assert accepted is not None
        await redis.zadd(note.watched, {conversation.id: time.time()})
        events = await world.round_events(conversation.id, accepted.event_id, message_id)
    finally:
        await redis.aclose()
    completed = [e.turn_completed for e in events if e.HasField("turn_completed")]
    assert [c.outcome for c in completed] == [pb.TURN_OUTCOME_COMPLETED]
    assert not [e for e in events if e.HasField("error")]
    assert events[-1].round_completed.reason == pb.ROUND_END_REASON_TURN_LIMIT
    answers = [
        m for m in await world.messages(conversation.id) if m.role == conversation_pb.MESSAGE_ROLE_AGENT
    ]
    assert [m.id for m in answers] == [completed[0].message_id]
    assert await world.open_holds() == []
