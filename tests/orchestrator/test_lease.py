"""Conversation leases against a real Redis: one holder at a time, fencing tokens that only grow,
takeover after a holder dies, and a deposed holder's writes refused."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb

from services.orchestrator.event_log import EventLog
from services.orchestrator.lease import Lease, LeaseLost, Leases

pytestmark = pytest.mark.integration


def _event(text: str) -> pb.ConversationEvent:
    return pb.ConversationEvent(token_delta=pb.TokenDelta(text=text))


async def test_of_many_processes_racing_for_a_conversation_exactly_one_drives(
    redis: aioredis.Redis, prefix: str
) -> None:
    conversation = str(uuid.uuid4())
    contenders = [Leases(redis, prefix, f"orchestrator-{n}") for n in range(20)]
    won = [lease for lease in await asyncio.gather(*(c.acquire(conversation) for c in contenders)) if lease]
    assert len(won) == 1
    # Even the holder cannot take it again: two rounds of one conversation never share a token.
    winner = next(contender for contender in contenders if contender.owner == won[0].owner)
    assert await winner.acquire(conversation) is None


async def test_fencing_tokens_only_grow_across_holders(redis: aioredis.Redis, prefix: str) -> None:
    conversation = str(uuid.uuid4())
    leases = Leases(redis, prefix, "orchestrator-a")
    tokens = []
    for _ in range(5):
        lease = await leases.acquire(conversation)
        assert lease is not None
        tokens.append(lease.token)
        await leases.release(lease)
    assert tokens == sorted(set(tokens))


async def test_a_dead_holder_is_taken_over_within_the_lease_time_and_its_writes_are_refused(
    redis: aioredis.Redis, prefix: str
) -> None:
    conversation = str(uuid.uuid4())
    log = EventLog(redis, prefix)
    first, second = Leases(redis, prefix, "a", ttl_ms=300), Leases(redis, prefix, "b", ttl_ms=300)
    dead = await first.acquire(conversation)
    assert dead is not None
    await log.append(conversation, _event("from a"), dead)
    # "a" stops renewing, as a killed process does; "b" gets the lease once it lapses.
    loop = asyncio.get_running_loop()
    started = loop.time()
    taken: Lease | None = None
    while taken is None:
        assert loop.time() - started < 1.0, "the lease was not free within three lease times"
        taken = await second.acquire(conversation)
        await asyncio.sleep(0.02)
    assert loop.time() - started >= 0.25
    assert taken.token > dead.token
    # "a" wakes up (a stall, not a death) and tries to publish: refused, nothing stored.
    with pytest.raises(LeaseLost):
        await log.append(conversation, _event("late from a"), dead)
    assert not await first.renew(dead)
    await log.append(conversation, _event("from b"), taken)
    texts = [event.token_delta.text for event in await log.read(conversation, "0-0")]
    assert texts == ["from a", "from b"]


async def test_a_held_lease_is_renewed_and_released_and_its_loss_is_signalled(
    redis: aioredis.Redis, prefix: str
) -> None:
    conversation = str(uuid.uuid4())
    leases, other = Leases(redis, prefix, "a", ttl_ms=200), Leases(redis, prefix, "b", ttl_ms=200)
    lease = await leases.acquire(conversation)
    assert lease is not None
    async with leases.held(lease) as lost:
        await asyncio.sleep(0.6)  # three lease times: only renewals keep it
        assert not lost.is_set()
        assert await other.acquire(conversation) is None
    # Released on exit: the next round need not wait for expiry.
    again = await other.acquire(conversation)
    assert again is not None
    # Another process deleting the key (an operator, a flush) is noticed within a lease time.
    async with other.held(again) as lost:
        await redis.delete(f"{prefix}orchestrator:lease:{conversation}")
        await asyncio.wait_for(lost.wait(), timeout=1.0)


def test_a_lease_too_short_to_renew_is_refused(redis: aioredis.Redis, prefix: str) -> None:
    with pytest.raises(ValueError, match="100 ms"):
        Leases(redis, prefix, "a", ttl_ms=50)
