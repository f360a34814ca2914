"""What an example MCP server checks of each request when it is told its own URL: a MACP access
token (RS256, the token service's keys) addressed to that URL, and nothing else. Each accepted
token's claims are kept, so tests and the demo can show what reached the server: the user as `sub`,
the gateway (and the agent) in `act`, never the caller's own edge token.

MCP's authorization rules (2025-11-25, "Access Token Privilege Restriction") require a server to
accept only tokens issued for itself; this is that check, done the way MACP's own services do it
(services/runtime/auth/jwt.py), with the keys fetched from the token service's JWKS.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.types import ASGIApp, Receive, Scope, Send

from services.runtime.auth.jwks import keys_from_jwks
from services.runtime.auth.jwt import Claims, InvalidToken, verify

Keys = Callable[[], Awaitable[Mapping[str, rsa.RSAPublicKey]]]
# Where an example server shows what it accepted (GET), for the demo and for people trying it.
CLAIMS_PATH = "/claims"
# How many accepted tokens' claims it keeps, newest last.
KEPT_CLAIMS = 50
KEYS_SECONDS = 60.0


def keys_over_http(jwks_url: str) -> Keys:
    """The token service's keys read from its JWKS document (the edge serves it), reused for a
    minute: an example server runs outside the mesh, as any upstream does."""
    cached: dict[str, rsa.RSAPublicKey] = {}
    fetched_at = -KEYS_SECONDS

    async def keys() -> Mapping[str, rsa.RSAPublicKey]:
        nonlocal cached, fetched_at
        if time.monotonic() - fetched_at >= KEYS_SECONDS:
            async with httpx.AsyncClient(timeout=5, trust_env=False) as client:
                response = await client.get(jwks_url)
                response.raise_for_status()
            cached, fetched_at = keys_from_jwks(response.json()), time.monotonic()
        return cached

    return keys


class RequireAudience:
    """Refuses (401) a request whose bearer token is not a valid MACP token for `audience`."""

    def __init__(self, app: ASGIApp, *, audience: str, issuer: str, keys: Keys) -> None:
        self._app = app
        self._audience = audience
        self._issuer = issuer
        self._keys = keys
        self.received: list[Claims] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        if scope["path"] == CLAIMS_PATH and scope["method"] == "GET":
            await _claims(send, self.received[-KEPT_CLAIMS:])
            return
        authorization = dict(scope.get("headers", ())).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            await _refuse(send, "a bearer token is required")
            return
        try:
            claims = verify(
                token.strip(), keys=await self._keys(), issuer=self._issuer, audience=self._audience
            )
        except InvalidToken as exc:
            await _refuse(send, f"invalid token: {exc.reason}")
            return
        self.received.append(claims)
        del self.received[:-KEPT_CLAIMS]
        await self._app(scope, receive, send)


async def _refuse(send: Send, message: str) -> None:
    body: dict[str, Any] = {"error": "invalid_token", "error_description": message}
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"www-authenticate", b'Bearer error="invalid_token"'),
            ],
        }
    )
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


async def _claims(send: Send, received: list[Claims]) -> None:
    """The claims of the tokens accepted last, newest last: who called (`sub`, `tenant_id`), for
    whom it is (`aud`), what it may do (`scope`), and through whom (`act`)."""
    shown = [
        {
            name: claims.raw[name]
            for name in ("sub", "tenant_id", "aud", "scope", "act", "client_id")
            if name in claims.raw
        }
        for claims in received
    ]
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": json.dumps(shown).encode()})
