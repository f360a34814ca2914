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
from services.token.claims import AccessClaims, MalformedToken
from services.token.revocation import Revocations
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
        self, keys: SigningKeys, revocations: Revocations, issuer: str, max_delegation_depth: int
    ) -> None:
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
