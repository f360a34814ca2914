"""Redis: one asyncio client per process, with the key prefix that keeps deployments and tests apart."""

from __future__ import annotations

import redis.asyncio as aioredis

from services.runtime.settings import RedisSettings


def create_redis(settings: RedisSettings) -> aioredis.Redis:
    client: aioredis.Redis = aioredis.from_url(settings.url, decode_responses=False)
    return client
