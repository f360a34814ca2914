"""The product as a user sees it: a real WebSocket client through Envoy's front listener and the
edge, three agents under each turn policy, the streamed deltas reassembling exactly to the stored
messages, the usage in metering, and a forced disconnect and resume through the Python client
(clients/python) that loses and repeats nothing."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import pytest
import websockets
from google.protobuf.timestamp_pb2 import Timestamp
from macp.common.v1 import agent_settings_pb2
from macp.conversation.v1 import conversation_service_pb2 as conversation_pb
from macp.metering.v1 import metering_service_pb2 as metering_pb
from macp.metering.v1 import metering_service_pb2_grpc as metering_grpc
from macp_client import AsyncMacpClient, Event

from services.runtime.auth.settings import service_audience
from tests.tokens import bearer
from tests.world import World

pytestmark = pytest.mark.integration


@pytest.fixture
async def world(module_world: World) -> World:
    """The module's one mesh, as a tenant of this test's own: no test here needs a mesh to itself."""
    return await module_world.other_tenant()


POLICIES = [
    conversation_pb.TURN_POLICY_ROUND_ROBIN,
    conversation_pb.TURN_POLICY_BID,
    conversation_pb.TURN_POLICY_COORDINATOR,
    conversation_pb.TURN_POLICY_PIPELINE,
]


def ws_url(world: World) -> str:
    return world.front_url.replace("http://", "ws://") + f"/v1/ws?access_token={world.edge_token}"


async def frames_until_round_end(ws: Any, trigger: str, seconds: float = 60) -> list[dict[str, Any]]:
    """Event frames up to the RoundCompleted of message `trigger`."""
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(seconds):
        while True:
            frame = json.loads(await ws.recv())
            if frame["type"] != "event":
                continue
            events.append(frame)
            if (
                frame["kind"] == "round_completed"
                and frame["event"]["round_completed"]["trigger_message_id"] == trigger
            ):
                return events


def reassembled(events: list[dict[str, Any]]) -> dict[str, str]:
    texts: dict[str, list[str]] = {}
    for frame in events:
        if frame["kind"] == "token_delta":
            delta = frame["event"]["token_delta"]
            pieces = texts.setdefault(delta["turn_id"], [])
            assert delta["index"] == len(pieces)
            pieces.append(delta["text"])
    return {turn: "".join(pieces) for turn, pieces in texts.items()}


async def test_three_agents_under_each_policy_over_a_websocket(world: World) -> None:
    agents = [
        await world.agent("Chef", bidding=agent_settings_pb2.BiddingHints(keywords=["soup"])),
        await world.agent("Dba", bidding=agent_settings_pb2.BiddingHints(keywords=["index"])),
        await world.agent("Poet", bidding=agent_settings_pb2.BiddingHints(keywords=["rhyme"])),
    ]
    started = time.time()
    conversations = []
    async with websockets.connect(ws_url(world)) as ws:
        for policy in POLICIES:
            extra: dict[str, Any] = {}
            if policy == conversation_pb.TURN_POLICY_COORDINATOR:
                extra["coordinator_agent_id"] = agents[0].id
            conversation = await world.conversation(agents, policy, **extra)
            conversations.append(conversation)
            await ws.send(json.dumps({"action": "subscribe", "conversation_id": conversation.id}))
            message_id = str(uuid.uuid4())
            await ws.send(
                json.dumps(
                    {
                        "action": "message",
                        "conversation_id": conversation.id,
                        "message_id": message_id,
                        "text": "A soup that rhymes, with an index?",
                    }
                )
            )
            events = await frames_until_round_end(ws, message_id)
            turns = [f["event"]["turn_started"]["agent_id"] for f in events if f["kind"] == "turn_started"]
            assert turns, f"policy {policy}: nobody spoke"
            assert set(turns) <= {a.id for a in agents}
            streamed = reassembled(events)
            stored = {m.turn_id: m.text for m in await world.messages(conversation.id) if m.turn_id}
            assert stored == streamed, f"policy {policy}: the stored answers are not what was streamed"
            assert len(stored) == len(turns)

    # Every turn and every round is in metering.
    metering = metering_grpc.MeteringServiceStub(world.channel)
    token = await world.tokens.user_token(world.tenant, [service_audience("metering")])
    period = metering_pb.Period(
        start_time=Timestamp(seconds=int(started) - 3600), end_time=Timestamp(seconds=int(time.time()) + 3600)
    )
    usage = await metering.GetUsage(
        metering_pb.GetUsageRequest(
            tenant_id=world.tenant.tenant_id, period=period, group_by=metering_pb.GROUP_BY_EVENT_TYPE
        ),
        metadata=bearer(token),
        timeout=10,
    )
    stored_turns = 0
    for conversation in conversations:
        stored_turns += sum(1 for m in await world.messages(conversation.id) if m.turn_id)
    assert usage.totals.agent_turns == stored_turns
    assert usage.totals.orchestrations == len(POLICIES)
    assert usage.totals.output_tokens > 0


async def test_a_forced_disconnect_and_resume_loses_and_repeats_nothing(world: World) -> None:
    """The Python client's resume: the connection drops mid-stream (no close handshake) and stays
    away while the round goes on; the client connects again and subscribes after the last event
    it delivered. What it delivers, before and after, is every event of the round exactly once."""
    agents = [await world.agent("Ada"), await world.agent("Grace")]
    conversation = await world.conversation(agents)
    world.book("tokens=60,pace=0.02", times=2)
    message_id = str(uuid.uuid4())
    delivered: list[Event] = []
    at_drop = 0
    async with (
        AsyncMacpClient(world.front_url, token=world.edge_token, trust_env=False) as client,
        client.websocket() as socket,
    ):
        async with asyncio.timeout(60):
            async for event in socket.round(conversation.id, "Go", message_id=message_id):
                delivered.append(event)
                if not at_drop and sum(1 for e in delivered if e.kind == "token_delta") == 10:
                    at_drop = len(delivered)
                    await socket.interrupt(away_seconds=0.5)  # the round goes on meanwhile
        assert socket.reconnects == 1, "the connection was not dropped and made again"
        assert socket.repeats == 0, "the edge's replay repeated an event already delivered"

    assert 0 < at_drop < len(delivered), "the drop did not happen mid-round"
    assert delivered[-1].ends_round_of(message_id)
    ids = [event.event_id for event in delivered]
    assert len(ids) == len(set(ids)), "an event was delivered twice"
    assert [event.position for event in delivered] == sorted(event.position for event in delivered)
    frames = [{"kind": event.kind, "event": event.document} for event in delivered]
    stored = {m.turn_id: m.text for m in await world.messages(conversation.id) if m.turn_id}
    assert reassembled(frames) == stored, "an event was lost"
    assert len(stored) == 2
