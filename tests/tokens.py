"""Real tokens for tests of services that authenticate: the real token service served in-process,
seeded through its own RPCs (the bootstrap `macp up` follows), and channels that carry a token.

`token_world(environ)` runs the token service on a free port and yields a `TokenWorld`; a service
started with `world.service_environ(...)` fetches its JWKS from that token service (its
`MACP_MESH_ADDRESS` points straight at it, no Envoy needed) and shares its issuer and Redis prefix.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
import redis.asyncio as aioredis
from macp.common.v1 import principal_pb2
from macp.token.v1 import token_service_pb2 as pb
from macp.token.v1 import token_service_pb2_grpc as pb_grpc

from services.runtime.auth.settings import DEFAULT_ISSUER, EDGE_AUDIENCE, SERVICE_AUDIENCE_PREFIX, USER_SCOPES
from services.stack.config import free_port
from services.token import scopes
from services.token.service import DEFINITION as TOKEN
from tests.runtime.serving import channel, running
from tests.token.harness import (
    ACCESS_TOKEN_TYPE,
    EXCHANGE_GRANT,
    TOKEN_AUDIENCE,
    RegisteredClient,
    TokenHarness,
    new_key_encryption_key,
    unverified,
)

PASSWORD = "correct horse battery staple"
ALL_SCOPES = " ".join(USER_SCOPES)


def token_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` plus what the token service needs: its port, keys and initial access token."""
    return {
        "MACP_TOKEN_ISSUER": DEFAULT_ISSUER,
        **environ,
        "MACP_TOKEN_PORT": str(free_port()),
        "MACP_TOKEN_METRICS_PORT": str(free_port()),  # a known port: tests scrape it
        "MACP_TOKEN_KEY_ENCRYPTION_KEY": new_key_encryption_key(),
        "MACP_TOKEN_INITIAL_ACCESS_TOKEN": secrets.token_urlsafe(32),
    }


@dataclass(frozen=True)
class Tenant:
    """A seeded tenant: its user and a client that may get user tokens for it.

    service_scopes: the service-held scopes (`scopes.SERVICE_HELD`) its users' tokens for a service
    carry. No user-facing client may hold them: they come only from an internal client's exchange,
    as the orchestrator adds them (see `TokenWorld.user_token`).
    """

    tenant_id: str
    username: str
    client: RegisteredClient
    service_scopes: tuple[str, ...] = ()


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def _register(
    stub: pb_grpc.TokenServiceStub,
    initial_access_token: str,
    metadata: pb.ClientMetadata,
    tenant_id: str = "",
) -> RegisteredClient:
    response = await stub.RegisterClient(
        pb.RegisterClientRequest(
            initial_access_token=initial_access_token, tenant_id=tenant_id, metadata=metadata
        )
    )
    return RegisteredClient(response.client_id, response.client_secret)


async def _as_platform_admin(
    stub: pb_grpc.TokenServiceStub, initial_access_token: str
) -> tuple[tuple[str, str], ...]:
    """Metadata of a new internal client holding `macp:admin` (registered with the initial access
    token), which may create tenants and users."""
    admin_metadata = pb.ClientMetadata(
        client_name="test admin",
        client_class=principal_pb2.CLIENT_CLASS_INTERNAL,
        grant_types=["client_credentials"],
        scope=scopes.ADMIN,
    )
    admin = await _register(stub, initial_access_token, admin_metadata)
    admin_token: pb.IssueTokenResponse = await stub.IssueToken(
        pb.IssueTokenRequest(
            grant_type=pb.GRANT_TYPE_CLIENT_CREDENTIALS,
            client_id=admin.client_id,
            client_secret=admin.client_secret,
            scope=scopes.ADMIN,
            audience=[TOKEN_AUDIENCE],
        )
    )
    return bearer(admin_token.access_token)


