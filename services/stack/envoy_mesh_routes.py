"""The routes of Envoy's mesh listener (service -> service, gRPC over h2c): readiness checks by
their target header, streaming RPCs untimed, retry-safe RPCs retried, every other RPC by its gRPC
service's prefix, and a 404 (UNIMPLEMENTED to a gRPC caller) for any other path. Used by
envoy_config.py.
"""

from __future__ import annotations

from datetime import timedelta

from envoy_data_plane.envoy.config.core.v3 import DataSource
from envoy_data_plane.envoy.config.route.v3 import (
    DirectResponseAction,
    HeaderMatcher,
    RetryPolicy,
    RetryPolicyRetryBackOff,
    RetryPolicyRetryHostPredicate,
    Route,
    RouteAction,
    RouteActionMaxStreamDuration,
    RouteMatch,
)
from envoy_data_plane.envoy.extensions.retry.host.previous_hosts.v3 import PreviousHostsPredicate
from envoy_data_plane.envoy.type.matcher.v3 import StringMatcher
from envoy_data_plane.google.protobuf import Any

from services.runtime.readiness import HEALTH_TARGET_HEADER
from services.runtime.registry import SERVICES, ServiceSpec

# DESIGN.md: a call times out after 30 s. Streams get no overall timeout instead, only this idle
# bound, so a connection nobody reads or writes for an hour is still reclaimed; clients resume
# with StreamEvents (mesh) or by reconnecting the WebSocket (front).
UNARY_TIMEOUT = timedelta(seconds=30)
UNTIMED = timedelta(0)
STREAM_IDLE_TIMEOUT = timedelta(hours=1)


# Retries happen only where the registry says an RPC is safe to repeat, and only a few, so a
# failing upstream is not hammered (each retry is another request in its circuit breaker).
RETRY_ON = "unavailable,connect-failure,refused-stream,reset"
NUM_RETRIES = 2
PER_TRY_TIMEOUT = timedelta(seconds=10)

# A readiness check through the mesh (services/runtime/readiness.py) answers fast or not at all.
HEALTH_ROUTE_TIMEOUT = timedelta(seconds=2)
HEALTH_CHECK_PATH = "/grpc.health.v1.Health/Check"


def _mesh_action(spec: ServiceSpec, *, streaming: bool, retry_safe: bool) -> RouteAction:
    if streaming:
        # No route timeout and no stream duration cap; a deadline the caller set still applies
        # (grpc_timeout_header_max 0 = honor grpc-timeout uncapped).
        return RouteAction(
            cluster=spec.name,
            timeout=UNTIMED,
            idle_timeout=STREAM_IDLE_TIMEOUT,
            max_stream_duration=RouteActionMaxStreamDuration(grpc_timeout_header_max=UNTIMED),
        )
    retry_policy = None
    if retry_safe:
        retry_policy = RetryPolicy(
            retry_on=RETRY_ON,
            num_retries=NUM_RETRIES,
            per_try_timeout=PER_TRY_TIMEOUT,
            retry_back_off=RetryPolicyRetryBackOff(
                base_interval=timedelta(milliseconds=50), max_interval=timedelta(milliseconds=500)
            ),
            # With several replicas (`compose up --scale`), try a different one.
            retry_host_predicate=[
                RetryPolicyRetryHostPredicate(
                    name="envoy.retry_host_predicates.previous_hosts",
                    typed_config=Any.pack(PreviousHostsPredicate()),
                )
            ],
            host_selection_retry_max_attempts=3,
        )
    # A caller's shorter gRPC deadline wins; a longer one is capped at the unary timeout.
    return RouteAction(
        cluster=spec.name,
        timeout=UNARY_TIMEOUT,
        max_stream_duration=RouteActionMaxStreamDuration(grpc_timeout_header_max=UNARY_TIMEOUT),
        retry_policy=retry_policy,
    )


def _target_is(name: str) -> HeaderMatcher:
    return HeaderMatcher(name=HEALTH_TARGET_HEADER, string_match=StringMatcher(exact=name))


def _health_routes() -> list[Route]:
    """A gRPC health Check carrying `macp-health-target: <service>` goes to that service's cluster:
    how a caller checks that a service it needs answers through the mesh, Envoy's view of the
    cluster included (services/runtime/readiness.py). Health has no service prefix of its own to
    route by: every service serves it."""
    return [
        Route(
            name=f"health/{spec.name}",
            match=RouteMatch(path=HEALTH_CHECK_PATH, headers=[_target_is(spec.name)]),
            route=RouteAction(cluster=spec.name, timeout=HEALTH_ROUTE_TIMEOUT),
        )
        for spec in SERVICES
    ]


def mesh_routes() -> list[Route]:
    """The mesh routes in match order: readiness checks, exact RPC paths, service prefixes, 404."""
    exact: list[Route] = _health_routes()
    prefixes: list[Route] = []
    for spec in SERVICES:
        for grpc_service in spec.grpc_services:
            for rpc in spec.streaming_rpcs:
                exact.append(
                    Route(
                        name=f"{grpc_service}/{rpc}",
                        match=RouteMatch(path=f"/{grpc_service}/{rpc}"),
                        route=_mesh_action(spec, streaming=True, retry_safe=False),
                    )
                )
            for rpc in spec.retry_safe_rpcs:
                exact.append(
                    Route(
                        name=f"{grpc_service}/{rpc}",
                        match=RouteMatch(path=f"/{grpc_service}/{rpc}"),
                        route=_mesh_action(spec, streaming=False, retry_safe=True),
                    )
                )
            prefixes.append(
                Route(
                    name=grpc_service,
                    match=RouteMatch(prefix=f"/{grpc_service}/"),
                    route=_mesh_action(spec, streaming=False, retry_safe=False),
                )
            )
    # Envoy turns a local reply to a gRPC request into a gRPC status (404 -> UNIMPLEMENTED), so
    # a caller of an unknown service gets UNIMPLEMENTED rather than a bare HTTP error.
    not_found = Route(
        name="unknown-service",
        match=RouteMatch(prefix="/"),
        direct_response=DirectResponseAction(
            status=404, body=DataSource(inline_string="no MACP gRPC service serves this path\n")
        ),
    )
    return [*exact, *prefixes, not_found]
