"""RFC 7662 introspection: anything not valid right now (bad signature, expired, revoked, used,
unknown) is just `active: false`, with no reason given."""

from __future__ import annotations

from datetime import UTC, datetime

from macp.token.v1 import token_service_pb2 as pb

from services.token.hashing import hash_refresh_token
from services.token.store.directory import DirectoryStore
from services.token.store.tokens import TokenStore
from services.token.verification import TokenVerifier

INACTIVE = pb.IntrospectResponse(active=False)


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2


class Introspection:
    def __init__(
        self, verifier: TokenVerifier, tokens: TokenStore, directory: DirectoryStore, issuer: str
    ) -> None:
        self._verifier = verifier
        self._tokens = tokens
        self._directory = directory
        self._issuer = issuer

    async def introspect(self, token: str) -> pb.IntrospectResponse:
        if looks_like_jwt(token):
            return await self._access_token(token)
        return await self._refresh_token(token)

    async def _access_token(self, token: str) -> pb.IntrospectResponse:
        claims = await self._verifier.check(token)
        if claims is None:
            return INACTIVE
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
        )

    async def _refresh_token(self, token: str) -> pb.IntrospectResponse:
        record = await self._tokens.refresh(hash_refresh_token(token))
        if (
            record is None
            or record.use_time is not None
            or record.revoke_time is not None
            or record.expire_time <= datetime.now(UTC)
        ):
            return INACTIVE
        return pb.IntrospectResponse(
            active=True,
            scope=" ".join(record.scopes),
            client_id=record.client_id,
            username=await self._username(record.user_id) or record.user_id,
            token_type="refresh_token",
            exp=int(record.expire_time.timestamp()),
            iat=int(record.issue_time.timestamp()),
            sub=record.user_id,
            aud=list(record.audiences),
            iss=self._issuer,
        )

    async def _username(self, user_id: str | None) -> str | None:
        if user_id is None:
            return None
        user = await self._directory.user(user_id)
        return None if user is None else user.username
