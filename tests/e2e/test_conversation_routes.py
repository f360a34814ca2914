"""The conversation REST API end to end: client → Envoy front → edge → Envoy mesh → conversation
service → Postgres, Redis and S3, with real tokens, covering every route."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest

from services.runtime.auth.settings import EDGE_AUDIENCE
from tests.conversation.conftest import stored_messages
from tests.e2e.conftest import Slice

pytestmark = pytest.mark.integration


@pytest.fixture
async def mesh_slice(module_slice: Slice) -> Slice:
    """The module's one slice, as a tenant of this test's own: no test here needs a slice to itself."""
    return await module_slice.with_new_tenant()


AGENT = {"name": "Ada", "provider": "local", "model": "echo-1", "capabilities": ["math"]}


def ok(response: httpx.Response, status: int) -> Any:
    assert response.status_code == status, f"{response.request.method} {response.url}: {response.text}"
    return response.json() if response.content else None


def quoted(etag: str) -> dict[str, str]:
    return {"if-match": f'"{etag}"'}


async def _round_completed(
    client: httpx.AsyncClient, conversation_id: str, after: str, message_id: str
) -> None:
    """Follows the conversation's SSE events after `after` until the round of `message_id` ends."""
    url = f"/v1/conversations/{conversation_id}/events"
    async with (
        asyncio.timeout(30),
        client.stream(
            "GET", url, headers={"last-event-id": after, "accept": "text/event-stream"}
        ) as response,
    ):
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                event = json.loads(line.removeprefix("data: "))
                if event.get("round_completed", {}).get("trigger_message_id") == message_id:
                    return
    raise AssertionError(f"the events of {conversation_id} ended before the round of {message_id}")


def error_of(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"code", "message", "request_id"}
    assert body["code"] == code
    assert body["request_id"] == response.headers["x-request-id"]
    message: str = body["message"]
    return message


