"""The edge served by uvicorn (with its WebSocket settings) in front of the fake orchestrator and
token service, over the session's real Redis: what the WebSocket, SSE and chat-completions tests
take. Each `edge_world(...)` is one edge process's worth of app on a free port."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import redis.asyncio as aioredis
import uvicorn

from services.edge.app import build_app
from services.edge.server import uvicorn_config
from services.edge.settings import EdgeSettings
from services.runtime.auth.revocation import mark_revoked
from services.runtime.metrics import HttpMetrics
from services.runtime.settings import Env
from services.stack.infra import Infrastructure
from tests.edge.fake_orchestrator import ISSUER, FakeOrchestrator, Served, serving_fakes

CONVERSATION_ID = "0b5e2a3c-8d8f-4b35-9a8e-6e3f5f1d0001"


@dataclass(frozen=True)
class EdgeWorld:
    url: str
    fakes: Served
    redis_url: str = ""
    key_prefix: str = ""

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/v1/ws"

    @property
    def orchestrator(self) -> FakeOrchestrator:
        return self.fakes.orchestrator

    def token(self, **members: Any) -> str:
        return self.fakes.signer.token(**members)

    def headers(self, token: str | None = None) -> dict[str, str]:
        return {"authorization": f"Bearer {token or self.token()}"}

    def client(self, token: str | None = None) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=10, headers=self.headers(token))

    async def revoke(self, token: str) -> None:
        """Revokes `token` as the token service's Revoke does: its jti marked in the edge's Redis."""
        segment = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
        redis: aioredis.Redis = aioredis.from_url(self.redis_url)
        try:
            await mark_revoked(redis, self.key_prefix, claims["jti"], claims["exp"])
        finally:
            await redis.aclose()


def edge_environ(
    infrastructure: Infrastructure, mesh_address: str, extra: Mapping[str, str]
) -> dict[str, str]:
    return {
        "MACP_MESH_ADDRESS": mesh_address,
        "MACP_TOKEN_ISSUER": ISSUER,
        "MACP_REDIS_URL": infrastructure.env["MACP_REDIS_URL"],
        "MACP_REDIS_KEY_PREFIX": f"test:{uuid.uuid4().hex[:8]}:",
        "MACP_TOKEN_INITIAL_ACCESS_TOKEN": "initial-access-token",
        "MACP_EDGE_RPC_TIMEOUT_SECONDS": "5",
        "MACP_LOG_LEVEL": "warning",
        **extra,
    }


@asynccontextmanager
async def serving_edge_app(environ: Mapping[str, str]) -> AsyncIterator[str]:
    """The edge app under `uvicorn_config` (the WebSocket settings as in production) on a free port."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    settings = EdgeSettings.from_env(Env(dict(environ)))
    config = uvicorn_config(build_app(settings, HttpMetrics("edge")), settings, timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        while not server.started:
            if task.done():
                await task
                raise RuntimeError("the edge stopped before it started")
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
        listener.close()


@asynccontextmanager
async def edge_world(
    infrastructure: Infrastructure,
    extra: Mapping[str, str] | None = None,
    orchestrator: FakeOrchestrator | None = None,
) -> AsyncIterator[EdgeWorld]:
    async with serving_fakes(orchestrator) as fakes:
        environ = edge_environ(infrastructure, fakes.address, extra or {})
        async with serving_edge_app(environ) as url:
            yield EdgeWorld(url, fakes, environ["MACP_REDIS_URL"], environ["MACP_REDIS_KEY_PREFIX"])
