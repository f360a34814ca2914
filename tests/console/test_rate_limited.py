"""The room says in words when the tenant's rate limit refuses what the user does, and how long to
wait. A mesh of its own, whose tenants may make only a few requests an hour (the shared console
mesh must not run out)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Page, expect

from services.stack.infra import Infrastructure
from tests.console.browser import check_page
from tests.console.conftest import console_mesh
from tests.console.flows import WAIT_MS, sign_in
from tests.world import World

# Enough for signing in, opening the room and a first message, not for many more.
TENANT_LIMIT = "16/hour burst 16"
MOST_MESSAGES = 20


@pytest.fixture(scope="module")
async def limited_world(
    infrastructure: Infrastructure, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[World]:
    settings = {"MACP_RATE_LIMIT_TENANT": TENANT_LIMIT}
    async with console_mesh(infrastructure, tmp_path_factory.mktemp("limited-world"), settings) as world:
        yield world


async def test_a_rate_limited_message_is_said_in_words(page: Page, limited_world: World) -> None:
    world = await limited_world.other_tenant()
    agent = await world.agent("Ada")  # through the conversation service: not counted at the edge
    conversation = await world.conversation([agent])
    world.book("tokens=1")
    await sign_in(page, world, world.tenant.username)
    await page.goto(f"{world.front_url}/console/conversations/{conversation.id}")
    await expect(page.get_by_test_id("connection-status")).to_have_attribute(
        "data-state", "live", timeout=WAIT_MS
    )
    events = page.get_by_test_id("room-events")
    refused = events.get_by_text(re.compile(r"Rate limited: .*retry after \d+ s"))
    for number in range(MOST_MESSAGES):
        await page.get_by_test_id("message-input").fill(f"Message {number}")
        await page.get_by_test_id("send").click()
        if await refused.count():
            break
        await page.wait_for_timeout(300)
    await expect(refused.first).to_be_visible(timeout=WAIT_MS)
    # The refused message is shown as not sent, with why; it was never stored.
    not_sent = page.locator("[data-testid=message][data-state=failed]")
    await expect(not_sent.first).to_contain_text("Not sent. Rate limited")
    refused_id = await not_sent.first.get_attribute("data-message-id")
    assert refused_id not in {message.id for message in await world.messages(conversation.id)}
    # Refused, not broken: the connection stays up.
    await expect(page.get_by_test_id("connection-status")).to_have_attribute("data-state", "live")
    await check_page(page, "23-room-rate-limited")
