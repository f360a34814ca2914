"""RegisterClient (RFC 7591) behind the initial access token; the admin RPCs behind `macp:admin`;
IssueAgentToken behind `macp:agent-token`."""

from __future__ import annotations

import hashlib
import time
import uuid

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from macp.common.v1 import principal_pb2
from macp.token.v1 import token_service_pb2 as pb
from macp.token.v1 import token_service_pb2_grpc as pb_grpc

from services.token.service import DEFINITION
from tests.runtime.serving import channel, running
from tests.token.harness import TOKEN_AUDIENCE, TokenHarness, rpc_error

pytestmark = pytest.mark.integration


def registration(
    initial_access_token: str, tenant_id: str = "", **metadata: object
) -> pb.RegisterClientRequest:
    return pb.RegisterClientRequest(
        initial_access_token=initial_access_token,
        tenant_id=tenant_id,
        metadata=pb.ClientMetadata(client_name="an app", **metadata),  # type: ignore[arg-type]
    )


async def test_registration_needs_the_initial_access_token(token_service: TokenHarness) -> None:
    for presented in ("", "x" * 43):
        error = await rpc_error(token_service.stub.RegisterClient(registration(presented)))
        assert error.code == grpc.StatusCode.UNAUTHENTICATED
        assert error.details == "invalid_token: registration needs a valid initial access token"
    # None but the console's, which the token service registers itself (services/token/console.py).
    registered = "SELECT count(*) FROM token_clients WHERE client_id <> 'macp-console'"
    assert await token_service.db.fetchval(registered) == 0


async def test_registration_with_the_initial_access_token(token_service: TokenHarness) -> None:
    await token_service.tenant("acme")
    before = int(time.time())
    response = await token_service.stub.RegisterClient(
        registration(
            token_service.initial_access_token,
            tenant_id="acme",
            grant_types=["client_credentials"],
            scope="conversations:read conversations:read",
            contacts=["ops@acme.example"],
        )
    )
    assert response.client_id
    assert len(response.client_secret) >= 43
    assert before <= response.client_id_issued_at <= int(time.time())
    assert response.client_secret_expires_at == 0
    assert response.metadata.client_class == principal_pb2.CLIENT_CLASS_THIRD_PARTY  # the default
    assert response.metadata.token_endpoint_auth_method == "client_secret_basic"
    assert response.metadata.scope == "conversations:read"
    assert list(response.metadata.contacts) == ["ops@acme.example"]

    row = await token_service.db.fetchrow(
        "SELECT * FROM token_clients WHERE client_id = $1", response.client_id
    )
    assert row["client_class"] == "third_party"
    assert row["tenant_id"] == "acme"
    assert bytes(row["secret_hash"]) == hashlib.sha256(response.client_secret.encode()).digest()
    assert response.client_secret not in row["metadata"]

    # The credentials work, as the class and tenant registered.
    token = await token_service.stub.IssueToken(
        pb.IssueTokenRequest(
            grant_type=pb.GRANT_TYPE_CLIENT_CREDENTIALS,
            client_id=response.client_id,
            client_secret=response.client_secret,
        )
    )
    claims = await token_service.verified(token.access_token)
    assert (claims["client_class"], claims["tenant_id"], claims["tier"]) == ("third_party", "acme", "pro")


@pytest.mark.parametrize(
    ("tenant_id", "metadata", "problem"),
    [
        (
            "acme",
            {"client_class": principal_pb2.CLIENT_CLASS_THIRD_PARTY, "scope": "macp:admin"},
            "only internal clients may hold macp:admin",
        ),
        (
            "",
            {"client_class": principal_pb2.CLIENT_CLASS_PARTNER},
            "only internal clients belong to the system tenant; set tenant_id for a partner client",
        ),
        (
            "acme",
            {"client_class": principal_pb2.CLIENT_CLASS_PARTNER, "grant_types": ["password"]},
            "a partner client may not use the password grant",
        ),
        (
            "",
            {
                "token_endpoint_auth_method": "none",
                "grant_types": ["client_credentials"],
                "client_class": principal_pb2.CLIENT_CLASS_INTERNAL,
            },
            "a public client (auth method none) may not use client_credentials",
        ),
        ("nowhere", {"client_class": principal_pb2.CLIENT_CLASS_CONSUMER}, "tenant nowhere does not exist"),
        ("acme", {"software_statement": "eyJ.x.y"}, "software statements are not accepted"),
    ],
)
async def test_registration_policy_by_client_class(
    token_service: TokenHarness, tenant_id: str, metadata: dict[str, object], problem: str
) -> None:
    await token_service.tenant("acme")
    error = await rpc_error(
        token_service.stub.RegisterClient(
            registration(token_service.initial_access_token, tenant_id, **metadata)
        )
    )
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details == f"invalid_client_metadata: {problem}"


