"""Access tokens a MACP service gets for itself from an outside authorization server: OAuth 2.0
client credentials (RFC 6749 section 4.4) with a client registered there, authenticated with HTTP
Basic (client_secret_basic, section 2.3.1), the grant's scope and RFC 8707 resource asked for.

The tool gateway gets one for an upstream MCP server registered with CLIENT_CREDENTIALS
(services/tool_gateway/client_credentials.py), the agent proxy one for an outside A2A agent
(services/agent_proxy/remote_credentials.py): both hold the client's secret sealed at rest and open
it for the call.

A token is the service's, not a caller's: one serves every call of its holder (a registration, by
id and etag) until shortly before it expires (`expires_in`; a token without one is reused for
DEFAULT_LIFETIME_SECONDS), kept in this process, so a new registration never uses an old one's
token. While one token is being fetched for a holder, the other calls wait for it rather than ask
again. Whatever keeps the service from a token (the endpoint unreachable or refusing, an answer out
of protocol) is a `CredentialFailure` naming the holder and what the authorization server said,
never the secret. An answer that says the server is only momentarily unable (502, 503, 504: a
replica restarting, a readiness probe late) is asked once more after its Retry-After (at most
MAX_RETRY_PAUSE_SECONDS) or RETRY_PAUSE_SECONDS, so a blip costs a call a moment rather than
failing it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus

import httpx

# Reused this long when the answer says nothing of the token's lifetime.
DEFAULT_LIFETIME_SECONDS = 60.0
# A token is fetched again this long before it expires (half its lifetime, for short ones), so no
# call sets out with a token about to lapse.
EARLY_SECONDS = 30.0
# Answers that say "not now" rather than "no": asked once more, after a pause.
MOMENTARY_STATUSES = frozenset({502, 503, 504})
RETRY_PAUSE_SECONDS = 0.25
MAX_RETRY_PAUSE_SECONDS = 2.0
# The most of an answer read: a token response is a few KiB at most.
MAX_ANSWER_BYTES = 64 * 1024
# The most of the authorization server's own error text passed on.
MAX_DESCRIPTION = 200
# What a bearer token sent in a header may hold (RFC 6750 2.1 allows less; no more is safe to send).
_VISIBLE = re.compile(r"[\x21-\x7e]+")

# Who holds a token: a registration's id and etag (a new etag is a new registration).
Holder = tuple[str, str]


class CredentialFailure(Exception):
    """No credential for an outside call could be had; the message names the holder, never a secret."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class ClientGrant:
    """Where and as whom to ask: the token endpoint, the client's id there, the scope (space-
    delimited; empty asks for the client's default) and the RFC 8707 resource (empty: none)."""

    token_url: str
    client_id: str
    scope: str = ""
    resource: str = ""


@dataclass(frozen=True)
class _Held:
    token: str
    until: float


def basic_authorization(client_id: str, secret: str) -> str:
    """RFC 6749 2.3.1: the id and secret form-urlencoded, then joined for HTTP Basic."""
    pair = f"{quote_plus(client_id, safe='')}:{quote_plus(secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


