"""The agent proxy's domain signals on its real /metrics endpoint: every configured breaker closed
and nothing pending before any call; a failing model's breaker open (2) once it fails, half-open (1)
when its open period has passed with no call to say so, and the fallback's time to first token."""

from __future__ import annotations

import asyncio

import pytest
from macp.agent_proxy.v1 import agent_proxy_service_pb2_grpc as pb_grpc

from services.agent_proxy.service import DEFINITION as AGENT_PROXY
from services.agent_proxy.service import GENERATE_SCOPE
from services.provider_server.server import RunningProviderServer
from services.stack.config import free_port
from tests.agent_proxy.conftest import AUDIENCE, book, generate_request, provider_environ, texts
from tests.runtime.serving import channel, running
from tests.scrape import scrape
from tests.tokens import ALL_SCOPES, TokenWorld, bearer

pytestmark = pytest.mark.integration

OPEN_SECONDS = 1.0


async def test_breaker_state_pending_requests_and_first_token_on_metrics(
    service_environ: dict[str, str], tokens: TokenWorld, provider_server: RunningProviderServer
) -> None:
    tenant = await tokens.tenant(scope=f"{ALL_SCOPES} {GENERATE_SCOPE}")
    token = await tokens.user_token(tenant, [AUDIENCE])
    metrics_port = free_port()
    environ = tokens.service_environ(
        {
            **service_environ,
            **provider_environ(provider_server.base_url),
            "MACP_AGENT_PROXY_PORT": "0",
            "MACP_AGENT_PROXY_METRICS_PORT": str(metrics_port),
            "MACP_AGENT_PROXY_BREAKER_FAILURES": "1",
            "MACP_AGENT_PROXY_BREAKER_OPEN_SECONDS": str(OPEN_SECONDS),
        }
    )
    async with running(AGENT_PROXY, environ) as service, channel(service.port) as opened:
        stub = pb_grpc.AgentProxyServiceStub(opened)
        before = await scrape(metrics_port)
        breaker = "macp_breaker_state"
        assert before.families[breaker] == "gauge"
        for provider, model in (("local", "echo-1"), ("local", "echo-2"), ("compat", "compat-1")):
            assert before.value(breaker, service="agent-proxy", provider=provider, model=model) == 0
        assert before.value("pending_agent_requests", service="agent-proxy") == 0
        assert before.families["macp_generate_first_token_seconds"] == "histogram"

        await book(provider_server, "echo-1", "status=500", times=1)
        responses = [
            r
            async for r in stub.Generate(
                generate_request(tenant.tenant_id), metadata=bearer(token), timeout=20
            )
        ]
        assert texts(responses)  # served by the fallback, echo-2
        assert responses[-1].completion.usage.model == "echo-2"

        opened_scrape = await scrape(metrics_port)
        assert opened_scrape.value(breaker, provider="local", model="echo-1") == 2
        assert opened_scrape.value(breaker, provider="local", model="echo-2") == 0
        first_token = "macp_generate_first_token_seconds_count"
        assert opened_scrape.value(first_token, provider="local", model="echo-2") == 1
        assert opened_scrape.value(first_token, provider="local", model="echo-1") is None

        # No call in between: the scrape itself reads the breaker as its clock has moved it.
        await asyncio.sleep(OPEN_SECONDS + 0.2)
        later = await scrape(metrics_port)
        assert later.value(breaker, provider="local", model="echo-1") == 1
