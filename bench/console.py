"""`python -m bench.console`: what the web console costs the browser to show a streamed answer,
beside a bare page doing the same work in the same run.

The stack runs as bench.turn_cost runs it (bench/orchestrator.py `running_parts`: each part its
own process, as `macp up` runs them), with the token issuer equal to Envoy's front listener's
origin: the console's redirect URI is `<issuer>/console/callback`, and the browser loads the
console from that origin. The console's build (`console/dist`) is what the edge serves. One agent
answers every message with 20 tokens, 10 ms apart (the local provider server's `tokens=20,pace=0.01`).

Debian's Chromium under Playwright (bench/console_probe.py, as the console's browser tests launch
it) holds two pages, each in a context of its own, and each in a conversation of its own with the
same agent:

- the console: signed in as the seeded admin through the real authorize flow (the token service's
  login page, the code exchanged with PKCE by the console), in the room
  `/console/conversations/<id>`, each message typed into its composer and sent with its button;
- the baseline: a bare page on the same origin (its document written into the front listener's
  answer for `/bench-baseline.html`, so the edge knows nothing of it; see `open_baseline` for why
  not Playwright's `page.route`) with the same composer hooks, which opens the same
  WebSocket (`/v1/ws?access_token=`, the seeded admin's token from the password grant), subscribes,
  sends the message frame, and appends each `token_delta`'s text to the turn's one element.

Each page gets one untimed round (warm: the room's first render, the socket, the JIT), then the
rounds alternate between them, one at a time. Both pages carry the same probe
(bench/console_probe.py): for each round's first token, the time from the WebSocket frame's arrival
to its text in the DOM, and to the next animation frame (the paint). The renderer's CPU per
streamed token is CDP `Performance.getMetrics` (TaskDuration: all the main thread's work;
ScriptDuration: JavaScript; LayoutDuration + RecalcStyleDuration) read right before each message is
typed and right after the page is done with its answer (so the other page's round is not counted),
summed over the timed rounds and divided by the `token_delta` frames the page received; it counts
Playwright's own calls into the page (fill, click, the probe's waits) on both pages alike.
The JavaScript each page loaded, gzipped (level 9): the console's script files as the browser asked
for them, the baseline's inline script.

Bounded: every wait has a timeout and the whole run a deadline; only 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import html
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from playwright.async_api import BrowserContext, CDPSession, Page, async_playwright, expect

from bench.console_probe import (
    CONSOLE_TEXT_SELECTOR,
    CPU_METRICS,
    first_token,
    frames_seen,
    launch,
    probe_script,
    require_chromium,
    turn_count,
    until,
)
from bench.orchestrator import REPO, Bench, new_conversations, running_parts
from bench.slice import book_behavior
from bench.stats import machine_line, markdown_table, percentile, ratio
from bench.turn_cost import AS_MACP_UP, TURN_MODEL
from services.stack import seed
from services.stack.config import free_port

CONSOLE_BUILD = REPO / "console" / "dist"
BEHAVIOR = "tokens=20,pace=0.01"
DESKTOP = {"width": 1280, "height": 800}
WAIT_SECONDS = 15.0  # any one wait in the browser
WAIT_MS = WAIT_SECONDS * 1000
SETUP_SECONDS = 120.0  # sign-in, both pages open, their warm rounds
ROUND_SECONDS = 20.0  # one round of both pages, at most, towards the run's deadline
BASELINE_PATH = "/bench-baseline.html"
BASELINE_TEXT_SELECTOR = '#log p[data-turn-id="{turn}"]'
# The bare page's whole program: what any page showing a stream must do, and nothing else.
BASELINE_SCRIPT = """
const body = document.body;
const input = document.querySelector('[data-testid="message-input"]');
const send = document.querySelector('[data-testid="send"]');
const status = document.querySelector('[data-testid="connection-status"]');
const log = document.getElementById("log");
const texts = new Map();
const token = encodeURIComponent(body.dataset.token);
const socket = new WebSocket(`ws://${location.host}/v1/ws?access_token=${token}`);
socket.onopen = () => {
  socket.send(JSON.stringify({ action: "subscribe", conversation_id: body.dataset.conversationId }));
};
socket.onclose = (close) => {
  status.dataset.state = "closed";
  status.textContent = `closed: ${close.code} ${close.reason}`;
};
socket.onmessage = (message) => {
  const frame = JSON.parse(message.data);
  if (frame.type === "subscribed") { status.dataset.state = "live"; send.disabled = false; return; }
  if (frame.type === "error") { status.textContent = message.data; return; }
  if (frame.kind !== "token_delta") return;
  const delta = frame.event.token_delta;
  let text = texts.get(delta.turn_id);
  if (!text) {
    text = document.createElement("p");
    text.dataset.turnId = delta.turn_id;
    log.append(text);
    texts.set(delta.turn_id, text);
  }
  text.textContent += delta.text;
};
document.getElementById("composer").onsubmit = (event) => {
  event.preventDefault();
  const frame = { action: "message", conversation_id: body.dataset.conversationId };
  socket.send(JSON.stringify({ ...frame, text: input.value, message_id: crypto.randomUUID() }));
  input.value = "";
};
"""
# The console's answer is done once the room shows it ended (streamed to its end, or stored).
CONSOLE_SETTLED = """(turn) => {
  const stream = document.querySelector(`[data-testid="agent-stream"][data-turn-id="${turn}"]`);
  return stream !== null && /^(completed|stored)$/.test(stream.dataset.state);
}"""


def baseline_page(token: str, conversation_id: str) -> str:
    """The bare page: a composer with the console's hooks, one element per turn, its script inline."""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Baseline</title></head>'
        f'<body data-token="{html.escape(token)}" data-conversation-id="{html.escape(conversation_id)}">'
        '<p data-testid="connection-status" data-state="connecting"></p><div id="log"></div>'
        '<form id="composer"><textarea aria-label="Message" data-testid="message-input"></textarea>'
        '<button type="submit" data-testid="send" disabled>Send</button></form>'
        f"<script>{BASELINE_SCRIPT}</script></body></html>"
    )


