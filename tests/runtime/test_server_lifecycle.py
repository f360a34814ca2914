"""The server bootstrap from start to stop: dependencies before SERVING, health, reflection, metrics,
a graceful stop that drains in-flight calls, and a bad setting that stops start-up in one line."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from macp.agent_proxy.v1 import agent_proxy_service_pb2 as proxy_pb
from macp.agent_proxy.v1 import agent_proxy_service_pb2_grpc as proxy_grpc
from prometheus_client.parser import text_string_to_metric_families

from services.conversation.service import DEFINITION as CONVERSATION
from services.runtime import server as server_module
from services.runtime.auth.settings import service_audience
from services.runtime.interceptors import AdmitAll
from services.runtime.registry import LIVENESS_HEALTH_SERVICE
from services.runtime.server import (
    HEALTH_SERVICE,
    RunningService,
    ServiceContext,
    ServiceDefinition,
    run_service,
    serve,
)
from services.runtime.settings import Env, SettingsError
from services.stack.config import free_port
from services.stack.infra import Infrastructure
from tests.runtime.serving import (
    PROBE_ENVIRON,
    PROBE_SERVICE,
    PROBE_SPEC,
    ProbeServicer,
    channel,
    health_status,
    health_watch,
    listed_services,
    probe_definition,
    reflect,
    running,
)
from tests.tokens import TokenWorld

CONVERSATION_SERVICE = CONVERSATION.spec.grpc_services[0]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
REPO = Path(__file__).resolve().parents[2]


class Relay:
    """A TCP relay in front of the real Redis that the test opens and closes, so Redis seems to come
    up late or go away while the service runs (Redis itself keeps running for the other tests)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.port = free_port()
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._pipe, "127.0.0.1", self.port)

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    async def _pipe(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        self._writers |= {client_writer, upstream_writer}

        async def copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.transport.abort()

        await asyncio.gather(copy(client_reader, upstream_writer), copy(upstream_reader, client_writer))


async def wait_for_status(opened: grpc.aio.Channel, service: str, status: int, within: float) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while (seen := await health_status(opened, service)) != status:
        assert asyncio.get_running_loop().time() < deadline, f"health of {service!r} stayed {seen}"
        await asyncio.sleep(0.1)


async def connections_to(admin_url: str, database_url: str) -> int:
    database = urlsplit(database_url).path.lstrip("/")
    connection = await asyncpg.connect(admin_url)
    try:
        count: int = await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1", database
        )
    finally:
        await connection.close()
    return count


async def nothing_listens_on(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    await writer.wait_closed()
    return False


# --- start-up and health ---------------------------------------------------------------------------


@pytest.mark.integration
async def test_start_fails_with_a_connection_error_naming_redis_when_it_does_not_answer(
    infrastructure: Infrastructure, conversation_environ: dict[str, str], database_url: str
) -> None:
    grpc_port, metrics_port = free_port(), free_port()
    environ = {
        **conversation_environ,
        "MACP_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "MACP_CONVERSATION_PORT": str(grpc_port),
        "MACP_CONVERSATION_METRICS_PORT": str(metrics_port),
    }
    with pytest.raises(ConnectionError, match=r"^redis did not answer in time: "):
        async with running(CONVERSATION, environ, dependency_wait_seconds=1.0):
            pass

    # Nothing is left behind: no gRPC listener, no metrics listener, no Postgres connection.
    async with channel(grpc_port) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as unreachable:
            await health_status(ch)
        assert unreachable.value.code() == grpc.StatusCode.UNAVAILABLE
    assert await nothing_listens_on(metrics_port)
    assert await connections_to(infrastructure.env["MACP_DATABASE_URL"], database_url) == 0


@pytest.mark.integration
async def test_health_is_serving_only_while_the_dependencies_answer(
    conversation_environ: dict[str, str], tokens: TokenWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_module, "DEPENDENCY_CHECK_SECONDS", 0.2)
    redis = urlsplit(conversation_environ["MACP_REDIS_URL"])
    assert redis.hostname is not None
    assert redis.port is not None
    relay = Relay(redis.hostname, redis.port)
    grpc_port = free_port()
    environ = {
        # The token service's keys too: without them the service is not ready either.
        **tokens.service_environ(conversation_environ),
        "MACP_REDIS_URL": f"redis://127.0.0.1:{relay.port}/0",
        "MACP_CONVERSATION_PORT": str(grpc_port),
    }
    started: asyncio.Future[RunningService] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(CONVERSATION, environ, started=started, dependency_wait_seconds=30))
    try:
        # While Redis does not answer, the service waits for it and does not listen at all.
        await asyncio.sleep(1.0)
        assert not started.done()
        async with channel(grpc_port) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as unreachable:
                await health_status(ch)
            assert unreachable.value.code() == grpc.StatusCode.UNAVAILABLE

        await relay.open()
        service = await asyncio.wait_for(started, 15)
        assert service.port == grpc_port
        async with channel(grpc_port) as ch:
            assert await health_status(ch) == SERVING
            assert await health_status(ch, CONVERSATION_SERVICE) == SERVING

            await relay.close()
            await wait_for_status(ch, "", NOT_SERVING, within=10)
            assert await health_status(ch, CONVERSATION_SERVICE) == NOT_SERVING
            # Not ready is not dead: liveness answers SERVING throughout, so a store outage never
            # has an orchestrator restart the process.
            assert await health_status(ch, LIVENESS_HEALTH_SERVICE) == SERVING

            await relay.open()
            await wait_for_status(ch, "", SERVING, within=10)
            assert await health_status(ch, CONVERSATION_SERVICE) == SERVING
    finally:
        if started.done() and not started.exception():
            started.result().stop.set()
        else:
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await relay.close()


