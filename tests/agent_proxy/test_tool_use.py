"""Tool use through the real agent proxy against the local provider server, over both SDKs (provider
`local` speaks Anthropic's protocol, `compat` OpenAI's): the tools reach the model, its calls stream
back whole, the calls and results sent back in the history reach it in each protocol's shape (the
provider server checks their pairing as the real APIs do), retries before the first output, usage,
and clear refusals of broken tools and histories. The turn building and the buffer are tested
without services first."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from macp.agent_proxy.v1 import agent_proxy_service_pb2 as pb
from macp.common.v1 import usage_pb2

from services.agent_proxy.coalescing import DeltaBuffer
from services.agent_proxy.provider import ToolCall, ToolResult, TurnMessage
from services.agent_proxy.turn import build_turn
from services.provider_server.server import RunningProviderServer
from tests.agent_proxy.conftest import Proxy, book, generate_request, refusal, texts
from tests.agent_proxy.usage_topic import read_usage

WEATHER: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city"],
}
ADD: dict[str, Any] = {
    "type": "object",
    "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
    "required": ["a", "b"],
}
ASK_BOTH = "Please run calculator__add a=2 b=3.5, then weather__forecast city=Oslo days=2."
ADD_ARGUMENTS = {"a": 2, "b": 3.5}
WEATHER_ARGUMENTS = {"city": "Oslo", "days": 2}
PROVIDERS = [("local", "echo-1"), ("compat", "compat-1")]


def struct(value: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(value)
    return message


def tool(name: str, schema: dict[str, Any], description: str = "") -> pb.ToolDefinition:
    return pb.ToolDefinition(name=name, description=description, input_schema=struct(schema))


TOOLS = [
    tool("weather__forecast", WEATHER, "The forecast for a city."),
    tool("calculator__add", ADD, "Adds."),
]


def with_tools(request: pb.GenerateRequest, *messages: pb.ChatMessage) -> pb.GenerateRequest:
    request.tools.extend(TOOLS)
    request.messages.extend(messages)
    return request


def calls_of(responses: list[pb.GenerateResponse]) -> list[pb.ToolCall]:
    return [r.tool_call for r in responses if r.HasField("tool_call")]


def arguments(call: pb.ToolCall) -> dict[str, Any]:
    return json_format.MessageToDict(call.arguments)


def test_the_turn_keeps_calls_and_results_paired_through_the_merge() -> None:
    request = generate_request("t", text=ASK_BOTH)
    call_add = pb.ToolCall(id="toolu_1", name="calculator__add", arguments=struct({"a": 2, "b": 3.5}))
    call_weather = pb.ToolCall(id="toolu_2", name="weather__forecast", arguments=struct({"city": "Oslo"}))
    with_tools(
        request,
        pb.ChatMessage(role=pb.CHAT_ROLE_ASSISTANT, text="Let me look.", tool_calls=[call_add, call_weather]),
        pb.ChatMessage(role=pb.CHAT_ROLE_TOOL, text="5.5", tool_result=pb.ToolResult(tool_call_id="toolu_1")),
        pb.ChatMessage(role=pb.CHAT_ROLE_USER, name="Bob", text="And tomorrow?"),
        pb.ChatMessage(
            role=pb.CHAT_ROLE_TOOL,
            text="no",
            tool_result=pb.ToolResult(tool_call_id="toolu_2", is_error=True),
        ),
    )
    turn = build_turn(request, 100)

    assert turn.messages == (
        TurnMessage("user", f"Grace: {ASK_BOTH}"),
        TurnMessage(
            "assistant",
            "Let me look.",
            tool_calls=(
                ToolCall("toolu_1", "calculator__add", {"a": 2, "b": 3.5}),  # 2, not Struct's 2.0
                ToolCall("toolu_2", "weather__forecast", {"city": "Oslo"}),
            ),
        ),
        TurnMessage(
            "user",
            "Bob: And tomorrow?",
            tool_results=(ToolResult("toolu_1", "5.5", False), ToolResult("toolu_2", "no", True)),
        ),
    )
    assert [t.name for t in turn.tools] == ["weather__forecast", "calculator__add"]
    assert turn.tools[0].input_schema == WEATHER

    # Without tools on offer the calls and results are written into the text.
    del request.tools[:]
    plain = build_turn(request, 100)
    assert plain.messages[1] == TurnMessage(
        "assistant",
        'Let me look.\n\n(called calculator__add with {"a": 2, "b": 3.5})\n\n'
        '(called weather__forecast with {"city": "Oslo"})',
    )
    assert plain.messages[2].text == (
        "(calculator__add returned: 5.5)\n\nBob: And tomorrow?\n\n(weather__forecast failed: no)"
    )


async def test_the_buffer_merges_text_only_up_to_a_tool_call() -> None:
    call = ToolCall("toolu_1", "calculator__add", {})
    events: DeltaBuffer[ToolCall] = DeltaBuffer()
    parts: list[str | ToolCall] = ["Let", " me", call, " see", " now"]
    for part in parts:
        events.put(part)
    events.close()
    assert [await events.take() for _ in range(4)] == ["Let me", call, " see now", None]


@pytest.mark.integration
@pytest.mark.parametrize(("provider", "model"), PROVIDERS)
async def test_the_model_calls_tools_then_answers_their_results(
    proxy: Proxy, provider_server: RunningProviderServer, provider: str, model: str
) -> None:
    tenant = proxy.tenant.tenant_id
    first = with_tools(generate_request(tenant, provider=provider, model=model, text=ASK_BOTH))
    responses = await proxy.generate(first)

    calls = calls_of(responses)
    assert [(c.name, arguments(c)) for c in calls] == [
        ("calculator__add", ADD_ARGUMENTS),
        ("weather__forecast", WEATHER_ARGUMENTS),
    ]
    assert all(c.id.startswith("toolu_" if provider == "local" else "call_") for c in calls)
    assert texts(responses) == ""
    completion = responses[-1].completion
    assert completion.finish_reason == pb.FINISH_REASON_TOOL_USE
    assert not completion.usage.estimated
    # The provider server counts four characters of the arguments' JSON as a token.
    written = [json.dumps(a, separators=(",", ":")) for a in (ADD_ARGUMENTS, WEATHER_ARGUMENTS)]
    assert completion.usage.output_tokens == sum(-(-len(w) // 4) for w in written)

    second = generate_request(tenant, provider=provider, model=model, text=ASK_BOTH)
    second = with_tools(
        second,
        pb.ChatMessage(role=pb.CHAT_ROLE_ASSISTANT, tool_calls=calls),
        pb.ChatMessage(
            role=pb.CHAT_ROLE_TOOL, text="5.5", tool_result=pb.ToolResult(tool_call_id=calls[0].id)
        ),
        pb.ChatMessage(
            role=pb.CHAT_ROLE_TOOL,
            text="No such city: Oslo",
            tool_result=pb.ToolResult(tool_call_id=calls[1].id, is_error=True),
        ),
    )
    answered = await proxy.generate(second)

    failed = "failed: " if provider == "local" else "returned: Error: "  # OpenAI has no error flag
    assert texts(answered) == f"calculator__add returned: 5.5\nweather__forecast {failed}No such city: Oslo"
    assert not calls_of(answered)
    assert answered[-1].completion.finish_reason == pb.FINISH_REASON_STOP
    # The calls went back as the model made them: integers stay integers.
    shown = provider_server.state.prompts[-1]
    assert "calculator__add" in shown
    assert "2.0" not in shown


@pytest.mark.integration
@pytest.mark.parametrize(
    ("behavior", "provider", "model"), [("status=529", *PROVIDERS[0]), ("cut=2", *PROVIDERS[1])]
)
async def test_a_failure_before_the_first_tool_call_falls_back(
    proxy: Proxy, provider_server: RunningProviderServer, behavior: str, provider: str, model: str
) -> None:
    # cut=2: the connection drops after two pieces of the first call's arguments, before it is whole.
    await book(provider_server, model, behavior, times=1)
    request = with_tools(
        generate_request(proxy.tenant.tenant_id, provider=provider, model=model, text=ASK_BOTH)
    )
    responses = await proxy.generate(request)

    assert [c.name for c in calls_of(responses)] == ["calculator__add", "weather__forecast"]
    assert responses[-1].completion.finish_reason == pb.FINISH_REASON_TOOL_USE
    # The same call went on to the next configured model (echo-2 after echo-1, echo-1 after compat-1).
    fallback = "echo-2" if model == "echo-1" else "echo-1"
    assert responses[-1].completion.usage.model == fallback
    assert provider_server.state.requests == {model: 1, fallback: 1}


@pytest.mark.integration
async def test_a_tool_call_outside_a_conversation_is_billed_once(proxy: Proxy) -> None:
    request = with_tools(generate_request(proxy.tenant.tenant_id, text=ASK_BOTH, in_conversation=False))
    responses = await proxy.generate(request)
    completion = responses[-1].completion
    assert completion.finish_reason == pb.FINISH_REASON_TOOL_USE

    [record] = await read_usage(
        proxy.environ["MACP_KAFKA_BOOTSTRAP"],
        proxy.environ["MACP_KAFKA_USAGE_TOPIC"],
        until=1,
        tenant_id=proxy.tenant.tenant_id,
    )
    assert record.event.type == usage_pb2.USAGE_EVENT_TYPE_AGENT_TURN
    assert record.event.turn_id == request.turn_id
    assert record.event.dimensions.output_tokens == completion.usage.output_tokens > 0


@pytest.mark.integration
async def test_history_with_tool_use_and_no_tools_on_offer_is_written_as_text(
    proxy: Proxy, provider_server: RunningProviderServer
) -> None:
    # Anthropic refuses tool_use blocks in a request without tools (and so does the provider server).
    call = pb.ToolCall(id="toolu_9", name="weather__forecast", arguments=struct({"city": "Oslo"}))
    request = generate_request(proxy.tenant.tenant_id, text="Will it rain?")
    request.messages.extend(
        [
            pb.ChatMessage(role=pb.CHAT_ROLE_ASSISTANT, tool_calls=[call]),
            pb.ChatMessage(
                role=pb.CHAT_ROLE_TOOL, text="Rain.", tool_result=pb.ToolResult(tool_call_id="toolu_9")
            ),
            pb.ChatMessage(role=pb.CHAT_ROLE_ASSISTANT, text="It will rain."),
            pb.ChatMessage(role=pb.CHAT_ROLE_USER, name="Grace", text="Thanks"),
        ]
    )
    responses = await proxy.generate(request)
    assert responses[-1].completion.finish_reason == pb.FINISH_REASON_STOP
    assert texts(responses)
    assert "(weather__forecast returned: Rain.)" in provider_server.state.prompts[-1]


@pytest.mark.integration
async def test_broken_tools_and_histories_are_refused_naming_the_field(proxy: Proxy) -> None:
    tenant = proxy.tenant.tenant_id
    call = pb.ToolCall(id="toolu_1", name="calculator__add", arguments=struct({}))
    assistant = pb.ChatMessage(role=pb.CHAT_ROLE_ASSISTANT, tool_calls=[call])
    stray = pb.ChatMessage(
        role=pb.CHAT_ROLE_TOOL, text="1", tool_result=pb.ToolResult(tool_call_id="toolu_0")
    )
    not_an_object = generate_request(tenant)
    not_an_object.tools.append(tool("calculator__add", {"type": "string"}))
    twice = generate_request(tenant)
    twice.tools.extend([TOOLS[0], TOOLS[0]])
    cases = [
        (not_an_object, "tools[0].input_schema: expected a JSON Schema of type 'object'"),
        (twice, "tools[1].name: 'weather__forecast' is offered twice"),
        (with_tools(generate_request(tenant), stray), "messages[1].tool_result.tool_call_id: 'toolu_0'"),
        (
            with_tools(generate_request(tenant), assistant),
            "messages[1].tool_calls[0]: call 'toolu_1' has no result (a CHAT_ROLE_TOOL message)",
        ),
    ]
    for request, words in cases:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await proxy.generate(request)
        assert refusal(refused.value) == grpc.StatusCode.INVALID_ARGUMENT
        assert words in (refused.value.details() or "")
