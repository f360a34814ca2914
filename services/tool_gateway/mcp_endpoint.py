"""The gateway as an MCP server for MCP clients: `/mcp` on Envoy's front listener (Streamable HTTP,
the official SDK's server side), beside the gRPC service in the same process.

`tools/list` is the caller's tenant catalogue and `tools/call` a call of it, through the very
servicer methods ListTools and CallTool run (allow-lists, scopes, guards, limits, audit): the MCP
face is one more thin layer over the same domain. A tool's own failure is a result with `isError`;
what the gateway or an upstream does wrong is an MCP error whose message names the server.

Sessions behind replicas: the transport is stateless (`stateless_http`). A 2025-11-25 client's
`initialize` gets no `Mcp-Session-Id`, so its later requests are each complete in themselves, and a
2026-07-28 client is stateless by design; no process holds anything another needs, and Envoy may
send consecutive requests of one client to any gateway process. (Server-to-client requests, which
need a session, are not used: the gateway asks its MCP clients nothing.)

Tokens: resource_auth.py. The caller is the token's principal, set for the handler's work as for an
RPC (services/runtime/principal.py), so upstream tokens are exchanged from it as for CallTool.
Rate limits: mcp_limits.py, the platform's (the edge's) limits, around the token check.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol, cast

import mcp_types as types
import uvicorn
from google.protobuf import json_format
from macp.tool_gateway.v1 import tool_gateway_service_pb2 as pb
from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.exceptions import MCPError
from mcp_types import INTERNAL_ERROR, INVALID_PARAMS
from prometheus_client import CollectorRegistry, Counter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from services.runtime.auth.authenticator import JwtAuthenticator, jwt_authenticator
from services.runtime.auth.settings import AuthSettings, mcp_resource
from services.runtime.auth.verifier import TokenVerifier
from services.runtime.context import RpcContext
from services.runtime.errors import DomainError, InvalidArgument, NotFound, PermissionDenied
from services.runtime.interceptors import violations_message
from services.runtime.mesh import open_mesh_channel
from services.runtime.principal import Caller, acting_for
from services.runtime.registry import service
from services.runtime.request_limits import RateLimits
from services.runtime.server import ServiceContext
from services.runtime.settings import CommonSettings
from services.tool_gateway.mcp_limits import LimitCallers, LimitSources, mcp_rate_limits
from services.tool_gateway.resource_auth import CALLER_KEY, ProtectedResource, RequireScopes, RequireToken

HEALTH_PATH = "/healthz"
# Longer than Envoy keeps an idle pooled connection (services/stack/envoy_clusters.py), so Envoy,
# not this server, closes it (the edge's reasoning: services/edge/server.py).
KEEP_ALIVE_SECONDS = 75
# The servicer's ListTools and CallTool read nothing of the gRPC context (the caller is the
# context variable's), so the MCP handlers call them without one.
_NO_RPC = cast(RpcContext, None)
# Failures of the request itself (the name, the tenant's servers, an agent's allow-list) are the
# client's to fix; the rest (an upstream down, too slow, over a limit) are the gateway's.
_CLIENT_FAULTS = (InvalidArgument, NotFound, PermissionDenied)


class ToolsServicer(Protocol):
    """What the MCP face calls: the gRPC servicer's catalogue and call methods."""

    async def ListTools(self, request: pb.ListToolsRequest, context: RpcContext) -> pb.ListToolsResponse: ...

    async def CallTool(self, request: pb.CallToolRequest, context: RpcContext) -> pb.CallToolResponse: ...


def _caller(ctx: ServerRequestContext[Any, Any]) -> Caller:
    request = ctx.request
    caller = request.scope.get(CALLER_KEY) if isinstance(request, Request) else None
    if not isinstance(caller, Caller):
        # resource_auth.RequireToken lets nothing through without one.
        raise MCPError(INTERNAL_ERROR, "the request carries no authenticated caller")
    return caller


def _mcp_error(error: DomainError) -> MCPError:
    return MCPError(INVALID_PARAMS if isinstance(error, _CLIENT_FAULTS) else INTERNAL_ERROR, error.message)


def _tool(tool: pb.Tool) -> types.Tool:
    return types.Tool(
        name=tool.name,
        description=tool.description or None,
        input_schema=json_format.MessageToDict(tool.input_schema) or {"type": "object"},
    )


def _call_request(params: types.CallToolRequestParams) -> pb.CallToolRequest:
    request = pb.CallToolRequest(name=params.name)
    if params.arguments:
        try:
            request.arguments.update(params.arguments)
        except (TypeError, ValueError) as exc:
            raise MCPError(INVALID_PARAMS, f"arguments: {exc}") from None
    invalid = violations_message(request)
    if invalid is not None:
        raise MCPError(INVALID_PARAMS, invalid)
    return request


