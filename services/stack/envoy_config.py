"""Envoy's bootstrap, built from the service registry with envoy-data-plane's typed API classes.

One builder serves both places Envoy runs: the native stack (every upstream on 127.0.0.1, ports
from the environment so tests and `macp up` can move them) and compose (upstreams are compose
service names, ports are the registry's). Typed classes instead of a YAML template mean a
misspelt field fails here, in Python, rather than when Envoy starts; `envoy --mode validate`
in the tests catches what the types cannot (bad enum values, missing extensions).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Literal

import yaml
from betterproto2 import Casing
from envoy_data_plane.envoy.config.accesslog.v3 import AccessLog
from envoy_data_plane.envoy.config.bootstrap.v3 import Admin, Bootstrap, BootstrapStaticResources
from envoy_data_plane.envoy.config.cluster.v3 import (
    CircuitBreakers,
    CircuitBreakersThresholds,
    Cluster,
    ClusterDiscoveryType,
    ClusterDnsLookupFamily,
)
from envoy_data_plane.envoy.config.core.v3 import (
    Address,
    DataSource,
    HealthCheck,
    HealthCheckGrpcHealthCheck,
    HealthCheckHttpHealthCheck,
    Http1ProtocolOptions,
    Http2ProtocolOptions,
    HttpProtocolOptions,
    HttpProtocolOptionsHeadersWithUnderscoresAction,
    Node,
    SocketAddress,
    SubstitutionFormatString,
)
from envoy_data_plane.envoy.config.endpoint.v3 import (
    ClusterLoadAssignment,
    Endpoint,
    LbEndpoint,
    LocalityLbEndpoints,
)
from envoy_data_plane.envoy.config.listener.v3 import Filter, FilterChain, Listener
from envoy_data_plane.envoy.config.overload.v3 import OverloadManager, ResourceMonitor
from envoy_data_plane.envoy.config.route.v3 import (
    DirectResponseAction,
    HeaderMatcher,
    RetryPolicy,
    RetryPolicyRetryBackOff,
    RetryPolicyRetryHostPredicate,
    Route,
    RouteAction,
    RouteActionMaxStreamDuration,
    RouteConfiguration,
    RouteMatch,
    VirtualHost,
)
from envoy_data_plane.envoy.extensions.access_loggers.stream.v3 import StdoutAccessLog
from envoy_data_plane.envoy.extensions.filters.http.router.v3 import Router
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (
    HttpConnectionManager,
    HttpConnectionManagerCodecType,
    HttpConnectionManagerUpgradeConfig,
    HttpFilter,
)
from envoy_data_plane.envoy.extensions.resource_monitors.downstream_connections.v3 import (
    DownstreamConnectionsConfig,
)
from envoy_data_plane.envoy.extensions.retry.host.previous_hosts.v3 import PreviousHostsPredicate
from envoy_data_plane.envoy.extensions.upstreams.http.v3 import (
    HttpProtocolOptions as UpstreamHttpProtocolOptions,
)
from envoy_data_plane.envoy.extensions.upstreams.http.v3 import (
    HttpProtocolOptionsExplicitHttpConfig,
)
from envoy_data_plane.envoy.type.matcher.v3 import StringMatcher
from envoy_data_plane.google.protobuf import Any, Struct

from services.runtime.registry import EDGE, ENVOY, SERVICES, ServiceSpec
from services.runtime.settings import Env, ServerSettings

Target = Literal["native", "compose"]
TARGETS: tuple[Target, ...] = ("native", "compose")

# Envoy's own ports, overridable natively so parallel test stacks do not collide.
FRONT_PORT_ENV = "MACP_ENVOY_FRONT_PORT"
MESH_PORT_ENV = "MACP_ENVOY_MESH_PORT"
ADMIN_PORT_ENV = "MACP_ENVOY_ADMIN_PORT"
# What services/edge/settings.py reads (the registry's EdgeSpec has no env_prefix of its own).
EDGE_PORT_ENV = "MACP_EDGE_PORT"

# DESIGN.md: a call times out after 30 s. Streams get no overall timeout instead, only this idle
# bound, so a connection nobody reads or writes for an hour is still reclaimed; clients resume
# with StreamEvents (mesh) or by reconnecting the WebSocket (front).
UNARY_TIMEOUT = timedelta(seconds=30)
# The edge gives each gRPC call the same 30 s (MACP_EDGE_RPC_TIMEOUT_SECONDS); the front route
# waits a little longer so the client gets the edge's own error body, not Envoy's bare 504.
FRONT_TIMEOUT = timedelta(seconds=35)
UNTIMED = timedelta(0)
STREAM_IDLE_TIMEOUT = timedelta(hours=1)

# Edge paths whose responses stream (WebSocket, SSE); they must not inherit the 30 s timeout.
# `/v1/chat/completions` answers `stream: true` with SSE; `/v1/conversations/` holds the
# conversation event streams. Requests that ask for `text/event-stream` are untimed wherever
# they go, so a new SSE path does not need an entry here.
FRONT_STREAMING_PREFIXES: tuple[str, ...] = ("/v1/ws", "/v1/conversations/", "/v1/chat/completions")

# Retries happen only where the registry says an RPC is safe to repeat, and only a few, so a
# failing upstream is not hammered (each retry is another request in its circuit breaker).
RETRY_ON = "unavailable,connect-failure,refused-stream,reset"
NUM_RETRIES = 2
PER_TRY_TIMEOUT = timedelta(seconds=10)

# Streams are long-lived: one open Converse holds one request slot for its whole life, so the
# default breaker limits (1024) would cap concurrent conversations, not protect anything.
BREAKER_LIMIT = 10_000
BREAKER_MAX_RETRIES = 100
MAX_DOWNSTREAM_CONNECTIONS = 50_000

# Envoy drops a pooled connection to the edge after this long idle, sooner than the edge's own
# keep-alive (services/edge/server.py: KEEP_ALIVE_SECONDS) would close it. The other way round, a
# request Envoy sends on the connection just as the edge's close arrives fails with 503 "upstream
# connect error ... connection termination", whoever's request it was.
EDGE_IDLE_TIMEOUT = timedelta(seconds=60)

HEALTH_INTERVAL = timedelta(seconds=2)
HEALTH_TIMEOUT = timedelta(seconds=1)
CONNECT_TIMEOUT = timedelta(seconds=1)
EDGE_HEALTH_PATH = "/healthz"

FRONT_MAX_REQUEST_HEADERS_KB = 16

UPSTREAM_HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

# Access-log fields shared by both listeners; values are Envoy command operators.
_COMMON_LOG_FIELDS: dict[str, str] = {
    "time": "%START_TIME%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "method": "%REQ(:METHOD)%",
    # Without the query string: it can carry credentials (the WebSocket's `?access_token=`, an
    # authorization `code`), and an access log is no place for them.
    "path": "%PATH(NQ)%",
    "protocol": "%PROTOCOL%",
    "status": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%",
    "upstream_cluster": "%UPSTREAM_CLUSTER%",
    "upstream_host": "%UPSTREAM_HOST%",
    "duration_ms": "%DURATION%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
}


@dataclass(frozen=True)
class _Layout:
    """Where Envoy listens and where each upstream is, for one target."""

    listen_host: str
    admin_host: str
    front_port: int
    mesh_port: int
    admin_port: int
    discovery: ClusterDiscoveryType
    upstreams: dict[str, tuple[str, int]]  # cluster name -> (host, port)


def _layout(target: Target, env: Env) -> _Layout:
    if target == "compose":
        # Inside the compose network every container has its own address and Envoy must accept
        # connections from the others; the registry's ports are the containers' ports.
        return _Layout(
            listen_host="0.0.0.0",
            admin_host="0.0.0.0",
            front_port=ENVOY.front_port,
            mesh_port=ENVOY.mesh_port,
            admin_port=ENVOY.admin_port,
            discovery=ClusterDiscoveryType.STRICT_DNS,
            upstreams={
                EDGE.name: (EDGE.name, EDGE.port),
                **{spec.name: (spec.name, spec.port) for spec in SERVICES},
            },
        )
    if target == "native":
        return _Layout(
            listen_host="127.0.0.1",
            admin_host="127.0.0.1",
            front_port=env.port(FRONT_PORT_ENV, ENVOY.front_port),
            mesh_port=env.port(MESH_PORT_ENV, ENVOY.mesh_port),
            admin_port=env.port(ADMIN_PORT_ENV, ENVOY.admin_port),
            discovery=ClusterDiscoveryType.STATIC,
            upstreams={
                EDGE.name: ("127.0.0.1", env.port(EDGE_PORT_ENV, EDGE.port)),
                **{spec.name: ("127.0.0.1", ServerSettings.from_env(env, spec).port) for spec in SERVICES},
            },
        )
    raise ValueError(f"unknown Envoy target {target!r}; choose one of {', '.join(TARGETS)}")


def _address(host: str, port: int) -> Address:
    return Address(socket_address=SocketAddress(address=host, port_value=port))


def _access_log(listener: str, extra: dict[str, str] | None = None) -> AccessLog:
    fields = {"listener": listener, **_COMMON_LOG_FIELDS, **(extra or {})}
    log_format = SubstitutionFormatString(json_format=Struct.from_dict(fields))
    return AccessLog(
        name="envoy.access_loggers.stdout",
        typed_config=Any.pack(StdoutAccessLog(log_format=log_format)),
    )


def _router_filter() -> HttpFilter:
    return HttpFilter(name="envoy.filters.http.router", typed_config=Any.pack(Router()))


def _hcm_filter(manager: HttpConnectionManager) -> Filter:
    return Filter(name="envoy.filters.network.http_connection_manager", typed_config=Any.pack(manager))


# --- front listener: clients -> edge ------------------------------------------------------


def _edge_route(match: RouteMatch, *, streaming: bool) -> Route:
    if streaming:
        return Route(
            match=match,
            route=RouteAction(cluster=EDGE.name, timeout=UNTIMED, idle_timeout=STREAM_IDLE_TIMEOUT),
        )
    return Route(match=match, route=RouteAction(cluster=EDGE.name, timeout=FRONT_TIMEOUT))


def _front_listener(layout: _Layout) -> Listener:
    routes = [_edge_route(RouteMatch(prefix=prefix), streaming=True) for prefix in FRONT_STREAMING_PREFIXES]
    routes.append(
        _edge_route(
            RouteMatch(
                prefix="/",
                headers=[
                    HeaderMatcher(
                        name="accept",
                        string_match=StringMatcher(contains="text/event-stream", ignore_case=True),
                    )
                ],
            ),
            streaming=True,
        )
    )
    # The catch-all comes last: Envoy takes the first route that matches.
    routes.append(_edge_route(RouteMatch(prefix="/"), streaming=False))
    manager = HttpConnectionManager(
        stat_prefix="front",
        # AUTO: browsers and SDKs speak HTTP/1.1; h2c clients (prior knowledge) work too.
        codec_type=HttpConnectionManagerCodecType.AUTO,
        route_config=RouteConfiguration(
            name="front",
            virtual_hosts=[VirtualHost(name=EDGE.name, domains=["*"], routes=routes)],
        ),
        http_filters=[_router_filter()],
        upgrade_configs=[HttpConnectionManagerUpgradeConfig(upgrade_type="websocket")],
        # This is the edge of the system: the client's address is the peer, not a header it sent.
        use_remote_address=True,
        # A client's x-request-id is kept (and one generated when absent), so the edge, the
        # services' logs and the client all name a request the same way.
        generate_request_id=True,
        preserve_external_request_id=True,
        always_set_request_id_in_response=True,
        # Room for a bearer token at the verifier's limit (8 KiB) and ordinary headers; past it a
        # 431 from Envoy. Envoy's 60 KiB default let a 20 KiB x-request-id through, which it then
        # echoed into a WebSocket handshake's answer, longer than WebSocket clients read.
        max_request_headers_kb=FRONT_MAX_REQUEST_HEADERS_KB,
        # Normalized paths keep `/v1//ws` or `/v1/./ws` from dodging a route.
        normalize_path=True,
        merge_slashes=True,
        common_http_protocol_options=HttpProtocolOptions(
            headers_with_underscores_action=HttpProtocolOptionsHeadersWithUnderscoresAction.REJECT_REQUEST
        ),
        access_log=[_access_log("front")],
    )
    return Listener(
        name="front",
        address=_address(layout.listen_host, layout.front_port),
        filter_chains=[FilterChain(filters=[_hcm_filter(manager)])],
    )


# --- mesh listener: service -> service (gRPC over h2c) ---------------------------------------


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


def _mesh_routes() -> list[Route]:
    """The mesh routes in match order: exact RPC paths first, then service prefixes, then 404."""
    exact: list[Route] = []
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


def _mesh_listener(layout: _Layout) -> Listener:
    manager = HttpConnectionManager(
        stat_prefix="mesh",
        # gRPC only: h2c with prior knowledge, no HTTP/1.1 upgrade dance.
        codec_type=HttpConnectionManagerCodecType.HTTP2,
        http2_protocol_options=Http2ProtocolOptions(),
        route_config=RouteConfiguration(
            name="mesh",
            virtual_hosts=[VirtualHost(name="mesh", domains=["*"], routes=_mesh_routes())],
        ),
        http_filters=[_router_filter()],
        # The edge forwards the client's request id as metadata; keep it across every hop.
        generate_request_id=True,
        preserve_external_request_id=True,
        access_log=[_access_log("mesh", {"grpc_status": "%GRPC_STATUS%"})],
    )
    return Listener(
        name="mesh",
        address=_address(layout.listen_host, layout.mesh_port),
        filter_chains=[FilterChain(filters=[_hcm_filter(manager)])],
    )


# --- clusters -------------------------------------------------------------------------------


def _circuit_breakers() -> CircuitBreakers:
    return CircuitBreakers(
        thresholds=[
            CircuitBreakersThresholds(
                max_connections=BREAKER_LIMIT,
                max_pending_requests=BREAKER_LIMIT,
                max_requests=BREAKER_LIMIT,
                max_retries=BREAKER_MAX_RETRIES,
                # Publishes remaining capacity as gauges, so a filling breaker shows before it trips.
                track_remaining=True,
            )
        ]
    )


def _cluster(
    name: str,
    layout: _Layout,
    protocol: UpstreamHttpProtocolOptions,
    health_check: HealthCheck,
) -> Cluster:
    host, port = layout.upstreams[name]
    return Cluster(
        name=name,
        type=layout.discovery,
        # Compose's DNS answers A records; asking for AAAA first only adds a failed lookup.
        dns_lookup_family=(
            ClusterDnsLookupFamily.V4_ONLY
            if layout.discovery == ClusterDiscoveryType.STRICT_DNS
            else ClusterDnsLookupFamily.AUTO
        ),
        connect_timeout=CONNECT_TIMEOUT,
        load_assignment=ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[
                LocalityLbEndpoints(
                    lb_endpoints=[LbEndpoint(endpoint=Endpoint(address=_address(host, port)))]
                )
            ],
        ),
        typed_extension_protocol_options={UPSTREAM_HTTP_OPTIONS_KEY: Any.pack(protocol)},
        health_checks=[health_check],
        circuit_breakers=_circuit_breakers(),
    )


def _health_check(
    *, grpc: HealthCheckGrpcHealthCheck | None = None, http: HealthCheckHttpHealthCheck | None = None
) -> HealthCheck:
    return HealthCheck(
        timeout=HEALTH_TIMEOUT,
        interval=HEALTH_INTERVAL,
        # Without traffic Envoy would otherwise check only once a minute, so a service that has
        # just become SERVING would wait up to 60 s to receive its first call.
        no_traffic_interval=HEALTH_INTERVAL,
        unhealthy_threshold=2,
        healthy_threshold=1,
        grpc_health_check=grpc,
        http_health_check=http,
    )


def _service_cluster(spec: ServiceSpec, layout: _Layout) -> Cluster:
    """A gRPC service's cluster: h2c upstream, gRPC health checks, breakers sized for streams."""
    h2c = UpstreamHttpProtocolOptions(
        explicit_http_config=HttpProtocolOptionsExplicitHttpConfig(
            http2_protocol_options=Http2ProtocolOptions()
        )
    )
    # service_name "" asks for the server's overall status, which the stock HealthServicer flips
    # to NOT_SERVING on graceful shutdown along with every named service.
    check = _health_check(grpc=HealthCheckGrpcHealthCheck(service_name=""))
    return _cluster(spec.name, layout, h2c, check)


