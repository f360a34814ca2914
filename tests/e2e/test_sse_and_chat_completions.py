"""The HTTP streaming routes end to end: a message POSTed with `Accept: text/event-stream` and the
events route through Envoy's front listener, the edge and the real orchestrator; and the official
OpenAI SDK against `/v1/chat/completions`, answered by a real agent turn (agent proxy, local
provider server, metering)."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import openai
import pytest

from tests.world import World

pytestmark = pytest.mark.integration


@pytest.fixture
async def world(module_world: World) -> World:
    """The module's one mesh, as a tenant of this test's own: no test here needs a mesh to itself."""
    return await module_world.other_tenant()


async def _sse(response: httpx.Response, seconds: float = 60) -> list[tuple[str, str, dict[str, Any]]]:
    """(id, event, data) of every SSE event until the stream ends."""
    events: list[tuple[str, str, dict[str, Any]]] = []
    fields: dict[str, str] = {}
    async with asyncio.timeout(seconds):
        async for line in response.aiter_lines():
            if line == "" and "data" in fields:
                events.append((fields.get("id", ""), fields.get("event", ""), json.loads(fields["data"])))
                fields = {}
            elif line and not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
    return events


async def test_a_message_posted_for_server_sent_events_streams_its_round_through_envoy(world: World) -> None:
    ada = await world.agent("Ada")
    conversation = await world.conversation([ada])
    message_id = str(uuid.uuid4())
    headers = {"authorization": f"Bearer {world.edge_token}", "accept": "text/event-stream"}
    async with (
        httpx.AsyncClient(base_url=world.front_url, headers=headers, timeout=60) as client,
        client.stream(
            "POST",
            f"/v1/conversations/{conversation.id}/messages",
            json={"id": message_id, "text": "hello over SSE"},
        ) as response,
    ):
        assert response.status_code == 200, await response.aread()
        events = await _sse(response)
    kinds = [kind for _, kind, _ in events]
    assert kinds[0] == "message_accepted"
    assert kinds[-1] == "round_completed"
    assert events[-1][2]["round_completed"]["trigger_message_id"] == message_id
    assert {"turn_started", "token_delta", "turn_completed"} <= set(kinds)
    streamed = "".join(data["token_delta"]["text"] for _, kind, data in events if kind == "token_delta")
    completed = next(data["turn_completed"] for _, kind, data in events if kind == "turn_completed")
    assert streamed == completed["text"] != ""
    # The events route resumes after any of them: the rest, in order, with the same ids.
    after = events[2][0]
    async with (
        httpx.AsyncClient(base_url=world.front_url, headers=headers, timeout=60) as client,
        client.stream(
            "GET", f"/v1/conversations/{conversation.id}/events", headers={"last-event-id": after}
        ) as following,
    ):
        assert following.status_code == 200
        replayed: list[str] = []
        async with asyncio.timeout(30):
            async for line in following.aiter_lines():
                if line.startswith("id: "):
                    replayed.append(line.removeprefix("id: "))
                    if replayed[-1] == events[-1][0]:
                        break
    assert replayed == [event_id for event_id, _, _ in events[3:]]


async def test_the_openai_sdk_gets_an_agents_answer_through_envoy(world: World) -> None:
    ada = await world.agent("Ada")
    client = openai.AsyncOpenAI(base_url=f"{world.front_url}/v1", api_key=world.edge_token, max_retries=0)
    try:
        completion = await client.chat.completions.create(
            model=ada.id, messages=[{"role": "user", "content": "say something"}]
        )
        stream = await client.chat.completions.create(
            model=ada.id,
            messages=[{"role": "user", "content": "say something"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(
                model=str(uuid.uuid4()), messages=[{"role": "user", "content": "anyone?"}]
            )
    finally:
        await client.close()
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage is not None
    assert completion.usage.completion_tokens > 0
    assert (
        completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text
    assert chunks[-1].usage is not None
