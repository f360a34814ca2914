"""Wiring of the orchestrator service: its registry entry, its start hook, its scopes.

Scopes: every call needs a token for `urn:macp:service:orchestrator`; Converse, PostMessage,
Complete, Speak and Transcribe (which start agent work the user pays for) need
`conversations:write`, StreamEvents
(reading a conversation's events) `conversations:read`. The orchestrator then calls the other
services with the caller's token exchanged for each (downstream.py).

`start` builds the driver, adds the servicer and runs the control subscription, the takeover
sweep and the webhook deliverer; after the server has drained it stops them (and the rounds in
flight) and closes the mesh channel the rounds called the other services on.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from macp.orchestrator.v1 import orchestrator_service_pb2 as pb
from macp.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc

from services.orchestrator.control import ControlBus
from services.orchestrator.downstream import Downstream
from services.orchestrator.driver import Driver
from services.orchestrator.event_log import EventLog
from services.orchestrator.lease import Leases
from services.orchestrator.servicer import OrchestratorServicer
from services.orchestrator.settings import OrchestratorSettings
from services.orchestrator.webhooks.deliverer import delivering
from services.runtime.registry import service
from services.runtime.server import ServiceContext, ServiceDefinition
from services.runtime.settings import CommonSettings

SPEC = service("orchestrator")
READ_SCOPE = "conversations:read"
WRITE_SCOPE = "conversations:write"


@asynccontextmanager
async def start(context: ServiceContext) -> AsyncIterator[None]:
    settings = OrchestratorSettings.from_env(context.env)
    redis, prefix = context.resources.require_redis(), context.resources.redis_key_prefix
    # Stopped last in, first out: the driver (and the rounds in flight), the event log's reads, the
    # control subscription, the mesh channels; a step that never began is not stopped.
    async with AsyncExitStack() as work:
        events = EventLog(
            redis, prefix, max_events=settings.max_events, idle_seconds=settings.event_idle_seconds
        )
        # The owner names this process in the lease, so logs and Redis show who drives what.
        owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        leases = Leases(redis, prefix, owner, settings.lease_ms)
        bus = ControlBus(redis, prefix)
        downstream = Downstream(CommonSettings.from_env(context.env).mesh_address, settings, (redis, prefix))
        work.push_async_callback(downstream.close)
        driver = Driver(redis, prefix, downstream, events, leases, bus, settings)
        pb_grpc.add_OrchestratorServiceServicer_to_server(
            OrchestratorServicer(driver, events, driver.rounds.voice), context.server
        )
        await bus.start()
        work.push_async_callback(bus.stop)
        work.push_async_callback(events.close)
        # Webhooks follow the event logs beside the rounds (services/orchestrator/webhooks/).
        await work.enter_async_context(delivering(context.env, redis, prefix, events, owner, settings))
        await driver.start()
        work.push_async_callback(driver.stop)
        yield


def method_scopes() -> dict[str, str]:
    descriptor = pb.DESCRIPTOR.services_by_name["OrchestratorService"]
    return {
        f"/{descriptor.full_name}/{method.name}": READ_SCOPE if method.name == "StreamEvents" else WRITE_SCOPE
        for method in descriptor.methods
    }


DEFINITION = ServiceDefinition(
    spec=SPEC, start=start, own_settings=OrchestratorSettings.from_env, method_scopes=method_scopes()
)
