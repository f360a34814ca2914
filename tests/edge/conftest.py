"""Fixtures of the edge tests: the real edge app served by uvicorn on a free port, its mesh address
pointing straight at a token service.

`fake_token` + `edge_url` serve the in-memory stand-in of our own token service (no infrastructure).
`oauth_world` is what the OAuth client-library tests take: an edge plus credentials it knows. Its
"fake" variant is built here; its "real" variant (integration) is the real token service behind
Envoy and the edge, built in `tests/edge/real_world.py`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import openai
import pytest
from starlette.types import ASGIApp

from services.edge.app import build_app
from services.edge.settings import EdgeSettings
from services.runtime.metrics import HttpMetrics
from services.runtime.settings import Env
from services.stack.infra import Infrastructure
from tests.asgi import serving
from tests.edge.fake_token_service import (
    FAKE_ENVIRON,
    INITIAL_ACCESS_TOKEN,
    FakeTokenService,
    fake_definition,
)
from tests.edge.orchestrator_world import EdgeWorld
from tests.runtime.serving import running

SCOPES = ("conversations:read", "conversations:write")


@dataclass(frozen=True)
class FakeToken:
    service: FakeTokenService
    mesh_address: str


@dataclass(frozen=True)
class OAuthWorld:
    """An edge in front of a token service, and credentials that service accepts.

    client: a confidential client allowed client_credentials, password, refresh_token and token
        exchange, that may be granted `scope`.
    actor_client: a second confidential client whose client_credentials token acts in an exchange.
    username / password: a local user the password grant signs in.
    tenant_id: the tenant of the user and both clients, which a registration names (MACP's
        `tenant_id` member: only internal clients may register without one).
    initial_access_token: authorizes a dynamic client registration.
    """

    edge_url: str
    client_id: str
    client_secret: str
    actor_client_id: str
    actor_client_secret: str
    username: str
    password: str
    tenant_id: str
    scope: str
    initial_access_token: str


@asynccontextmanager
async def serving_edge(environ: Mapping[str, str]) -> AsyncIterator[str]:
    """The edge app on a port the OS picks, its issuer that very URL; yields the URL."""

    def build(url: str) -> ASGIApp:
        settings = EdgeSettings.from_env(Env({"MACP_TOKEN_ISSUER": url, **environ}))
        return build_app(settings, HttpMetrics("edge"))

    async with serving(build) as url:
        yield url


@pytest.fixture(scope="module")
async def _fake_token_server() -> AsyncIterator[FakeToken]:
    fake = FakeTokenService()  # type: ignore[abstract]  # the admin RPCs stay unbuilt (UNIMPLEMENTED)
    async with running(fake_definition(fake), FAKE_ENVIRON) as service:
        yield FakeToken(fake, f"127.0.0.1:{service.port}")


@pytest.fixture(scope="module")
async def _edge_server(_fake_token_server: FakeToken) -> AsyncIterator[str]:
    environ = {
        "MACP_MESH_ADDRESS": _fake_token_server.mesh_address,
        # Revocations are only read for routes that need a token, and the OAuth endpoints tested
        # with the fake are public; the rate limits, finding no Redis here, count locally.
        "MACP_REDIS_URL": "redis://127.0.0.1:1/0",
        "MACP_EDGE_RPC_TIMEOUT_SECONDS": "5",
        "MACP_EDGE_MAX_BODY_BYTES": "4096",
        # Every test of a module asks from 127.0.0.1, many of them failing on purpose: the
        # per-source limits are tested on their own (test_rate_limits.py), not in passing here.
        "MACP_RATE_LIMIT_SOURCE": "100000/min",
        "MACP_RATE_LIMIT_SOURCE_FAILURES": "100000/min",
        "MACP_RATE_LIMIT_SOURCE_IN_FLIGHT": "1000",
        "MACP_LOG_LEVEL": "warning",
    }
    async with serving_edge(environ) as url:
        yield url


@pytest.fixture
def fake_token(_fake_token_server: FakeToken) -> FakeToken:
    """The fake token service, emptied and seeded afresh for this test (served once per module)."""
    fake = _fake_token_server.service
    fake.reset()
    fake.add_client("macp-cli", "cli-secret", SCOPES)
    fake.add_client("agent-runner", "runner-secret", ("conversations:read",))
    fake.add_client("public-app", "", SCOPES)
    fake.users["ada"] = "correct horse battery staple"
    return _fake_token_server


@pytest.fixture
def edge_url(fake_token: FakeToken, _edge_server: str) -> str:
    """The edge in front of `fake_token`, with that URL as its token issuer."""
    return _edge_server


@pytest.fixture(scope="module")
async def _real_world(
    infrastructure: Infrastructure, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[OAuthWorld]:
    """The real token service behind Envoy and the edge, seeded (served once per module)."""
    from tests.edge.real_world import real_world  # it builds on this module's helpers

    async with real_world(infrastructure, tmp_path_factory.mktemp("real-oauth")) as world:
        yield world


@pytest.fixture(params=["fake", pytest.param("real", marks=pytest.mark.integration)])
def oauth_world(request: pytest.FixtureRequest) -> OAuthWorld:
    """The world the client-library tests run in; each param is one token service behind the edge.

    Synchronous on purpose: it picks the async fixture of its variant with `getfixturevalue`.
    """
    if request.param == "real":
        real: OAuthWorld = request.getfixturevalue("_real_world")
        return real
    assert request.param == "fake"
    edge: str = request.getfixturevalue("edge_url")
    return OAuthWorld(
        edge_url=edge,
        client_id="macp-cli",
        client_secret="cli-secret",
        actor_client_id="agent-runner",
        actor_client_secret="runner-secret",
        username="ada",
        password="correct horse battery staple",
        tenant_id="acme",
        scope="conversations:read",
        initial_access_token=INITIAL_ACCESS_TOKEN,
    )


@pytest.fixture(scope="module")
async def _http_client(_edge_server: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=_edge_server, timeout=10) as client:
        yield client


@pytest.fixture
def http(edge_url: str, _http_client: httpx.AsyncClient) -> httpx.AsyncClient:
    """An HTTP client of the edge (and a fresh fake token service behind it)."""
    return _http_client


def expect_oauth_error(response: httpx.Response, status: int, error: str, fragment: str = "") -> None:
    """`response` is an RFC 6749 section 5.2 error: its status, `error`, a description, never cached."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error, body
    assert set(body) == {"error", "error_description"}
    assert fragment in body["error_description"]
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"


@pytest.fixture
async def sdk(world: EdgeWorld) -> AsyncIterator[openai.AsyncOpenAI]:
    """The official OpenAI SDK on the edge's `/v1`, as the module's `world` fixture's user."""
    client = openai.AsyncOpenAI(base_url=f"{world.url}/v1", api_key=world.token(), max_retries=0)
    try:
        yield client
    finally:
        await client.close()
