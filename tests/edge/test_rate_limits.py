"""Rate limits: GCRA in a real Redis shared by several limiters (as by several edge processes), the
edge's answers and headers, and the local fallback when Redis is unreachable."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis

from services.edge.rate_limits import RateLimits, RateLimitSettings, headers
from services.runtime.ratelimit import Limit, RedisLimiter, parse_limits
from services.runtime.settings import Env, SettingsError
from services.stack.infra import Infrastructure
from tests.edge.conftest import serving_edge

pytestmark = pytest.mark.integration


@pytest.fixture
async def clients(service_environ: dict[str, str]) -> AsyncIterator[list[aioredis.Redis]]:
    """Two Redis clients: two edge processes' worth of connections to one Redis."""
    opened = [aioredis.from_url(service_environ["MACP_REDIS_URL"]) for _ in range(2)]
    try:
        yield opened
    finally:
        for client in opened:
            await client.aclose()


async def test_a_burst_is_admitted_exactly_however_many_processes_count_it(
    clients: list[aioredis.Redis], service_environ: dict[str, str]
) -> None:
    prefix = service_environ["MACP_REDIS_KEY_PREFIX"]
    limiters = [RedisLimiter(client, prefix) for client in clients]
    limit = Limit("api", limit=60, period_seconds=60, burst=20)
    decisions = await asyncio.gather(*(limiters[n % 2].check([("api", limit)]) for n in range(100)))
    admitted = [decision for decision in decisions if decision.admitted]
    assert len(admitted) == 20
    refused = [decision for decision in decisions if not decision.admitted]
    assert all(decision.refused_by == limit for decision in refused)
    # One request is earned back per interval (1 s): the next one is due within a second.
    assert all(0 < decision.retry_after_seconds <= 1.0 for decision in refused)
    assert min(state.remaining for decision in admitted for state in decision.states) == 0


async def test_a_request_refused_by_one_limit_uses_up_none_of_the_others(
    clients: list[aioredis.Redis], service_environ: dict[str, str]
) -> None:
    limiter = RedisLimiter(clients[0], service_environ["MACP_REDIS_KEY_PREFIX"])
    roomy = Limit("api", limit=1000, period_seconds=3600, burst=1000)
    tight = Limit("client", limit=2, period_seconds=3600, burst=2)
    outcomes = [(await limiter.check([("api", roomy), ("client:a", tight)])).admitted for _ in range(5)]
    assert outcomes == [True, True, False, False, False]
    # Only the two admitted requests moved the API's counter (and this check, the third).
    (api_state,) = (await limiter.check([("api", roomy)])).states
    assert api_state.remaining == 1000 - 3


async def test_the_edge_answers_429_with_retry_after_and_ratelimit_headers(
    infrastructure: Infrastructure, service_environ: dict[str, str]
) -> None:
    environ = {
        **service_environ,
        "MACP_MESH_ADDRESS": "127.0.0.1:1",  # the public routes used here make no RPC
        "MACP_RATE_LIMIT_API": "6/min burst 3",
        "MACP_LOG_LEVEL": "warning",
    }
    async with serving_edge(environ) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        answers = [await client.get("/v1/openapi.json") for _ in range(5)]
        health = await client.get("/healthz")
    assert [answer.status_code for answer in answers] == [200, 200, 200, 429, 429]
    first, refused = answers[0], answers[3]
    assert first.headers["ratelimit-policy"] == '"api";q=6;w=60'
    assert first.headers["ratelimit-remaining"] == "2"
    assert first.headers["ratelimit"].startswith('"api";r=2;t=')
    assert refused.json()["code"] == "RESOURCE_EXHAUSTED"
    assert "rate limit api exceeded" in refused.json()["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 10
    assert refused.headers["ratelimit-remaining"] == "0"
    # Health is never limited, and says where the limits are counted.
    assert health.status_code == 200
    assert health.json()["rate_limits"] == "redis"


async def test_with_rate_limits_off_the_edge_counts_nothing_and_says_so(
    infrastructure: Infrastructure, service_environ: dict[str, str]
) -> None:
    environ = {
        **service_environ,
        "MACP_MESH_ADDRESS": "127.0.0.1:1",
        "MACP_RATE_LIMIT_API": "1/min burst 1",
        "MACP_RATE_LIMITS": "off",
        "MACP_LOG_LEVEL": "warning",
    }
    async with serving_edge(environ) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        answers = [await client.get("/v1/openapi.json") for _ in range(3)]
        health = await client.get("/healthz")
    assert [answer.status_code for answer in answers] == [200, 200, 200]
    assert not any(name.startswith("ratelimit") for answer in answers for name in answer.headers)
    assert health.json()["rate_limits"] == "off"
    redis: aioredis.Redis = aioredis.from_url(service_environ["MACP_REDIS_URL"])
    try:
        assert await redis.keys(f"{service_environ['MACP_REDIS_KEY_PREFIX']}ratelimit:*") == []
    finally:
        await redis.aclose()


def test_rate_limits_are_on_unless_turned_off_by_name() -> None:
    assert RateLimitSettings.from_env(Env({})).enabled
    assert not RateLimitSettings.from_env(Env({"MACP_RATE_LIMITS": "OFF"})).enabled
    with pytest.raises(SettingsError, match="MACP_RATE_LIMITS"):
        RateLimitSettings.from_env(Env({"MACP_RATE_LIMITS": "disabled"}))


async def test_without_redis_the_edge_limits_locally_and_says_so() -> None:
    settings = RateLimitSettings.from_env(Env({"MACP_RATE_LIMIT_API": "4/min burst 4"}))
    dead: aioredis.Redis = aioredis.from_url("redis://127.0.0.1:1/0")
    try:
        limits = RateLimits(settings, RedisLimiter(dead, "test:"))
        decisions = [await limits.check(None) for _ in range(6)]
    finally:
        await dead.aclose()
    assert [decision.admitted for decision in decisions] == [True] * 4 + [False] * 2
    assert all(decision.local for decision in decisions)
    assert limits.mode.startswith("local fallback")
    assert (b"retry-after", b"15") in headers(decisions[-1])


def test_the_seeds_limits_are_the_defaults() -> None:
    settings = RateLimitSettings.from_env(Env({}))
    assert [(limit.limit, limit.period_seconds, limit.burst) for limit in settings.api] == [(1000, 1, 2000)]
    third_party = settings.by_class["third_party"]
    assert [(limit.limit, limit.period_seconds) for limit in third_party] == [(1000, 3600), (50, 60)]
    assert [(limit.limit, limit.period_seconds) for limit in settings.by_class["partner"]] == [(10000, 86400)]


@pytest.mark.parametrize("text", ["fast", "10/week", "0/s", "10/s burst 0", "10 per second"])
def test_a_malformed_limit_names_the_variable(text: str) -> None:
    with pytest.raises(SettingsError, match="MACP_RATE_LIMIT_PARTNER"):
        parse_limits("partner", text, "MACP_RATE_LIMIT_PARTNER")
