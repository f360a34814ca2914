"""`Idempotency-Key` at the edge (draft-ietf-httpapi-idempotency-key-header): one answer per key.

A key is scoped by tenant and client (two callers never meet on a key, whatever they choose) and
held in Redis, so every edge process sees it, with the fingerprint of the request it came with
(SHA-256 of the method, the path and the body's canonical JSON: members sorted, no whitespace,
so a retry that re-serialises its body differently is still the same request):
- the first request claims the key (one atomic script) and runs; its answer is stored under the
  key for KEEP_SECONDS; if it fails or its client leaves before the end, the claim is dropped and
  a retry runs afresh (nothing was billed: an unfinished turn releases its quota hold);
- the same key with the same fingerprint gets the stored answer, and nothing runs again;
- the same key while the first request still runs gets 409 Conflict (as the draft says, and
  Stripe): it is never a second run. The OpenAI SDKs retry a 409 by themselves and then get the
  stored answer;
- the same key with another fingerprint gets 422 Unprocessable Content, the draft's status for a
  key reused with a different payload: the request is well-formed and would be served without the
  key, so it is not a conflict with the resource's state but a misuse of the key, and 409 stays
  free to mean "still in progress", which a client should retry while it must not retry a 422.
A claim left by an edge process that died is dropped after the request's own deadline (`pending`).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import uuid
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final

import redis.asyncio as aioredis

from services.edge.errors import HttpError

IDEMPOTENCY_HEADER = "idempotency-key"
MAX_KEY_LENGTH = 255
# How long an answer is kept for retries under its key (a day, as Stripe keeps them).
KEEP_SECONDS = 86_400
# The turn ids of keyed requests: uuid5 of tenant, client and key under this namespace.
TURN_NAMESPACE = uuid.UUID("7d3b0e56-42a4-4c55-9f0c-5f1d6c1f4d15")

# KEYS[1]: the key's hash. ARGV: fingerprint, claimant, claim lifetime (ms).
# Claims the key when no one holds it; answers what the key holds: {fingerprint, owner, answer}.
_CLAIM: Final = """
local held = redis.call('HMGET', KEYS[1], 'fingerprint', 'owner', 'answer')
if held[1] then return held end
redis.call('HSET', KEYS[1], 'fingerprint', ARGV[1], 'owner', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {ARGV[1], ARGV[2], false}
"""
# KEYS[1]: the key's hash. ARGV: claimant, answer, lifetime (ms). Stores the claimant's answer.
_COMPLETE: Final = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'answer', ARGV[2])
redis.call('HDEL', KEYS[1], 'owner')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""
# KEYS[1]: the key's hash. ARGV: claimant. Drops the claimant's claim (its request did not finish).
_RELEASE: Final = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""


def request_key(headers: Any) -> str | None:
    """The request's Idempotency-Key (None without one); 400 for one no key may be."""
    key: str | None = headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    if not 0 < len(key) <= MAX_KEY_LENGTH or not key.isascii() or not key.isprintable():
        raise HttpError(
            HTTPStatus.BAD_REQUEST,
            "INVALID_ARGUMENT",
            f"Idempotency-Key: 1 to {MAX_KEY_LENGTH} printable ASCII characters",
        )
    return key


def fingerprint(method: str, path: str, document: object) -> str:
    """What makes two requests the same request: method, path and the body's canonical JSON."""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.sha256(f"{method} {path}\n".encode())
    digest.update(canonical.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


@dataclass(frozen=True)
class KeyScope:
    """A key as the caller sent it, in the tenant and client it belongs to."""

    tenant_id: str
    client_id: str
    key: str

    @property
    def turn_id(self) -> str:
        """The turn id of the keyed request: the same for every retry of it, and never another
        caller's, whatever key it chose (the turn id keys the usage event)."""
        return str(uuid.uuid5(TURN_NAMESPACE, f"{self.tenant_id}\0{self.client_id}\0{self.key}"))


@dataclass(frozen=True)
class Claim:
    """The key is this request's to answer: it runs, then `complete`s or `release`s the claim."""

    redis_key: str
    claimant: str


@dataclass(frozen=True)
class Replay:
    """The key's stored answer (the request already ran)."""

    answer: bytes


class IdempotencyKeys:
    """Claims, answers and releases keys in Redis (see the module docstring)."""

    def __init__(self, redis: aioredis.Redis, prefix: str, *, pending_seconds: float) -> None:
        self._prefix = prefix
        self._pending_ms = max(1, round(pending_seconds * 1000))
        self._claim = redis.register_script(_CLAIM)
        self._complete = redis.register_script(_COMPLETE)
        self._release = redis.register_script(_RELEASE)

    def _redis_key(self, scope: KeyScope) -> str:
        # Hashed: the key is the client's text; the Redis key stays short and of known characters.
        key = hashlib.sha256(scope.key.encode()).hexdigest()
        return f"{self._prefix}idempotency:{scope.tenant_id}:{scope.client_id}:{key}"

    async def claim(self, scope: KeyScope, request_fingerprint: str) -> Claim | Replay:
        """The claim of the key, or its stored answer; HttpError 422 when the key came with another
        request, 409 while that same request is still being answered."""
        redis_key = self._redis_key(scope)
        claimant = secrets.token_hex(16)
        held, owner, answer = await self._claim(
            keys=[redis_key], args=[request_fingerprint, claimant, self._pending_ms]
        )
        if held.decode() != request_fingerprint:
            raise HttpError(
                HTTPStatus.UNPROCESSABLE_ENTITY,
                "IDEMPOTENCY_KEY_REUSED",
                "Idempotency-Key: already used with a different request; use a new key for a new request",
            )
        if answer is not None:
            return Replay(answer)
        if owner is not None and owner.decode() == claimant:
            return Claim(redis_key, claimant)
        raise HttpError(
            HTTPStatus.CONFLICT,
            "IDEMPOTENCY_KEY_IN_USE",
            "Idempotency-Key: the request with this key is still being answered; retry when it ends",
        )

    async def complete(self, claim: Claim, answer: bytes) -> None:
        await self._complete(keys=[claim.redis_key], args=[claim.claimant, answer, KEEP_SECONDS * 1000])

    async def release(self, claim: Claim) -> None:
        await self._release(keys=[claim.redis_key], args=[claim.claimant])
