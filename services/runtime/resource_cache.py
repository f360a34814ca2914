"""The key scheme of the conversation service's read-through cache (services/conversation/cache.py),
written once because two kinds of process read it: the conversation service, which fills and
invalidates it, and the edge, which serves a hit without a round trip to the service
(services/edge/cached_reads.py). Only the service ever writes; a reader that misses asks the service.
"""

from __future__ import annotations

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
