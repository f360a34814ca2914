"""The services a round calls, and the tokens it calls them with.

Every call is made on behalf of the user whose message started the round: their token (the one
the orchestrator received, audience `urn:macp:service:orchestrator`) is exchanged for the callee's
audience by the orchestrator's own internal client. So each service sees the user's tenant and
identity, with the orchestrator in `act`. Calls to the agent proxy go one step further, as seed
004 describes: the agent gets an agent token and the exchange puts it in `act` (subject = the user,
actor = the agent), so the provider call is attributable to both. `agents:generate` and
`usage:write` are service-held scopes (services/token/scopes.py): the orchestrator's client adds
them in the exchange; users never hold them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc
import redis.asyncio as aioredis
from google.protobuf.message import Message
from macp.agent_proxy.v1 import agent_proxy_service_pb2_grpc as agent_proxy_grpc
from macp.conversation.v1 import conversation_service_pb2 as conversation_pb
from macp.conversation.v1 import conversation_service_pb2_grpc as conversation_grpc
from macp.metering.v1 import metering_service_pb2_grpc as metering_grpc
from macp.token.v1 import token_service_pb2 as token_pb
from macp.token.v1 import token_service_pb2_grpc as token_grpc

from services.orchestrator.settings import OrchestratorSettings
from services.runtime.auth.settings import USER_SCOPES, service_audience
from services.runtime.auth.token_client import (
    CLIENT_CREDENTIALS_GRANT,
    EXCHANGE_GRANT,
    ClientCredentials,
    ClientRegistration,
    Metadata,
    TokenClient,
)
from services.runtime.context import REQUEST_ID_HEADER, current_request_id
from services.runtime.principal import Principal
from services.runtime.resource_cache import AGENT, CONVERSATION, read_cached

M = TypeVar("M", bound=Message)

GENERATE_SCOPE = "agents:generate"
USAGE_WRITE_SCOPE = "usage:write"
AGENT_TOKEN_SCOPE = "macp:agent-token"
TOKEN_AUDIENCE = service_audience("token")
AGENT_PROXY_AUDIENCE = service_audience("agent-proxy")
CONVERSATION_AUDIENCE = service_audience("conversation")
METERING_AUDIENCE = service_audience("metering")

REGISTRATION = ClientRegistration(
    name="macp orchestrator",
    scopes=(*USER_SCOPES, GENERATE_SCOPE, USAGE_WRITE_SCOPE, AGENT_TOKEN_SCOPE),
    grant_types=(EXCHANGE_GRANT, CLIENT_CREDENTIALS_GRANT),
)


@dataclass(frozen=True)
class Caller:
    """The user a round works for: the token their call carried, and who it names."""

    token: str
    principal: Principal


def request_metadata() -> Metadata:
    return ((REQUEST_ID_HEADER, current_request_id() or ""),)


class Downstream:
    """Stubs of the conversation, agent-proxy, metering and token services over one mesh channel,
    and the caller's tokens for each."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        settings: OrchestratorSettings,
        cache: tuple[aioredis.Redis, str] | None = None,
    ) -> None:
        """`cache`: the Redis client and key prefix of the conversation service's read cache, which
        GetConversation and GetAgent read first (services/runtime/resource_cache.py)."""
        self.timeout = settings.rpc_timeout_seconds
        self._cache = cache
        self.conversation = conversation_grpc.ConversationServiceStub(channel)
        self.agent_proxy = agent_proxy_grpc.AgentProxyServiceStub(channel)
        self.metering = metering_grpc.MeteringServiceStub(channel)
        token = token_grpc.TokenServiceStub(channel)
        credentials = None
        if settings.client_id and settings.client_secret:
            credentials = ClientCredentials(settings.client_id, settings.client_secret)
        self.tokens = TokenClient(
            token,
            registration=REGISTRATION,
            credentials=credentials,
            initial_access_token=settings.initial_access_token,
            timeout=self.timeout,
        )

    async def _as_caller(self, caller: Caller, audience: str) -> Metadata:
        metadata = request_metadata()
        exchanged = await self.tokens.exchange(caller.token, caller.token, audience, metadata)
        return (*metadata, ("authorization", f"Bearer {exchanged}"))

    async def for_conversation(self, caller: Caller) -> Metadata:
        return await self._as_caller(caller, CONVERSATION_AUDIENCE)

    async def get_conversation(self, caller: Caller, conversation_id: str) -> conversation_pb.Conversation:
        """The conversation as `caller` may see it: from the cache on a hit, else from the service
        (which answers NOT_FOUND for another tenant's)."""
        hit = await self._cached(
            caller, CONVERSATION, conversation_id, conversation_pb.Conversation.FromString
        )
        if hit is not None:
            return hit
        reply = await self.conversation.GetConversation(
            conversation_pb.GetConversationRequest(id=conversation_id),
            timeout=self.timeout,
            metadata=await self.for_conversation(caller),
        )
        return reply.conversation

    async def get_agent(self, caller: Caller, agent_id: str) -> conversation_pb.Agent:
        """The agent as `caller` may see it: from the cache on a hit, else from the service."""
        hit = await self._cached(caller, AGENT, agent_id, conversation_pb.Agent.FromString)
        if hit is not None:
            return hit
        reply = await self.conversation.GetAgent(
            conversation_pb.GetAgentRequest(id=agent_id),
            timeout=self.timeout,
            metadata=await self.for_conversation(caller),
        )
        return reply.agent

    async def _cached(
        self, caller: Caller, kind: str, resource_id: str, parse: Callable[[bytes], M]
    ) -> M | None:
        if self._cache is None:
            return None
        redis, key_prefix = self._cache
        return await read_cached(
            redis,
            key_prefix,
            kind,
            tenant_id=caller.principal.tenant_id,
            scopes=caller.principal.scopes,
            resource_id=resource_id,
            parse=parse,
        )

    async def for_metering(self, caller: Caller) -> Metadata:
        return await self._as_caller(caller, METERING_AUDIENCE)

    async def for_agent(self, caller: Caller, agent: conversation_pb.Agent) -> Metadata:
        """Metadata for the agent proxy: the caller's token with `agent` as its actor."""
        metadata = request_metadata()
        bearer = await self.tokens.own_token(TOKEN_AUDIENCE, AGENT_TOKEN_SCOPE, metadata)
        agent_token = await self.tokens.agent_token(
            token_pb.IssueAgentTokenRequest(
                agent_id=agent.id,
                owner_id=agent.owner_id or caller.principal.user_id or caller.principal.tenant_id,
                tenant_id=caller.principal.tenant_id,
                capabilities=list(agent.capabilities),
                scope=GENERATE_SCOPE,
                audience=[AGENT_PROXY_AUDIENCE],
            ),
            bearer,
            metadata,
        )
        exchanged = await self.tokens.exchange(
            (caller.token, agent.id), caller.token, AGENT_PROXY_AUDIENCE, metadata, actor_token=agent_token
        )
        return (*metadata, ("authorization", f"Bearer {exchanged}"))
