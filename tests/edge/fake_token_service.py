"""A stand-in for MACP's own token service, served by the real runtime bootstrap on port 0.

It keeps its clients, users and tokens in memory and speaks the contract the way the real service
does (an OAuth error is a status whose message starts with the RFC code; the validation interceptor
refuses what the proto's constraints refuse), so the edge is tested against the contract, not against
what the fake happens to answer. Tests can read every request it received and make the next call to
an RPC fail with any status.
"""

from __future__ import annotations

import base64
import functools
import secrets
import time
import uuid
from dataclasses import dataclass, field, replace

import grpc
from cryptography.hazmat.primitives.asymmetric import rsa
from google.protobuf.message import Message
from macp.common.v1 import principal_pb2
from macp.token.v1 import token_service_pb2 as pb
from macp.token.v1 import token_service_pb2_grpc as pb_grpc

from services.runtime.auth.basic import decode_basic
from services.runtime.context import RpcContext
from services.runtime.errors import DomainError, InvalidArgument, Unauthenticated
from services.runtime.registry import service
from services.runtime.server import ServiceDefinition, servicer_only
from services.token.service import OwnChecks

ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
ISSUER = "http://fake-token-service.test"
INITIAL_ACCESS_TOKEN = "initial-access-token-for-the-edge-tests"
ACCESS_SECONDS = 900

# Served like the token service, but needing none of its infrastructure.
FAKE_SPEC = replace(service("token"), port=0, metrics_port=0, dependencies=())
FAKE_ENVIRON = {"MACP_SHUTDOWN_GRACE_SECONDS": "1", "MACP_LOG_LEVEL": "warning"}


def oauth_error(error_class: type[DomainError], code: str, description: str) -> DomainError:
    return error_class(f"{code}: {description}")


@dataclass
class FakeClient:
    client_id: str
    secret: str  # "" for a public client
    scopes: tuple[str, ...]


@dataclass
class FakeToken:
    kind: str  # "access_token" or "refresh_token"
    client_id: str
    subject: str
    scopes: tuple[str, ...]
    audience: tuple[str, ...] = ("urn:macp:edge",)
    active: bool = True
    parent: str = ""  # an access token's refresh token
    jti: str = field(default_factory=lambda: uuid.uuid4().hex)
    issued_at: int = field(default_factory=lambda: int(time.time()))


