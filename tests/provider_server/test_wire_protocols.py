"""The official anthropic and openai SDKs, unchanged, against the local provider server: JSON and
streamed answers, the documented event sequences, usage consistent with the text, deterministic
text, and clear errors for bad requests."""

from __future__ import annotations

import anthropic
import openai
import pytest
from anthropic.types import MessageParam
from openai.types.chat import ChatCompletionMessageParam

from services.provider_server.answers import compose_answer

QUESTION = "What should the three of us build next week?"
ANTHROPIC_MESSAGES: list[MessageParam] = [{"role": "user", "content": QUESTION}]
OPENAI_MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "You are Ada."},
    {"role": "user", "content": QUESTION},
]


async def test_anthropic_json_and_stream_tell_the_same_answer(
    anthropic_client: anthropic.AsyncAnthropic,
) -> None:
    message = await anthropic_client.messages.create(
        model="local-1", max_tokens=200, system="You are Ada.", messages=ANTHROPIC_MESSAGES
    )
    async with anthropic_client.messages.stream(
        model="local-1", max_tokens=200, system="You are Ada.", messages=ANTHROPIC_MESSAGES
    ) as stream:
        streamed = "".join([text async for text in stream.text_stream])
        final = await stream.get_final_message()

    [block] = message.content
    assert block.type == "text"
    expected = compose_answer(["You are Ada.", QUESTION], 200)
    assert block.text == streamed == expected.text
    assert message.stop_reason == final.stop_reason == "end_turn"
    # Usage counts the words of the prompt and of the answer.
    assert message.usage.input_tokens == final.usage.input_tokens == len(f"You are Ada. {QUESTION}".split())
    assert message.usage.output_tokens == final.usage.output_tokens == len(streamed.split())
    assert message._request_id is not None


async def test_anthropic_stream_is_the_documented_event_sequence(
    anthropic_client: anthropic.AsyncAnthropic,
) -> None:
    stream = await anthropic_client.messages.create(
        model="local-1", max_tokens=5, messages=ANTHROPIC_MESSAGES, stream=True
    )
    events = [event async for event in stream]
    kinds = [event.type for event in events]
    deltas = kinds.count("content_block_delta")
    assert kinds == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * deltas,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert deltas == 5  # capped by max_tokens, one token per delta
    message_delta = events[-2]
    assert message_delta.type == "message_delta"
    assert message_delta.delta.stop_reason == "max_tokens"
    assert message_delta.usage.output_tokens == 5


async def test_openai_json_and_stream_tell_the_same_answer(openai_client: openai.AsyncOpenAI) -> None:
    completion = await openai_client.chat.completions.create(model="local-1", messages=OPENAI_MESSAGES)
    stream = await openai_client.chat.completions.create(
        model="local-1", messages=OPENAI_MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert (
        completion.choices[0].message.content == text == compose_answer(["You are Ada.", QUESTION], None).text
    )
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    # include_usage: one last chunk without choices carries the usage; no other chunk does.
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert all(chunk.usage is None for chunk in chunks[:-1])
    assert completion.usage is not None
    assert chunks[-1].usage.model_dump() == completion.usage.model_dump()
    assert completion.usage.completion_tokens == len(text.split())
    assert completion.usage.prompt_tokens == len(f"You are Ada. {QUESTION}".split())


async def test_openai_stream_without_include_usage_has_no_usage_chunk(
    openai_client: openai.AsyncOpenAI,
) -> None:
    stream = await openai_client.chat.completions.create(
        model="local-1", messages=OPENAI_MESSAGES, stream=True, max_tokens=3
    )
    chunks = [chunk async for chunk in stream]
    assert all(chunk.choices and chunk.usage is None for chunk in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "length"
    assert sum(1 for c in chunks if c.choices[0].delta.content) == 3


def test_the_answer_is_a_function_of_the_prompt() -> None:
    first = compose_answer(["You are Ada.", "hello"], None)
    assert compose_answer(["You are Ada.", "hello"], None) == first
    assert compose_answer(["You are Ada.", "goodbye"], None).text != first.text
    assert "".join(first.pieces()) == first.text
    assert compose_answer(["x"], 4, exact_tokens=100).output_tokens == 4
    assert compose_answer(["x"], None, exact_tokens=100).output_tokens == 100


async def test_a_bad_request_names_the_field(
    anthropic_client: anthropic.AsyncAnthropic, openai_client: openai.AsyncOpenAI
) -> None:
    with pytest.raises(anthropic.BadRequestError, match=r"messages\.0\.role"):
        await anthropic_client.messages.create(
            model="local-1",
            max_tokens=10,
            messages=[{"role": "robot", "content": "hi"}],  # type: ignore[misc, list-item]
        )
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        await openai_client.chat.completions.create(model="local-1", messages=OPENAI_MESSAGES, max_tokens=0)
    with pytest.raises(anthropic.BadRequestError, match="behavior"):
        await anthropic_client.messages.create(
            model="local-1",
            max_tokens=10,
            messages=ANTHROPIC_MESSAGES,
            extra_headers={"x-macp-behavior": "explode=1"},
        )


async def test_a_request_without_a_key_is_unauthenticated(openai_client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.AuthenticationError):
        await openai_client.chat.completions.create(
            model="local-1", messages=OPENAI_MESSAGES, extra_headers={"authorization": ""}
        )
