"""`macp demo` against the whole mesh: three agents, one message, the round printed live."""

from __future__ import annotations

import asyncio
import io

import pytest

from services.cli.demo import demo
from services.cli.main import build_parser
from services.example_tools.audience import keys_over_http
from services.example_tools.servers import forecast_for
from tests.example_tools import serving_guarded_weather
from tests.world import World

pytestmark = pytest.mark.integration


@pytest.fixture
async def world(module_world: World) -> World:
    """The module's one mesh, as a tenant of this test's own: no test here needs a mesh to itself."""
    return await module_world.other_tenant()


@pytest.mark.parametrize("policy", ["bid", "coordinator"])
async def test_the_demo_prints_bids_speakers_text_and_usage(world: World, policy: str) -> None:
    args = build_parser("demo").parse_args(["demo", "--policy", policy])
    out = io.StringIO()
    # The demo blocks (urllib, then its own event loop), as the CLI runs it: give it a thread.
    await asyncio.to_thread(demo, world.front_url, world.edge_token, args, out)
    printed = out.getvalue()
    assert "conversation " in printed
    assert "Chef, Dba, Poet" in printed
    if policy == "bid":
        assert "bids: " in printed
        assert "speaks" in printed
    assert "[1] " in printed
    assert "usage: agent_turn" in printed
    assert "usage: orchestration" in printed
    assert "round over after" in printed


async def test_the_tools_demo_shows_an_agent_calling_the_weather_server(world: World) -> None:
    keys = keys_over_http(f"{world.front_url}/.well-known/jwks.json")
    issuer = world.tokens.environ["MACP_TOKEN_ISSUER"]
    async with serving_guarded_weather(keys, issuer) as guarded:
        weather = guarded.url
        args = build_parser("demo").parse_args(["demo", "--tools", "--tools-url", weather])
        out = io.StringIO()
        await asyncio.to_thread(demo, world.front_url, world.edge_token, args, out)
        # Again: the server is registered already, and the demo uses it.
        await asyncio.to_thread(demo, world.front_url, world.edge_token, args, io.StringIO())
    printed = out.getvalue()
    assert f"tool server weather registered: {weather}" in printed
    assert 'calls weather__forecast {"city": "Oslo"}' in printed
    assert f"weather__forecast returned: {forecast_for('Oslo')}" in printed
    assert "round over after 1 turns" in printed
    assert f"the weather server was called with a token for {weather} (user " in printed
    assert "scope tools:call, acting: client " in printed
