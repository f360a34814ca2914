"""GET of one agent or conversation served from the conversation service's Redis cache, when it
holds the resource, without the round trip through the mesh to the service.

Why here: a cached GET is the API's most frequent call, and on it the hop edge → Envoy → service →
Redis costs more than everything else together (docs/benchmarks.md section 5). The edge has
already verified the caller's token, so it reads the same entry under the same rules as the
service (services/runtime/resource_cache.py says which); it only reads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from google.protobuf.message import Message

from services.edge.context import EdgeContext
from services.runtime.principal import caller_var
from services.runtime.resource_cache import read_cached

M = TypeVar("M", bound=Message)


async def cached(edge: EdgeContext, kind: str, resource_id: str, parse: Callable[[bytes], M]) -> M | None:
    """The cached resource, or None when the service must answer (a miss, or any doubt)."""
    caller = caller_var.get()
    if caller is None:
        return None
    return await read_cached(
        edge.redis,
        edge.settings.redis.key_prefix,
        kind,
        tenant_id=caller.principal.tenant_id,
        scopes=caller.principal.scopes,
        resource_id=resource_id,
        parse=parse,
    )
