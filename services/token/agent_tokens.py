"""Agent tokens: the identity a MACP agent carries (seed 000's InternalAgentToken, as a signed JWT).

Only an internal client holding `macp:agent-token` mints them (the bearer guard checks that); the
token's scopes are within that client's registered scopes, privileged ones excluded.
"""

from __future__ import annotations

from macp.token.v1 import token_service_pb2 as pb

from services.runtime import audit
from services.runtime.audit import Who
from services.token import audiences, scopes
from services.token.claims import AccessClaims, Identity
from services.token.clients import Clients
from services.token.minting import Audit, Minted, Minter, who_of
from services.token.oauth import oauth_error
from services.token.settings import AGENT_TOKEN_DEFAULT_SECONDS
from services.token.store.directory import DirectoryStore


class AgentTokens:
    def __init__(self, directory: DirectoryStore, clients: Clients, minter: Minter) -> None:
        self._directory = directory
        self._clients = clients
        self._minter = minter

    async def issue(self, caller: AccessClaims, request: pb.IssueAgentTokenRequest) -> Minted:
        client = await self._directory.client(caller.identity.client_id)
        if client is None:
            raise oauth_error("invalid_client", f"client {caller.identity.client_id} no longer exists")
        tenant = await self._clients.tenant(request.tenant_id)
        identity = Identity(
            sub=request.agent_id,
            client_id=client.client_id,
            client_class=client.client_class,
            tenant_id=tenant.tenant_id,
            tier=tenant.tier,
            agent_id=request.agent_id,
            owner_id=request.owner_id,
            capabilities=tuple(request.capabilities),
        )
        lifetime = request.ttl.seconds if request.HasField("ttl") else AGENT_TOKEN_DEFAULT_SECONDS
        # Audited in the agent's tenant (its admins see which agent tokens exist), as done by the
        # internal service that asked for it.
        asker = who_of(caller.identity)
        return await self._minter.mint(
            identity,
            audiences=audiences.resolve(request.audience, request.resource),
            scopes=scopes.narrow(scopes.parse(request.scope), scopes.unprivileged(client.scopes)),
            lifetime_seconds=lifetime,
            audit=Audit(
                audit.TOKEN_ISSUE,
                {"grant_type": "agent_token", "agent_id": request.agent_id, "owner_id": request.owner_id},
                Who(tenant.tenant_id, asker.subject, asker.actor_chain, asker.client_id),
            ),
        )
