"""An upstream that hangs, answers 500, cuts its stream, answers JSON-RPC that is not, returns 50 MB
or lists 10,000 tools: each is a clear error for that call or that server; five failures in a row
open the server's breaker; the gateway stays healthy and other servers keep working."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from macp.tool_gateway.v1 import tool_gateway_service_pb2 as pb

from tests.asgi import serving
from tests.tool_gateway.conftest import World, new_tenants, refused, register
from tests.tool_gateway.misbehaving import Misbehaving, Seen, crowded_server, faulty_server
from tests.tool_gateway.test_catalogue import call


@pytest.fixture
async def world(module_world: World) -> AsyncIterator[World]:
    """The module's one gateway, as two tenants of this test's own: no test here needs one to itself."""
    async with new_tenants(module_world) as world:
        yield world


@dataclass(frozen=True)
class Faulty:
    world: World
    seen: Seen


@pytest.fixture
async def faulty(world: World) -> AsyncIterator[Faulty]:
    seen = Seen()
    async with AsyncExitStack() as stack:
        faulty_url = await stack.enter_async_context(
            serving(lambda _url: Misbehaving(faulty_server().streamable_http_app(), seen))
        )
        await register(world.alice, "faulty", f"{faulty_url}/mcp")
        await register(world.alice, "calc", world.calculator_url)
        yield Faulty(world, seen)


async def still_serving(world: World) -> None:
    """The gateway answers its health check SERVING and calls to a sound server succeed."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{world.service.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        health = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)  # type: ignore[attr-defined]
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert (await world.alice.stub.CallTool(call("calc__add", a=1, b=2))).text == "3"


@pytest.mark.parametrize(
    ("tool", "code", "says"),
    [
        ("hang", grpc.StatusCode.UNAVAILABLE, "calling hang timed out"),
        ("fail500", grpc.StatusCode.UNAVAILABLE, "calling fail500: the server answered HTTP 500"),
        ("cut", grpc.StatusCode.UNAVAILABLE, "calling cut failed: SSE stream ended without a response"),
        ("garbage", grpc.StatusCode.UNAVAILABLE, "calling garbage failed: Failed to parse JSON response"),
        ("huge", grpc.StatusCode.RESOURCE_EXHAUSTED, "the answer is over the cap"),
    ],
)
async def test_a_faulty_call_is_a_clear_error_of_that_call_only(
    faulty: Faulty, tool: str, code: grpc.StatusCode, says: str
) -> None:
    started = time.monotonic()
    error = await refused(faulty.world.alice.stub.CallTool(call(f"faulty__{tool}")))
    assert (error.code(), says in (error.details() or "")) == (code, True), error.details()
    assert time.monotonic() - started < 10  # the server's deadline (3 s here), not the client's
    await still_serving(faulty.world)
    assert (await faulty.world.alice.stub.CallTool(call("faulty__fine"))).text == "fine"


async def test_a_server_listing_10000_tools_is_unavailable_with_its_reason_alone(faulty: Faulty) -> None:
    # Built here alone: registering 10,000 tools takes the SDK a few seconds.
    async with serving(lambda _url: crowded_server().streamable_http_app()) as crowded_url:
        await register(faulty.world.alice, "crowded", f"{crowded_url}/mcp")
        catalogue = await faulty.world.alice.stub.ListTools(pb.ListToolsRequest())
    [crowded] = catalogue.unavailable
    assert crowded.server_name == "crowded"
    assert "crowded" in crowded.reason
    assert not [tool for tool in catalogue.tools if tool.server_name == "crowded"]
    available = {tool.name for tool in catalogue.tools if tool.available}
    assert {"calc__add", "faulty__fine", "faulty__huge"} <= available
    await still_serving(faulty.world)


async def test_five_failures_in_a_row_open_the_servers_breaker(faulty: Faulty) -> None:
    for _ in range(5):
        error = await refused(faulty.world.alice.stub.CallTool(call("faulty__fail500")))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert faulty.seen.calls["fail500"] == 5
    for tool in ("fail500", "fine"):
        error = await refused(faulty.world.alice.stub.CallTool(call(f"faulty__{tool}")))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert "failed 5 times in a row; it is not called for" in (error.details() or "")
    assert faulty.seen.calls == {"fail500": 5}  # refused without reaching the server
    catalogue = await faulty.world.alice.stub.ListTools(pb.ListToolsRequest())
    assert "faulty" in {server.server_name for server in catalogue.unavailable}
    await still_serving(faulty.world)
