"""Wiring of the tool gateway: its registry entry, its start hook, its migrations, its scopes.

Scopes: every call needs a token for `urn:macp:service:tool-gateway`; registering and removing
servers needs `tools:admin`, reading them and the catalogue `tools:read`, calling a tool
`tools:call`.

The gateway holds `usage:write` too, a service-held scope (services/token/scopes.py): its internal
client adds it when it exchanges a caller's token for metering, to hold and settle the caller's
tool calls (call_metering.py); callers never hold it.

`start` builds the domain on the pool and adds the servicer; beside the RPCs runs the usage outbox
(the TOOL_CALL events on their way to Kafka), stopped after the server has drained.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from macp.conversation.v1 import conversation_service_pb2_grpc as conversation_grpc
from macp.metering.v1 import metering_service_pb2_grpc as metering_grpc
from macp.token.v1 import token_service_pb2_grpc as token_grpc
from macp.tool_gateway.v1 import tool_gateway_service_pb2 as pb
from macp.tool_gateway.v1 import tool_gateway_service_pb2_grpc as pb_grpc

from services.runtime.auth.caller_tokens import CallerTokens
from services.runtime.auth.settings import USER_SCOPES
from services.runtime.auth.token_client import (
    CLIENT_CREDENTIALS_GRANT,
    EXCHANGE_GRANT,
    ClientCredentials,
    ClientRegistration,
    TokenClient,
)
from services.runtime.mesh import open_mesh_channel
from services.runtime.ratelimit import RedisLimiter
from services.runtime.registry import service
from services.runtime.server import ServiceContext, ServiceDefinition
from services.runtime.settings import CommonSettings
from services.runtime.usage_publisher import UsagePublisher, outbox_key
from services.tool_gateway.agent_tools import AgentTools
from services.tool_gateway.call_limits import CallLimits
from services.tool_gateway.call_metering import CallMetering
from services.tool_gateway.catalogue import Catalogue, ToolLists
from services.tool_gateway.client_credentials import ClientCredentialsTokens
from services.tool_gateway.guards import ServerGuards
from services.tool_gateway.mcp_endpoint import mcp_face
from services.tool_gateway.server_store import ServerStore
from services.tool_gateway.servers import ToolServers
from services.tool_gateway.servicer import ToolGatewayServicer
from services.tool_gateway.settings import ToolGatewaySettings
from services.tool_gateway.tool_calls import ToolCalls
from services.tool_gateway.upstream import UpstreamHttp
from services.tool_gateway.upstream_secrets import UpstreamSecrets
from services.tool_gateway.upstream_tokens import UpstreamTokens

SPEC = service("tool-gateway")
USAGE_WRITE_SCOPE = "usage:write"
USAGE_SOURCE = "/macp/tool-gateway"
REGISTRATION = ClientRegistration(
    name="macp tool gateway",
    scopes=(*USER_SCOPES, USAGE_WRITE_SCOPE),
    grant_types=(EXCHANGE_GRANT, CLIENT_CREDENTIALS_GRANT),
)
READ_SCOPE = "tools:read"
CALL_SCOPE = "tools:call"
ADMIN_SCOPE = "tools:admin"


@asynccontextmanager
async def start(context: ServiceContext) -> AsyncIterator[None]:
    settings = ToolGatewaySettings.from_env(context.env)
    db = context.resources.require_db()
    store = ServerStore(db)
    # Refuses to start with a sealing key that does not open the stored credentials.
    secrets = UpstreamSecrets(store, settings.sealing_key)
    await secrets.check()
    # One breaker and one in-flight count per upstream, shared by listing and calling.
    guards = ServerGuards(settings.breaker, settings.server_concurrency)
    # The gateway's own client gets tokens on a mesh channel of its own (no caller token); calls to
    # the conversation service (an agent's allow-list) go on one that carries the caller's.
    mesh_address = CommonSettings.from_env(context.env).mesh_address
    channel = open_mesh_channel(mesh_address)
    client = TokenClient(
        token_grpc.TokenServiceStub(channel),
        registration=REGISTRATION,
        credentials=_credentials(settings),
        initial_access_token=settings.initial_access_token,
        timeout=settings.upstream.timeout_seconds,
    )
    tokens = UpstreamTokens(client, secrets, ClientCredentialsTokens(settings.upstream.timeout_seconds))
    for_callers = open_mesh_channel(mesh_address, CallerTokens(client))
    agent_tools = AgentTools(
        conversation_grpc.ConversationServiceStub(for_callers), settings.upstream.timeout_seconds
    )
    # A server's live sessions hear it say its tool list changed; the catalogue then lists it afresh.
    lists = ToolLists(settings.catalogue_seconds)
    http = UpstreamHttp(settings.upstream, settings.sessions, on_tools_changed=lists.changed)
    publisher = _usage_publisher(context)
    metering = CallMetering(
        metering_grpc.MeteringServiceStub(for_callers),
        publisher.publish,
        upstream_timeout_seconds=settings.upstream.timeout_seconds,
        rpc_timeout_seconds=settings.upstream.timeout_seconds,
        holds=settings.quota_holds,
    )
    limits = CallLimits(
        RedisLimiter(context.resources.require_redis(), context.resources.redis_key_prefix),
        settings.tool_rate,
    )
    servicer = ToolGatewayServicer(
        ToolServers(store, secrets),
        store,
        Catalogue(lists, http, guards, tokens),
        ToolCalls(store, db, http, guards, tokens, limits, metering),
        agent_tools,
        settings.max_servers,
    )
    pb_grpc.add_ToolGatewayServiceServicer_to_server(servicer, context.server)
    try:
        await publisher.start()
        try:
            async with mcp_face(context, servicer):
                yield
        finally:
            await publisher.stop()
    finally:
        await http.close()
        await for_callers.close()
        await channel.close()


def _usage_publisher(context: ServiceContext) -> UsagePublisher:
    """The TOOL_CALL events' outbox: the agent proxy's, on the same usage topic."""
    resources = context.resources
    kafka = resources.settings.kafka
    if kafka is None or resources.producer is None:
        raise RuntimeError("the tool gateway declares its redis and kafka dependencies in the registry")
    return UsagePublisher(
        resources.require_redis(),
        resources.producer,
        topic=kafka.usage_topic,
        key=outbox_key(resources.redis_key_prefix, kafka.usage_topic),
        source=USAGE_SOURCE,
    )


def _credentials(settings: ToolGatewaySettings) -> ClientCredentials | None:
    if settings.client_id and settings.client_secret:
        return ClientCredentials(settings.client_id, settings.client_secret)
    return None


def method_scopes() -> dict[str, str]:
    """Each method to the scope it needs (see the module docstring)."""
    descriptor = pb.DESCRIPTOR.services_by_name["ToolGatewayService"]

    def scope(name: str) -> str:
        if name == "CallTool":
            return CALL_SCOPE
        return READ_SCOPE if name.startswith(("Get", "List")) else ADMIN_SCOPE

    return {f"/{descriptor.full_name}/{method.name}": scope(method.name) for method in descriptor.methods}


DEFINITION = ServiceDefinition(
    spec=SPEC,
    start=start,
    own_settings=ToolGatewaySettings.from_env,
    migrations_dir=Path(__file__).parent / "migrations",
    method_scopes=method_scopes(),
)
