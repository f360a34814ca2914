"""`POST /v1/chat/completions` with the official OpenAI SDK pointed at the edge (uvicorn, the fake
orchestrator's Complete behind it, the session's real Redis)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest

from services.stack.infra import Infrastructure
from tests.edge.fake_orchestrator import AGENT_ID, QUOTA_AGENT_ID, UNKNOWN_AGENT_ID
from tests.edge.orchestrator_world import EdgeWorld, edge_world

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def world(infrastructure: Infrastructure) -> AsyncIterator[EdgeWorld]:
    async with edge_world(infrastructure) as served:
        yield served


@pytest.fixture
async def sdk(world: EdgeWorld) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=f"{world.url}/v1", api_key=world.token(), max_retries=0)
    try:
        yield client
    finally:
        await client.close()


async def test_a_completion_answers_the_agents_turn_with_usage(
    world: EdgeWorld, sdk: openai.AsyncOpenAI
) -> None:
    completion = await sdk.chat.completions.create(
        model=AGENT_ID,
        messages=[
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "hello "}, {"type": "text", "text": "agent"}],
            },
        ],
        temperature=0.5,
    )
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == AGENT_ID
    (choice,) = completion.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == "echo: hello agent"
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (4, 3)
    assert completion.usage.total_tokens == 7
    # What reached the orchestrator: roles mapped, parts joined, the caller's token exchanged for it.
    sent = world.orchestrator.requests[-1]
    assert [(m.role, m.text) for m in sent.messages] == [(1, "Be brief."), (2, "hello agent")]  # type: ignore[attr-defined]
    assert sent.temperature == 0.5  # type: ignore[attr-defined]
    assert world.orchestrator.audiences[-1] == "urn:macp:service:orchestrator"
    uuid.UUID(sent.turn_id)  # type: ignore[attr-defined]


async def test_a_streamed_completion_is_openais_chunk_format(sdk: openai.AsyncOpenAI) -> None:
    stream = await sdk.chat.completions.create(
        model=AGENT_ID,
        messages=[{"role": "user", "content": "one two three"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert len({chunk.id for chunk in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == "echo: one two three"
    finishes = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices]
    assert finishes[-1] == "stop"
    assert finishes[:-1] == [None] * (len(finishes) - 1)
    usage = chunks[-1].usage
    assert not chunks[-1].choices
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (3, 4, 7)


async def test_max_tokens_truncates_and_says_length(sdk: openai.AsyncOpenAI) -> None:
    completion = await sdk.chat.completions.create(
        model=AGENT_ID, messages=[{"role": "user", "content": "a b c d e"}], max_tokens=2
    )
    assert completion.choices[0].message.content == "echo: a"
    assert completion.choices[0].finish_reason == "length"


async def test_idempotency_key_is_the_turn_id(world: EdgeWorld, sdk: openai.AsyncOpenAI) -> None:
    key = str(uuid.uuid4())
    completion = await sdk.chat.completions.create(
        model=AGENT_ID, messages=[{"role": "user", "content": "hi"}], extra_headers={"Idempotency-Key": key}
    )
    assert world.orchestrator.requests[-1].turn_id == key  # type: ignore[attr-defined]
    assert completion.id == f"chatcmpl-{uuid.UUID(key).hex}"


async def test_a_quota_refusal_is_429_insufficient_quota(sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as raised:
        await sdk.chat.completions.create(model=QUOTA_AGENT_ID, messages=[{"role": "user", "content": "hi"}])
    assert raised.value.status_code == 429
    assert raised.value.code == "insufficient_quota"
    assert raised.value.type == "insufficient_quota"
    assert "quota exceeded" in raised.value.message


async def test_a_streamed_quota_refusal_is_429_too(sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.RateLimitError):
        await sdk.chat.completions.create(
            model=QUOTA_AGENT_ID, messages=[{"role": "user", "content": "hi"}], stream=True
        )


@pytest.mark.parametrize("model", [UNKNOWN_AGENT_ID, "gpt-4o"])
async def test_an_unknown_model_is_404_model_not_found(sdk: openai.AsyncOpenAI, model: str) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        await sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    assert raised.value.code == "model_not_found"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": ""}]}, "messages[0].content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "messages[0].content[0]",
        ),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"temperature": 3}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"n": 2}, "n"),
        ({"messages": []}, "messages"),
    ],
)
async def test_bad_input_is_400_in_openais_shape_naming_the_param(
    sdk: openai.AsyncOpenAI, extra: dict[str, Any], param: str
) -> None:
    body: dict[str, Any] = {"model": AGENT_ID, "messages": [{"role": "user", "content": "hi"}], **extra}
    with pytest.raises(openai.BadRequestError) as raised:
        await sdk.chat.completions.create(**body)
    assert raised.value.param == param
    assert raised.value.type == "invalid_request_error"
    assert isinstance(raised.value.body, dict)
    assert raised.value.body["message"].startswith(f"{param}: ")


async def test_the_raw_error_body_is_openais_shape(world: EdgeWorld) -> None:
    async with world.client() as client:
        response = await client.post("/v1/chat/completions", json={"model": AGENT_ID})
        not_json = await client.post(
            "/v1/chat/completions", content=b"{", headers={"content-type": "application/json"}
        )
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "message": "messages: required: a non-empty list",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "invalid_value",
        }
    }
    assert not_json.status_code == 400
    assert not_json.json()["error"]["code"] == "invalid_json"


async def test_a_completion_needs_a_token(world: EdgeWorld) -> None:
    client = openai.AsyncOpenAI(base_url=f"{world.url}/v1", api_key="not-a-token", max_retries=0)
    try:
        with pytest.raises(openai.AuthenticationError):
            await client.chat.completions.create(model=AGENT_ID, messages=[{"role": "user", "content": "hi"}])
    finally:
        await client.close()
