"""Fixtures of the tool gateway tests: the real gateway in-process over the test's real Postgres,
authenticating real tokens of two tenants from the real token service, and the example MCP servers
(built on the official SDK) served by uvicorn on loopback ports."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace

import grpc
import pytest
from macp.tool_gateway.v1 import tool_gateway_service_pb2 as pb
from macp.tool_gateway.v1 import tool_gateway_service_pb2_grpc as pb_grpc

from services.runtime.auth.settings import service_audience
from services.runtime.server import RunningService
from services.stack.config import free_port
from services.tool_gateway.service import DEFINITION as TOOL_GATEWAY
from tests.example_tools import serving_examples
from tests.runtime.serving import running
from tests.tokens import Tenant, TokenWorld, bearer_channel, token_world

AUDIENCE = service_audience("tool-gateway")


@dataclass(frozen=True)
class Caller:
    """One tenant's user, calling the gateway with its own token."""

    stub: pb_grpc.ToolGatewayServiceStub
    tenant_id: str
    token: str


@dataclass(frozen=True)
class World:
    environ: dict[str, str]
    tokens: TokenWorld
    service: RunningService
    alice: Caller  # tenant A
    bob: Caller  # tenant B
    weather_url: str
    calculator_url: str


async def register(
    caller: Caller, name: str, url: str, auth: pb.UpstreamAuth.ValueType = pb.UPSTREAM_AUTH_NONE
) -> pb.ToolServer:
    reply = await caller.stub.CreateToolServer(
        pb.CreateToolServerRequest(tool_server=pb.ToolServer(name=name, url=url, auth=auth))
    )
    return reply.tool_server


async def refused(call: object) -> grpc.aio.AioRpcError:
    """The error an awaited call failed with (the test fails if it succeeded)."""
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as error:
        return error
    raise AssertionError("the call succeeded")


async def new_caller(
    tokens: TokenWorld, stack: AsyncExitStack, port: int, tenant: Tenant | None = None
) -> Caller:
    """A caller with a token of its own: of a new tenant's user, or of `tenant`'s user again."""
    tenant = tenant or await tokens.tenant()
    token = await tokens.user_token(tenant, [AUDIENCE])
    opened = await stack.enter_async_context(bearer_channel(port, token))
    return Caller(pb_grpc.ToolGatewayServiceStub(opened), tenant.tenant_id, token)


@asynccontextmanager
async def serving_gateway(service_environ: dict[str, str]) -> AsyncIterator[World]:
    """The gateway, the example servers and two tenants' callers over `service_environ`."""
    async with token_world(service_environ) as tokens, AsyncExitStack() as stack:
        weather_url, calculator_url = await stack.enter_async_context(serving_examples())
        environ = tokens.service_environ(
            {
                **service_environ,
                "MACP_TOOL_GATEWAY_PORT": "0",
                "MACP_TOOL_GATEWAY_METRICS_PORT": "0",
                # A known port: the MCP endpoint's tests call it.
                "MACP_TOOL_GATEWAY_HTTP_PORT": str(free_port()),
                "MACP_TOOL_GATEWAY_UPSTREAM_TIMEOUT_SECONDS": "3",
                # No metering here (tests/tool_gateway/usage_mesh.py runs one): calls hold no quota.
                "MACP_TOOL_GATEWAY_QUOTA_HOLDS": "off",
                # The gateway registers its own client with it (for upstream tokens).
                "MACP_TOKEN_INITIAL_ACCESS_TOKEN": tokens.harness.initial_access_token,
            }
        )
        service = await stack.enter_async_context(running(TOOL_GATEWAY, environ))
        alice = await new_caller(tokens, stack, service.port)
        bob = await new_caller(tokens, stack, service.port)
        yield World(environ, tokens, service, alice, bob, weather_url, calculator_url)


@pytest.fixture
async def world(service_environ: dict[str, str]) -> AsyncIterator[World]:
    async with serving_gateway(service_environ) as world:
        yield world


@pytest.fixture
async def own_world(service_environ: dict[str, str]) -> AsyncIterator[World]:
    """A gateway of the test's own, for a test in a module that shares one (`module_world`)."""
    async with serving_gateway(service_environ) as world:
        yield world


@pytest.fixture(scope="module")
async def module_world(module_environ: dict[str, str]) -> AsyncIterator[World]:
    """The gateway once for a module whose tests need none of their own: each takes two tenants
    of its own on it with `new_tenants` (override `world` in the module with it)."""
    async with serving_gateway(module_environ) as world:
        yield world


@asynccontextmanager
async def new_tenants(world: World) -> AsyncIterator[World]:
    """`world` as seen by the users of two new tenants, Alice's and Bob's, of their own."""
    async with AsyncExitStack() as stack:
        alice = await new_caller(world.tokens, stack, world.service.port)
        bob = await new_caller(world.tokens, stack, world.service.port)
        yield replace(world, alice=alice, bob=bob)
