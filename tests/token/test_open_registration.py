"""Open registration (RFC 7591 without an initial access token) for MCP clients of the tenants that
opted in, and tokens for the MCP endpoint by its RFC 8707 resource: a third-party client with
client_credentials and at most tools:read tools:call, audited; anything more is refused naming the
field; another tenant, or a token service with it off, takes none."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest
import redis.asyncio as aioredis
from macp.common.v1 import principal_pb2
from macp.token.v1 import token_service_pb2 as pb
from macp.token.v1 import token_service_pb2_grpc as pb_grpc

from services.runtime.auth.settings import DEFAULT_ISSUER, mcp_resource
from services.runtime.settings import Env, SettingsError
from services.token.service import DEFINITION
from services.token.settings import TokenSettings
from tests.runtime.serving import channel, running
from tests.token.harness import TokenHarness, new_key_encryption_key, rpc_error, unverified

pytestmark = pytest.mark.integration

MCP_URL = mcp_resource(DEFAULT_ISSUER)


@pytest.fixture
async def open_service(
    token_environ: dict[str, str], token_db: asyncpg.Pool, token_redis: aioredis.Redis
) -> AsyncIterator[TokenHarness]:
    environ = {**token_environ, "MACP_TOKEN_OPEN_REGISTRATION_TENANTS": "acme"}
    async with running(DEFINITION, environ) as service, channel(service.port) as opened:
        harness = TokenHarness(pb_grpc.TokenServiceStub(opened), environ, token_db, token_redis)
        await harness.tenant("acme")
        await harness.tenant("globex")
        yield harness


def open_request(tenant_id: str = "", **metadata: object) -> pb.RegisterClientRequest:
    """What an MCP client sends: no initial access token, RFC 7591 metadata (the SDK's habits)."""
    fields: dict[str, object] = {
        "client_name": "an MCP client",
        "grant_types": ["client_credentials"],
        "response_types": ["code"],
        "application_type": "native",
        **metadata,
    }
    return pb.RegisterClientRequest(tenant_id=tenant_id, metadata=pb.ClientMetadata(**fields))  # type: ignore[arg-type]


async def test_an_mcp_client_registers_itself_and_gets_a_token_for_the_mcp_endpoint(
    open_service: TokenHarness,
) -> None:
    registered = await open_service.stub.RegisterClient(open_request())
    assert registered.client_secret, "a client_credentials client is confidential"
    assert registered.metadata.client_class == principal_pb2.CLIENT_CLASS_THIRD_PARTY
    assert list(registered.metadata.grant_types) == ["client_credentials"]
    assert list(registered.metadata.response_types) == []
    assert registered.metadata.scope == "tools:read tools:call"
    assert registered.metadata.application_type == "native"
    row = await open_service.db.fetchrow(
        "SELECT * FROM token_clients WHERE client_id = $1", registered.client_id
    )
    assert (row["tenant_id"], row["client_class"]) == ("acme", "third_party")
    audited = await open_service.db.fetchrow(
        "SELECT * FROM audit_events WHERE resource = $1", f"client/{registered.client_id}"
    )
    assert (audited["tenant_id"], audited["subject"], audited["action"]) == (
        "acme",
        "open-registration",
        "client.register",
    )

    issued = await open_service.stub.IssueToken(
        pb.IssueTokenRequest(
            grant_type=pb.GRANT_TYPE_CLIENT_CREDENTIALS,
            client_id=registered.client_id,
            client_secret=registered.client_secret,
            resource=[MCP_URL],
        )
    )
    _, claims = unverified(issued.access_token)
    assert claims["aud"] in (MCP_URL, [MCP_URL])
    assert (claims["tenant_id"], claims["sub"]) == ("acme", registered.client_id)
    assert issued.scope == "tools:read tools:call"

    # The MCP endpoint is its one audience beyond the edge: no service's, no outside URL.
    for target in ("urn:macp:service:tool-gateway", "https://tools.example/mcp"):
        refused = await rpc_error(
            open_service.stub.IssueToken(
                pb.IssueTokenRequest(
                    grant_type=pb.GRANT_TYPE_CLIENT_CREDENTIALS,
                    client_id=registered.client_id,
                    client_secret=registered.client_secret,
                    resource=[target],
                )
            )
        )
        assert refused.details.startswith("invalid_target"), refused.details


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (open_request(client_class=principal_pb2.CLIENT_CLASS_CONSUMER), "client_class"),
        (open_request(grant_types=["client_credentials", "password"]), "grant_types"),
        (open_request(grant_types=["authorization_code"]), "grant_types"),
        (open_request(scope="tools:read tools:admin"), "scope"),
        (open_request(scope="conversations:read"), "scope"),
        (open_request(redirect_uris=["http://127.0.0.1:33418/callback"]), "redirect_uris"),
        (open_request(tenant_id="globex"), "tenant_id"),
    ],
)
async def test_an_open_registration_gets_no_more_than_an_mcp_client_needs(
    open_service: TokenHarness, request_: pb.RegisterClientRequest, field: str
) -> None:
    error = await rpc_error(open_service.stub.RegisterClient(request_))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details.startswith(f"invalid_client_metadata: {field}"), error.details
    assert (
        await open_service.db.fetchval(
            "SELECT count(*) FROM token_clients WHERE client_class = 'third_party'"
        )
        == 0
    )