class ClientCredentialsTokens:
    def __init__(self, timeout_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._timeout = timeout_seconds
        self._clock = clock
        self._held: dict[Holder, _Held] = {}
        self._fetching: dict[Holder, asyncio.Lock] = {}

    async def token(self, holder: Holder, who: str, grant: ClientGrant, secret: str) -> str:
        """A bearer token of `grant` for `holder`; `who` names the holder in a failure."""
        held = self._held.get(holder)
        if held is not None and self._clock() < held.until:
            return held.token
        lock = self._fetching.setdefault(holder, asyncio.Lock())
        async with lock:
            held = self._held.get(holder)
            if held is not None and self._clock() < held.until:
                return held.token  # another call fetched it while this one waited
            token, lifetime = await self._fetch(who, grant, secret)
            self._keep(holder, _Held(token, self._clock() + lifetime - min(EARLY_SECONDS, lifetime / 2)))
            return token

    def _keep(self, holder: Holder, held: _Held) -> None:
        """Hold `held`, dropping what no call will use again: expired tokens and the holder's
        earlier registrations."""
        now = self._clock()
        for old in [
            k for k, h in self._held.items() if h.until <= now or (k[0] == holder[0] and k != holder)
        ]:
            del self._held[old]
            if old != holder:
                self._fetching.pop(old, None)
        self._held[holder] = held

    async def _fetch(self, who: str, grant: ClientGrant, secret: str) -> tuple[str, float]:
        """A fresh token and its lifetime in seconds."""
        form = {"grant_type": "client_credentials"}
        if grant.scope:
            form["scope"] = grant.scope
        if grant.resource:
            form["resource"] = grant.resource
        headers = {
            "authorization": basic_authorization(grant.client_id, secret),
            "accept": "application/json",
        }
        where = f"no token for {who} could be had from {grant.token_url}"
        status, body, retry_after = await self._post(grant.token_url, form, headers, where)
        if status in MOMENTARY_STATUSES:
            await asyncio.sleep(min(retry_after or RETRY_PAUSE_SECONDS, MAX_RETRY_PAUSE_SECONDS))
            status, body, _ = await self._post(grant.token_url, form, headers, where)
        if len(body) > MAX_ANSWER_BYTES:
            raise CredentialFailure(f"{where}: the answer is over {MAX_ANSWER_BYTES} bytes")
        answer = _json_object(body)
        if status != 200:
            raise CredentialFailure(f"{where}: it answered HTTP {status}{_oauth_error(answer)}")
        return _token_of(answer, where)

    async def _post(
        self, url: str, form: dict[str, str], headers: dict[str, str], where: str
    ) -> tuple[int, bytes, float | None]:
        """The token endpoint's status, (capped) body and Retry-After in seconds, for one request."""
        try:
            async with (
                httpx.AsyncClient(timeout=self._timeout, trust_env=False) as http,
                http.stream("POST", url, data=form, headers=headers) as response,
            ):
                return response.status_code, await _read_capped(response), _seconds(response.headers)
        except httpx.HTTPError as exc:
            raise CredentialFailure(f"{where}: {type(exc).__name__}: {exc}") from None


def _seconds(headers: httpx.Headers) -> float | None:
    """Retry-After as a number of seconds (RFC 9110 10.2.3); None for a date or nothing."""
    value = headers.get("retry-after", "").strip()
    return float(value) if value.isdigit() else None


async def _read_capped(response: httpx.Response) -> bytes:
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > MAX_ANSWER_BYTES:
            break
    return bytes(body)


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        document = json.loads(body)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def _oauth_error(answer: dict[str, Any] | None) -> str:
    """`: invalid_client (the description)` from an RFC 6749 5.2 error answer, if it is one."""
    if answer is None or not isinstance(answer.get("error"), str):
        return ""
    description = answer.get("error_description")
    text = f": {answer['error'][:MAX_DESCRIPTION]}"
    if isinstance(description, str) and description:
        text += f" ({description[:MAX_DESCRIPTION]})"
    return text


def _token_of(answer: dict[str, Any] | None, where: str) -> tuple[str, float]:
    """RFC 6749 5.1: a bearer access_token (RFC 6750), and its expires_in if given."""
    if answer is None:
        raise CredentialFailure(f"{where}: the answer is not a JSON object")
    token = answer.get("access_token")
    if not isinstance(token, str) or not _VISIBLE.fullmatch(token):
        raise CredentialFailure(f"{where}: the answer has no usable access_token")
    token_type = answer.get("token_type")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise CredentialFailure(f"{where}: token_type {token_type!r} is not Bearer")
    expires_in = answer.get("expires_in", DEFAULT_LIFETIME_SECONDS)
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float) or expires_in <= 0:
        raise CredentialFailure(f"{where}: expires_in {expires_in!r} is not a positive number")
    return token, float(expires_in)