async def create_user(
    stub: pb_grpc.TokenServiceStub,
    as_admin: tuple[tuple[str, str], ...],
    tenant_id: str,
    *,
    admin: bool = False,
) -> str:
    """A new user of `tenant_id` (its tenant's admin when `admin`) whose password is PASSWORD,
    created with `as_admin` (`_as_platform_admin`)."""
    username = f"user-{uuid.uuid4().hex[:8]}"
    await stub.CreateUser(
        pb.CreateUserRequest(tenant_id=tenant_id, username=username, password=PASSWORD, admin=admin),
        metadata=as_admin,
    )
    return username


async def seed_tenant(
    stub: pb_grpc.TokenServiceStub,
    initial_access_token: str,
    tenant_id: str | None = None,
    *,
    scope: str = ALL_SCOPES,
    tier: principal_pb2.Tier.ValueType = principal_pb2.TIER_FREE,
) -> Tenant:
    """Through the token service's own RPCs, the bootstrap `macp up` follows: an internal admin client
    (registered with the initial access token) creates a tenant of `tier` (free, so that the free
    plan's limits apply unless a test asks otherwise) and its user; then a consumer client of that
    tenant allowed `scope`, which gets user tokens with the password grant."""
    tenant_id = tenant_id or f"t-{uuid.uuid4().hex[:10]}"
    as_admin = await _as_platform_admin(stub, initial_access_token)
    await stub.CreateTenant(pb.CreateTenantRequest(tenant_id=tenant_id, tier=tier), metadata=as_admin)
    username = await create_user(stub, as_admin, tenant_id)
    wanted = scopes.parse(scope)
    client_metadata = pb.ClientMetadata(
        client_name=f"{tenant_id} app",
        client_class=principal_pb2.CLIENT_CLASS_CONSUMER,
        grant_types=["password", EXCHANGE_GRANT],
        scope=" ".join(name for name in wanted if name not in scopes.SERVICE_HELD),
    )
    client = await _register(stub, initial_access_token, client_metadata, tenant_id)
    return Tenant(tenant_id, username, client, tuple(name for name in wanted if name in scopes.SERVICE_HELD))


@dataclass
class TokenWorld:
    harness: TokenHarness
    environ: dict[str, str]
    port: int
    # The internal client that exchanges users' tokens for services, as the edge's own client does.
    _exchanger: RegisteredClient | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def service_environ(self, environ: Mapping[str, str]) -> dict[str, str]:
        """The environment of another service verifying this world's tokens (JWKS straight from it)."""
        shared = ("MACP_TOKEN_ISSUER", "MACP_REDIS_KEY_PREFIX", "MACP_REDIS_URL")
        return {**environ, **{name: self.environ[name] for name in shared}, "MACP_MESH_ADDRESS": self.address}

    async def tenant(
        self,
        tenant_id: str | None = None,
        *,
        scope: str = ALL_SCOPES,
        tier: principal_pb2.Tier.ValueType = principal_pb2.TIER_FREE,
    ) -> Tenant:
        """A new tenant of `tier` with a user and a consumer client allowed `scope`."""
        return await seed_tenant(
            self.harness.stub, self.harness.initial_access_token, tenant_id, scope=scope, tier=tier
        )

    async def user(self, tenant: Tenant, *, admin: bool = False) -> str:
        """The username of a new user of `tenant` (its admin when `admin`); its password is PASSWORD."""
        as_admin = await _as_platform_admin(self.harness.stub, self.harness.initial_access_token)
        return await create_user(self.harness.stub, as_admin, tenant.tenant_id, admin=admin)

    async def user_token(self, tenant: Tenant, audience: Sequence[str], scope: str = "") -> str:
        """An access token of `tenant`'s user for `audience`: its password-grant token for the edge,
        and for a service that token exchanged by an internal client, as the edge does (a user's
        sign-in never gets a service audience). `scope` narrows it; by default it carries all the
        user may have, the tenant's service-held scopes included."""
        if not any(target.startswith(SERVICE_AUDIENCE_PREFIX) for target in audience):
            return (await self._signed_in(tenant, audience, scope)).access_token
        asked = scopes.parse(scope)
        signed_in = await self._signed_in(
            tenant, [EDGE_AUDIENCE], " ".join(name for name in asked if name not in scopes.SERVICE_HELD)
        )
        wanted = scope or " ".join((*signed_in.scope.split(), *tenant.service_scopes))
        return await self.for_service(signed_in.access_token, audience, wanted)

    async def _signed_in(self, tenant: Tenant, audience: Sequence[str], scope: str) -> pb.IssueTokenResponse:
        response: pb.IssueTokenResponse = await self.harness.stub.IssueToken(
            pb.IssueTokenRequest(
                grant_type=pb.GRANT_TYPE_PASSWORD,
                client_id=tenant.client.client_id,
                client_secret=tenant.client.client_secret,
                username=tenant.username,
                password=PASSWORD,
                scope=scope,
                audience=list(audience),
            )
        )
        return response

    async def exchanger(self) -> RegisteredClient:
        """The internal client exchanging users' tokens for services (registered on first use)."""
        if self._exchanger is None:
            self._exchanger = await _register(
                self.harness.stub,
                self.harness.initial_access_token,
                pb.ClientMetadata(
                    client_name="test exchanger",
                    client_class=principal_pb2.CLIENT_CLASS_INTERNAL,
                    grant_types=[EXCHANGE_GRANT],
                    scope=" ".join((*USER_SCOPES, *sorted(scopes.SERVICE_HELD))),
                ),
            )
        return self._exchanger

    async def for_service(self, subject_token: str, audience: Sequence[str], scope: str = "") -> str:
        """`subject_token` exchanged (RFC 8693) by the internal exchanger for `audience`."""
        exchanger = await self.exchanger()
        response: pb.ExchangeTokenResponse = await self.harness.stub.ExchangeToken(
            pb.ExchangeTokenRequest(
                client_id=exchanger.client_id,
                client_secret=exchanger.client_secret,
                subject_token=subject_token,
                subject_token_type=ACCESS_TOKEN_TYPE,
                audience=list(audience),
                scope=scope,
            )
        )
        return response.access_token

    async def revoke(self, tenant: Tenant, token: str) -> None:
        """Revoke `token` (RFC 7009) as the client it was issued to: the tenant's, or the exchanger."""
        issued_to = unverified(token)[1]["client_id"]
        client = tenant.client if issued_to == tenant.client.client_id else await self.exchanger()
        await self.harness.stub.Revoke(
            pb.RevokeRequest(token=token, client_id=client.client_id, client_secret=client.client_secret)
        )


