"""The web console end to end in Debian's Chromium: signed in through the real authorize flow, it
manages agents and conversations, streams a multi-agent round live (and survives its WebSocket
dropping mid-round), charts usage, shows the audit log to admins only, and keeps tenants apart.

Every page a test reaches is screenshotted (tests/console/browser.py, shown in docs/console.md) and
checked with axe-core for serious and critical accessibility violations.
"""

from __future__ import annotations

import re

import httpx
from playwright.async_api import BrowserContext, Page, WebSocketRoute, expect

from tests.console.browser import check_page
from tests.console.flows import WAIT_MS, sign_in, stored_answers, streams_by_turn
from tests.world import World

AGENT_NAMES = ("Ada", "Grace", "Alan")


def _api(world: World) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=world.front_url, timeout=10, headers={"authorization": f"Bearer {world.edge_token}"}
    )


async def _create_agents_in_the_console(page: Page, world: World) -> None:
    await page.get_by_role("link", name="Agents").click()
    for name in AGENT_NAMES:
        await page.get_by_test_id("new-agent").click()
        form = page.get_by_test_id("agent-form")
        await form.get_by_label("Name").fill(name)
        await form.get_by_label("Provider").fill("local")
        await form.get_by_label("Model").fill("echo-1")
        await form.get_by_role("button", name="Create").click()
        await expect(page.get_by_test_id("agent-row").filter(has_text=name)).to_have_count(1, timeout=WAIT_MS)
    await expect(page.get_by_test_id("agent-row")).to_have_count(len(AGENT_NAMES))


async def _create_conversation_in_the_console(page: Page, title: str) -> str:
    await page.get_by_role("link", name="Conversations").click()
    await page.get_by_test_id("new-conversation").click()
    form = page.get_by_test_id("conversation-form")
    await form.get_by_label("Title").fill(title)
    for name in AGENT_NAMES:
        await form.get_by_label(name, exact=True).check()
    await form.get_by_role("button", name="Create").click()
    row = page.get_by_test_id("conversation-row").filter(has_text=title)
    await expect(row).to_have_count(1, timeout=WAIT_MS)
    conversation_id = await row.get_attribute("data-conversation-id")
    assert conversation_id
    return conversation_id


async def test_sign_in_through_the_authorize_flow_shows_tenant_and_plan(
    page: Page, console_world: World
) -> None:
    await page.goto(f"{console_world.front_url}/console/")
    await expect(page.get_by_test_id("sign-in")).to_be_visible(timeout=WAIT_MS)
    await check_page(page, "01-signed-out")
    await page.get_by_test_id("sign-in").click()
    await page.wait_for_url(re.compile(r".*/oauth2/authorize\?.*"), timeout=WAIT_MS)
    await check_page(page, "02-sign-in-page")

    await sign_in(page, console_world, console_world.tenant.username)
    await expect(page.get_by_test_id("plan")).to_have_text(re.compile("free", re.IGNORECASE))
    await expect(page.get_by_test_id("who")).to_contain_text(console_world.tenant.username)
    await check_page(page, "03-signed-in")

    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_test_id("sign-in")).to_be_visible(timeout=WAIT_MS)


async def test_the_console_opened_at_another_origin_links_to_the_issuers(
    page: Page, console_world: World
) -> None:
    """The redirect URI is the issuer's, compared exactly: from another name for the same host, the
    console says where sign-in works instead of offering a button that can only fail."""
    issuer = console_world.front_url
    await page.goto(issuer.replace("127.0.0.1", "localhost") + "/console/")
    link = page.get_by_test_id("sign-in-elsewhere").get_by_role("link")
    await expect(link).to_have_attribute("href", f"{issuer}/console/", timeout=WAIT_MS)
    await expect(page.get_by_test_id("sign-in")).to_have_count(0)


