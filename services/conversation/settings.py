"""The conversation service's own settings (`MACP_CONVERSATION_*`), read once at start-up."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.runtime.a2a_remote_sealing import a2a_sealing_key
from services.runtime.settings import Env

CACHE_TTL = "MACP_CONVERSATION_CACHE_TTL_SECONDS"


@dataclass(frozen=True)
class ConversationSettings:
    """cache_ttl_seconds: how long GetAgent and GetConversation answers stay in Redis. Invalidation
    keeps the cache fresh; the TTL only bounds staleness after a writer died between its commit and
    its invalidation (services/conversation/cache.py), so it stays short.
    a2a_sealing_key: seals outside A2A agents' client secrets (`MACP_A2A_SEALING_KEY`); optional
    until one is kept (services/conversation/agent_remotes.py)."""

    cache_ttl_seconds: int
    a2a_sealing_key: bytes | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, env: Env) -> ConversationSettings:
        return cls(
            cache_ttl_seconds=env.integer(CACHE_TTL, 30, minimum=1, maximum=3600),
            a2a_sealing_key=a2a_sealing_key(env),
        )
