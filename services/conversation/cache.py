"""A Redis read-through cache of single resources (GetAgent, GetConversation), shared by every
process of the service.

The race a plain "delete on update" cache loses: a reader misses, reads the old row, an update
commits and deletes the key, and then the reader stores the old row, which every process serves
until it expires. Here each key has a generation counter. A reader notes the generation before it
reads Postgres and stores its row only if the generation is still the same (one Lua script, so
atomic in Redis); a writer, after its commit, bumps the generation and deletes the value in one
script. Whichever order the two interleave in, an old row is never left behind:
- the reader stored before the writer's script ran: the script deletes it;
- the reader stores after the script ran: the generation differs and the store is skipped.
What remains is a writer that commits and then dies (or loses Redis) before its script runs: the
TTL bounds that staleness, which is why it is short. Redis failing on a read is not an error: the
read goes to Postgres.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as aioredis
from google.protobuf.message import Message
from redis.exceptions import RedisError

from services.runtime.resource_cache import generation_key, value_key

log = logging.getLogger("macp.conversation.cache")

M = TypeVar("M", bound=Message)

DEFAULT_TTL_SECONDS = 30
# Generations outlive values by far, so one cannot expire (and restart from 0) during one read.
GENERATION_TTL_SECONDS = 3600

# KEYS[1] value, KEYS[2] generation; ARGV[1] generation seen before the read, ARGV[2] value, ARGV[3] ttl.
_FILL = """
local generation = redis.call('GET', KEYS[2]) or '0'
if generation == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  return 1
end
return 0
"""
# KEYS[1] value, KEYS[2] generation; ARGV[1] generation ttl.
_INVALIDATE = """
redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[1])
return 1
"""


class ResourceCache:
    """Read-through cache of one kind of resource, keyed by tenant and id."""

    def __init__(
        self, redis: aioredis.Redis, key_prefix: str, kind: str, ttl_seconds: int = DEFAULT_TTL_SECONDS
    ) -> None:
        self._redis = redis
        self._key_prefix = key_prefix
        self._kind = kind
        self._ttl = ttl_seconds
        self._fill = redis.register_script(_FILL)
        self._invalidate = redis.register_script(_INVALIDATE)

    def _keys(self, tenant_id: str, resource_id: str) -> list[str]:
        value = value_key(self._key_prefix, self._kind, tenant_id, resource_id)
        return [value, generation_key(value)]

    async def get(
        self,
        tenant_id: str,
        resource_id: str,
        parse: Callable[[bytes], M],
        load: Callable[[], Awaitable[M | None]],
    ) -> M | None:
        """The cached resource, else `load()`'s (stored unless an invalidation raced it)."""
        keys = self._keys(tenant_id, resource_id)
        try:
            cached, generation = await self._redis.mget(keys)
        except RedisError as exc:
            log.warning("cache read failed; reading Postgres", extra={"error": str(exc)})
            return await load()
        # The client is created with decode_responses=False (services/runtime/redis_client.py).
        if cached is not None:
            return parse(cached.encode() if isinstance(cached, str) else cached)
        loaded = await load()
        if loaded is not None:
            seen = generation if isinstance(generation, str) else (generation or b"0").decode()
            try:
                await self._fill(keys=keys, args=[seen, loaded.SerializeToString(), self._ttl])
            except RedisError as exc:
                log.warning("cache fill failed", extra={"error": str(exc)})
        return loaded

    async def invalidate(self, tenant_id: str, resource_id: str) -> None:
        """After a committed change: no process serves the old value from here on (see the module doc)."""
        try:
            await self._invalidate(keys=self._keys(tenant_id, resource_id), args=[GENERATION_TTL_SECONDS])
        except RedisError as exc:
            # The change is committed; the TTL bounds how long the old value can still be served.
            log.error("cache invalidation failed", extra={"error": str(exc), "id": resource_id})
