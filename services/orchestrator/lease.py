"""One driver per conversation across every orchestrator process: a Redis lease with fencing tokens.

Whoever drives a conversation's round holds its lease. Acquiring takes a fencing token from a
per-conversation counter that only grows, so every holder has a number no earlier holder had.
The lease expires unless renewed: a holder that dies (SIGKILL, a lost host) stops renewing and
another process takes over within one lease time. Expiry alone cannot stop a holder that is alive
but stalled (a long GC pause, a network partition) from writing once it wakes up, so every write
a driver makes is checked against the token (`EventLog.append` refuses a token that is not the
current holder's, atomically in the same script): a deposed driver cannot publish anything.

Keys, under the deployment's Redis prefix: `orchestrator:lease:<conversation>` holds
`<owner> <token>` with the lease's expiry; `orchestrator:fence:<conversation>` the last token.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final

import redis.asyncio as aioredis

log = logging.getLogger("macp.orchestrator.lease")

DEFAULT_LEASE_MS: Final = 5_000

# KEYS: lease, fence[, note hash, note set]. ARGV: owner, ttl_ms[, note job, note score]. A free
# lease is taken with the next fencing token; a held one (even by this owner: re-entry would share
# a token between two rounds) is refused. With a note, what the new holder is about to do is
# written in the same step (see LeaseNote); and the note's hash, when it is there already, says why
# the lease is not taken (see Holdup): a round in flight (-1), or none while a holder lets go (-2),
# or a finished round its driver left unclosed, which is never written over (-3).
_ACQUIRE: Final = """
local held = redis.call('EXISTS', KEYS[1]) == 1
if KEYS[3] and (held or redis.call('EXISTS', KEYS[3]) == 1) then
  local round = redis.call('HMGET', KEYS[3], 'job', 'ending')
  if round[1] and (not round[2] or round[2] == '') then return -1 end
  if held then return -2 end
  return -3
end
if held then return false end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. token, 'PX', ARGV[2])
if KEYS[3] then
  redis.call('HSET', KEYS[3], 'job', ARGV[3], 'turn_id', '', 'ending', '')
  redis.call('ZADD', KEYS[4], ARGV[4], ARGV[5])
end
return token
"""
# KEYS: lease. ARGV: holder ("<owner> <token>"), ttl_ms. Only the holder extends its own lease.
_RENEW: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# KEYS: lease. ARGV: holder. Only the holder releases (compare-and-delete).
_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def lease_key(prefix: str, conversation_id: str) -> str:
    return f"{prefix}orchestrator:lease:{conversation_id}"


def fence_key(prefix: str, conversation_id: str) -> str:
    return f"{prefix}orchestrator:fence:{conversation_id}"


@dataclass(frozen=True)
class Lease:
    """A held lease: the conversation, who holds it, and its fencing token."""

    conversation_id: str
    owner: str
    token: int

    @property
    def holder(self) -> str:
        """The lease key's value while this lease is current."""
        return f"{self.owner} {self.token}"


@dataclass(frozen=True)
class LeaseNote:
    """What a new holder is about to drive, written with the lease in one step (markers.py):
    `job` into the hash `key`, and the conversation into the set `watched` with `score`. A holder
    that dies a moment after taking the lease thus never leaves work nobody knows of."""

    key: str
    watched: str
    job: bytes
    score: float


class Holdup(enum.Enum):
    """Why a lease taken with a note was not taken (the note's round is what decides)."""

    # A round is in flight: a message sent now is one its sender sent before that round ended.
    IN_FLIGHT = -1
    # The holder has no round in flight: it is letting go (its round has completed) or about to
    # start its queue's next. The lease comes free or a round starts in a few round trips.
    LETTING_GO = -2
    # Nobody holds it, but a round its driver noted as ended was left without its RoundCompleted
    # (the driver died or failed as it ended): it is to be closed before anything else runs.
    LEFT_OVER = -3