async def test_a_live_round_streams_every_agent_and_survives_a_dropped_websocket(
    page: Page, console_world: World
) -> None:
    world = await console_world.other_tenant()
    # The room's WebSocket goes through Playwright, which can cut it as a network would.
    sockets: list[WebSocketRoute] = []

    def route(socket: WebSocketRoute) -> None:
        socket.connect_to_server()
        sockets.append(socket)

    await page.route_web_socket(re.compile(r".*/v1/ws.*"), route)
    await sign_in(page, world, world.tenant.username)
    await _create_agents_in_the_console(page, world)
    await check_page(page, "04-agents")
    conversation_id = await _create_conversation_in_the_console(page, "Three voices")
    await check_page(page, "05-conversations")

    await page.get_by_role("link", name="Three voices").click()
    status = page.get_by_test_id("connection-status")
    await expect(status).to_have_attribute("data-state", "live", timeout=WAIT_MS)

    # Each answer streams 40 tokens 20 ms apart: long enough to see every one grow.
    world.book("tokens=40,pace=0.02")
    await page.get_by_test_id("message-input").fill("Hello, all three of you")
    await page.get_by_test_id("send").click()
    streams = page.get_by_test_id("agent-stream")
    for index in range(len(AGENT_NAMES)):
        stream = streams.nth(index)
        await expect(stream).to_have_attribute("data-state", "streaming", timeout=WAIT_MS)
        await expect(stream.locator(".stream-text")).not_to_be_empty()
        await expect(stream).to_have_attribute("data-state", "completed", timeout=WAIT_MS)
    await check_page(page, "06-room")
    shown = await streams_by_turn(page)
    assert len(shown) == len(AGENT_NAMES)
    assert shown == await stored_answers(world, conversation_id)

    # Now a slower round, its WebSocket cut while the first agent is halfway through.
    world.book("tokens=120,pace=0.02")
    await page.get_by_test_id("message-input").fill("Once more, slowly")
    await page.get_by_test_id("send").click()
    second_round = streams.nth(len(AGENT_NAMES))
    await expect(second_round).to_have_attribute("data-state", "streaming", timeout=WAIT_MS)
    await expect(second_round.locator(".stream-text")).not_to_be_empty()
    await sockets[-1].close(code=4000, reason="cut by the test")
    await expect(status).not_to_have_attribute("data-state", "live", timeout=WAIT_MS)
    await expect(status).to_have_attribute("data-state", "live", timeout=WAIT_MS)
    assert len(sockets) >= 2, "the room never connected again"
    last = streams.nth(2 * len(AGENT_NAMES) - 1)
    await expect(last).to_have_attribute("data-state", "completed", timeout=3 * WAIT_MS)
    await expect(streams).to_have_count(2 * len(AGENT_NAMES))
    shown = await streams_by_turn(page)
    assert len(shown) == 2 * len(AGENT_NAMES), "an answer shown twice, or one missing"
    assert shown == await stored_answers(world, conversation_id)

    # The usage of today's rounds reaches the chart (metering consumes the events in a moment).
    await page.get_by_role("link", name="Usage").click()
    chart = page.get_by_test_id("usage-chart")
    for _ in range(20):
        tokens = await chart.get_attribute("data-today-tokens", timeout=WAIT_MS)
        if tokens and int(tokens) > 0:
            break
        await page.wait_for_timeout(500)
        await page.reload()
    assert int(tokens or 0) > 0, f"today's bar shows {tokens!r} tokens"
    # The free plan's 100 turns, not the part of them used so far, are the gauge's full scale.
    turns = page.locator("[data-testid=quota-gauge][data-meter=METER_AGENT_TURNS]")
    await expect(turns).to_have_attribute("data-allowance", "100")
    await expect(turns).to_contain_text("6 of 100 turns included")
    await check_page(page, "07-usage")