async def test_every_route_through_envoy(mesh_slice: Slice) -> None:
    async with mesh_slice.client() as client:
        # Agents: create, list in pages, get, patch with If-Match.
        ada = ok(await client.post("/v1/agents", json=AGENT), 201)
        bea = ok(await client.post("/v1/agents", json={**AGENT, "name": "Bea", "capabilities": []}), 201)
        page = ok(await client.get("/v1/agents", params={"page_size": 1}), 200)
        assert [a["id"] for a in page["agents"]] == [ada["id"]]
        rest = ok(await client.get("/v1/agents", params={"page_token": page["nextPageToken"]}), 200)
        assert [a["id"] for a in rest["agents"]] == [bea["id"]]
        assert rest["nextPageToken"] == ""
        math = ok(await client.get("/v1/agents", params={"capability": "math"}), 200)
        assert [a["id"] for a in math["agents"]] == [ada["id"]]
        got = await client.get(f"/v1/agents/{ada['id']}")
        assert ok(got, 200) == ada
        assert got.headers["etag"] == f'"{ada["etag"]}"'
        patched = await client.patch(
            f"/v1/agents/{ada['id']}", json={"systemPrompt": "Be brief."}, headers=quoted(ada["etag"])
        )
        ada = ok(patched, 200)
        assert ada["systemPrompt"] == "Be brief."
        assert ada["name"] == "Ada"
        assert patched.headers["etag"] == f'"{ada["etag"]}"'
        stale = await client.patch(
            f"/v1/agents/{ada['id']}", json={"name": "X"}, headers=quoted(got.json()["etag"])
        )
        assert "etag" in error_of(stale, 412, "FAILED_PRECONDITION")
        blind = await client.patch(f"/v1/agents/{ada['id']}", json={"name": "X"})
        assert "If-Match" in error_of(blind, 428, "PRECONDITION_REQUIRED")
        output_only = await client.patch(
            f"/v1/agents/{ada['id']}", json={"tenantId": "x"}, headers=quoted(ada["etag"])
        )
        assert "update_mask" in error_of(output_only, 400, "INVALID_ARGUMENT")

        # Conversations: create, get, list with filters, patch.
        draft = {
            "title": "plan",
            "participantAgentIds": [ada["id"], bea["id"]],
            "turnPolicy": "TURN_POLICY_ROUND_ROBIN",
        }
        created = await client.post("/v1/conversations", json=draft)
        conversation = ok(created, 201)
        assert created.headers["location"] == f"/v1/conversations/{conversation['id']}"
        assert conversation["status"] == "CONVERSATION_STATUS_ACTIVE"
        assert ok(await client.get(f"/v1/conversations/{conversation['id']}"), 200) == conversation
        listed = ok(
            await client.get(
                "/v1/conversations", params={"agent_id": bea["id"], "status": "CONVERSATION_STATUS_ACTIVE"}
            ),
            200,
        )
        assert [c["id"] for c in listed["conversations"]] == [conversation["id"]]
        conversation = ok(
            await client.patch(
                f"/v1/conversations/{conversation['id']}",
                json={
                    "title": "renamed",
                    "limits": {"maxAgentTurnsPerUserMessage": 2},
                    "etag": conversation["etag"],
                },
            ),
            200,
        )
        assert (conversation["title"], conversation["limits"]) == (
            "renamed",
            {"maxAgentTurnsPerUserMessage": 2, "maxToolCallsPerTurn": 0},
        )

        # Messages go through the orchestrator: POST retried 10 times is accepted (and stored) once,
        # the same id with other text is the same message again; its round's end is followed on the
        # SSE events route before the next message (the conversation's policy refuses double texts).
        messages_url = f"/v1/conversations/{conversation['id']}/messages"
        message = {"id": str(uuid.uuid4()), "text": "hello, agents"}
        first = ok(await client.post(messages_url, json=message), 201)
        assert (first["messageId"], first["sequence"], first["duplicate"]) == (message["id"], "1", False)
        for _ in range(10):
            assert ok(await client.post(messages_url, json=message), 200) == {**first, "duplicate": True}
        again = ok(await client.post(messages_url, json={**message, "text": "other"}), 200)
        assert again == {**first, "duplicate": True}
        assert await stored_messages(mesh_slice.database_url, conversation["id"]) == 1
        await _round_completed(client, conversation["id"], first["eventId"], message["id"])
        ok(await client.post(messages_url, json={"id": str(uuid.uuid4()), "text": "second"}), 201)
        page = ok(await client.get(messages_url, params={"page_size": 1}), 200)
        assert [m["text"] for m in page["messages"]] == ["hello, agents"]
        tail = ok(await client.get(messages_url, params={"page_token": page["nextPageToken"]}), 200)
        assert [m["text"] for m in tail["messages"]] == ["second"]
        forged = await client.post(
            messages_url, json={"id": str(uuid.uuid4()), "text": "x", "role": "MESSAGE_ROLE_AGENT"}
        )
        assert "role" in error_of(forged, 400, "INVALID_ARGUMENT")

        # The agent in use cannot go (409); the archive round trip; then deletes.
        in_use = await client.delete(f"/v1/agents/{bea['id']}")
        assert conversation["id"] in error_of(in_use, 409, "FAILED_PRECONDITION")
        archived = await client.post(
            f"/v1/conversations/{conversation['id']}/archive", json={"close": True, "urlTtl": "300s"}
        )
        archive = ok(archived, 201)
        assert archive["conversation"]["status"] == "CONVERSATION_STATUS_ARCHIVED"
        async with httpx.AsyncClient(trust_env=False) as s3:
            transcript = await s3.get(archive["presignedUrl"])
        assert transcript.status_code == 200
        lines = [json.loads(line) for line in transcript.text.splitlines()]
        assert [line["text"] for line in lines] == ["hello, agents", "second"]
        archives_url = f"/v1/conversations/{conversation['id']}/archives"
        listed_archives = ok(await client.get(archives_url), 200)
        assert [a["id"] for a in listed_archives["archives"]] == [archive["archive"]["id"]]
        fetched = ok(
            await client.get(f"{archives_url}/{archive['archive']['id']}", params={"url_ttl": "60s"}), 200
        )
        assert fetched["archive"] == archive["archive"]
        late = await client.post(messages_url, json={"id": str(uuid.uuid4()), "text": "too late"})
        assert "archived" in error_of(late, 409, "FAILED_PRECONDITION")
        closed_patch = await client.patch(
            f"/v1/conversations/{conversation['id']}",
            json={"title": "x"},
            headers=quoted(archive["conversation"]["etag"]),
        )
        error_of(closed_patch, 409, "FAILED_PRECONDITION")

        ok(await client.delete(f"/v1/agents/{bea['id']}", headers=quoted(bea["etag"])), 204)
        gone = await client.delete(f"/v1/conversations/{conversation['id']}", headers=quoted("stale"))
        error_of(gone, 412, "FAILED_PRECONDITION")
        ok(
            await client.delete(
                f"/v1/conversations/{conversation['id']}", headers=quoted(archive["conversation"]["etag"])
            ),
            204,
        )
        for path in (
            f"/v1/conversations/{conversation['id']}",
            messages_url,
            archives_url,
            f"/v1/agents/{bea['id']}",
        ):
            error_of(await client.get(path), 404, "NOT_FOUND")


async def test_two_concurrent_patches_with_the_same_etag_exactly_one_wins(mesh_slice: Slice) -> None:
    async with mesh_slice.client() as client:
        agent = ok(await client.post("/v1/agents", json=AGENT), 201)
        conversation = ok(
            await client.post(
                "/v1/conversations",
                json={"participantAgentIds": [agent["id"]], "turnPolicy": "TURN_POLICY_BID"},
            ),
            201,
        )
        for path, etag in (
            (f"/v1/agents/{agent['id']}", agent["etag"]),
            (f"/v1/conversations/{conversation['id']}", conversation["etag"]),
        ):
            field = "name" if "agents" in path else "title"
            replies = await asyncio.gather(
                client.patch(path, json={field: "first"}, headers=quoted(etag)),
                client.patch(path, json={field: "second"}, headers=quoted(etag)),
            )
            assert sorted(r.status_code for r in replies) == [200, 412], [r.text for r in replies]
            [winner] = [r for r in replies if r.status_code == 200]
            assert ok(await client.get(path), 200) == winner.json()
    # Bad input on the same slice (one set-up for both).
    await _bad_input_is_refused_by_name_and_nothing_is_written(mesh_slice)