@pytest.mark.integration
async def test_a_started_service_is_serving_for_the_server_and_for_its_service_name(
    conversation: grpc.aio.Channel,
) -> None:
    assert await health_status(conversation) == SERVING
    assert await health_status(conversation, CONVERSATION_SERVICE) == SERVING
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await health_status(conversation, "macp.nothing.v1.NothingService")
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.integration
async def test_reflection_lists_the_service_and_serves_its_descriptor(
    conversation: grpc.aio.Channel, tokens: TokenWorld
) -> None:
    token = await tokens.user_token(await tokens.tenant(), [service_audience("conversation")])
    metadata = (("authorization", f"Bearer {token}"),)
    assert {CONVERSATION_SERVICE, HEALTH_SERVICE} <= await listed_services(conversation, metadata)
    [described] = await reflect(
        conversation,
        [reflection_pb2.ServerReflectionRequest(file_containing_symbol=CONVERSATION_SERVICE)],
        metadata,
    )
    assert described.WhichOneof("message_response") == "file_descriptor_response"
    assert described.file_descriptor_response.file_descriptor_proto


# --- graceful stop ---------------------------------------------------------------------------------


async def test_stop_drains_an_in_flight_call_while_health_says_not_serving_and_new_calls_are_refused() -> (
    None
):
    entered = asyncio.Event()

    async def slow() -> proxy_pb.ListProvidersResponse:
        entered.set()
        await asyncio.sleep(1.0)
        return proxy_pb.ListProvidersResponse(providers=[proxy_pb.ProviderStatus(name="slow")])

    async with running(probe_definition(slow), PROBE_ENVIRON) as service, channel(service.port) as ch:
        stub = proxy_grpc.AgentProxyServiceStub(ch)
        watch = health_watch(ch)
        first = await watch.read()
        assert isinstance(first, health_pb2.HealthCheckResponse)
        assert first.status == SERVING

        in_flight = asyncio.ensure_future(stub.ListProviders(proxy_pb.ListProvidersRequest()))
        await asyncio.wait_for(entered.wait(), 5)
        service.stop.set()

        flipped = await asyncio.wait_for(watch.read(), 5)
        assert isinstance(flipped, health_pb2.HealthCheckResponse)
        assert flipped.status == NOT_SERVING
        watch.cancel()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ListProviders(proxy_pb.ListProvidersRequest(), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert not in_flight.done()

        response = await asyncio.wait_for(in_flight, 5)
        assert [provider.name for provider in response.providers] == ["slow"]
        # Once nothing is in flight the stop completes without waiting out its 5 s grace.
        await asyncio.wait_for(service.stopped.wait(), 3)


async def test_the_start_hook_is_left_once_the_calls_have_drained_and_before_the_service_has_stopped() -> (
    None
):
    steps: list[str] = []
    entered = asyncio.Event()

    async def slow() -> proxy_pb.ListProvidersResponse:
        entered.set()
        await asyncio.sleep(0.5)
        steps.append("call answered")
        return proxy_pb.ListProvidersResponse()

    @contextlib.asynccontextmanager
    async def start(context: ServiceContext) -> AsyncIterator[None]:
        servicer = ProbeServicer(slow)  # type: ignore[abstract]
        proxy_grpc.add_AgentProxyServiceServicer_to_server(servicer, context.server)
        steps.append("started")
        try:
            yield
        finally:
            steps.append("left")

    definition = ServiceDefinition(spec=PROBE_SPEC, start=start, authenticator=AdmitAll())
    async with running(definition, PROBE_ENVIRON) as service, channel(service.port) as ch:
        in_flight = asyncio.ensure_future(
            proxy_grpc.AgentProxyServiceStub(ch).ListProviders(proxy_pb.ListProvidersRequest())
        )
        await asyncio.wait_for(entered.wait(), 5)
        service.stop.set()
        await asyncio.wait_for(in_flight, 5)
        await asyncio.wait_for(service.stopped.wait(), 5)
        steps.append("stopped")
    # Left after the server drained the call, and before the service reported itself stopped
    # (which comes after the resources have closed).
    assert steps == ["started", "call answered", "left", "stopped"]


async def test_a_start_hook_that_fails_fails_the_start_with_its_own_error() -> None:
    @contextlib.asynccontextmanager
    async def start(context: ServiceContext) -> AsyncIterator[None]:
        raise RuntimeError("the service could not be built")
        yield  # an async generator, as a start hook is

    definition = ServiceDefinition(spec=PROBE_SPEC, start=start, authenticator=AdmitAll())
    with pytest.raises(RuntimeError, match="could not be built"):
        async with running(definition, PROBE_ENVIRON):
            pass


# --- metrics ---------------------------------------------------------------------------------------


async def test_metrics_endpoint_counts_calls_by_rpc_and_reports_serving() -> None:
    metrics_port = free_port()
    environ = {**PROBE_ENVIRON, "MACP_PROBE_METRICS_PORT": str(metrics_port)}

    async def answer() -> proxy_pb.ListProvidersResponse:
        return proxy_pb.ListProvidersResponse()

    async with (
        running(probe_definition(answer), environ) as service,
        channel(service.port) as ch,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{metrics_port}", trust_env=False) as http,
    ):
        await proxy_grpc.AgentProxyServiceStub(ch).ListProviders(proxy_pb.ListProvidersRequest())
        await proxy_grpc.AgentProxyServiceStub(ch).ListProviders(proxy_pb.ListProvidersRequest())
        response = await http.get("/metrics")
        assert response.status_code == 200
        samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
        }

    rpc = f"/{PROBE_SERVICE}/ListProviders"
    labels = (("grpc_status", "OK"), ("rpc", rpc), ("service", "probe"))
    assert samples[("macp_rpc_requests_total", labels)] == 2
    assert samples[("macp_rpc_duration_seconds_count", labels)] == 2
    assert samples[("macp_serving", (("service", "probe"),))] == 1
    assert await nothing_listens_on(metrics_port)  # the stop closed the endpoint


