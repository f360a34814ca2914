"""IssueToken over the real service: client credentials, password, refresh rotation and reuse detection."""

from __future__ import annotations

import time

import grpc
import pytest
from macp.common.v1 import principal_pb2
from macp.token.v1 import token_service_pb2 as pb

from tests.token.harness import USER_PASSWORD, TokenHarness, password_grant, rpc_error, unverified

pytestmark = pytest.mark.integration

ISSUER = "http://127.0.0.1:8080"


async def test_client_credentials_issues_a_signed_rfc9068_token(token_service: TokenHarness) -> None:
    client = await token_service.register(scope="conversations:read conversations:write")
    before = int(time.time())
    response = await token_service.client_token(client, "conversations:read")

    assert response.token_type == "Bearer"
    assert response.scope == "conversations:read"
    assert response.refresh_token == ""  # RFC 6749 4.4.3: no refresh token for client credentials
    assert 890 <= response.expires_in <= 900
    header, _ = unverified(response.access_token)
    assert header == {"alg": "RS256", "typ": "at+jwt", "kid": header["kid"]}
    claims = await token_service.verified(response.access_token)
    assert claims["iss"] == ISSUER
    assert claims["sub"] == client.client_id
    assert claims["client_id"] == client.client_id
    assert claims["aud"] == "urn:macp:edge"  # nothing asked for: the edge
    assert claims["scope"] == "conversations:read"
    assert claims["tenant_id"] == "macp"
    assert claims["tier"] == "enterprise"
    assert claims["client_class"] == "internal"
    assert before <= claims["iat"] == claims["nbf"] <= int(time.time())
    assert claims["exp"] == claims["iat"] + 900
    assert len(claims["jti"]) == 36
    assert "user_id" not in claims
    assert "act" not in claims


async def test_client_credentials_audiences_are_service_urns(token_service: TokenHarness) -> None:
    client = await token_service.register()
    response = await token_service.client_token(
        client, audience=["urn:macp:service:conversation", "urn:macp:service:metering"]
    )
    claims = await token_service.verified(response.access_token)
    assert claims["aud"] == ["urn:macp:service:conversation", "urn:macp:service:metering"]

    error = await rpc_error(token_service.client_token(client, audience=["https://elsewhere.example"]))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details.startswith("invalid_target: unknown audience https://elsewhere.example")


async def test_client_credentials_refusals(token_service: TokenHarness) -> None:
    client = await token_service.register(scope="conversations:read")

    wrong = pb.IssueTokenRequest(
        grant_type=pb.GRANT_TYPE_CLIENT_CREDENTIALS, client_id=client.client_id, client_secret="wrong"
    )
    error = await rpc_error(token_service.stub.IssueToken(wrong))
    assert error.code == grpc.StatusCode.UNAUTHENTICATED
    assert error.details.startswith("invalid_client:")

    error = await rpc_error(token_service.client_token(client, "conversations:read conversations:write"))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details == "invalid_scope: not grantable here: conversations:write"

    password_grant = pb.IssueTokenRequest(
        grant_type=pb.GRANT_TYPE_PASSWORD,
        client_id=client.client_id,
        client_secret=client.client_secret,
        username="someone",
        password="whatever1",
    )
    error = await rpc_error(token_service.stub.IssueToken(password_grant))
    assert error.code == grpc.StatusCode.PERMISSION_DENIED
    assert error.details.startswith("unauthorized_client:")


async def test_client_stored_with_hashed_secret(token_service: TokenHarness) -> None:
    client = await token_service.register()
    stored = await token_service.db.fetchval(
        "SELECT secret_hash FROM token_clients WHERE client_id = $1", client.client_id
    )
    assert len(client.client_secret) >= 43
    assert client.client_secret.encode() not in bytes(stored)
    assert len(stored) == 32


async def _password_client(token_service: TokenHarness) -> tuple[str, pb.User]:
    await token_service.tenant("acme", principal_pb2.TIER_PRO)
    user = await token_service.user("acme", "ada", USER_PASSWORD)
    cli = await token_service.register(
        grant_types=["password", "refresh_token"],
        scope="conversations:read conversations:write",
        auth_method="none",
    )
    assert cli.client_secret == ""  # a public client gets none
    return cli.client_id, user


def _password(
    client_id: str, password: str = USER_PASSWORD, scope: str = "", client_secret: str = ""
) -> pb.IssueTokenRequest:
    return password_grant(client_id, client_secret, password=password, scope=scope)


def _refresh(client_id: str, refresh_token: str) -> pb.IssueTokenRequest:
    return pb.IssueTokenRequest(
        grant_type=pb.GRANT_TYPE_REFRESH_TOKEN, client_id=client_id, refresh_token=refresh_token
    )


