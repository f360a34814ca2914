"""Introspect (RFC 7662) and Revoke (RFC 7009): strict verification, and revocations every verifier sees."""

from __future__ import annotations

import time
import uuid
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from macp.common.v1 import principal_pb2
from macp.token.v1 import token_service_pb2 as pb

from services.token.service import DEFINITION
from tests.runtime.serving import running
from tests.token.harness import (
    USER_PASSWORD,
    RegisteredClient,
    TokenHarness,
    b64url,
    b64url_decode,
    forge,
    password_grant,
    rpc_error,
    unverified,
)

pytestmark = pytest.mark.integration


async def introspect(token_service: TokenHarness, token: str) -> pb.IntrospectResponse:
    response: pb.IntrospectResponse = await token_service.introspect(token)
    return response


async def signing_key(token_service: TokenHarness) -> tuple[str, rsa.RSAPrivateKey]:
    """The service's current private key, opened the way an operator with the KEK could."""
    row = await token_service.db.fetchrow("SELECT kid, private_key FROM token_signing_keys")
    kek = b64url_decode(token_service.environ["MACP_TOKEN_KEY_ENCRYPTION_KEY"])
    sealed = bytes(row["private_key"])
    key = serialization.load_der_private_key(
        AESGCM(kek).decrypt(sealed[1:13], sealed[13:], row["kid"].encode()), password=None
    )
    assert isinstance(key, rsa.RSAPrivateKey)
    return row["kid"], key


def revoke(client: RegisteredClient, **fields: Any) -> pb.RevokeRequest:
    return pb.RevokeRequest(client_id=client.client_id, client_secret=client.client_secret, **fields)


async def test_introspection_of_a_user_token(token_service: TokenHarness) -> None:
    await token_service.tenant("acme", principal_pb2.TIER_FREE)
    user = await token_service.user("acme", "ada", USER_PASSWORD)
    app = await token_service.register(
        client_class=principal_pb2.CLIENT_CLASS_CONSUMER,
        tenant_id="acme",
        grant_types=["password"],
        scope="a b",
    )
    issued = await token_service.stub.IssueToken(password_grant(app.client_id, app.client_secret))
    claims = await token_service.verified(issued.access_token)

    found = await introspect(token_service, issued.access_token)
    assert found.active
    assert found.scope == "a b"
    assert found.client_id == app.client_id
    assert found.username == "ada"
    assert found.token_type == "Bearer"
    assert (found.exp, found.iat, found.nbf) == (claims["exp"], claims["iat"], claims["nbf"])
    assert found.sub == user.user_id
    assert list(found.aud) == ["urn:macp:edge"]
    assert found.iss == "http://127.0.0.1:8080"
    assert found.jti == claims["jti"]
    assert found.principal == principal_pb2.Principal(
        tenant_id="acme",
        user_id=user.user_id,
        tier=principal_pb2.TIER_FREE,
        scopes=["a", "b"],
        client_id=app.client_id,
        client_class=principal_pb2.CLIENT_CLASS_CONSUMER,
        token_id=claims["jti"],
        expire_time=found.principal.expire_time,
    )
    assert found.principal.expire_time.seconds == claims["exp"]


async def test_anything_not_strictly_valid_is_inactive(token_service: TokenHarness) -> None:
    client = await token_service.register()
    real = await token_service.client_token(client)
    header, claims = unverified(real.access_token)
    kid, key = await signing_key(token_service)
    assert header["kid"] == kid
    foreign = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())

    # The control: forged with the real key and the real shape, it is active, so each refusal below
    # is for the one thing that differs.
    control = forge(header, {**claims, "jti": str(uuid.uuid4())}, key)
    assert (await introspect(token_service, control)).active

    unsigned = ".".join(
        [
            b64url(b'{"alg":"none","typ":"at+jwt","kid":"' + kid.encode() + b'"}'),
            real.access_token.split(".")[1],
            "",
        ]
    )
    refused = {
        "alg none": unsigned,
        "typ JWT": forge({**header, "typ": "JWT"}, claims, key),
        "extra header member": forge({**header, "jku": "https://evil.example"}, claims, key),
        "foreign key": forge(header, claims, foreign),
        "unknown kid": forge({**header, "kid": "nope"}, claims, key),
        "expired": forge(header, {**claims, "exp": now - 300, "iat": now - 900, "nbf": now - 900}, key),
        "not yet valid": forge(header, {**claims, "nbf": now + 300}, key),
        "other issuer": forge(header, {**claims, "iss": "https://evil.example"}, key),
        "no tenant": forge(header, {k: v for k, v in claims.items() if k != "tenant_id"}, key),
        "unknown tier": forge(header, {**claims, "tier": "platinum"}, key),
        "garbage": "not-a-token",
        "tampered payload": real.access_token.split(".")[0]
        + "."
        + b64url(b'{"sub":"someone-else"}')
        + "."
        + real.access_token.split(".")[2],
    }
    for reason, token in refused.items():
        assert (await introspect(token_service, token)) == pb.IntrospectResponse(active=False), reason


