"""The grpc.aio server bootstrap every service runs: settings, logs, metrics, health, reflection,
interceptors, dependencies, and a graceful stop.

Health follows readiness (services/runtime/readiness.py, docs/readiness.md): NOT_SERVING from the
start until the service's dependencies answer, it holds the token service's signing keys (if it
verifies tokens with them) and the services it needs answer SERVING through the mesh; NOT_SERVING
again whenever one of them stays away for more than a check interval, and for good once it stops.

A service supplies a `ServiceDefinition` (its registry entry, its start hook, its migrations) and
calls `main`; nothing else about serving is written in a service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from services.runtime import tracing
from services.runtime.auth.authenticator import JwtAuthenticator, jwt_authenticator
from services.runtime.auth.settings import AuthSettings, service_audience
from services.runtime.interceptors import Authenticator, server_interceptors
from services.runtime.logs import configure_logging
from services.runtime.mesh import open_mesh_channel, open_probe_channel
from services.runtime.metrics import RpcMetrics, serve_metrics
from services.runtime.readiness import Check, Readiness, keys_check, mesh_check
from services.runtime.reflection import enable_mesh_reflection
from services.runtime.registry import LIVENESS_HEALTH_SERVICE, ServiceSpec
from services.runtime.resources import KNOWN_DEPENDENCIES, Resources, ResourceSettings, open_resources
from services.runtime.settings import CommonSettings, Env, ServerSettings, SettingsError, TracingSettings

log = logging.getLogger("macp.server")
S = TypeVar("S")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
# Only health answers without a token: probes (Envoy, compose, Kubernetes) carry none. Reflection
# describes every method and message of the port, so it asks for a token like any method.
UNAUTHENTICATED_PREFIXES = (f"/{HEALTH_SERVICE}/",)
# Infrastructure is pinged less often than the mesh is checked (readiness.CHECK_SECONDS): a Kafka
# metadata request and an S3 HEAD each time are not free, and an outage of one is rarely brief.
DEPENDENCY_CHECK_SECONDS = 2.0
METADATA_LIMIT_BYTES = 32 * 1024


@dataclass(frozen=True)
class ServiceContext:
    """What a service's start hook is given: the server to add its servicers to (built, not yet
    started), its open resources, its environment (it reads its own settings there, so a bad one
    stops start-up like any other) and the registry the `/metrics` port serves (so its own
    metrics appear there)."""

    server: grpc.aio.Server
    resources: Resources
    env: Env
    registry: CollectorRegistry


# A service's one start hook: entering it builds the service's objects, adds its servicers to
# `context.server` and starts the work it runs beside its RPCs; leaving it stops that work.
Start = Callable[[ServiceContext], AbstractAsyncContextManager[None]]


def usage_topics(settings: ResourceSettings) -> list[str]:
    """Every service that talks to Kafka publishes usage events, so it makes sure their topic exists."""
    return [settings.kafka.usage_topic] if settings.kafka is not None else []


@dataclass(frozen=True)
class ServiceDefinition:
    """What a service hands the runtime.

    start: the service's composition root, an async context manager given a `ServiceContext`.
        Entered once the resources are open and the server is built, before the server starts and
        before the service reports SERVING: it builds what the service is made of, adds its
        servicers and starts its background work (the metering service's Kafka consumer, the agent
        proxy's usage outbox). Left after the gRPC server has stopped (in-flight calls drained),
        before the authenticator and the resources close, so nothing it runs outlives the
        connections it uses. One hook for both ends keeps what is built and what is stopped in one
        function's scope, with no hand-over between two hooks. A hook whose entry fails part way
        stops what it had started itself (its own try/finally or exit stack).
    own_settings: how the service reads its own settings (`<Service>Settings.from_env`). The entry
        point reads them before it starts anything, so a missing or malformed one stops the
        process with one line at once, not after its dependencies have answered; the start hook
        reads them again from its `env`.
    migrations_dir: the service's `migrations/` folder, if it owns tables.
    topics: Kafka topics it publishes to, created at start-up if missing.
    method_scopes: full method name (or `/<package>.<Service>/*`) to the scope a token needs to
        call it; a method not named needs a valid token and no particular scope. Each service
        documents its choice in its `service.py`.
    authenticator: None (the default) authenticates every call with a `JwtAuthenticator` for
        `urn:macp:service:<name>`, its keys from TokenService.GetJwks over the mesh and its
        revocations from Redis (so every service depends on Redis). An explicit one overrides
        that: `AdmitAll` for tests and local experiments, the token service's own.
    """

    spec: ServiceSpec
    start: Start
    own_settings: Callable[[Env], object] | None = None
    migrations_dir: Path | None = None
    topics: Callable[[ResourceSettings], list[str]] = field(default=lambda s: usage_topics(s))
    method_scopes: Mapping[str, str] = field(default_factory=dict)
    authenticator: Authenticator | None = None


@dataclass(frozen=True)
class RunningService:
    """Handles a test or the entry point uses to reach and stop a started service."""

    port: int
    stop: asyncio.Event
    stopped: asyncio.Event


def _readiness(
    definition: ServiceDefinition,
    server_settings: ServerSettings,
    resources: Resources,
    authenticator: Authenticator,
    probes: grpc.aio.Channel,
    health_servicer: health.aio.HealthServicer,
    metrics: RpcMetrics,
) -> Readiness:
    """What SERVING means for this service (services/runtime/readiness.py): its dependencies answer,
    it holds the token service's keys if it verifies tokens with them, and every service it needs
    answers SERVING through the mesh. Health (every name the server answers for) follows it."""
    checks = []
    dependencies = [name for name in KNOWN_DEPENDENCIES if getattr(resources.settings, name) is not None]
    if dependencies:
        checks.append(Check(tuple(dependencies), resources.check, DEPENDENCY_CHECK_SECONDS))
    if isinstance(authenticator, JwtAuthenticator):
        checks.append(keys_check(authenticator.jwks))
    checks += [mesh_check(probes, name) for name in server_settings.needs]
    names = ["", *definition.spec.grpc_services]

    async def follow(ready: bool, not_ready: tuple[str, ...]) -> None:
        status = SERVING if ready else NOT_SERVING
        for name in names:
            await health_servicer.set(name, status)
        metrics.set_serving(ready)

    return Readiness(checks, follow)


@contextlib.asynccontextmanager
async def _default_authenticator(
    definition: ServiceDefinition, env: Env, common: CommonSettings, resources: Resources
) -> AsyncIterator[JwtAuthenticator]:
    """The JWT authenticator of `definition`'s audience, open while the block runs."""
    if resources.settings.redis is None:
        raise SettingsError(
            f"{definition.spec.name} authenticates tokens, which needs the redis dependency in the registry"
        )
    channel = open_mesh_channel(common.mesh_address)
    try:
        async with jwt_authenticator(
            service_audience(definition.spec.name),
            AuthSettings.from_env(env),
            redis=resources.require_redis(),
            redis_key_prefix=resources.redis_key_prefix,
            channel=channel,
            method_scopes=definition.method_scopes,
        ) as authenticator:
            yield authenticator
    finally:
        await channel.close()


async def serve(
    definition: ServiceDefinition,
    environ: Mapping[str, str] | None = None,
    *,
    started: asyncio.Future[RunningService] | None = None,
    stop: asyncio.Event | None = None,
    dependency_wait_seconds: float = 60.0,
) -> None:
    """Run the service until `stop` is set (or SIGTERM/SIGINT in the entry point), then stop gracefully."""
    try:
        await _serve(definition, environ, started, stop or asyncio.Event(), dependency_wait_seconds)
    except BaseException as exc:
        # A caller waiting for the start must hear about a failure, not wait forever.
        if started is not None and not started.done():
            started.set_exception(exc)
        raise


async def _serve(
    definition: ServiceDefinition,
    environ: Mapping[str, str] | None,
    started: asyncio.Future[RunningService] | None,
    stop: asyncio.Event,
    dependency_wait_seconds: float,
) -> None:
    spec = definition.spec
    env = Env(environ)
    common = CommonSettings.from_env(env)
    server_settings = ServerSettings.from_env(env, spec)
    resource_settings = ResourceSettings.from_env(env, spec.dependencies)
    # Before anything starts: the tasks this one creates (the server's, the background's) inherit
    # the service's name, which the spans of shared code (a client call, a usage event) carry.
    tracing.configure(spec.name, TracingSettings.from_env(env))
    stopped = asyncio.Event()

    metrics = RpcMetrics(spec.name)
    metrics.set_serving(False)
    metrics_endpoint = await serve_metrics(metrics.registry, common.bind_host, server_settings.metrics_port)
    resources: Resources | None = None
    server: grpc.aio.Server | None = None
    readiness: Readiness | None = None
    probes = open_probe_channel(common.mesh_address)
    health_servicer = health.aio.HealthServicer()
    auth_stack = contextlib.AsyncExitStack()
    service_stack = contextlib.AsyncExitStack()
    try:
        resources = await open_resources(
            resource_settings,
            component=spec.name,
            migrations_dir=definition.migrations_dir,
            topics=definition.topics(resource_settings),
            wait_seconds=dependency_wait_seconds,
        )
        authenticator = definition.authenticator
        if authenticator is None:
            authenticator = await auth_stack.enter_async_context(
                _default_authenticator(definition, env, common, resources)
            )
        server = grpc.aio.server(
            interceptors=server_interceptors(
                metrics, authenticator, UNAUTHENTICATED_PREFIXES, service=spec.name
            ),
            options=[
                ("grpc.so_reuseport", 0),
                # Room for a bearer token up to the verifier's limit (8 KiB) and the other headers,
                # so an oversized token is refused by the authenticator (UNAUTHENTICATED, logged)
                # rather than by the transport's 8 KiB default (RESOURCE_EXHAUSTED).
                ("grpc.max_metadata_size", METADATA_LIMIT_BYTES),
            ],
        )
        context = ServiceContext(server=server, resources=resources, env=env, registry=metrics.registry)
        await service_stack.enter_async_context(definition.start(context))
        names = ["", *spec.grpc_services]
        # NOT_SERVING until the first round of readiness checks says otherwise (the stock servicer
        # starts with "" SERVING): Envoy must not route here before this service can serve.
        for name in names:
            await health_servicer.set(name, NOT_SERVING)
        await health_servicer.set(LIVENESS_HEALTH_SERVICE, SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        if server_settings.reflection:
            # The whole mesh's contract, not only this port's: Envoy sends a reflection stream to
            # one service, which must describe whatever the mesh serves (services/runtime/reflection.py).
            enable_mesh_reflection(server, (HEALTH_SERVICE,))
        port = server.add_insecure_port(f"{common.bind_host}:{server_settings.port}")
        if port == 0:
            raise OSError(
                f"cannot listen on {common.bind_host}:{server_settings.port}: the port is in use; "
                f"stop the other process or set {spec.env_prefix}PORT"
            )
        await server.start()
        readiness = _readiness(
            definition, server_settings, resources, authenticator, probes, health_servicer, metrics
        )
        await readiness.start()
        log.info(
            "serving",
            extra={
                "port": port,
                "metrics_port": server_settings.metrics_port,
                "not_ready": list(readiness.not_ready),
            },
        )
        if started is not None:
            started.set_result(RunningService(port=port, stop=stop, stopped=stopped))
        await stop.wait()
    finally:
        if readiness is not None:
            await readiness.stop()
        if server is not None:
            # NOT_SERVING first, so Envoy's health checks move traffic away while in-flight calls drain.
            await health_servicer.enter_graceful_shutdown()
            metrics.set_serving(False)
            await server.stop(common.shutdown_grace_seconds)
        await service_stack.aclose()
        await auth_stack.aclose()
        await probes.close()
        if resources is not None:
            await resources.close()
        await metrics_endpoint.close()
        stopped.set()
        log.info("stopped")


def run_service(definition: ServiceDefinition, environ: Mapping[str, str] | None = None) -> int:
    """Entry point of a service process: serve until SIGTERM/SIGINT; a bad setting exits with one line."""
    env = Env(environ)
    try:
        common = CommonSettings.from_env(env)
        ServerSettings.from_env(env, definition.spec)
        ResourceSettings.from_env(env, definition.spec.dependencies)
        AuthSettings.from_env(env)
        TracingSettings.from_env(env)
        if definition.own_settings is not None:
            definition.own_settings(env)
    except SettingsError as exc:
        print(f"{definition.spec.name}: {exc}", file=sys.stderr)
        return 2
    configure_logging(definition.spec.name, common.log_level)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await serve(definition, environ, stop=stop)

    try:
        asyncio.run(main())
    except SettingsError as exc:
        print(f"{definition.spec.name}: {exc}", file=sys.stderr)
        return 2
    except (OSError, ConnectionError) as exc:
        print(f"{definition.spec.name}: {exc}", file=sys.stderr)
        return 1
    finally:
        tracing.shutdown()  # the spans still buffered go out before the process ends
    return 0


def servicer_only(add_servicer: Callable[[S, grpc.aio.Server], None], servicer: S) -> Start:
    """The start hook of a service that is one servicer and nothing else (test doubles, probes):
    nothing is built from the resources and nothing runs beside the RPCs."""

    @contextlib.asynccontextmanager
    async def start(context: ServiceContext) -> AsyncIterator[None]:
        add_servicer(servicer, context.server)
        yield

    return start


def unbuilt_service(add_servicer: Callable[[Any, grpc.aio.Server], None], base_servicer: type[Any]) -> Start:
    """The start hook of a service whose RPCs are not built yet: the generated base servicer answers
    every RPC with UNIMPLEMENTED, which the error interceptor words as "<rpc> is not implemented yet"."""
    return servicer_only(add_servicer, base_servicer())


def main(definition: ServiceDefinition) -> None:
    """What a service's `__main__` calls: run it and exit with its status."""
    sys.exit(run_service(definition))
