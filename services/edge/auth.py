"""Authentication at the edge: every route but discovery, health and the OAuth endpoints needs a
valid access token for `urn:macp:edge`; each RPC the edge then makes carries a token exchanged
(RFC 8693) for the service it calls.

The check: `Authorization: Bearer <jwt>`, verified by the runtime's `TokenVerifier` (keys from
TokenService.GetJwks over the mesh, revocations from Redis). A missing or bad token is 401 with
`WWW-Authenticate: Bearer error="invalid_token"` and the edge's JSON error shape (OpenAI's, with
code `invalid_api_key`, on the OpenAI-compatible paths: services/edge/rest/openai_errors.py); keys
or revocations that cannot be checked right now are 503 (fail closed).

The exchange is the mesh channel's (services/runtime/auth/caller_tokens.py): the middleware sets
the caller (services/runtime/principal.py), and each call a handler makes carries the caller's
token exchanged for the callee's `urn:macp:service:<name>` by the edge's own client (internal,
token-exchange grant), cached per (caller's jti, audience) until shortly before it expires, so a
session costs one exchange per callee, not one per request. The edge's client is
`MACP_EDGE_CLIENT_ID`/`MACP_EDGE_CLIENT_SECRET` when set, else the edge registers one for itself
on first use with the token service's initial access token (`MACP_TOKEN_INITIAL_ACCESS_TOKEN`,
which the native stack hands every process).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from http import HTTPStatus

from starlette.types import ASGIApp, Receive, Scope, Send

from services.edge.errors import error_response
from services.runtime.auth.authenticator import principal_from_claims
from services.runtime.auth.jwt import InvalidToken
from services.runtime.auth.verifier import TokenVerifier
from services.runtime.context import reset_quietly
from services.runtime.errors import Unavailable
from services.runtime.principal import Caller, caller_var

log = logging.getLogger("macp.edge.auth")


PUBLIC_PATHS = frozenset({"/healthz", "/livez", "/v1/openapi.json"})
PUBLIC_PREFIXES = ("/.well-known/", "/oauth2/")


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def bearer_token(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The token of the one `Authorization: Bearer` header, else None (none, two, another scheme)."""
    values = [value for name, value in headers if name == b"authorization"]
    if len(values) != 1:
        return None
    scheme, _, token = values[0].decode("latin-1").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class BearerAuthMiddleware:
    """Refuses a non-public request without a valid token; sets the caller for the handlers."""

    def __init__(self, app: ASGIApp, verifier: Callable[[], TokenVerifier]) -> None:
        self._app = app
        self._verifier = verifier

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or is_public(scope.get("path", "")):
            await self._app(scope, receive, send)
            return
        token = bearer_token(scope.get("headers", ()))
        if token is None:
            await self._refuse(scope, receive, send, "this route needs `Authorization: Bearer <token>`")
            return
        try:
            claims = await self._verifier().verify(token)
        except InvalidToken as exc:
            log.info("token refused", extra={"path": scope.get("path"), "reason": exc.reason})
            await self._refuse(scope, receive, send, f"invalid token: {exc.reason}")
            return
        except Unavailable as exc:
            response = error_response(HTTPStatus.SERVICE_UNAVAILABLE, "UNAVAILABLE", exc.message)
            await response(scope, receive, send)
            return
        if claims.tenant_id is None:
            await self._refuse(scope, receive, send, "invalid token: missing_claim: tenant_id")
            return
        reset = caller_var.set(Caller(token, principal_from_claims(claims)))
        try:
            await self._app(scope, receive, send)
        finally:
            reset_quietly(caller_var, reset)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, message: str) -> None:
        response = error_response(HTTPStatus.UNAUTHORIZED, "UNAUTHENTICATED", message)
        response.headers["www-authenticate"] = 'Bearer error="invalid_token"'
        await response(scope, receive, send)
