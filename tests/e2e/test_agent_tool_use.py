"""Agents call tools in their turns, end to end: a WebSocket client through Envoy and the edge sends
a message; the agent's model (over the Anthropic protocol, then over OpenAI's) asks for a tool; the
orchestrator runs it through the tool gateway as the agent; the client sees the tool events and the
answer built on the result; the conversation stores the call and its result; the call is audited;
and the upstream saw a token addressed to itself, naming the user and the agent, never the user's.

The local provider server calls an offered tool when the user's text names it, with arguments
written as `name=value` (services/provider_server), and answers with the results it was given."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import websockets
from google.protobuf.timestamp_pb2 import Timestamp
from macp.common.v1 import usage_pb2
from macp.conversation.v1 import conversation_service_pb2 as conversation_pb
from macp.metering.v1 import metering_service_pb2 as metering_pb
from macp.metering.v1 import metering_service_pb2_grpc as metering_grpc

from services.example_tools.audience import CLAIMS_PATH, keys_over_http
from services.example_tools.servers import forecast_for
from services.runtime.auth.settings import service_audience
from tests.audit.helpers import rows
from tests.e2e.test_websocket_rounds import frames_until_round_end, reassembled, ws_url
from tests.example_tools import Guarded, serving_examples, serving_guarded_weather
from tests.token.harness import unverified
from tests.tokens import bearer
from tests.world import World

pytestmark = pytest.mark.integration


@pytest.fixture
async def world(module_world: World) -> World:
    """The module's one mesh, as a tenant of this test's own: no test here needs a mesh to itself."""
    return await module_world.other_tenant()


@pytest.fixture
async def weather(world: World) -> AsyncIterator[Guarded]:
    # As `macp up` runs it: the keys read from the JWKS document the edge serves.
    keys = keys_over_http(f"{world.front_url}/.well-known/jwks.json")
    async with serving_guarded_weather(keys, world.tokens.environ["MACP_TOKEN_ISSUER"]) as guarded:
        yield guarded


async def register_weather(world: World, url: str) -> None:
    """The tenant's user registers the weather server over REST, with token exchange upstream."""
    async with httpx.AsyncClient(base_url=world.front_url, timeout=10) as client:
        response = await client.post(
            "/v1/tool-servers",
            json={"name": "weather", "url": url, "auth": "UPSTREAM_AUTH_TOKEN_EXCHANGE"},
            headers={"authorization": f"Bearer {world.edge_token}"},
        )
    assert response.status_code == 201, response.text


async def one_round(world: World, conversation_id: str, text: str) -> list[dict[str, Any]]:
    message_id = str(uuid.uuid4())
    async with websockets.connect(ws_url(world)) as ws:
        await ws.send(json.dumps({"action": "subscribe", "conversation_id": conversation_id}))
        await ws.send(
            json.dumps(
                {
                    "action": "message",
                    "conversation_id": conversation_id,
                    "message_id": message_id,
                    "text": text,
                }
            )
        )
        return await frames_until_round_end(ws, message_id)


async def usage_totals(world: World) -> metering_pb.UsageTotals:
    """The tenant's usage totals of the last hour (metering reads Kafka: wait for the tool call)."""
    metering = metering_grpc.MeteringServiceStub(world.channel)
    token = await world.tokens.user_token(world.tenant, [service_audience("metering")])
    now = int(time.time())
    period = metering_pb.Period(
        start_time=Timestamp(seconds=now - 3600), end_time=Timestamp(seconds=now + 3600)
    )
    request = metering_pb.GetUsageRequest(
        tenant_id=world.tenant.tenant_id, period=period, group_by=metering_pb.GROUP_BY_EVENT_TYPE
    )
    async with asyncio.timeout(20):
        while True:
            usage = await metering.GetUsage(request, metadata=bearer(token), timeout=10)
            if usage.totals.tool_calls and usage.totals.agent_turns:
                return usage.totals
            await asyncio.sleep(0.2)


