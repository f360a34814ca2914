"""Every event a client receives names its conversation, has an id and carries its time: a refused
double text (REJECT policy, a message sent while a round runs) over the WebSocket, on the SSE event
stream of another client and in a replay; and the MessageAccepted that opens a POSTed message's
SSE answer. Through Envoy's front listener, the edge and the real orchestrator."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx
import pytest
import websockets
from macp.conversation.v1 import conversation_service_pb2 as conversation_pb

from tests.world import World

pytestmark = pytest.mark.integration

SLOW = "tokens=40,pace=0.05"  # a two-second answer: long enough to send another message meanwhile


@pytest.fixture
async def world(module_world: World) -> World:
    """The module's one mesh, as a tenant of this test's own: no test here needs a mesh to itself."""
    return await module_world.other_tenant()


def ws_url(world: World) -> str:
    return world.front_url.replace("http://", "ws://") + f"/v1/ws?access_token={world.edge_token}"


def assert_identified(event: dict[str, Any], conversation_id: str) -> None:
    """The event document names the conversation, has an id and an RFC 3339 time."""
    assert event["conversation_id"] == conversation_id, event
    assert event["event_id"], event
    assert event["time"], event
    datetime.fromisoformat(event["time"].replace("Z", "+00:00"))


async def sse_events(response: httpx.Response) -> AsyncIterator[tuple[str, str, dict[str, Any]]]:
    """(id, event, data) of each SSE event as it arrives."""
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line == "" and "data" in fields:
            yield fields.get("id", ""), fields.get("event", ""), json.loads(fields["data"])
            fields = {}
        elif line and not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")


async def sse_event(response: httpx.Response, kind: str) -> tuple[str, str, dict[str, Any]]:
    """The next SSE event of `kind`."""
    async for event in sse_events(response):
        if event[1] == kind:
            return event
    raise AssertionError(f"the stream ended before an event {kind}")


async def ws_event(ws: Any, kind: str) -> dict[str, Any]:
    """The next event frame of `kind`."""
    while True:
        frame: dict[str, Any] = json.loads(await ws.recv())
        if frame["type"] == "event" and frame["kind"] == kind:
            return frame


async def test_a_refused_double_text_is_identified_over_websocket_sse_and_replay(world: World) -> None:
    ada = await world.agent("Ada")
    conversation = await world.conversation(
        [ada], double_texting_policy=conversation_pb.DOUBLE_TEXTING_POLICY_REJECT
    )
    world.book(SLOW, times=1)
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    headers = {"authorization": f"Bearer {world.edge_token}", "accept": "text/event-stream"}
    async with (
        httpx.AsyncClient(base_url=world.front_url, headers=headers, timeout=60) as client,
        client.stream("GET", f"/v1/conversations/{conversation.id}/events") as sse,
        websockets.connect(ws_url(world)) as ws,
    ):
        assert sse.status_code == 200, await sse.aread()
        async with asyncio.timeout(60):
            await ws.send(json.dumps({"action": "subscribe", "conversation_id": conversation.id}))
            message = {"action": "message", "conversation_id": conversation.id, "text": "A long story"}
            await ws.send(json.dumps({**message, "message_id": first}))
            accepted = await ws_event(ws, "message_accepted")
            await ws_event(ws, "token_delta")
            await ws.send(json.dumps({**message, "message_id": second, "text": "Still there?"}))
            refused = await ws_event(ws, "error")
            # The SSE client of the same conversation sees the same refusal, with the same id.
            sse_refused = await sse_event(sse, "error")
    assert refused["conversation_id"] == conversation.id
    assert refused["event_id"] == refused["event"]["event_id"]
    assert_identified(refused["event"], conversation.id)
    detail = refused["event"]["error"]["detail"]
    assert detail["metadata"] == {"action": "user_message", "message_id": second}
    assert "double_texting_policy is REJECT" in detail["message"]
    assert sse_refused == (refused["event_id"], "error", refused["event"])

    # A replay from before the refusal holds it unchanged.
    async with websockets.connect(ws_url(world)) as ws, asyncio.timeout(60):
        await ws.send(
            json.dumps(
                {
                    "action": "subscribe",
                    "conversation_id": conversation.id,
                    "last_event_id": accepted["event_id"],
                }
            )
        )
        replayed = await ws_event(ws, "error")
    assert replayed == refused


async def test_the_message_accepted_of_a_posted_message_stream_carries_its_time(world: World) -> None:
    ada = await world.agent("Ada")
    conversation = await world.conversation([ada])
    headers = {"authorization": f"Bearer {world.edge_token}", "accept": "text/event-stream"}
    async with (
        httpx.AsyncClient(base_url=world.front_url, headers=headers, timeout=60) as client,
        client.stream(
            "POST", f"/v1/conversations/{conversation.id}/messages", json={"text": "hello"}
        ) as response,
    ):
        assert response.status_code == 200, await response.aread()
        events = [event async for event in sse_events(response)]
    sse_id, kind, data = events[0]
    assert kind == "message_accepted"
    assert sse_id == data["event_id"]
    assert_identified(data, conversation.id)
    assert all(data["conversation_id"] == conversation.id and data["time"] for _, _, data in events)
    assert events[-1][1] == "round_completed"
