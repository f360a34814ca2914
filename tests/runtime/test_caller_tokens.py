"""The mesh channel's caller tokens (services/runtime/auth/caller_tokens.py), over real sockets: a
grpc.aio server plays the token service (answering exchanges with tokens that say what they were
made from) and a callee that records the `authorization` each call carried."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import pytest
from macp.common.v1 import principal_pb2
from macp.conversation.v1 import conversation_service_pb2 as conversation_pb
from macp.conversation.v1 import conversation_service_pb2_grpc as conversation_grpc
from macp.metering.v1 import metering_service_pb2 as metering_pb
from macp.metering.v1 import metering_service_pb2_grpc as metering_grpc
from macp.token.v1 import token_service_pb2 as token_pb
from macp.token.v1 import token_service_pb2_grpc as token_grpc

from services.runtime.auth.caller_tokens import (
    ActingAgent,
    CallerTokens,
    acting_agent,
    audience_of,
)
from services.runtime.auth.settings import service_audience
from services.runtime.auth.token_client import ClientCredentials, ClientRegistration, TokenClient
from services.runtime.context import RpcContext
from services.runtime.mesh import open_mesh_channel
from services.runtime.principal import Caller, acting_for
from services.runtime.registry import SERVICES

CALLER = Caller("user-token", principal_pb2.Principal(tenant_id="acme", user_id="ada", token_id="jti-1"))
AGENT = ActingAgent("agent-7", "ada", ("search",))


@dataclass
class Seen:
    exchanges: list[token_pb.ExchangeTokenRequest] = field(default_factory=list)
    authorizations: list[str] = field(default_factory=list)
    fail_exchange: grpc.StatusCode | None = None


class _Tokens(token_grpc.TokenServiceServicer):
    def __init__(self, seen: Seen) -> None:
        self._seen = seen

    async def ExchangeToken(
        self, request: token_pb.ExchangeTokenRequest, context: RpcContext
    ) -> token_pb.ExchangeTokenResponse:
        self._seen.exchanges.append(request)
        if self._seen.fail_exchange is not None:
            await context.abort(self._seen.fail_exchange, "invalid_grant: the subject token is revoked")
        actor = f" acted by {request.actor_token}" if request.actor_token else ""
        return token_pb.ExchangeTokenResponse(
            access_token=f"{request.subject_token} for {request.audience[0]}{actor}", expires_in=300
        )

    async def IssueToken(
        self, request: token_pb.IssueTokenRequest, context: RpcContext
    ) -> token_pb.IssueTokenResponse:
        return token_pb.IssueTokenResponse(access_token=f"own {request.scope}", expires_in=300)

    async def IssueAgentToken(
        self, request: token_pb.IssueAgentTokenRequest, context: RpcContext
    ) -> token_pb.IssueAgentTokenResponse:
        return token_pb.IssueAgentTokenResponse(access_token=f"agent {request.agent_id}", expires_in=300)


def _authorization(context: RpcContext) -> str:
    value = dict(context.invocation_metadata() or ()).get("authorization", "")
    return value if isinstance(value, str) else value.decode()


class _Conversation(conversation_grpc.ConversationServiceServicer):
    def __init__(self, seen: Seen) -> None:
        self._seen = seen

    async def GetAgent(
        self, request: conversation_pb.GetAgentRequest, context: RpcContext
    ) -> conversation_pb.GetAgentResponse:
        self._seen.authorizations.append(_authorization(context))
        return conversation_pb.GetAgentResponse(agent=conversation_pb.Agent(id=request.id))


class _Metering(metering_grpc.MeteringServiceServicer):
    def __init__(self, seen: Seen) -> None:
        self._seen = seen

    async def Release(
        self, request: metering_pb.ReleaseRequest, context: RpcContext
    ) -> metering_pb.ReleaseResponse:
        self._seen.authorizations.append(_authorization(context))
        return metering_pb.ReleaseResponse()


class _AgentTokens:
    def __init__(self, client: TokenClient) -> None:
        self._client = client

    async def agent_token(self, caller: Caller, agent: ActingAgent) -> str:
        bearer = await self._client.own_token(service_audience("token"), "macp:agent-token")
        return await self._client.agent_token(
            token_pb.IssueAgentTokenRequest(agent_id=agent.agent_id, tenant_id=caller.principal.tenant_id),
            bearer,
        )


@dataclass
class Mesh:
    seen: Seen
    conversation: conversation_grpc.ConversationServiceStub
    metering: metering_grpc.MeteringServiceStub


@pytest.fixture
async def mesh() -> AsyncIterator[Mesh]:
    seen = Seen()
    server = grpc.aio.server()
    # Each plays only the methods these calls reach; the others answer UNIMPLEMENTED.
    token_grpc.add_TokenServiceServicer_to_server(_Tokens(seen), server)  # type: ignore[abstract]
    conversation_grpc.add_ConversationServiceServicer_to_server(_Conversation(seen), server)  # type: ignore[abstract]
    metering_grpc.add_MeteringServiceServicer_to_server(_Metering(seen), server)  # type: ignore[abstract]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    address = f"127.0.0.1:{port}"
    tokens_channel = open_mesh_channel(address)
    client = TokenClient(
        token_grpc.TokenServiceStub(tokens_channel),
        registration=ClientRegistration(name="test", scopes=()),
        credentials=ClientCredentials("test-client", "test-secret"),
        initial_access_token=None,
        timeout=5,
    )
    channel = open_mesh_channel(address, CallerTokens(client, _AgentTokens(client)))
    try:
        yield Mesh(
            seen,
            conversation_grpc.ConversationServiceStub(channel),
            metering_grpc.MeteringServiceStub(channel),
        )
    finally:
        await channel.close()
        await tokens_channel.close()
        await server.stop(None)


def test_every_service_of_the_registry_has_its_audience() -> None:
    for spec in SERVICES:
        for grpc_service in spec.grpc_services:
            assert audience_of(f"/{grpc_service}/AnyMethod") == service_audience(spec.name)
    assert audience_of("/grpc.health.v1.Health/Check") is None


async def test_a_call_for_a_caller_carries_their_token_exchanged_for_the_callee_once(mesh: Mesh) -> None:
    with acting_for(CALLER):
        await mesh.conversation.GetAgent(conversation_pb.GetAgentRequest(id="a1"), timeout=5)
        await mesh.conversation.GetAgent(conversation_pb.GetAgentRequest(id="a2"), timeout=5)
        await mesh.metering.Release(metering_pb.ReleaseRequest(reservation_id="r1"), timeout=5)
    assert mesh.seen.authorizations == [
        "Bearer user-token for urn:macp:service:conversation",
        "Bearer user-token for urn:macp:service:conversation",
        "Bearer user-token for urn:macp:service:metering",
    ]
    # One exchange per callee (the second GetAgent read the cache), by the service's own client.
    assert [(e.audience[0], e.client_id) for e in mesh.seen.exchanges] == [
        ("urn:macp:service:conversation", "test-client"),
        ("urn:macp:service:metering", "test-client"),
    ]


async def test_a_call_with_no_caller_or_its_own_authorization_goes_as_it_is(mesh: Mesh) -> None:
    await mesh.conversation.GetAgent(conversation_pb.GetAgentRequest(id="a1"), timeout=5)
    with acting_for(CALLER):
        await mesh.conversation.GetAgent(
            conversation_pb.GetAgentRequest(id="a1"), timeout=5, metadata=(("authorization", "Bearer own"),)
        )
    assert mesh.seen.authorizations == ["", "Bearer own"]
    assert mesh.seen.exchanges == []


async def test_a_call_inside_acting_agent_carries_the_agent_as_the_actor(mesh: Mesh) -> None:
    with acting_for(CALLER):
        with acting_agent(AGENT):
            await mesh.conversation.GetAgent(conversation_pb.GetAgentRequest(id="a1"), timeout=5)
        await mesh.conversation.GetAgent(conversation_pb.GetAgentRequest(id="a1"), timeout=5)
    assert mesh.seen.authorizations == [
        "Bearer user-token for urn:macp:service:conversation acted by agent agent-7",
        "Bearer user-token for urn:macp:service:conversation",
    ]


async def test_a_failed_exchange_fails_the_call_saying_so(mesh: Mesh) -> None:
    mesh.seen.fail_exchange = grpc.StatusCode.PERMISSION_DENIED
    with acting_for(CALLER), pytest.raises(grpc.aio.AioRpcError) as failed:
        await mesh.conversation.GetAgent(conversation_pb.GetAgentRequest(id="a1"), timeout=5)
    assert failed.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert failed.value.details() == (
        "exchanging the caller's token for urn:macp:service:conversation failed: "
        "invalid_grant: the subject token is revoked"
    )
    assert mesh.seen.authorizations == []  # the callee was never called
