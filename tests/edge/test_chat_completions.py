"""`POST /v1/chat/completions` with the official OpenAI SDK pointed at the edge (uvicorn, the fake
orchestrator's Complete behind it, the session's real Redis)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from macp.orchestrator.v1 import orchestrator_service_pb2 as orchestrator_pb

from services.stack.infra import Infrastructure
from tests.edge.fake_orchestrator import AGENT_ID, QUOTA_AGENT_ID, UNKNOWN_AGENT_ID, FakeOrchestrator
from tests.edge.orchestrator_world import EdgeWorld, edge_world

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def world(infrastructure: Infrastructure) -> AsyncIterator[EdgeWorld]:
    async with edge_world(infrastructure) as served:
        yield served


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


def _turns(world: EdgeWorld, turn_id: str) -> int:
    """How many Complete calls (generations) the orchestrator was asked for under `turn_id`."""
    return sum(
        isinstance(sent, orchestrator_pb.CompleteRequest) and sent.turn_id == turn_id
        for sent in world.orchestrator.requests
    )


def _turn_of(completion_id: str) -> str:
    return str(uuid.UUID(hex=completion_id.removeprefix("chatcmpl-")))


async def test_a_retry_with_the_same_key_and_body_is_the_stored_answer_not_a_second_turn(
    world: EdgeWorld, sdk: openai.AsyncOpenAI
) -> None:
    key = {"Idempotency-Key": f"retry-{uuid.uuid4()}"}
    first = await sdk.chat.completions.create(
        model=AGENT_ID, messages=[{"role": "user", "content": "hi"}], extra_headers=key
    )
    # The same request, its body serialised in another member order: still the same request.
    body = {"messages": [{"content": "hi", "role": "user"}], "model": AGENT_ID}
    async with world.client() as client:
        again = await client.post("/v1/chat/completions", json=body, headers=key)
    assert again.status_code == 200
    assert again.json()["id"] == first.id
    assert again.json()["choices"][0]["message"]["content"] == first.choices[0].message.content
    turn = _turn_of(first.id)
    assert world.orchestrator.requests[-1].turn_id == turn  # type: ignore[attr-defined]
    assert _turns(world, turn) == 1


async def test_a_streamed_retry_replays_the_stored_answer_as_chunks(
    world: EdgeWorld, sdk: openai.AsyncOpenAI
) -> None:
    key = {"Idempotency-Key": f"stream-{uuid.uuid4()}"}

    async def streamed() -> tuple[str, str, int]:
        stream = await sdk.chat.completions.create(
            model=AGENT_ID,
            messages=[{"role": "user", "content": "one two"}],
            stream=True,
            stream_options={"include_usage": True},
            extra_headers=key,
        )
        chunks = [chunk async for chunk in stream]
        text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
        assert chunks[-1].usage is not None
        return chunks[0].id, text, chunks[-1].usage.total_tokens

    first, again = await streamed(), await streamed()
    assert first == again
    assert first[1] == "echo: one two"
    assert _turns(world, _turn_of(first[0])) == 1


async def test_a_key_reused_with_another_body_is_422_and_never_another_generation(
    world: EdgeWorld, sdk: openai.AsyncOpenAI
) -> None:
    key = {"Idempotency-Key": f"reused-{uuid.uuid4()}"}
    first = await sdk.chat.completions.create(
        model=AGENT_ID, messages=[{"role": "user", "content": "first"}], extra_headers=key
    )
    for other in ("second", "third"):
        with pytest.raises(openai.UnprocessableEntityError) as raised:
            await sdk.chat.completions.create(
                model=AGENT_ID, messages=[{"role": "user", "content": other}], extra_headers=key
            )
        assert raised.value.code == "idempotency_key_reused"
    # One generation under the key's turn, metered once: never one turn for several generations.
    assert _turns(world, _turn_of(first.id)) == 1


async def test_keys_are_scoped_per_tenant_and_client(world: EdgeWorld) -> None:
    # A UUID, which the old edge took as the turn id itself: every caller choosing it shared one turn.
    key = {"Idempotency-Key": str(uuid.uuid4())}
    body = {"model": AGENT_ID, "messages": [{"role": "user", "content": "hi"}]}
    callers = [
        world.token(tenant_id="acme", client_id="web-app"),
        world.token(tenant_id="globex", client_id="web-app"),
        world.token(tenant_id="acme", client_id="other-app"),
    ]
    ids = []
    for token in callers:
        async with world.client(token) as client:
            answer = await client.post("/v1/chat/completions", json=body, headers=key)
        assert answer.status_code == 200
        ids.append(answer.json()["id"])
    # Three callers, three turns of their own: none was served another's answer or turn id.
    assert len(set(ids)) == 3
    assert all(_turns(world, _turn_of(completion)) == 1 for completion in ids)


async def test_concurrent_duplicates_run_one_generation_the_other_is_409(
    infrastructure: Infrastructure,
) -> None:
    slow = FakeOrchestrator(delta_pause=0.2)  # the first request is still running when the second comes
    async with edge_world(infrastructure, orchestrator=slow) as served:
        key = {"Idempotency-Key": f"concurrent-{uuid.uuid4()}"}
        body = {"model": AGENT_ID, "messages": [{"role": "user", "content": "a b c"}]}
        async with served.client() as client:
            answers = await asyncio.gather(
                *(client.post("/v1/chat/completions", json=body, headers=key) for _ in range(2))
            )
            statuses = sorted(answer.status_code for answer in answers)
            served_first = next(answer for answer in answers if answer.status_code == 200)
            later = await client.post("/v1/chat/completions", json=body, headers=key)
    assert statuses == [200, 409]
    conflict = next(answer for answer in answers if answer.status_code == 409)
    assert conflict.json()["error"]["code"] == "idempotency_key_in_use"
    assert later.json() == served_first.json()
    assert _turns(served, _turn_of(served_first.json()["id"])) == 1


async def test_a_failed_keyed_request_may_be_retried(world: EdgeWorld, sdk: openai.AsyncOpenAI) -> None:
    key = {"Idempotency-Key": f"failed-{uuid.uuid4()}"}
    for _ in range(2):  # refused both times: the refusal is not stored as the key's answer
        with pytest.raises(openai.RateLimitError):
            await sdk.chat.completions.create(
                model=QUOTA_AGENT_ID, messages=[{"role": "user", "content": "hi"}], extra_headers=key
            )


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
        ({"messages": [{"role": "function", "content": "x", "name": "f"}]}, "messages[0].role"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
        ({"messages": [{"role": "user", "content": ""}]}, "messages[0].content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "messages[0].content[0]",
        ),
        ({"tools": [{"type": "function", "function": {"name": "f g"}}]}, "tools[0].function.name"),
        ({"functions": [{"name": "f"}]}, "functions"),
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
