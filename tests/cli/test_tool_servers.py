"""`macp tool-servers` and `macp tools` against the whole mesh: servers registered, listed and
removed, the catalogue listed and a tool called, all through the edge's REST routes; the static
credential's secret goes in on stdin and comes back nowhere."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator

import pytest

from services.cli.accounts import EXIT_USAGE, CliError
from services.cli.main import build_parser
from services.cli.tool_servers import execute as tool_servers
from services.cli.tools import execute as tools
from services.example_tools.servers import calculator_server, forecast_for, weather_server
from tests.asgi import serving
from tests.tool_gateway.test_upstream_auth_modes import API_KEY, RequireHeader
from tests.world import World

pytestmark = pytest.mark.integration


@pytest.fixture
async def world(module_world: World) -> World:
    """The module's one mesh, as a tenant of this test's own: no test here needs a mesh to itself."""
    return await module_world.other_tenant()


@pytest.fixture
async def upstreams() -> AsyncIterator[tuple[str, str]]:
    """The weather server behind `x-api-key: API_KEY`, and the calculator with no credential."""
    async with (
        serving(
            lambda _url: RequireHeader(weather_server().streamable_http_app(), "x-api-key", API_KEY)
        ) as weather,
        serving(lambda _url: calculator_server().streamable_http_app()) as calculator,
    ):
        yield f"{weather}/mcp", f"{calculator}/mcp"


async def macp(world: World, *argv: str, stdin: str = "") -> str:
    """One `macp tool-servers|tools` command as the tenant's user; what it printed. The commands
    block (urllib), as the CLI runs them: each gets a thread."""
    args = build_parser(argv[0]).parse_args(list(argv))
    out = io.StringIO()
    if argv[0] == "tools":
        finished = await asyncio.to_thread(tools, world.front_url, world.edge_token, args, out)
        if not finished:
            out.write("(tool error)\n")
    else:
        await asyncio.to_thread(
            tool_servers, world.front_url, world.edge_token, args, out, io.StringIO(stdin)
        )
    return out.getvalue()


async def test_servers_are_registered_listed_called_and_removed_from_the_cli(
    world: World, upstreams: tuple[str, str]
) -> None:
    weather_url, calculator_url = upstreams
    created = json.loads(
        await macp(
            world,
            *("tool-servers", "create", "--name", "weather", "--url", weather_url, "--auth", "static"),
            *("--header", "X-API-Key", "--secret-stdin", "--json"),
            stdin=f"{API_KEY}\n",
        )
    )
    # The edge writes every field, the value too: empty, as the gateway never returns it.
    assert created["staticCredential"] == {"header": "x-api-key", "value": ""}
    await macp(world, "tool-servers", "create", "--name", "calc", "--url", calculator_url)

    listed = await macp(world, "tool-servers", "list")
    assert "static (x-api-key)" in listed
    assert "calc" in listed
    assert API_KEY not in listed
    assert API_KEY not in await macp(world, "tool-servers", "list", "--json")

    catalogue = await macp(world, "tools", "list")
    for name in ("calc__add", "calc__divide", "weather__forecast"):
        assert name in catalogue
    assert await macp(world, "tools", "call", "weather__forecast", "--args", '{"city": "Lyon"}') == (
        forecast_for("Lyon") + "\n"
    )
    assert "(tool error)" in await macp(world, "tools", "call", "calc__divide", "--args", '{"a": 1, "b": 0}')

    assert (
        await macp(world, "tool-servers", "delete", created["id"]) == f"deleted tool server {created['id']}\n"
    )
    assert "weather" not in await macp(world, "tool-servers", "list")


async def test_the_cli_reports_what_the_edge_and_its_own_checks_refuse(world: World) -> None:
    with pytest.raises(CliError) as refused:
        await macp(
            world,
            "tool-servers",
            "create",
            "--name",
            "w",
            "--url",
            "http://127.0.0.1:9/mcp",
            "--auth",
            "static",
        )
    assert (refused.value.code, str(refused.value)) == (
        EXIT_USAGE,
        "--secret-stdin: required with --auth static",
    )
    with pytest.raises(CliError) as refused:
        await macp(
            world,
            *("tool-servers", "create", "--name", "w", "--url", "http://127.0.0.1:9/mcp", "--auth", "static"),
            *("--header", "host", "--secret-stdin"),
            stdin="k\n",
        )
    assert str(refused.value).startswith("HTTP 400: tool_server.static_credential.header: host")
    with pytest.raises(CliError) as refused:
        await macp(world, "tools", "call", "calc__add", "--args", "[1, 2]")
    assert refused.value.code == EXIT_USAGE
    with pytest.raises(CliError) as refused:
        await macp(world, "tools", "call", "nothing__here")
    assert str(refused.value).startswith("HTTP 404: name: the tenant has no tool server named nothing")