def _edge_cluster(layout: _Layout) -> Cluster:
    """The edge's cluster: HTTP/1.1, because WebSocket upgrades need it, checked on /healthz."""
    http1 = UpstreamHttpProtocolOptions(
        common_http_protocol_options=HttpProtocolOptions(idle_timeout=EDGE_IDLE_TIMEOUT),
        explicit_http_config=HttpProtocolOptionsExplicitHttpConfig(
            http_protocol_options=Http1ProtocolOptions()
        ),
    )
    check = _health_check(http=HealthCheckHttpHealthCheck(path=EDGE_HEALTH_PATH))
    return _cluster(EDGE.name, layout, http1, check)


# --- bootstrap and rendering ------------------------------------------------------------------


def build_bootstrap(target: Target, env: Env | None = None) -> Bootstrap:
    """The whole Envoy bootstrap for `target`; `env` only matters natively (port overrides)."""
    layout = _layout(target, Env() if env is None else env)
    return Bootstrap(
        node=Node(id=f"macp-envoy-{target}", cluster="macp"),
        admin=Admin(address=_address(layout.admin_host, layout.admin_port)),
        static_resources=BootstrapStaticResources(
            listeners=[_front_listener(layout), _mesh_listener(layout)],
            clusters=[_edge_cluster(layout), *(_service_cluster(spec, layout) for spec in SERVICES)],
        ),
        # Envoy warns at start-up without a global connection limit; one high limit keeps a
        # runaway client from exhausting file descriptors.
        overload_manager=OverloadManager(
            resource_monitors=[
                ResourceMonitor(
                    name="envoy.resource_monitors.global_downstream_max_connections",
                    typed_config=Any.pack(
                        DownstreamConnectionsConfig(
                            max_active_downstream_connections=MAX_DOWNSTREAM_CONNECTIONS
                        )
                    ),
                )
            ]
        ),
    )


def _header(target: Target) -> str:
    return (
        f"# Envoy bootstrap for the {target} stack.\n"
        "# Generated by `macp envoy-render` from services/runtime/registry.py by\n"
        "# services/stack/envoy_config.py; do not edit: change those and render again.\n"
    )


def render_yaml(target: Target, env: Env | None = None) -> str:
    """The bootstrap as YAML; the same inputs always give the same bytes (it is committed)."""
    # Snake case matches Envoy's documentation; typed Any configs serialize with their `@type`.
    document = build_bootstrap(target, env).to_dict(casing=Casing.SNAKE)
    body = yaml.safe_dump(document, sort_keys=False, default_flow_style=False, width=120)
    return _header(target) + body


def render_native(path: Path, env: Env | None = None) -> Path:
    """Write the native bootstrap to `path` (atomically, so Envoy never reads half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = render_yaml("native", env)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path