async def test_an_edit_conflict_is_shown_as_such(page: Page, console_world: World) -> None:
    world = await console_world.other_tenant()
    async with _api(world) as api:
        created = await api.post(
            "/v1/agents", json={"name": "Hopper", "provider": "local", "model": "echo-1"}
        )
        assert created.status_code == 201, created.text
        agent_id = created.json()["id"]
        await sign_in(page, world, world.tenant.username)
        await page.get_by_role("link", name="Agents").click()
        row = page.locator(f"[data-testid=agent-row][data-agent-id='{agent_id}']")
        await row.get_by_role("button", name=re.compile("Edit")).click()
        form = page.get_by_test_id("agent-form")
        await form.get_by_label("Name").fill("Grace Hopper")
        # Someone else changes the agent after the form was filled from it.
        etag = created.headers["etag"]
        changed = await api.patch(
            f"/v1/agents/{agent_id}", json={"model": "echo-2"}, headers={"if-match": etag}
        )
        assert changed.status_code == 200, changed.text
    await form.get_by_role("button", name="Save").click()
    await expect(page.get_by_test_id("agent-form-status")).to_contain_text(
        re.compile("changed|conflict", re.IGNORECASE), timeout=WAIT_MS
    )
    await check_page(page, "08-agent-conflict")


async def test_the_audit_log_is_for_admins_only(context: BrowserContext, console_world: World) -> None:
    world = await console_world.other_tenant()
    member = await context.new_page()
    await sign_in(member, world, world.tenant.username)
    await expect(member.get_by_role("link", name="Audit log")).to_have_count(0)
    await member.goto(f"{world.front_url}/console/audit")
    await expect(member.get_by_role("heading", name=re.compile("not found", re.IGNORECASE))).to_be_visible(
        timeout=WAIT_MS
    )
    await member.get_by_role("button", name="Sign out").click()
    await expect(member.get_by_test_id("sign-in")).to_be_visible(timeout=WAIT_MS)

    admin_name = await world.tokens.user(world.tenant, admin=True)
    admin = await context.new_page()
    await sign_in(admin, world, admin_name)
    await admin.get_by_role("link", name="Audit log").click()
    rows = admin.get_by_test_id("audit-row")
    await expect(rows.first).to_be_visible(timeout=WAIT_MS)
    # Filtered by an action that is there, every row is of that action; by a subject nobody is, none.
    actions = {await rows.nth(index).get_attribute("data-action") for index in range(await rows.count())}
    assert len(actions) > 1, f"the tenant's sign-ins and agent changes should show several actions: {actions}"
    action = sorted(a for a in actions if a)[0]
    await admin.get_by_label("Action").select_option(action)
    await admin.get_by_role("button", name="Filter").click()
    await expect(rows.first).to_be_visible(timeout=WAIT_MS)
    await expect(admin.locator(f"[data-testid=audit-row]:not([data-action='{action}'])")).to_have_count(0)
    await admin.get_by_label("Action").select_option("")
    await admin.get_by_label(re.compile("^Subject")).fill("nobody-at-all")
    await admin.get_by_role("button", name="Filter").click()
    await expect(rows).to_have_count(0, timeout=WAIT_MS)
    await admin.get_by_label(re.compile("^Subject")).fill("")
    await admin.get_by_role("button", name="Filter").click()
    await expect(rows.first).to_be_visible(timeout=WAIT_MS)
    await check_page(admin, "09-audit-log")


async def test_another_tenants_conversation_is_not_found(page: Page, console_world: World) -> None:
    owner = await console_world.other_tenant()
    agent = await owner.agent("Private")
    conversation = await owner.conversation([agent])
    stranger = await console_world.other_tenant()
    await sign_in(page, stranger, stranger.tenant.username)
    await page.goto(f"{stranger.front_url}/console/conversations/{conversation.id}")
    await expect(page.get_by_text(re.compile("not found", re.IGNORECASE)).first).to_be_visible(
        timeout=WAIT_MS
    )
    await expect(page.get_by_text("Private")).to_have_count(0)
    await check_page(page, "10-not-found")
