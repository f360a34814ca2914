"""What the token tests share: the real token service served in-process, a client of it, and
independent checks of what it issues (JWTs verified here with `cryptography`, not with the
service's own code, so a format regression cannot hide behind a matching bug).
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
import redis.asyncio as aioredis
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from macp.common.v1 import principal_pb2
from macp.token.v1 import token_service_pb2 as pb
from macp.token.v1 import token_service_pb2_grpc as pb_grpc

from services.runtime.auth.basic import encode_basic

TOKEN_AUDIENCE = "urn:macp:service:token"
EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
# The password the token tests give their users.
USER_PASSWORD = "correct horse battery"
# The client classes a person signs in through: everyone's but MACP's own internal clients.
USER_FACING_CLASSES: dict[str, principal_pb2.ClientClass.ValueType] = {
    "consumer": principal_pb2.CLIENT_CLASS_CONSUMER,
    "partner": principal_pb2.CLIENT_CLASS_PARTNER,
    "third_party": principal_pb2.CLIENT_CLASS_THIRD_PARTY,
}


def new_key_encryption_key() -> str:
    return secrets.token_urlsafe(32)


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header, payload, _ = token.split(".")
    return json.loads(b64url_decode(header)), json.loads(b64url_decode(payload))


def rsa_public_key(jwk: pb.Jwk) -> rsa.RSAPublicKey:
    numbers = rsa.RSAPublicNumbers(
        e=int.from_bytes(b64url_decode(jwk.e), "big"), n=int.from_bytes(b64url_decode(jwk.n), "big")
    )
    return numbers.public_key()


def verify_with_jwks(token: str, keys: Sequence[pb.Jwk]) -> dict[str, Any]:
    """The claims of `token` after checking its exact header and RS256 signature against `keys`."""
    header_part, payload_part, signature_part = token.split(".")
    header = json.loads(b64url_decode(header_part))
    assert list(header) == ["alg", "typ", "kid"]
    assert header["alg"] == "RS256"
    assert header["typ"] == "at+jwt"
    [jwk] = [key for key in keys if key.kid == header["kid"]]
    assert (jwk.kty, jwk.alg, jwk.use) == ("RSA", "RS256", "sig")
    public_key = rsa_public_key(jwk)
    assert public_key.key_size == 2048
    try:
        public_key.verify(
            b64url_decode(signature_part),
            f"{header_part}.{payload_part}".encode(),
            padding.PKCS1v15(),
            hashes.SHA256(),
        )
    except InvalidSignature:
        raise AssertionError("signature does not verify with the published key") from None
    claims: dict[str, Any] = json.loads(b64url_decode(payload_part))
    return claims


def forge(header: dict[str, Any], claims: dict[str, Any], private_key: rsa.RSAPrivateKey) -> str:
    """A JWS with any header and claims, signed by `private_key` (for tokens the service must refuse)."""
    head = b64url(json.dumps(header, separators=(",", ":")).encode())
    body = b64url(json.dumps(claims, separators=(",", ":")).encode())
    signature = private_key.sign(f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{head}.{body}.{b64url(signature)}"


@dataclass(frozen=True)
class RegisteredClient:
    client_id: str
    client_secret: str


@dataclass
class TokenHarness:
    """A running token service: its stub, its settings, and its database and Redis to look into."""

    stub: pb_grpc.TokenServiceStub
    environ: dict[str, str]
    db: asyncpg.Pool
    redis: aioredis.Redis
    _introspector: RegisteredClient | None = None

    @property
    def initial_access_token(self) -> str:
        return self.environ["MACP_TOKEN_INITIAL_ACCESS_TOKEN"]

    @property
    def redis_prefix(self) -> str:
        return self.environ["MACP_REDIS_KEY_PREFIX"]

    async def register(
        self,
        *,
        client_class: principal_pb2.ClientClass.ValueType = principal_pb2.CLIENT_CLASS_INTERNAL,
        grant_types: Sequence[str] = ("client_credentials",),
        scope: str = "",
        tenant_id: str = "",
        auth_method: str = "",
        name: str = "test client",
    ) -> RegisteredClient:
        response = await self.stub.RegisterClient(
            pb.RegisterClientRequest(
                initial_access_token=self.initial_access_token,
                tenant_id=tenant_id,
                metadata=pb.ClientMetadata(
                    client_name=name,
                    client_class=client_class,
                    grant_types=list(grant_types),
                    scope=scope,
                    token_endpoint_auth_method=auth_method,
                ),
            )
        )
        return RegisteredClient(response.client_id, response.client_secret)

    async def client_token(
        self, client: RegisteredClient, scope: str = "", audience: Sequence[str] = ()
    ) -> pb.IssueTokenResponse:
        response: pb.IssueTokenResponse = await self.stub.IssueToken(
            pb.IssueTokenRequest(
                grant_type=pb.GRANT_TYPE_CLIENT_CREDENTIALS,
                client_id=client.client_id,
                client_secret=client.client_secret,
                scope=scope,
                audience=list(audience),
            )
        )
        return response

    async def admin_metadata(self) -> tuple[tuple[str, str]]:
        """`authorization: Bearer ...` of an internal client holding `macp:admin` for the token service:
        the bootstrap `macp up` follows (register with the initial access token, then client credentials)."""
        admin = await self.register(scope="macp:admin macp:agent-token")
        token = await self.client_token(admin, "macp:admin macp:agent-token", [TOKEN_AUDIENCE])
        return (("authorization", f"Bearer {token.access_token}"),)

    async def tenant(
        self, tenant_id: str, tier: principal_pb2.Tier.ValueType = principal_pb2.TIER_PRO
    ) -> None:
        await self.stub.CreateTenant(
            pb.CreateTenantRequest(tenant_id=tenant_id, tier=tier), metadata=await self.admin_metadata()
        )

    async def user(self, tenant_id: str, username: str, password: str) -> pb.User:
        response = await self.stub.CreateUser(
            pb.CreateUserRequest(tenant_id=tenant_id, username=username, password=password),
            metadata=await self.admin_metadata(),
        )
        return response.user

    async def introspect(self, token: str, client: RegisteredClient | None = None) -> pb.IntrospectResponse:
        """Introspect `token` as `client`, by default an internal confidential client (RFC 7662 2.1:
        the caller authenticates, with `authorization: Basic` since the request has no client fields)."""
        if client is None:
            if self._introspector is None:
                self._introspector = await self.register(name="introspector")
            client = self._introspector
        response: pb.IntrospectResponse = await self.stub.Introspect(
            pb.IntrospectRequest(token=token),
            metadata=(("authorization", encode_basic(client.client_id, client.client_secret)),),
        )
        return response

    async def jwks(self) -> list[pb.Jwk]:
        return list((await self.stub.GetJwks(pb.GetJwksRequest())).keys)

    async def verified(self, token: str) -> dict[str, Any]:
        return verify_with_jwks(token, await self.jwks())

    async def revoked_ttl(self, jti: str) -> int:
        """Seconds the Redis revocation key of `jti` has left (-2 when it does not exist)."""
        ttl: int = await self.redis.ttl(f"{self.redis_prefix}revoked:{jti}")
        return ttl


@dataclass(frozen=True)
class Refusal:
    code: grpc.StatusCode
    details: str


async def rpc_error(call: Any) -> Refusal:
    """The status a call awaited here fails with (the test fails if it succeeds)."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return Refusal(error.code(), error.details() or "")
    raise AssertionError("the call succeeded; it should have failed")


def password_grant(
    client_id: str,
    client_secret: str = "",
    *,
    username: str = "ada",
    password: str = USER_PASSWORD,
    audience: Sequence[str] = (),
    scope: str = "",
) -> pb.IssueTokenRequest:
    """The password grant's request: `username` signing in through the client."""
    return pb.IssueTokenRequest(
        grant_type=pb.GRANT_TYPE_PASSWORD,
        client_id=client_id,
        client_secret=client_secret,
        username=username,
        password=password,
        audience=list(audience),
        scope=scope,
    )
