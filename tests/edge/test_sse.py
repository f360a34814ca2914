"""Server-sent events and the message POST through the orchestrator: uvicorn serving the edge,
httpx streaming, the fake orchestrator behind it and the session's real Redis."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from services.stack.infra import Infrastructure
from tests.edge.orchestrator_world import EdgeWorld, edge_world

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def world(infrastructure: Infrastructure) -> AsyncIterator[EdgeWorld]:
    async with edge_world(infrastructure, {"MACP_EDGE_SSE_HEARTBEAT_SECONDS": "0.3"}) as served:
        yield served


@dataclass(frozen=True)
class Sse:
    id: str | None
    event: str | None
    data: Any
    comment: bool = False


async def sse_events(response: httpx.Response) -> AsyncGenerator[Sse, None]:
    """The events of an SSE body as they arrive (comments included, flagged)."""
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line == "":
            if fields:
                data = fields.get("data")
                yield Sse(fields.get("id"), fields.get("event"), json.loads(data) if data else None)
            fields = {}
        elif line.startswith(":"):
            yield Sse(None, None, None, comment=True)
        else:
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")


async def collect(response: httpx.Response, seconds: float = 5) -> list[Sse]:
    events: list[Sse] = []
    async with asyncio.timeout(seconds):
        async for event in sse_events(response):
            if not event.comment:
                events.append(event)
    return events


SSE = {"accept": "text/event-stream"}


async def test_post_with_event_stream_answers_the_messages_round_then_ends(world: EdgeWorld) -> None:
    conversation, message_id = str(uuid.uuid4()), str(uuid.uuid4())
    async with (
        world.client() as client,
        client.stream(
            "POST",
            f"/v1/conversations/{conversation}/messages",
            json={"id": message_id, "text": "stream me"},
            headers=SSE,
        ) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        events = await collect(response)
    kinds = [event.event for event in events]
    assert kinds == [
        "message_accepted",
        "turn_started",
        "token_delta",
        "token_delta",
        "token_delta",
        "turn_completed",
        "round_completed",
    ]
    accepted = events[0]
    assert accepted.data["message_accepted"]["message_id"] == message_id
    assert all(event.id == event.data["event_id"] for event in events)
    assert events[-1].data["round_completed"]["trigger_message_id"] == message_id
    # Every event after the accepted one is in log order, and the follow ended with the round.
    assert [int(event.id.split("-")[0]) for event in events if event.id] == list(range(1, 8))
    await _eventually(lambda: world.orchestrator.following_events[conversation] == 0)


async def test_a_round_that_fails_fatally_ends_the_stream_at_its_error(world: EdgeWorld) -> None:
    conversation = str(uuid.uuid4())
    async with (
        world.client() as client,
        client.stream(
            "POST", f"/v1/conversations/{conversation}/messages", json={"text": "fatal"}, headers=SSE
        ) as response,
    ):
        events = await collect(response)
    assert [event.event for event in events] == ["message_accepted", "error"]
    assert events[-1].data["error"]["fatal"] is True


async def test_post_without_event_stream_answers_the_accepted_message_and_a_retry_is_200(
    world: EdgeWorld,
) -> None:
    conversation = str(uuid.uuid4())
    url = f"/v1/conversations/{conversation}/messages"
    body = {"id": str(uuid.uuid4()), "text": "hello", "mentionAgentIds": []}
    async with world.client() as client:
        first = await client.post(url, json=body)
        again = await client.post(url, json=body)
    assert first.status_code == 201, first.text
    assert first.json() == {"messageId": body["id"], "sequence": "1", "duplicate": False, "eventId": "1-0"}
    assert again.status_code == 200
    assert again.json() == {**first.json(), "duplicate": True}
    posted = world.orchestrator.requests[-1]
    assert posted.conversation_id == conversation  # type: ignore[attr-defined]
    assert world.orchestrator.audiences[-1] == "urn:macp:service:orchestrator"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"text": "x", "role": "MESSAGE_ROLE_AGENT"}, "role: only USER"),
        ({"text": "x", "colour": "red"}, "colour: unknown field"),
        ({"text": 5}, "text"),
        ({"text": "x", "conversationId": str(uuid.uuid4())}, "conversationId"),
        ({"text": ""}, "text"),
        ({"text": "x", "id": "not-a-uuid"}, "message_id"),
    ],
)
async def test_a_bad_message_body_is_refused_by_name(
    world: EdgeWorld, body: dict[str, Any], fragment: str
) -> None:
    async with world.client() as client:
        response = await client.post(f"/v1/conversations/{uuid.uuid4()}/messages", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "INVALID_ARGUMENT"
    assert fragment in response.json()["message"]


async def test_get_events_resumes_after_last_event_id_and_follows_live(world: EdgeWorld) -> None:
    conversation = str(uuid.uuid4())
    url = f"/v1/conversations/{conversation}/messages"
    async with world.client() as client:
        async with client.stream("POST", url, json={"text": "first"}, headers=SSE) as response:
            seen = await collect(response)
        log = world.orchestrator.log(conversation).events
        for resume in ({"last-event-id": seen[3].id or ""}, {}):
            # Every round so far is over, so the replay's length is known.
            await _eventually(lambda: log[-1].WhichOneof("payload") == "round_completed")
            params = {} if resume else {"after": seen[3].id or ""}
            async with client.stream(
                "GET", f"/v1/conversations/{conversation}/events", headers={**SSE, **resume}, params=params
            ) as following:
                assert following.status_code == 200
                events = sse_events(following)
                logged = [event.event_id for event in log]
                expected = logged[logged.index(seen[3].id or "") + 1 :]
                replayed = [await _next_event(events) for _ in expected]
                assert [event.id for event in replayed] == expected
                # Live: a message posted now shows up on the open stream.
                posted = await client.post(url, json={"text": "second"})
                live = await _next_event(events)
                assert live.event == "message_accepted"
                assert live.id == posted.json()["eventId"]
                await events.aclose()
    await _eventually(lambda: world.orchestrator.following_events[conversation] == 0)


async def test_a_revoked_token_ends_its_open_stream_with_an_error_event(world: EdgeWorld) -> None:
    conversation = str(uuid.uuid4())
    url = f"/v1/conversations/{conversation}/messages"
    token, other = world.token(), world.token()
    async with world.client(token) as client, world.client(other) as poster:
        async with client.stream("GET", f"/v1/conversations/{conversation}/events", headers=SSE) as following:
            assert following.status_code == 200
            events = sse_events(following)
            await world.revoke(token)
            revoked_at = time.monotonic()
            # Rounds go on in the conversation (another caller's): the revoked stream ends anyway.
            await poster.post(url, json={"text": "after the revocation"})
            async with asyncio.timeout(5):
                seen = [event async for event in events if not event.comment]
            ended_after = time.monotonic() - revoked_at
        again = await client.get(f"/v1/conversations/{conversation}/events", headers=SSE)
    assert seen[-1].event == "error"
    assert seen[-1].data["code"] == "UNAUTHENTICATED"
    assert "revoked" in seen[-1].data["message"]
    assert ended_after < 3  # the revocation cache's 1 s, a sweep's quarter second, and room
    assert again.status_code == 401
    await _eventually(lambda: world.orchestrator.following_events[conversation] == 0)


async def test_a_quiet_stream_gets_heartbeat_comments(world: EdgeWorld) -> None:
    async with (
        world.client() as client,
        client.stream("GET", f"/v1/conversations/{uuid.uuid4()}/events") as response,
    ):
        assert response.status_code == 200
        events = sse_events(response)
        async with asyncio.timeout(3):
            assert (await anext(events)).comment
        await events.aclose()


async def test_resuming_from_an_event_no_longer_retained_is_400_out_of_range(world: EdgeWorld) -> None:
    async with world.client() as client:
        response = await client.get(f"/v1/conversations/{uuid.uuid4()}/events", params={"after": "77-0"})
        bad = await client.get(f"/v1/conversations/{uuid.uuid4()}/events", params={"after": "a b"})
        unknown = await client.get(f"/v1/conversations/{uuid.uuid4()}/events", params={"from": "1"})
    assert response.status_code == 400
    assert response.json()["code"] == "OUT_OF_RANGE"
    assert "77-0" in response.json()["message"]
    assert bad.status_code == 400
    assert "after (or Last-Event-ID):" in bad.json()["message"]
    assert "from: unknown query parameter" in unknown.json()["message"]


async def test_the_event_routes_need_a_token(world: EdgeWorld) -> None:
    async with httpx.AsyncClient(base_url=world.url) as client:
        response = await client.get(f"/v1/conversations/{uuid.uuid4()}/events")
    assert response.status_code == 401


async def test_the_openapi_document_lists_the_events_and_chat_routes(world: EdgeWorld) -> None:
    async with httpx.AsyncClient(base_url=world.url) as client:
        document = (await client.get("/v1/openapi.json")).json()
    events = document["paths"]["/v1/conversations/{id}/events"]["get"]
    assert "text/event-stream" in events["responses"]["200"]["content"]
    assert {parameter["name"] for parameter in events["parameters"]} == {"id", "after"}
    chat = document["paths"]["/v1/chat/completions"]["post"]
    assert chat["operationId"] == "createChatCompletion"
    assert "429" in chat["responses"]
    post = document["paths"]["/v1/conversations/{id}/messages"]["post"]
    assert set(post["responses"]) >= {"200", "201"}


async def _next_event(events: AsyncIterator[Sse]) -> Sse:
    async with asyncio.timeout(5):
        while True:
            event = await anext(events)
            if not event.comment:
                return event


async def _eventually(condition: Any, seconds: float = 5) -> None:
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not true within {seconds} s")
