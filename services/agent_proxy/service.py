"""Wiring of the agent-proxy service: its registry entry, its start hook, its scopes.

Scopes: every call needs a token for `urn:macp:service:agent-proxy`; Generate, Bid, Synthesize and
Transcribe, which spend a provider's work on a tenant's behalf, also need `agents:generate` (a
service-held scope: the orchestrator adds it when it exchanges a user's token). ListProviders
(operational state, no tenant data) needs a valid token only.

An agent of provider `a2a` is an outside A2A agent (remote_agents.py): the proxy reads it from the
conversation service on the caller's behalf and gets its credential with a client of its own at the
token service, both through the mesh; it calls the remote over HTTP.

`start` builds the proxy, hooks it to the served metrics registry (`pending_agent_requests`,
`macp_breaker_state`, `macp_generate_first_token_seconds`), adds its servicer and runs its usage
outbox; after the server has drained it stops the outbox and closes the providers' clients (chat
and audio).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc
import httpx
from macp.agent_proxy.v1 import agent_proxy_service_pb2 as pb
from macp.agent_proxy.v1 import agent_proxy_service_pb2_grpc as pb_grpc
from macp.conversation.v1 import conversation_service_pb2_grpc as conversation_grpc
from macp.token.v1 import token_service_pb2_grpc as token_grpc

from services.agent_proxy.audio_provider import AudioProviders
from services.agent_proxy.fair_queue import FairQueue
from services.agent_proxy.generation import Generation
from services.agent_proxy.providers import Providers
from services.agent_proxy.remote_agents import RemoteAgents
from services.agent_proxy.remote_credentials import RemoteCredentials
from services.agent_proxy.servicer import AgentProxyServicer
from services.agent_proxy.settings import ProxySettings
from services.agent_proxy.speech import Speech
from services.runtime.auth.caller_tokens import CallerTokens
from services.runtime.auth.settings import USER_SCOPES
from services.runtime.auth.token_client import (
    CLIENT_CREDENTIALS_GRANT,
    EXCHANGE_GRANT,
    ClientCredentials,
    ClientRegistration,
    TokenClient,
)
from services.runtime.breaker import Clock
from services.runtime.mesh import open_mesh_channel
from services.runtime.metrics import breaker_state_collector, first_token_histogram, pending_requests_gauge
from services.runtime.registry import service
from services.runtime.resources import Resources
from services.runtime.server import ServiceContext, ServiceDefinition
from services.runtime.settings import CommonSettings, Env
from services.runtime.usage_publisher import UsagePublisher, outbox_key

SPEC = service("agent-proxy")
GENERATE_SCOPE = "agents:generate"
USAGE_SOURCE = "/macp/agent-proxy"
REGISTRATION = ClientRegistration(
    name="macp agent proxy", scopes=USER_SCOPES, grant_types=(EXCHANGE_GRANT, CLIENT_CREDENTIALS_GRANT)
)


@dataclass
class AgentProxy:
    """One process's proxy: its providers and breakers, its fair queue, its usage publisher."""

    settings: ProxySettings
    providers: Providers
    queue: FairQueue
    publisher: UsagePublisher
    generation: Generation
    remote: RemoteAgents
    channels: tuple[grpc.aio.Channel, ...]
    audio: AudioProviders
    speech: Speech

    @classmethod
    def build(cls, resources: Resources, env: Env, clock: Clock = time.time) -> AgentProxy:
        settings = ProxySettings.from_env(env)
        kafka = resources.settings.kafka
        if kafka is None or resources.producer is None:
            raise RuntimeError("the agent proxy declares its redis and kafka dependencies in the registry")
        publisher = UsagePublisher(
            resources.require_redis(),
            resources.producer,
            topic=kafka.usage_topic,
            key=outbox_key(resources.redis_key_prefix, kafka.usage_topic),
            source=USAGE_SOURCE,
        )
        providers = Providers(settings, clock)
        queue = FairQueue(
            settings.max_concurrency, settings.queue_limit, tenant_limit=settings.tenant_queue_limit
        )
        remote, channels = _remote_agents(settings, env, clock, providers)
        generation = Generation(settings, providers, queue, publisher.publish, remote=remote)
        # The same queue as Generate's: a voice call takes a slot, and its tenant's place, as a turn does.
        audio = AudioProviders(settings, providers)
        speech = Speech(settings, audio, queue, publisher.publish)
        return cls(settings, providers, queue, publisher, generation, remote, channels, audio, speech)


def _remote_agents(
    settings: ProxySettings, env: Env, clock: Clock, providers: Providers
) -> tuple[RemoteAgents, tuple[grpc.aio.Channel, ...]]:
    """Outside A2A agents' turns: the proxy's own token client on a mesh channel without caller
    tokens, the conversation service on one that carries the caller's."""
    mesh_address = CommonSettings.from_env(env).mesh_address
    own = open_mesh_channel(mesh_address)
    credentials = None
    if settings.client_id and settings.client_secret:
        credentials = ClientCredentials(settings.client_id, settings.client_secret)
    client = TokenClient(
        token_grpc.TokenServiceStub(own),
        registration=REGISTRATION,
        credentials=credentials,
        initial_access_token=settings.initial_access_token,
        timeout=settings.call_timeout_seconds,
    )
    for_callers = open_mesh_channel(mesh_address, CallerTokens(client))
    remote = RemoteAgents(
        RemoteCredentials(
            conversation_grpc.ConversationServiceStub(for_callers),
            client,
            settings.a2a_sealing_key,
            settings.call_timeout_seconds,
        ),
        httpx.AsyncClient(trust_env=False, timeout=settings.call_timeout_seconds),
        providers.policy,
        clock,
        card_ttl_seconds=settings.a2a_card_seconds,
        timeout_seconds=settings.a2a_timeout_seconds,
    )
    return remote, (own, for_callers)


@asynccontextmanager
async def start(context: ServiceContext) -> AsyncIterator[None]:
    proxy = AgentProxy.build(context.resources, context.env)
    registry = context.registry
    pending = pending_requests_gauge(SPEC.name, registry).labels(SPEC.name)
    proxy.queue.on_depth = pending.set
    breaker_state_collector(
        SPEC.name, registry, lambda: [*proxy.providers.breaker_states(), *proxy.remote.breaker_states()]
    )
    first_token = first_token_histogram(SPEC.name, registry)
    proxy.generation.on_first_token = lambda provider, model, seconds: first_token.labels(
        SPEC.name, provider, model
    ).observe(seconds)
    servicer = AgentProxyServicer(proxy.settings, proxy.providers, proxy.generation, proxy.speech)
    pb_grpc.add_AgentProxyServiceServicer_to_server(servicer, context.server)
    try:
        await proxy.publisher.start()
        try:
            yield
        finally:
            await proxy.publisher.stop()
    finally:
        # The providers' HTTP clients exist from `build` on, so they close even if the outbox
        # never started.
        await proxy.providers.close()
        await proxy.audio.close()
        await proxy.remote.close()
        for channel in proxy.channels:
            await channel.close()


def method_scopes() -> dict[str, str]:
    descriptor = pb.DESCRIPTOR.services_by_name["AgentProxyService"]
    spending = ("Generate", "Bid", "Synthesize", "Transcribe")
    return {f"/{descriptor.full_name}/{name}": GENERATE_SCOPE for name in spending}


DEFINITION = ServiceDefinition(
    spec=SPEC, start=start, own_settings=ProxySettings.from_env, method_scopes=method_scopes()
)
