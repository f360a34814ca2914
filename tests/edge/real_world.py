"""The "real" `OAuthWorld`: the real token service behind the edge, reached the way production reaches
it (client -> Envoy front listener -> edge -> Envoy mesh listener -> token service -> Postgres/Redis).

Started once per module over the session's infrastructure, in a database of its own; what the world
needs (tenant, user, clients) is seeded through the service's own RPCs, the bootstrap `macp up` follows.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import redis.asyncio as aioredis
from macp.common.v1 import principal_pb2
from macp.token.v1 import token_service_pb2_grpc as pb_grpc

from services.runtime.registry import EDGE
from services.runtime.settings import Env
from services.stack.config import EnvoyPorts, free_port
from services.stack.envoy import Envoy
from services.stack.envoy_config import render_native
from services.stack.infra import Infrastructure
from services.token.service import DEFINITION as TOKEN
from tests.e2e.conftest import _wait_healthy
from tests.edge.conftest import OAuthWorld, serving_edge
from tests.runtime.serving import channel, running
from tests.token.harness import EXCHANGE_GRANT, TokenHarness, new_key_encryption_key

TENANT = "edge-oauth"
USERNAME = "ada"
PASSWORD = "correct horse battery staple"
SCOPE = "conversations:read"
CLIENT_SCOPES = "conversations:read conversations:write"


@asynccontextmanager
async def fresh_database(admin_url: str) -> AsyncIterator[str]:
    """A new, empty database on the server of `admin_url`, dropped afterwards; yields its URL."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield urlsplit(admin_url)._replace(path=f"/{name}").geturl()
    finally:
        admin = await asyncpg.connect(admin_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def _seed(harness: TokenHarness, edge_url: str) -> OAuthWorld:
    """A tenant, its user, the world's consumer client and an actor client, through the RPCs."""
    await harness.tenant(TENANT)
    await harness.user(TENANT, USERNAME, PASSWORD)
    client = await harness.register(
        client_class=principal_pb2.CLIENT_CLASS_CONSUMER,
        grant_types=("client_credentials", "password", "refresh_token", EXCHANGE_GRANT),
        scope=CLIENT_SCOPES,
        tenant_id=TENANT,
        name="edge oauth app",
    )
    actor = await harness.register(
        client_class=principal_pb2.CLIENT_CLASS_PARTNER,
        scope=SCOPE,
        tenant_id=TENANT,
        name="edge oauth actor",
    )
    return OAuthWorld(
        edge_url=edge_url,
        client_id=client.client_id,
        client_secret=client.client_secret,
        actor_client_id=actor.client_id,
        actor_client_secret=actor.client_secret,
        username=USERNAME,
        password=PASSWORD,
        tenant_id=TENANT,
        scope=SCOPE,
        initial_access_token=harness.initial_access_token,
    )


@asynccontextmanager
async def real_world(infrastructure: Infrastructure, scratch: Path) -> AsyncIterator[OAuthWorld]:
    """The real token service and the edge behind Envoy, seeded; yields the world at the front URL."""
    async with fresh_database(infrastructure.env["MACP_DATABASE_URL"]) as database_url:
        unique = uuid.uuid4().hex[:8]
        ports = EnvoyPorts(front=free_port(), mesh=free_port(), admin=free_port())
        front_url = f"http://127.0.0.1:{ports.front}"
        environ = {
            **infrastructure.env,
            "MACP_DATABASE_URL": database_url,
            "MACP_REDIS_KEY_PREFIX": f"test:{unique}:",
            "MACP_SHUTDOWN_GRACE_SECONDS": "2",
            "MACP_LOG_LEVEL": "warning",
            "MACP_TOKEN_PORT": str(free_port()),
            "MACP_TOKEN_METRICS_PORT": "0",
            "MACP_TOKEN_KEY_ENCRYPTION_KEY": new_key_encryption_key(),
            "MACP_TOKEN_INITIAL_ACCESS_TOKEN": secrets.token_urlsafe(32),
            # The issuer both the edge (discovery) and the token service (`iss`) name: the front URL.
            "MACP_TOKEN_ISSUER": front_url,
            "MACP_ENVOY_FRONT_PORT": str(ports.front),
            "MACP_ENVOY_MESH_PORT": str(ports.mesh),
            "MACP_ENVOY_ADMIN_PORT": str(ports.admin),
            "MACP_MESH_ADDRESS": f"127.0.0.1:{ports.mesh}",
            "MACP_EDGE_METRICS_PORT": "0",
            "MACP_EDGE_RPC_TIMEOUT_SECONDS": "5",
            # Only the token service runs here: the edge is ready once it answers.
            "MACP_EDGE_NEEDS": "token",
            # The module's tests all come from 127.0.0.1, many failing on purpose; the per-source
            # limits are tested on their own (test_rate_limits.py).
            "MACP_RATE_LIMIT_SOURCE": "100000/min",
            "MACP_RATE_LIMIT_SOURCE_FAILURES": "100000/min",
            "MACP_RATE_LIMIT_SOURCE_IN_FLIGHT": "1000",
        }
        async with (
            running(TOKEN, environ) as token,
            serving_edge(environ) as edge_url,
            channel(token.port) as opened,
            asyncpg.create_pool(database_url, min_size=1, max_size=1) as db,
        ):
            redis: aioredis.Redis = aioredis.from_url(environ["MACP_REDIS_URL"])
            harness = TokenHarness(pb_grpc.TokenServiceStub(opened), environ, db, redis)
            envoy_env = Env({**environ, "MACP_EDGE_PORT": str(urlsplit(edge_url).port)})
            envoy = Envoy(scratch, render_native(scratch / "envoy.yaml", envoy_env), ports)
            await asyncio.to_thread(envoy.start)
            try:
                world = await _seed(harness, front_url)
                await _wait_healthy(ports.admin, TOKEN.spec.name)
                await _wait_healthy(ports.admin, EDGE.name)
                yield world
            finally:
                await asyncio.to_thread(envoy.stop)
                await redis.aclose()
