"""Envoy's clusters: one per service (h2c, gRPC health checks) and the edge's (HTTP/1.1, /healthz),
each with the health checking that makes Envoy route only to ready instances
(services/runtime/readiness.py) and breakers sized for long-lived streams. Used by envoy_config.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from envoy_data_plane.envoy.config.cluster.v3 import (
    CircuitBreakers,
    CircuitBreakersThresholds,
    Cluster,
    ClusterCommonLbConfig,
    ClusterDiscoveryType,
    ClusterDnsLookupFamily,
    OutlierDetection,
)
from envoy_data_plane.envoy.config.core.v3 import (
    Address,
    HealthCheck,
    HealthCheckGrpcHealthCheck,
    HealthCheckHttpHealthCheck,
    Http1ProtocolOptions,
    Http2ProtocolOptions,
    HttpProtocolOptions,
)
from envoy_data_plane.envoy.config.endpoint.v3 import (
    ClusterLoadAssignment,
    Endpoint,
    LbEndpoint,
    LocalityLbEndpoints,
)
from envoy_data_plane.envoy.extensions.upstreams.http.v3 import (
    HttpProtocolOptions as UpstreamHttpProtocolOptions,
)
from envoy_data_plane.envoy.extensions.upstreams.http.v3 import (
    HttpProtocolOptionsExplicitHttpConfig,
)
from envoy_data_plane.envoy.type.v3 import Percent
from envoy_data_plane.google.protobuf import Any

from services.runtime.registry import EDGE, ServiceSpec

# Streams are long-lived: one open Converse holds one request slot for its whole life, so the
# default breaker limits (1024) would cap concurrent conversations, not protect anything.
BREAKER_LIMIT = 10_000
BREAKER_MAX_RETRIES = 100
# Envoy drops a pooled connection to the edge after this long idle, sooner than the edge's own
# keep-alive (services/edge/server.py: KEEP_ALIVE_SECONDS) would close it. The other way round, a
# request Envoy sends on the connection just as the edge's close arrives fails with 503 "upstream
# connect error ... connection termination", whoever's request it was.
EDGE_IDLE_TIMEOUT = timedelta(seconds=60)

# Envoy routes only to instances that say they are ready (services/runtime/readiness.py). A healthy
# host is checked every second and dropped after two failed checks (the second one half a second
# after the first), within about 1.5 s of saying NOT_SERVING; an unhealthy one is checked every
# half second and taken back after one success, so a (re)started service gets traffic within about
# half a second of saying SERVING.
HEALTH_INTERVAL = timedelta(seconds=1)
UNHEALTHY_HEALTH_INTERVAL = timedelta(milliseconds=500)
HEALTH_TIMEOUT = timedelta(seconds=1)
CONNECT_TIMEOUT = timedelta(seconds=1)
# A host's change of health reaches the load balancers at once. Envoy's default merges such changes
# for 1 s, which is for clusters of hundreds of hosts: here it kept a just-ready replica out of the
# round robin (and a stopping one in it) for up to a second after /clusters showed the change.
HEALTH_UPDATE_MERGE_WINDOW = timedelta(0)
EDGE_HEALTH_PATH = "/healthz"
# A service cluster without a healthy host answers UNAVAILABLE at once ("no healthy upstream")
# instead of Envoy's default panic routing, which below 50% healthy hosts sends calls to every host,
# and so, with one replica, to a service that said it cannot serve them.
SERVICE_PANIC_THRESHOLD = 0.0
# The edge's cluster panics only when no edge is ready: then each edge answers for itself, with a
# 503 NOT_READY and Retry-After, or a WebSocket close 4503, where Envoy would answer a bare 503 and
# refuse the WebSocket handshake. While any edge is ready, only ready ones get requests.
EDGE_PANIC_THRESHOLD = 1.0
UPSTREAM_HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


# Outlier detection takes a replica out of the balancing at its third connection failure, reset or
# timeout in a row: a SIGKILLed process refuses connections at once, long before its health checks
# fail twice (up to 1.5 s), and each of those calls would fail or need a retry meanwhile. Only such
# local-origin failures count: an answer, even UNAVAILABLE or INTERNAL, shows a process that serves,
# and whether it can is the health checks' business (readiness). A passed health check takes an
# ejected replica back at once; at most half of a cluster is ever ejected (Envoy ejects one host of
# a cluster of one, which changes nothing: a dead lone replica serves no one either way).
OUTLIER_CONSECUTIVE_LOCAL_FAILURES = 3
OUTLIER_INTERVAL = timedelta(seconds=1)
OUTLIER_BASE_EJECTION = timedelta(seconds=2)
OUTLIER_MAX_EJECTION = timedelta(seconds=10)
OUTLIER_MAX_EJECTION_PERCENT = 50


@dataclass(frozen=True)
class Upstream:
    """Where a cluster's endpoints are (one per replica, or one DNS name resolving to every
    replica), and how Envoy finds them (static addresses or DNS)."""

    addresses: tuple[Address, ...]
    discovery: ClusterDiscoveryType


def _outlier_detection() -> OutlierDetection:
    never = 0
    return OutlierDetection(
        split_external_local_origin_errors=True,
        consecutive_local_origin_failure=OUTLIER_CONSECUTIVE_LOCAL_FAILURES,
        enforcing_consecutive_local_origin_failure=100,
        # Answers never eject (see above): no 5xx, gateway-failure or success-rate ejection.
        enforcing_consecutive_5xx=never,
        enforcing_consecutive_gateway_failure=never,
        enforcing_success_rate=never,
        enforcing_local_origin_success_rate=never,
        interval=OUTLIER_INTERVAL,
        base_ejection_time=OUTLIER_BASE_EJECTION,
        max_ejection_time=OUTLIER_MAX_EJECTION,
        max_ejection_percent=OUTLIER_MAX_EJECTION_PERCENT,
    )


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
    upstream: Upstream,
    protocol: UpstreamHttpProtocolOptions,
    health_check: HealthCheck,
    panic_threshold: float,
) -> Cluster:
    return Cluster(
        name=name,
        type=upstream.discovery,
        # Compose's DNS answers A records; asking for AAAA first only adds a failed lookup.
        dns_lookup_family=(
            ClusterDnsLookupFamily.V4_ONLY
            if upstream.discovery == ClusterDiscoveryType.STRICT_DNS
            else ClusterDnsLookupFamily.AUTO
        ),
        connect_timeout=CONNECT_TIMEOUT,
        load_assignment=ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[
                LocalityLbEndpoints(
                    lb_endpoints=[LbEndpoint(endpoint=Endpoint(address=at)) for at in upstream.addresses]
                )
            ],
        ),
        outlier_detection=_outlier_detection(),
        typed_extension_protocol_options={UPSTREAM_HTTP_OPTIONS_KEY: Any.pack(protocol)},
        health_checks=[health_check],
        common_lb_config=ClusterCommonLbConfig(
            healthy_panic_threshold=Percent(value=panic_threshold),
            update_merge_window=HEALTH_UPDATE_MERGE_WINDOW,
        ),
        circuit_breakers=_circuit_breakers(),
    )


def _health_check(
    *, grpc: HealthCheckGrpcHealthCheck | None = None, http: HealthCheckHttpHealthCheck | None = None
) -> HealthCheck:
    return HealthCheck(
        timeout=HEALTH_TIMEOUT,
        interval=HEALTH_INTERVAL,
        unhealthy_interval=UNHEALTHY_HEALTH_INTERVAL,
        # Without traffic Envoy would otherwise check only once a minute, so a service that has
        # just become SERVING would wait up to 60 s to receive its first call.
        no_traffic_interval=UNHEALTHY_HEALTH_INTERVAL,
        no_traffic_healthy_interval=HEALTH_INTERVAL,
        unhealthy_threshold=2,
        healthy_threshold=1,
        grpc_health_check=grpc,
        http_health_check=http,
    )


def service_cluster(spec: ServiceSpec, upstream: Upstream) -> Cluster:
    """A gRPC service's cluster: h2c upstream, gRPC health checks, breakers sized for streams."""
    h2c = UpstreamHttpProtocolOptions(
        explicit_http_config=HttpProtocolOptionsExplicitHttpConfig(
            http2_protocol_options=Http2ProtocolOptions()
        )
    )
    # service_name "" asks for the server's overall status, which the stock HealthServicer flips
    # to NOT_SERVING on graceful shutdown along with every named service.
    check = _health_check(grpc=HealthCheckGrpcHealthCheck(service_name=""))
    return _cluster(spec.name, upstream, h2c, check, SERVICE_PANIC_THRESHOLD)


