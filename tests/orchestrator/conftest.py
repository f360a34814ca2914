"""Fixtures of the orchestrator tests: a real Redis client under the test's own key prefix (for the
lease and the event log); the whole mesh is the shared `world` fixture (tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis


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
