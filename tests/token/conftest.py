"""Fixtures of the token tests: the real token service, in-process, over the session's Postgres and Redis."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis.asyncio as aioredis
from macp.token.v1 import token_service_pb2_grpc as pb_grpc

from services.token.service import DEFINITION
from tests.runtime.serving import channel, running
from tests.token.harness import TokenHarness, new_key_encryption_key


@pytest.fixture
def token_environ(service_environ: dict[str, str]) -> dict[str, str]:
    return {
        **service_environ,
        "MACP_TOKEN_PORT": "0",
        "MACP_TOKEN_METRICS_PORT": "0",
        "MACP_TOKEN_KEY_ENCRYPTION_KEY": new_key_encryption_key(),
        "MACP_TOKEN_INITIAL_ACCESS_TOKEN": secrets.token_urlsafe(32),
    }


@pytest.fixture
async def token_db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def token_redis(service_environ: dict[str, str]) -> AsyncIterator[aioredis.Redis]:
    client: aioredis.Redis = aioredis.from_url(service_environ["MACP_REDIS_URL"])
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def token_service(
    token_environ: dict[str, str], token_db: asyncpg.Pool, token_redis: aioredis.Redis
) -> AsyncIterator[TokenHarness]:
    async with running(DEFINITION, token_environ) as service, channel(service.port) as opened:
        yield TokenHarness(pb_grpc.TokenServiceStub(opened), token_environ, token_db, token_redis)