def edge_cluster(upstream: Upstream) -> Cluster:
    """The edge's cluster: HTTP/1.1, because WebSocket upgrades need it, checked on /healthz."""
    http1 = UpstreamHttpProtocolOptions(
        common_http_protocol_options=HttpProtocolOptions(idle_timeout=EDGE_IDLE_TIMEOUT),
        explicit_http_config=HttpProtocolOptionsExplicitHttpConfig(
            http_protocol_options=Http1ProtocolOptions()
        ),
    )
    # /healthz answers 503 while the edge is not ready (services/edge/readiness.py), which Envoy
    # takes as unhealthy at once, whatever the threshold.
    check = _health_check(http=HealthCheckHttpHealthCheck(path=EDGE_HEALTH_PATH))
    return _cluster(EDGE.name, upstream, http1, check, EDGE_PANIC_THRESHOLD)


def http_face_cluster(spec: ServiceSpec, upstream: Upstream) -> Cluster:
    """A service's own HTTP face (the tool gateway's /mcp): HTTP/1.1 to its HTTP port, checked on
    that port's /healthz, which answers 503 while that face cannot serve (its keys not loaded yet,
    or the process stopping). No panic routing: no ready instance means 503 at once."""
    http1 = UpstreamHttpProtocolOptions(
        common_http_protocol_options=HttpProtocolOptions(idle_timeout=EDGE_IDLE_TIMEOUT),
        explicit_http_config=HttpProtocolOptionsExplicitHttpConfig(
            http_protocol_options=Http1ProtocolOptions()
        ),
    )
    check = _health_check(http=HealthCheckHttpHealthCheck(path=EDGE_HEALTH_PATH))
    return _cluster(spec.http_name, upstream, http1, check, SERVICE_PANIC_THRESHOLD)
