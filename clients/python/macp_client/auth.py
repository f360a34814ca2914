"""OAuth 2.0 against the platform's token endpoint (`/oauth2/token`, RFC 6749), and the token a
client holds between its requests.

A client is given either a token (used as it is until it fails) or a grant: the password grant
(a user of a public or confidential client), client credentials (a confidential client acting as
itself) or a refresh token. It signs in on first use and keeps the access token fresh: a little
before it expires, and once when a request is refused with 401 (revoked, or the clock was off).
A refresh token is used when the grant gave one; the server rotates it on every use and revokes
the whole family when one is used twice, so renewals are serialised by one lock and a request
that saw a token fail renews only if nobody renewed since. When refreshing is refused
(`invalid_grant`: expired, revoked) the original grant is run again, which is why the client keeps
the credentials it was given, as every OAuth client library does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from macp_client.errors import MacpError
from macp_client.types import TokenResponse

# Renew this long before expiry at most (and a tenth of a short token's life at least).
RENEW_MARGIN_SECONDS = 30.0


def _common(
    form: dict[str, str],
    client_id: str,
    client_secret: str | None,
    scope: str | None,
    audience: Sequence[str] = (),
    resource: Sequence[str] = (),
) -> list[tuple[str, str]]:
    # client_secret_post (RFC 6749 section 2.3.1): the edge takes it as well as Basic, and it keeps
    # a public client (no secret) and a confidential one the same shape.
    fields = [*form.items(), ("client_id", client_id)]
    if client_secret is not None:
        fields.append(("client_secret", client_secret))
    if scope:
        fields.append(("scope", scope))
    fields.extend(("audience", target) for target in audience)
    fields.extend(("resource", target) for target in resource)
    return fields


@dataclass(frozen=True)
class Password:
    """The password grant: a user signing in through `client_id` (public: no secret).

    audience / resource: what the token is for (the edge when neither is given; a service's
    `urn:macp:service:<name>`, or RFC 8707 resource URIs)."""

    username: str
    password: str
    client_id: str
    client_secret: str | None = None
    scope: str | None = None
    audience: tuple[str, ...] = ()
    resource: tuple[str, ...] = ()

    def form(self) -> list[tuple[str, str]]:
        grant = {"grant_type": "password", "username": self.username, "password": self.password}
        return _common(grant, self.client_id, self.client_secret, self.scope, self.audience, self.resource)


@dataclass(frozen=True)
class ClientCredentials:
    """The client credentials grant: a confidential client acting as itself."""

    client_id: str
    client_secret: str
    scope: str | None = None
    audience: tuple[str, ...] = ()
    resource: tuple[str, ...] = ()

    def form(self) -> list[tuple[str, str]]:
        grant = {"grant_type": "client_credentials"}
        return _common(grant, self.client_id, self.client_secret, self.scope, self.audience, self.resource)


@dataclass(frozen=True)
class RefreshToken:
    """The refresh token grant (the server answers a new refresh token with the access token)."""

    refresh_token: str
    client_id: str
    client_secret: str | None = None
    scope: str | None = None

    def form(self) -> list[tuple[str, str]]:
        grant = {"grant_type": "refresh_token", "refresh_token": self.refresh_token}
        return _common(grant, self.client_id, self.client_secret, self.scope)


Grant = Password | ClientCredentials | RefreshToken


class TokenEndpoint(Protocol):
    """What the keeper needs of the transport: RFC 6749's token request."""

    async def token_request(self, form: Sequence[tuple[str, str]]) -> TokenResponse: ...


class TokenKeeper:
    """The access token of a client, renewed as the module docstring says."""

    def __init__(self, *, token: str | None = None, grant: Grant | None = None) -> None:
        self._grant = grant
        self._access = token
        self._refresh: str | None = None
        self._renew_at: float | None = None  # monotonic time; None: never (a token given as is)
        self._lock = asyncio.Lock()
        self.renewals = 0  # tokens replaced by a renewal (the first sign-in is none)

    @property
    def refresh_token(self) -> str | None:
        return self._refresh

    def _keep(self, answer: TokenResponse) -> None:
        self._access = answer["access_token"]
        self._refresh = answer.get("refresh_token") or self._refresh
        if isinstance(self._grant, RefreshToken) and self._refresh is not None:
            # A refresh token is spent by its use: running the grant again needs the one just received.
            self._grant = self._refreshing(self._grant, self._refresh)
        lifetime = float(answer["expires_in"])
        self._renew_at = time.monotonic() + lifetime - min(RENEW_MARGIN_SECONDS, lifetime / 10)

    async def sign_in(self, endpoint: TokenEndpoint, grant: Grant) -> TokenResponse:
        """Run `grant` now and keep what it gives (and the grant, to run again when refreshing fails)."""
        async with self._lock:
            answer = await endpoint.token_request(grant.form())
            self._grant = grant
            self._refresh = None
            self._keep(answer)
            return answer

    async def current(self, endpoint: TokenEndpoint) -> str | None:
        """The token to send now: signed in on first use, renewed when it is about to expire."""
        access = self._access
        due = self._renew_at is not None and time.monotonic() >= self._renew_at
        if access is not None and not due:
            return access
        if self._grant is None:
            return access
        await self.renew(endpoint, access)
        return self._access

    async def renew(self, endpoint: TokenEndpoint, stale: str | None) -> bool:
        """Renew the token that `stale` was; False when there is no way to (a token given as is).
        When someone renewed since `stale` was read, that renewal is the answer."""
        async with self._lock:
            if self._access is not None and self._access != stale:
                return True
            counted = 0 if self._access is None else 1  # the first sign-in renews nothing
            if self._refresh is not None and self._grant is not None:
                try:
                    answer = await endpoint.token_request(self._refreshing(self._grant, self._refresh).form())
                except MacpError as error:
                    if error.code != "invalid_grant":
                        raise
                    self._refresh = None  # expired or revoked: sign in again below
                else:
                    self._keep(answer)
                    self.renewals += counted
                    return True
            if self._grant is None:
                return False
            self._keep(await endpoint.token_request(self._grant.form()))
            self.renewals += counted
            return True

    @staticmethod
    def _refreshing(grant: Grant, refresh_token: str) -> RefreshToken:
        return RefreshToken(refresh_token, grant.client_id, grant.client_secret, grant.scope)
