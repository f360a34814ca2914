"""Done-when of the MCP endpoint: the official SDK's client, given nothing but
`http://127.0.0.1:<front port>/mcp`, follows the spec's discovery from the 401 (RFC 9728 metadata,
then the token service's RFC 8414 metadata at the edge), registers itself (RFC 7591, open for
tenant A), gets a client-credentials token for the endpoint's URL (RFC 8707), lists the tools of
tenant A's two upstream servers and calls one, through a real Envoy whose cluster round-robins
between two gateway processes: both of them serve requests of the one client, whichever protocol
the SDK negotiates (2026-07-28, stateless; 2025-11-25, initialize then requests). A client of
tenant B sees and calls none of tenant A's tools; a token for another audience gets 401; a flood of
open registrations from one address meets the edge's per-source limit."""

from __future__ import annotations

import asyncio
import sys
import urllib.request
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from envoy_data_plane.envoy.config.core.v3 import Address, SocketAddress
from envoy_data_plane.envoy.config.endpoint.v3 import Endpoint, LbEndpoint
from macp.common.v1 import principal_pb2
from macp.token.v1 import token_service_pb2 as token_pb
from macp.tool_gateway.v1 import tool_gateway_service_pb2 as pb
from macp.tool_gateway.v1 import tool_gateway_service_pb2_grpc as pb_grpc
from mcp.shared.exceptions import MCPError

from services.example_tools.servers import forecast_for
from services.runtime.auth.settings import EDGE_AUDIENCE, mcp_resource, service_audience
from services.runtime.registry import service
from services.runtime.settings import Env
from services.stack.config import free_port
from services.stack.envoy_config import bootstrap_document, build_bootstrap
from services.stack.process import ManagedProcess, PortClaim
from tests.edge_and_envoy import edge_and_envoy
from tests.example_tools import serving_examples
from tests.scrape import scrape
from tests.tokens import TokenWorld, bearer_channel, token_world
from tests.tool_gateway.mcp_oauth_client import MemoryStorage, RegisteringClientCredentials, mcp_client

pytestmark = pytest.mark.integration

GATEWAY = service("tool-gateway")
MCP_REQUESTS = "macp_tool_gateway_mcp_requests_total"
TOOLS = ["calc__add", "calc__divide", "calc__multiply", "weather__forecast"]
SOURCE_LIMIT = 30


@dataclass(frozen=True)
class Gateway:
    """One gateway process: its ports (gRPC, metrics, MCP)."""

    port: int
    metrics_port: int
    http_port: int


@dataclass(frozen=True)
class Replicas:
    front_url: str
    tokens: TokenWorld
    tenant_a: str
    tenant_b: str
    gateways: tuple[Gateway, Gateway]

    @property
    def mcp_url(self) -> str:
        return f"{self.front_url}/mcp"

    async def served(self) -> list[float]:
        """How many tools/* requests each gateway process served."""
        counts = []
        for gateway in self.gateways:
            scraped = await scrape(gateway.metrics_port)
            counts.append(
                sum(
                    scraped.value(MCP_REQUESTS, method=method, outcome=outcome) or 0.0
                    for method in ("tools/list", "tools/call")
                    for outcome in ("ok", "tool_error", "error")
                )
            )
        return counts


def _bootstrap_with_both(env: Env, gateways: tuple[Gateway, Gateway], path: Path) -> Path:
    """The native bootstrap, with the second gateway process as a second host of the MCP cluster
    (round robin, Envoy's default) and of the gRPC one."""
    bootstrap = build_bootstrap("native", env)
    assert bootstrap.static_resources is not None
    extra = {GATEWAY.http_name: gateways[1].http_port, GATEWAY.name: gateways[1].port}
    for cluster in bootstrap.static_resources.clusters:
        if cluster.name in extra and cluster.load_assignment is not None:
            address = Address(
                socket_address=SocketAddress(address="127.0.0.1", port_value=extra[cluster.name])
            )
            cluster.load_assignment.endpoints[0].lb_endpoints.append(
                LbEndpoint(endpoint=Endpoint(address=address))
            )
    path.write_text(yaml.safe_dump(bootstrap_document(bootstrap), sort_keys=False))
    return path


def _healthy_hosts(admin_port: int, cluster: str) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{admin_port}/clusters", timeout=2) as response:
        lines = response.read().decode().splitlines()
    return sum(
        1 for line in lines if line.startswith(f"{cluster}::") and line.endswith("health_flags::healthy")
    )


