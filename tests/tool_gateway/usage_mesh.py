"""A partial mesh for the tool gateway's usage and limits tests: the real token service, metering
(its consumer on the test's usage topic) and tool gateway, with Envoy's mesh listener between them
(the gateway reaches metering and the token service through it, as in `macp up`), over the test's
real Postgres, Redis and Kafka; two tenants' users calling the gateway with their own tokens; and
upstream MCP servers built on the official SDK: the example weather and calculator servers, and
one that counts the calls reaching it (tests/tool_gateway/misbehaving.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from macp.metering.v1 import metering_service_pb2_grpc as metering_grpc
from macp.tool_gateway.v1 import tool_gateway_service_pb2_grpc as pb_grpc

from bench.slice import cluster_healthy
from services.metering.service import DEFINITION as METERING
from services.runtime.auth.settings import USER_SCOPES, service_audience
from services.runtime.registry import SERVICES
from services.runtime.settings import Env
from services.stack.config import EnvoyPorts, free_port
from services.stack.envoy import Envoy
from services.stack.envoy_config import render_native
from services.tool_gateway.service import DEFINITION as TOOL_GATEWAY
from tests.asgi import serving
from tests.example_tools import serving_examples
from tests.metering.conftest import FAST_CONSUMER, METERING_AUDIENCE, admin_token
from tests.runtime.serving import running
from tests.tokens import Tenant, TokenWorld, bearer_channel, token_world
from tests.tool_gateway.conftest import Caller
from tests.tool_gateway.misbehaving import Misbehaving, Seen, faulty_server

GATEWAY_AUDIENCE = service_audience("tool-gateway")
# The users may also hold and settle usage themselves (a test re-commits a call as a retry would).
SCOPES = " ".join((*USER_SCOPES, "usage:write"))
# Small enough that a test reaches it in a few calls, and refuses for long enough to be seen.
CALLS_PER_MINUTE = 3
RATE_LIMIT = f"{CALLS_PER_MINUTE}/min"


@dataclass(frozen=True)
class Tenanted:
    """One tenant's user: its gateway stub, and a stub of metering with its own token."""

    caller: Caller
    tenant: Tenant
    metering: metering_grpc.MeteringServiceStub


@dataclass(frozen=True)
class UsageMesh:
    environ: dict[str, str]
    tokens: TokenWorld
    db: asyncpg.Pool
    metering_admin: metering_grpc.MeteringServiceStub
    alice: Tenanted
    bob: Tenanted
    weather_url: str
    calculator_url: str
    counting_url: str  # its tool `fine` answers "fine"; every call reaching it is in `seen`
    seen: Seen

    @property
    def topic(self) -> str:
        return self.environ["MACP_KAFKA_USAGE_TOPIC"]


async def _healthy(admin_port: int, clusters: tuple[str, ...], seconds: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    for cluster in clusters:
        while not await asyncio.to_thread(cluster_healthy, admin_port, cluster):
            if loop.time() > deadline:
                raise AssertionError(f"Envoy saw no healthy {cluster} within {seconds} s")
            await asyncio.sleep(0.1)


async def _tenanted(tokens: TokenWorld, stack: AsyncExitStack, mesh_port: int, gateway_port: int) -> Tenanted:
    tenant = await tokens.tenant(scope=SCOPES)
    token = await tokens.user_token(tenant, [GATEWAY_AUDIENCE])
    opened = await stack.enter_async_context(bearer_channel(gateway_port, token))
    metering_token = await tokens.user_token(tenant, [METERING_AUDIENCE])
    to_metering = await stack.enter_async_context(bearer_channel(mesh_port, metering_token))
    return Tenanted(
        Caller(pb_grpc.ToolGatewayServiceStub(opened), tenant.tenant_id, token),
        tenant,
        metering_grpc.MeteringServiceStub(to_metering),
    )


def _ports() -> dict[str, str]:
    """A free port for every process Envoy routes to, so no route reaches another test's (or a
    running stack's) services; only the token service, metering and the gateway answer on theirs."""
    ports = {}
    for spec in SERVICES:
        if spec.name != "token":
            ports[f"{spec.env_prefix}PORT"] = str(free_port())
            ports[f"{spec.env_prefix}METRICS_PORT"] = str(free_port())
            ports[f"{spec.env_prefix}HTTP_PORT"] = str(free_port())
    for name in ("EDGE_PORT", "EDGE_METRICS_PORT", "ENVOY_FRONT_PORT", "ENVOY_MESH_PORT", "ENVOY_ADMIN_PORT"):
        ports[f"MACP_{name}"] = str(free_port())
    return ports


@asynccontextmanager
async def usage_mesh(
    service_environ: Mapping[str, str], directory: Path, gateway: Mapping[str, str] | None = None
) -> AsyncIterator[UsageMesh]:
    """The mesh for as long as the block runs; `gateway` adds to the gateway's settings."""
    async with token_world(service_environ) as tokens, AsyncExitStack() as stack:
        weather_url, calculator_url = await stack.enter_async_context(serving_examples())
        seen = Seen()
        counting = await stack.enter_async_context(
            serving(lambda _url: Misbehaving(faulty_server().streamable_http_app(), seen))
        )
        ports = _ports()
        environ = {
            **tokens.environ,
            **FAST_CONSUMER,
            **ports,
            "MACP_MESH_ADDRESS": f"127.0.0.1:{ports['MACP_ENVOY_MESH_PORT']}",
            "MACP_METERING_CONSUMER_GROUP": f"metering-{service_environ['MACP_KAFKA_USAGE_TOPIC']}",
            "MACP_TOOL_GATEWAY_UPSTREAM_TIMEOUT_SECONDS": "3",
            "MACP_TOOL_GATEWAY_TOOL_RATE_LIMIT": RATE_LIMIT,
            # No conversation service here: no agent acts in these tests.
            "MACP_TOOL_GATEWAY_NEEDS": "token,metering",
            **(gateway or {}),
        }
        env = Env(environ)
        metering = await stack.enter_async_context(running(METERING, environ))
        gateway_service = await stack.enter_async_context(running(TOOL_GATEWAY, environ))
        envoy = Envoy(directory, render_native(directory / "envoy.yaml", env), EnvoyPorts.from_env(env))
        await asyncio.to_thread(envoy.start)
        stack.push_async_callback(asyncio.to_thread, envoy.stop)
        await _healthy(envoy.ports.admin, ("token", "metering"))
        db = await stack.enter_async_context(
            asyncpg.create_pool(environ["MACP_DATABASE_URL"], min_size=1, max_size=2)
        )
        mesh_port = envoy.ports.mesh
        admin = await admin_token(tokens, METERING_AUDIENCE)
        as_admin = await stack.enter_async_context(bearer_channel(mesh_port, admin))
        alice = await _tenanted(tokens, stack, mesh_port, gateway_service.port)
        bob = await _tenanted(tokens, stack, mesh_port, gateway_service.port)
        assert metering.port
        yield UsageMesh(
            environ,
            tokens,
            db,
            metering_grpc.MeteringServiceStub(as_admin),
            alice,
            bob,
            weather_url,
            calculator_url,
            f"{counting}/mcp",
            seen,
        )
