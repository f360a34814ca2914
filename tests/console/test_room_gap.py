"""The live room shows what happened while it was subscribing, once, without a reload.

The room subscribes before it reads the stored history; a subscription without a last event id is
live from a moment the browser cannot name, so the room reads the newest page again when the
subscription comes after the history. Here the subscribe frame is held back (the WebSocket goes
through Playwright) while a whole round runs and is stored: the room has read an empty history by
then, and must still show the round when the subscription lands, each answer once."""

from __future__ import annotations

import asyncio
import json
import re

from playwright.async_api import Page, WebSocketRoute, expect

from tests.console.flows import WAIT_MS, sign_in, stored_answers, streams_by_turn
from tests.world import World

ROUND_SECONDS = 30


async def _answers_stored(world: World, conversation_id: str, count: int) -> None:
    for _ in range(ROUND_SECONDS * 10):
        if len(await stored_answers(world, conversation_id)) >= count:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{count} answers were not stored within {ROUND_SECONDS} s")


async def test_a_round_during_the_subscription_is_shown_once_without_a_reload(
    page: Page, console_world: World
) -> None:
    world = await console_world.other_tenant()
    agents = [await world.agent(name) for name in ("Ada", "Grace")]
    conversation = await world.conversation(agents)
    round_stored = asyncio.Event()
    held: list[str] = []
    tasks: set[asyncio.Task[None]] = set()

    async def forward_after_the_round(server: WebSocketRoute, message: str) -> None:
        await asyncio.wait_for(round_stored.wait(), ROUND_SECONDS + 10)
        server.send(message)

    def route(socket: WebSocketRoute) -> None:
        server = socket.connect_to_server()

        def to_server(message: str | bytes) -> None:
            text = message if isinstance(message, str) else message.decode()
            if json.loads(text).get("action") == "subscribe" and not held:
                held.append(text)
                task = asyncio.ensure_future(forward_after_the_round(server, text))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                return
            server.send(message)

        socket.on_message(to_server)

    await page.route_web_socket(re.compile(r".*/v1/ws.*"), route)
    await sign_in(page, world, world.tenant.username)
    await page.get_by_role("link", name="Conversations", exact=True).click()
    async with page.expect_response(
        lambda response: f"/v1/conversations/{conversation.id}/messages" in response.url,
        timeout=WAIT_MS,
    ) as history:
        await page.get_by_role("link", name=conversation.title, exact=True).first.click()
    assert (await (await history.value).json()).get("messages", []) == []
    assert held, "the room read its history before it asked to subscribe"

    # The round runs and is stored while the room's subscription waits.
    await world.post(conversation.id, "Hello, both of you")
    await _answers_stored(world, conversation.id, len(agents))
    round_stored.set()

    status = page.get_by_test_id("connection-status")
    await expect(status).to_have_attribute("data-state", "live", timeout=WAIT_MS)
    streams = page.get_by_test_id("agent-stream")
    await expect(streams).to_have_count(len(agents), timeout=WAIT_MS)
    await expect(page.get_by_test_id("message")).to_have_count(1)
    assert await streams_by_turn(page) == await stored_answers(world, conversation.id)

    # The next round streams live; the page read again on its first event repeats nothing.
    await page.get_by_test_id("message-input").fill("Once more")
    await page.get_by_test_id("send").click()
    await _answers_stored(world, conversation.id, 2 * len(agents))
    await expect(streams.nth(2 * len(agents) - 1)).to_have_attribute(
        "data-state", "completed", timeout=WAIT_MS
    )
    await expect(streams).to_have_count(2 * len(agents))
    await expect(page.get_by_test_id("message")).to_have_count(2)
    assert await streams_by_turn(page) == await stored_answers(world, conversation.id)
