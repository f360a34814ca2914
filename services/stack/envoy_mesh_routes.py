"""The routes of Envoy's mesh listener (service -> service, gRPC over h2c): readiness checks by
their target header, health and reflection by the `macp-target` header (or to a default service),
streaming RPCs untimed, retry-safe RPCs retried, every other RPC by its gRPC service's prefix, and
a 404 (UNIMPLEMENTED to a gRPC caller) for any other path. Used by envoy_config.py.
"""

from __future__ import annotations

import re
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
from envoy_data_plane.envoy.type.matcher.v3 import RegexMatcher, StringMatcher
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
HEALTH_SERVICE = "grpc.health.v1.Health"
HEALTH_CHECK_PATH = f"/{HEALTH_SERVICE}/Check"
HEALTH_WATCH_PATH = f"/{HEALTH_SERVICE}/Watch"
REFLECTION_PATHS = (
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
)

# Every service serves health and reflection, so their paths say nothing of where to go: a caller
# (grpcurl, a probe) names the service in this header, by its registry name. Without it they go to
# DEFAULT_TARGET, whose reflection lists the whole mesh as every service's does
# (services/runtime/reflection.py). The conversation service needs no other service, so it answers
# as soon as it is ready itself, and it asks for a token like every port should (the token service
# admits every call to check its callers itself, so it would describe the mesh to anyone).
TARGET_HEADER = "macp-target"
DEFAULT_TARGET = "conversation"


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


def _target_is_unknown() -> list[HeaderMatcher]:
    known = "|".join(re.escape(spec.name) for spec in SERVICES)
    return [
        HeaderMatcher(name=TARGET_HEADER, present_match=True),
        HeaderMatcher(
            name=TARGET_HEADER,
            string_match=StringMatcher(safe_regex=RegexMatcher(regex=f"^({known})$")),
            invert_match=True,
        ),
    ]


def _unknown_target(path: str) -> Route:
    known = ", ".join(spec.name for spec in SERVICES)
    return Route(
        name=f"{path.split('/')[1]}/unknown-target",
        match=RouteMatch(path=path, headers=_target_is_unknown()),
        direct_response=DirectResponseAction(
            status=404,
            body=DataSource(inline_string=f"{TARGET_HEADER} names no MACP service; known: {known}\n"),
        ),
    )


def _target_routes() -> list[Route]:
    """Health and reflection by `macp-target`: to the named service's cluster; a name the registry
    does not know is refused (404, UNIMPLEMENTED to a gRPC caller, the message naming the header);
    without the header, to DEFAULT_TARGET. Reflection and Watch stream, so they are untimed."""
    default = next(spec for spec in SERVICES if spec.name == DEFAULT_TARGET)
    routes: list[Route] = []
    for path in (HEALTH_CHECK_PATH, HEALTH_WATCH_PATH, *REFLECTION_PATHS):
        choices = [(spec, [_target_header_is(spec.name)], spec.name) for spec in SERVICES]
        for spec, headers, label in [*choices, (default, [], "default")]:
            if not headers:
                routes.append(_unknown_target(path))
            if path == HEALTH_CHECK_PATH:
                action = RouteAction(cluster=spec.name, timeout=HEALTH_ROUTE_TIMEOUT)
            else:
                action = _mesh_action(spec, streaming=True, retry_safe=False)
            name = f"{path.split('/')[1]}/{path.split('/')[2]}/{label}"
            routes.append(Route(name=name, match=RouteMatch(path=path, headers=headers), route=action))
    return routes


def _target_header_is(name: str) -> HeaderMatcher:
    return HeaderMatcher(name=TARGET_HEADER, string_match=StringMatcher(exact=name))


def mesh_routes() -> list[Route]:
    """The mesh routes in match order: readiness checks, health and reflection by target, exact RPC
    paths, service prefixes, 404."""
    exact: list[Route] = [*_health_routes(), *_target_routes()]
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
