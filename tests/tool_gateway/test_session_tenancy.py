"""Upstream sessions are never shared across tenants, even where the credential is the same for
every caller: a platform-wide server without credentials gets a session of each calling tenant
(one upstream session each, seen from the upstream), and each tenant's calls share its own."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from macp.tool_gateway.v1 import tool_gateway_service_pb2 as pb
from macp.tool_gateway.v1 import tool_gateway_service_pb2_grpc as pb_grpc

from services.example_tools.servers import calculator_server
from tests.asgi import serving
from tests.tokens import bearer_channel
from tests.tool_gateway.conftest import AUDIENCE, Caller, World
from tests.tool_gateway.recording import Recording
from tests.tool_gateway.test_catalogue import call

PROTOCOLS = pytest.mark.parametrize("legacy", [False, True], ids=["2026-07-28", "2025-11-25"])
OPERATOR_SCOPES = "macp:admin tools:admin tools:read tools:call"


@pytest.fixture
async def operator(world: World) -> AsyncIterator[pb_grpc.ToolGatewayServiceStub]:
    """The gateway called by an internal client holding `macp:admin` (it registers platform servers)."""
    harness = world.tokens.harness
    client = await harness.register(scope=OPERATOR_SCOPES, name="operator console")
    token = (await harness.client_token(client, OPERATOR_SCOPES, [AUDIENCE])).access_token
    async with bearer_channel(world.service.port, token) as opened:
        yield pb_grpc.ToolGatewayServiceStub(opened)


async def add(caller: Caller, a: int) -> None:
    assert (await caller.stub.CallTool(call("calc__add", a=a, b=1))).text == str(a + 1)


@PROTOCOLS
async def test_two_tenants_calling_a_platform_server_get_a_session_each(
    world: World, operator: pb_grpc.ToolGatewayServiceStub, legacy: bool
) -> None:
    recording = Recording(calculator_server().streamable_http_app(), legacy=legacy)
    async with serving(lambda _url: recording) as url:
        platform = pb.ToolServer(name="calc", url=f"{url}/mcp", platform=True)
        await operator.CreateToolServer(pb.CreateToolServerRequest(tool_server=platform))
        await add(world.alice, 1)
        await add(world.alice, 2)
        assert recording.handshakes == 1  # Alice's calls share her session
        await add(world.bob, 3)
        await add(world.bob, 4)
        assert recording.handshakes == 2  # Bob's are on one of his own
        await add(world.alice, 5)  # hers is still open, and still hers
    assert recording.handshakes == 2
    calls = recording.methods("tools/call")
    assert len(calls) == 5
    if legacy:
        alices, bobs = calls[0].session_id, calls[2].session_id
        assert alices
        assert bobs
        assert alices != bobs
        assert [seen.session_id for seen in calls] == [alices, alices, bobs, bobs, alices]
        # Neither caller nor the gateway sent a credential: the tenant alone told them apart.
        assert {seen.authorization for seen in recording.seen} == {None}
