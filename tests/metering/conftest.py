"""Fixtures of the metering tests: the metering service served in-process over the real
infrastructure (its consumer on the test's own usage topic), with real tokens from the real
token service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import grpc
import pytest
from aiokafka import AIOKafkaProducer
from macp.metering.v1 import metering_service_pb2_grpc as pb_grpc
from macp.token.v1 import token_service_pb2 as token_pb

from services.metering.service import DEFINITION as METERING
from services.runtime.auth.settings import service_audience
from services.stack.config import free_port
from services.token import scopes
from tests.runtime.serving import running
from tests.tokens import Tenant, TokenWorld, bearer_channel, token_world

METERING_AUDIENCE = service_audience("metering")
TURN_SCOPES = "usage:read usage:write"

# Fast group membership, so a test's consumer owns the partitions within a second or two.
FAST_CONSUMER = {
    "MACP_METERING_SESSION_TIMEOUT_MS": "3000",
    "MACP_METERING_HEARTBEAT_INTERVAL_MS": "500",
    "MACP_METERING_POLL_TIMEOUT_MS": "100",
    "MACP_METERING_SWEEP_INTERVAL_SECONDS": "0.5",
}


@pytest.fixture
def metering_environ(service_environ: dict[str, str]) -> dict[str, str]:
    return {
        **service_environ,
        **FAST_CONSUMER,
        "MACP_METERING_PORT": "0",
        "MACP_METERING_METRICS_PORT": str(free_port()),
        "MACP_METERING_CONSUMER_GROUP": f"metering-{service_environ['MACP_KAFKA_USAGE_TOPIC']}",
    }


@pytest.fixture
async def tokens(service_environ: dict[str, str]) -> AsyncIterator[TokenWorld]:
    async with token_world(service_environ) as world:
        yield world


@dataclass
class Metering:
    """A running metering service: a stub calling as one tenant's user, an administrator's
    token, and the database and topic it works on."""

    stub: pb_grpc.MeteringServiceStub
    tenant: Tenant
    admin_token: str
    tokens: TokenWorld
    port: int
    db: asyncpg.Pool
    topic: str
    environ: dict[str, str]

    @property
    def tenant_id(self) -> str:
        return self.tenant.tenant_id

    @property
    def metrics_port(self) -> int:
        return int(self.environ["MACP_METERING_METRICS_PORT"])

    def as_admin(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.admin_token}"),)


async def admin_token(tokens: TokenWorld, audience: str) -> str:
    """A client-credentials token of an internal administrator client, for `audience`."""
    client = await tokens.harness.register(scope=scopes.ADMIN)
    response: token_pb.IssueTokenResponse = await tokens.harness.stub.IssueToken(
        token_pb.IssueTokenRequest(
            grant_type=token_pb.GRANT_TYPE_CLIENT_CREDENTIALS,
            client_id=client.client_id,
            client_secret=client.client_secret,
            scope=scopes.ADMIN,
            audience=[audience],
        )
    )
    return response.access_token


@pytest.fixture
async def metering(metering_environ: dict[str, str], tokens: TokenWorld) -> AsyncIterator[Metering]:
    tenant = await tokens.tenant(scope=TURN_SCOPES)
    token = await tokens.user_token(tenant, [METERING_AUDIENCE])
    admin = await admin_token(tokens, METERING_AUDIENCE)
    environ = tokens.service_environ(metering_environ)
    async with (
        running(METERING, environ) as service,
        bearer_channel(service.port, token) as opened,
        asyncpg.create_pool(environ["MACP_DATABASE_URL"], min_size=1, max_size=2) as db,
    ):
        yield Metering(
            pb_grpc.MeteringServiceStub(opened),
            tenant,
            admin,
            tokens,
            service.port,
            db,
            environ["MACP_KAFKA_USAGE_TOPIC"],
            environ,
        )


@pytest.fixture
async def producer(service_environ: dict[str, str]) -> AsyncIterator[AIOKafkaProducer]:
    """A plain producer to the test's broker, as the services publish (acks=all, not idempotent)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=service_environ["MACP_KAFKA_BOOTSTRAP"], acks="all", enable_idempotence=False
    )
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


def rpc_code(error: grpc.aio.AioRpcError) -> grpc.StatusCode:
    code: grpc.StatusCode = error.code()
    return code
