"""HTTP to the edge: the bearer token on every request, one renewal on a 401, a retry of what may
be retried, and every refusal as a `MacpError`.

What is retried, and why it is safe: a request that changes nothing (GET), and a POST the server
answers once whatever the number of attempts (a user message carries its id, which the platform
stores once: a retry answers 200 `duplicate`). They are retried on a broken connection and on
503 (a service restarting, docs/readiness.md), a few times with a short backoff. Nothing else is:
a PATCH or a DELETE is conditional on its etag and is the caller's to retry.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import cast
from urllib.parse import urlencode

import httpx

from macp_client.auth import TokenKeeper
from macp_client.errors import MacpConnectionError, MacpError, error_of_answer
from macp_client.types import TokenResponse

JsonObject = dict[str, object]
Params = Mapping[str, str | int | None]

RETRIES = 3
RETRY_BASE_SECONDS = 0.2


def _params(params: Params | None) -> dict[str, str | int] | None:
    if params is None:
        return None
    return {name: value for name, value in params.items() if value is not None}


def _body(response: httpx.Response) -> object:
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        return None


def raise_for(response: httpx.Response) -> None:
    """Nothing for a success; the `MacpError` of a refusal (its body must have been read)."""
    if response.is_success:
        return
    raise error_of_answer(response.status_code, _body(response), response.headers.get("retry-after"))


class Transport:
    """The HTTP side of one client: its base URL, its connection pool and its token."""

    def __init__(
        self,
        base_url: str,
        keeper: TokenKeeper,
        *,
        timeout: float = 30.0,
        trust_env: bool = True,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.keeper = keeper
        self.timeout = timeout
        self.trust_env = trust_env
        self._own_http = http is None
        self.http = http or httpx.AsyncClient(base_url=self.base_url, timeout=timeout, trust_env=trust_env)

    async def aclose(self) -> None:
        if self._own_http:
            await self.http.aclose()

    async def token_request(self, form: Sequence[tuple[str, str]]) -> TokenResponse:
        """RFC 6749 section 3.2's token request (the form's grant and client), unauthenticated."""
        document = await self.form("/oauth2/token", form)
        if not isinstance(document.get("access_token"), str):
            raise MacpError("invalid_response", "the token endpoint answered without an access_token")
        return cast(TokenResponse, document)

    async def form(self, path: str, form: Sequence[tuple[str, str]]) -> JsonObject:
        """POST an urlencoded form (the OAuth endpoints); the JSON answer, {} for an empty one."""
        response = await self._send("POST", path, content=urlencode(list(form)).encode(), headers=_FORM)
        document = _body(response)
        return document if isinstance(document, dict) else {}

    async def bearer(self) -> str | None:
        return await self.keeper.current(self)

    async def _send(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        authenticated: bool = False,
        retry: bool = False,
        params: Params | None = None,
        json: object = None,
        content: bytes | None = None,
    ) -> httpx.Response:
        attempt = 0
        renewed = False
        while True:
            sent = dict(headers or {})
            token = await self.bearer() if authenticated else None
            if token is not None:
                sent["authorization"] = f"Bearer {token}"
            try:
                response = await self.http.request(
                    method, path, headers=sent, params=_params(params), json=json, content=content
                )
            except httpx.TransportError as error:
                if not retry or attempt >= RETRIES:
                    raise MacpConnectionError(f"{method} {self.base_url}{path}: {error!r}") from error
            else:
                if response.status_code == 401 and authenticated and not renewed:
                    renewed = True
                    if await self.keeper.renew(self, token):
                        continue
                if not (retry and response.status_code == 503 and attempt < RETRIES):
                    raise_for(response)
                    return response
            attempt += 1
            await asyncio.sleep(RETRY_BASE_SECONDS * 2 ** (attempt - 1))

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: object = None,
        params: Params | None = None,
        headers: Mapping[str, str] | None = None,
        retry: bool | None = None,
    ) -> httpx.Response:
        """An authenticated request to the edge; its answer, or the `MacpError` it was refused with."""
        return await self._send(
            method,
            path,
            headers=headers,
            authenticated=True,
            retry=method == "GET" if retry is None else retry,
            params=params,
            json=json,
        )

    async def document(
        self,
        method: str,
        path: str,
        *,
        json: object = None,
        params: Params | None = None,
        headers: Mapping[str, str] | None = None,
        retry: bool | None = None,
    ) -> JsonObject:
        """`call`, and its answer's JSON object."""
        response = await self.call(method, path, json=json, params=params, headers=headers, retry=retry)
        body = _body(response)
        if not isinstance(body, dict):
            raise MacpError("invalid_response", f"{method} {path} answered no JSON object")
        return body

    @contextlib.asynccontextmanager
    async def stream(
        self, method: str, path: str, *, json: object = None, headers: Mapping[str, str] | None = None
    ) -> AsyncIterator[httpx.Response]:
        """A streamed answer (SSE), opened with the bearer token and renewed once on a 401."""
        for attempt in range(2):
            token = await self.bearer()
            sent = {**(headers or {}), **({"authorization": f"Bearer {token}"} if token else {})}
            request = self.http.build_request(
                method, path, json=json, headers=sent, timeout=self._stream_timeout
            )
            try:
                response = await self.http.send(request, stream=True)
            except httpx.TransportError as error:
                raise MacpConnectionError(f"{method} {self.base_url}{path}: {error!r}") from error
            try:
                if response.status_code == 401 and attempt == 0 and await self.keeper.renew(self, token):
                    continue
                if not response.is_success:
                    await response.aread()
                    raise_for(response)
                yield response
                return
            finally:
                await response.aclose()

    @property
    def _stream_timeout(self) -> httpx.Timeout:
        # A followed stream may be quiet for long (the edge sends a comment every 15 s): only
        # connecting is bounded, reading is as long as the caller keeps iterating.
        return httpx.Timeout(self.timeout, read=None)


_FORM = {"content-type": "application/x-www-form-urlencoded", "accept": "application/json"}
