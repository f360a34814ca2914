"""The gateway's MCP endpoint, called directly on its HTTP port by the official SDK's client and by
hand: a protected resource that answers 401 with its RFC 9728 metadata, refuses a token for any
other audience, asks for the scope a method needs with 403, lists and calls the caller's tenant's
tools only, and reports a tool's own failure as an `isError` result and the gateway's as an MCP
error naming the server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from mcp.shared.exceptions import MCPError

from services.example_tools.servers import forecast_for
from services.runtime.auth.settings import EDGE_AUDIENCE, mcp_resource
from tests.tool_gateway.conftest import AUDIENCE, World, new_tenants, register
from tests.tool_gateway.mcp_oauth_client import mcp_client

pytestmark = pytest.mark.integration

LIST = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
CALL = {
    "jsonrpc": "2.0",
    "id": 2,
    "method": "tools/call",
    "params": {"name": "weather__forecast", "arguments": {}},
}


@pytest.fixture
async def world(module_world: World) -> AsyncIterator[World]:
    """The module's one gateway, as two tenants of this test's own: no test here needs one to itself."""
    async with new_tenants(module_world) as world:
        yield world


def endpoint(world: World) -> str:
    return f"http://127.0.0.1:{world.environ['MACP_TOOL_GATEWAY_HTTP_PORT']}/mcp"


def resource(world: World) -> str:
    """The endpoint's URL as clients see it (the front listener's), the audience of its tokens."""
    return mcp_resource(world.environ["MACP_TOKEN_ISSUER"])


async def post(world: World, message: dict[str, object], token: str | None = None) -> httpx.Response:
    headers = {"accept": "application/json, text/event-stream", "mcp-protocol-version": "2025-11-25"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
        return await http.post(endpoint(world), json=message, headers=headers)


async def test_without_a_valid_token_for_it_the_endpoint_answers_401_with_its_metadata(world: World) -> None:
    issuer = world.environ["MACP_TOKEN_ISSUER"]
    metadata_url = f"{issuer}/.well-known/oauth-protected-resource/mcp"
    anonymous = await post(world, LIST)
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == (
        f'Bearer resource_metadata="{metadata_url}", scope="tools:read tools:call"'
    )
    async with httpx.AsyncClient(trust_env=False) as http:
        document = (
            await http.get(endpoint(world).replace("/mcp", "/.well-known/oauth-protected-resource/mcp"))
        ).json()
    assert document["resource"] == resource(world)
    assert document["authorization_servers"] == [issuer]
    assert document["scopes_supported"] == ["tools:read", "tools:call"]

    tenant = await world.tokens.tenant()
    # Tokens for another audience: the edge's, and the gateway's own gRPC face's.
    for audience in (EDGE_AUDIENCE, AUDIENCE):
        elsewhere = await world.tokens.user_token(tenant, [audience])
        refused = await post(world, LIST, elsewhere)
        assert refused.status_code == 401, audience
        assert 'error="invalid_token"' in refused.headers["www-authenticate"]
        assert refused.json()["error_description"] == "invalid token: wrong_audience", refused.text
    forged = await post(world, LIST, "not.a.token")
    assert forged.status_code == 401


async def mcp_token(world: World, caller_token: str, scope: str = "tools:read tools:call") -> str:
    """The caller's token exchanged for the MCP endpoint (a public resource, as for a client)."""
    return await world.tokens.for_service(caller_token, [resource(world)], scope)


async def test_a_token_without_the_methods_scope_gets_403_insufficient_scope(world: World) -> None:
    await register(world.alice, "weather", world.weather_url)
    reader = await mcp_token(world, world.alice.token, "tools:read")
    refused = await post(world, CALL, reader)
    assert refused.status_code == 403
    challenge = refused.headers["www-authenticate"]
    assert 'error="insufficient_scope"' in challenge
    assert 'scope="tools:call"' in challenge
    async with mcp_client(endpoint(world), token=reader, mode="legacy") as client:
        listed = await client.list_tools()
    assert [tool.name for tool in listed.tools] == ["weather__forecast"]


async def test_tools_of_the_callers_tenant_are_listed_and_called_with_tool_errors_as_results(
    world: World,
) -> None:
    await register(world.alice, "weather", world.weather_url)
    await register(world.alice, "calc", world.calculator_url)
    await register(world.bob, "mine", world.calculator_url)
    token = await mcp_token(world, world.alice.token)
    async with mcp_client(endpoint(world), token=token) as client:
        listed = await client.list_tools()
        assert [tool.name for tool in listed.tools] == [
            "calc__add",
            "calc__divide",
            "calc__multiply",
            "weather__forecast",
        ]
        forecast = await client.call_tool("weather__forecast", {"city": "Lyon"})
        assert (forecast.is_error, forecast.content[0].text) == (False, forecast_for("Lyon"))  # type: ignore[union-attr]
        divided = await client.call_tool("calc__divide", {"a": 1, "b": 0})
        assert divided.is_error is True
        with pytest.raises(MCPError, match="the tenant has no tool server named mine"):
            await client.call_tool("mine__add", {"a": 1, "b": 2})
        with pytest.raises(MCPError, match="name"):
            await client.call_tool("no separator", {})


async def test_an_upstream_that_fails_is_an_mcp_error_naming_the_server(world: World) -> None:
    await register(world.alice, "gone", "http://127.0.0.1:9/mcp")  # the discard port: refused
    token = await mcp_token(world, world.alice.token)
    async with mcp_client(endpoint(world), token=token) as client:
        assert (await client.list_tools()).tools == []  # a server that cannot be listed offers nothing
        with pytest.raises(MCPError, match="gone"):
            await client.call_tool("gone__anything", {})
