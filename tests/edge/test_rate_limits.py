"""Rate limits: GCRA in a real Redis shared by several limiters (as by several edge processes), the
edge's answers and headers, and the local fallback when Redis is unreachable."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis
from macp.token.v1 import token_service_pb2 as pb
from starlette.types import Message, Receive, Scope, Send

from services.edge.rate_limits import RateLimits, RateLimitSettings, headers
from services.edge.source_limits import SourceLimitMiddleware, source_of
from services.runtime.ratelimit import Limit, RedisLimiter, parse_limits
from services.runtime.settings import Env, SettingsError
from services.stack.infra import Infrastructure
from tests.edge.conftest import FakeToken, serving_edge
from tests.edge.orchestrator_world import EdgeWorld, edge_world

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
    infrastructure: Infrastructure, service_environ: dict[str, str], fake_token: FakeToken
) -> None:
    environ = {
        **service_environ,
        # The public routes used here make no RPC, but the edge is ready only with the keys.
        "MACP_MESH_ADDRESS": fake_token.mesh_address,
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
    infrastructure: Infrastructure, service_environ: dict[str, str], fake_token: FakeToken
) -> None:
    environ = {
        **service_environ,
        "MACP_MESH_ADDRESS": fake_token.mesh_address,
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


# Limits that cannot be walked around (issue 15): keyed by client and tenant, and by source address
# before authentication.

SOURCE_LIMITS = {
    "MACP_RATE_LIMIT_CONSUMER": "3/min",
    "MACP_RATE_LIMIT_SOURCE": "4/min",
    "MACP_RATE_LIMIT_SOURCE_FAILURES": "3/min",
}


@pytest.fixture(scope="module")
async def limited(infrastructure: Infrastructure) -> AsyncIterator[EdgeWorld]:
    """An edge (the fake token service's keys) with tight consumer and per-source limits."""
    async with edge_world(infrastructure, SOURCE_LIMITS) as served:
        yield served


def _from(address: str) -> dict[str, str]:
    """What Envoy's front listener adds: the peer it saw, last in x-forwarded-for."""
    return {"x-forwarded-for": address}


async def test_tenants_signing_in_through_one_public_client_never_share_its_bucket(
    limited: EdgeWorld,
) -> None:
    # Users of two tenants signed in through the same consumer client (as through the seeded CLI).
    acme = limited.headers(limited.token(client_id="macp-cli", tenant_id=f"acme-{uuid.uuid4()}"))
    globex = limited.headers(limited.token(client_id="macp-cli", tenant_id=f"globex-{uuid.uuid4()}"))
    # Requests the edge itself refuses (400, before any RPC) but counts all the same.
    counted = {"group_by": "planet"}
    async with httpx.AsyncClient(base_url=limited.url, timeout=10) as client:
        spent = [(await client.get("/v1/usage", params=counted, headers=acme)).status_code for _ in range(4)]
        other = await client.get("/v1/usage", params=counted, headers=globex)
    assert spent == [400, 400, 400, 429]
    # The other tenant's allowance is whole: one tenant's traffic spent none of it.
    assert other.status_code == 400
    assert other.headers["ratelimit"].startswith('"consumer";r=2;')


async def test_bad_tokens_are_counted_per_source_then_its_unauthenticated_requests_are_refused(
    limited: EdgeWorld,
) -> None:
    attacker, neighbour = _from("198.51.100.7"), _from("198.51.100.8")
    good = limited.headers(limited.token(tenant_id=f"t-{uuid.uuid4()}"))
    forged = limited.headers(limited.token(tenant_id="t") + "x")
    async with httpx.AsyncClient(base_url=limited.url, timeout=10) as client:
        guesses = [await client.get("/v1/rate-limits", headers={**forged, **attacker}) for _ in range(4)]
        # Past the failures' limit: what needs no token (an OAuth endpoint, discovery) is refused,
        # before any password or secret in it is looked at.
        blocked = await client.get("/.well-known/oauth-authorization-server", headers=attacker)
        elsewhere = await client.get("/.well-known/oauth-authorization-server", headers=neighbour)
        # A valid token is no guess: it is served, from that address too.
        signed_in = await client.get("/v1/rate-limits", headers={**good, **attacker})
    assert [answer.status_code for answer in guesses] == [401, 401, 401, 401]
    assert blocked.status_code == 429
    assert "rate limit source_failures exceeded" in blocked.json()["message"]
    assert 1 <= int(blocked.headers["retry-after"]) <= 20
    assert elsewhere.status_code != 429
    assert signed_in.status_code == 200


async def test_unauthenticated_requests_are_counted_by_the_address_envoy_appended(limited: EdgeWorld) -> None:
    async with httpx.AsyncClient(base_url=limited.url, timeout=10) as client:
        # The client writes whatever it likes first; Envoy's entry, the last, is what counts.
        answers = [
            await client.get("/v1/openapi.json", headers=_from(f"10.0.0.{n}, 203.0.113.5")) for n in range(6)
        ]
        elsewhere = await client.get("/v1/openapi.json", headers=_from("203.0.113.6"))
        missing = await client.get("/v1/agents", headers=_from("203.0.113.6"))
    assert [answer.status_code for answer in answers] == [200, 200, 200, 200, 429, 429]
    assert "rate limit source exceeded" in answers[4].json()["message"]
    assert elsewhere.status_code == 200
    assert missing.status_code == 401  # counted against that address too (no token at all)


def test_an_ipv6_source_counts_by_its_64_and_only_envoys_entry_is_read() -> None:
    assert source_of(b"2001:db8::1, 2001:db8:0:0:ffff::2", "127.0.0.1") == "2001:db8::/64"
    assert source_of(b"1.2.3.4,  192.0.2.1", "127.0.0.1") == "192.0.2.1"
    assert source_of(None, "192.0.2.9") == "192.0.2.9"
    assert source_of(b"", None) == "unknown"


async def test_password_guesses_from_one_address_are_refused_before_the_right_one_is_looked_at(
    fake_token: FakeToken,
) -> None:
    environ = {
        "MACP_MESH_ADDRESS": fake_token.mesh_address,
        "MACP_REDIS_URL": "redis://127.0.0.1:1/0",  # counted locally: no Redis needed for this
        "MACP_RATE_LIMIT_SOURCE_FAILURES": "3/min",
        "MACP_LOG_LEVEL": "warning",
    }

    def password(guess: str) -> dict[str, str]:
        return {"grant_type": "password", "username": "ada", "password": guess, "scope": "conversations:read"}

    async with serving_edge(environ) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        guesses = [
            await client.post("/oauth2/token", data=password(f"guess {n}"), auth=("macp-cli", "cli-secret"))
            for n in range(4)
        ]
        right = await client.post(
            "/oauth2/token", data=password("correct horse battery staple"), auth=("macp-cli", "cli-secret")
        )
        wrong_secret = {"grant_type": "client_credentials", "client_id": "macp-cli", "client_secret": "x"}
        secrets = [await client.post("/oauth2/token", data=wrong_secret) for _ in range(2)]
    assert [guess.status_code for guess in guesses] == [400, 400, 400, 429]
    assert guesses[0].json()["error"] == "invalid_grant"
    # The fourth guess and the right password alike are refused before the token service sees them.
    assert right.status_code == 429
    assert [answer.status_code for answer in secrets] == [429, 429]
    assert sum(isinstance(sent, pb.IssueTokenRequest) for sent in fake_token.service.requests) == 3


async def test_a_flood_refused_by_its_address_writes_no_access_log_line_per_request(
    limited: EdgeWorld, caplog: pytest.LogCaptureFixture
) -> None:
    flood = _from("203.0.113.77")
    with caplog.at_level(logging.INFO, logger="macp.http"):
        async with httpx.AsyncClient(base_url=limited.url, timeout=10) as client:
            answers = [(await client.get("/v1/openapi.json", headers=flood)).status_code for _ in range(12)]
    assert answers == [200] * 4 + [429] * 8
    # The four served requests are logged each; the refused ones only in bulk (one line a while).
    logged = [record for record in caplog.records if record.name == "macp.http"]
    assert [getattr(record, "status", None) for record in logged] == [200] * 4


def test_refusals_by_address_are_logged_together_once_a_while(caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError("not called: only the refusals' log is tested here")

    now = [0.0]
    limits = RateLimits(RateLimitSettings.from_env(Env({})), RedisLimiter(aioredis.from_url("redis://x"), ""))
    middleware = SourceLimitMiddleware(app, lambda: limits, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="macp.edge.ratelimit"):
        for second, address in [(1, "192.0.2.1"), (2, "192.0.2.1"), (3, "192.0.2.2"), (11, "192.0.2.1")]:
            now[0] = second
            middleware._note_refusal(address)
    (line,) = caplog.records
    fields = line.__dict__
    assert (fields["refused"], fields["addresses"]) == (4, 2)
    assert fields["most"] == {"192.0.2.1": 3, "192.0.2.2": 1}


async def test_an_address_has_few_requests_without_a_token_answered_at_once() -> None:
    # A burst sent at once is not all looked at before its first failure is counted.
    release = asyncio.Event()
    answered: list[int] = []

    async def slow_app(scope: Scope, receive: Receive, send: Send) -> None:
        await release.wait()
        await send({"type": "http.response.start", "status": 400, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    settings = RateLimitSettings.from_env(Env({"MACP_RATE_LIMIT_SOURCE_IN_FLIGHT": "2"}))
    dead: aioredis.Redis = aioredis.from_url("redis://127.0.0.1:1/0")  # counted locally
    limits = RateLimits(settings, RedisLimiter(dead, "test:"))
    middleware = SourceLimitMiddleware(slow_app, lambda: limits)

    async def request() -> None:
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/oauth2/token",
            "headers": [],
            "client": ("192.0.2.5", 1),
        }

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                answered.append(message["status"])

        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        await middleware(scope, receive, send)

    try:
        burst = [asyncio.create_task(request()) for _ in range(5)]
        await asyncio.sleep(0.1)
        assert answered == [429, 429, 429]  # two are being answered; the rest refused at once
        release.set()
        await asyncio.gather(*burst)
    finally:
        await dead.aclose()
    assert sorted(answered) == [400, 400, 429, 429, 429]
