"""Debian's Chromium driven by Playwright, for the web console's browser tests.

The browser is the one `./dev test` installs with apt-get (`chromium`), never one Playwright
downloads: that download is a file no lock pins, and this machine's network would refuse it. It
runs headless with the switches that keep it from calling home (background networking, component
updates, sync): those calls go nowhere here and would only add noise and delay. It is launched as
the console's benchmark launches it (bench/console_probe.py), so the two measure the same browser.

Also here: the page's screenshot, kept for docs/console.md, and axe-core's accessibility check,
run inside the page from the pinned npm package.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, Page, async_playwright

from bench.console_probe import CHROMIUM, launch

REPO_ROOT = Path(__file__).resolve().parents[2]
CONSOLE_BUILD = REPO_ROOT / "console" / "dist"
AXE_SCRIPT = REPO_ROOT / "node_modules" / "axe-core" / "axe.min.js"
# Where each page's screenshot goes; docs/console.md shows copies of them (docs/console/).
SCREENSHOTS = Path(os.environ.get("MACP_CONSOLE_SCREENSHOTS", REPO_ROOT / "build" / "console-screenshots"))
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
# axe-core's impacts that fail a page (issue: "no serious or critical violation").
FAILING_IMPACTS = frozenset({"serious", "critical"})


def require_build() -> None:
    if not CHROMIUM.exists():
        raise AssertionError(f"{CHROMIUM} is missing: `./dev test` installs Debian's chromium")
    if not (CONSOLE_BUILD / "index.html").exists():
        raise AssertionError(f"{CONSOLE_BUILD} has no build: `./dev test` makes it (npm run build:console)")


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    require_build()
    async with async_playwright() as playwright:
        browser = await launch(playwright)
        try:
            yield browser
        finally:
            await browser.close()


async def screenshot(page: Page, name: str) -> Path:
    """The whole page as `<SCREENSHOTS>/<name>.png` (Playwright makes the folder)."""
    path = SCREENSHOTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


async def accessibility_violations(page: Page) -> list[dict[str, Any]]:
    """axe-core's serious and critical violations on the page as it is now (WCAG 2.x A and AA
    rules and best practices), each reduced to its rule, impact, help text and first targets."""
    if not await page.evaluate("() => typeof window.axe !== 'undefined'"):
        # Evaluated through the DevTools protocol, which the page's Content-Security-Policy (no
        # inline script) does not govern; a <script> tag would be refused, and rightly.
        await page.evaluate(AXE_SCRIPT.read_text())
    results = await page.evaluate("async () => JSON.stringify(await window.axe.run(document))")
    violations = json.loads(results)["violations"]
    return [
        {
            "rule": violation["id"],
            "impact": violation["impact"],
            "help": violation["help"],
            "targets": [node["target"] for node in violation["nodes"][:3]],
        }
        for violation in violations
        if violation["impact"] in FAILING_IMPACTS
    ]


async def check_page(page: Page, name: str) -> None:
    """What every console test does on each page it reaches: keep its screenshot, and fail on a
    serious or critical accessibility violation."""
    await screenshot(page, name)
    violations = await accessibility_violations(page)
    assert not violations, f"{name}: axe-core found {json.dumps(violations, indent=1)}"
