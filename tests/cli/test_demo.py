"""`macp demo` against the whole mesh: three agents, one message, the round printed live."""

from __future__ import annotations

import asyncio
import io

import pytest

from services.cli.demo import demo
from services.cli.main import build_parser
from tests.world import World

pytestmark = pytest.mark.integration


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
