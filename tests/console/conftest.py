"""The web console in a real browser: the whole mesh (tests/world.py) with its front listener on a
port fixed beforehand, so that the token issuer, and with it the console's registered redirect URI
(`<issuer>/console/callback`), is the very origin the browser loads the console from; and Debian's
Chromium under Playwright (tests/console/browser.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from playwright.async_api import Browser, BrowserContext, Page

from services.stack.config import free_port
from services.stack.infra import Infrastructure
from tests.conftest import fresh_database, isolated_environ
from tests.console.browser import DESKTOP, chromium, require_build
from tests.world import World


@asynccontextmanager
async def console_mesh(
    infrastructure: Infrastructure, tmp_path: Path, settings: Mapping[str, str] | None = None
) -> AsyncIterator[World]:
    """The whole mesh over a database of its own, its front listener the token issuer's origin, with
    `settings` on top of the test environment."""
    from tests.world import running_world

    require_build()
    front_port = free_port()
    async with fresh_database(infrastructure) as database_url:
        environ = {
            **isolated_environ(infrastructure, database_url),
            "MACP_ENVOY_FRONT_PORT": str(front_port),
            "MACP_TOKEN_ISSUER": f"http://127.0.0.1:{front_port}",
            **(settings or {}),
        }
        async with running_world(environ, tmp_path) as world:
            yield world


@pytest.fixture(scope="package")
async def console_world(
    infrastructure: Infrastructure, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[World]:
    """One mesh for every console test (its start is most of a short test's time): each test takes
    a tenant of its own on it with `World.other_tenant()`, so none sees another's agents or usage."""
    async with console_mesh(infrastructure, tmp_path_factory.mktemp("console-world")) as world:
        yield world


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as running:
        yield running


@pytest.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    context = await browser.new_context(viewport=DESKTOP)  # type: ignore[arg-type]
    try:
        yield context
    finally:
        await context.close()


@pytest.fixture
async def page(context: BrowserContext) -> AsyncIterator[Page]:
    """A page whose uncaught script errors fail the test: a console that throws is broken even when
    what a test looks at still shows."""
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    # Shown with a failure's captured output: what the browser said (CSP refusals, failed loads).
    page.on("console", lambda message: print(f"browser console {message.type}: {message.text}"))
    yield page
    assert not errors, f"the page threw: {errors}"
