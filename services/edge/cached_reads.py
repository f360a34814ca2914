"""GET of one agent or conversation served from the conversation service's Redis cache, when it
holds the resource, without the round trip through the mesh to the service.

Why here: a cached GET is the API's most frequent call, and on it the hop edge → Envoy → service →
Redis costs more than everything else together (docs/benchmarks.md section 5). The edge has
already verified the caller's token (signature, audience, expiry, revocation) and knows its tenant
and scopes, which is all the service checks before it reads the cache, so the edge can read the
same entry under the same rules:
- the key holds the caller's tenant (services/runtime/resource_cache.py), so another tenant's id
  cannot hit, and a miss goes to the service, which answers NOT_FOUND as before;
- the caller must hold the read scope; without it the service is asked and refuses as usual;
- the edge only reads. The service fills entries and invalidates them after every committed update
  or delete, so a read after an update's answer never sees the old value, from any process;
- anything unusual (an id that is not a canonical UUID, Redis failing) goes to the service too,
  which words the error.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import TypeVar

from google.protobuf.message import DecodeError, Message
from redis.exceptions import RedisError

from services.edge.auth import caller_var
from services.edge.context import EdgeContext
from services.runtime.resource_cache import READ_SCOPE, value_key

log = logging.getLogger("macp.edge.cache")

M = TypeVar("M", bound=Message)


def _canonical(resource_id: str) -> str | None:
    """The id as the service keys it (str of its UUID), or None for anything the service refuses."""
    try:
        return str(uuid.UUID(resource_id))
    except ValueError:
        return None


async def cached(edge: EdgeContext, kind: str, resource_id: str, parse: Callable[[bytes], M]) -> M | None:
    """The cached resource, or None when the service must answer (a miss, or any doubt)."""
    caller = caller_var.get()
    if caller is None or caller.claims.tenant_id is None or READ_SCOPE not in caller.claims.scopes:
        return None
    canonical = _canonical(resource_id)
    if canonical is None:
        return None
    key = value_key(edge.settings.redis.key_prefix, kind, caller.claims.tenant_id, canonical)
    try:
        value = await edge.redis.get(key)
    except RedisError as exc:
        log.warning("cache read failed; asking the service", extra={"error": str(exc)})
        return None
    if value is None:
        return None
    try:
        # The client is created with decode_responses=False (services/runtime/redis_client.py).
        return parse(value if isinstance(value, bytes) else value.encode())
    except DecodeError:
        log.error("cache entry does not parse; asking the service", extra={"key": key})
        return None
