"""The live room's details in Debian's Chromium: the bids of a bidding round as one bar per agent,
cancelling a round and interrupting one agent while it streams, older messages paged in as the
reader scrolls up (in order, none twice), and a refusal for quota said in words.

Every state a test looks at is screenshotted and checked with axe-core (tests/console/browser.py).
"""

from __future__ import annotations

import re
import uuid

from macp.conversation.v1 import conversation_service_pb2 as conversation_pb
from playwright.async_api import Page, expect

from tests.console.browser import check_page
from tests.console.flows import WAIT_MS, sign_in
from tests.tokens import bearer
from tests.world import World

# More stored messages than the room's first page (PAGE in console/src/room/room.tsx), and more
# than two pages: the reader scrolls up twice before the conversation's beginning shows.
STORED_MESSAGES = 75
ROOM_PAGE = 30
SCROLLS = 10
# A slow answer: 400 tokens 20 ms apart, eight seconds of streaming to stop halfway.
SLOW = "tokens=400,pace=0.02"


async def _open_room(page: Page, world: World, conversation: conversation_pb.Conversation) -> None:
    await sign_in(page, world, world.tenant.username)
    await page.goto(f"{world.front_url}/console/conversations/{conversation.id}")
    await expect(page.get_by_test_id("connection-status")).to_have_attribute(
        "data-state", "live", timeout=WAIT_MS
    )


async def _say(page: Page, words: str) -> None:
    await page.get_by_test_id("message-input").fill(words)
    await page.get_by_test_id("send").click()


async def test_a_bidding_round_shows_one_bar_per_agent_with_its_score(
    page: Page, console_world: World
) -> None:
    world = await console_world.other_tenant()
    agents = [await world.agent(name) for name in ("Ada", "Grace", "Alan")]
    conversation = await world.conversation(agents, policy=conversation_pb.TURN_POLICY_BID)
    await _open_room(page, world, conversation)
    await _say(page, "Who of you answers best?")

    bars = page.get_by_test_id("bid-bar")
    await expect(bars).to_have_count(len(agents), timeout=WAIT_MS)
    # A bidding round bids again before each of its turns (the bars wait anew each time): the
    # bars are read once the round is over, when they show its last results.
    events = page.get_by_test_id("room-events")
    await expect(events).to_contain_text(re.compile(r"Round over"), timeout=WAIT_MS)
    await expect(events).to_contain_text(re.compile(r"won the bid|No agent bid"))
    await expect(bars).to_have_count(len(agents))
    for agent in agents:
        bar = bars.and_(page.locator(f"[data-agent-id='{agent.id}']"))
        score = await bar.get_attribute("data-score")
        assert score is not None, f"{agent.name} has no bid bar"
        assert re.fullmatch(r"(0|1)(\.\d+)?", score), f"{agent.name}'s bar shows the score {score!r}"
        assert 0 <= float(score) <= 1, f"{agent.name} bid {score}"
    await expect(page.get_by_test_id("agent-stream").last).to_have_attribute(
        "data-state", re.compile("completed|stored"), timeout=WAIT_MS
    )
    await check_page(page, "11-room-bids")


async def test_cancelling_the_round_ends_the_stream_cancelled_and_says_so(
    page: Page, console_world: World
) -> None:
    world = await console_world.other_tenant()
    agents = [await world.agent(name) for name in ("Ada", "Grace")]
    conversation = await world.conversation(agents)
    await _open_room(page, world, conversation)
    world.book(SLOW)
    await _say(page, "Take your time")
    stream = page.get_by_test_id("agent-stream").first
    await expect(stream).to_have_attribute("data-state", "streaming", timeout=WAIT_MS)
    await expect(stream.locator(".stream-text")).not_to_be_empty()

    await page.get_by_test_id("cancel-round").click()
    await expect(stream).to_have_attribute("data-state", "cancelled", timeout=WAIT_MS)
    events = page.get_by_test_id("room-events")
    await expect(events).to_contain_text(re.compile(r"finished \(cancelled\)"), timeout=WAIT_MS)
    await expect(events).to_contain_text(re.compile(r"Round over \(cancel"), timeout=WAIT_MS)
    # The round is over: no second agent was asked, nothing streams, cancel is off again.
    await expect(page.get_by_test_id("agent-stream")).to_have_count(1)
    await expect(page.get_by_test_id("cancel-round")).to_be_disabled()
    await expect(stream).to_contain_text("(cancelled)")
    await check_page(page, "12-room-cancelled")