def _b64url(number: int) -> str:
    raw = number.to_bytes((number.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@functools.cache
def _public_jwk() -> pb.Jwk:
    """A real RSA public key, so JOSE libraries load the set; made once, as generating one takes a while."""
    numbers = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_numbers()
    return pb.Jwk(
        kty="RSA", use="sig", kid="fake-key-1", alg="RS256", n=_b64url(numbers.n), e=_b64url(numbers.e)
    )


class FakeTokenService(pb_grpc.TokenServiceServicer):
    """Client credentials, password, refresh (rotated, reuse refused), exchange, introspection,
    revocation, registration and a JWKS, all in memory."""

    def __init__(self) -> None:
        self.clients: dict[str, FakeClient] = {}
        self.users: dict[str, str] = {}
        self.tokens: dict[str, FakeToken] = {}
        self.requests: list[Message] = []
        self._failures: dict[str, tuple[grpc.StatusCode, str]] = {}

    # What tests arrange and inspect.

    def reset(self) -> None:
        """Forget everything: each test starts from an empty service (serving one costs more than a test)."""
        self.clients.clear()
        self.users.clear()
        self.tokens.clear()
        self.requests.clear()
        self._failures.clear()

    def add_client(self, client_id: str, secret: str, scopes: tuple[str, ...]) -> FakeClient:
        self.clients[client_id] = FakeClient(client_id, secret, scopes)
        return self.clients[client_id]

    def fail_next(self, rpc: str, code: grpc.StatusCode, message: str) -> None:
        """The next call to `rpc` fails with `code` and `message`."""
        self._failures[rpc] = (code, message)

    def last(self, kind: type[Message]) -> Message:
        return next(request for request in reversed(self.requests) if isinstance(request, kind))

    # Shared rules.

    async def _begin(self, rpc: str, request: Message, context: RpcContext) -> None:
        self.requests.append(request)
        failure = self._failures.pop(rpc, None)
        if failure is not None:
            await context.abort(*failure)

    def _client(self, client_id: str, secret: str) -> FakeClient:
        client = self.clients.get(client_id)
        if client is None or not secrets.compare_digest(client.secret, secret):
            raise oauth_error(Unauthenticated, "invalid_client", "unknown client or wrong secret")
        return client

    @staticmethod
    def _scopes(requested: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
        wanted = tuple(requested.split())
        excess = [scope for scope in wanted if scope not in allowed]
        if excess:
            raise oauth_error(InvalidArgument, "invalid_scope", f"not grantable here: {' '.join(excess)}")
        return wanted or allowed

    @staticmethod
    def _audience(audience: list[str], resource: list[str]) -> tuple[str, ...]:
        wanted = tuple(dict.fromkeys([*audience, *resource]))
        unknown = [target for target in wanted if not target.startswith("urn:macp:")]
        if unknown:
            raise oauth_error(InvalidArgument, "invalid_target", f"unknown audience {', '.join(unknown)}")
        return wanted or ("urn:macp:edge",)

    def _mint(self, template: FakeToken) -> str:
        value = secrets.token_urlsafe(32)
        self.tokens[value] = template
        return value

    def _active(self, value: str, kind: str, what: str, error: str = "invalid_grant") -> FakeToken:
        token = self.tokens.get(value)
        if token is None or token.kind != kind or not token.active:
            raise oauth_error(InvalidArgument, error, f"the {what} is not active")
        return token

    # The RPCs.

    async def IssueToken(self, request: pb.IssueTokenRequest, context: RpcContext) -> pb.IssueTokenResponse:
        await self._begin("IssueToken", request, context)
        client = self._client(request.client_id, request.client_secret)
        audience = self._audience(list(request.audience), list(request.resource))
        if request.grant_type == pb.GRANT_TYPE_CLIENT_CREDENTIALS:
            scopes = self._scopes(request.scope, client.scopes)
            access = self._mint(
                FakeToken("access_token", client.client_id, client.client_id, scopes, audience)
            )
            return pb.IssueTokenResponse(
                access_token=access, token_type="Bearer", expires_in=ACCESS_SECONDS, scope=" ".join(scopes)
            )
        if request.grant_type == pb.GRANT_TYPE_PASSWORD:
            if self.users.get(request.username) != request.password:
                raise oauth_error(InvalidArgument, "invalid_grant", "wrong username or password")
            subject, scopes = request.username, self._scopes(request.scope, client.scopes)
        else:
            old = self.tokens.get(request.refresh_token)
            if old is not None and old.kind == "refresh_token" and not old.active:
                self._revoke_family(request.refresh_token)
                raise oauth_error(InvalidArgument, "invalid_grant", "the refresh token was already used")
            old = self._active(request.refresh_token, "refresh_token", "refresh token")
            if old.client_id != client.client_id:
                raise oauth_error(InvalidArgument, "invalid_grant", "the refresh token is another client's")
            old.active = False
            subject, scopes = old.subject, self._scopes(request.scope, old.scopes)
        refresh = self._mint(FakeToken("refresh_token", client.client_id, subject, scopes))
        access = self._mint(
            FakeToken("access_token", client.client_id, subject, scopes, audience, parent=refresh)
        )
        return pb.IssueTokenResponse(
            access_token=access,
            token_type="Bearer",
            expires_in=ACCESS_SECONDS,
            refresh_token=refresh,
            scope=" ".join(scopes),
        )

    async def ExchangeToken(
        self, request: pb.ExchangeTokenRequest, context: RpcContext
    ) -> pb.ExchangeTokenResponse:
        await self._begin("ExchangeToken", request, context)
        client = self._client(request.client_id, request.client_secret)
        # RFC 8693 section 2.2.2: an unacceptable subject or actor token is an invalid_request.
        subject = self._active(request.subject_token, "access_token", "subject token", "invalid_request")
        chain = []
        if request.actor_token:
            actor = self._active(request.actor_token, "access_token", "actor token", "invalid_request")
            chain.append(principal_pb2.Actor(type=principal_pb2.ACTOR_TYPE_CLIENT, id=actor.subject))
        scopes = self._scopes(request.scope, subject.scopes)
        audience = self._audience(list(request.audience), list(request.resource))
        access = self._mint(FakeToken("access_token", client.client_id, subject.subject, scopes, audience))
        return pb.ExchangeTokenResponse(
            access_token=access,
            issued_token_type=request.requested_token_type or ACCESS_TOKEN_TYPE,
            token_type="Bearer",
            expires_in=ACCESS_SECONDS,
            scope=" ".join(scopes),
            actor_chain=chain,
        )

    async def Introspect(self, request: pb.IntrospectRequest, context: RpcContext) -> pb.IntrospectResponse:
        await self._begin("Introspect", request, context)
        # The caller's client, from the call's one `authorization: Basic` entry, as the contract has it.
        entries = [value for name, value in context.invocation_metadata() or () if name == "authorization"]
        scheme, _, credentials = (str(entries[0]) if len(entries) == 1 else "").partition(" ")
        client = decode_basic(credentials) if scheme == "Basic" else None
        if client is None:
            raise oauth_error(Unauthenticated, "invalid_client", "authenticate the client")
        self._client(*client)
        token = self.tokens.get(request.token)
        if token is None or not token.active:
            return pb.IntrospectResponse(active=False)
        return pb.IntrospectResponse(
            active=True,
            scope=" ".join(token.scopes),
            client_id=token.client_id,
            username=token.subject,
            token_type="Bearer" if token.kind == "access_token" else "refresh_token",
            exp=token.issued_at + ACCESS_SECONDS,
            iat=token.issued_at,
            nbf=token.issued_at,
            sub=token.subject,
            aud=token.audience,
            iss=ISSUER,
            jti=token.jti,
            principal=principal_pb2.Principal(tenant_id="fake", user_id=token.subject),
        )

    def _revoke_family(self, refresh: str) -> None:
        for value, token in self.tokens.items():
            if value == refresh or token.parent == refresh:
                token.active = False

    async def Revoke(self, request: pb.RevokeRequest, context: RpcContext) -> pb.RevokeResponse:
        await self._begin("Revoke", request, context)
        client = self._client(request.client_id, request.client_secret)
        found = self.tokens.get(request.token)
        if request.token_id:
            found = next((t for t in self.tokens.values() if t.jti == request.token_id), None)
        if found is not None and found.client_id == client.client_id:
            found.active = False
            if found.kind == "refresh_token":
                self._revoke_family(request.token)
        return pb.RevokeResponse()

    async def RegisterClient(
        self, request: pb.RegisterClientRequest, context: RpcContext
    ) -> pb.RegisterClientResponse:
        await self._begin("RegisterClient", request, context)
        if not secrets.compare_digest(request.initial_access_token, INITIAL_ACCESS_TOKEN):
            raise oauth_error(Unauthenticated, "invalid_token", "the initial access token is not valid")
        metadata = pb.ClientMetadata()
        metadata.CopyFrom(request.metadata)
        metadata.token_endpoint_auth_method = metadata.token_endpoint_auth_method or "client_secret_basic"
        if not metadata.grant_types:
            metadata.grant_types.append("client_credentials")
        metadata.client_class = metadata.client_class or principal_pb2.CLIENT_CLASS_THIRD_PARTY
        secret = "" if metadata.token_endpoint_auth_method == "none" else secrets.token_urlsafe(24)
        client = self.add_client(str(uuid.uuid4()), secret, tuple(metadata.scope.split()))
        return pb.RegisterClientResponse(
            client_id=client.client_id,
            client_secret=secret,
            client_id_issued_at=int(time.time()),
            client_secret_expires_at=0,
            metadata=metadata,
        )

    async def GetJwks(self, request: pb.GetJwksRequest, context: RpcContext) -> pb.GetJwksResponse:
        await self._begin("GetJwks", request, context)
        return pb.GetJwksResponse(keys=[_public_jwk()])


def fake_definition(fake: FakeTokenService) -> ServiceDefinition:
    start = servicer_only(pb_grpc.add_TokenServiceServicer_to_server, fake)
    # Like the real token service, it admits every call: its RPCs are the ones that hand out tokens.
    return ServiceDefinition(spec=FAKE_SPEC, start=start, authenticator=OwnChecks())
