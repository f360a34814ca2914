"""Authentication at the edge: every route but discovery, health and the OAuth endpoints needs a
valid access token for `urn:macp:edge`; each RPC the edge then makes carries a token exchanged
(RFC 8693) for the service it calls.

The check: `Authorization: Bearer <jwt>`, verified by the runtime's `TokenVerifier` (keys from
TokenService.GetJwks over the mesh, revocations from Redis). A missing or bad token is 401 with
`WWW-Authenticate: Bearer error="invalid_token"` and the edge's JSON error shape; keys or
revocations that cannot be checked right now are 503 (fail closed).

The exchange: subject_token = the caller's token, audience = the callee's `urn:macp:service:<name>`,
made by the edge's own client (internal, token-exchange grant). Exchanged tokens are cached per
(caller's jti, audience) until shortly before they expire, so a session costs one exchange per
callee, not one per request. The edge's client is `MACP_EDGE_CLIENT_ID`/`MACP_EDGE_CLIENT_SECRET`
when set, else the edge registers one for itself on first use with the token service's initial
access token (`MACP_TOKEN_INITIAL_ACCESS_TOKEN`, which the native stack hands every process).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from http import HTTPStatus

from macp.token.v1 import token_service_pb2_grpc as token_grpc
from starlette.types import ASGIApp, Receive, Scope, Send

from services.edge.errors import error_response
from services.runtime.auth.jwt import Claims, InvalidToken
from services.runtime.auth.settings import USER_SCOPES
from services.runtime.auth.token_client import ClientCredentials, ClientRegistration, TokenClient
from services.runtime.auth.verifier import TokenVerifier
from services.runtime.context import reset_quietly
from services.runtime.errors import Unavailable

log = logging.getLogger("macp.edge.auth")


PUBLIC_PATHS = frozenset({"/healthz", "/v1/openapi.json"})
PUBLIC_PREFIXES = ("/.well-known/", "/oauth2/")


@dataclass(frozen=True)
class Caller:
    """The verified caller of the current HTTP request: its token (to exchange) and its claims."""

    token: str
    claims: Claims


caller_var: ContextVar[Caller | None] = ContextVar("macp_edge_caller", default=None)


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
    """Refuses a non-public request without a valid token; sets `caller_var` for the handlers."""

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
        reset = caller_var.set(Caller(token, claims))
        try:
            await self._app(scope, receive, send)
        finally:
            reset_quietly(caller_var, reset)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, message: str) -> None:
        response = error_response(HTTPStatus.UNAUTHORIZED, "UNAUTHENTICATED", message)
        response.headers["www-authenticate"] = 'Bearer error="invalid_token"'
        await response(scope, receive, send)


# The edge's configured client (MACP_EDGE_CLIENT_ID/SECRET), as every service's own client is held.
EdgeClient = ClientCredentials


class TokenExchanger:
    """The caller's token exchanged for one addressed to a service, cached per (jti, audience)."""

    def __init__(
        self,
        stub: token_grpc.TokenServiceStub,
        *,
        client: EdgeClient | None,
        initial_access_token: str | None,
        timeout: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = TokenClient(
            stub,
            registration=ClientRegistration(name="macp edge", scopes=USER_SCOPES),
            credentials=client,
            initial_access_token=initial_access_token,
            timeout=timeout,
            clock=clock,
        )

    async def exchange(self, caller: Caller, audience: str, metadata: tuple[tuple[str, str], ...]) -> str:
        return await self._client.exchange(caller.claims.jti, caller.token, audience, metadata)
