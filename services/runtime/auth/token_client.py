"""A service's own OAuth client at the token service, and the tokens it obtains with it.

Services that call others on a user's behalf (the edge, the orchestrator) hold an internal client:
configured (`client_id` + `client_secret`), or registered on first use (RFC 7591) with the token
service's initial access token, which the native stack hands every process. With it they:

- exchange (RFC 8693) a caller's token for one addressed to the service they call, optionally
  with an actor token (an agent acting for the user: `act` = the agent);
- get client-credentials tokens of their own (the orchestrator's, to mint agent tokens);
- mint agent tokens (`IssueAgentToken`) for the agents they run.

Every token is cached under a caller-chosen key until shortly before it expires, so a session
costs one token-service call per (caller, callee), not one per request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

from macp.common.v1 import principal_pb2
from macp.token.v1 import token_service_pb2 as token_pb
from macp.token.v1 import token_service_pb2_grpc as token_grpc

from services.runtime.errors import Unavailable

log = logging.getLogger("macp.auth.client")

EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
CLIENT_CREDENTIALS_GRANT = "client_credentials"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
# A cached token is reused until this many seconds before it expires.
EXPIRY_MARGIN_SECONDS = 30.0
MAX_CACHED_TOKENS = 10_000


@dataclass(frozen=True)
class ClientCredentials:
    client_id: str
    client_secret: str


@dataclass(frozen=True)
class ClientRegistration:
    """What a service registers for itself when it has no configured client."""

    name: str
    scopes: Sequence[str]
    grant_types: Sequence[str] = (EXCHANGE_GRANT,)


class TokenCache:
    """Tokens by key until their reuse deadline; bounded, expired entries dropped first."""

    def __init__(self, clock: Callable[[], float], limit: int = MAX_CACHED_TOKENS) -> None:
        self._clock = clock
        self._limit = limit
        self._entries: dict[Hashable, tuple[str, float]] = {}

    def get(self, key: Hashable) -> str | None:
        entry = self._entries.get(key)
        if entry is None or self._clock() >= entry[1]:
            return None
        return entry[0]

    def put(self, key: Hashable, token: str, expires_in: float) -> None:
        now = self._clock()
        if len(self._entries) >= self._limit:
            self._entries = {k: v for k, v in self._entries.items() if v[1] > now}
            if len(self._entries) >= self._limit:
                self._entries.clear()
        self._entries[key] = (token, now + expires_in - EXPIRY_MARGIN_SECONDS)


class TokenClient:
    """One service's client at the token service (see the module docstring)."""

    def __init__(
        self,
        stub: token_grpc.TokenServiceStub,
        *,
        registration: ClientRegistration,
        credentials: ClientCredentials | None,
        initial_access_token: str | None,
        timeout: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._stub = stub
        self._registration = registration
        self._credentials = credentials
        self._initial_access_token = initial_access_token
        self._timeout = timeout
        self._lock = asyncio.Lock()
        self._cache = TokenCache(clock)

    async def credentials(self) -> ClientCredentials:
        """The configured client, or the one registered for this process on first use."""
        if self._credentials is not None:
            return self._credentials
        async with self._lock:
            if self._credentials is None:
                self._credentials = await self._register()
            return self._credentials

    async def _register(self) -> ClientCredentials:
        name = self._registration.name
        if not self._initial_access_token:
            raise Unavailable(
                f"{name} has no client at the token service: set its client id and secret, or "
                "MACP_TOKEN_INITIAL_ACCESS_TOKEN so that it registers one"
            )
        reply: token_pb.RegisterClientResponse = await self._stub.RegisterClient(
            token_pb.RegisterClientRequest(
                initial_access_token=self._initial_access_token,
                metadata=token_pb.ClientMetadata(
                    client_name=name,
                    client_class=principal_pb2.CLIENT_CLASS_INTERNAL,
                    grant_types=list(self._registration.grant_types),
                    scope=" ".join(self._registration.scopes),
                ),
            ),
            timeout=self._timeout,
        )
        log.info("registered a token client", extra={"client_name": name, "client_id": reply.client_id})
        return ClientCredentials(reply.client_id, reply.client_secret)

    async def exchange(
        self,
        key: Hashable,
        subject_token: str,
        audience: str,
        *,
        actor_token: str = "",
        scope: str = "",
    ) -> str:
        """`subject_token` exchanged for `audience` (with `actor_token` as `act` if given), cached
        under (`key`, audience); `key` names the subject (its jti, or the token itself) and actor."""
        cache_key = (key, audience)
        cached = self._cache.get(cache_key)
        if cached is not None:
            return cached
        client = await self.credentials()
        request = token_pb.ExchangeTokenRequest(
            client_id=client.client_id,
            client_secret=client.client_secret,
            subject_token=subject_token,
            subject_token_type=ACCESS_TOKEN_TYPE,
            actor_token=actor_token,
            actor_token_type=ACCESS_TOKEN_TYPE if actor_token else "",
            scope=scope,
        )
        # A URL is a resource outside the mesh (RFC 8707: an upstream MCP server), a URN one of its
        # audiences.
        if audience.startswith(("http://", "https://")):
            request.resource.append(audience)
        else:
            request.audience.append(audience)
        reply: token_pb.ExchangeTokenResponse = await self._stub.ExchangeToken(request, timeout=self._timeout)
        self._cache.put(cache_key, reply.access_token, reply.expires_in)
        return reply.access_token

    async def own_token(self, audience: str, scope: str) -> str:
        """A client-credentials token of this service's own client, cached per (audience, scope)."""
        cache_key = ("client_credentials", audience, scope)
        cached = self._cache.get(cache_key)
        if cached is not None:
            return cached
        client = await self.credentials()
        reply: token_pb.IssueTokenResponse = await self._stub.IssueToken(
            token_pb.IssueTokenRequest(
                grant_type=token_pb.GRANT_TYPE_CLIENT_CREDENTIALS,
                client_id=client.client_id,
                client_secret=client.client_secret,
                scope=scope,
                audience=[audience],
            ),
            timeout=self._timeout,
        )
        self._cache.put(cache_key, reply.access_token, reply.expires_in)
        return reply.access_token

    async def agent_token(
        self,
        request: token_pb.IssueAgentTokenRequest,
        bearer: str,
    ) -> str:
        """An agent token for `request`, minted with `bearer` (a token holding `macp:agent-token`
        for the token service), cached per (tenant, agent, owner, capabilities, scope)."""
        cache_key = (
            "agent",
            request.tenant_id,
            request.agent_id,
            request.owner_id,
            tuple(request.capabilities),
            request.scope,
        )
        cached = self._cache.get(cache_key)
        if cached is not None:
            return cached
        reply: token_pb.IssueAgentTokenResponse = await self._stub.IssueAgentToken(
            request,
            timeout=self._timeout,
            metadata=(("authorization", f"Bearer {bearer}"),),
        )
        self._cache.put(cache_key, reply.access_token, reply.expires_in)
        return reply.access_token