async def test_revoke_by_token_writes_redis_with_the_remaining_lifetime(token_service: TokenHarness) -> None:
    client = await token_service.register()
    issued = await token_service.client_token(client)
    claims = await token_service.verified(issued.access_token)
    assert await token_service.revoked_ttl(claims["jti"]) == -2

    await token_service.stub.Revoke(revoke(client, token=issued.access_token))

    assert await token_service.redis.get(f"{token_service.redis_prefix}revoked:{claims['jti']}") == b"1"
    # Kept until no verifier accepts the token: its expiry plus the verifiers' 30 s leeway.
    remaining = claims["exp"] + 30 - time.time()
    assert remaining - 5 <= await token_service.revoked_ttl(claims["jti"]) <= remaining + 1
    row = await token_service.db.fetchrow(
        "SELECT reason, expire_time FROM token_revocations WHERE jti = $1", claims["jti"]
    )
    assert row is not None
    assert int(row["expire_time"].timestamp()) == claims["exp"]
    assert not (await introspect(token_service, issued.access_token)).active


async def test_revoke_by_token_id(token_service: TokenHarness) -> None:
    client = await token_service.register()
    issued = await token_service.client_token(client)
    jti = (await token_service.verified(issued.access_token))["jti"]
    await token_service.stub.Revoke(revoke(client, token_id=jti))
    assert await token_service.revoked_ttl(jti) > 800
    assert not (await introspect(token_service, issued.access_token)).active


async def test_a_client_revokes_only_its_own_tokens(token_service: TokenHarness) -> None:
    owner = await token_service.register()
    other = await token_service.register()
    issued = await token_service.client_token(owner)
    error = await rpc_error(token_service.stub.Revoke(revoke(other, token=issued.access_token)))
    assert error.code == grpc.StatusCode.PERMISSION_DENIED
    assert error.details.startswith("unauthorized_client:")
    assert (await introspect(token_service, issued.access_token)).active

    # Unknown and invalid tokens are not errors (RFC 7009 2.2), but the client must authenticate.
    await token_service.stub.Revoke(revoke(other, token_id=str(uuid.uuid4())))
    await token_service.stub.Revoke(revoke(other, token="a.b.c"))
    error = await rpc_error(
        token_service.stub.Revoke(
            pb.RevokeRequest(client_id=other.client_id, client_secret="x", token_id="y")
        )
    )
    assert error.code == grpc.StatusCode.UNAUTHENTICATED


async def test_revocations_are_republished_to_redis_at_start_up(token_service: TokenHarness) -> None:
    client = await token_service.register()
    issued = await token_service.client_token(client)
    jti = (await token_service.verified(issued.access_token))["jti"]
    await token_service.stub.Revoke(revoke(client, token_id=jti))
    await token_service.redis.delete(f"{token_service.redis_prefix}revoked:{jti}")
    # Still refused here (Postgres holds it), and back in Redis for every other verifier after a start.
    assert not (await introspect(token_service, issued.access_token)).active
    async with running(DEFINITION, token_service.environ):
        assert await token_service.revoked_ttl(jti) > 800


async def test_revoking_a_refresh_token_revokes_its_family(token_service: TokenHarness) -> None:
    await token_service.tenant("acme")
    await token_service.user("acme", "ada", USER_PASSWORD)
    cli = await token_service.register(grant_types=["password", "refresh_token"], auth_method="none")
    issued = await token_service.stub.IssueToken(password_grant(cli.client_id))
    found = await introspect(token_service, issued.refresh_token)
    assert found.active
    assert found.token_type == "refresh_token"
    assert found.username == "ada"

    await token_service.stub.Revoke(revoke(cli, token=issued.refresh_token))
    assert not (await introspect(token_service, issued.refresh_token)).active
    assert not (await introspect(token_service, issued.access_token)).active
    error = await rpc_error(
        token_service.stub.IssueToken(
            pb.IssueTokenRequest(
                grant_type=pb.GRANT_TYPE_REFRESH_TOKEN,
                client_id=cli.client_id,
                refresh_token=issued.refresh_token,
            )
        )
    )
    assert error.details.startswith("invalid_grant:")