class LeaseLost(Exception):
    """The lease expired or was taken over: the holder must stop driving the conversation."""


class Leases:
    """Acquire, renew and release conversation leases for one process (`owner`)."""

    def __init__(
        self, redis: aioredis.Redis, prefix: str, owner: str, ttl_ms: int = DEFAULT_LEASE_MS
    ) -> None:
        if ttl_ms < 100:
            raise ValueError("a lease shorter than 100 ms cannot be renewed in time")
        self._redis = redis
        self._prefix = prefix
        self.owner = owner
        self.ttl_ms = ttl_ms
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)
        self._given_up: set[Lease] = set()

    async def acquire(self, conversation_id: str, note: LeaseNote | None = None) -> Lease | None:
        """The lease with a new fencing token (and `note` written with it), or None while another
        holder has it, or while `note`'s round is left to close (and nothing written)."""
        taken = await self.claim(conversation_id, note)
        return taken if isinstance(taken, Lease) else None

    async def claim(self, conversation_id: str, note: LeaseNote | None = None) -> Lease | Holdup | None:
        """As `acquire`, but with `note` a refusal says why (Holdup); None only without a note."""
        keys = [lease_key(self._prefix, conversation_id), fence_key(self._prefix, conversation_id)]
        args: list[bytes | str | int | float] = [self.owner, self.ttl_ms]
        if note is not None:
            keys += [note.key, note.watched]
            args += [note.job, note.score, conversation_id]
        token = await self._acquire(keys=keys, args=args)
        if token is None:
            return None
        if int(token) < 0:
            return Holdup(int(token))
        return Lease(conversation_id, self.owner, int(token))

    def given_up(self, lease: Lease) -> None:
        """`lease` was released in a step of its holder's own (markers.py, handing a finished round
        on): its keeper stops without calling it lost, and `held` does not release it again."""
        self._given_up.add(lease)

    async def renew(self, lease: Lease) -> bool:
        """Whether `lease` is still current (and now extended by a full lease time)."""
        key = lease_key(self._prefix, lease.conversation_id)
        return bool(await self._renew(keys=[key], args=[lease.holder, self.ttl_ms]))

    async def release(self, lease: Lease) -> None:
        """Give the lease up at once, so another round need not wait for it to expire."""
        await self._release(keys=[lease_key(self._prefix, lease.conversation_id)], args=[lease.holder])

    @contextlib.asynccontextmanager
    async def held(self, lease: Lease) -> AsyncIterator[asyncio.Event]:
        """Keep `lease` renewed while the block runs; yields an event set when it is lost (expired,
        or Redis unreachable for longer than the lease), so the driver stops at its next step.
        Released when the block exits."""
        lost = asyncio.Event()
        keeper = asyncio.create_task(self._keep(lease, lost))
        try:
            yield lost
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            given_up = lease in self._given_up
            self._given_up.discard(lease)
            if not lost.is_set() and not given_up:
                with contextlib.suppress(Exception):  # it expires by itself if Redis is away
                    await self.release(lease)

    async def _keep(self, lease: Lease, lost: asyncio.Event) -> None:
        # Renew three times per lease time: two renewals may fail (a Redis blip) before it lapses.
        interval = self.ttl_ms / 3000
        loop = asyncio.get_running_loop()
        valid_until = loop.time() + self.ttl_ms / 1000
        while True:
            await asyncio.sleep(interval)
            try:
                if await self.renew(lease):
                    valid_until = loop.time() + self.ttl_ms / 1000
                    continue
                if lease in self._given_up:
                    return  # released on purpose, between a renewal and the block's exit
                log.warning(
                    "lease lost", extra={"conversation_id": lease.conversation_id, "token": lease.token}
                )
            except Exception as exc:
                if loop.time() < valid_until:
                    log.warning("lease renewal failed; retrying: %s", exc)
                    continue
                log.warning("lease lapsed while Redis was unreachable: %s", exc)
            lost.set()
            return
