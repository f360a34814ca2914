"""Where each (subscription, conversation) stream stands, and who delivers it: two Redis keys.

`webhooks:stream:<subscription>:<conversation>` is a hash: `after`, the id of the last event
delivered or dead-lettered (the stream goes on after it), and `attempts` failed so far at `at`,
the event after it (kept so that a restart does not give a dead receiver a fresh set of attempts).
`webhooks:lease:<subscription>:<conversation>` names the one process delivering it, with an
expiry its holder renews; a holder that dies stops renewing and another takes the stream over
within one lease time. Every write to the hash checks the lease in the same script, so a deposed
holder (a long pause, a partition) cannot move the cursor: the next holder redelivers from where
the last confirmed delivery left it. Both keys expire with the event logs' idle time: past it
the log itself is gone.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Final

import redis.asyncio as aioredis

from services.runtime.redis_client import text_of

# KEYS: stream hash, lease. ARGV: holder, after, attempts, at, ttl_seconds.
_WRITE: Final = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'after', ARGV[2], 'attempts', ARGV[3], 'at', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""
# KEYS: lease. ARGV: holder, ttl_ms. Only the holder extends its own lease.
_RENEW: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
# KEYS: lease. ARGV: holder. Only the holder releases it.
_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class StreamLost(Exception):
    """The stream's lease is no longer this holder's: it must stop delivering."""


@dataclass(frozen=True)
class Position:
    """Where a stream stands: after `after`, with `attempts` failed at the event `at`."""

    after: str
    attempts: int = 0
    at: str = ""

    def failures_at(self, event_id: str) -> int:
        return self.attempts if self.at == event_id else 0


class StreamCursors:
    def __init__(self, redis: aioredis.Redis, prefix: str, lease_ms: int, ttl_seconds: int) -> None:
        self._redis = redis
        self._prefix = prefix
        self._lease_ms = lease_ms
        self._ttl_seconds = ttl_seconds
        self._write = redis.register_script(_WRITE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    def _stream(self, subscription_id: str, conversation_id: str) -> str:
        return f"{self._prefix}webhooks:stream:{subscription_id}:{conversation_id}"

    def _lease(self, subscription_id: str, conversation_id: str) -> str:
        return f"{self._prefix}webhooks:lease:{subscription_id}:{conversation_id}"

    async def acquire(self, subscription_id: str, conversation_id: str, owner: str) -> StreamLease | None:
        """The stream's lease, or None while another process holds it."""
        holder = f"{owner} {uuid.uuid4().hex}"
        taken = await self._redis.set(
            self._lease(subscription_id, conversation_id), holder, nx=True, px=self._lease_ms
        )
        return StreamLease(self, subscription_id, conversation_id, holder) if taken else None

    async def renew(self, lease: StreamLease) -> bool:
        key = self._lease(lease.subscription_id, lease.conversation_id)
        return bool(await self._renew(keys=[key], args=[lease.holder, self._lease_ms]))

    async def release(self, lease: StreamLease) -> None:
        await self._release(
            keys=[self._lease(lease.subscription_id, lease.conversation_id)], args=[lease.holder]
        )

    async def position(self, lease: StreamLease) -> Position | None:
        """Where the stream stands, or None for a stream never delivered yet."""
        values = await self._redis.hgetall(self._stream(lease.subscription_id, lease.conversation_id))
        if not values:
            return None
        fields = {text_of(key): text_of(value) for key, value in values.items()}
        return Position(fields["after"], int(fields.get("attempts", "0")), fields.get("at", ""))

    async def write(self, lease: StreamLease, position: Position) -> None:
        """Store `position`, if the lease is still this holder's (else StreamLost)."""
        written = await self._write(
            keys=[
                self._stream(lease.subscription_id, lease.conversation_id),
                self._lease(lease.subscription_id, lease.conversation_id),
            ],
            args=[lease.holder, position.after, position.attempts, position.at, self._ttl_seconds],
        )
        if not written:
            raise StreamLost(f"stream {lease.subscription_id}/{lease.conversation_id}: the lease was lost")


@dataclass(frozen=True)
class StreamLease:
    """A held lease on one (subscription, conversation) stream."""

    cursors: StreamCursors
    subscription_id: str
    conversation_id: str
    holder: str
