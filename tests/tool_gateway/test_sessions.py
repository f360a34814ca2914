"""The gateway's upstream sessions (services/tool_gateway/sessions.py), seen from the upstream: one
session carries a caller's calls; a session that failed is replaced; the callers waiting on a
session that dies fail at once; a restarted upstream gets a fresh session; two callers' credentials
never share one; the pool keeps at most its bound and closes idle sessions."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import grpc
import pytest
from macp.tool_gateway.v1 import tool_gateway_service_pb2 as pb

from services.example_tools.servers import calculator_server, forecast_for, weather_server
from services.tool_gateway import upstream
from services.tool_gateway.sessions import SessionLimits
from services.tool_gateway.upstream import UpstreamHttp, UpstreamLimits
from tests.asgi import serving
from tests.tool_gateway.conftest import World, new_caller, new_tenants, refused, register
from tests.tool_gateway.misbehaving import Misbehaving, Seen, faulty_server
from tests.tool_gateway.recording import Recording
from tests.tool_gateway.test_catalogue import call

PROTOCOLS = pytest.mark.parametrize("legacy", [False, True], ids=["2026-07-28", "2025-11-25"])


@pytest.fixture
async def world(module_world: World) -> AsyncIterator[World]:
    """The module's one gateway, as two tenants of this test's own: no test here needs one to itself."""
    async with new_tenants(module_world) as world:
        yield world


@PROTOCOLS
async def test_one_session_carries_every_call_of_a_caller(world: World, legacy: bool) -> None:
    recording = Recording(calculator_server().streamable_http_app(), legacy=legacy)
    async with serving(lambda _url: recording) as url:
        await register(world.alice, "calc", f"{url}/mcp")
        assert len((await world.alice.stub.ListTools(pb.ListToolsRequest())).tools) == 3
        at_once = [world.alice.stub.CallTool(call("calc__add", a=n, b=1)) for n in range(10)]
        assert [answer.text for answer in await asyncio.gather(*at_once)] == [str(n + 1) for n in range(10)]
        for n in range(5):
            assert (await world.alice.stub.CallTool(call("calc__multiply", a=n, b=2))).text == str(2 * n)
    assert recording.handshakes == 1
    assert len(recording.methods("tools/call")) == 15
    if legacy:
        [session_id] = {seen.session_id for seen in recording.methods("tools/call")}
        assert session_id


async def test_a_session_that_failed_is_replaced_and_one_that_answered_is_kept(world: World) -> None:
    recording = Recording(Misbehaving(faulty_server().streamable_http_app(), Seen()))
    async with serving(lambda _url: recording) as url:
        await register(world.alice, "faulty", f"{url}/mcp")
        assert (await world.alice.stub.CallTool(call("faulty__fine"))).text == "fine"
        # The server answering, even with a tool it does not have, leaves the session sound.
        await world.alice.stub.CallTool(call("faulty__missing"))
        assert recording.handshakes == 1
        for opened, fault in enumerate(("fail500", "garbage", "cut"), start=2):
            await refused(world.alice.stub.CallTool(call(f"faulty__{fault}")))
            assert (await world.alice.stub.CallTool(call("faulty__fine"))).text == "fine"
            assert recording.handshakes == opened, fault


async def test_callers_waiting_on_a_session_that_dies_fail_at_once(world: World) -> None:
    # Answers as JSON: an answer over the cap then breaks the SDK's transport, which ends the session.
    seen = Seen()
    app = Misbehaving(faulty_server().streamable_http_app(json_response=True), seen)
    async with serving(lambda _url: app) as url:
        await register(world.alice, "faulty", f"{url}/mcp")
        await register(world.alice, "calc", world.calculator_url)
        assert (await world.alice.stub.CallTool(call("faulty__fine"))).text == "fine"
        hanging = asyncio.ensure_future(refused(world.alice.stub.CallTool(call("faulty__hang"))))
        await seen.reached("hang")
        too_large = await refused(world.alice.stub.CallTool(call("faulty__huge")))
        assert too_large.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, too_large.details()
        cut = time.monotonic()
        waiting = await hanging
        # At once, not at its deadline: the server takes over a second to build its 50 MB answer,
        # so the hanging call's 3 s deadline is at least a second away here.
        assert time.monotonic() - cut < 0.5
        assert waiting.code() == grpc.StatusCode.UNAVAILABLE
        assert "calling hang failed: its session ended" in (waiting.details() or ""), waiting.details()
        assert (await world.alice.stub.CallTool(call("calc__add", a=1, b=2))).text == "3"
        assert (await world.alice.stub.CallTool(call("faulty__fine"))).text == "fine"


@PROTOCOLS
async def test_a_restarted_upstream_gets_a_fresh_session_and_the_call_succeeds(
    world: World, legacy: bool
) -> None:
    first = Recording(weather_server().streamable_http_app(), legacy=legacy)
    async with serving(lambda _url: first) as url:
        await register(world.alice, "weather", f"{url}/mcp")
        assert (await world.alice.stub.CallTool(call("weather__forecast", city="Oslo"))).text == (
            forecast_for("Oslo")
        )
    restarted = Recording(weather_server().streamable_http_app(), legacy=legacy)
    async with serving(lambda _url: restarted, port=int(url.rsplit(":", 1)[1])):
        answer = await world.alice.stub.CallTool(call("weather__forecast", city="Lyon"))
    assert answer.text == forecast_for("Lyon")
    if legacy:
        # The old session, which the restarted server does not know (404), then a fresh one.
        [old] = {seen.session_id for seen in first.methods("tools/call")}
        calls = restarted.methods("tools/call")
        assert calls[0].session_id == old
        assert restarted.handshakes == 1
        assert calls[-1].session_id not in (None, old)


async def test_two_callers_credentials_never_share_a_session(world: World) -> None:
    recording = Recording(weather_server().streamable_http_app(), legacy=True)
    async with serving(lambda _url: recording) as url, AsyncExitStack() as stack:
        tenant = await world.tokens.tenant()
        first = await new_caller(world.tokens, stack, world.service.port, tenant)
        second = await new_caller(world.tokens, stack, world.service.port, tenant)
        await register(first, "weather", f"{url}/mcp", pb.UPSTREAM_AUTH_TOKEN_EXCHANGE)
        for caller in (first, second):  # one at a time first: each caller's token, then cached
            assert (await caller.stub.CallTool(call("weather__forecast", city="Rome"))).text
        for _ in range(2):
            answers = await asyncio.gather(
                *(
                    caller.stub.CallTool(call("weather__forecast", city="Rome"))
                    for caller in (first, second, first, second)
                )
            )
            assert {answer.text for answer in answers} == {forecast_for("Rome")}
    credentials: dict[str, set[str | None]] = {}
    for seen in recording.seen:
        if seen.session_id:
            credentials.setdefault(seen.session_id, set()).add(seen.authorization)
    assert recording.handshakes == 2
    assert len(credentials) == 2
    assert all(len(used) == 1 for used in credentials.values()), credentials
    [one], [other] = credentials.values()
    assert one != other
    assert (one or "").startswith("Bearer ")


async def test_the_pool_keeps_at_most_its_bound_and_closes_idle_sessions() -> None:
    recording = Recording(calculator_server().streamable_http_app())
    http = UpstreamHttp(UpstreamLimits(3.0, 1 << 20), SessionLimits(max_sessions=2, idle_seconds=0.3))
    server = pb.ToolServer(id=str(uuid.uuid4()), name="calc", etag="1")

    async def add(server: pb.ToolServer, credential: str) -> None:
        headers = {"authorization": f"Bearer {credential}"}
        assert (await upstream.call_tool(server, "add", {"a": 2, "b": 3}, http, headers)).text == "5"

    try:
        async with serving(lambda _url: recording) as url:
            server.url = f"{url}/mcp"
            for credential in ("a", "b", "c"):
                await add(server, credential)
            assert (recording.handshakes, len(http.sessions)) == (3, 2)
            await add(server, "c")  # kept
            await add(server, "a")  # the least recently used went, to make room for c
            assert (recording.handshakes, len(http.sessions)) == (4, 2)
            changed = pb.ToolServer(id=server.id, name="calc", url=server.url, etag="2")
            await add(changed, "a")  # a changed registration: its former sessions go
            assert (recording.handshakes, len(http.sessions)) == (5, 1)
            http.forget(server.id)  # a deleted one: all of them
            assert len(http.sessions) == 0
            await add(changed, "a")
            assert len(http.sessions) == 1
            await asyncio.sleep(0.6)
            assert len(http.sessions) == 0  # idle for longer than 0.3 s
            assert recording.handshakes == 6
    finally:
        await http.close()
