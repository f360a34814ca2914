"""Wiring of the agent-proxy service: its registry entry, its start hook, its scopes.

Scopes: every call needs a token for `urn:macp:service:agent-proxy`; Generate and Bid, which spend
provider tokens on a tenant's behalf, also need `agents:generate`. ListProviders (operational
state, no tenant data) needs a valid token only.

`start` builds the proxy, hooks it to the served metrics registry (`pending_agent_requests`,
`macp_breaker_state`, `macp_generate_first_token_seconds`), adds its servicer and runs its usage
outbox; after the server has drained it stops the outbox and closes the providers' clients.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from macp.agent_proxy.v1 import agent_proxy_service_pb2 as pb
from macp.agent_proxy.v1 import agent_proxy_service_pb2_grpc as pb_grpc

from services.agent_proxy.fair_queue import FairQueue
from services.agent_proxy.generation import Generation
from services.agent_proxy.providers import Providers
from services.agent_proxy.servicer import AgentProxyServicer
from services.agent_proxy.settings import ProxySettings
from services.runtime.breaker import Clock
from services.runtime.metrics import breaker_state_collector, first_token_histogram, pending_requests_gauge
from services.runtime.registry import service
from services.runtime.resources import Resources
from services.runtime.server import ServiceContext, ServiceDefinition
from services.runtime.settings import Env
from services.runtime.usage_publisher import UsagePublisher, outbox_key

SPEC = service("agent-proxy")
GENERATE_SCOPE = "agents:generate"
USAGE_SOURCE = "/macp/agent-proxy"


@dataclass
class AgentProxy:
    """One process's proxy: its providers and breakers, its fair queue, its usage publisher."""

    settings: ProxySettings
    providers: Providers
    queue: FairQueue
    publisher: UsagePublisher
    generation: Generation

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
        generation = Generation(settings, providers, queue, publisher.publish)
        return cls(settings, providers, queue, publisher, generation)


@asynccontextmanager
async def start(context: ServiceContext) -> AsyncIterator[None]:
    proxy = AgentProxy.build(context.resources, context.env)
    registry = context.registry
    pending = pending_requests_gauge(SPEC.name, registry).labels(SPEC.name)
    proxy.queue.on_depth = pending.set
    breaker_state_collector(SPEC.name, registry, proxy.providers.breaker_states)
    first_token = first_token_histogram(SPEC.name, registry)
    proxy.generation.on_first_token = lambda provider, model, seconds: first_token.labels(
        SPEC.name, provider, model
    ).observe(seconds)
    servicer = AgentProxyServicer(proxy.settings, proxy.providers, proxy.generation)
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


def method_scopes() -> dict[str, str]:
    descriptor = pb.DESCRIPTOR.services_by_name["AgentProxyService"]
    return {f"/{descriptor.full_name}/{name}": GENERATE_SCOPE for name in ("Generate", "Bid")}


DEFINITION = ServiceDefinition(
    spec=SPEC, start=start, own_settings=ProxySettings.from_env, method_scopes=method_scopes()
)
