"""Platform-wide servers: an operator (scope `macp:admin`) registers one for every tenant; each
tenant lists and calls it but cannot remove it, and a tenant's own server of the same name takes
its place in that tenant only."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from macp.tool_gateway.v1 import tool_gateway_service_pb2 as pb
from macp.tool_gateway.v1 import tool_gateway_service_pb2_grpc as pb_grpc

from services.example_tools.servers import forecast_for
from services.token.store.directory import SYSTEM_TENANT
from tests.tokens import bearer_channel
from tests.tool_gateway.conftest import AUDIENCE, World, refused, register
from tests.tool_gateway.test_catalogue import call

OPERATOR_SCOPES = "macp:admin tools:admin tools:read tools:call"


async def _internal_stub(world: World, scope: str) -> AsyncIterator[pb_grpc.ToolGatewayServiceStub]:
    """A stub calling the gateway as an internal client (the system tenant) holding `scope`."""
    harness = world.tokens.harness
    client = await harness.register(scope=scope, name="operator console")
    token = (await harness.client_token(client, scope, [AUDIENCE])).access_token
    async with bearer_channel(world.service.port, token) as opened:
        yield pb_grpc.ToolGatewayServiceStub(opened)


@pytest.fixture
async def operator(world: World) -> AsyncIterator[pb_grpc.ToolGatewayServiceStub]:
    async for stub in _internal_stub(world, OPERATOR_SCOPES):
        yield stub


def platform_server(name: str, url: str) -> pb.CreateToolServerRequest:
    return pb.CreateToolServerRequest(tool_server=pb.ToolServer(name=name, url=url, platform=True))


async def tool_names(stub: pb_grpc.ToolGatewayServiceStub) -> list[str]:
    catalogue = await stub.ListTools(pb.ListToolsRequest())
    assert not catalogue.unavailable
    return [tool.name for tool in catalogue.tools]


async def test_every_tenant_lists_and_calls_a_platform_server_and_none_removes_it(
    world: World, operator: pb_grpc.ToolGatewayServiceStub
) -> None:
    created = (await operator.CreateToolServer(platform_server("weather", world.weather_url))).tool_server
    assert created.platform
    assert created.tenant_id == ""
    for tenant in (world.alice, world.bob):
        assert await tool_names(tenant.stub) == ["weather__forecast"]
        answer = await tenant.stub.CallTool(call("weather__forecast", city="Quito"))
        assert answer.text == forecast_for("Quito")
        listed = (await tenant.stub.ListToolServers(pb.ListToolServersRequest())).tool_servers
        assert [(s.id, s.platform) for s in listed] == [(created.id, True)]
        got = await tenant.stub.GetToolServer(pb.GetToolServerRequest(id=created.id))
        assert got.tool_server == created
        error = await refused(tenant.stub.DeleteToolServer(pb.DeleteToolServerRequest(id=created.id)))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "platform-wide" in (error.details() or "")
        assert "macp:admin" in (error.details() or "")

    # Only the operator removes it, and then it is gone for every tenant.
    await operator.DeleteToolServer(pb.DeleteToolServerRequest(id=created.id))
    for tenant in (world.alice, world.bob):
        assert await tool_names(tenant.stub) == []


async def test_a_tenants_own_server_of_the_same_name_wins_in_that_tenant_only(
    world: World, operator: pb_grpc.ToolGatewayServiceStub
) -> None:
    platform = (await operator.CreateToolServer(platform_server("weather", world.weather_url))).tool_server
    # Alice's own "weather" is the calculator: her catalogue and calls take hers.
    own = await register(world.alice, "weather", world.calculator_url)
    assert await tool_names(world.alice.stub) == ["weather__add", "weather__divide", "weather__multiply"]
    assert (await world.alice.stub.CallTool(call("weather__add", a=2, b=3))).text == "5"
    # Her weather server has no forecast: the call reaches hers, which says so.
    answer = await world.alice.stub.CallTool(call("weather__forecast", city="Quito"))
    assert answer.is_error
    assert answer.text != forecast_for("Quito")
    # She still sees the platform's registration, shadowed, beside her own.
    listed = (await world.alice.stub.ListToolServers(pb.ListToolServersRequest())).tool_servers
    assert [s.id for s in listed] == [platform.id, own.id]
    # Bob keeps the platform's.
    assert await tool_names(world.bob.stub) == ["weather__forecast"]
    # Once hers is gone, the platform's serves her again.
    await world.alice.stub.DeleteToolServer(pb.DeleteToolServerRequest(id=own.id))
    assert await tool_names(world.alice.stub) == ["weather__forecast"]


async def test_only_an_operator_registers_a_platform_server(world: World) -> None:
    error = await refused(world.alice.stub.CreateToolServer(platform_server("weather", world.weather_url)))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (error.details() or "").startswith("tool_server.platform:")
    assert "scope macp:admin" in (error.details() or "")
    # An internal client without the operator's scope registers servers of its own tenant only.
    async for stub in _internal_stub(world, "tools:admin tools:read"):
        error = await refused(stub.CreateToolServer(platform_server("weather", world.weather_url)))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        plain = pb.CreateToolServerRequest(tool_server=pb.ToolServer(name="weather", url=world.weather_url))
        own = (await stub.CreateToolServer(plain)).tool_server
        assert not own.platform
        assert own.tenant_id == SYSTEM_TENANT
    assert await tool_names(world.bob.stub) == []
