"""The runtime's `Authenticator` for real: `authorization: Bearer <jwt>` on every call, verified for
this service's audience, not revoked, carrying the scope the method needs; the caller's principal
comes from the token's claims and nowhere else.

Refusals are UNAUTHENTICATED with the verifier's short reason ("invalid token: expired"), or
PERMISSION_DENIED naming the missing scope. The token itself is never logged or echoed.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import grpc
import redis.asyncio as aioredis
from google.protobuf.timestamp_pb2 import Timestamp
from macp.common.v1 import principal_pb2

from services.runtime.auth.jwks import JwksCache, token_service_fetch
from services.runtime.auth.jwt import (
    DEFAULT_LEEWAY_SECONDS,
    DEFAULT_MAX_DELEGATION_DEPTH,
    ActorClaim,
    Claims,
    InvalidToken,
)
from services.runtime.auth.revocation import RevocationChecker
from services.runtime.auth.settings import AuthSettings
from services.runtime.auth.verifier import DEFAULT_VERIFIED_CACHE_SIZE, TokenVerifier
from services.runtime.context import RpcContext
from services.runtime.errors import PermissionDenied, Unauthenticated
from services.runtime.principal import Principal

log = logging.getLogger("macp.auth")

AUTHORIZATION_HEADER = "authorization"

_TIERS = {
    "free": principal_pb2.TIER_FREE,
    "pro": principal_pb2.TIER_PRO,
    "enterprise": principal_pb2.TIER_ENTERPRISE,
}
_CLIENT_CLASSES = {
    "internal": principal_pb2.CLIENT_CLASS_INTERNAL,
    "consumer": principal_pb2.CLIENT_CLASS_CONSUMER,
    "partner": principal_pb2.CLIENT_CLASS_PARTNER,
    "third_party": principal_pb2.CLIENT_CLASS_THIRD_PARTY,
}
_CLIENT_CLASS_NAMES = {value: name for name, value in _CLIENT_CLASSES.items()}


def client_class_name(principal: Principal) -> str:
    """The principal's client class as its token names it; a token that names none is treated as
    a third party's (the strictest default limits)."""
    return _CLIENT_CLASS_NAMES.get(principal.client_class, "third_party")


def _actor(claim: ActorClaim) -> principal_pb2.Actor:
    # The token service's convention: an agent actor names its agent; a client acting for itself
    # has sub == client_id; anyone else is a user.
    if claim.agent_id is not None:
        actor_type = principal_pb2.ACTOR_TYPE_AGENT
    elif claim.sub == claim.client_id:
        actor_type = principal_pb2.ACTOR_TYPE_CLIENT
    else:
        actor_type = principal_pb2.ACTOR_TYPE_USER
    return principal_pb2.Actor(type=actor_type, id=claim.sub, client_id=claim.client_id or "")


def principal_from_claims(claims: Claims) -> Principal:
    """The principal a handler sees for a verified token."""
    return Principal(
        tenant_id=claims.tenant_id or "",
        user_id=claims.user_id or "",
        tier=_TIERS.get(claims.tier or "", principal_pb2.TIER_UNSPECIFIED),
        scopes=claims.scopes,
        client_id=claims.client_id or "",
        client_class=_CLIENT_CLASSES.get(claims.client_class or "", principal_pb2.CLIENT_CLASS_UNSPECIFIED),
        actor_chain=[_actor(actor) for actor in claims.actor_chain],
        token_id=claims.jti,
        # `exp` may have a fraction (RFC 7519 NumericDate); kept, so nothing expires early.
        expire_time=Timestamp(seconds=int(claims.exp), nanos=int(claims.exp % 1 * 1e9)),
    )


def bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> str:
    """The token of the one `authorization: Bearer <token>` entry; Unauthenticated otherwise."""
    values = [value for key, value in metadata or () if key == AUTHORIZATION_HEADER]
    if not values:
        raise Unauthenticated("missing bearer token")
    if len(values) > 1:
        # Two credentials: which one a proxy or a handler would read is anyone's guess.
        raise Unauthenticated("more than one authorization header")
    value = values[0] if isinstance(values[0], str) else values[0].decode("latin-1")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("the authorization header is not 'Bearer <token>'")
    return token.strip()


class JwtAuthenticator:
    """Implements `services.runtime.interceptors.Authenticator` with MACP access tokens.

    method_scopes: full method name (`/macp.token.v1.TokenService/RotateSigningKey`) to the scope
        a token needs to call it; `/<package>.<Service>/*` covers every method of a service. A
        method not named needs a valid token and no particular scope.
    """

    def __init__(
        self,
        audience: str,
        jwks: JwksCache,
        revocations: RevocationChecker,
        issuer: str,
        method_scopes: Mapping[str, str],
        *,
        leeway: int = DEFAULT_LEEWAY_SECONDS,
        max_delegation_depth: int = DEFAULT_MAX_DELEGATION_DEPTH,
        verified_cache_size: int = DEFAULT_VERIFIED_CACHE_SIZE,
    ) -> None:
        # Read by readiness: a service without the token service's keys can only refuse every call.
        self.jwks = jwks
        self.verifier = TokenVerifier(
            audience=audience,
            issuer=issuer,
            jwks=jwks,
            revocations=revocations,
            leeway=leeway,
            max_delegation_depth=max_delegation_depth,
            verified_cache_size=verified_cache_size,
        )
        self._method_scopes = dict(method_scopes)
        # Method -> its required scope, resolved once: only methods the server has a handler for
        # reach the authenticator, so this holds at most one entry per registered method.
        self._resolved: dict[str, str | None] = {}

    def required_scope(self, method: str) -> str | None:
        try:
            return self._resolved[method]
        except KeyError:
            pass
        scope = self._method_scopes.get(method)
        if scope is None:
            scope = self._method_scopes.get(method[: method.rfind("/") + 1] + "*")
        self._resolved[method] = scope
        return scope

    async def authenticate(self, method: str, context: RpcContext) -> Principal:
        token = bearer_token(context.invocation_metadata())
        try:
            claims = await self.verifier.verify(token)
        except InvalidToken as exc:
            log.info("token refused", extra={"rpc": method, "reason": exc.reason})
            raise Unauthenticated(f"invalid token: {exc.reason}") from None
        if claims.tenant_id is None:
            # Every stored resource is scoped to a tenant; a principal without one cannot be served.
            raise Unauthenticated("invalid token: missing_claim: tenant_id")
        required = self.required_scope(method)
        if required is not None and required not in claims.scopes:
            raise PermissionDenied(f"this call needs the scope {required}")
        return principal_from_claims(claims)


@asynccontextmanager
async def jwt_authenticator(
    audience: str,
    settings: AuthSettings,
    *,
    redis: aioredis.Redis,
    redis_key_prefix: str,
    channel: grpc.aio.Channel,
    method_scopes: Mapping[str, str],
) -> AsyncIterator[JwtAuthenticator]:
    """A JwtAuthenticator whose keys come from TokenService.GetJwks over `channel` (the mesh),
    refreshed in the background while the block runs."""
    jwks = JwksCache(
        token_service_fetch(channel),
        refresh_seconds=settings.jwks_refresh_seconds,
        unknown_kid_refresh_seconds=settings.jwks_unknown_kid_refresh_seconds,
    )
    await jwks.start()
    try:
        yield JwtAuthenticator(
            audience,
            jwks,
            RevocationChecker(redis, redis_key_prefix),
            settings.issuer,
            method_scopes,
            max_delegation_depth=settings.max_delegation_depth,
        )
    finally:
        await jwks.stop()
