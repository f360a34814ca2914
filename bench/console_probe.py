"""What runs inside the browser to time a streamed answer, and the browser it runs in.

The probe is an init script (Playwright's `add_init_script`), so it runs before any script of the
page: it wraps `WebSocket`, and every socket the page opens gets a listener of the probe's,
registered before the page's own (a listener added later runs later), which notes
`performance.now()` when the first `token_delta` frame of each turn arrives, counts every
`token_delta` and `round_completed` frame, and keeps the turns in the order they began. A
MutationObserver notes when a turn's first text is in the DOM (`text_selector` names the element
that holds a turn's text, `{turn}` standing for its id), and the next animation frame after that,
the frame that paints it, is when it is on the screen. So the probe times the page's own work from
the frame's arrival to its paint, not the network nor the stack before it.

The same probe serves bench/console.py (the console beside a bare page) and the console's budget
test (tests/console/test_budgets.py): `window.__macpProbe.order[0]` is the first turn seen.

The browser is Debian's Chromium under Playwright, headless, with the switches that keep it from
calling home; `launch` is the one place it is started, by this benchmark and by the console's
browser tests (tests/console/browser.py) alike.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any, TypedDict

from playwright.async_api import Browser, Page, Playwright

CHROMIUM = Path(os.environ.get("MACP_CHROMIUM", "/usr/bin/chromium"))
LAUNCH_ARGS = (
    "--no-sandbox",  # the benchmark and the tests may run as root, where Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
# The console's text of an agent's answer (console/src/room/room.tsx, the `agent-stream` hook).
CONSOLE_TEXT_SELECTOR = '[data-testid="agent-stream"][data-turn-id="{turn}"] .stream-text'
# The renderer's cumulative times (CDP Performance.getMetrics, seconds) the benchmark reads.
CPU_METRICS = ("TaskDuration", "ScriptDuration", "LayoutDuration", "RecalcStyleDuration")

_PROBE = """
(() => {
  const textSelector = %s;
  const probe = { turns: {}, order: [], tokens: 0, completed: 0 };
  window.__macpProbe = probe;
  const pending = new Set();
  // What the benchmark waits for, checked when something it may wait on happens (a frame, a
  // mutation, a paint), and every quarter second while anything is waited for: a wait is one
  // call into the page, not a predicate polled at every animation frame, which would cost the
  // page's main thread more than the work measured.
  const waiters = [];
  let timer = null;
  const wake = () => {
    for (const waiter of [...waiters]) {
      if (!waiter.check()) continue;
      waiters.splice(waiters.indexOf(waiter), 1);
      waiter.resolve();
    }
    if (waiters.length === 0 && timer !== null) { clearInterval(timer); timer = null; }
  };
  probe.until = (check) => new Promise((resolve) => {
    if (check()) { resolve(); return; }
    waiters.push({ check, resolve });
    if (timer === null) timer = setInterval(wake, 250);
  });
  const Native = window.WebSocket;
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener("message", (event) => {
        let frame;
        try { frame = JSON.parse(event.data); } catch { return; }
        if (frame.kind === "round_completed") {
          probe.completed += 1;
          // After the page's own handlers: what the benchmark waits for may be their work.
          setTimeout(wake, 0);
          return;
        }
        if (frame.kind !== "token_delta") return;
        probe.tokens += 1;
        const turn = frame.event.token_delta.turn_id;
        if (turn in probe.turns) return;
        probe.turns[turn] = { frameAt: performance.now(), inDomAt: null, shownAt: null };
        probe.order.push(turn);
        pending.add(turn);
      });
    }
  };
  new MutationObserver(() => {
    for (const turn of pending) {
      const text = document.querySelector(textSelector.replaceAll("{turn}", turn));
      if (!text || !text.textContent) continue;
      pending.delete(turn);
      const timing = probe.turns[turn];
      timing.inDomAt = performance.now();
      requestAnimationFrame(() => { timing.shownAt = performance.now(); wake(); });
    }
    if (waiters.length > 0) wake();
  }).observe(document, { subtree: true, childList: true, characterData: true });
})();
"""


class TurnTiming(TypedDict):
    """One turn's first token in the page, in `performance.now()` ms."""

    frameAt: float
    inDomAt: float | None
    shownAt: float | None


def probe_script(text_selector: str) -> str:
    """The init script, for a page that shows a turn's text in `text_selector` (`{turn}` = its id)."""
    if "{turn}" not in text_selector:
        raise ValueError(f"text_selector: {text_selector!r} does not name the turn as {{turn}}")
    return _PROBE % json.dumps(text_selector)


async def until(page: Page, predicate: str, arg: Any, timeout_seconds: float) -> None:
    """Wait until `predicate` (a JS function of `arg`) holds in `page`, checked by the probe."""
    expression = f"(arg) => window.__macpProbe.until(() => ({predicate})(arg))"
    async with asyncio.timeout(timeout_seconds):
        await page.evaluate(expression, arg)


async def turn_count(page: Page) -> int:
    """How many turns the probe has seen begin in `page`."""
    count: int = await page.evaluate("() => window.__macpProbe.order.length")
    return count


async def first_token(page: Page, index: int, timeout_seconds: float) -> TurnTiming:
    """The `index`th turn's first token (0 = the first turn the page saw), once it is painted."""
    painted = """(index) => {
      const turn = window.__macpProbe.order[index];
      return turn !== undefined && window.__macpProbe.turns[turn].shownAt !== null;
    }"""
    await until(page, painted, index, timeout_seconds)
    timing: TurnTiming = await page.evaluate(
        "(index) => window.__macpProbe.turns[window.__macpProbe.order[index]]", index
    )
    return timing


async def frames_seen(page: Page) -> tuple[int, int]:
    """The `token_delta` and `round_completed` frames the page's sockets have received."""
    seen: dict[str, Any] = await page.evaluate(
        "() => ({ tokens: window.__macpProbe.tokens, completed: window.__macpProbe.completed })"
    )
    return int(seen["tokens"]), int(seen["completed"])


def require_chromium() -> None:
    if not CHROMIUM.exists():
        raise SystemExit(f"{CHROMIUM} is missing: `./dev test` installs Debian's chromium (MACP_CHROMIUM)")


async def launch(playwright: Playwright) -> Browser:
    """Debian's Chromium, headless, never a browser Playwright downloads."""
    require_chromium()
    return await playwright.chromium.launch(executable_path=str(CHROMIUM), args=list(LAUNCH_ARGS))
