"""Fixtures of the agent-proxy tests: the local provider server in-process, the proxy's settings
pointing at it (its Anthropic side as provider `local`, its OpenAI side as the OpenAI-compatible
provider `compat`), and the real agent-proxy service with real tokens from the real token service."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc
import httpx
import pytest
from macp.agent_proxy.v1 import agent_proxy_service_pb2 as pb
from macp.agent_proxy.v1 import agent_proxy_service_pb2_grpc as pb_grpc

from services.agent_proxy.service import DEFINITION as AGENT_PROXY
from services.agent_proxy.service import GENERATE_SCOPE
from services.provider_server.server import RunningProviderServer, serving
from services.runtime.auth.settings import service_audience
from services.runtime.server import RunningService
from tests.runtime.serving import channel, running
from tests.tokens import ALL_SCOPES, Tenant, TokenWorld, bearer, token_world

AUDIENCE = service_audience("agent-proxy")


def provider_environ(base_url: str) -> dict[str, str]:
    """Providers `local` (Anthropic protocol, models echo-1 then echo-2) and `compat` (OpenAI
    protocol), both served by the provider server at `base_url`; retries fast."""
    return {
        "MACP_AGENT_PROXY_PROVIDERS": "local,compat",
        "MACP_PROVIDER_LOCAL_BASE_URL": base_url,
        "MACP_PROVIDER_LOCAL_MODELS": "echo-1,echo-2",
        "MACP_PROVIDER_COMPAT_PROTOCOL": "openai",
        "MACP_PROVIDER_COMPAT_BASE_URL": f"{base_url}/v1",
        "MACP_PROVIDER_COMPAT_API_KEY": "sk-compat-secret-do-not-leak",
        "MACP_PROVIDER_COMPAT_MODELS": "compat-1",
        "MACP_AGENT_PROXY_RETRY_BASE_SECONDS": "0.01",
    }


def generate_request(
    tenant_id: str,
    *,
    provider: str = "local",
    model: str = "echo-1",
    text: str = "Hello, agents!",
    in_conversation: bool = True,
    **kw: int,
) -> pb.GenerateRequest:
    """A Generate as the orchestrator sends it: a turn of a conversation's round, or (with
    `in_conversation=False`) a turn outside any, as a chat completion is."""
    request = pb.GenerateRequest(
        turn_id=str(uuid.uuid4()),
        conversation_id=str(uuid.uuid4()) if in_conversation else "",
        agent_id=str(uuid.uuid4()),
        tenant_id=tenant_id,
        provider=provider,
        model=model,
        system_prompt="You are Ada.",
        messages=[pb.ChatMessage(role=pb.CHAT_ROLE_USER, name="Grace", text=text)],
    )
    if "max_tokens" in kw:
        request.generation.max_tokens = kw["max_tokens"]
    return request


async def book(server: RunningProviderServer, model: str, behavior: str, times: int | None = None) -> None:
    async with httpx.AsyncClient(base_url=server.base_url) as admin:
        answer = await admin.post(
            "/admin/behaviors", json={"model": model, "behavior": behavior, "times": times}
        )
        answer.raise_for_status()


@pytest.fixture
async def provider_server() -> AsyncIterator[RunningProviderServer]:
    async with serving() as server:
        yield server


@dataclass
class Proxy:
    """A running agent proxy and a caller of it."""

    service: RunningService
    stub: pb_grpc.AgentProxyServiceStub
    tenant: Tenant
    token: str
    tokens: TokenWorld
    environ: dict[str, str]

    @property
    def auth(self) -> tuple[tuple[str, str], ...]:
        return bearer(self.token)

    async def generate(self, request: pb.GenerateRequest, deadline: float = 20) -> list[pb.GenerateResponse]:
        return [r async for r in self.stub.Generate(request, metadata=self.auth, timeout=deadline)]


@asynccontextmanager
async def running_proxy(environ: Mapping[str, str], tokens: TokenWorld) -> AsyncIterator[Proxy]:
    tenant = await tokens.tenant(scope=f"{ALL_SCOPES} {GENERATE_SCOPE}")
    token = await tokens.user_token(tenant, [AUDIENCE])
    full = tokens.service_environ(
        {**environ, "MACP_AGENT_PROXY_PORT": "0", "MACP_AGENT_PROXY_METRICS_PORT": "0"}
    )
    async with running(AGENT_PROXY, full) as service, channel(service.port) as opened:
        yield Proxy(service, pb_grpc.AgentProxyServiceStub(opened), tenant, token, tokens, full)


@pytest.fixture
async def tokens(service_environ: dict[str, str]) -> AsyncIterator[TokenWorld]:
    async with token_world(service_environ) as world:
        yield world


@pytest.fixture
async def proxy(
    service_environ: dict[str, str], tokens: TokenWorld, provider_server: RunningProviderServer
) -> AsyncIterator[Proxy]:
    async with running_proxy({**service_environ, **provider_environ(provider_server.base_url)}, tokens) as p:
        yield p


def texts(responses: list[pb.GenerateResponse]) -> str:
    return "".join(r.text_delta.text for r in responses if r.HasField("text_delta"))


def refusal(error: BaseException) -> grpc.StatusCode:
    assert isinstance(error, grpc.aio.AioRpcError)
    return error.code()
