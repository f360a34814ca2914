"""The services a round calls, on whose behalf, and with which tokens.

Every call is made on behalf of the user whose message started the round (services/runtime/
principal.py: the server sets the caller for a call, the driver for a queued round): the mesh
channel's interceptor exchanges their token (audience `urn:macp:service:orchestrator`) for the
callee's audience with the orchestrator's own internal client (services/runtime/auth/
caller_tokens.py). So each service sees the user's tenant and identity, with the orchestrator in
`act`. Calls to the agent proxy go one step further, as seed 004 describes: made inside
`acting_agent(acting(agent))`, they carry an agent token as the exchange's actor (subject = the
user, actor = the agent), so the provider call is attributable to both. `agents:generate` and
`usage:write` are service-held scopes (services/token/scopes.py): the orchestrator's client adds
them in the exchange; users never hold them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import redis.asyncio as aioredis
from google.protobuf.message import Message
from macp.agent_proxy.v1 import agent_proxy_service_pb2_grpc as agent_proxy_grpc
from macp.conversation.v1 import conversation_service_pb2 as conversation_pb
from macp.conversation.v1 import conversation_service_pb2_grpc as conversation_grpc
from macp.metering.v1 import metering_service_pb2_grpc as metering_grpc
from macp.token.v1 import token_service_pb2 as token_pb
from macp.token.v1 import token_service_pb2_grpc as token_grpc
from macp.tool_gateway.v1 import tool_gateway_service_pb2_grpc as tool_gateway_grpc

from services.orchestrator.settings import OrchestratorSettings
from services.runtime.auth.caller_tokens import ActingAgent, CallerTokens
from services.runtime.auth.settings import USER_SCOPES, service_audience
from services.runtime.auth.token_client import (
    CLIENT_CREDENTIALS_GRANT,
    EXCHANGE_GRANT,
    ClientCredentials,
    ClientRegistration,
    TokenClient,
)
from services.runtime.mesh import open_mesh_channel
from services.runtime.principal import Caller, current_principal
from services.runtime.resource_cache import AGENT, CONVERSATION, read_cached

M = TypeVar("M", bound=Message)

GENERATE_SCOPE = "agents:generate"
USAGE_WRITE_SCOPE = "usage:write"
AGENT_TOKEN_SCOPE = "macp:agent-token"
# What an agent acting in a turn may do: generate, and use its tools through the tool gateway (which
# reads the agent's allow-list on its behalf).
AGENT_SCOPES = " ".join((GENERATE_SCOPE, "tools:read", "tools:call", "conversations:read"))
TOKEN_AUDIENCE = service_audience("token")
AGENT_PROXY_AUDIENCE = service_audience("agent-proxy")

REGISTRATION = ClientRegistration(
    name="macp orchestrator",
    scopes=(*USER_SCOPES, GENERATE_SCOPE, USAGE_WRITE_SCOPE, AGENT_TOKEN_SCOPE),
    grant_types=(EXCHANGE_GRANT, CLIENT_CREDENTIALS_GRANT),
)


class AgentTokenMinter:
    """The token of an agent acting for a caller, minted by the orchestrator's own client with
    `macp:agent-token` (`AgentTokens`, services/runtime/auth/caller_tokens.py)."""

    def __init__(self, tokens: TokenClient) -> None:
        self._tokens = tokens

    async def agent_token(self, caller: Caller, agent: ActingAgent) -> str:
        bearer = await self._tokens.own_token(TOKEN_AUDIENCE, AGENT_TOKEN_SCOPE)
        return await self._tokens.agent_token(
            token_pb.IssueAgentTokenRequest(
                agent_id=agent.agent_id,
                owner_id=agent.owner_id or caller.principal.user_id or caller.principal.tenant_id,
                tenant_id=caller.principal.tenant_id,
                capabilities=list(agent.capabilities),
                scope=AGENT_SCOPES,
                audience=[AGENT_PROXY_AUDIENCE],
            ),
            bearer,
        )


def acting(agent: conversation_pb.Agent) -> ActingAgent:
    """`agent` as the actor of the calls made for its turn."""
    return ActingAgent(agent.id, agent.owner_id, tuple(agent.capabilities))


class Downstream:
    """Stubs of the conversation, agent-proxy and metering services over one mesh channel whose
    calls carry the current caller's token for each (services/runtime/principal.py), and the
    conversation service's read cache."""

    def __init__(
        self,
        mesh_address: str,
        settings: OrchestratorSettings,
        cache: tuple[aioredis.Redis, str] | None = None,
    ) -> None:
        """`cache`: the Redis client and key prefix of the conversation service's read cache, which
        GetConversation and GetAgent read first (services/runtime/resource_cache.py)."""
        self.timeout = settings.rpc_timeout_seconds
        self._cache = cache
        credentials = None
        if settings.client_id and settings.client_secret:
            credentials = ClientCredentials(settings.client_id, settings.client_secret)
        # The orchestrator's own client talks to the token service on a channel without caller tokens.
        self._tokens_channel = open_mesh_channel(mesh_address)
        tokens = TokenClient(
            token_grpc.TokenServiceStub(self._tokens_channel),
            registration=REGISTRATION,
            credentials=credentials,
            initial_access_token=settings.initial_access_token,
            timeout=self.timeout,
        )
        self._channel = open_mesh_channel(mesh_address, CallerTokens(tokens, AgentTokenMinter(tokens)))
        self.conversation = conversation_grpc.ConversationServiceStub(self._channel)
        self.agent_proxy = agent_proxy_grpc.AgentProxyServiceStub(self._channel)
        self.metering = metering_grpc.MeteringServiceStub(self._channel)
        self.tool_gateway = tool_gateway_grpc.ToolGatewayServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()
        await self._tokens_channel.close()

    async def get_conversation(self, conversation_id: str) -> conversation_pb.Conversation:
        """The conversation as the current caller may see it: from the cache on a hit, else from the service
        (which answers NOT_FOUND for another tenant's)."""
        hit = await self._cached(CONVERSATION, conversation_id, conversation_pb.Conversation.FromString)
        if hit is not None:
            return hit
        reply = await self.conversation.GetConversation(
            conversation_pb.GetConversationRequest(id=conversation_id),
            timeout=self.timeout,
        )
        return reply.conversation

    async def get_agent(self, agent_id: str) -> conversation_pb.Agent:
        """The agent as the current caller may see it: from the cache on a hit, else from the service."""
        hit = await self._cached(AGENT, agent_id, conversation_pb.Agent.FromString)
        if hit is not None:
            return hit
        reply = await self.conversation.GetAgent(
            conversation_pb.GetAgentRequest(id=agent_id),
            timeout=self.timeout,
        )
        return reply.agent

    async def _cached(self, kind: str, resource_id: str, parse: Callable[[bytes], M]) -> M | None:
        if self._cache is None:
            return None
        redis, key_prefix = self._cache
        principal = current_principal()
        return await read_cached(
            redis,
            key_prefix,
            kind,
            tenant_id=principal.tenant_id,
            scopes=principal.scopes,
            resource_id=resource_id,
            parse=parse,
        )