@dataclass
class Side:
    """One page under test, and what was measured of it."""

    name: str
    page: Page
    cdp: CDPSession
    settled: str | None  # a JS predicate of the turn id: the page is done with that answer
    javascript: dict[str, bytes]  # the scripts it loaded (URL, or "inline"), as served
    to_dom_ms: list[float] = field(default_factory=list)
    to_paint_ms: list[float] = field(default_factory=list)
    tokens: int = 0
    cpu_seconds: dict[str, float] = field(default_factory=dict)

    def forget(self) -> None:
        """Drop what was measured so far (the warm-up round's)."""
        self.to_dom_ms.clear()
        self.to_paint_ms.clear()
        self.tokens = 0
        self.cpu_seconds.clear()

    @property
    def javascript_gzip_bytes(self) -> int:
        return sum(len(gzip.compress(body, compresslevel=9)) for body in self.javascript.values())

    def cpu_us_per_token(self, *metrics: str) -> float:
        return sum(self.cpu_seconds[metric] for metric in metrics) * 1e6 / max(1, self.tokens)


async def cpu_metrics(cdp: CDPSession) -> dict[str, float]:
    answer = await cdp.send("Performance.getMetrics")
    values = {metric["name"]: float(metric["value"]) for metric in answer["metrics"]}
    return {name: values[name] for name in CPU_METRICS}


async def one_round(side: Side, text: str) -> None:
    """Send `text` from the page's composer and wait until the page is done with the answer; note
    its first token's frame→DOM and frame→paint times, its frames, and the renderer's CPU between
    the message typed and the answer done."""
    index = await turn_count(side.page)
    tokens, completed = await frames_seen(side.page)
    before = await cpu_metrics(side.cdp)
    await side.page.get_by_test_id("message-input").fill(text)
    await side.page.get_by_test_id("send").click(timeout=WAIT_MS)
    timing = await first_token(side.page, index, WAIT_SECONDS)
    await until(side.page, "(seen) => window.__macpProbe.completed > seen", completed, WAIT_SECONDS)
    if side.settled is not None:
        turn = await side.page.evaluate("(index) => window.__macpProbe.order[index]", index)
        await until(side.page, side.settled, turn, WAIT_SECONDS)
    after = await cpu_metrics(side.cdp)
    in_dom, shown = timing["inDomAt"], timing["shownAt"]
    if in_dom is None or shown is None:
        raise RuntimeError(f"{side.name}: the first token was never painted: {timing}")
    side.to_dom_ms.append(in_dom - timing["frameAt"])
    side.to_paint_ms.append(shown - timing["frameAt"])
    side.tokens += (await frames_seen(side.page))[0] - tokens
    for name in CPU_METRICS:
        side.cpu_seconds[name] = side.cpu_seconds.get(name, 0.0) + after[name] - before[name]


