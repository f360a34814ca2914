"""The MCP endpoint as an OAuth protected resource (MCP authorization 2025-11-25, RFC 9728, RFC 6750).

Every request to `/mcp` carries `Authorization: Bearer <token>`, a MACP access token whose audience
is the endpoint's own URL (`<issuer>/mcp`, bound by the RFC 8707 `resource` the client sent at the
token endpoint): a token for the edge or a mesh service is refused like a forged one, so a token
meant for somewhere else is never accepted here (the spec's audience rule).
- No token, or one that does not verify: 401 with `WWW-Authenticate: Bearer resource_metadata=
  "<issuer>/.well-known/oauth-protected-resource/mcp"`, where a client discovers the token service
  as the authorization server (and the scopes it may ask for).
- A valid token without the scope the JSON-RPC method needs (`tools/list`: tools:read,
  `tools/call`: tools:call): 403 with `error="insufficient_scope"` and the scope, so the client
  can step up.
Two layers, so the rate limits fit between them (services/tool_gateway/mcp_limits.py): `RequireToken`
verifies the token and puts the caller (token and principal) in the ASGI scope, where the limits
and then the MCP handlers find it; `RequireScopes` reads the JSON-RPC method from the body before
the MCP transport reads it (the body is then handed on as it came).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from mcp.server.transport_security import DEFAULT_MAX_REQUEST_BODY_SIZE
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.runtime.auth.authenticator import principal_from_claims
from services.runtime.auth.jwt import InvalidToken
from services.runtime.auth.settings import MCP_SCOPES
from services.runtime.auth.verifier import TokenVerifier
from services.runtime.errors import Unavailable
from services.runtime.principal import Caller

log = logging.getLogger("macp.tool_gateway.mcp")

PROTECTED_RESOURCE_PREFIX = "/.well-known/oauth-protected-resource"
CALLER_KEY = "macp.caller"
# The scope each JSON-RPC method needs; any other (initialize, ping, discovery, notifications)
# needs a valid token only.
METHOD_SCOPES = {"tools/list": "tools:read", "tools/call": "tools:call"}
RETRY_AFTER_SECONDS = 1
MAX_TOKEN_CHARS = 8192


@dataclass(frozen=True)
class ProtectedResource:
    """The endpoint's URL (the audience of its tokens) and its authorization server's issuer."""

    url: str
    issuer: str

    @property
    def path(self) -> str:
        return urlsplit(self.url).path

    @property
    def metadata_path(self) -> str:
        """RFC 9728 section 3.1: the well-known prefix inserted before the resource's path."""
        return PROTECTED_RESOURCE_PREFIX + self.path

    @property
    def metadata_url(self) -> str:
        parts = urlsplit(self.url)
        return urlunsplit((parts.scheme, parts.netloc, self.metadata_path, "", ""))

    def metadata(self) -> dict[str, Any]:
        """The RFC 9728 document: the token service is the one authorization server."""
        return {
            "resource": self.url,
            "authorization_servers": [self.issuer],
            "scopes_supported": list(MCP_SCOPES),
            "bearer_methods_supported": ["header"],
            "resource_name": "MACP tool gateway",
        }

    def challenge(self, **params: str) -> str:
        fields = {"resource_metadata": self.metadata_url, **params}
        return "Bearer " + ", ".join(f'{name}="{value}"' for name, value in fields.items())


def required_scopes(body: bytes) -> set[str]:
    """The scopes the JSON-RPC message (or batch) in `body` needs; none for what is not one (the
    transport answers that with its own error)."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return set()
    messages = document if isinstance(document, list) else [document]
    needed = set()
    for message in messages:
        if isinstance(message, dict) and isinstance(message.get("method"), str):
            scope = METHOD_SCOPES.get(message["method"])
            if scope is not None:
                needed.add(scope)
    return needed


def _bearer(scope: Scope) -> str | None:
    values = [value for name, value in scope.get("headers", ()) if name == b"authorization"]
    if len(values) != 1:
        return None
    header: bytes = values[0]
    kind, _, token = header.decode("latin-1").partition(" ")
    token = token.strip()
    if kind.lower() != "bearer" or not token or len(token) > MAX_TOKEN_CHARS:
        return None
    return token


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None past the transport's own limit."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > DEFAULT_MAX_REQUEST_BODY_SIZE:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replaying(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands `body` on once, then whatever the connection says next."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _challenge_response(
    resource: ProtectedResource,
    status: int,
    error: str,
    description: str,
    *,
    scope_needed: str = " ".join(MCP_SCOPES),
) -> Response:
    # RFC 6750 section 3: no error code when no credentials were sent at all.
    params = {"scope": scope_needed} if error == "unauthorized" else {"error": error, "scope": scope_needed}
    return JSONResponse(
        {"error": error, "error_description": description},
        status_code=status,
        headers={"www-authenticate": resource.challenge(**params)},
    )


def request_caller(scope: Scope) -> Caller:
    """The caller `RequireToken` put in `scope`; only what it let through is ever asked."""
    caller = scope.get(CALLER_KEY)
    if not isinstance(caller, Caller):
        raise RuntimeError("RequireToken must run before what reads the caller")
    return caller


class RequireToken:
    """ASGI middleware: a valid token for the resource, or 401 (see the module docstring)."""

    def __init__(self, app: ASGIApp, resource: ProtectedResource, verifier: TokenVerifier) -> None:
        self._app = app
        self._resource = resource
        self._verifier = verifier

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        token = _bearer(scope)
        if token is None:
            refusal = _challenge_response(
                self._resource, 401, "unauthorized", "this endpoint needs a bearer token"
            )
            await refusal(scope, receive, send)
            return
        try:
            claims = await self._verifier.verify(token)
        except InvalidToken as exc:
            log.info("token refused", extra={"reason": exc.reason})
            refusal = _challenge_response(
                self._resource, 401, "invalid_token", f"invalid token: {exc.reason}"
            )
            await refusal(scope, receive, send)
            return
        except Unavailable as exc:
            await JSONResponse(
                {"error": "temporarily_unavailable", "error_description": exc.message},
                status_code=503,
                headers={"retry-after": str(RETRY_AFTER_SECONDS)},
            )(scope, receive, send)
            return
        if claims.tenant_id is None:
            refusal = _challenge_response(
                self._resource, 401, "invalid_token", "invalid token: missing_claim: tenant_id"
            )
            await refusal(scope, receive, send)
            return
        scope[CALLER_KEY] = Caller(token, principal_from_claims(claims))
        await self._app(scope, receive, send)


class RequireScopes:
    """ASGI middleware after `RequireToken`: the scopes the JSON-RPC method in the body needs, or
    403 `insufficient_scope` naming them."""

    def __init__(self, app: ASGIApp, resource: ProtectedResource) -> None:
        self._app = app
        self._resource = resource

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self._app(scope, receive, send)
            return
        body = await _read_body(receive)
        if body is None:
            await JSONResponse({"error": "the request body is too large"}, status_code=413)(
                scope, receive, send
            )
            return
        held = request_caller(scope).principal.scopes
        missing = sorted(required_scopes(body) - set(held))
        if missing:
            needed = " ".join(missing)
            refusal = _challenge_response(
                self._resource,
                403,
                "insufficient_scope",
                f"this request needs the scope {needed}",
                scope_needed=needed,
            )
            await refusal(scope, receive, send)
            return
        await self._app(scope, _replaying(body, receive), send)
