"""Limits on guessing credentials: failed passwords per account, failed client secrets per client.

Counted in Redis, so every token service process shares one count. After `free_failures` failures
an account (or client) is locked for `lockout_seconds`, doubling with each further failure up to
`max_lockout_seconds`: an attacker gets a handful of guesses, then one per lockout, while the
rightful owner waits at most the cap and is back in with the right password, which clears the count.
A count is forgotten `window_seconds` after its last failure.

Passwords are reserved before they are checked (the count goes up atomically with the lock check,
and a success clears it): a burst of concurrent guesses cannot all slip in before the first
failure is counted, and scrypt makes each one slow. Client secrets are 256 random bits, beyond
guessing, and a busy internal client authenticates many times at once, so its attempts are counted
only when they fail (a success never waits on the count).

Redis unreachable: the limit is skipped (logged), so a Redis outage does not stop every sign-in.
Every lockout and every attempt refused by one writes an audit row (outcome `denied`).
"""

from __future__ import annotations

import enum
import hashlib
import logging
import math
from dataclasses import dataclass
from typing import Final

import asyncpg
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.runtime import audit
from services.runtime.audit import AuditEvent, Who
from services.runtime.errors import DomainError, ResourceExhausted
from services.token.oauth import OAuthCode

log = logging.getLogger("macp.token.guessing")

# KEYS: the failure count, the lock. ARGV: window ms, free failures, first lockout ms, max lockout ms.
# Count one attempt (KEYS[1], forgotten ARGV[1] ms after the last) and, past ARGV[2] free ones,
# lock (KEYS[2]) for ARGV[3] ms doubling per further attempt, at most ARGV[4] ms.
_COUNT_AND_LOCK: Final = """
local count = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
local lock = 0
local free = tonumber(ARGV[2])
if count >= free then
  lock = math.floor(math.min(tonumber(ARGV[3]) * 2 ^ (count - free), tonumber(ARGV[4])))
  redis.call('SET', KEYS[2], '1', 'PX', lock)
end
"""

# Returns {admitted, lock ms (the remaining one if refused, the one set if admitted), count}.
_RESERVE: Final = (
    """
local remaining = redis.call('PTTL', KEYS[2])
if remaining > 0 then return {0, remaining, 0} end
"""
    + _COUNT_AND_LOCK
    + "return {1, lock, count}\n"
)

# The same counting once a failure has happened (clients): returns {lock ms set, count}.
_FAILED: Final = _COUNT_AND_LOCK + "return {lock, count}\n"

# KEYS: the failure count, the lock. Returns {remaining lock ms (<= 0: none), count}.
_PEEK: Final = """
return {redis.call('PTTL', KEYS[2]), tonumber(redis.call('GET', KEYS[1]) or '0')}
"""


@dataclass(frozen=True)
class GuessingPolicy:
    free_failures: int = 5
    lockout_seconds: float = 1.0
    max_lockout_seconds: float = 300.0
    window_seconds: float = 3600.0


class Kind(enum.Enum):
    """What is guessed: which OAuth error a refusal carries (RFC 6749 5.2) and how it is named."""

    PASSWORD = "password"
    CLIENT_SECRET = "client_secret"

    @property
    def error(self) -> OAuthCode:
        return "invalid_grant" if self is Kind.PASSWORD else "invalid_client"


@dataclass(frozen=True)
class Target:
    """One account or client under the limit, and who it is for the audit log."""

    kind: Kind
    name: str  # the username or client id as presented: what is counted
    who: Who
    resource: str  # `user/<id>` or `client/<id>`, as the audit log names it

    def keys(self, prefix: str) -> list[str]:
        # Hashed: the name is the caller's text, of any length and content.
        digest = hashlib.sha256(self.name.encode()).hexdigest()[:32]
        base = f"{prefix}guessing:{self.kind.value}:{digest}"
        return [f"{base}:failures", f"{base}:lock"]


