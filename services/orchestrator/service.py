"""Wiring of the orchestrator service: its registry entry, its servicer, its scopes, its background work.

Scopes: every call needs a token for `urn:macp:service:orchestrator`; Converse, PostMessage and
Complete (which start agent work the user pays for) need `conversations:write`, StreamEvents
(reading a conversation's events) `conversations:read`. The orchestrator then calls the other
services with the caller's token exchanged for each (downstream.py).

`register` builds the driver (the servicer needs it before the server starts); `background` runs
the control subscription and the takeover sweep, and stops them (and the rounds in flight) after
the server has drained.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb
from macp.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from prometheus_client import CollectorRegistry

from services.orchestrator.control import ControlBus
from services.orchestrator.downstream import Downstream
from services.orchestrator.driver import Driver
from services.orchestrator.event_log import EventLog
from services.orchestrator.lease import Leases
from services.orchestrator.servicer import OrchestratorServicer
from services.orchestrator.settings import OrchestratorSettings
from services.runtime.mesh import open_mesh_channel
from services.runtime.registry import service
from services.runtime.resources import Resources
from services.runtime.server import ServiceDefinition
from services.runtime.settings import CommonSettings, Env

SPEC = service("orchestrator")
READ_SCOPE = "conversations:read"
WRITE_SCOPE = "conversations:write"


@dataclass
class Orchestrator:
    channel: grpc.aio.Channel
    bus: ControlBus
    driver: Driver
    events: EventLog


# The orchestrators `register` built whose `background` has not started yet, by their Resources' identity.
_built: dict[int, Orchestrator] = {}


def build(resources: Resources, env: Env) -> Orchestrator:
    settings = OrchestratorSettings.from_env(env)
    redis_settings = resources.settings.redis
    if redis_settings is None:
        raise RuntimeError("the orchestrator declares its redis dependency in the registry")
    redis = resources.require_redis()
    prefix = redis_settings.key_prefix
    channel = open_mesh_channel(CommonSettings.from_env(env).mesh_address)
    events = EventLog(redis, prefix, max_events=settings.max_events, idle_seconds=settings.event_idle_seconds)
    # The owner names this process in the lease, so logs and Redis show who drives what.
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    leases = Leases(redis, prefix, owner, settings.lease_ms)
    bus = ControlBus(redis, prefix)
    downstream = Downstream(channel, settings, cache=(redis, prefix))
    driver = Driver(redis, prefix, downstream, events, leases, bus, settings)
    return Orchestrator(channel, bus, driver, events)


async def register(server: grpc.aio.Server, resources: Resources, env: Env) -> None:
    orchestrator = build(resources, env)
    _built[id(resources)] = orchestrator
    pb_grpc.add_OrchestratorServiceServicer_to_server(
        OrchestratorServicer(orchestrator.driver, orchestrator.events), server
    )


@asynccontextmanager
async def background(resources: Resources, env: Env, registry: CollectorRegistry) -> AsyncIterator[None]:
    orchestrator = _built.pop(id(resources))
    await orchestrator.bus.start()
    await orchestrator.driver.start()
    try:
        yield
    finally:
        await orchestrator.driver.stop()
        await orchestrator.events.close()
        await orchestrator.bus.stop()
        await orchestrator.channel.close()


def method_scopes() -> dict[str, str]:
    descriptor = pb.DESCRIPTOR.services_by_name["OrchestratorService"]
    return {
        f"/{descriptor.full_name}/{method.name}": READ_SCOPE if method.name == "StreamEvents" else WRITE_SCOPE
        for method in descriptor.methods
    }


DEFINITION = ServiceDefinition(
    spec=SPEC, register=register, background=background, method_scopes=method_scopes()
)
