"""OpenID Connect ID tokens (Core 2, 3.1.3.3, 3.1.3.6): the client's proof of who signed in on the
sign-in page, issued beside the access token when the authorization code's scope had `openid`.

An ID token is for the client, not for a resource: its `aud` and `azp` are the client_id, and its
header's `typ` is `JWT`. Every MACP verifier (services/runtime/auth/jwt.py, Envoy's jwt_authn)
requires `typ: at+jwt` and an audience of its own (`urn:macp:edge`, `urn:macp:service:*`), so an
ID token presented as a Bearer token is refused twice over. It is not recorded, audited or
revocable like an access token: it grants nothing, and it expires with the access token it was
issued with (`exp` is that token's).

It is signed with the current signing key, the one the JWKS publishes first, so a client verifies
it exactly as it would an access token's signature; `at_hash` (Core 3.1.3.6) binds it to that
access token, `nonce` to the authentication request, and `auth_time` is when the password was
checked (Authorize), not when the code was redeemed. `preferred_username` and `tenant_id` are what
userinfo (userinfo.py) says of the user at that moment.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from services.runtime.auth.jwt import b64url_encode
from services.token.minting import Minted
from services.token.signing import SigningKeys
from services.token.store.codes import AuthorizationCode
from services.token.store.directory import User


def at_hash(access_token: str) -> str:
    """Core 3.1.3.6: base64url of the left half of the SHA-256 of the access token's ASCII (RS256)."""
    digest = hashlib.sha256(access_token.encode("ascii")).digest()
    return b64url_encode(digest[: len(digest) // 2])


class IdTokens:
    def __init__(self, keys: SigningKeys, issuer: str) -> None:
        self._keys = keys
        self._issuer = issuer

    async def issue(self, client_id: str, user: User, code: AuthorizationCode, access: Minted) -> str:
        """The ID token of `user`'s sign-in that `code` recorded, issued to `client_id` with `access`."""
        claims: dict[str, Any] = {
            "iss": self._issuer,
            "sub": user.user_id,
            "aud": client_id,
            "exp": access.claims.exp,
            "iat": int(time.time()),
            "auth_time": int(code.auth_time.timestamp()),
            "azp": client_id,
            "at_hash": at_hash(access.token),
            "preferred_username": user.username,
            "tenant_id": user.tenant_id,
        }
        if code.nonce is not None:
            claims["nonce"] = code.nonce
        signer = await self._keys.signer()
        return signer.sign_id_token(claims)
