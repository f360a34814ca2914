"""A real slice of the mesh for end-to-end tests: Envoy (front and mesh listeners), the edge, the
token service, the conversation service and the orchestrator (a posted message goes through it),
on free ports, over the session's real infrastructure.

Every hop authenticates: the slice seeds a tenant with a user through the token service's RPCs and
hands out the user's token for the edge (`Slice.client()` sends it).
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.request
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest

from services.conversation.service import DEFINITION as CONVERSATION
from services.orchestrator.service import DEFINITION as ORCHESTRATOR
from services.runtime.auth.settings import EDGE_AUDIENCE
from services.runtime.server import RunningService, serve
from services.runtime.settings import Env
from services.stack.config import free_port
from services.stack.envoy import Envoy
from tests.edge_and_envoy import edge_and_envoy
from tests.tokens import Tenant, TokenWorld, token_world


@dataclass(frozen=True)
class Slice:
    front_url: str
    mesh_address: str
    conversation_port: int
    envoy_log: Path
    database_url: str
    tokens: TokenWorld
    tenant: Tenant
    edge_token: str

    def client(self, token: str | None = None) -> httpx.AsyncClient:
        """An HTTP client of the front URL sending `token` (by default the tenant user's edge token)."""
        bearer = {"authorization": f"Bearer {token or self.edge_token}"}
        return httpx.AsyncClient(base_url=self.front_url, timeout=10, headers=bearer)

    async def with_new_tenant(self) -> Slice:
        """This slice as seen by the user of a new tenant of its own."""
        tenant = await self.tokens.tenant()
        return replace(self, tenant=tenant, edge_token=await self.tokens.user_token(tenant, [EDGE_AUDIENCE]))


def _cluster_healthy(admin_port: int, cluster: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{admin_port}/clusters", timeout=2) as response:
        text = response.read().decode()
    lines = text.splitlines()
    return any(line.startswith(f"{cluster}::") and line.endswith("health_flags::healthy") for line in lines)


async def _wait_healthy(admin_port: int, cluster: str) -> None:
    """Envoy health-checks every 2 s: wait until it routes to `cluster` (20 s at most)."""
    for _ in range(100):
        if await asyncio.to_thread(_cluster_healthy, admin_port, cluster):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"Envoy never saw the {cluster} cluster healthy")


async def wait_authenticating(slice_: Slice) -> None:
    """Until the edge and the conversation service hold the token service's keys (fetched over the
    mesh, which came up after them): a GET of an unknown agent answers 404, not 503 (20 s at most)."""
    async with slice_.client() as client:
        for _ in range(100):
            response = await client.get(f"/v1/agents/{uuid.uuid4()}")
            if response.status_code == 404:
                return
            await asyncio.sleep(0.2)
    raise AssertionError(f"the slice never authenticated a valid token: {response.text}")


@pytest.fixture
async def mesh_slice(service_environ: dict[str, str], tmp_path: Path) -> AsyncIterator[Slice]:
    async with token_world(service_environ) as tokens:
        async for slice_ in _slice(tokens, tmp_path):
            yield slice_


@pytest.fixture(scope="module")
async def module_slice(
    module_environ: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Slice]:
    """One slice for a module whose tests need no slice of their own: each takes a tenant of its
    own on it with `Slice.with_new_tenant()`."""
    async with token_world(module_environ) as tokens:
        async for slice_ in _slice(tokens, tmp_path_factory.mktemp("slice")):
            yield slice_


async def _slice(tokens: TokenWorld, tmp_path: Path) -> AsyncIterator[Slice]:
    ports = {
        "MACP_CONVERSATION_PORT": str(free_port()),
        "MACP_CONVERSATION_METRICS_PORT": "0",
        "MACP_ORCHESTRATOR_PORT": str(free_port()),
        "MACP_ORCHESTRATOR_METRICS_PORT": "0",
        "MACP_EDGE_PORT": str(free_port()),
        "MACP_EDGE_METRICS_PORT": "0",
        "MACP_ENVOY_FRONT_PORT": str(free_port()),
        "MACP_ENVOY_MESH_PORT": str(free_port()),
        "MACP_ENVOY_ADMIN_PORT": str(free_port()),
    }
    mesh = {
        "MACP_MESH_ADDRESS": f"127.0.0.1:{ports['MACP_ENVOY_MESH_PORT']}",
        # The slice runs no agent proxy and no metering: the orchestrator is ready without them,
        # and a round's quota holds are refused at once rather than asked for again.
        "MACP_ORCHESTRATOR_NEEDS": "conversation,token",
        "MACP_ORCHESTRATOR_RESERVE_SECONDS": "0",
    }
    # Every request of a slice comes from 127.0.0.1, and the attack tests fail authentication on
    # purpose by the hundred: the per-source limits are tested on their own (tests/edge).
    limits = {
        "MACP_RATE_LIMIT_SOURCE": "100000/min",
        "MACP_RATE_LIMIT_SOURCE_FAILURES": "100000/min",
        "MACP_RATE_LIMIT_SOURCE_IN_FLIGHT": "1000",
    }
    environ = {**tokens.environ, **ports, **mesh, **limits}
    env = Env(environ)

    started: asyncio.Future[RunningService] = asyncio.get_running_loop().create_future()
    conversation = asyncio.create_task(serve(CONVERSATION, environ, started=started))
    running = await started
    orchestrator_started: asyncio.Future[RunningService] = asyncio.get_running_loop().create_future()
    orchestrator = asyncio.create_task(serve(ORCHESTRATOR, environ, started=orchestrator_started))
    orchestrator_running = await orchestrator_started

    try:
        async with edge_and_envoy(env, tmp_path) as envoy:
            async for slice_ in _ready(envoy, environ, tokens, running):
                yield slice_
    finally:
        running.stop.set()
        orchestrator_running.stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(conversation, orchestrator)


async def _ready(
    envoy: Envoy, environ: dict[str, str], tokens: TokenWorld, running: RunningService
) -> AsyncIterator[Slice]:
    """Once Envoy routes to every part: the slice, with a seeded tenant and its user's token."""
    await _wait_healthy(envoy.ports.admin, "conversation")
    await _wait_healthy(envoy.ports.admin, "orchestrator")
    await _wait_healthy(envoy.ports.admin, "edge")
    await _wait_healthy(envoy.ports.admin, "token")
    assert envoy.process is not None
    tenant = await tokens.tenant()
    slice_ = Slice(
        front_url=envoy.url,
        mesh_address=envoy.mesh_address,
        conversation_port=running.port,
        envoy_log=envoy.process.log_path,
        database_url=environ["MACP_DATABASE_URL"],
        tokens=tokens,
        tenant=tenant,
        edge_token=await tokens.user_token(tenant, [EDGE_AUDIENCE]),
    )
    await wait_authenticating(slice_)
    yield slice_
