"""Client-side tools through `/v1/chat/completions`, end to end, with the official OpenAI SDK
unchanged: Envoy, the edge, the orchestrator's Complete, the agent proxy and the local provider
server over each provider protocol (Anthropic's for `local`, OpenAI's for `compat`), and metering.

The client offers its own functions; the agent's model calls one (the local provider server calls
an offered tool the user's text names, arguments from `name=value`, services/provider_server); the
answer carries the calls with finish reason `tool_calls`, streamed as `delta.tool_calls` chunks by
index; the client runs the tool and sends the result as a `tool` message; the model then answers
quoting it. Each request is one agent turn, metered once, even a turn that ends in calls alone."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any, cast

import openai
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from macp.metering.v1 import metering_service_pb2 as metering_pb
from macp.metering.v1 import metering_service_pb2_grpc as metering_grpc
from openai.types.chat import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionFunctionToolParam,
    ChatCompletionMessageFunctionToolCall,
    ChatCompletionMessageParam,
)

from services.runtime.auth.settings import service_audience
from tests.tokens import bearer
from tests.world import World

pytestmark = pytest.mark.integration


@pytest.fixture
async def world(module_world: World) -> World:
    """The module's one mesh, as a tenant of this test's own: no test here needs a mesh to itself."""
    return await module_world.other_tenant()


WEATHER: ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city now",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}
CLOCK: ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {"name": "get_time", "description": "The time now"},
}
FORECAST = "Sunny, 21 C, light wind"
CALL: dict[str, Any] = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_time", "arguments": "{}"},
}
TIME_CALL: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": [CALL]}
TIME_RESULT: dict[str, Any] = {"role": "tool", "tool_call_id": "call_1", "content": "09:30"}


def result_messages(
    asked: list[ChatCompletionMessageParam], reply: dict[str, Any], result: str
) -> list[ChatCompletionMessageParam]:
    """The next request's messages: the exchange, the agent's reply as the SDK read it, and each
    call's result."""
    answered: list[ChatCompletionMessageParam] = [*asked, cast(ChatCompletionMessageParam, reply)]
    for call in reply["tool_calls"]:
        answered.append({"role": "tool", "tool_call_id": call["id"], "content": result})
    return answered


async def calls_and_answer(client: openai.AsyncOpenAI, agent_id: str) -> None:
    """Not streamed: the calls come back (and again, stored, for a retry with the same
    Idempotency-Key, which runs no second turn), and then the answer built on their results."""
    asked: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "Will it rain? Ask get_weather city=Oslo days=2"}
    ]
    key = {"Idempotency-Key": str(uuid.uuid4())}
    completion = await client.chat.completions.create(
        model=agent_id, messages=asked, tools=[WEATHER, CLOCK], extra_headers=key
    )
    retried = await client.chat.completions.create(
        model=agent_id, messages=asked, tools=[WEATHER, CLOCK], extra_headers=key
    )
    assert retried.model_dump(exclude={"created"}) == completion.model_dump(exclude={"created"})
    (choice,) = completion.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert isinstance(call, ChatCompletionMessageFunctionToolCall)
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Oslo", "days": 2}
    assert completion.usage is not None
    assert completion.usage.completion_tokens > 0

    reply = choice.message.model_dump(exclude_none=True)
    answer = await client.chat.completions.create(
        model=agent_id,
        messages=result_messages(asked, reply, FORECAST),
        tools=[WEATHER, CLOCK],
    )
    assert answer.choices[0].finish_reason == "stop"
    assert answer.choices[0].message.tool_calls is None
    assert f"get_weather returned: {FORECAST}" in (answer.choices[0].message.content or "")


async def streamed_calls_and_answer(client: openai.AsyncOpenAI, agent_id: str) -> None:
    """Streamed: the SDK's stream helper puts the calls together from the `delta.tool_calls` chunks;
    `tool_choice` names the tool the user's text does not, and the model calls it."""
    asked: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "What time is it where I am? place=home"}
    ]
    chunks: list[ChatCompletionChunk] = []
    async with client.chat.completions.stream(
        model=agent_id,
        messages=asked,
        tools=[WEATHER, CLOCK],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        stream_options={"include_usage": True},
    ) as stream:
        async for event in stream:
            if event.type == "chunk":
                chunks.append(event.chunk)
        completion: ChatCompletion = await stream.get_final_completion()
    (choice,) = completion.choices
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert isinstance(call, ChatCompletionMessageFunctionToolCall)
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_time", {})
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or ()]
    assert {d.index for d in deltas} == {0}
    assert deltas[0].id == call.id
    assert deltas[0].function is not None
    assert deltas[0].function.name == "get_time"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0

    reply = choice.message.model_dump(exclude_none=True, exclude={"parsed"})
    raw = await client.chat.completions.create(
        model=agent_id,
        messages=result_messages(asked, reply, "09:30"),
        tools=[WEATHER, CLOCK],
        stream=True,
    )
    answer = [chunk async for chunk in raw]
    text = "".join(c.choices[0].delta.content or "" for c in answer if c.choices)
    assert "get_time returned: 09:30" in text
    assert [c.choices[0].finish_reason for c in answer if c.choices][-1] == "stop"


