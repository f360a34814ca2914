"""Revocations in a real Redis: the mark the token service writes, and how soon a process sees it."""

from __future__ import annotations

import time

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from services.runtime.auth.revocation import RevocationChecker, mark_revoked, revocation_key
from services.stack.config import free_port

pytestmark = pytest.mark.integration


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_key_is_the_one_the_token_service_writes() -> None:
    assert revocation_key("macp:", "8f0c") == "macp:revoked:8f0c"


async def test_mark_revoked_outlives_the_token_by_the_leeway(redis: aioredis.Redis, key_prefix: str) -> None:
    now = time.time()
    await mark_revoked(redis, key_prefix, "jti-1", now + 100, now=now, leeway=30)
    assert await redis.get(revocation_key(key_prefix, "jti-1")) == b"1"
    assert 125 <= await redis.ttl(revocation_key(key_prefix, "jti-1")) <= 130


async def test_a_token_past_every_leeway_needs_no_mark(redis: aioredis.Redis, key_prefix: str) -> None:
    now = time.time()
    await mark_revoked(redis, key_prefix, "jti-old", now - 31, now=now, leeway=30)
    assert await redis.exists(revocation_key(key_prefix, "jti-old")) == 0


async def test_a_revocation_is_seen_within_the_staleness_bound(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    clock = Clock()
    checker = RevocationChecker(redis, key_prefix, max_staleness=1.0, clock=clock)
    assert not await checker.is_revoked("jti-2")

    # Written the way the token service writes it, not through our helper.
    await redis.set(revocation_key(key_prefix, "jti-2"), b"1", ex=60)
    clock.now += 0.99
    assert not await checker.is_revoked("jti-2"), "answered from the cache within the bound"
    assert checker.lookups == 1
    clock.now += 0.01
    assert await checker.is_revoked("jti-2"), "asked Redis again once the bound passed"
    assert checker.lookups == 2


async def test_a_revocation_is_seen_within_a_second_in_real_time(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    checker = RevocationChecker(redis, key_prefix)
    assert not await checker.is_revoked("jti-3")
    await mark_revoked(redis, key_prefix, "jti-3", time.time() + 60)
    revoked_at = time.monotonic()
    while not await checker.is_revoked("jti-3"):
        assert time.monotonic() - revoked_at < 1.05
        await redis.ping()  # a real round trip per iteration, like the calls in between would be
    assert time.monotonic() - revoked_at <= 1.05


async def test_revoked_stays_revoked_without_asking_again(redis: aioredis.Redis, key_prefix: str) -> None:
    clock = Clock()
    checker = RevocationChecker(redis, key_prefix, clock=clock)
    await redis.set(revocation_key(key_prefix, "jti-4"), b"1", ex=60)
    assert await checker.is_revoked("jti-4")
    await redis.delete(revocation_key(key_prefix, "jti-4"))
    clock.now += 3600
    assert await checker.is_revoked("jti-4")
    assert checker.lookups == 1


async def test_the_cache_stays_within_its_bound(redis: aioredis.Redis, key_prefix: str) -> None:
    clock = Clock()
    checker = RevocationChecker(redis, key_prefix, max_entries=10, clock=clock)
    for n in range(35):
        await checker.is_revoked(f"jti-{n}")
        clock.now += 0.1
        assert len(checker) <= 10


async def test_an_unreachable_redis_raises_instead_of_answering_not_revoked(key_prefix: str) -> None:
    unreachable: aioredis.Redis = aioredis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    try:
        checker = RevocationChecker(unreachable, key_prefix)
        with pytest.raises(RedisConnectionError):
            await checker.is_revoked("jti-5")
    finally:
        await unreachable.aclose()