class McpTools:
    """The MCP handlers over the servicer, counting each method per outcome (the metric shows which
    gateway process served what, behind any number of replicas)."""

    def __init__(self, servicer: ToolsServicer, registry: CollectorRegistry) -> None:
        self._servicer = servicer
        self._requests = Counter(
            "macp_tool_gateway_mcp_requests",
            "MCP requests served at /mcp, by method and outcome (ok, tool_error, error)",
            ["method", "outcome"],
            registry=registry,
        )

    async def list_tools(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        with acting_for(_caller(ctx)):
            try:
                catalogue = await self._servicer.ListTools(pb.ListToolsRequest(), _NO_RPC)
            except DomainError as error:
                self._requests.labels("tools/list", "error").inc()
                raise _mcp_error(error) from None
        self._requests.labels("tools/list", "ok").inc()
        # A server that cannot be listed now offers nothing: its tools would only fail if called.
        return types.ListToolsResult(tools=[_tool(tool) for tool in catalogue.tools if tool.available])

    async def call_tool(
        self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        request = _call_request(params)
        with acting_for(_caller(ctx)):
            try:
                answer = await self._servicer.CallTool(request, _NO_RPC)
            except DomainError as error:
                self._requests.labels("tools/call", "error").inc()
                raise _mcp_error(error) from None
        self._requests.labels("tools/call", "tool_error" if answer.is_error else "ok").inc()
        structured: Mapping[str, Any] | None = None
        if answer.HasField("structured_content"):
            structured = json_format.MessageToDict(answer.structured_content)
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=answer.text)],
            structured_content=dict(structured) if structured is not None else None,
            is_error=answer.is_error,
        )


def mcp_server(tools: McpTools) -> Server[Any]:
    return Server("macp-tool-gateway", on_list_tools=tools.list_tools, on_call_tool=tools.call_tool)


def guarded(
    transport: ASGIApp, resource: ProtectedResource, verifier: TokenVerifier, limits: RateLimits
) -> ASGIApp:
    """The transport behind, in order: the source address's limit, the token, the caller's limits,
    the method's scopes (resource_auth.py, mcp_limits.py); no limits while they are off."""
    scoped = RequireScopes(transport, resource)
    if not limits.enabled:
        return RequireToken(scoped, resource, verifier)
    return LimitSources(RequireToken(LimitCallers(scoped, limits), resource, verifier), limits)


def mcp_app(
    manager: StreamableHTTPSessionManager,
    resource: ProtectedResource,
    authenticator: JwtAuthenticator,
    limits: RateLimits,
    ready: asyncio.Event,
) -> Starlette:
    """/mcp behind its token check and limits, its RFC 9728 document, and /healthz for Envoy."""

    async def metadata(request: Request) -> Response:
        return JSONResponse(resource.metadata(), headers={"cache-control": "public, max-age=300"})

    async def health(request: Request) -> Response:
        # Ready once the token service's keys are loaded: before, every token would be refused.
        serving = ready.is_set() and authenticator.jwks.loaded
        return JSONResponse(
            {"status": "SERVING" if serving else "NOT_SERVING", "rate_limits": limits.mode},
            status_code=200 if serving else 503,
        )

    async def transport(scope: Scope, receive: Receive, send: Send) -> None:
        await manager.handle_request(scope, receive, send)

    return Starlette(
        routes=[
            Route(resource.metadata_path, metadata, methods=["GET"]),
            Route(HEALTH_PATH, health, methods=["GET"]),
            # An ASGI app as the endpoint: every method reaches the transport (POST, GET, DELETE).
            Route(resource.path, endpoint=guarded(transport, resource, authenticator.verifier, limits)),
        ]
    )


@contextlib.asynccontextmanager
async def serving_mcp(
    servicer: ToolsServicer,
    resource: ProtectedResource,
    authenticator: JwtAuthenticator,
    limits: RateLimits,
    registry: CollectorRegistry,
    *,
    host: str,
    port: int,
    grace_seconds: float,
) -> AsyncIterator[int]:
    """The MCP endpoint on `host:port` while the block runs; yields the port it listens on."""
    manager = StreamableHTTPSessionManager(
        mcp_server(McpTools(servicer, registry)),
        stateless=True,
        # Bearer tokens, never cookies: a page a DNS rebinding lures a browser to has none to send.
        security_settings=None,
    )
    ready = asyncio.Event()
    app = mcp_app(manager, resource, authenticator, limits, ready)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        timeout_graceful_shutdown=int(grace_seconds),
    )
    server = uvicorn.Server(config)
    async with manager.run():
        task = asyncio.create_task(server.serve())
        try:
            while not server.started:
                if task.done():
                    task.result()  # the bind failed: its error
                    raise OSError(f"cannot listen on {host}:{port}")
                await asyncio.sleep(0.01)
            ready.set()
            yield server.servers[0].sockets[0].getsockname()[1]
        finally:
            ready.clear()
            server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await task


@contextlib.asynccontextmanager
async def mcp_face(context: ServiceContext, servicer: ToolsServicer) -> AsyncIterator[int]:
    """The MCP endpoint of the gateway process `context` starts: its URL `<issuer>/mcp`, its own
    verifier for that audience (keys from the token service over the mesh, revocations from
    Redis), the platform's rate limits (counted in the same Redis as the edge's), on
    `MACP_TOOL_GATEWAY_HTTP_PORT` (the registry's `http_port`)."""
    env = context.env
    spec = service("tool-gateway")
    assert spec.http_port is not None
    common = CommonSettings.from_env(env)
    auth = AuthSettings.from_env(env)
    resource = ProtectedResource(mcp_resource(auth.issuer), auth.issuer)
    port = env.port(spec.http_port_variable, spec.http_port)
    redis = context.resources.require_redis()
    limits = mcp_rate_limits(env, redis, context.resources.redis_key_prefix, context.registry)
    channel = open_mesh_channel(common.mesh_address)
    try:
        async with (
            jwt_authenticator(
                resource.url,
                auth,
                redis=redis,
                redis_key_prefix=context.resources.redis_key_prefix,
                channel=channel,
                method_scopes={},
            ) as authenticator,
            serving_mcp(
                servicer,
                resource,
                authenticator,
                limits,
                context.registry,
                host=common.bind_host,
                port=port,
                grace_seconds=common.shutdown_grace_seconds,
            ) as bound,
        ):
            yield bound
    finally:
        await channel.close()
