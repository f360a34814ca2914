"""Tool use through the official anthropic and openai SDKs against the local provider server: the
deterministic rule (which tools, which arguments, in which order), the documented JSON and stream
shapes, the whole loop (tool call, tool result, final text), the tool choice, and the checks both
providers make on tools and on the pairing of calls and results."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import openai
import pytest
from anthropic.types import MessageParam, ToolParam, ToolResultBlockParam
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam, ChatCompletionToolParam

from services.provider_server.answers import compose_answer, count_tokens
from services.provider_server.tool_use import arguments_for

WEATHER: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}, "metric": {"type": "boolean"}},
    "required": ["city", "days"],
}
ADD: dict[str, Any] = {
    "type": "object",
    "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
    "required": ["a", "b"],
}
TOOLS = [
    ("weather__forecast", "The forecast for a city.", WEATHER),
    ("calculator__add", "Adds two numbers.", ADD),
]
ANTHROPIC_TOOLS: list[ToolParam] = [
    {"name": name, "description": description, "input_schema": schema} for name, description, schema in TOOLS
]
OPENAI_TOOLS: list[ChatCompletionToolParam] = [
    {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": schema},
    }
    for name, description, schema in TOOLS
]
ASK_BOTH = "Please run calculator__add a=2 b=3.5, then weather__forecast city=Paris."
ADD_ARGUMENTS = {"a": 2, "b": 3.5}
WEATHER_ARGUMENTS = {"city": "Paris", "days": 0}  # days is required and not written: the integer default


def test_arguments_follow_the_schema_and_the_text() -> None:
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "days": {"type": "integer"},
            "ratio": {"type": ["number", "null"]},
            "metric": {"type": "boolean"},
            "unit": {"enum": ["celsius", "fahrenheit"]},
            "note": {"type": "string"},
            "tags": {"type": "array"},
        },
        "required": ["city", "days", "ratio", "metric", "unit", "tags"],
    }
    text = 'weather city="New York" days=3 ratio=0.5 metric=TRUE, note=hi?'
    assert arguments_for(schema, text) == {
        "city": "New York",
        "days": 3,
        "ratio": 0.5,
        "metric": True,
        "unit": "celsius",  # the first enum value
        "note": "hi",  # optional, written: kept (without the question mark)
        "tags": [],
    }
    # Not written at all: the required properties' empty values, no optional ones.
    assert arguments_for(schema, "nothing here") == {
        "city": "",
        "days": 0,
        "ratio": 0,
        "metric": False,
        "unit": "celsius",
        "tags": [],
    }
    # A value that is not of the schema's type is passed as written (the tool will refuse it).
    assert arguments_for(schema, "days=three")["days"] == "three"


async def test_anthropic_calls_the_named_tools_in_order(anthropic_client: anthropic.AsyncAnthropic) -> None:
    messages: list[MessageParam] = [{"role": "user", "content": ASK_BOTH}]
    message = await anthropic_client.messages.create(
        model="local-1", max_tokens=100, messages=messages, tools=ANTHROPIC_TOOLS
    )
    again = await anthropic_client.messages.create(
        model="local-1", max_tokens=100, messages=messages, tools=ANTHROPIC_TOOLS
    )

    assert message.stop_reason == "tool_use"
    assert [(b.type, getattr(b, "name", None)) for b in message.content] == [
        ("tool_use", "calculator__add"),
        ("tool_use", "weather__forecast"),
    ]
    add, weather = message.content
    assert add.type == weather.type == "tool_use"
    assert (add.input, weather.input) == (ADD_ARGUMENTS, WEATHER_ARGUMENTS)
    assert add.id.startswith("toolu_")
    assert add.id != weather.id
    assert [b.model_dump() for b in again.content] == [b.model_dump() for b in message.content]
    # The offered tools' names and descriptions count as prompt tokens.
    tool_words = count_tokens([f"{name} {description}" for name, description, _ in TOOLS])
    assert message.usage.input_tokens == len(ASK_BOTH.split()) + tool_words
    arguments = [json.dumps(b, separators=(",", ":")) for b in (ADD_ARGUMENTS, WEATHER_ARGUMENTS)]
    assert message.usage.output_tokens == sum(-(-len(a) // 4) for a in arguments)


async def test_anthropic_streams_tool_use_blocks(anthropic_client: anthropic.AsyncAnthropic) -> None:
    messages: list[MessageParam] = [{"role": "user", "content": ASK_BOTH}]
    plain = await anthropic_client.messages.create(
        model="local-1", max_tokens=100, messages=messages, tools=ANTHROPIC_TOOLS
    )
    raw = await anthropic_client.messages.create(
        model="local-1", max_tokens=100, messages=messages, tools=ANTHROPIC_TOOLS, stream=True
    )
    events = [event async for event in raw]
    async with anthropic_client.messages.stream(
        model="local-1", max_tokens=100, messages=messages, tools=ANTHROPIC_TOOLS
    ) as stream:
        final = await stream.get_final_message()

    starts = [e for e in events if e.type == "content_block_start"]
    assert [(s.index, s.content_block.type, s.content_block.model_dump().get("input")) for s in starts] == [
        (0, "tool_use", {}),
        (1, "tool_use", {}),
    ]
    pieces = [e for e in events if e.type == "content_block_delta" and e.delta.type == "input_json_delta"]
    assert json.loads("".join(p.delta.partial_json for p in pieces if p.index == 0)) == ADD_ARGUMENTS  # type: ignore[union-attr]
    assert [e.type for e in events if e.type == "content_block_stop"] == ["content_block_stop"] * 2
    [message_delta] = [e for e in events if e.type == "message_delta"]
    assert message_delta.delta.stop_reason == "tool_use"
    assert message_delta.usage.output_tokens == len(pieces) == plain.usage.output_tokens
    # The SDK's own accumulation of the stream is the non-streamed message.
    assert final.stop_reason == "tool_use"
    assert [b.model_dump() for b in final.content] == [b.model_dump() for b in plain.content]


async def test_anthropic_full_loop_ends_in_text_with_the_results(
    anthropic_client: anthropic.AsyncAnthropic,
) -> None:
    messages: list[MessageParam] = [{"role": "user", "content": ASK_BOTH}]
    first = await anthropic_client.messages.create(
        model="local-1", max_tokens=100, messages=messages, tools=ANTHROPIC_TOOLS
    )
    results = {
        "calculator__add": ("5.5", False),
        "weather__forecast": ("No such city: Paris\n(try again)", True),
    }
    answers: list[ToolResultBlockParam] = [
        {
            "type": "tool_result",
            "tool_use_id": block.id,
            "content": [{"type": "text", "text": results[block.name][0]}],
            "is_error": results[block.name][1],
        }
        for block in first.content
        if block.type == "tool_use"
    ]
    messages.append({"role": "assistant", "content": first.content})
    messages.append({"role": "user", "content": answers})
    async with anthropic_client.messages.stream(
        model="local-1", max_tokens=100, messages=messages, tools=ANTHROPIC_TOOLS
    ) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()

    assert text == "calculator__add returned: 5.5\nweather__forecast failed: No such city: Paris\n(try again)"
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == len(text.split())


async def test_anthropic_tool_choice(anthropic_client: anthropic.AsyncAnthropic) -> None:
    async def called(text: str, **choice: Any) -> list[str]:
        message = await anthropic_client.messages.create(
            model="local-1",
            max_tokens=100,
            messages=[{"role": "user", "content": text}],
            tools=ANTHROPIC_TOOLS,
            **choice,
        )
        return [b.name for b in message.content if b.type == "tool_use"]

    assert await called(ASK_BOTH, tool_choice={"type": "none"}) == []
    assert await called("What is the weather?", tool_choice={"type": "any"}) == ["weather__forecast"]
    assert await called(ASK_BOTH, tool_choice={"type": "tool", "name": "weather__forecast"}) == [
        "weather__forecast"
    ]
    assert await called(ASK_BOTH, tool_choice={"type": "auto", "disable_parallel_tool_use": True}) == [
        "calculator__add"
    ]
    # A name inside a longer word is no mention.
    assert await called("see calculator__addition") == []


async def test_no_tool_named_is_the_usual_text_answer(anthropic_client: anthropic.AsyncAnthropic) -> None:
    message = await anthropic_client.messages.create(
        model="local-1",
        max_tokens=100,
        system="You are Ada.",
        messages=[{"role": "user", "content": "Hello there"}],
        tools=ANTHROPIC_TOOLS,
    )
    [block] = message.content
    assert block.type == "text"
    assert block.text == compose_answer(["You are Ada.", "Hello there"], 100).text
    assert message.stop_reason == "end_turn"


@pytest.mark.parametrize(
    ("messages", "tools", "field"),
    [
        (  # a result of no call
            [
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": "toolu_x", "content": "1"}],
                }
            ],
            ANTHROPIC_TOOLS,
            r"messages\.0\.content\.0\.tool_use_id",
        ),
        (  # a call with no result after it
            [
                {"role": "user", "content": "add"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "tool_use", "id": "toolu_1", "name": "calculator__add", "input": {}}
                    ],
                },
                {"role": "user", "content": "well?"},
            ],
            ANTHROPIC_TOOLS,
            r"messages\.2: tool_use ids were found without tool_result blocks immediately after: toolu_1",
        ),
        (
            [{"role": "user", "content": "hi"}],
            [{"name": "bad", "input_schema": {"type": "string"}}],
            r"tools\.0\.input_schema\.type",
        ),
        ([{"role": "user", "content": "hi"}], [ANTHROPIC_TOOLS[0], ANTHROPIC_TOOLS[0]], "must be unique"),
        (
            [
                {"role": "user", "content": "add"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "tool_use", "id": "toolu_1", "name": "calculator__add", "input": {}}
                    ],
                },
            ],
            None,
            r"messages\.1\.content\.0: requests with tool_use or tool_result blocks must define tools",
        ),
    ],
)
async def test_anthropic_refuses_broken_tool_use_naming_the_field(
    anthropic_client: anthropic.AsyncAnthropic, messages: Any, tools: Any, field: str
) -> None:
    with pytest.raises(anthropic.BadRequestError, match=field):
        await anthropic_client.messages.create(
            model="local-1", max_tokens=10, messages=messages, tools=tools or anthropic.omit
        )


async def test_openai_calls_the_named_tools_json_and_streamed(openai_client: openai.AsyncOpenAI) -> None:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": ASK_BOTH}]
    completion = await openai_client.chat.completions.create(
        model="local-1", messages=messages, tools=OPENAI_TOOLS
    )
    stream = await openai_client.chat.completions.create(
        model="local-1",
        messages=messages,
        tools=OPENAI_TOOLS,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    async with openai_client.chat.completions.stream(
        model="local-1", messages=messages, tools=OPENAI_TOOLS
    ) as helper:
        accumulated = await helper.get_final_completion()

    [choice] = completion.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls or []
    assert [(c.type, c.function.name, json.loads(c.function.arguments)) for c in calls] == [  # type: ignore[union-attr]
        ("function", "calculator__add", ADD_ARGUMENTS),
        ("function", "weather__forecast", WEATHER_ARGUMENTS),
    ]
    assert all(c.id.startswith("call_") for c in calls)
    # Streamed: each call opens with its index, id and name, then pieces of its arguments.
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    openings = [d for d in deltas if d.id is not None]
    assert [(d.index, d.id, d.function and d.function.name) for d in openings] == [
        (i, c.id, c.function.name)  # type: ignore[union-attr]
        for i, c in enumerate(calls)
    ]
    arguments = [
        "".join(d.function.arguments or "" for d in deltas if d.index == i and d.function) for i in (0, 1)
    ]
    assert arguments == [c.function.arguments for c in calls]  # type: ignore[union-attr]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert chunks[-1].usage is not None
    assert completion.usage is not None
    assert (
        chunks[-1].usage.completion_tokens
        == completion.usage.completion_tokens
        == len(deltas) - len(openings)
    )
    # The SDK's accumulation of a stream equals the non-streamed answer.
    assert accumulated.choices[0].message.tool_calls is not None
    assert [
        (c.id, c.function.name, c.function.arguments) for c in accumulated.choices[0].message.tool_calls
    ] == [(c.id, c.function.name, c.function.arguments) for c in calls]  # type: ignore[union-attr]


async def test_openai_full_loop_ends_in_text_with_the_results(openai_client: openai.AsyncOpenAI) -> None:
    messages: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": "You are Ada."},
        {"role": "user", "content": ASK_BOTH},
    ]
    first = await openai_client.chat.completions.create(
        model="local-1", messages=messages, tools=OPENAI_TOOLS
    )
    message = first.choices[0].message
    messages.append(message.model_dump(exclude_none=True))  # type: ignore[arg-type]
    for call, result in zip(message.tool_calls or [], ["5.5", "Sunny, 21 C"], strict=True):
        messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
    stream = await openai_client.chat.completions.create(
        model="local-1", messages=messages, tools=OPENAI_TOOLS, stream=True
    )
    chunks = [chunk async for chunk in stream]

    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == "calculator__add returned: 5.5\nweather__forecast returned: Sunny, 21 C"
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_openai_tool_choice_and_parallel_calls(openai_client: openai.AsyncOpenAI) -> None:
    async def called(text: str, **options: Any) -> list[str]:
        completion = await openai_client.chat.completions.create(
            model="local-1", messages=[{"role": "user", "content": text}], tools=OPENAI_TOOLS, **options
        )
        return [c.function.name for c in completion.choices[0].message.tool_calls or []]

    assert await called(ASK_BOTH, tool_choice="none") == []
    assert await called("What now?", tool_choice="required") == ["weather__forecast"]
    named = {"type": "function", "function": {"name": "weather__forecast"}}
    assert await called(ASK_BOTH, tool_choice=named) == ["weather__forecast"]
    assert await called(ASK_BOTH, parallel_tool_calls=False) == ["calculator__add"]


@pytest.mark.parametrize(
    ("messages", "tools", "field"),
    [
        (
            [{"role": "tool", "tool_call_id": "call_x", "content": "1"}],
            OPENAI_TOOLS,
            r"messages\[0\]\.tool_call_id",
        ),
        (
            [
                {"role": "user", "content": "add"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "calculator__add", "arguments": "{}"},
                        }
                    ],
                },
                {"role": "user", "content": "well?"},
            ],
            OPENAI_TOOLS,
            r"messages\[2\]\.role: an assistant message with 'tool_calls' must be followed by tool messages",
        ),
        ([{"role": "user", "content": "hi"}], [{"type": "retrieval"}], r"tools\[0\]\.type"),
        (
            [{"role": "user", "content": "hi"}],
            [{"type": "function", "function": {"name": "x", "parameters": {"type": "array"}}}],
            r"tools\[0\]\.function\.parameters\.type",
        ),
    ],
)
async def test_openai_refuses_broken_tool_use_naming_the_field(
    openai_client: openai.AsyncOpenAI, messages: Any, tools: Any, field: str
) -> None:
    with pytest.raises(openai.BadRequestError, match=field):
        await openai_client.chat.completions.create(model="local-1", messages=messages, tools=tools)


async def test_a_cut_inside_a_tool_call_drops_the_connection(openai_client: openai.AsyncOpenAI) -> None:
    stream = await openai_client.chat.completions.create(
        model="local-1",
        messages=[{"role": "user", "content": ASK_BOTH}],
        tools=OPENAI_TOOLS,
        stream=True,
        extra_headers={"x-macp-behavior": "cut=2"},
    )
    received: list[ChatCompletionChunk] = []

    async def read_all() -> None:
        async with stream:
            async for chunk in stream:
                received.append(chunk)

    with pytest.raises(openai.APIError):
        await read_all()
    pieces = [d for c in received if c.choices for d in c.choices[0].delta.tool_calls or [] if d.id is None]
    assert len(pieces) == 2  # two argument pieces, then the connection dropped