async def test_password_grant_for_a_local_user(token_service: TokenHarness) -> None:
    client_id, user = await _password_client(token_service)
    response = await token_service.stub.IssueToken(_password(client_id))

    claims = await token_service.verified(response.access_token)
    assert claims["sub"] == user.user_id == claims["user_id"]
    assert claims["tenant_id"] == "acme"
    assert claims["tier"] == "pro"
    assert claims["client_id"] == client_id
    assert claims["scope"] == "conversations:read conversations:write"
    assert response.refresh_token

    stored = await token_service.db.fetchval(
        "SELECT password_hash FROM token_users WHERE user_id = $1", user.user_id
    )
    assert stored.startswith("scrypt$16384$8$1$")
    assert "correct horse" not in stored

    error = await rpc_error(token_service.stub.IssueToken(_password(client_id, "wrong password")))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details == "invalid_grant: wrong username or password"


async def test_password_grant_never_carries_privileged_scopes(token_service: TokenHarness) -> None:
    await _password_client(token_service)
    # An internal tool may hold macp:admin for its own client-credentials tokens; its users never get it.
    tool = await token_service.register(grant_types=["password"], scope="conversations:read macp:admin")
    default = await token_service.stub.IssueToken(_password(tool.client_id, client_secret=tool.client_secret))
    assert default.scope == "conversations:read"
    asked = _password(tool.client_id, scope="macp:admin", client_secret=tool.client_secret)
    error = await rpc_error(token_service.stub.IssueToken(asked))
    assert error.details == "invalid_scope: not grantable here: macp:admin"


async def test_refresh_rotates_the_refresh_token(token_service: TokenHarness) -> None:
    client_id, user = await _password_client(token_service)
    first = await token_service.stub.IssueToken(_password(client_id))

    second = await token_service.stub.IssueToken(_refresh(client_id, first.refresh_token))
    assert second.refresh_token
    assert second.refresh_token != first.refresh_token
    claims = await token_service.verified(second.access_token)
    assert claims["sub"] == user.user_id
    assert claims["scope"] == "conversations:read conversations:write"

    # Narrower on request; the next refresh token still carries the original grant.
    narrowed = await token_service.stub.IssueToken(
        pb.IssueTokenRequest(
            grant_type=pb.GRANT_TYPE_REFRESH_TOKEN,
            client_id=client_id,
            refresh_token=second.refresh_token,
            scope="conversations:read",
        )
    )
    assert narrowed.scope == "conversations:read"
    third = await token_service.stub.IssueToken(_refresh(client_id, narrowed.refresh_token))
    assert third.scope == "conversations:read conversations:write"


async def test_refresh_token_reuse_revokes_the_whole_family(token_service: TokenHarness) -> None:
    client_id, _ = await _password_client(token_service)
    first = await token_service.stub.IssueToken(_password(client_id))
    second = await token_service.stub.IssueToken(_refresh(client_id, first.refresh_token))
    access_jtis = [(await token_service.verified(r.access_token))["jti"] for r in (first, second)]
    for response in (first, second):
        active = await token_service.introspect(response.access_token)
        assert active.active

    # The first refresh token again: someone else holds the family.
    error = await rpc_error(token_service.stub.IssueToken(_refresh(client_id, first.refresh_token)))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details.startswith("invalid_grant: refresh token already used")

    # The legitimate holder's newest refresh token is dead too ...
    error = await rpc_error(token_service.stub.IssueToken(_refresh(client_id, second.refresh_token)))
    assert error.details.startswith("invalid_grant:")
    # ... and every access token of the family is revoked, in Redis for every verifier.
    for jti in access_jtis:
        # Until no verifier accepts it: its expiry plus the verifiers' 30 s leeway.
        assert 830 <= await token_service.revoked_ttl(jti) <= 930
    for response in (first, second):
        inactive = await token_service.introspect(response.access_token)
        assert not inactive.active
    refresh_state = await token_service.introspect(second.refresh_token)
    assert not refresh_state.active


async def test_refresh_token_of_another_client_is_refused(token_service: TokenHarness) -> None:
    client_id, _ = await _password_client(token_service)
    first = await token_service.stub.IssueToken(_password(client_id))
    other = await token_service.register(grant_types=["password", "refresh_token"], auth_method="none")
    error = await rpc_error(token_service.stub.IssueToken(_refresh(other.client_id, first.refresh_token)))
    assert error.details == "invalid_grant: unknown refresh token"
    # Refused without being used up: its own client still refreshes with it.
    assert (await token_service.stub.IssueToken(_refresh(client_id, first.refresh_token))).access_token
