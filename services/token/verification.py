"""Strict verification of tokens this service issued, by the runtime's `jwt.verify` (one definition
of a valid token for the whole mesh) against this service's published keys, plus revocation.

Every input token (exchange, introspection, revocation, admin bearer) passes through here. The
token service accepts its tokens whatever their audience (a user's token for the edge is what gets
exchanged), so `audience=None` skips that one check; the bearer guard asks for its own audience.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from typing import Any

from services.runtime.auth import jwt
from services.runtime.auth.external import ExternalIssuers
from services.token.claims import AccessClaims, Identity, MalformedToken
from services.token.revocation_records import RevocationRecords
from services.token.signing import SigningKeys

log = logging.getLogger("macp.token.verification")


class InvalidToken(Exception):
    """The token is not one to honour. The reason goes to logs; callers answer only 'invalid'."""


def _segment(token: str, index: int) -> Any:
    """One JSON segment of a JWS, unverified: only to pick which key and audience to verify with."""
    parts = token.split(".")
    if len(parts) != 3:
        raise InvalidToken("not a JWS compact serialisation")
    text = parts[index]
    try:
        return json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, ValueError, RecursionError) as exc:
        raise InvalidToken(f"segment {index} is not base64url JSON") from exc


def _claimed(token: str) -> tuple[str, str]:
    """The kid and first audience the token claims, before anything about it is trusted."""
    header, payload = _segment(token, 0), _segment(token, 1)
    kid = header.get("kid") if isinstance(header, dict) else None
    aud = payload.get("aud") if isinstance(payload, dict) else None
    first = aud[0] if isinstance(aud, list) and aud else aud
    if not isinstance(kid, str) or not jwt.KID_PATTERN.fullmatch(kid) or not isinstance(first, str):
        raise InvalidToken("no valid kid or no audience")
    return kid, first


class TokenVerifier:
    def __init__(
        self,
        keys: SigningKeys,
        revocations: RevocationRecords,
        issuer: str,
        max_delegation_depth: int,
        external: ExternalIssuers | None = None,
    ) -> None:
        self._external = external
        self._keys = keys
        self._revocations = revocations
        self._issuer = issuer
        self._max_delegation_depth = max_delegation_depth

    async def verify(self, token: str, audience: str | None = None) -> AccessClaims:
        kid, claimed_audience = _claimed(token)
        public_key = await self._keys.public_key(kid)
        try:
            verified = jwt.verify(
                token,
                keys={} if public_key is None else {kid: public_key},
                issuer=self._issuer,
                audience=claimed_audience if audience is None else audience,
                max_delegation_depth=self._max_delegation_depth,
            )
            claims = AccessClaims.from_jwt(dict(verified.raw))
        except (jwt.InvalidToken, MalformedToken) as exc:
            raise InvalidToken(str(exc)) from None
        if await self._revocations.is_revoked(claims.jti):
            raise InvalidToken("revoked")
        return claims

    async def check(self, token: str, audience: str | None = None) -> AccessClaims | None:
        """The claims of a valid token, or None (the reason logged at debug level)."""
        try:
            return await self.verify(token, audience)
        except InvalidToken as exc:
            log.debug("token refused", extra={"reason": str(exc)})
            return None

    async def check_subject(self, token: str) -> AccessClaims | None:
        """`check` for an exchange's subject token, which may also come from a configured outside
        issuer (a user signed in with Cognito or Keycloak): its claims, mapped to MACP's, or None."""
        issuer = jwt.unverified_issuer(token)
        if not self._external or issuer is None or issuer == self._issuer or issuer not in self._external:
            return await self.check(token)
        try:
            verified = await self._external.verify(token, issuer)
            claims = external_access_claims(verified)
        except (jwt.InvalidToken, MalformedToken) as exc:
            log.debug("external subject token refused", extra={"reason": str(exc)})
            return None
        if await self._revocations.is_revoked(claims.jti):
            return None
        return claims


def external_access_claims(verified: jwt.Claims) -> AccessClaims:
    """An outside issuer's verified token as the claims of ours it is exchanged from."""
    # verify_external requires a tenant and a tier and always names a client; say so if that changes.
    if verified.tenant_id is None or verified.tier is None or verified.client_id is None:
        raise MalformedToken("an external token without a tenant, a tier or a client")
    identity = Identity(
        sub=verified.sub,
        client_id=verified.client_id,
        client_class=verified.client_class or "consumer",
        tenant_id=verified.tenant_id,
        tier=verified.tier,
        user_id=verified.user_id,
    )
    return AccessClaims(
        iss=verified.iss,
        aud=verified.aud,
        exp=int(verified.exp),
        iat=int(verified.iat),
        nbf=int(verified.nbf if verified.nbf is not None else verified.iat),
        jti=verified.jti,
        scopes=verified.scopes,
        identity=identity,
    )