async def _wait_hosts(admin_port: int, cluster: str, hosts: int) -> None:
    for _ in range(200):
        if await asyncio.to_thread(_healthy_hosts, admin_port, cluster) >= hosts:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"Envoy never saw {hosts} healthy hosts in {cluster}")


def _gateway_process(name: str, environ: dict[str, str], gateway: Gateway, directory: Path) -> ManagedProcess:
    prefix = GATEWAY.env_prefix
    env = {
        **environ,
        f"{prefix}PORT": str(gateway.port),
        f"{prefix}METRICS_PORT": str(gateway.metrics_port),
        GATEWAY.http_port_variable: str(gateway.http_port),
    }
    claims = [PortClaim(gateway.http_port, f"{name} MCP", GATEWAY.http_port_variable)]
    return ManagedProcess(
        name, [sys.executable, "-m", GATEWAY.module], data_dir=directory, env=env, ports=claims
    )


async def _register_servers(tokens: TokenWorld, tenant_id: str, port: int, urls: dict[str, str]) -> None:
    tenant = await tokens.tenant(tenant_id)
    token = await tokens.user_token(tenant, [service_audience(GATEWAY.name)])
    async with bearer_channel(port, token) as channel:
        stub = pb_grpc.ToolGatewayServiceStub(channel)
        for name, url in urls.items():
            await stub.CreateToolServer(
                pb.CreateToolServerRequest(tool_server=pb.ToolServer(name=name, url=url))
            )


@pytest.fixture
async def replicas(service_environ: dict[str, str], tmp_path: Path) -> AsyncIterator[Replicas]:
    front = free_port()
    front_url = f"http://127.0.0.1:{front}"
    tenant_a, tenant_b = f"a-{uuid.uuid4().hex[:8]}", f"b-{uuid.uuid4().hex[:8]}"
    gateways = tuple(Gateway(free_port(), free_port(), free_port()) for _ in range(2))
    assert len(gateways) == 2
    opened = {
        **service_environ,
        # The issuer is the front listener's URL: the MCP endpoint is <issuer>/mcp.
        "MACP_TOKEN_ISSUER": front_url,
        "MACP_TOKEN_OPEN_REGISTRATION_TENANTS": tenant_a,
    }
    async with token_world(opened) as tokens, AsyncExitStack() as stack:
        weather, calculator = await stack.enter_async_context(serving_examples())
        mesh = free_port()
        environ = {
            **tokens.environ,
            "MACP_ENVOY_FRONT_PORT": str(front),
            "MACP_ENVOY_MESH_PORT": str(mesh),
            "MACP_ENVOY_ADMIN_PORT": str(free_port()),
            "MACP_EDGE_PORT": str(free_port()),
            "MACP_EDGE_METRICS_PORT": str(free_port()),
            "MACP_MESH_ADDRESS": f"127.0.0.1:{mesh}",
            f"{GATEWAY.env_prefix}PORT": str(gateways[0].port),
            GATEWAY.http_port_variable: str(gateways[0].http_port),
            # Only the token service runs here besides the gateways and the edge.
            "MACP_EDGE_NEEDS": "token",
            f"{GATEWAY.env_prefix}NEEDS": "token",
            f"{GATEWAY.env_prefix}QUOTA_HOLDS": "off",
            f"{GATEWAY.env_prefix}UPSTREAM_TIMEOUT_SECONDS": "5",
            # Requests without a token per source address (sign-ins, discovery, registrations):
            # room for the test's clients, and a limit its flood of registrations meets.
            "MACP_RATE_LIMIT_SOURCE": f"{SOURCE_LIMIT}/min burst {SOURCE_LIMIT}",
        }
        for name, gateway in zip(("tool-gateway-a", "tool-gateway-b"), gateways, strict=True):
            process = _gateway_process(name, environ, gateway, tmp_path)
            stack.callback(process.stop)
            process.start()
        config = _bootstrap_with_both(Env(environ), gateways, tmp_path / "envoy-replicas.yaml")
        envoy = await stack.enter_async_context(edge_and_envoy(Env(environ), tmp_path, config))
        for cluster, hosts in (("token", 1), ("edge", 1), (GATEWAY.http_name, 2)):
            await _wait_hosts(envoy.ports.admin, cluster, hosts)
        await _register_servers(tokens, tenant_a, gateways[0].port, {"weather": weather, "calc": calculator})
        yield Replicas(front_url, tokens, tenant_a, tenant_b, gateways)


