"""Envoy's bootstrap, built from the service registry with envoy-data-plane's typed API classes.

One builder serves both places Envoy runs: the native stack (every upstream on 127.0.0.1, ports
from the environment so tests and `macp up` can move them) and compose (upstreams are compose
service names, ports are the registry's). Typed classes instead of a YAML template mean a
misspelt field fails here, in Python, rather than when Envoy starts; `envoy --mode validate`
in the tests catches what the types cannot (bad enum values, missing extensions).

The clusters (health checking, panic thresholds, breakers) are built in envoy_clusters.py and the
mesh listener's routes in envoy_mesh_routes.py; this module lays them out per target.
"""

from __future__ import annotations

import os
import tempfile
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Literal

import yaml
from betterproto2 import Casing
from envoy_data_plane.envoy.config.accesslog.v3 import AccessLog
from envoy_data_plane.envoy.config.bootstrap.v3 import Admin, Bootstrap, BootstrapStaticResources
from envoy_data_plane.envoy.config.cluster.v3 import (
    ClusterDiscoveryType,
)
from envoy_data_plane.envoy.config.core.v3 import (
    Address,
    Http2ProtocolOptions,
    HttpProtocolOptions,
    HttpProtocolOptionsHeadersWithUnderscoresAction,
    Node,
    SocketAddress,
    SubstitutionFormatString,
)
from envoy_data_plane.envoy.config.listener.v3 import Filter, FilterChain, Listener
from envoy_data_plane.envoy.config.overload.v3 import OverloadManager, ResourceMonitor
from envoy_data_plane.envoy.config.route.v3 import (
    HeaderMatcher,
    RetryPolicy,
    RetryPolicyRetryHostPredicate,
    Route,
    RouteAction,
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
from envoy_data_plane.envoy.type.matcher.v3 import StringMatcher
from envoy_data_plane.google.protobuf import Any, Struct

from services.runtime.registry import EDGE, ENVOY, SERVICES, ServiceSpec
from services.runtime.settings import Env
from services.stack.envoy_clusters import Upstream, edge_cluster, http_face_cluster, service_cluster
from services.stack.envoy_mesh_routes import STREAM_IDLE_TIMEOUT, UNTIMED, mesh_routes
from services.stack.replicas import edge_replicas, service_replicas

Target = Literal["native", "compose"]
TARGETS: tuple[Target, ...] = ("native", "compose")

# Envoy's own ports, overridable natively so parallel test stacks do not collide.
FRONT_PORT_ENV = "MACP_ENVOY_FRONT_PORT"
MESH_PORT_ENV = "MACP_ENVOY_MESH_PORT"
ADMIN_PORT_ENV = "MACP_ENVOY_ADMIN_PORT"

# The edge gives each gRPC call the same 30 s (MACP_EDGE_RPC_TIMEOUT_SECONDS); the front route
# waits a little longer so the client gets the edge's own error body, not Envoy's bare 504.
FRONT_TIMEOUT = timedelta(seconds=35)

# Edge paths whose responses stream (WebSocket, SSE); they must not inherit the 30 s timeout.
# `/v1/chat/completions` answers `stream: true` with SSE; `/v1/conversations/` holds the
# conversation event streams. Requests that ask for `text/event-stream` are untimed wherever
# they go, so a new SSE path does not need an entry here.
FRONT_STREAMING_PREFIXES: tuple[str, ...] = ("/v1/ws", "/v1/conversations/", "/v1/chat/completions")

MAX_DOWNSTREAM_CONNECTIONS = 50_000

FRONT_MAX_REQUEST_HEADERS_KB = 16


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
    upstreams: dict[str, tuple[tuple[str, int], ...]]  # cluster name -> every (host, port) of it


# The services that serve an HTTP face of their own beside gRPC (the tool gateway's /mcp).
HTTP_FACES = tuple(spec for spec in SERVICES if spec.http_port is not None)


def _http_port(spec: ServiceSpec) -> int:
    assert spec.http_port is not None
    return spec.http_port


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
            # One DNS name per cluster, which resolves to every replica's address (STRICT_DNS).
            upstreams={
                EDGE.name: ((EDGE.name, EDGE.port),),
                **{spec.name: ((spec.name, spec.port),) for spec in SERVICES},
                **{spec.http_name: ((spec.name, _http_port(spec)),) for spec in HTTP_FACES},
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
            # Every replica `macp up` runs of each (services/stack/replicas.py), one endpoint each.
            upstreams={
                EDGE.name: _loopback(replica.port for replica in edge_replicas(env)),
                **{spec.name: _loopback(r.port for r in service_replicas(env, spec)) for spec in SERVICES},
                **{
                    spec.http_name: _loopback(r.http_port or 0 for r in service_replicas(env, spec))
                    for spec in HTTP_FACES
                },
            },
        )
    raise ValueError(f"unknown Envoy target {target!r}; choose one of {', '.join(TARGETS)}")


def _loopback(ports: Iterable[int]) -> tuple[tuple[str, int], ...]:
    return tuple(("127.0.0.1", port) for port in ports)


def _upstream(layout: _Layout, name: str) -> Upstream:
    return Upstream(tuple(_address(*where) for where in layout.upstreams[name]), layout.discovery)


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


def _http_face_routes() -> list[Route]:
    """The exact paths a service serves itself (the tool gateway's /mcp), first: the SSE catch-all
    below would otherwise send an MCP client's `accept: text/event-stream` to the edge. Untimed
    like the edge's streams (an MCP response may be an SSE stream), bounded by the idle timeout."""
    return [
        Route(
            match=RouteMatch(path=path),
            route=RouteAction(
                cluster=spec.http_name,
                timeout=UNTIMED,
                idle_timeout=STREAM_IDLE_TIMEOUT,
                retry_policy=_unsent_retry(),
            ),
        )
        for spec in HTTP_FACES
        for path in spec.front_paths
    ]


def _unsent_retry() -> RetryPolicy:
    """Another instance for a request no instance took (a process stopping, or gone before the
    health checks saw it): safe for any method, since nothing of it was served."""
    return RetryPolicy(
        retry_on="connect-failure,refused-stream",
        num_retries=2,
        retry_host_predicate=[
            RetryPolicyRetryHostPredicate(
                name="envoy.retry_host_predicates.previous_hosts",
                typed_config=Any.pack(PreviousHostsPredicate()),
            )
        ],
        host_selection_retry_max_attempts=3,
    )


def _front_listener(layout: _Layout) -> Listener:
    routes = _http_face_routes()
    routes += [_edge_route(RouteMatch(prefix=prefix), streaming=True) for prefix in FRONT_STREAMING_PREFIXES]
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


def _mesh_listener(layout: _Layout) -> Listener:
    manager = HttpConnectionManager(
        stat_prefix="mesh",
        # gRPC only: h2c with prior knowledge, no HTTP/1.1 upgrade dance.
        codec_type=HttpConnectionManagerCodecType.HTTP2,
        http2_protocol_options=Http2ProtocolOptions(),
        route_config=RouteConfiguration(
            name="mesh",
            virtual_hosts=[VirtualHost(name="mesh", domains=["*"], routes=mesh_routes())],
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


# --- bootstrap and rendering ------------------------------------------------------------------


def build_bootstrap(target: Target, env: Env | None = None) -> Bootstrap:
    """The whole Envoy bootstrap for `target`; `env` only matters natively (port overrides)."""
    layout = _layout(target, Env() if env is None else env)
    return Bootstrap(
        node=Node(id=f"macp-envoy-{target}", cluster="macp"),
        admin=Admin(address=_address(layout.admin_host, layout.admin_port)),
        static_resources=BootstrapStaticResources(
            listeners=[_front_listener(layout), _mesh_listener(layout)],
            clusters=[
                edge_cluster(_upstream(layout, EDGE.name)),
                *(service_cluster(spec, _upstream(layout, spec.name)) for spec in SERVICES),
                *(http_face_cluster(spec, _upstream(layout, spec.http_name)) for spec in HTTP_FACES),
            ],
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


# The snake casing splits a digit from the letters after it (`consecutive_5_xx`), where Envoy's own
# field names keep them together; Envoy refuses the split spelling as an unknown field.
_SPLIT_FIELD_NAMES = {
    "consecutive_5_xx": "consecutive_5xx",
    "enforcing_consecutive_5_xx": "enforcing_consecutive_5xx",
}


def _envoy_field_names(value: object) -> object:
    if isinstance(value, dict):
        return {_SPLIT_FIELD_NAMES.get(key, key): _envoy_field_names(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_envoy_field_names(item) for item in value]
    return value


def bootstrap_document(bootstrap: Bootstrap) -> dict[str, typing.Any]:
    """The bootstrap as the plain document Envoy reads (YAML or JSON): snake-case field names as
    Envoy's documentation spells them; typed Any configs serialize with their `@type`."""
    document = _envoy_field_names(bootstrap.to_dict(casing=Casing.SNAKE))
    assert isinstance(document, dict)
    return document


def render_yaml(target: Target, env: Env | None = None) -> str:
    """The bootstrap as YAML; the same inputs always give the same bytes (it is committed)."""
    document = bootstrap_document(build_bootstrap(target, env))
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
