"""Fixtures of the webhook tests: the whole mesh (tests/world.py) with webhooks on (a sealing key
shared by the conversation service and the orchestrator, loopback http allowed, fast retries),
and a receiver on 127.0.0.1 that checks every delivery the way a subscriber would
(tests/webhooks/receiver.py)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.runtime.webhook_addresses import ALLOW_LOOPBACK as ALLOW_LOOPBACK_HTTP
from services.runtime.webhook_secrets import SEALING_KEY
from tests.world import World, running_world

WEBHOOK_ENVIRON = {
    SEALING_KEY: secrets.token_urlsafe(32),
    ALLOW_LOOPBACK_HTTP: "true",
    # Small in tests: four retries 50, 100, 200 and 400 ms apart, then the dead letter; new
    # subscriptions and conversations are found within a quarter second; a stopped deliverer's
    # streams are taken over within a second and a half.
    "MACP_ORCHESTRATOR_WEBHOOK_ATTEMPTS": "5",
    "MACP_ORCHESTRATOR_WEBHOOK_LEASE_MS": "1500",
    "MACP_ORCHESTRATOR_WEBHOOK_RETRY_BASE_SECONDS": "0.05",
    "MACP_ORCHESTRATOR_WEBHOOK_POLL_SECONDS": "0.25",
}


@pytest.fixture(scope="module")
async def webhook_world(
    module_environ: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[World]:
    """The whole mesh once for a module, webhooks on; each test takes a tenant of its own."""
    async with running_world(
        {**module_environ, **WEBHOOK_ENVIRON}, tmp_path_factory.mktemp("world")
    ) as world:
        yield world


@pytest.fixture
async def world(service_environ: dict[str, str], tmp_path: Path) -> AsyncIterator[World]:
    """A mesh of the test's own, webhooks on: for tests that stop its processes."""
    async with running_world({**service_environ, **WEBHOOK_ENVIRON}, tmp_path) as world:
        yield world
