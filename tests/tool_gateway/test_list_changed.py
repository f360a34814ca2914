"""A server that says its tool list changed is listed afresh at once, whatever the catalogue's TTL:
on 2026-07-28 through the `subscriptions/listen` stream the gateway's session holds, on 2025-11-25
through the `notifications/tools/list_changed` its session hears on the standalone GET stream. A
listen stream the server fails leaves the session's calls going."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from macp.tool_gateway.v1 import tool_gateway_service_pb2 as pb
from macp.tool_gateway.v1 import tool_gateway_service_pb2_grpc as pb_grpc
from mcp.server.context import CallNext, ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.server.session import ServerSession
from mcp.server.subscriptions import InMemorySubscriptionBus, ServerEvent, ToolsListChanged
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from services.example_tools.servers import forecast_for
from services.stack.config import free_port
from services.tool_gateway.service import DEFINITION as TOOL_GATEWAY
from tests.asgi import serving
from tests.runtime.serving import running
from tests.tokens import bearer_channel
from tests.tool_gateway.conftest import World, new_tenants, register
from tests.tool_gateway.recording import Recording
from tests.tool_gateway.test_catalogue import call

PROTOCOLS = pytest.mark.parametrize("legacy", [False, True], ids=["2026-07-28", "2025-11-25"])
# Far beyond the test: a list listed afresh was dropped by a change, never by its age.
LONG_TTL_SECONDS = "600"


@pytest.fixture
async def world(module_world: World) -> AsyncIterator[World]:
    """The module's one gateway, as two tenants of this test's own: no test here needs one to itself."""
    async with new_tenants(module_world) as world:
        yield world


class WatchedBus(InMemorySubscriptionBus):
    """The server's subscription bus, telling the test when a listen stream has subscribed."""

    def __init__(self) -> None:
        super().__init__()
        self.subscribed = asyncio.Event()

    def subscribe(self, listener: Callable[[ServerEvent], None]) -> Callable[[], None]:
        unsubscribe = super().subscribe(listener)
        self.subscribed.set()
        return unsubscribe


class RefusingBus(InMemorySubscriptionBus):
    """A bus that cannot take a subscriber: every listen stream fails at the server."""

    def subscribe(self, listener: Callable[[ServerEvent], None]) -> Callable[[], None]:
        raise RuntimeError("the bus is down")


class ChangingTools:
    """An MCP server (the SDK's MCPServer) whose tools change at runtime and which says so as each
    protocol wants: on 2026-07-28 an event on its bus, which the SDK's listen handler sends on every
    `subscriptions/listen` stream that asked for tool changes; on 2025-11-25 a
    `notifications/tools/list_changed` to each session it has served (the SDK sends it on that
    session's standalone GET stream)."""

    def __init__(self, bus: InMemorySubscriptionBus) -> None:
        self.bus = bus
        self.sessions: list[ServerSession] = []
        self.server = MCPServer("changing", version="1.0.0", subscriptions=bus, middleware=[self._remember])
        self.server.add_tool(forecast_for, name="forecast", description="Tomorrow's forecast for a city.")

    async def _remember(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> Any:
        if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS and ctx.session not in self.sessions:
            self.sessions.append(ctx.session)
        return await call_next(ctx)

    def add_quietly(self, name: str) -> None:
        self.server.add_tool(lambda city: f"{name} for {city}", name=name, description=f"The {name}.")

    async def add_and_tell(self, name: str) -> None:
        self.add_quietly(name)
        await self.bus.publish(ToolsListChanged())
        for session in self.sessions:
            await session.send_tool_list_changed()


async def tool_names(stub: pb_grpc.ToolGatewayServiceStub) -> list[str]:
    catalogue = await stub.ListTools(pb.ListToolsRequest())
    assert not catalogue.unavailable, catalogue.unavailable
    return [tool.name for tool in catalogue.tools]


async def eventually_listed(stub: pb_grpc.ToolGatewayServiceStub, expected: list[str]) -> float:
    """How long until the catalogue is `expected` (the test fails past 5 s)."""
    started = time.monotonic()
    while (names := await tool_names(stub)) != expected:
        assert time.monotonic() - started < 5, names
        await asyncio.sleep(0.05)
    return time.monotonic() - started


@asynccontextmanager
async def gateway_with_long_ttl(world: World) -> AsyncIterator[pb_grpc.ToolGatewayServiceStub]:
    """Another gateway process on the same database whose catalogue keeps a list for 10 minutes;
    a stub of it calling as Alice."""
    environ = {
        **world.environ,
        "MACP_TOOL_GATEWAY_PORT": "0",
        "MACP_TOOL_GATEWAY_METRICS_PORT": "0",
        "MACP_TOOL_GATEWAY_HTTP_PORT": str(free_port()),
        "MACP_TOOL_GATEWAY_CATALOGUE_SECONDS": LONG_TTL_SECONDS,
    }
    async with (
        running(TOOL_GATEWAY, environ) as gateway,
        bearer_channel(gateway.port, world.alice.token) as ch,
    ):
        yield pb_grpc.ToolGatewayServiceStub(ch)


async def heard_on_get_stream(recording: Recording) -> None:
    """Until the gateway's 2025-11-25 session has opened its standalone GET stream, and a moment for
    the server to take it as the session's (a notification sent before that is not delivered)."""
    started = time.monotonic()
    while not any(seen.http_method == "GET" and seen.session_id for seen in recording.seen):
        assert time.monotonic() - started < 3, "the session opened no GET stream"
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)


@PROTOCOLS
async def test_a_server_that_says_its_tools_changed_is_listed_afresh_before_the_ttl(
    world: World, legacy: bool
) -> None:
    bus = WatchedBus()
    changing = ChangingTools(bus)
    recording = Recording(changing.server.streamable_http_app(), legacy=legacy)
    async with serving(lambda _url: recording) as url, gateway_with_long_ttl(world) as stub:
        await register(world.alice, "live", f"{url}/mcp")
        assert await tool_names(stub) == ["live__forecast"]
        if legacy:
            await heard_on_get_stream(recording)
        else:
            await asyncio.wait_for(bus.subscribed.wait(), 3)
        # A change the server keeps to itself stays unseen: the list is reused for its TTL.
        changing.add_quietly("tides")
        assert await tool_names(stub) == ["live__forecast"]
        # Said, it is listed afresh at once, long before the TTL.
        await changing.add_and_tell("alerts")
        waited = await eventually_listed(stub, ["live__alerts", "live__forecast", "live__tides"])
        assert waited < 3
        answer = await stub.CallTool(call("live__alerts", city="Oslo"))
        assert answer.text == "alerts for Oslo"
    # One session heard the change and carried every operation.
    assert recording.handshakes == 1
    assert len(recording.methods("tools/list")) >= 2
    if not legacy:
        assert len(recording.methods("subscriptions/listen")) == 1


async def test_a_listen_stream_that_fails_leaves_the_session_calling(world: World) -> None:
    changing = ChangingTools(RefusingBus())
    recording = Recording(changing.server.streamable_http_app())
    async with serving(lambda _url: recording) as url, gateway_with_long_ttl(world) as stub:
        await register(world.alice, "live", f"{url}/mcp")
        assert await tool_names(stub) == ["live__forecast"]
        started = time.monotonic()
        while not recording.methods("subscriptions/listen"):
            assert time.monotonic() - started < 3, "the session opened no listen stream"
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # the server has refused it by now
        for city in ("Oslo", "Lima"):
            assert (await stub.CallTool(call("live__forecast", city=city))).text == forecast_for(city)
    assert recording.handshakes == 1
    assert len(recording.methods("tools/call")) == 2
