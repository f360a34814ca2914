"""An MCP client that starts from nothing but the server's URL, with the official SDK's OAuth flow:
the 401's resource metadata, the authorization server's RFC 8414 metadata, dynamic registration
(RFC 7591), then a client-credentials token for the server's URL (RFC 8707 `resource`).

The SDK's `OAuthClientProvider` registers dynamically but then runs the authorization-code flow;
its `ClientCredentialsOAuthProvider` runs client credentials but only with a client registered
beforehand. This subclass is the one step between: the base class's discovery and registration,
then the client-credentials request built as the SDK's own builds it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx2
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken


class MemoryStorage:
    """Tokens and client information held for one client's life (the SDK's `TokenStorage`)."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client_info: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


class RegisteringClientCredentials(OAuthClientProvider):
    """Discovery and dynamic registration as the SDK does them, then client credentials."""

    def __init__(self, server_url: str, storage: MemoryStorage) -> None:
        metadata = OAuthClientMetadata(
            redirect_uris=None,
            grant_types=["client_credentials"],
            token_endpoint_auth_method="client_secret_basic",
            client_name="macp test MCP client",
        )
        super().__init__(server_url, metadata, storage)

    async def _perform_authorization(self) -> httpx2.Request:
        data = {"grant_type": "client_credentials", "resource": self.context.get_resource_url()}
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        data, headers = self.context.prepare_token_auth(data, headers)
        if self.context.client_metadata.scope:
            data["scope"] = self.context.client_metadata.scope
        return httpx2.Request("POST", self._get_token_endpoint(), data=data, headers=headers)


@asynccontextmanager
async def mcp_client(
    url: str, *, auth: httpx2.Auth | None = None, token: str | None = None, mode: str = "auto"
) -> AsyncIterator[Client]:
    """An SDK `Client` of `url`, authenticating with `auth` (an OAuth provider) or a fixed `token`."""
    headers = {"authorization": f"Bearer {token}"} if token else None
    async with (
        httpx2.AsyncClient(auth=auth, headers=headers, timeout=30, trust_env=False) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode) as client,
    ):
        yield client
