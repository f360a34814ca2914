"""Hostile input through the whole mesh (Envoy, the edge, the conversation service, Postgres): text
Postgres cannot store is refused at the contract with the field named, and a deeply nested body is
refused at the edge, while another tenant's requests go on undisturbed."""

from __future__ import annotations

import uuid

import httpx
import pytest

from services.runtime.auth.settings import EDGE_AUDIENCE
from tests.e2e.conftest import Slice
from tests.e2e.test_conversation_routes import AGENT, error_of, ok, quoted

pytestmark = pytest.mark.integration

NUL = "\u0000"
NOT_STORABLE = "must not contain NUL (U+0000)"


async def _another_tenant_is_served(client: httpx.AsyncClient) -> None:
    ok(await client.get("/v1/agents"), 200)
    ok(await client.get("/v1/conversations"), 200)


async def test_nul_is_refused_by_field_and_a_deep_body_by_the_edge_while_another_tenant_is_served(
    mesh_slice: Slice,
) -> None:
    other = await mesh_slice.tokens.tenant()
    other_token = await mesh_slice.tokens.user_token(other, [EDGE_AUDIENCE])
    async with mesh_slice.client() as client, mesh_slice.client(other_token) as bystander:
        agent = ok(await client.post("/v1/agents", json=AGENT), 201)
        conversation = ok(
            await client.post(
                "/v1/conversations",
                json={"participantAgentIds": [agent["id"]], "turnPolicy": "TURN_POLICY_ROUND_ROBIN"},
            ),
            201,
        )
        base = f"/v1/conversations/{conversation['id']}"
        cases = {
            "name": client.post("/v1/agents", json={**AGENT, "name": f"Ad{NUL}a"}),
            "system_prompt": client.post("/v1/agents", json={**AGENT, "systemPrompt": f"be{NUL}kind"}),
            "title": client.post(
                "/v1/conversations",
                json={
                    "participantAgentIds": [agent["id"]],
                    "turnPolicy": "TURN_POLICY_ROUND_ROBIN",
                    "title": f"plans{NUL}",
                },
            ),
            "system_prompt ": client.patch(
                f"/v1/agents/{agent['id']}", json={"systemPrompt": NUL}, headers=quoted(agent["etag"])
            ),
            "title ": client.patch(base, json={"title": NUL}, headers=quoted(conversation["etag"])),
            "text": client.post(f"{base}/messages", json={"id": str(uuid.uuid4()), "text": f"hi{NUL}"}),
        }
        for field, call in cases.items():
            message = error_of(await call, 400, "INVALID_ARGUMENT")
            assert f"{field.strip()}: {NOT_STORABLE}" in message, message
            await _another_tenant_is_served(bystander)
        deep = b'{"name":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        for _ in range(3):
            response = await client.post(
                "/v1/agents", content=deep, headers={"content-type": "application/json"}
            )
            assert "nests arrays and objects deeper than" in error_of(response, 400, "INVALID_JSON")
            await _another_tenant_is_served(bystander)
        # Nothing was written: the agent and conversation are as they were, without messages.
        assert ok(await client.get(f"/v1/agents/{agent['id']}"), 200)["etag"] == agent["etag"]
        assert ok(await client.get(base), 200)["etag"] == conversation["etag"]
        assert ok(await client.get(f"{base}/messages"), 200).get("messages", []) == []
        assert len(ok(await client.get("/v1/agents"), 200)["agents"]) == 1
