"""The platform's rate limits at the gateway's `/mcp`, which MCP clients reach past the edge: a
third-party client over its class's limit gets 429 there with the edge's RateLimit fields and a
JSON-RPC error the official SDK's client raises; its allowance is one with the edge's (the real
edge app on the same Redis counts the same buckets); bad tokens from one address are refused by
that address after the failures' limit, before their tokens are looked at, while another address's
client goes on; and `MACP_RATE_LIMITS=off` counts nothing.

Everything is real: the token service issuing the tokens, the gateway serving `/mcp`, the edge, one
Redis."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import httpx
import pytest
import redis.asyncio as aioredis
from macp.common.v1 import principal_pb2
from macp.token.v1 import token_service_pb2 as token_pb
from mcp.shared.exceptions import MCPError

from services.runtime.auth.settings import EDGE_AUDIENCE, mcp_resource
from services.stack.config import free_port
from services.tool_gateway.mcp_limits import RATE_LIMITED
from services.tool_gateway.service import DEFINITION as TOOL_GATEWAY
from tests.edge.conftest import serving_edge
from tests.runtime.serving import running
from tests.scrape import scrape
from tests.tokens import TokenWorld, token_world
from tests.tool_gateway.mcp_oauth_client import mcp_client

pytestmark = pytest.mark.integration

LIST = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
# Small enough to reach in a few requests.
CLASS_LIMIT = 4
FAILURES_LIMIT = 3
LIMITS = {
    "MACP_RATE_LIMIT_THIRD_PARTY": f"{CLASS_LIMIT}/hour",
    "MACP_RATE_LIMIT_SOURCE_FAILURES": f"{FAILURES_LIMIT}/min",
}
ATTACKER, NEIGHBOUR = "198.51.100.7", "198.51.100.8"


@dataclass(frozen=True)
class Platform:
    tokens: TokenWorld
    environ: dict[str, str]
    mcp_url: str
    edge_url: str | None
    metrics_port: int

    async def third_party_tokens(self, tenant_id: str) -> tuple[str, str]:
        """A new third-party client of `tenant_id` (registered as open registration makes them) and
        its client-credentials tokens: for `/mcp`, and for the edge."""
        harness = self.tokens.harness
        registered = await harness.stub.RegisterClient(
            token_pb.RegisterClientRequest(
                initial_access_token=harness.initial_access_token,
                tenant_id=tenant_id,
                metadata=token_pb.ClientMetadata(
                    client_name="an MCP client",
                    client_class=principal_pb2.CLIENT_CLASS_THIRD_PARTY,
                    grant_types=["client_credentials"],
                    scope="tools:read tools:call",
                ),
            )
        )
        issued = []
        for audience in (mcp_resource(self.environ["MACP_TOKEN_ISSUER"]), EDGE_AUDIENCE):
            reply = await harness.stub.IssueToken(
                token_pb.IssueTokenRequest(
                    grant_type=token_pb.GRANT_TYPE_CLIENT_CREDENTIALS,
                    client_id=registered.client_id,
                    client_secret=registered.client_secret,
                    scope="tools:read tools:call",
                    audience=[audience],
                )
            )
            issued.append(reply.access_token)
        return issued[0], issued[1]

    async def post(self, token: str | None, source: str = "192.0.2.1") -> httpx.Response:
        """`tools/list` at `/mcp` as it arrives through Envoy: `source` last in x-forwarded-for."""
        headers = {
            "accept": "application/json, text/event-stream",
            "mcp-protocol-version": "2025-11-25",
            "x-forwarded-for": f"10.0.0.1, {source}",  # the client's own entry first is not read
        }
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
            return await http.post(self.mcp_url, json=LIST, headers=headers)


@asynccontextmanager
async def platform(
    service_environ: dict[str, str], extra: dict[str, str], *, edge: bool
) -> AsyncIterator[Platform]:
    """The token service, the gateway serving `/mcp` and (with `edge`) the edge app, all on one
    Redis and key prefix, with `extra` settings."""
    async with token_world(service_environ) as tokens, AsyncExitStack() as stack:
        http_port, metrics_port = free_port(), free_port()
        environ = tokens.service_environ(
            {
                **service_environ,
                **extra,
                "MACP_TOOL_GATEWAY_PORT": "0",
                "MACP_TOOL_GATEWAY_METRICS_PORT": str(metrics_port),
                "MACP_TOOL_GATEWAY_HTTP_PORT": str(http_port),
                "MACP_TOOL_GATEWAY_QUOTA_HOLDS": "off",
                "MACP_TOKEN_INITIAL_ACCESS_TOKEN": tokens.harness.initial_access_token,
                "MACP_LOG_LEVEL": "warning",
            }
        )
        await stack.enter_async_context(running(TOOL_GATEWAY, environ))
        edge_url = await stack.enter_async_context(serving_edge(environ)) if edge else None
        yield Platform(tokens, environ, f"http://127.0.0.1:{http_port}/mcp", edge_url, metrics_port)


async def test_a_clients_class_limit_is_one_allowance_across_the_edge_and_mcp(
    service_environ: dict[str, str],
) -> None:
    async with platform(service_environ, LIMITS, edge=True) as world:
        tenant = await world.tokens.tenant()
        mcp_token, edge_token = await world.third_party_tokens(tenant.tenant_id)
        other_mcp_token, _ = await world.third_party_tokens(tenant.tenant_id)
        assert world.edge_url is not None
        async with httpx.AsyncClient(base_url=world.edge_url, timeout=10, trust_env=False) as edge:
            at_edge = [await edge.get("/v1/rate-limits", headers=_bearer(edge_token)) for _ in range(2)]
            at_mcp = [await world.post(mcp_token) for _ in range(CLASS_LIMIT - 1)]
            edge_after = await edge.get("/v1/rate-limits", headers=_bearer(edge_token))
        # Another client of the same tenant has an allowance of its own.
        other = await world.post(other_mcp_token)
        # The SDK's client is refused at its first request (`initialize`) and raises what it was told.
        with pytest.RaisesGroup(pytest.RaisesExc(MCPError), flatten_subgroups=True) as raised:
            async with mcp_client(world.mcp_url, token=mcp_token, mode="legacy") as client:
                await client.list_tools()
        scraped = await scrape(world.metrics_port)

    assert [answer.status_code for answer in at_edge] == [200, 200], at_edge[0].text
    assert at_edge[1].json()["clientClass"] == "third_party"
    # The edge's two requests were spent from the same bucket /mcp counts.
    assert [answer.status_code for answer in at_mcp] == [200, 200, 429]
    admitted, refused = at_mcp[0], at_mcp[2]
    assert admitted.headers["ratelimit"].startswith('"third_party";r=1;')
    assert '"third_party";q=4;w=3600' in admitted.headers["ratelimit-policy"]
    assert refused.headers["ratelimit-remaining"] == "0"
    assert 1 <= int(refused.headers["retry-after"]) <= 900
    error = refused.json()
    assert error["id"] is None
    assert error["error"]["code"] == RATE_LIMITED
    assert error["error"]["message"].startswith("rate limit third_party exceeded; retry after")
    assert error["error"]["data"] == {
        "limit": "third_party",
        "retryAfterSeconds": int(refused.headers["retry-after"]),
    }
    # ... and what /mcp spent, the edge refuses in turn.
    assert edge_after.status_code == 429
    assert other.status_code == 200
    # The SDK's client raises the JSON-RPC error it was answered with.
    (sdk_error,) = _flattened(raised.value)
    assert isinstance(sdk_error, MCPError)
    assert sdk_error.error.code == RATE_LIMITED
    assert "rate limit third_party exceeded" in sdk_error.error.message
    assert (
        scraped.value(
            "macp_rate_limit_decisions_total", scope="class", limit="third_party", decision="refused"
        )
        or 0
    ) >= 2


async def test_bad_tokens_from_one_address_are_refused_by_it_before_their_tokens_are_looked_at(
    service_environ: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    async with platform(service_environ, LIMITS, edge=False) as world:
        tenant = await world.tokens.tenant()
        good, _ = await world.third_party_tokens(tenant.tenant_id)
        with caplog.at_level(logging.INFO, logger="macp.tool_gateway.mcp"):
            guesses = [await world.post(f"{good}x", ATTACKER) for _ in range(FAILURES_LIMIT + 2)]
        anonymous = await world.post(None, ATTACKER)
        # Every request of the address waits, a valid token's too: telling it from a guess is the
        # very check the flood must not buy.
        valid_there = await world.post(good, ATTACKER)
        elsewhere = await world.post(good, NEIGHBOUR)
        scraped = await scrape(world.metrics_port)

    assert [answer.status_code for answer in guesses] == [401] * FAILURES_LIMIT + [429, 429]
    assert 'error="invalid_token"' in guesses[0].headers["www-authenticate"]
    refused = guesses[-1]
    assert refused.json()["error"]["code"] == RATE_LIMITED
    assert "rate limit source_failures exceeded" in refused.json()["error"]["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 20
    # Only the guesses under the limit had their signature checked.
    checked = [record for record in caplog.records if record.getMessage() == "token refused"]
    assert len(checked) == FAILURES_LIMIT
    assert (anonymous.status_code, valid_there.status_code) == (429, 429)
    assert elsewhere.status_code == 200
    assert "ratelimit" in elsewhere.headers
    source = {"scope": "source", "limit": "source_failures"}
    assert scraped.value("macp_rate_limit_decisions_total", **source, decision="admitted") == FAILURES_LIMIT


async def test_with_rate_limits_off_mcp_counts_nothing(service_environ: dict[str, str]) -> None:
    async with platform(service_environ, {**LIMITS, "MACP_RATE_LIMITS": "off"}, edge=False) as world:
        tenant = await world.tokens.tenant()
        token, _ = await world.third_party_tokens(tenant.tenant_id)
        answers = [await world.post(token) for _ in range(CLASS_LIMIT + 1)]
        guesses = [await world.post(f"{token}x", ATTACKER) for _ in range(FAILURES_LIMIT + 1)]
        async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
            health = await http.get(world.mcp_url.replace("/mcp", "/healthz"))
        redis: aioredis.Redis = aioredis.from_url(world.environ["MACP_REDIS_URL"])
        try:
            counted = await redis.keys(f"{world.environ['MACP_REDIS_KEY_PREFIX']}ratelimit:*")
        finally:
            await redis.aclose()
    assert [answer.status_code for answer in answers] == [200] * (CLASS_LIMIT + 1)
    assert not any(name.startswith("ratelimit") for answer in answers for name in answer.headers)
    assert [answer.status_code for answer in guesses] == [401] * (FAILURES_LIMIT + 1)
    assert health.json()["rate_limits"] == "off"
    assert counted == []


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def _flattened(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    return [
        leaf
        for error in group.exceptions
        for leaf in (_flattened(error) if isinstance(error, BaseExceptionGroup) else [error])
    ]
