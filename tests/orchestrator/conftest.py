"""Fixtures of the orchestrator tests: a real Redis client under the test's own key prefix (for the
lease and the event log), and the whole mesh (tests/world.py) for rounds end to end."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.world import World, running_world


@pytest.fixture
def redis_url(service_environ: dict[str, str]) -> str:
    return service_environ["MACP_REDIS_URL"]


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client: aioredis.Redis = aioredis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def prefix(service_environ: dict[str, str]) -> str:
    return service_environ["MACP_REDIS_KEY_PREFIX"]


@pytest.fixture
async def world(service_environ: dict[str, str], tmp_path: Path) -> AsyncIterator[World]:
    async with running_world(service_environ, tmp_path) as world:
        yield world