# --- settings at start-up --------------------------------------------------------------------------


def test_run_service_with_a_malformed_setting_returns_2_after_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = run_service(CONVERSATION, {"MACP_LOG_LEVEL": "loud"})
    out, err = capsys.readouterr()
    assert status == 2
    assert out == ""
    [line] = err.splitlines()
    assert line.startswith("conversation: MACP_LOG_LEVEL='loud' is malformed")
    assert "set it to one of debug, info, warning, error" in line


def test_a_bad_setting_of_the_service_itself_returns_2_before_the_service_starts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def own_settings(env: Env) -> object:
        raise SettingsError("MACP_PROBE_SPEED='warp' is malformed")

    @contextlib.asynccontextmanager
    async def start(context: ServiceContext) -> AsyncIterator[None]:
        raise AssertionError("the service started")
        yield

    definition = ServiceDefinition(
        spec=PROBE_SPEC, start=start, own_settings=own_settings, authenticator=AdmitAll()
    )
    status = run_service(definition, PROBE_ENVIRON)
    _, err = capsys.readouterr()
    assert status == 2
    assert err.splitlines() == ["probe: MACP_PROBE_SPEED='warp' is malformed"]


def test_the_entry_point_without_a_database_url_exits_with_one_line_and_no_traceback() -> None:
    environ = {key: value for key, value in os.environ.items() if not key.startswith("MACP_")}
    finished = subprocess.run(
        [sys.executable, "-m", "services.conversation"],
        cwd=REPO,
        env=environ,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert finished.returncode != 0
    assert "Traceback" not in finished.stderr
    [line] = finished.stderr.splitlines()
    assert line.startswith("conversation: MACP_DATABASE_URL is not set")
    assert finished.stdout == ""
