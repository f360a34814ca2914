"""The edge takes work only while it is ready (services/edge/readiness.py), with real parts: the real
token service, Envoy (front and mesh listeners) and the edge, and a stand-in orchestrator served by
the runtime's own `serve()`. Stopping the orchestrator or the token service makes the edge refuse at
once (503 NOT_READY with Retry-After, WebSocket close 4503, /healthz 503 naming what is missing), and
starting it again makes the edge serve again, by itself, within a couple of seconds."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from macp.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from services.edge.readiness import RETRY_AFTER_SECONDS
from services.edge.ws.close import CloseCode
from services.runtime.interceptors import AdmitAll
from services.runtime.registry import service
from services.runtime.server import RunningService, ServiceDefinition, servicer_only
from services.runtime.settings import Env
from services.stack.config import free_port
from services.token.service import DEFINITION as TOKEN
from tests.e2e.conftest import _wait_healthy
from tests.edge.fake_orchestrator import FakeOrchestrator
from tests.edge_and_envoy import edge_and_envoy
from tests.runtime.serving import running
from tests.tokens import token_environ

pytestmark = pytest.mark.integration

# Envoy notices a stopped service within about 1.5 s and the edge within two checks of that; the
# rest is room for a busy machine.
WITHIN_SECONDS = 8.0


def stand_in_orchestrator() -> ServiceDefinition:
    """The fake orchestrator under the orchestrator's name and port, needing nothing, admitting all."""
    spec = dataclasses.replace(service("orchestrator"), dependencies=(), needs=())
    start = servicer_only(pb_grpc.add_OrchestratorServiceServicer_to_server, FakeOrchestrator())
    return ServiceDefinition(spec=spec, start=start, authenticator=AdmitAll())


class Part:
    """A service this test stops and starts again on the same port."""

    def __init__(self, definition: ServiceDefinition, environ: dict[str, str]) -> None:
        self._definition = definition
        self._environ = environ
        self._stack: AsyncExitStack | None = None

    async def start(self) -> RunningService:
        self._stack = AsyncExitStack()
        return await self._stack.enter_async_context(running(self._definition, self._environ))

    async def stop(self) -> None:
        if self._stack is not None:
            stack, self._stack = self._stack, None
            await stack.aclose()


@dataclass(frozen=True)
class Front:
    url: str
    orchestrator: Part
    token: Part

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/v1/ws"


@pytest.fixture
async def front(service_environ: dict[str, str], tmp_path: Path) -> AsyncIterator[Front]:
    ports = {
        "MACP_ORCHESTRATOR_PORT": str(free_port()),
        "MACP_ORCHESTRATOR_METRICS_PORT": "0",
        "MACP_EDGE_PORT": str(free_port()),
        "MACP_EDGE_METRICS_PORT": "0",
        "MACP_ENVOY_FRONT_PORT": str(free_port()),
        "MACP_ENVOY_MESH_PORT": str(free_port()),
        "MACP_ENVOY_ADMIN_PORT": str(free_port()),
    }
    environ = {
        **token_environ(service_environ),
        **ports,
        "MACP_MESH_ADDRESS": f"127.0.0.1:{ports['MACP_ENVOY_MESH_PORT']}",
        # The conversation service does not run here; what the edge waits for is what is tested.
        "MACP_EDGE_NEEDS": "orchestrator,token",
        "MACP_EDGE_RPC_TIMEOUT_SECONDS": "5",
    }
    orchestrator = Part(stand_in_orchestrator(), environ)
    token = Part(TOKEN, environ)
    await token.start()
    await orchestrator.start()
    try:
        async with edge_and_envoy(Env(environ), tmp_path) as envoy:
            await _wait_healthy(envoy.ports.admin, "edge")
            yield Front(envoy.url, orchestrator, token)
    finally:
        await orchestrator.stop()
        await token.stop()


async def eventually(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + WITHIN_SECONDS
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, f"not within {WITHIN_SECONDS} s: {what}"
        await asyncio.sleep(0.1)


async def ws_close_code(front: Front) -> int | None:
    """The code a WebSocket connect without a token is closed with (4401 when the edge is ready)."""
    async with connect(front.ws_url, compression=None, open_timeout=5) as ws:
        try:
            async with asyncio.timeout(5):
                while True:
                    await ws.recv()
        except ConnectionClosed:
            pass
        return ws.close_code


async def refuses_until(front: Front, missing: str, restart: Callable[[], Awaitable[object]]) -> None:
    """While `missing` is down: every way in is refused, saying so; after `restart`, served again."""
    async with httpx.AsyncClient(base_url=front.url, timeout=10, trust_env=False) as http:

        async def unready() -> bool:
            return (await http.get("/healthz")).status_code == 503

        await eventually(unready, f"the edge to say it is not ready without {missing}")
        health = await http.get("/healthz")
        assert health.json()["status"] == "not_ready"
        assert missing in health.json()["not_ready"]
        assert health.headers["retry-after"] == str(RETRY_AFTER_SECONDS)
        # Not ready is not dead: liveness still answers, so nothing restarts a waiting edge.
        assert (await http.get("/livez")).status_code == 200

        # Any other request, public or not, is refused before authentication or any RPC.
        for path in ("/v1/agents", "/v1/openapi.json"):
            refused = await http.get(path)
            assert refused.status_code == 503, refused.text
            body = refused.json()
            assert body["code"] == "NOT_READY"
            assert missing in body["message"]
            assert body["request_id"] == refused.headers["x-request-id"]
            assert refused.headers["retry-after"] == str(RETRY_AFTER_SECONDS)
        assert await ws_close_code(front) == CloseCode.UNAVAILABLE

        await restart()

        async def ready() -> bool:
            return (await http.get("/healthz")).status_code == 200

        await eventually(ready, f"the edge to be ready again once {missing} is back")
        assert (await http.get("/v1/openapi.json")).status_code == 200
        assert (await http.get("/v1/agents")).status_code == 401  # past readiness: to authentication
        assert await ws_close_code(front) == CloseCode.UNAUTHENTICATED


async def test_the_edge_refuses_while_the_orchestrator_is_down_and_serves_once_it_is_back(
    front: Front,
) -> None:
    async with httpx.AsyncClient(base_url=front.url, timeout=10, trust_env=False) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok", "rate_limits": "redis"}
    await front.orchestrator.stop()
    await refuses_until(front, "orchestrator", front.orchestrator.start)


async def test_the_edge_refuses_while_the_token_service_is_down_and_serves_once_it_is_back(
    front: Front,
) -> None:
    await front.token.stop()
    await refuses_until(front, "token", front.token.start)