@asynccontextmanager
async def token_world(environ: Mapping[str, str]) -> AsyncIterator[TokenWorld]:
    """The token service over `environ`'s infrastructure (its database and Redis prefix), until the
    block ends."""
    full = token_environ(environ)
    async with (
        running(TOKEN, full) as service,
        channel(service.port) as opened,
        asyncpg.create_pool(full["MACP_DATABASE_URL"], min_size=1, max_size=1) as db,
    ):
        redis: aioredis.Redis = aioredis.from_url(full["MACP_REDIS_URL"])
        try:
            harness = TokenHarness(pb_grpc.TokenServiceStub(opened), full, db, redis)
            yield TokenWorld(harness, full, service.port)
        finally:
            await redis.aclose()


class _Bearer(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, token: str) -> None:
        self._token = token

    async def intercept_unary_unary(
        self,
        continuation: Callable[..., Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        metadata = grpc.aio.Metadata(*(client_call_details.metadata or ()))
        if metadata.get("authorization") is None:
            metadata.add("authorization", f"Bearer {self._token}")
        details = grpc.aio.ClientCallDetails(
            client_call_details.method,
            client_call_details.timeout,
            metadata,
            client_call_details.credentials,
            client_call_details.wait_for_ready,
        )
        return await continuation(details, request)


@asynccontextmanager
async def bearer_channel(port: int, token: str) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to 127.0.0.1:`port` whose unary calls carry `token` unless they name their own."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", options=options, interceptors=[_Bearer(token)]
    ) as opened:
        yield opened


async def seed_tenant_over(address: str, initial_access_token: str) -> Tenant:
    """`seed_tenant` through a channel to `address` (Envoy's mesh listener of a running stack)."""
    async with grpc.aio.insecure_channel(address) as opened:
        return await seed_tenant(pb_grpc.TokenServiceStub(opened), initial_access_token)