async def test_interrupting_a_streaming_agent_ends_its_turn(page: Page, console_world: World) -> None:
    world = await console_world.other_tenant()
    agents = [await world.agent(name) for name in ("Ada", "Grace")]
    conversation = await world.conversation(agents)
    await _open_room(page, world, conversation)
    world.book(SLOW, times=1)
    await _say(page, "Ada first, slowly")
    first = page.get_by_test_id("agent-stream").first
    await expect(first).to_have_attribute("data-state", "streaming", timeout=WAIT_MS)
    await expect(first.locator(".stream-text")).not_to_be_empty()

    interrupt = first.get_by_test_id("interrupt")
    await expect(interrupt).to_have_accessible_name("Interrupt Ada")
    await interrupt.click()
    await expect(first).to_have_attribute("data-state", "cancelled", timeout=WAIT_MS)
    await expect(first.get_by_test_id("interrupt")).to_have_count(0)
    events = page.get_by_test_id("room-events")
    await expect(events).to_contain_text("Ada finished (cancelled)", timeout=WAIT_MS)
    # Its answer stops where it was cut, short of its 400 tokens, and grows no more; a cancelled
    # turn ends its round (services/orchestrator/rounds.py), so Grace is not asked after it.
    shown = await first.locator(".stream-text").text_content() or ""
    assert 0 < len(shown.split()) < 400, f"the interrupted answer shows {len(shown.split())} words"
    await expect(events).to_contain_text(re.compile(r"Round over \(cancel"), timeout=WAIT_MS)
    await page.wait_for_timeout(500)
    await expect(first.locator(".stream-text")).to_have_text(shown)
    await expect(page.get_by_test_id("agent-stream")).to_have_count(1)
    await check_page(page, "13-room-interrupted")


async def test_older_messages_page_in_as_the_reader_scrolls_up(page: Page, console_world: World) -> None:
    world = await console_world.other_tenant()
    conversation = await world.conversation([await world.agent("Ada")])
    # Stored straight through the conversation service: messages without a round run for each.
    stored: list[str] = []
    for number in range(STORED_MESSAGES):
        message = conversation_pb.Message(
            id=str(uuid.uuid4()),
            conversation_id=conversation.id,
            role=conversation_pb.MESSAGE_ROLE_SYSTEM,
            text=f"Note {number:03d}",
        )
        reply = await world.conversations.AppendMessage(
            conversation_pb.AppendMessageRequest(message=message),
            metadata=bearer(world.conversation_token),
            timeout=10,
        )
        stored.append(reply.message.id)
    await _open_room(page, world, conversation)

    messages = page.get_by_test_id("message")
    await expect(messages).to_have_count(ROOM_PAGE, timeout=WAIT_MS)
    await expect(page.get_by_test_id("load-older")).to_be_visible()
    log = page.get_by_test_id("room-log")
    counts = [ROOM_PAGE]
    for _ in range(SCROLLS):
        if counts[-1] >= STORED_MESSAGES:
            break
        # To the top, as a reader would scroll; again if the room was still putting the reader
        # back in place after the page before (it keeps what was on screen where it was).
        await log.evaluate("(element) => { element.scrollTop = 0; }")
        try:
            await expect(messages).not_to_have_count(counts[-1], timeout=2_000)
        except AssertionError:
            continue
        counts.append(await messages.count())
    assert counts == [30, 60, 75], f"pages of {counts} messages"
    await expect(page.get_by_text("The beginning of the conversation.")).to_be_visible()
    await expect(page.get_by_test_id("load-older")).to_have_count(0)
    shown = [await message.get_attribute("data-message-id") for message in await messages.all()]
    assert shown == stored, "older messages shown out of order, doubled or missing"
    await expect(messages.first).to_contain_text("Note 000")
    await check_page(page, "14-room-older-messages")


async def test_a_round_refused_for_quota_is_said_in_words(page: Page, console_world: World) -> None:
    world = await console_world.tenant_without_turns()
    conversation = await world.conversation([await world.agent("Unpaid")])
    await _open_room(page, world, conversation)
    await _say(page, "Answer me anyway")
    events = page.get_by_test_id("room-events")
    await expect(events).to_contain_text(re.compile(r"Quota refused: .*limit of 0 turns"), timeout=WAIT_MS)
    await expect(events.locator("li.error")).to_have_count(1)
    await expect(events).to_contain_text(re.compile(r"Round over \(failed\)"), timeout=WAIT_MS)
    # The turn that was refused ends failed, with nothing streamed, and nothing runs any more.
    stream = page.get_by_test_id("agent-stream")
    await expect(stream).to_have_attribute("data-state", "failed")
    await expect(stream.locator(".stream-text")).to_be_empty()
    await expect(page.get_by_test_id("cancel-round")).to_be_disabled()
    await check_page(page, "15-room-quota-refused")
