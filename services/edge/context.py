"""What the edge's handlers share: settings, the channel to Envoy's mesh listener with stubs (its
calls carry the caller's token exchanged for each callee: services/runtime/auth/caller_tokens.py),
the token verifier of `urn:macp:edge`, and whether the edge is ready to take work
(services/edge/readiness.py)."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import redis.asyncio as aioredis
from macp.conversation.v1 import conversation_service_pb2_grpc
from macp.metering.v1 import metering_service_pb2_grpc
from macp.orchestrator.v1 import orchestrator_service_pb2_grpc
from macp.token.v1 import token_service_pb2_grpc
from macp.tool_gateway.v1 import tool_gateway_service_pb2_grpc
from prometheus_client import CollectorRegistry
from starlette.requests import Request

from services.edge.open_streams import OpenStreams
from services.edge.rate_limits import RateLimits
from services.edge.readiness import edge_readiness
from services.edge.rest.idempotency import IdempotencyKeys
from services.edge.settings import EdgeSettings
from services.runtime.auth.caller_tokens import CallerTokens
from services.runtime.auth.external import ExternalIssuers
from services.runtime.auth.jwks import JwksCache, token_service_fetch
from services.runtime.auth.revocation import RevocationChecker
from services.runtime.auth.settings import EDGE_AUDIENCE, USER_SCOPES
from services.runtime.auth.token_client import ClientCredentials, ClientRegistration, TokenClient
from services.runtime.auth.verifier import TokenVerifier
from services.runtime.mesh import open_mesh_channel, open_probe_channel
from services.runtime.ratelimit import RedisLimiter
from services.runtime.readiness import Readiness
from services.runtime.redis_client import create_redis


@dataclass
class EdgeContext:
    settings: EdgeSettings
    channel: grpc.aio.Channel
    # The edge's own client's calls to the token service: no caller's token on them.
    tokens_channel: grpc.aio.Channel
    conversation: conversation_service_pb2_grpc.ConversationServiceStub
    orchestrator: orchestrator_service_pb2_grpc.OrchestratorServiceStub
    token: token_service_pb2_grpc.TokenServiceStub
    metering: metering_service_pb2_grpc.MeteringServiceStub
    tool_gateway: tool_gateway_service_pb2_grpc.ToolGatewayServiceStub
    redis: aioredis.Redis
    jwks: JwksCache
    external_issuers: ExternalIssuers
    verifier: TokenVerifier
    rate_limits: RateLimits
    idempotency: IdempotencyKeys
    # The streams open on this process, ended when their token is revoked (services/edge/open_streams.py).
    open_streams: OpenStreams
    # Checked in the background; requests and WebSocket connects only read its verdict.
    readiness: Readiness
    probes: grpc.aio.Channel

    @classmethod
    async def open(cls, settings: EdgeSettings, registry: CollectorRegistry | None = None) -> EdgeContext:
        tokens_channel = open_mesh_channel(settings.common.mesh_address)
        client = None
        if settings.client_id is not None and settings.client_secret is not None:
            client = ClientCredentials(settings.client_id, settings.client_secret)
        caller_tokens = CallerTokens(
            TokenClient(
                token_service_pb2_grpc.TokenServiceStub(tokens_channel),
                registration=ClientRegistration(name="macp edge", scopes=USER_SCOPES),
                credentials=client,
                initial_access_token=settings.initial_access_token,
                timeout=settings.rpc_timeout_seconds,
            )
        )
        channel = open_mesh_channel(settings.common.mesh_address, caller_tokens)
        token = token_service_pb2_grpc.TokenServiceStub(channel)
        redis = create_redis(settings.redis)
        jwks = JwksCache(
            token_service_fetch(channel),
            refresh_seconds=settings.auth.jwks_refresh_seconds,
            unknown_kid_refresh_seconds=settings.auth.jwks_unknown_kid_refresh_seconds,
        )
        # The token service may come up after the edge: start() logs a failed first fetch and retries.
        await jwks.start()
        external_issuers = ExternalIssuers(
            settings.auth.external_issuers,
            refresh_seconds=settings.auth.jwks_refresh_seconds,
            unknown_kid_refresh_seconds=settings.auth.jwks_unknown_kid_refresh_seconds,
        )
        await external_issuers.start()
        # One checker (and its cache) for requests and open streams alike.
        revocations = RevocationChecker(redis, settings.redis.key_prefix)
        open_streams = OpenStreams(revocations)
        open_streams.start()
        probes = open_probe_channel(settings.common.mesh_address)
        readiness = edge_readiness(jwks, probes, settings.needs)
        # One round of checks before the edge listens: with its services up it is ready at once.
        await readiness.start()
        return cls(
            settings=settings,
            channel=channel,
            tokens_channel=tokens_channel,
            conversation=conversation_service_pb2_grpc.ConversationServiceStub(channel),
            orchestrator=orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel),
            token=token,
            metering=metering_service_pb2_grpc.MeteringServiceStub(channel),
            tool_gateway=tool_gateway_service_pb2_grpc.ToolGatewayServiceStub(channel),
            redis=redis,
            jwks=jwks,
            external_issuers=external_issuers,
            verifier=TokenVerifier(
                audience=EDGE_AUDIENCE,
                issuer=settings.auth.issuer,
                jwks=jwks,
                revocations=revocations,
                max_delegation_depth=settings.auth.max_delegation_depth,
                external=external_issuers,
            ),
            rate_limits=RateLimits(
                settings.rate_limits, RedisLimiter(redis, settings.redis.key_prefix), registry
            ),
            # A claim outlives the longest request it may be for (a completion's whole turn).
            idempotency=IdempotencyKeys(
                redis, settings.redis.key_prefix, pending_seconds=settings.completion_timeout_seconds + 30
            ),
            open_streams=open_streams,
            readiness=readiness,
            probes=probes,
        )

    async def close(self) -> None:
        await self.readiness.stop()
        await self.probes.close()
        await self.open_streams.stop()
        await self.jwks.stop()
        await self.external_issuers.stop()
        await self.redis.aclose()
        await self.channel.close()
        await self.tokens_channel.close()

    @property
    def timeout(self) -> float:
        """The deadline of one RPC made on behalf of an HTTP request."""
        return self.settings.rpc_timeout_seconds


def edge_context(request: Request) -> EdgeContext:
    context: EdgeContext = request.app.state.edge
    return context