async def _bad_input_is_refused_by_name_and_nothing_is_written(mesh_slice: Slice) -> None:
    async with mesh_slice.client() as client:
        before = ok(await client.get("/v1/conversations"), 200)["conversations"]
        agent = ok(await client.post("/v1/agents", json=AGENT), 201)
        cases = [
            await client.post(
                "/v1/conversations", json={"participantAgentIds": [agent["id"]], "turnPolicy": "NOPE"}
            ),
            await client.post("/v1/conversations", json={"participantAgentIds": [agent["id"]], "colour": 1}),
            await client.post(
                "/v1/conversations", json={"participantAgentIds": [], "turnPolicy": "TURN_POLICY_BID"}
            ),
            await client.get("/v1/agents", params={"page_size": "lots"}),
            await client.get("/v1/agents", params={"page_size": 5000}),
            await client.get("/v1/agents", params={"pageSize": 5}),
            await client.get("/v1/conversations", params={"status": "CLOSED"}),
            await client.get("/v1/agents", params={"page_token": "garbage"}),
            await client.patch(
                f"/v1/agents/{agent['id']}", json={"name": "x"}, headers={"if-match": "unquoted"}
            ),
        ]
        fragments = [
            "turnPolicy",
            "colour",
            "participant",
            "page_size",
            "page_size",
            "pageSize",
            "status",
            "page_token",
            "If-Match",
        ]
        for response, fragment in zip(cases, fragments, strict=True):
            assert fragment in error_of(response, 400, "INVALID_ARGUMENT"), response.text
        huge = await client.post("/v1/conversations", json={"title": "x" * 2_000_000})
        assert huge.status_code == 413
        after = ok(await client.get("/v1/conversations"), 200)["conversations"]
        assert after == before


async def test_another_tenants_ids_answer_not_found_on_every_route_both_ways(mesh_slice: Slice) -> None:
    other = await mesh_slice.tokens.tenant()
    other_token = await mesh_slice.tokens.user_token(other, [EDGE_AUDIENCE])
    leaks: list[str] = []
    async with mesh_slice.client() as mine, mesh_slice.client(other_token) as theirs:
        for owner, intruder in ((mine, theirs), (theirs, mine)):
            agent = ok(await owner.post("/v1/agents", json=AGENT), 201)
            conversation = ok(
                await owner.post(
                    "/v1/conversations",
                    json={"participantAgentIds": [agent["id"]], "turnPolicy": "TURN_POLICY_BID"},
                ),
                201,
            )
            base = f"/v1/conversations/{conversation['id']}"
            ok(await owner.post(f"{base}/messages", json={"id": str(uuid.uuid4()), "text": "secret"}), 201)
            archive = ok(await owner.post(f"{base}/archive"), 201)["archive"]
            any_etag = quoted(agent["etag"])
            attempts = {
                "GET agent": intruder.get(f"/v1/agents/{agent['id']}"),
                "PATCH agent": intruder.patch(
                    f"/v1/agents/{agent['id']}", json={"name": "pwned"}, headers=any_etag
                ),
                "DELETE agent": intruder.delete(f"/v1/agents/{agent['id']}"),
                "GET conversation": intruder.get(base),
                "PATCH conversation": intruder.patch(
                    base, json={"title": "pwned"}, headers=quoted(conversation["etag"])
                ),
                "DELETE conversation": intruder.delete(base),
                "GET messages": intruder.get(f"{base}/messages"),
                "POST message": intruder.post(
                    f"{base}/messages", json={"id": str(uuid.uuid4()), "text": "hi"}
                ),
                "POST archive": intruder.post(f"{base}/archive", json={"close": True}),
                "GET archives": intruder.get(f"{base}/archives"),
                "GET archive": intruder.get(f"{base}/archives/{archive['id']}"),
            }
            for name, attempt in attempts.items():
                response = await attempt
                if response.status_code != 404 or "secret" in response.text:
                    leaks.append(f"{name}: {response.status_code} {response.text[:200]}")
            joined = await intruder.post(
                "/v1/conversations",
                json={"participantAgentIds": [agent["id"]], "turnPolicy": "TURN_POLICY_BID"},
            )
            if joined.status_code != 409:
                leaks.append(f"POST conversation with their agent: {joined.status_code}")
            for path, key, item in (
                ("/v1/agents", "agents", agent),
                ("/v1/conversations", "conversations", conversation),
            ):
                listed = ok(await intruder.get(path, params={"page_size": 1000}), 200)
                if item["id"] in {entry["id"] for entry in listed[key]}:
                    leaks.append(f"GET {path} lists it")
            # The owner still sees everything as it was.
            assert ok(await owner.get(f"/v1/agents/{agent['id']}"), 200) == agent
            assert ok(await owner.get(base), 200)["title"] == conversation["title"]
    assert leaks == []
