"""What the console tests do in the browser more than once: sign in through the real authorize
flow, wait for what the console says, and hold what the room shows against what was stored."""

from __future__ import annotations

import re

from macp.conversation.v1 import conversation_service_pb2 as conversation_pb
from playwright.async_api import Page, expect

from tests.tokens import PASSWORD
from tests.world import World

# Each wait for the console is bounded: a mesh on a busy 2-core machine answers in well under this.
WAIT_MS = 15_000


async def sign_in(page: Page, world: World, username: str, *, password: str = PASSWORD) -> None:
    """From the console's signed-out screen through the token service's own login page (the edge
    serves it at /oauth2/authorize) and back: the console's header then names the tenant."""
    await page.goto(f"{world.front_url}/console/")
    await page.get_by_test_id("sign-in").click()
    await page.wait_for_url(re.compile(r".*/oauth2/authorize\?.*"), timeout=WAIT_MS)
    await page.get_by_label("Username").fill(username)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(re.compile(r".*/console/(?!callback).*"), timeout=WAIT_MS)
    await expect(page.get_by_test_id("tenant")).to_have_text(world.tenant.tenant_id, timeout=WAIT_MS)


async def stored_answers(world: World, conversation_id: str) -> dict[str, str]:
    """The agents' stored answers of the conversation, by turn id."""
    return {
        message.turn_id: message.text
        for message in await world.messages(conversation_id)
        if message.role == conversation_pb.MESSAGE_ROLE_AGENT
    }


async def streams_by_turn(page: Page) -> dict[str, str]:
    """What the room shows of each agent's answer, by turn id: an answer shown twice is one turn
    with two streams, which the callers' count checks catch."""
    streams = page.get_by_test_id("agent-stream")
    shown: dict[str, str] = {}
    for index in range(await streams.count()):
        stream = streams.nth(index)
        turn_id = await stream.get_attribute("data-turn-id") or ""
        shown[turn_id] = await stream.locator(".stream-text").text_content() or ""
    return shown
