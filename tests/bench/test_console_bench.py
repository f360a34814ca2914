"""bench/console.py's baseline page and in-page probe in Debian's Chromium, against a stand-in for
the front listener: a WebSocket server on 127.0.0.1 that answers like the edge (`subscribed`, then
for each message frame `token_delta` events a few ms apart and a `round_completed`), and a 404 for
any plain page, as the edge answers the baseline's path. The console's own row needs the whole
stack and the built console: `python -m bench.console` runs it."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from http import HTTPStatus
from pathlib import Path

import pytest
from playwright.async_api import async_playwright
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from bench.console import Side, one_round, open_baseline, report
from bench.console_probe import launch, probe_script
from bench.orchestrator import Bench

TOKENS = 7
CONVERSATION_ID = str(uuid.uuid4())


async def edge_like(connection: ServerConnection) -> None:
    async for raw in connection:
        frame = json.loads(raw)
        if frame["action"] == "subscribe":
            await connection.send(
                json.dumps({"type": "subscribed", "conversation_id": frame["conversation_id"]})
            )
            continue
        await connection.send(json.dumps({"type": "ack", "message_id": frame["message_id"]}))
        turn = str(uuid.uuid4())
        for index in range(TOKENS):
            delta = {"turn_id": turn, "text": f" word{index}"}
            event = {"type": "event", "kind": "token_delta", "event": {"token_delta": delta}}
            await connection.send(json.dumps(event))
            await asyncio.sleep(0.005)
        completed = {"trigger_message_id": frame["message_id"]}
        await connection.send(
            json.dumps({"type": "event", "kind": "round_completed", "event": {"round_completed": completed}})
        )


def not_a_websocket(connection: ServerConnection, request: Request) -> Response | None:
    if request.path.startswith("/v1/ws?access_token="):
        return None
    return connection.respond(HTTPStatus.NOT_FOUND, "no route\n")


@pytest.fixture
async def front() -> AsyncIterator[Server]:
    async with serve(edge_like, "127.0.0.1", 0, process_request=not_a_websocket) as server:
        yield server


def test_the_probe_needs_the_turn_in_its_selector() -> None:
    with pytest.raises(ValueError, match="text_selector"):
        probe_script("#log p")


async def test_the_baseline_page_streams_and_the_probe_times_every_rounds_first_token(
    front: Server, tmp_path: Path
) -> None:
    port = next(iter(front.sockets)).getsockname()[1]
    bench = Bench(f"http://127.0.0.1:{port}", "", "a-token", tmp_path, {})
    async with async_playwright() as playwright:
        browser = await launch(playwright)
        try:
            sides: list[Side] = []
            for _ in range(2):
                side = await open_baseline(await browser.new_context(), bench, CONVERSATION_ID)
                await side.cdp.send("Performance.enable")
                sides.append(side)
            for number in range(3):
                for side in sides:
                    await one_round(side, f"Round {number}")
            streamed = await sides[0].page.locator("#log p").all_text_contents()
        finally:
            await browser.close()

    assert streamed == ["".join(f" word{index}" for index in range(TOKENS))] * 3
    for side in sides:
        assert side.tokens == 3 * TOKENS
        assert len(side.to_dom_ms) == len(side.to_paint_ms) == 3
        for to_dom, to_paint in zip(side.to_dom_ms, side.to_paint_ms, strict=True):
            assert 0 <= to_dom <= to_paint < 1000
        assert side.cpu_seconds["TaskDuration"] >= side.cpu_seconds["ScriptDuration"] > 0
        assert side.javascript_gzip_bytes > 0
    table = report(sides).splitlines()
    assert len(table) == 5  # the header, its rule, both pages and their ratios
    assert table[2].startswith(f"| {sides[0].name} | 3 | {3 * TOKENS} |")
