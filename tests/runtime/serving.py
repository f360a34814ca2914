"""Services started in-process for the runtime tests: the real `serve()` on port 0, stopped in teardown.

Besides the conversation service, the tests use a tiny "probe" service built on the agent-proxy
contract, whose one built RPC (ListProviders) does whatever the test needs (fail, stall), and which
depends on nothing, so it needs no infrastructure.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from macp.agent_proxy.v1 import agent_proxy_service_pb2 as proxy_pb
from macp.agent_proxy.v1 import agent_proxy_service_pb2_grpc as proxy_grpc

from services.runtime.context import RpcContext
from services.runtime.interceptors import AdmitAll
from services.runtime.logs import JsonFormatter
from services.runtime.registry import ServiceSpec
from services.runtime.server import RunningService, ServiceDefinition, serve, servicer_only

PROBE_SERVICE = proxy_pb.DESCRIPTOR.services_by_name["AgentProxyService"].full_name
PROBE_SPEC = ServiceSpec(
    name="probe",
    grpc_services=(PROBE_SERVICE,),
    port=0,
    metrics_port=0,
    module="tests.runtime.serving",
    dependencies=(),
)
PROBE_ENVIRON = {"MACP_SHUTDOWN_GRACE_SECONDS": "5", "MACP_LOG_LEVEL": "warning"}

ListProviders = Callable[[], Awaitable[proxy_pb.ListProvidersResponse]]


class ProbeServicer(proxy_grpc.AgentProxyServiceServicer):
    """ListProviders runs the test's coroutine; Generate and Bid stay unbuilt (UNIMPLEMENTED)."""

    def __init__(self, list_providers: ListProviders) -> None:
        self._list_providers = list_providers

    async def ListProviders(
        self, request: proxy_pb.ListProvidersRequest, context: RpcContext
    ) -> proxy_pb.ListProvidersResponse:
        return await self._list_providers()


def probe_definition(list_providers: ListProviders) -> ServiceDefinition:
    servicer = ProbeServicer(list_providers)  # type: ignore[abstract]
    start = servicer_only(proxy_grpc.add_AgentProxyServiceServicer_to_server, servicer)
    # The probe depends on nothing (no Redis for revocations): it admits every call explicitly.
    return ServiceDefinition(spec=PROBE_SPEC, start=start, authenticator=AdmitAll())


@asynccontextmanager
async def running(
    definition: ServiceDefinition, environ: Mapping[str, str], *, dependency_wait_seconds: float = 10.0
) -> AsyncIterator[RunningService]:
    """`definition` served until the block ends; a failed start raises what `serve()` raised."""
    started: asyncio.Future[RunningService] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve(definition, environ, started=started, dependency_wait_seconds=dependency_wait_seconds)
    )
    try:
        service = await started
    except BaseException:
        await asyncio.gather(task, return_exceptions=True)
        raise
    try:
        yield service
    finally:
        service.stop.set()
        await task


@asynccontextmanager
async def channel(port: int) -> AsyncIterator[grpc.aio.Channel]:
    # A subchannel of its own: gRPC otherwise shares one per address across channels, and one that
    # found the port closed (a test that checks nothing listens yet) stays in back-off for a while.
    options = [("grpc.use_local_subchannel_pool", 1)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as opened:
        yield opened


# The health and reflection stubs' type hints leave out the methods the generated `__init__` sets
# (and take only sync channels): the ignores below are for those hints, and these helpers type the calls.
HealthWatch = grpc.aio.UnaryStreamCall[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse]


async def health_status(opened: grpc.aio.Channel, service: str = "") -> int:
    """The status Check answers for `service` (a `HealthCheckResponse.ServingStatus` value)."""
    check = health_pb2_grpc.HealthStub(opened).Check  # type: ignore[attr-defined]
    response: health_pb2.HealthCheckResponse = await check(
        health_pb2.HealthCheckRequest(service=service), timeout=5
    )
    return response.status


def health_watch(opened: grpc.aio.Channel, service: str = "") -> HealthWatch:
    watch = health_pb2_grpc.HealthStub(opened).Watch  # type: ignore[attr-defined]
    call: HealthWatch = watch(health_pb2.HealthCheckRequest(service=service))
    return call


async def reflect(
    opened: grpc.aio.Channel,
    requests: list[reflection_pb2.ServerReflectionRequest],
    metadata: tuple[tuple[str, str], ...] | None = None,
) -> list[reflection_pb2.ServerReflectionResponse]:
    """The server's answers to `requests`, sent on one reflection stream."""
    stub = reflection_pb2_grpc.ServerReflectionStub(opened)  # type: ignore[arg-type]
    call = stub.ServerReflectionInfo(iter(requests), metadata=metadata)  # type: ignore[operator]
    answers: list[reflection_pb2.ServerReflectionResponse] = [response async for response in call]
    return answers


async def listed_services(
    opened: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...] | None = None
) -> set[str]:
    [answer] = await reflect(opened, [reflection_pb2.ServerReflectionRequest(list_services="")], metadata)
    return {service.name for service in answer.list_services_response.service}


class JsonLines(logging.Handler):
    """Keeps each record as the JSON object the service would print, formatted while it is emitted
    (the request id comes from a context variable that is gone by the time the test reads)."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(JsonFormatter("test"))
        self.entries: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.entries.append(json.loads(self.format(record)))


@contextmanager
def captured_json_logs(name: str) -> Iterator[list[dict[str, Any]]]:
    """The JSON lines logger `name` writes at INFO and above while the block runs."""
    logger = logging.getLogger(name)
    handler = JsonLines()
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler.entries
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
