"""`GET /v1/rate-limits` and `macp limits` on the real edge (real tokens from the real token service,
limits counted in the real Redis): looking counts as a request, counted requests move the caller's
standing and the decision counters on the edge's /metrics, and the CLI prints both."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from services.cli.accounts import CliError
from services.cli.limits import render_limits
from services.cli.usage import get_json
from services.edge.app import build_app
from services.edge.settings import EdgeSettings
from services.runtime.auth.settings import EDGE_AUDIENCE
from services.runtime.metrics import HttpMetrics, serve_metrics
from services.runtime.settings import Env
from services.stack.config import free_port
from tests.asgi import serving
from tests.scrape import scrape
from tests.tokens import token_world

pytestmark = pytest.mark.integration

LIMITS = {
    "MACP_RATE_LIMIT_API": "100/s burst 200",
    "MACP_RATE_LIMIT_CONSUMER": "3/min",
    "MACP_RATE_LIMIT_TENANT": "600/min burst 50",
}


@dataclass(frozen=True)
class LimitedEdge:
    url: str
    token: str
    metrics_port: int


@pytest.fixture
async def edge(service_environ: dict[str, str]) -> AsyncIterator[LimitedEdge]:
    """The edge with tight consumer limits, verifying tokens of the real token service (its JWKS over
    the mesh address, which points straight at it), and its /metrics served as the edge process does."""
    async with token_world(service_environ) as tokens:
        tenant = await tokens.tenant()  # a consumer client's user
        token = await tokens.user_token(tenant, [EDGE_AUDIENCE])
        environ = tokens.service_environ({**service_environ, **LIMITS})
        metrics = HttpMetrics("edge")
        metrics_port = free_port()
        endpoint = await serve_metrics(metrics.registry, "127.0.0.1", metrics_port)
        try:
            async with serving(lambda url: build_app(EdgeSettings.from_env(Env(environ)), metrics)) as url:
                yield LimitedEdge(url, token, metrics_port)
        finally:
            await endpoint.close()


def _by_name(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    limits = document["limits"]
    assert isinstance(limits, list)
    return {limit["name"]: limit for limit in limits}


async def test_the_caller_sees_its_standing_and_looking_counts_as_a_request(edge: LimitedEdge) -> None:
    headers = {"authorization": f"Bearer {edge.token}"}
    async with httpx.AsyncClient(base_url=edge.url, headers=headers, timeout=10, trust_env=False) as http:
        look = await http.get("/v1/rate-limits")
        first = look.json()
        assert first["clientClass"] == "consumer"
        assert first["counting"] == "redis"
        assert first["admitted"] is True
        assert [(limit["scope"], limit["name"]) for limit in first["limits"]] == [
            ("global", "api"),
            ("class", "consumer"),
            ("tenant", "tenant"),
        ]
        consumer = _by_name(first)["consumer"]
        assert (consumer["limit"], consumer["windowSeconds"], consumer["burst"]) == (3, 60, 3)
        # The look itself was counted: two of the three requests are left.
        assert consumer["remaining"] == 2
        assert look.headers["ratelimit"].startswith('"consumer";r=2;')
        assert "retry-after" not in look.headers
        assert first["configured"]["classes"]["third_party"][1]["limit"] == 50  # 1000/hour + 50/min
        assert [limit["policy"] for limit in first["configured"]["global"]] == ['"api";q=100;w=1']
        assert [limit["name"] for limit in first["configured"]["sourceFailures"]] == ["source_failures"]

        # A counted request (refused by the edge itself, before any RPC, but counted all the same),
        # then a look that takes the last request: it says the next one would be refused.
        assert (await http.get("/v1/usage", params={"group_by": "planet"})).status_code == 400
        standing = (await http.get("/v1/rate-limits")).json()
        assert standing["admitted"] is False
        assert 1 <= standing["retryAfterSeconds"] <= 20  # one request is earned back every 20 s
        consumer = _by_name(standing)["consumer"]
        assert consumer["remaining"] == 0
        assert 40 <= consumer["resetSeconds"] <= 60
        assert 50 - 3 <= _by_name(standing)["tenant"]["remaining"] <= 50  # one back every 0.1 s

        # Past the limit, looking is refused like any request: its 429 says when to come back.
        refused = [await http.get(path) for path in ("/v1/usage", "/v1/rate-limits")]
        assert [answer.status_code for answer in refused] == [429, 429]
        assert 1 <= int(refused[1].headers["retry-after"]) <= 20
        assert "rate limit consumer exceeded" in refused[1].json()["message"]

        document = (await http.get("/v1/openapi.json")).json()
        operation = document["paths"]["/v1/rate-limits"]["get"]
        assert operation["operationId"] == "getRateLimits"
        schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/RateLimitStatus"}
        assert "limits" in document["components"]["schemas"]["RateLimitStatus"]["required"]

        anonymous = await http.get("/v1/rate-limits", headers={"authorization": ""})
        assert anonymous.status_code == 401

    metrics = await scrape(edge.metrics_port)
    decisions = "macp_rate_limit_decisions_total"
    assert metrics.value(decisions, scope="class", limit="consumer", decision="admitted") == 3
    assert metrics.value(decisions, scope="class", limit="consumer", decision="refused") == 2
    assert metrics.value(decisions, scope="tenant", limit="tenant", decision="admitted") == 3
    assert metrics.value(decisions, scope="tenant", limit="tenant", decision="refused") == 0
    # The public openapi.json counted against the API as a whole only, as anonymous requests are.
    assert metrics.value(decisions, scope="global", limit="api", decision="admitted") == 4
    # Every configured limit is exported from the start, used or not.
    assert metrics.value(decisions, scope="class", limit="partner", decision="refused") == 0
    assert metrics.value(decisions, scope="class", limit="third_party-2", decision="admitted") == 0

    # `macp limits` renders the same document (read before the limit refused the caller).
    printed = render_limits(standing)
    assert "tenant " in printed
    assert "limits counted in redis" in printed
    assert "class   consumer  3/min" in printed
    assert "refused now: retry after" in printed
    assert "each third_party client  1000/hour + 50/min" in printed
    assert "the whole API" in printed
    assert "100/s burst 200" in printed
    # `macp limits` itself, refused now, prints the 429's message (urllib blocks: a thread).
    with pytest.raises(CliError, match="HTTP 429: rate limit consumer exceeded"):
        await asyncio.to_thread(get_json, f"{edge.url}/v1/rate-limits", edge.token)
