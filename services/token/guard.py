"""The bearer check of the token service's privileged RPCs (IssueAgentToken, the admin ones).

The token service cannot sit behind the mesh's usual authenticator: IssueToken is how a caller
gets its first token. So its public RPCs authenticate the client in the request body, and the
privileged ones call this guard: a token of ours for `urn:macp:service:token` with the scope.
"""

from __future__ import annotations

from services.runtime.context import RpcContext
from services.token.audiences import TOKEN_SERVICE_AUDIENCE
from services.token.claims import AccessClaims
from services.token.credentials import bearer_token
from services.token.oauth import oauth_error
from services.token.verification import TokenVerifier


class BearerGuard:
    def __init__(self, verifier: TokenVerifier) -> None:
        self._verifier = verifier

    async def require(self, context: RpcContext, scope: str) -> AccessClaims:
        claims = await self.bearer(context, f" with scope {scope}")
        if scope not in claims.scopes:
            raise oauth_error("insufficient_scope", f"this RPC needs scope {scope}")
        return claims

    async def bearer(self, context: RpcContext, needing: str = "") -> AccessClaims:
        """The claims of the call's bearer token, whatever its scopes; invalid_token without a valid one."""
        token = bearer_token(context)
        if token is None:
            raise oauth_error("invalid_token", f"this RPC needs `authorization: Bearer <token>`{needing}")
        claims = await self._verifier.check(token, audience=TOKEN_SERVICE_AUDIENCE)
        if claims is None:
            raise oauth_error("invalid_token", f"the bearer token is not valid for {TOKEN_SERVICE_AUDIENCE}")
        return claims
