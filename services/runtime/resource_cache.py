"""The key scheme of the conversation service's read-through cache (services/conversation/cache.py),
and the read of one entry, written once because several kinds of process read it: the conversation
service, which fills and invalidates it, the edge, which serves a hit without a round trip to the
service (services/edge/rest/cached_reads.py), and the orchestrator, which loads a round's conversation
and agents from it. Only the service ever writes; a reader that misses asks the service.

A reader holds the caller's verified token (signature, audience, expiry, revocation), so it knows
the caller's tenant and scopes, which is all the service checks before it reads the cache:
- the key holds the caller's tenant, so another tenant's id cannot hit, and a miss goes to the
  service, which answers NOT_FOUND as before;
- the caller must hold the read scope; without it the service is asked and refuses as usual;
- the service invalidates an entry after every committed update or delete, so a read after an
  update's answer never sees the old value, from any process;
- anything unusual (an id that is not a canonical UUID, Redis failing, an entry that does not
  parse) goes to the service too, which words the error.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Collection
from typing import TypeVar

import redis.asyncio as aioredis
from google.protobuf.message import DecodeError, Message
from redis.exceptions import RedisError

log = logging.getLogger("macp.resource_cache")

M = TypeVar("M", bound=Message)

# What a cached read needs, wherever it is served: the scope of GetAgent and GetConversation.
READ_SCOPE = "conversations:read"

AGENT = "agent"
CONVERSATION = "conversation"


def value_key(key_prefix: str, kind: str, tenant_id: str, resource_id: str) -> str:
    """Where one resource's serialized message is cached. The tenant is part of the key: another
    tenant's id can never hit this tenant's entry. `resource_id` is the canonical (lower-case,
    hyphenated) UUID text."""
    return f"{key_prefix}conversation:cache:{kind}:{tenant_id}:{resource_id}"


def generation_key(value: str) -> str:
    """The generation counter beside a value key (the fill/invalidate protocol of the cache)."""
    return f"{value}:generation"


def canonical_id(resource_id: str) -> str | None:
    """The id as the service keys it (str of its UUID), or None for anything the service refuses."""
    try:
        return str(uuid.UUID(resource_id))
    except ValueError:
        return None


async def read_cached(
    redis: aioredis.Redis,
    key_prefix: str,
    kind: str,
    *,
    tenant_id: str | None,
    scopes: Collection[str],
    resource_id: str,
    parse: Callable[[bytes], M],
) -> M | None:
    """The cached resource as the verified caller (`tenant_id`, `scopes`) may read it, or None when
    the service must answer (a miss, or any doubt)."""
    if not tenant_id or READ_SCOPE not in scopes:
        return None
    canonical = canonical_id(resource_id)
    if canonical is None:
        return None
    key = value_key(key_prefix, kind, tenant_id, canonical)
    try:
        value = await redis.get(key)
    except RedisError as exc:
        log.warning("cache read failed; asking the service", extra={"error": str(exc)})
        return None
    if value is None:
        return None
    try:
        # Clients are created with decode_responses=False (services/runtime/redis_client.py).
        return parse(value if isinstance(value, bytes) else value.encode())
    except DecodeError:
        log.error("cache entry does not parse; asking the service", extra={"key": key})
        return None