def locked_out(target: Target, retry_after_seconds: int) -> DomainError:
    """The refusal of an attempt on a locked account or client: the OAuth error of a wrong
    credential, as RESOURCE_EXHAUSTED, the wait at the end of the message (the edge turns it into
    429 and Retry-After)."""
    what = "sign-ins for this account" if target.kind is Kind.PASSWORD else "authentications of this client"
    return ResourceExhausted(
        f"{target.kind.error}: too many failed {what}; retry after {retry_after_seconds} s"
    )


@dataclass(frozen=True)
class Reservation:
    """An admitted attempt; `lock_seconds` > 0 when taking it locked the target (should it fail)."""

    target: Target
    lock_seconds: float
    failures: int


class Guessing:
    def __init__(
        self, redis: aioredis.Redis, key_prefix: str, policy: GuessingPolicy, pool: asyncpg.Pool
    ) -> None:
        self._redis = redis
        self._prefix = key_prefix
        self._policy = policy
        self._pool = pool

    def _args(self) -> list[int]:
        policy = self._policy
        return [
            math.ceil(policy.window_seconds * 1000),
            policy.free_failures,
            math.ceil(policy.lockout_seconds * 1000),
            math.ceil(policy.max_lockout_seconds * 1000),
        ]

    async def reserve(self, target: Target) -> Reservation:
        """Count an attempt before it is checked; the refusal (audited) when the target is locked."""
        try:
            admitted, lock_ms, count = await self._redis.eval(
                _RESERVE, 2, *target.keys(self._prefix), *self._args()
            )
        except (RedisError, OSError) as exc:
            log.warning("redis unavailable: guessing not limited", extra={"error": str(exc)})
            return Reservation(target, 0.0, 0)
        if not admitted:
            await self._refused(target, int(lock_ms))
        return Reservation(target, int(lock_ms) / 1000, int(count))

    async def check(self, target: Target) -> int:
        """The refusal (audited) when the target is locked, else its failures so far (nothing is
        counted)."""
        try:
            lock_ms, count = await self._redis.eval(_PEEK, 2, *target.keys(self._prefix))
        except (RedisError, OSError) as exc:
            log.warning("redis unavailable: guessing not limited", extra={"error": str(exc)})
            return 0
        if int(lock_ms) > 0:
            await self._refused(target, int(lock_ms))
        return int(count)

    async def failed(self, reservation: Reservation) -> None:
        """A reserved attempt failed: audit the lockout it set, if it set one."""
        if reservation.lock_seconds > 0:
            await self._lockout(reservation.target, reservation.failures, reservation.lock_seconds)

    async def count_failure(self, target: Target) -> None:
        """An unreserved attempt failed: count it, and audit the lockout that follows, if any."""
        try:
            lock_ms, count = await self._redis.eval(_FAILED, 2, *target.keys(self._prefix), *self._args())
        except (RedisError, OSError) as exc:
            log.warning("redis unavailable: failure not counted", extra={"error": str(exc)})
            return
        if int(lock_ms) > 0:
            await self._lockout(target, int(count), int(lock_ms) / 1000)

    async def succeeded(self, target: Target) -> None:
        """The right credential: forget the target's failures and lift its lock."""
        try:
            await self._redis.delete(*target.keys(self._prefix))
        except (RedisError, OSError) as exc:
            log.warning("redis unavailable: failures not cleared", extra={"error": str(exc)})

    async def _refused(self, target: Target, lock_ms: int) -> None:
        retry_after = max(1, math.ceil(lock_ms / 1000))
        await self._audit(target, audit.AUTH_REFUSE, {"retry_after_seconds": str(retry_after)})
        raise locked_out(target, retry_after)

    async def _lockout(self, target: Target, failures: int, seconds: float) -> None:
        detail = {"failures": str(failures), "lockout_seconds": str(max(1, math.ceil(seconds)))}
        await self._audit(target, audit.AUTH_LOCKOUT, detail)

    async def _audit(self, target: Target, action: str, detail: dict[str, str]) -> None:
        detail = {"credential": target.kind.value, **detail}
        await audit.record(self._pool, AuditEvent(target.who, action, target.resource, audit.DENIED, detail))
