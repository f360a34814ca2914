"""The first real slice: REST on Envoy's front port → edge → Envoy mesh → conversation → Postgres."""

from __future__ import annotations

import asyncio
import json
import uuid

import asyncpg
import grpc
import pytest
from macp.conversation.v1 import conversation_service_pb2 as pb
from macp.conversation.v1 import conversation_service_pb2_grpc as pb_grpc

from services.runtime.auth.settings import EDGE_AUDIENCE, service_audience
from tests.e2e.conftest import Slice
from tests.tokens import bearer

pytestmark = pytest.mark.integration

NEW_AGENT = {
    "name": "Ada",
    "provider": "local",
    "model": "echo-1",
    "systemPrompt": "You check proofs.",
    "capabilities": ["math", "proofs"],
    "generation": {"maxTokens": 256, "temperature": 0.2},
}


@pytest.fixture
async def mesh_slice(module_slice: Slice) -> Slice:
    """The module's one slice, as a tenant of this test's own: no test needs a slice to itself."""
    return await module_slice.with_new_tenant()


async def _stored_agents(slice_: Slice) -> int:
    """How many agents the slice's database holds, of every tenant."""
    connection = await asyncpg.connect(slice_.database_url)
    try:
        count: int = await connection.fetchval("SELECT count(*) FROM conversation_agents")
    finally:
        await connection.close()
    return count


def _access_log(slice_: Slice) -> list[dict[str, object]]:
    lines = slice_.envoy_log.read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


async def _log_entries_for(slice_: Slice, request_id: str, count: int) -> list[dict[str, object]]:
    """Envoy flushes its access log on a timer: wait until `count` entries carry `request_id`."""
    for _ in range(100):
        entries = [e for e in _access_log(slice_) if e.get("request_id") == request_id]
        if len(entries) >= count:
            return entries
        await asyncio.sleep(0.1)
    raise AssertionError(f"Envoy logged fewer than {count} entries for request {request_id}")


async def test_post_then_get_returns_the_row_stored_in_postgres(mesh_slice: Slice) -> None:
    async with mesh_slice.client() as client:
        created = await client.post("/v1/agents", json=NEW_AGENT)
        assert created.status_code == 201, created.text
        agent = created.json()
        assert created.headers["location"] == f"/v1/agents/{agent['id']}"
        assert created.headers["etag"] == f'"{agent["etag"]}"'
        fetched = await client.get(f"/v1/agents/{agent['id']}")
    assert fetched.status_code == 200, fetched.text
    assert fetched.json() == agent
    for key, value in NEW_AGENT.items():
        assert agent[key] == value

    connection = await asyncpg.connect(mesh_slice.database_url)
    try:
        row = await connection.fetchrow(
            "SELECT * FROM conversation_agents WHERE id = $1", uuid.UUID(agent["id"])
        )
    finally:
        await connection.close()
    assert row is not None
    assert (row["name"], row["provider"], row["model"]) == ("Ada", "local", "echo-1")
    assert row["tenant_id"] == agent["tenantId"]
    assert list(row["capabilities"]) == ["math", "proofs"]
    assert row["etag"] == agent["etag"]

    # Both hops are in Envoy's access log under the request id the client got back.
    for response in (created, fetched):
        entries = await _log_entries_for(mesh_slice, response.headers["x-request-id"], 2)
        hops = {(e["listener"], e["upstream_cluster"]) for e in entries}
        # The edge exchanges the user's token at the token service before its first call.
        assert hops - {("mesh", "token")} == {("front", "edge"), ("mesh", "conversation")}


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({**NEW_AGENT, "colour": "blue"}, 400, "colour"),
        ({**NEW_AGENT, "name": ""}, 400, "name"),
        ({**NEW_AGENT, "name": " padded"}, 400, "agent.name"),
        ({**NEW_AGENT, "capabilities": ["Not A Tag"]}, 400, "capabilities"),
        ({**NEW_AGENT, "generation": {"temperature": 9}}, 400, "temperature"),
        ([1, 2, 3], 400, "JSON object"),
    ],
)
async def test_bad_agent_is_refused_naming_the_field_and_nothing_is_stored(
    mesh_slice: Slice, body: object, status: int, fragment: str
) -> None:
    # The slice is the module's: other tests' agents are in it, so nothing stored means no new row.
    before = await _stored_agents(mesh_slice)
    async with mesh_slice.client() as client:
        response = await client.post("/v1/agents", json=body)
    assert response.status_code == status, response.text
    error = response.json()
    assert set(error) == {"code", "message", "request_id"}
    assert fragment in error["message"]
    assert error["request_id"] == response.headers["x-request-id"]
    assert await _stored_agents(mesh_slice) == before


async def test_missing_and_malformed_ids(mesh_slice: Slice) -> None:
    async with mesh_slice.client() as client:
        missing = await client.get(f"/v1/agents/{uuid.uuid4()}")
        malformed = await client.get("/v1/agents/not-a-uuid")
        unrouted = await client.get("/v1/nothing-here")
    assert missing.status_code == 404
    assert missing.json()["code"] == "NOT_FOUND"
    assert malformed.status_code == 400
    assert "id" in malformed.json()["message"]
    assert unrouted.status_code == 404


