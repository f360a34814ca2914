"""The tool gateway's REST routes through Envoy's front listener and the edge, with real tokens and
real MCP servers: a tenant registers a server, lists the catalogue, calls a tool; another tenant
sees and calls nothing of it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from services.example_tools.servers import forecast_for
from services.runtime.auth.settings import EDGE_AUDIENCE
from tests.example_tools import serving_examples
from tests.world import World

pytestmark = pytest.mark.integration


@pytest.fixture
async def world(module_world: World) -> World:
    """The module's one mesh, as a tenant of this test's own: no test here needs a mesh to itself."""
    return await module_world.other_tenant()


@pytest.fixture
async def mcp_urls() -> AsyncIterator[tuple[str, str]]:
    async with serving_examples() as urls:
        yield urls


def client(world: World, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=world.front_url, headers={"authorization": f"Bearer {token}"}, timeout=30, trust_env=False
    )


async def test_a_tenant_registers_a_server_lists_its_tools_and_calls_one(
    world: World, mcp_urls: tuple[str, str]
) -> None:
    weather_url, calculator_url = mcp_urls
    async with client(world, world.edge_token) as http:
        created = await http.post("/v1/tool-servers", json={"name": "weather", "url": weather_url})
        assert created.status_code == 201, created.text
        server = created.json()
        assert created.headers["location"] == f"/v1/tool-servers/{server['id']}"
        assert created.headers["etag"] == f'"{server["etag"]}"'
        assert (
            await http.post("/v1/tool-servers", json={"name": "calc", "url": calculator_url})
        ).status_code == 201
        listed = (await http.get("/v1/tool-servers")).json()
        assert [s["name"] for s in listed["toolServers"]] == ["weather", "calc"]
        got = await http.get(f"/v1/tool-servers/{server['id']}")
        assert got.json()["url"] == weather_url
        tools = (await http.get("/v1/tools")).json()
        assert [t["name"] for t in tools["tools"]] == [
            "calc__add",
            "calc__divide",
            "calc__multiply",
            "weather__forecast",
        ]
        answer = await http.post("/v1/tools/weather__forecast/calls", json={"arguments": {"city": "Lyon"}})
        assert answer.status_code == 200, answer.text
        assert answer.json()["text"] == forecast_for("Lyon")
        wrong = await http.post(
            "/v1/tools/weather__forecast/calls", json={"name": "calc__add", "arguments": {}}
        )
        assert (wrong.status_code, wrong.json()["message"].startswith("name")) == (400, True)
        assert (await http.delete(f"/v1/tool-servers/{server['id']}")).status_code == 204
        names = [t["name"] for t in (await http.get("/v1/tools")).json()["tools"]]
        assert names == ["calc__add", "calc__divide", "calc__multiply"]


async def test_another_tenant_sees_and_calls_nothing_of_a_tenants_servers(
    world: World, mcp_urls: tuple[str, str]
) -> None:
    weather_url, _ = mcp_urls
    async with client(world, world.edge_token) as http:
        server = (await http.post("/v1/tool-servers", json={"name": "weather", "url": weather_url})).json()
    other = await world.tokens.tenant()
    other_token = await world.tokens.user_token(other, [EDGE_AUDIENCE])
    async with client(world, other_token) as http:
        assert (await http.get("/v1/tool-servers")).json().get("toolServers", []) == []
        assert (await http.get("/v1/tools")).json().get("tools", []) == []
        assert (await http.get(f"/v1/tool-servers/{server['id']}")).status_code == 404
        call = await http.post("/v1/tools/weather__forecast/calls", json={"arguments": {"city": "Lyon"}})
        assert call.status_code == 404
        assert (await http.delete(f"/v1/tool-servers/{server['id']}")).status_code == 404
