"""Tool servers, the federated catalogue and tool calls through the gateway, against real MCP
servers built on the official SDK."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest
from google.protobuf import json_format
from macp.tool_gateway.v1 import tool_gateway_service_pb2 as pb

from tests.tool_gateway.conftest import World, new_tenants, refused, register


@pytest.fixture
async def world(module_world: World) -> AsyncIterator[World]:
    """The module's one gateway, as two tenants of this test's own: no test here needs one to itself."""
    async with new_tenants(module_world) as world:
        yield world


UNREACHABLE = "http://127.0.0.1:9/mcp"  # the discard port: nothing answers


def call(name: str, **arguments: object) -> pb.CallToolRequest:
    request = pb.CallToolRequest(name=name)
    json_format.ParseDict(arguments, request.arguments)
    return request


async def test_the_catalogue_is_every_servers_tools_each_namespaced_by_its_server(world: World) -> None:
    await register(world.alice, "weather", world.weather_url)
    await register(world.alice, "calc", world.calculator_url)
    catalogue = await world.alice.stub.ListTools(pb.ListToolsRequest())
    assert [(t.name, t.server_name, t.upstream_name, t.available) for t in catalogue.tools] == [
        ("calc__add", "calc", "add", True),
        ("calc__divide", "calc", "divide", True),
        ("calc__multiply", "calc", "multiply", True),
        ("weather__forecast", "weather", "forecast", True),
    ]
    forecast = catalogue.tools[-1]
    assert forecast.description == "Tomorrow's forecast for a city."
    assert json_format.MessageToDict(forecast.input_schema)["required"] == ["city"]
    assert not catalogue.unavailable


async def test_a_call_reaches_the_upstream_and_is_audited(world: World) -> None:
    server = await register(world.alice, "calc", world.calculator_url)
    answer = await world.alice.stub.CallTool(call("calc__add", a=2, b=40))
    assert (answer.text, answer.is_error) == ("42", False)
    assert json_format.MessageToDict(answer.structured_content) == {"result": 42}
    failed = await world.alice.stub.CallTool(call("calc__divide", a=1, b=0))
    assert failed.is_error
    assert "division by zero" in failed.text
    connection = await asyncpg.connect(world.environ["MACP_DATABASE_URL"])
    try:
        # The module's other tests call tools on the same database: this test's rows are its
        # tenant's, and any other tenant's on its server.
        rows = await connection.fetch(
            "SELECT tenant_id, resource, detail FROM audit_events"
            " WHERE action = 'tool.call' AND (tenant_id = $1 OR resource = $2) ORDER BY event_time",
            world.alice.tenant_id,
            f"tool-server/{server.id}",
        )
    finally:
        await connection.close()
    assert [(r["tenant_id"], r["resource"]) for r in rows] == [
        (world.alice.tenant_id, f"tool-server/{server.id}")
    ] * 2
    results = [__import__("json").loads(r["detail"])["result"] for r in rows]
    assert results == ["ok", "tool_error"]


async def test_a_server_that_is_down_marks_only_its_own_tools(world: World) -> None:
    await register(world.alice, "calc", world.calculator_url)
    down = await register(world.alice, "gone", UNREACHABLE)
    catalogue = await world.alice.stub.ListTools(pb.ListToolsRequest())
    assert [t.name for t in catalogue.tools if t.available] == ["calc__add", "calc__divide", "calc__multiply"]
    [unavailable] = catalogue.unavailable
    assert (unavailable.server_id, unavailable.server_name) == (down.id, "gone")
    assert "unreachable" in unavailable.reason
    error = await refused(world.alice.stub.CallTool(call("gone__anything")))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "tool server gone" in (error.details() or "")
    assert (await world.alice.stub.CallTool(call("calc__multiply", a=6, b=7))).text == "42"


async def test_another_tenant_neither_sees_nor_calls_a_tenants_servers(world: World) -> None:
    server = await register(world.alice, "calc", world.calculator_url)
    assert not (await world.bob.stub.ListTools(pb.ListToolsRequest())).tools
    assert not (await world.bob.stub.ListToolServers(pb.ListToolServersRequest())).tool_servers
    missing = await refused(world.bob.stub.GetToolServer(pb.GetToolServerRequest(id=server.id)))
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    not_theirs = await refused(world.bob.stub.CallTool(call("calc__add", a=1, b=1)))
    assert not_theirs.code() == grpc.StatusCode.NOT_FOUND
    gone = await refused(world.bob.stub.DeleteToolServer(pb.DeleteToolServerRequest(id=server.id)))
    assert gone.code() == grpc.StatusCode.NOT_FOUND
    # Each tenant names its servers freely: the same name in another tenant is another server.
    await register(world.bob, "calc", world.weather_url)
    assert [t.name for t in (await world.bob.stub.ListTools(pb.ListToolsRequest())).tools] == [
        "calc__forecast"
    ]


async def test_server_registration_refuses_bad_input_naming_the_field(world: World) -> None:
    cases = [
        (pb.ToolServer(url=world.weather_url), "tool_server.name"),
        (pb.ToolServer(name="weather"), "tool_server.url"),
        (pb.ToolServer(name="Weather!", url=world.weather_url), "tool_server.name"),
        (pb.ToolServer(name="weather", url="ftp://example.test/mcp"), "tool_server.url"),
    ]
    for draft, field in cases:
        error = await refused(
            world.alice.stub.CreateToolServer(pb.CreateToolServerRequest(tool_server=draft))
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, draft
        assert field in (error.details() or ""), (draft, error.details())
    await register(world.alice, "weather", world.weather_url)
    taken = await refused(register(world.alice, "weather", world.calculator_url))
    assert taken.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_servers_page_and_a_deleted_server_leaves_the_catalogue(world: World) -> None:
    first = await register(world.alice, "weather", world.weather_url)
    await register(world.alice, "calc", world.calculator_url)
    page = await world.alice.stub.ListToolServers(pb.ListToolServersRequest(page_size=1))
    assert [s.id for s in page.tool_servers] == [first.id]
    rest = await world.alice.stub.ListToolServers(pb.ListToolServersRequest(page_token=page.next_page_token))
    assert [s.name for s in rest.tool_servers] == ["calc"]
    assert not rest.next_page_token
    stale = await refused(
        world.alice.stub.DeleteToolServer(pb.DeleteToolServerRequest(id=first.id, etag="not-the-etag"))
    )
    assert stale.code() == grpc.StatusCode.FAILED_PRECONDITION
    await world.alice.stub.DeleteToolServer(pb.DeleteToolServerRequest(id=first.id, etag=first.etag))
    names = [t.name for t in (await world.alice.stub.ListTools(pb.ListToolsRequest())).tools]
    assert names == ["calc__add", "calc__divide", "calc__multiply"]