def of_kind(frames: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [frame["event"][kind] for frame in frames if frame["kind"] == kind]


@pytest.mark.parametrize(("provider", "model"), [("local", "echo-1"), ("compat", "compat-1")])
async def test_an_agent_calls_a_tool_in_its_turn(
    world: World, weather: Guarded, provider: str, model: str
) -> None:
    await register_weather(world, weather.url)
    agent = await world.agent("Forecaster", provider=provider, model=model, allowed_tools=["weather__*"])
    conversation = await world.conversation([agent])

    frames = await one_round(world, conversation.id, "Will it rain? Ask weather__forecast city=Oslo")

    [started] = of_kind(frames, "tool_call_started")
    assert (started["agent_id"], started["name"]) == (agent.id, "weather__forecast")
    assert started["arguments"] == {"city": "Oslo"}
    [completed] = of_kind(frames, "tool_call_completed")
    assert completed["tool_call_id"] == started["tool_call_id"]
    assert (completed["result"], completed["is_error"]) == (forecast_for("Oslo"), False)
    assert not of_kind(frames, "error"), of_kind(frames, "error")
    [turn] = of_kind(frames, "turn_completed")
    assert turn["outcome"] == "TURN_OUTCOME_COMPLETED"
    assert forecast_for("Oslo") in turn["text"], "the model's answer is not built on the tool's result"
    assert reassembled(frames)[turn["turn_id"]] == turn["text"]

    # Stored: the call with its whole result, then the answer; the call's message is the event's.
    messages = [m for m in await world.messages(conversation.id) if m.turn_id == turn["turn_id"]]
    assert [m.role for m in messages] == [
        conversation_pb.MESSAGE_ROLE_TOOL,
        conversation_pb.MESSAGE_ROLE_AGENT,
    ]
    tool_message, answer = messages
    assert tool_message.id == completed["message_id"]
    assert (tool_message.author_id, tool_message.text) == (agent.id, forecast_for("Oslo"))
    assert tool_message.tool_call.name == "weather__forecast"
    assert tool_message.tool_call.tool_call_id == started["tool_call_id"]
    assert answer.text == turn["text"]

    # Audited as the user's call, with the agent acting.
    async with world.database() as db:
        [row] = [
            r for r in await rows(db, world.tenant.tenant_id, "tool.call") if r.detail["tool"] == "forecast"
        ]
    assert row.outcome == "success"
    assert row.detail["result"] == "ok"
    assert ("agent", agent.id) in row.actors

    # Metered: one tool call, beside the turn that made it.
    totals = await usage_totals(world)
    assert (totals.tool_calls, totals.agent_turns) == (1, 1)
    async with world.database() as db:
        [metered] = await db.fetch(
            "SELECT agent_id, conversation_id, turn_id FROM metering_usage_events"
            " WHERE tenant_id = $1 AND event_type = $2",
            world.tenant.tenant_id,
            usage_pb2.USAGE_EVENT_TYPE_TOOL_CALL,
        )
    assert tuple(metered) == (agent.id, conversation.id, turn["turn_id"])

    # The upstream saw a token of its own: its audience, the user, the agent and the gateway acting.
    _, user = unverified(world.edge_token)
    [claims] = weather.server.received[-1:]
    assert claims.aud == (weather.url,)
    assert (claims.sub, claims.tenant_id) == (user["sub"], world.tenant.tenant_id)
    assert claims.jti != user["jti"]
    assert agent.id in [actor.agent_id for actor in claims.actor_chain]
    assert claims.actor_chain[0].agent_id is None  # the gateway, on top
    # And the server shows what it accepted.
    async with httpx.AsyncClient(timeout=10) as client:
        shown = (await client.get(weather.url.removesuffix("/mcp") + CLAIMS_PATH)).json()
    assert shown[-1]["aud"] == weather.url
    assert shown[-1]["act"]["act"]["agent_id"] == agent.id


async def test_the_allow_list_and_the_tenant_hold_in_a_turn(world: World, weather: Guarded) -> None:
    await register_weather(world, weather.url)
    # Allowed only the calculator, the agent is never offered the weather server's tool.
    calculating = await world.agent("Calculating", allowed_tools=["calculator__add"])
    conversation = await world.conversation([calculating])
    frames = await one_round(world, conversation.id, "Ask weather__forecast city=Oslo")
    assert not of_kind(frames, "tool_call_started")
    [turn] = of_kind(frames, "turn_completed")
    assert turn["outcome"] == "TURN_OUTCOME_COMPLETED"

    # Another tenant's agent, allowed every tool of a server named weather, has no such server.
    other = await world.other_tenant()
    agent = await other.agent("Elsewhere", allowed_tools=["weather__*"])
    conversation = await other.conversation([agent])
    frames = await one_round(other, conversation.id, "Ask weather__forecast city=Oslo")
    assert not of_kind(frames, "tool_call_started")
    # The server was listed for the first tenant's catalogue only: never on the other's behalf.
    assert {claims.tenant_id for claims in weather.server.received} == {world.tenant.tenant_id}


@pytest.fixture
async def examples() -> AsyncIterator[tuple[str, str]]:
    async with serving_examples() as urls:
        yield urls


async def register(world: World, name: str, url: str) -> None:
    async with httpx.AsyncClient(base_url=world.front_url, timeout=10) as client:
        response = await client.post(
            "/v1/tool-servers",
            json={"name": name, "url": url},
            headers={"authorization": f"Bearer {world.edge_token}"},
        )
    assert response.status_code == 201, response.text


async def test_calls_past_the_conversations_limit_are_refused_and_the_model_goes_on(
    world: World, examples: tuple[str, str]
) -> None:
    _weather, calculator = examples
    await register(world, "calculator", calculator)
    agent = await world.agent("Counting", allowed_tools=["calculator__*"])
    conversation = await world.conversation(
        [agent], limits=conversation_pb.ConversationLimits(max_tool_calls_per_turn=1)
    )
    frames = await one_round(
        world, conversation.id, "Use calculator__add a=2 b=3 and calculator__multiply a=4 b=5"
    )

    started = {event["name"]: event for event in of_kind(frames, "tool_call_started")}
    assert set(started) == {"calculator__add", "calculator__multiply"}  # asked for concurrently
    completed = {event["name"]: event for event in of_kind(frames, "tool_call_completed")}
    assert (completed["calculator__add"]["result"], completed["calculator__add"]["is_error"]) == ("5", False)
    refused = completed["calculator__multiply"]
    assert refused["is_error"]
    assert refused["error"]["reason"] == "TOOL_CALL_LIMIT"
    [turn] = of_kind(frames, "turn_completed")
    assert turn["outcome"] == "TURN_OUTCOME_COMPLETED"
    assert "5" in turn["text"]


async def test_a_tool_server_that_is_down_costs_the_turn_its_tools_not_the_turn(world: World) -> None:
    async with serving_examples() as (weather, _calculator):
        await register(world, "weather", weather)
    # The server is gone now: its tools are unavailable, so not offered, and the agent still answers.
    agent = await world.agent("Forecaster", allowed_tools=["weather__forecast"])
    conversation = await world.conversation([agent])
    frames = await one_round(world, conversation.id, "Ask weather__forecast city=Oslo")

    assert not of_kind(frames, "tool_call_started"), "a server that is down has its tools unavailable"
    [turn] = of_kind(frames, "turn_completed")
    assert turn["outcome"] == "TURN_OUTCOME_COMPLETED"