async def open_console(context: BrowserContext, bench: Bench, conversation_id: str) -> Side:
    """The console signed in through the authorize flow, in the conversation's room, live."""
    admin = seed.load(bench.directory)
    if admin is None:
        raise SystemExit(f"no seeded admin in {bench.directory}")
    await context.add_init_script(probe_script(CONSOLE_TEXT_SELECTOR))
    page = await context.new_page()
    scripts: set[str] = set()
    page.on(
        "request", lambda request: scripts.add(request.url) if request.resource_type == "script" else None
    )
    await page.goto(f"{bench.front_url}/console/")
    await page.get_by_test_id("sign-in").click(timeout=WAIT_MS)
    await page.wait_for_url(re.compile(r".*/oauth2/authorize\?.*"), timeout=WAIT_MS)
    await page.get_by_label("Username").fill(admin.username)
    await page.get_by_label("Password").fill(admin.password)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(re.compile(r".*/console/(?!callback).*"), timeout=WAIT_MS)
    await expect(page.get_by_test_id("tenant")).to_have_text(admin.tenant_id, timeout=WAIT_MS)
    await page.goto(f"{bench.front_url}/console/conversations/{conversation_id}")
    await expect(page.get_by_test_id("connection-status")).to_have_attribute(
        "data-state", "live", timeout=WAIT_MS
    )
    await page.wait_for_load_state("networkidle", timeout=WAIT_MS)
    # The very files the browser asked for, fetched again (a response's body is gone once the page
    # navigates away from it, as signing in does).
    javascript = {url: await (await page.request.get(url)).body() for url in sorted(scripts)}
    if not javascript:
        raise RuntimeError("the console loaded no script")
    return Side("MACP console", page, await context.new_cdp_session(page), CONSOLE_SETTLED, javascript)


async def open_baseline(context: BrowserContext, bench: Bench, conversation_id: str) -> Side:
    """The bare page on the console's origin, subscribed.

    Its document is written into a page the front listener answered (`/bench-baseline.html`,
    which the edge does not have: a JSON 401 with no Content-Security-Policy), so the edge knows
    nothing of it and it stays in the local address space: a page fulfilled by Playwright's
    `page.route` has no address, Chromium counts it as public, and its Local Network Access check
    then refuses its WebSocket to 127.0.0.1 (net::ERR_BLOCKED_BY_LOCAL_NETWORK_ACCESS_CHECKS)."""
    await context.add_init_script(probe_script(BASELINE_TEXT_SELECTOR))
    page = await context.new_page()
    said: list[str] = []
    page.on("console", lambda message: said.append(message.text))
    page.on("pageerror", lambda error: said.append(str(error)))
    await page.goto(f"{bench.front_url}{BASELINE_PATH}")
    await page.set_content(baseline_page(bench.edge_token, conversation_id))
    status = page.get_by_test_id("connection-status")
    try:
        await expect(status).to_have_attribute("data-state", "live", timeout=WAIT_MS)
    except AssertionError:
        raise RuntimeError(
            f"the baseline page never subscribed: {await status.text_content()} {said}"
        ) from None
    javascript = {"inline": BASELINE_SCRIPT.encode()}
    return Side("baseline: a bare page", page, await context.new_cdp_session(page), None, javascript)


