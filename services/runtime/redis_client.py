"""Redis: one asyncio client per process, with the key prefix that keeps deployments and tests apart.

The pool is a blocking one: a burst that needs more connections than MACP_REDIS_MAX_CONNECTIONS
waits (up to POOL_WAIT_SECONDS) for one to come free, where redis-py's default pool would fail the
call at once with "Too many connections".
"""

from __future__ import annotations

from typing import Final

import redis.asyncio as aioredis

from services.runtime.settings import RedisSettings

POOL_WAIT_SECONDS: Final = 5.0


def create_redis(settings: RedisSettings) -> aioredis.Redis:
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.url, max_connections=settings.max_connections, timeout=POOL_WAIT_SECONDS
    )
    client: aioredis.Redis = aioredis.Redis.from_pool(pool)
    return client


def text_of(value: bytes | str) -> str:
    """A Redis reply as text (the client is made with decode_responses=False: replies are bytes)."""
    return value.decode() if isinstance(value, bytes) else value