async def test_body_limits_and_media_type(mesh_slice: Slice) -> None:
    async with mesh_slice.client() as client:
        too_long = {**NEW_AGENT, "systemPrompt": "x" * 2_000_000}
        huge = await client.post("/v1/agents", json=too_long, headers={"x-request-id": "big-1"})
        text = await client.post("/v1/agents", content=b"name=Ada", headers={"content-type": "text/plain"})
    assert huge.status_code == 413
    assert huge.json()["request_id"] == "big-1"
    assert text.status_code == 415


async def test_openapi_document_describes_the_served_routes(mesh_slice: Slice) -> None:
    async with mesh_slice.client() as client:
        document = (await client.get("/v1/openapi.json")).json()
    assert document["openapi"] == "3.1.0"
    assert set(document["paths"]) >= {"/v1/agents", "/v1/agents/{id}"}
    create = document["paths"]["/v1/agents"]["post"]
    assert set(create["responses"]) >= {"201", "400"}
    agent_schema = document["components"]["schemas"]["macp.conversation.v1.Agent"]
    assert {"name", "provider", "model", "systemPrompt", "capabilities"} <= set(agent_schema["properties"])
    assert agent_schema["additionalProperties"] is False


async def test_list_agents_through_the_mesh_shows_the_tokens_tenant_only(mesh_slice: Slice) -> None:
    async with mesh_slice.client() as client:
        created = (await client.post("/v1/agents", json=NEW_AGENT)).json()
    mine = await mesh_slice.tokens.user_token(mesh_slice.tenant, [service_audience("conversation")])
    other_tenant = await mesh_slice.tokens.tenant()
    theirs = await mesh_slice.tokens.user_token(other_tenant, [service_audience("conversation")])
    async with grpc.aio.insecure_channel(mesh_slice.mesh_address) as channel:
        stub = pb_grpc.ConversationServiceStub(channel)
        listed = await stub.ListAgents(pb.ListAgentsRequest(), timeout=5, metadata=bearer(mine))
        elsewhere = await stub.ListAgents(pb.ListAgentsRequest(), timeout=5, metadata=bearer(theirs))
    assert [agent.id for agent in listed.agents] == [created["id"]]
    assert list(elsewhere.agents) == []


async def _hops_of(slice_: Slice, response: object) -> set[tuple[object, object]]:
    """The (listener, cluster) pairs Envoy logged for a response's request id, once the front hop
    (always the last to finish) is in the log."""
    request_id = response.headers["x-request-id"]  # type: ignore[attr-defined]
    entries = await _log_entries_for(slice_, request_id, 1)
    for _ in range(50):
        if any(e["listener"] == "front" for e in entries):
            break
        await asyncio.sleep(0.1)
        entries = [e for e in _access_log(slice_) if e.get("request_id") == request_id]
    return {(e["listener"], e["upstream_cluster"]) for e in entries}


async def test_a_cached_get_is_answered_at_the_edge_and_never_stale(mesh_slice: Slice) -> None:
    async with mesh_slice.client() as client:
        agent = (await client.post("/v1/agents", json=NEW_AGENT)).json()
        url = f"/v1/agents/{agent['id']}"
        miss = await client.get(url)  # fills the service's cache
        hit = await client.get(url)
        assert hit.status_code == 200, hit.text
        assert hit.json() == miss.json() == agent
        assert hit.headers["etag"] == f'"{agent["etag"]}"'
        assert ("mesh", "conversation") in await _hops_of(mesh_slice, miss)
        # The hit never left the edge: no call to the conversation service was made for it.
        assert await _hops_of(mesh_slice, hit) == {("front", "edge")}

        patched = await client.patch(url, json={"name": "Bea"}, headers={"if-match": f'"{agent["etag"]}"'})
        assert patched.status_code == 200, patched.text
        after = await client.get(url)
        assert after.json() == patched.json()
        assert after.headers["etag"] == f'"{patched.json()["etag"]}"'

        deleted = await client.delete(url, headers={"if-match": f'"{patched.json()["etag"]}"'})
        assert deleted.status_code == 204, deleted.text
        assert (await client.get(url)).status_code == 404

        # A cached entry is served only to a caller holding the read scope, in the entry's tenant.
        kept = (await client.post("/v1/agents", json=NEW_AGENT)).json()
        await client.get(f"/v1/agents/{kept['id']}")
        assert (await client.get(f"/v1/agents/{kept['id']}")).status_code == 200
    writer = await mesh_slice.tokens.user_token(
        mesh_slice.tenant, [EDGE_AUDIENCE], scope="conversations:write"
    )
    async with mesh_slice.client(writer) as client:
        refused = await client.get(f"/v1/agents/{kept['id']}")
    assert refused.status_code == 403, refused.text
    other = await mesh_slice.tokens.tenant()
    stranger = await mesh_slice.tokens.user_token(other, [EDGE_AUDIENCE])
    async with mesh_slice.client(stranger) as client:
        assert (await client.get(f"/v1/agents/{kept['id']}")).status_code == 404