async def measure(bench: Bench, rounds: int, say: Callable[[str], None]) -> list[Side]:
    console_conversation, baseline_conversation = await new_conversations(bench, 2, TURN_MODEL)
    async with asyncio.timeout(SETUP_SECONDS + rounds * ROUND_SECONDS), async_playwright() as playwright:
        browser = await launch(playwright)
        try:
            say("signing in to the console")
            console = await open_console(
                await browser.new_context(viewport=DESKTOP),  # type: ignore[arg-type]
                bench,
                console_conversation,
            )
            baseline = await open_baseline(
                await browser.new_context(viewport=DESKTOP),  # type: ignore[arg-type]
                bench,
                baseline_conversation,
            )
            sides = [console, baseline]
            for side in sides:
                await side.cdp.send("Performance.enable")
                await one_round(side, "Warm-up")
                side.forget()
            say(f"{rounds} rounds on each page, alternating")
            for number in range(rounds):
                for side in sides:
                    await one_round(side, f"Round {number}")
            return sides
        finally:
            await browser.close()


def _spread(values: Sequence[float]) -> list[str]:
    ordered = sorted(values)
    return [f"{percentile(ordered, 0.5):.1f}", f"{percentile(ordered, 0.95):.1f}", f"{ordered[-1]:.1f}"]


def report(sides: Sequence[Side]) -> str:
    headers = [
        "page",
        "rounds",
        "tokens",
        "frame→DOM p50 ms",
        "p95",
        "max",
        "frame→paint p50 ms",
        "p95",
        "max",
        "renderer task µs/token",
        "script µs/token",
        "layout+style µs/token",
        "JS gzipped KB",
    ]
    lines = [
        [
            side.name,
            str(len(side.to_dom_ms)),
            str(side.tokens),
            *_spread(side.to_dom_ms),
            *_spread(side.to_paint_ms),
            f"{side.cpu_us_per_token('TaskDuration'):.0f}",
            f"{side.cpu_us_per_token('ScriptDuration'):.0f}",
            f"{side.cpu_us_per_token('LayoutDuration', 'RecalcStyleDuration'):.0f}",
            f"{side.javascript_gzip_bytes / 1024:.1f}",
        ]
        for side in sides
    ]
    console, baseline = sides

    def median(values: Sequence[float]) -> float:
        return percentile(sorted(values), 0.5)

    lines.append(
        [
            "console / baseline",
            "",
            "",
            ratio(median(console.to_dom_ms), median(baseline.to_dom_ms)),
            "",
            "",
            ratio(median(console.to_paint_ms), median(baseline.to_paint_ms)),
            "",
            "",
            ratio(console.cpu_us_per_token("TaskDuration"), baseline.cpu_us_per_token("TaskDuration")),
            ratio(console.cpu_us_per_token("ScriptDuration"), baseline.cpu_us_per_token("ScriptDuration")),
            ratio(
                console.cpu_us_per_token("LayoutDuration", "RecalcStyleDuration"),
                baseline.cpu_us_per_token("LayoutDuration", "RecalcStyleDuration"),
            ),
            "",
        ]
    )
    return markdown_table(headers, lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.console", description=__doc__)
    parser.add_argument("--rounds", type=int, default=30, help="timed rounds on each page")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds: expected a positive number of rounds")
    if not (CONSOLE_BUILD / "index.html").exists():
        parser.error(f"{CONSOLE_BUILD} has no build: run `npm ci && npm run build:console` first")
    require_chromium()

    def say(line: str) -> None:
        print(f"# {line}", file=sys.stderr, flush=True)

    header = machine_line()
    front_port = free_port()
    # The console signs in against the issuer and is sent back to `<issuer>/console/callback`:
    # the issuer is the front listener's own origin, as in the console's browser tests.
    overrides = AS_MACP_UP | {
        "MACP_ENVOY_FRONT_PORT": str(front_port),
        "MACP_TOKEN_ISSUER": f"http://127.0.0.1:{front_port}",
    }
    with running_parts(say, kafka_storage="s3", overrides=overrides) as bench:
        book_behavior(bench.provider_url, TURN_MODEL, BEHAVIOR)
        sides = asyncio.run(measure(bench, args.rounds, say))
    print(header)
    print(f"\nFirst token of each round ({BEHAVIOR}), and the renderer's CPU per streamed token:\n")
    print(report(sides))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
