"""One driver per conversation across processes: two orchestrators raced never run two rounds at
once, and when the one driving is killed mid-round the other takes over within the lease time and
the client gets an error event, not a hang."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import pytest
from grpc_health.v1 import health_pb2
from macp.conversation.v1 import conversation_service_pb2 as conversation_pb
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb
from macp.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc

from services.runtime.usage_ids import agent_turn_event_id, orchestration_event_id
from services.stack.config import free_port
from tests.runtime.serving import channel, health_status
from tests.world import World

pytestmark = pytest.mark.integration


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


async def test_killing_the_driver_mid_round_hands_over_within_the_lease_time(world: World) -> None:
    agent = await world.agent("Ada")
    conversation = await world.conversation(
        [agent], double_texting_policy=conversation_pb.DOUBLE_TEXTING_POLICY_ENQUEUE
    )
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
    answers = [
        m for m in await world.messages(conversation.id) if m.role == conversation_pb.MESSAGE_ROLE_AGENT
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
    assert sorted(row["event_id"] for row in rows) == sorted([turn_usage, round_usage])
    assert await world.open_holds() == []

    # The conversation carries on: the next message is answered by the surviving orchestrator.
    again = await world.post(conversation.id, "are you still there?")
    events = await world.round_events(conversation.id, again.event_id, again.message_id)
    assert events[-1].round_completed.reason == pb.ROUND_END_REASON_TURN_LIMIT
