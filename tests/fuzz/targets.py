"""The two tenants of the fuzz run: the attacker, whose own resources the hostile requests aim at
(so they reach past the edge into the services and Postgres), and the bystander, whose ordinary
traffic must not notice the attack."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from services.runtime.auth.settings import EDGE_AUDIENCE
from tests.fuzz import http_cases
from tests.tokens import PASSWORD, Tenant
from tests.world import World


@dataclass(frozen=True)
class Resources:
    """One tenant's agent, conversation (active, one agent turn per message) and archive."""

    tenant: Tenant
    token: str
    agent: str
    conversation: str
    archive: str

    def client(self, base_url: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=base_url, timeout=15, headers={"authorization": f"Bearer {self.token}"}
        )


@dataclass(frozen=True)
class Attacker:
    resources: Resources
    # A token of the attacker's own, for the revocation and introspection forms to name.
    spare_token: str
    initial_access_token: str

    def slots(self) -> dict[str, str]:
        """What replaces each slot of a case's path and body."""
        tenant = self.resources.tenant
        return {
            http_cases.AGENT: self.resources.agent,
            http_cases.CONVERSATION: self.resources.conversation,
            http_cases.ARCHIVE: self.resources.archive,
            http_cases.CLIENT_ID: tenant.client.client_id,
            http_cases.CLIENT_SECRET: tenant.client.client_secret,
            http_cases.USERNAME: tenant.username,
            http_cases.PASSWORD: PASSWORD.replace(" ", "+"),
            http_cases.TOKEN: self.spare_token,
        }


async def resources_of(world: World, tenant: Tenant, label: str) -> Resources:
    """An agent, a conversation and an archive of `tenant`, made through the front door."""
    token = await world.tokens.user_token(tenant, [EDGE_AUDIENCE])
    async with httpx.AsyncClient(
        base_url=world.front_url, timeout=15, headers={"authorization": f"Bearer {token}"}
    ) as client:
        agent = await client.post(
            "/v1/agents", json={"name": f"{label} agent", "provider": "local", "model": "echo-1"}
        )
        assert agent.status_code == 201, agent.text
        draft = {
            "title": f"{label} conversation",
            "participantAgentIds": [agent.json()["id"]],
            "turnPolicy": "TURN_POLICY_ROUND_ROBIN",
            "limits": {"maxAgentTurnsPerUserMessage": 1},
        }
        conversation = await client.post("/v1/conversations", json=draft)
        assert conversation.status_code == 201, conversation.text
        conversation_id = conversation.json()["id"]
        archived = await client.post(f"/v1/conversations/{conversation_id}/archive", json={"close": False})
        assert archived.status_code == 201, archived.text
    return Resources(tenant, token, agent.json()["id"], conversation_id, archived.json()["archive"]["id"])


async def attacker_of(world: World) -> Attacker:
    resources = await resources_of(world, world.tenant, "attacker")
    return Attacker(
        resources=resources,
        spare_token=await world.tokens.user_token(world.tenant, [EDGE_AUDIENCE]),
        initial_access_token=world.environ["MACP_TOKEN_INITIAL_ACCESS_TOKEN"],
    )
