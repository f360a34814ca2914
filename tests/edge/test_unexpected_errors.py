"""A handler that crashes answers its own caller with a JSON 500 and disturbs nobody else: through
Envoy's front listener, whose pooled connections to the edge every caller shares, another tenant's
requests made during and right after the crashes all succeed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response

from services.edge import app as edge_app
from services.edge.routes import ApiRoute
from services.runtime.settings import Env
from services.stack.config import free_port
from services.stack.infra import Infrastructure
from tests.e2e.conftest import _wait_healthy
from tests.edge.fake_orchestrator import Served, serving_fakes
from tests.edge.orchestrator_world import edge_environ
from tests.edge_and_envoy import edge_and_envoy

pytestmark = pytest.mark.integration

CRASH_PATH = "/v1/crash-for-a-test"
ROUNDS = 100


async def _crash(request: Request) -> Response:
    raise RuntimeError("a handler failing as no handler should")


CRASHING = ApiRoute(
    method="POST",
    path=CRASH_PATH,
    operation_id="crashForATest",
    summary="Fails every time, to test what a failing handler does to other requests",
    handler=_crash,
    response=None,
)


@pytest.fixture
async def front(
    infrastructure: Infrastructure, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[str, Served]]:
    """Envoy's front URL before an edge that also serves CRASH_PATH, and the fakes behind the edge."""
    routes = edge_app.api_routes
    monkeypatch.setattr(edge_app, "api_routes", lambda: [*routes(), CRASHING])
    async with serving_fakes() as fakes:
        ports = {
            "MACP_EDGE_PORT": str(free_port()),
            "MACP_EDGE_METRICS_PORT": "0",
            "MACP_ENVOY_FRONT_PORT": str(free_port()),
            "MACP_ENVOY_MESH_PORT": str(free_port()),
            "MACP_ENVOY_ADMIN_PORT": str(free_port()),
        }
        env = Env(edge_environ(infrastructure, fakes.address, ports))
        async with edge_and_envoy(env, tmp_path) as envoy:
            await _wait_healthy(envoy.ports.admin, "edge")
            yield envoy.url, fakes


async def test_a_crashing_handler_is_a_json_500_and_another_tenants_requests_all_succeed(
    front: tuple[str, Served],
) -> None:
    url, fakes = front
    attacker = {"authorization": f"Bearer {fakes.signer.token(tenant_id='acme', sub='mallory')}"}
    victim = {"authorization": f"Bearer {fakes.signer.token(tenant_id='globex', sub='alice')}"}
    crashes: list[httpx.Response] = []
    others: list[int] = []
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:

        async def attack() -> None:
            for _ in range(ROUNDS):
                crashes.append(await client.post(CRASH_PATH, headers=attacker))
                # The other tenant's request right after the crash, as the attack's next caller was.
                others.append((await client.get("/v1/rate-limits", headers=victim)).status_code)

        async def meanwhile() -> None:
            for _ in range(ROUNDS):
                others.append((await client.get("/v1/rate-limits", headers=victim)).status_code)

        await asyncio.gather(attack(), meanwhile(), meanwhile())
    failed = [status for status in others if status != 200]
    assert not failed, f"{len(failed)} of the other tenant's {len(others)} requests failed: {set(failed)}"
    assert [response.status_code for response in crashes] == [500] * ROUNDS
    body = crashes[0].json()
    assert body["code"] == "INTERNAL"
    assert body["request_id"] == crashes[0].headers["x-request-id"]