async def _third_party_token(replicas: Replicas, tenant_id: str, scope: str) -> str:
    """A client of `tenant_id` registered by an operator (initial access token), its client-credentials
    token asked for at the edge's token endpoint with the MCP endpoint as `resource`."""
    stub = replicas.tokens.harness.stub
    registered = await stub.RegisterClient(
        token_pb.RegisterClientRequest(
            initial_access_token=replicas.tokens.harness.initial_access_token,
            tenant_id=tenant_id,
            metadata=token_pb.ClientMetadata(
                client_name="tenant B's MCP client",
                client_class=principal_pb2.CLIENT_CLASS_THIRD_PARTY,
                grant_types=["client_credentials"],
                scope=scope,
            ),
        )
    )
    async with httpx.AsyncClient(base_url=replicas.front_url, trust_env=False, timeout=10) as http:
        issued = await http.post(
            "/oauth2/token",
            data={"grant_type": "client_credentials", "resource": replicas.mcp_url},
            auth=(registered.client_id, registered.client_secret),
        )
    assert issued.status_code == 200, issued.text
    token: str = issued.json()["access_token"]
    return token


async def test_an_sdk_client_with_only_the_url_registers_lists_and_calls_across_two_gateways(
    replicas: Replicas,
) -> None:
    assert replicas.mcp_url == mcp_resource(replicas.front_url)
    for mode in ("auto", "legacy"):  # 2026-07-28 (stateless), then 2025-11-25 (initialize first)
        before = await replicas.served()
        storage = MemoryStorage()
        provider = RegisteringClientCredentials(replicas.mcp_url, storage)
        async with mcp_client(replicas.mcp_url, auth=provider, mode=mode) as client:
            for _ in range(3):
                assert [tool.name for tool in (await client.list_tools()).tools] == TOOLS
                answer = await client.call_tool("weather__forecast", {"city": "Lyon"})
                assert answer.content[0].text == forecast_for("Lyon")  # type: ignore[union-attr]
        registered = storage.client_info
        assert registered is not None, "it registered"
        row = await replicas.tokens.harness.db.fetchrow(
            "SELECT tenant_id, client_class FROM token_clients WHERE client_id = $1", registered.client_id
        )
        assert tuple(row) == (replicas.tenant_a, "third_party")
        after = await replicas.served()
        served = [now - then for now, then in zip(after, before, strict=True)]
        # Six at least (the client may list again to check a result against the tool's schema),
        # and both processes served some: the one session's requests alternated between them.
        assert sum(served) >= 6, served
        assert all(count > 0 for count in served), f"{mode}: one gateway process served all: {served}"

    # Tenant B's own client sees none of tenant A's tools and cannot call them.
    token_b = await _third_party_token(
        replicas, await _tenant(replicas, replicas.tenant_b), "tools:read tools:call"
    )
    async with mcp_client(replicas.mcp_url, token=token_b) as client:
        assert (await client.list_tools()).tools == []
        with pytest.raises(MCPError, match="no tool server named weather"):
            await client.call_tool("weather__forecast", {"city": "Lyon"})

    # A token for another audience (the edge's) is refused like no token at all.
    tenant = await replicas.tokens.tenant()
    edge_token = await replicas.tokens.user_token(tenant, [EDGE_AUDIENCE])
    async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
        refused = await http.post(
            replicas.mcp_url,
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}},
            headers={
                "authorization": f"Bearer {edge_token}",
                "accept": "application/json, text/event-stream",
            },
        )
    assert refused.status_code == 401
    assert (
        f'resource_metadata="{replicas.front_url}/.well-known/oauth-protected-resource/mcp"'
        in (refused.headers["www-authenticate"])
    )

    # Open registration is a request without a token: its source address is held to the limit.
    metadata = {"client_name": "a flood", "grant_types": ["client_credentials"]}
    async with httpx.AsyncClient(base_url=replicas.front_url, trust_env=False, timeout=10) as http:
        statuses = [
            (await http.post("/oauth2/register", json=metadata)).status_code for _ in range(SOURCE_LIMIT)
        ]
    assert 429 in statuses, statuses
    assert set(statuses) <= {201, 429}, statuses
    opened = await replicas.tokens.harness.db.fetchval(
        "SELECT count(*) FROM token_clients WHERE tenant_id = $1 AND client_class = 'third_party'",
        replicas.tenant_a,
    )
    assert opened < SOURCE_LIMIT + 2, opened  # the two SDK clients, and the flood up to the limit


async def _tenant(replicas: Replicas, tenant_id: str) -> str:
    await replicas.tokens.tenant(tenant_id)
    return tenant_id
