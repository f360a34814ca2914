"""Signing keys: made on first start, sealed at rest, rotated with the old key published until its
tokens expire, and refused with one clear line when the key-encryption key does not open them."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from macp.token.v1 import token_service_pb2 as pb
from macp.token.v1 import token_service_pb2_grpc as pb_grpc

from services.runtime.settings import SettingsError
from services.token.service import DEFINITION
from tests.runtime.serving import channel, running
from tests.token.harness import (
    TokenHarness,
    b64url,
    b64url_decode,
    new_key_encryption_key,
    rpc_error,
    unverified,
    verify_with_jwks,
)

pytestmark = pytest.mark.integration

DAY = 86400


def rfc7638_thumbprint(jwk: pb.Jwk) -> str:
    canonical = json.dumps({"e": jwk.e, "kty": "RSA", "n": jwk.n}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode()).digest())


async def test_first_start_makes_one_key_named_by_its_thumbprint(token_service: TokenHarness) -> None:
    [jwk] = await token_service.jwks()
    assert jwk.kid == rfc7638_thumbprint(jwk)
    rows = await token_service.db.fetch("SELECT kid, rotate_time FROM token_signing_keys")
    assert [(row["kid"], row["rotate_time"]) for row in rows] == [(jwk.kid, None)]


async def test_private_key_is_sealed_at_rest(token_service: TokenHarness) -> None:
    [jwk] = await token_service.jwks()
    sealed = bytes(await token_service.db.fetchval("SELECT private_key FROM token_signing_keys"))

    assert b"PRIVATE KEY" not in sealed
    assert b"-----BEGIN" not in sealed
    with pytest.raises(ValueError, match="Could not deserialize"):
        serialization.load_der_private_key(sealed, password=None)
    # It opens with the configured key (AES-256-GCM, kid as associated data) and is the published key.
    kek = b64url_decode(token_service.environ["MACP_TOKEN_KEY_ENCRYPTION_KEY"])
    assert sealed[0] == 1
    der = AESGCM(kek).decrypt(sealed[1:13], sealed[13:], jwk.kid.encode())
    private_key = serialization.load_der_private_key(der, password=None)
    assert isinstance(private_key, rsa.RSAPrivateKey)
    assert private_key.key_size == 2048
    assert b64url(private_key.public_key().public_numbers().n.to_bytes(256, "big")) == jwk.n


async def test_a_restart_keeps_the_key_and_a_wrong_encryption_key_stops_start_up(
    token_service: TokenHarness,
) -> None:
    [jwk] = await token_service.jwks()
    async with running(DEFINITION, token_service.environ) as again, channel(again.port) as opened:
        keys = (await pb_grpc.TokenServiceStub(opened).GetJwks(pb.GetJwksRequest())).keys
        assert [key.kid for key in keys] == [jwk.kid]

    wrong = {**token_service.environ, "MACP_TOKEN_KEY_ENCRYPTION_KEY": new_key_encryption_key()}
    with pytest.raises(SettingsError) as refused:
        async with running(DEFINITION, wrong):
            pass
    message = str(refused.value)
    assert message.startswith(f"MACP_TOKEN_KEY_ENCRYPTION_KEY does not open signing key {jwk.kid}")
    assert "\n" not in message


async def test_rotation_signs_with_the_new_key_and_keeps_the_old_one_published(
    token_service: TokenHarness,
) -> None:
    admin = await token_service.admin_metadata()
    client = await token_service.register()
    before = await token_service.client_token(client)
    [old] = await token_service.jwks()

    rotated = await token_service.stub.RotateSigningKey(pb.RotateSigningKeyRequest(), metadata=admin)
    assert rotated.previous_kid == old.kid
    assert rotated.kid != old.kid == unverified(before.access_token)[0]["kid"]
    # Retired once the longest-lived token it signed has expired: 24 h agent tokens, plus the
    # 30 s other replicas may still sign with it.
    assert rotated.previous_key_retire_time.seconds == pytest.approx(time.time() + DAY + 30, abs=10)

    keys = await token_service.jwks()
    assert [key.kid for key in keys] == [rotated.kid, old.kid]
    after = await token_service.client_token(client)
    assert unverified(after.access_token)[0]["kid"] == rotated.kid
    verify_with_jwks(after.access_token, keys)
    verify_with_jwks(before.access_token, keys)
    still = await token_service.introspect(before.access_token)
    assert still.active

    # Once retired, the old key leaves the JWKS and its tokens stop verifying (a fresh replica here,
    # whose cache has never seen it).
    await token_service.db.execute(
        "UPDATE token_signing_keys SET retire_time = now() - interval '1 second' WHERE kid = $1", old.kid
    )
    assert [key.kid for key in await token_service.jwks()] == [rotated.kid]
    async with running(DEFINITION, token_service.environ) as replica, channel(replica.port) as opened:
        fresh = dataclasses.replace(token_service, stub=pb_grpc.TokenServiceStub(opened))
        assert not (await fresh.introspect(before.access_token)).active
        assert (await fresh.introspect(after.access_token)).active


async def test_rotation_needs_the_admin_scope(token_service: TokenHarness) -> None:
    error = await rpc_error(token_service.stub.RotateSigningKey(pb.RotateSigningKeyRequest()))
    assert error.code == grpc.StatusCode.UNAUTHENTICATED
    assert error.details.startswith("invalid_token:")

    plain = await token_service.register()
    token = await token_service.client_token(plain, audience=["urn:macp:service:token"])
    error = await rpc_error(
        token_service.stub.RotateSigningKey(
            pb.RotateSigningKeyRequest(), metadata=(("authorization", f"Bearer {token.access_token}"),)
        )
    )
    assert error.code == grpc.StatusCode.PERMISSION_DENIED
    assert error.details == "insufficient_scope: this RPC needs scope macp:admin"
    assert len(await token_service.jwks()) == 1