async def agent_turns(world: World, since: float) -> int:
    """The tenant's AGENT_TURN events in metering (read from its books, after the sink)."""
    metering = metering_grpc.MeteringServiceStub(world.channel)
    token = await world.tokens.user_token(world.tenant, [service_audience("metering")])
    period = metering_pb.Period(
        start_time=Timestamp(seconds=int(since) - 60), end_time=Timestamp(seconds=int(time.time()) + 60)
    )
    usage = await metering.GetUsage(
        metering_pb.GetUsageRequest(
            tenant_id=world.tenant.tenant_id, period=period, group_by=metering_pb.GROUP_BY_EVENT_TYPE
        ),
        metadata=bearer(token),
        timeout=10,
    )
    return usage.totals.agent_turns


@pytest.mark.parametrize(("provider", "model"), [("local", "echo-1"), ("compat", "compat-1")])
async def test_the_openai_sdk_runs_its_own_tools_through_an_agent(
    world: World, provider: str, model: str
) -> None:
    started = time.time()
    agent = await world.agent("Helper", provider=provider, model=model)
    client = openai.AsyncOpenAI(base_url=f"{world.front_url}/v1", api_key=world.edge_token, max_retries=0)
    try:
        await calls_and_answer(client, agent.id)
        await streamed_calls_and_answer(client, agent.id)
    finally:
        await client.close()

    # Four turns (the retry ran none): each metered once, the two that ended in calls alone included.
    turns = 0
    for _ in range(100):  # the usage events reach the books through Kafka: up to 20 s
        turns = await agent_turns(world, started)
        if turns >= 4:
            break
        await asyncio.sleep(0.2)
    assert turns == 4
    assert await world.open_holds() == []


# Bad tools and broken pairings, each with the parameter its 400 names.
BAD_BODIES: list[tuple[dict[str, Any], str]] = [
    ({"tools": [{"type": "function", "function": {"name": "get weather"}}]}, "tools[0].function.name"),
    (
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]},
        "tools[0].function.parameters",
    ),
    ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
    ({"tools": [CLOCK, CLOCK]}, "tools[1].function.name"),
    ({"tools": [CLOCK] * 129}, "tools"),
    (
        {"tools": [CLOCK], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
        "tool_choice.function.name",
    ),
    ({"tools": [CLOCK], "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ({"messages": [{"role": "user", "content": "hi"}, TIME_RESULT]}, "messages[1].tool_call_id"),
    (
        {"messages": [{"role": "user", "content": "hi"}, TIME_CALL, {"role": "user", "content": "so?"}]},
        "messages[2]",
    ),
    ({"messages": [{"role": "user", "content": "hi"}, TIME_CALL]}, "messages"),
    (
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {**TIME_CALL, "tool_calls": [{**CALL, "function": {"name": "get_time", "arguments": "[1]"}}]},
            ]
        },
        "messages[1].tool_calls[0].function.arguments",
    ),
]


async def test_bad_tools_and_unpaired_calls_are_400_naming_the_field(world: World) -> None:
    agent = await world.agent("Helper")
    client = openai.AsyncOpenAI(base_url=f"{world.front_url}/v1", api_key=world.edge_token, max_retries=0)
    try:
        for extra, param in BAD_BODIES:
            body: dict[str, Any] = {
                "model": agent.id,
                "messages": [{"role": "user", "content": "hi"}],
                **extra,
            }
            with pytest.raises(openai.BadRequestError) as raised:
                await client.chat.completions.create(**body)
            assert raised.value.param == param, (param, raised.value.body)
            assert raised.value.type == "invalid_request_error"
            assert isinstance(raised.value.body, dict)
            assert raised.value.body["message"].startswith(f"{param}: ")
    finally:
        await client.close()
    assert await world.open_holds() == []  # refused before any quota was held
