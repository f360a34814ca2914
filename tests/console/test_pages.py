"""The console's pages beyond the room in Debian's Chromium: an agent deleted after the browser's
confirmation, a conversation archived with its download link leading to its very transcript in S3,
the sign-in page refusing a wrong password in words, and every page on a phone-sized screen with
nothing wider than the screen.

Every page a test reaches is screenshotted and checked with axe-core (tests/console/browser.py).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence

import httpx
from macp.conversation.v1 import conversation_service_pb2 as conversation_pb
from playwright.async_api import Browser, Dialog, Page, expect

from tests.console.browser import PHONE, check_page
from tests.console.flows import WAIT_MS, sign_in
from tests.tokens import bearer
from tests.world import World


async def _store_notes(world: World, conversation_id: str, texts: Sequence[str]) -> list[str]:
    """System messages stored straight through the conversation service (no round runs); their
    ids, in stored order."""
    ids = []
    for text in texts:
        message = conversation_pb.Message(
            id=str(uuid.uuid4()),
            conversation_id=conversation_id,
            role=conversation_pb.MESSAGE_ROLE_SYSTEM,
            text=text,
        )
        reply = await world.conversations.AppendMessage(
            conversation_pb.AppendMessageRequest(message=message),
            metadata=bearer(world.conversation_token),
            timeout=10,
        )
        ids.append(reply.message.id)
    return ids


async def _titled_conversation(
    world: World, title: str, agents: Sequence[conversation_pb.Agent], policy: str = "TURN_POLICY_ROUND_ROBIN"
) -> str:
    """A conversation created through the edge's REST API, as the console does; its id."""
    async with httpx.AsyncClient(
        base_url=world.front_url, timeout=10, headers={"authorization": f"Bearer {world.edge_token}"}
    ) as api:
        created = await api.post(
            "/v1/conversations",
            json={"title": title, "participantAgentIds": [a.id for a in agents], "turnPolicy": policy},
        )
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


async def _fits_the_screen(page: Page, name: str) -> None:
    """Nothing on the page is wider than the viewport: no sideways scrolling of the whole page."""
    widths = await page.evaluate(
        "() => ({ scroll: document.documentElement.scrollWidth, inner: window.innerWidth })"
    )
    assert widths["scroll"] <= widths["inner"], (
        f"{name} is {widths['scroll']} px wide on a {widths['inner']} px screen"
    )


async def test_deleting_an_agent_asks_first_and_removes_it(page: Page, console_world: World) -> None:
    world = await console_world.other_tenant()
    keep, doomed = await world.agent("Keep"), await world.agent("Doomed")
    await sign_in(page, world, world.tenant.username)
    await page.get_by_role("link", name="Agents", exact=True).click()
    rows = page.get_by_test_id("agent-row")
    await expect(rows).to_have_count(2, timeout=WAIT_MS)

    asked: list[str] = []

    async def accept(dialog: Dialog) -> None:
        asked.append(dialog.message)
        await dialog.accept()

    page.on("dialog", accept)
    await page.get_by_role("button", name="Delete Doomed").click()
    await expect(page.get_by_test_id("agents-status")).to_contain_text("Deleted Doomed", timeout=WAIT_MS)
    assert asked == ["Delete the agent Doomed?"]
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_have_attribute("data-agent-id", keep.id)
    await expect(page.locator(f"[data-agent-id='{doomed.id}']")).to_have_count(0)
    await check_page(page, "16-agent-deleted")
    # Gone from the platform too, not only from the page.
    await page.reload()
    await expect(rows).to_have_count(1, timeout=WAIT_MS)
    await expect(rows.first).to_have_attribute("data-agent-id", keep.id)


