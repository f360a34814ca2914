"""An upstream registered with token exchange gets a token addressed to itself alone: the user as
`sub`, the gateway in `act`, only `tools:call`; never the caller's own token. A server that checks
its audience refuses anything else, and that refusal is a clear error of the call."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from macp.tool_gateway.v1 import tool_gateway_service_pb2 as pb

from services.example_tools.servers import forecast_for
from tests.example_tools import Guarded, grpc_keys, serving_guarded_weather
from tests.token.harness import unverified
from tests.tool_gateway.conftest import World, new_tenants, refused, register
from tests.tool_gateway.test_catalogue import call


@pytest.fixture
async def world(module_world: World) -> AsyncIterator[World]:
    """The module's one gateway, as two tenants of this test's own: no test here needs one to itself."""
    async with new_tenants(module_world) as world:
        yield world


@pytest.fixture
async def guarded(world: World) -> AsyncIterator[Guarded]:
    """The weather server, accepting only MACP tokens addressed to its own URL."""
    keys = grpc_keys(world.tokens.harness.stub)
    async with serving_guarded_weather(keys, world.tokens.environ["MACP_TOKEN_ISSUER"]) as served:
        yield served


async def test_the_upstream_gets_a_token_for_itself_with_the_gateway_acting(
    world: World, guarded: Guarded
) -> None:
    await register(world.alice, "weather", guarded.url, pb.UPSTREAM_AUTH_TOKEN_EXCHANGE)
    catalogue = await world.alice.stub.ListTools(pb.ListToolsRequest())
    assert [t.name for t in catalogue.tools] == ["weather__forecast"], catalogue.unavailable
    answer = await world.alice.stub.CallTool(call("weather__forecast", city="Oslo"))
    assert answer.text == forecast_for("Oslo")

    _, callers_claims = unverified(world.alice.token)
    assert guarded.server.received, "the server accepted no token"
    for claims in guarded.server.received:
        assert claims.aud == (guarded.url,)
        assert (claims.sub, claims.tenant_id) == (callers_claims["sub"], world.alice.tenant_id)
        assert claims.scopes == ("tools:call",)
        assert claims.jti != callers_claims["jti"]  # a token of its own, never the caller's
        [gateway] = claims.actor_chain  # the gateway acts; the caller's token came straight from it
        assert gateway.client_id == claims.client_id
        assert gateway.client_id


async def test_a_server_that_checks_its_audience_refuses_the_gateway_without_a_token(
    world: World, guarded: Guarded
) -> None:
    await register(world.alice, "weather", guarded.url)  # registered without upstream auth
    error = await refused(world.alice.stub.CallTool(call("weather__forecast", city="Oslo")))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "the server answered HTTP 401" in (error.details() or "")
    assert not guarded.server.received