async def test_registration_is_closed_without_the_setting(token_environ: dict[str, str]) -> None:
    environ = {k: v for k, v in token_environ.items() if k != "MACP_TOKEN_INITIAL_ACCESS_TOKEN"}
    async with running(DEFINITION, environ) as service, channel(service.port) as opened:
        error = await rpc_error(pb_grpc.TokenServiceStub(opened).RegisterClient(registration("anything")))
    assert error.code == grpc.StatusCode.UNAUTHENTICATED
    assert "registration is closed" in error.details


async def test_admin_rpcs_need_an_admin_token_for_the_token_service(token_service: TokenHarness) -> None:
    request = pb.CreateTenantRequest(tenant_id="acme", tier=principal_pb2.TIER_FREE)
    error = await rpc_error(token_service.stub.CreateTenant(request))
    assert error.code == grpc.StatusCode.UNAUTHENTICATED

    admin = await token_service.register(scope="macp:admin")
    for_the_edge = await token_service.client_token(admin, "macp:admin")
    error = await rpc_error(
        token_service.stub.CreateTenant(
            request, metadata=(("authorization", f"Bearer {for_the_edge.access_token}"),)
        )
    )
    assert error.code == grpc.StatusCode.UNAUTHENTICATED
    assert error.details == f"invalid_token: the bearer token is not valid for {TOKEN_AUDIENCE}"
    assert await token_service.db.fetchval("SELECT count(*) FROM token_tenants WHERE tenant_id = 'acme'") == 0


async def test_create_tenant_and_user(token_service: TokenHarness) -> None:
    admin = await token_service.admin_metadata()
    created = await token_service.stub.CreateTenant(
        pb.CreateTenantRequest(tenant_id="acme", tier=principal_pb2.TIER_ENTERPRISE, display_name="Acme"),
        metadata=admin,
    )
    assert (created.tenant.tenant_id, created.tenant.tier, created.tenant.display_name) == (
        "acme",
        principal_pb2.TIER_ENTERPRISE,
        "Acme",
    )
    error = await rpc_error(
        token_service.stub.CreateTenant(
            pb.CreateTenantRequest(tenant_id="acme", tier=principal_pb2.TIER_FREE), metadata=admin
        )
    )
    assert error.code == grpc.StatusCode.ALREADY_EXISTS

    user = await token_service.stub.CreateUser(
        pb.CreateUserRequest(tenant_id="acme", username="ada", password="correct horse battery"),
        metadata=admin,
    )
    assert uuid.UUID(user.user.user_id)
    assert user.user.tenant_id == "acme"
    duplicate = pb.CreateUserRequest(tenant_id="acme", username="ada", password="another password")
    assert (await rpc_error(token_service.stub.CreateUser(duplicate, metadata=admin))).code == (
        grpc.StatusCode.ALREADY_EXISTS
    )
    orphan = pb.CreateUserRequest(tenant_id="nowhere", username="bob", password="another password")
    assert (
        await rpc_error(token_service.stub.CreateUser(orphan, metadata=admin))
    ).code == grpc.StatusCode.NOT_FOUND
    short = pb.CreateUserRequest(tenant_id="acme", username="cy", password="short")
    assert (await rpc_error(token_service.stub.CreateUser(short, metadata=admin))).code == (
        grpc.StatusCode.INVALID_ARGUMENT
    )


async def test_agent_tokens(token_service: TokenHarness) -> None:
    await token_service.tenant("acme", principal_pb2.TIER_FREE)
    minter = await token_service.register(scope="conversations:read macp:agent-token")
    bearer = await token_service.client_token(minter, "macp:agent-token", [TOKEN_AUDIENCE])
    metadata = (("authorization", f"Bearer {bearer.access_token}"),)
    agent_id = str(uuid.uuid4())
    request = pb.IssueAgentTokenRequest(
        agent_id=agent_id,
        owner_id="user-1",
        tenant_id="acme",
        capabilities=["finance", "search"],
        ttl=Duration(seconds=600),
        audience=["urn:macp:service:agent-proxy"],
    )
    issued = await token_service.stub.IssueAgentToken(request, metadata=metadata)

    claims = await token_service.verified(issued.access_token)
    assert claims["sub"] == claims["agent_id"] == agent_id
    assert claims["owner_id"] == "user-1"
    assert claims["capabilities"] == ["finance", "search"]
    assert (claims["tenant_id"], claims["tier"]) == ("acme", "free")
    assert claims["aud"] == "urn:macp:service:agent-proxy"
    assert claims["scope"] == "conversations:read"  # the minter's scopes, never its privileged ones
    assert claims["exp"] - claims["iat"] == 600 == issued.expires_in
    assert issued.expire_time.seconds == claims["exp"]
    assert issued.token_id == claims["jti"]

    request.scope = "macp:agent-token"
    error = await rpc_error(token_service.stub.IssueAgentToken(request, metadata=metadata))
    assert error.details.startswith("invalid_scope:")

    without = await token_service.client_token(minter, "conversations:read", [TOKEN_AUDIENCE])
    error = await rpc_error(
        token_service.stub.IssueAgentToken(
            request, metadata=(("authorization", f"Bearer {without.access_token}"),)
        )
    )
    assert error.code == grpc.StatusCode.PERMISSION_DENIED