async def test_without_open_tenants_registration_needs_the_initial_access_token(
    token_service: TokenHarness,
) -> None:
    error = await rpc_error(token_service.stub.RegisterClient(open_request()))
    assert error.code == grpc.StatusCode.UNAUTHENTICATED
    # A wrong initial access token is refused even where open registration is on.
    assert error.details == "invalid_token: registration needs a valid initial access token"


async def test_a_wrong_initial_access_token_is_no_open_registration(open_service: TokenHarness) -> None:
    request = open_request()
    request.initial_access_token = "x" * 43
    error = await rpc_error(open_service.stub.RegisterClient(request))
    assert error.code == grpc.StatusCode.UNAUTHENTICATED


async def test_a_user_signs_in_for_the_mcp_endpoint(token_service: TokenHarness) -> None:
    """The MCP endpoint is public like the edge: a user's sign-in may name it."""
    await token_service.tenant("initech")
    await token_service.user("initech", "milton", "stapler stapler stapler")
    client = await token_service.register(
        client_class=principal_pb2.CLIENT_CLASS_CONSUMER,
        grant_types=("password",),
        scope="tools:read",
        tenant_id="initech",
    )
    issued = await token_service.stub.IssueToken(
        pb.IssueTokenRequest(
            grant_type=pb.GRANT_TYPE_PASSWORD,
            client_id=client.client_id,
            client_secret=client.client_secret,
            username="milton",
            password="stapler stapler stapler",
            resource=[MCP_URL],
        )
    )
    assert unverified(issued.access_token)[1]["aud"] in (MCP_URL, [MCP_URL])


def test_the_open_tenants_setting_names_a_malformed_one() -> None:
    environ = {"MACP_TOKEN_KEY_ENCRYPTION_KEY": new_key_encryption_key()}
    assert TokenSettings.from_env(Env(environ)).open_registration == ()
    assert TokenSettings.from_env(
        Env({**environ, "MACP_TOKEN_OPEN_REGISTRATION_TENANTS": "acme, globex"})
    ).open_registration == ("acme", "globex")
    assert (
        TokenSettings.from_env(
            Env({**environ, "MACP_TOKEN_OPEN_REGISTRATION_TENANTS": "none"})
        ).open_registration
        == ()
    )
    with pytest.raises(SettingsError, match="MACP_TOKEN_OPEN_REGISTRATION_TENANTS"):
        TokenSettings.from_env(Env({**environ, "MACP_TOKEN_OPEN_REGISTRATION_TENANTS": "acme,bad tenant"}))
