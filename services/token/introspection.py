"""RFC 7662 introspection: anything not valid right now (bad signature, expired, revoked, used,
unknown) is just `active: false`, with no reason given.

Only an authenticated confidential client asks (RFC 7662 2.1; the token itself is no credential, or
whoever found one could learn whose it is): invalid_client otherwise. And it learns only about its
own tenant's tokens, MACP's internal clients about any: a token of another tenant is `active: false`,
as RFC 7662 2.2 has it for a token the caller may not introspect.
"""

from __future__ import annotations

from datetime import UTC, datetime

from macp.token.v1 import token_service_pb2 as pb

from services.token.clients import Clients
from services.token.hashing import hash_refresh_token
from services.token.oauth import oauth_error
from services.token.scopes import INTERNAL
from services.token.store.directory import DirectoryStore
from services.token.store.tokens import TokenStore
from services.token.verification import TokenVerifier

INACTIVE = pb.IntrospectResponse(active=False)


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2


class Introspection:
    def __init__(
        self,
        clients: Clients,
        verifier: TokenVerifier,
        tokens: TokenStore,
        directory: DirectoryStore,
        issuer: str,
    ) -> None:
        self._clients = clients
        self._verifier = verifier
        self._tokens = tokens
        self._directory = directory
        self._issuer = issuer

    async def introspect(self, token: str, client_id: str, client_secret: str) -> pb.IntrospectResponse:
        caller = await self._clients.authenticate(client_id, client_secret)
        if caller.secret_hash is None:
            raise oauth_error("invalid_client", "introspection needs a confidential client and its secret")
        if looks_like_jwt(token):
            found, tenant_id = await self._access_token(token)
        else:
            found, tenant_id = await self._refresh_token(token)
        if caller.client_class != INTERNAL and tenant_id != caller.tenant_id:
            return INACTIVE
        return found

    async def _access_token(self, token: str) -> tuple[pb.IntrospectResponse, str | None]:
        claims = await self._verifier.check(token)
        if claims is None:
            return INACTIVE, None
        who = claims.identity
        return pb.IntrospectResponse(
            active=True,
            scope=" ".join(claims.scopes),
            client_id=who.client_id,
            username=await self._username(who.user_id) or who.sub,
            token_type="Bearer",
            exp=claims.exp,
            iat=claims.iat,
            nbf=claims.nbf,
            sub=who.sub,
            aud=list(claims.aud),
            iss=claims.iss,
            jti=claims.jti,
            principal=claims.principal(),
        ), who.tenant_id

    async def _refresh_token(self, token: str) -> tuple[pb.IntrospectResponse, str | None]:
        record = await self._tokens.refresh(hash_refresh_token(token))
        if (
            record is None
            or record.use_time is not None
            or record.revoke_time is not None
            or record.expire_time <= datetime.now(UTC)
        ):
            return INACTIVE, None
        user = await self._directory.user(record.user_id)
        if user is None:
            return INACTIVE, None
        return pb.IntrospectResponse(
            active=True,
            scope=" ".join(record.scopes),
            client_id=record.client_id,
            username=user.username,
            token_type="refresh_token",
            exp=int(record.expire_time.timestamp()),
            iat=int(record.issue_time.timestamp()),
            sub=record.user_id,
            aud=list(record.audiences),
            iss=self._issuer,
        ), user.tenant_id

    async def _username(self, user_id: str | None) -> str | None:
        if user_id is None:
            return None
        user = await self._directory.user(user_id)
        return None if user is None else user.username