async def test_an_archived_conversations_download_link_is_its_transcript(
    page: Page, console_world: World
) -> None:
    world = await console_world.other_tenant()
    conversation_id = await _titled_conversation(world, "Kept for later", [await world.agent("Ada")])
    stored = await _store_notes(world, conversation_id, ["First note", "Second note", "Third note"])
    await sign_in(page, world, world.tenant.username)
    await page.get_by_role("link", name="Conversations", exact=True).click()
    row = page.locator(f"[data-testid=conversation-row][data-conversation-id='{conversation_id}']")
    await row.get_by_role("button", name="Archive Kept for later").click()

    status = page.get_by_test_id("conversations-status")
    await expect(status).to_contain_text("Archived Kept for later (3 messages)", timeout=WAIT_MS)
    await expect(row).to_contain_text("archived", ignore_case=True)
    await expect(row.get_by_role("button", name=re.compile("^Archive"))).to_have_count(0)
    link = row.get_by_test_id("archive-download")
    await expect(link).to_be_visible()
    await check_page(page, "17-conversation-archived")

    url = await link.get_attribute("href")
    assert url, "the download link has no address"
    assert url.startswith("http"), url
    async with httpx.AsyncClient(timeout=10) as s3:
        download = await s3.get(url)
    assert download.status_code == 200, download.text
    lines = [json.loads(line) for line in download.text.splitlines()]
    assert [line["id"] for line in lines] == stored
    assert {line["conversationId"] for line in lines} == {conversation_id}
    assert [line["text"] for line in lines] == ["First note", "Second note", "Third note"]


async def test_the_sign_in_page_says_a_password_is_wrong(page: Page, console_world: World) -> None:
    world = await console_world.other_tenant()
    await page.goto(f"{world.front_url}/console/")
    await page.get_by_test_id("sign-in").click()
    await page.wait_for_url(re.compile(r".*/oauth2/authorize\?.*"), timeout=WAIT_MS)
    await page.get_by_label("Username").fill(world.tenant.username)
    await page.get_by_label("Password").fill("not the password")
    await page.get_by_role("button", name="Sign in").click()

    await expect(page.get_by_role("alert")).to_have_text("Wrong username or password.", timeout=WAIT_MS)
    # Still on the sign-in page, the username kept and the password asked for again.
    assert "/oauth2/authorize" in page.url
    await expect(page.get_by_label("Username")).to_have_value(world.tenant.username)
    await expect(page.get_by_label("Password")).to_have_value("")
    await expect(page.get_by_label("Password")).to_be_focused()
    await check_page(page, "18-sign-in-wrong-password")


async def test_every_page_fits_a_phone(browser: Browser, console_world: World) -> None:
    world = await console_world.other_tenant()
    agents = [await world.agent(name) for name in ("Ada", "Grace", "Alan")]
    title = "A conversation with a rather long title, longer than a phone is wide"
    conversation_id = await _titled_conversation(world, title, agents, "TURN_POLICY_BID")
    await _store_notes(world, conversation_id, ["A note stored before the room was opened."])
    context = await browser.new_context(viewport=PHONE)  # type: ignore[arg-type]
    try:
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        await sign_in(page, world, world.tenant.username)

        await page.get_by_role("link", name="Agents", exact=True).click()
        await expect(page.get_by_test_id("agent-row")).to_have_count(len(agents), timeout=WAIT_MS)
        await check_page(page, "19-phone-agents")
        await _fits_the_screen(page, "the agents page")

        await page.get_by_role("link", name="Conversations", exact=True).click()
        await expect(page.get_by_test_id("conversation-row")).to_have_count(1, timeout=WAIT_MS)
        await check_page(page, "20-phone-conversations")
        await _fits_the_screen(page, "the conversations page")

        await page.get_by_role("link", name=title).click()
        await expect(page.get_by_test_id("connection-status")).to_have_attribute(
            "data-state", "live", timeout=WAIT_MS
        )
        await page.get_by_test_id("message-input").fill("Hello from a phone")
        await page.get_by_test_id("send").click()
        await expect(page.get_by_test_id("bid-bar")).to_have_count(len(agents), timeout=WAIT_MS)
        await expect(page.get_by_test_id("agent-stream").last).to_have_attribute(
            "data-state", re.compile("completed|stored"), timeout=WAIT_MS
        )
        await check_page(page, "21-phone-room")
        await _fits_the_screen(page, "the room")

        await page.get_by_role("link", name="Usage", exact=True).click()
        await expect(page.get_by_test_id("usage-chart")).to_be_visible(timeout=WAIT_MS)
        await check_page(page, "22-phone-usage")
        await _fits_the_screen(page, "the usage page")
        assert not errors, f"the page threw: {errors}"
    finally:
        await context.close()
