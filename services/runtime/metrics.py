"""Prometheus metrics: the same metric names in every service, served on each one's `/metrics` port."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# Latency buckets from 1 ms to 30 s: unary reads sit at the low end, streamed agent turns at the top.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class RpcMetrics:
    """Request count and latency per RPC and status, plus whether the process is serving."""

    def __init__(self, service: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        labels = ("service", "rpc", "grpc_status")
        self._requests = Counter(
            "macp_rpc_requests", "RPCs handled, by final status", labels, registry=self.registry
        )
        self._latency = Histogram(
            "macp_rpc_duration_seconds",
            "RPC handling time, by final status",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.serving = Gauge(
            "macp_serving", "1 while the health service reports SERVING", ("service",), registry=self.registry
        )
        self._service = service

    def observe(self, rpc: str, status: str, seconds: float) -> None:
        self._requests.labels(self._service, rpc, status).inc()
        self._latency.labels(self._service, rpc, status).observe(seconds)

    def set_serving(self, serving: bool) -> None:
        self.serving.labels(self._service).set(1 if serving else 0)


@dataclass
class MetricsEndpoint:
    """The running `/metrics` HTTP server; `close()` frees its port."""

    server: WSGIServer
    thread: threading.Thread

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> MetricsEndpoint:
    server, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsEndpoint(server=server, thread=thread)


class HttpMetrics:
    """Request count and latency per HTTP route and status (the edge's counterpart of RpcMetrics)."""

    def __init__(self, service: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        labels = ("service", "method", "route", "status")
        self._requests = Counter(
            "macp_http_requests", "HTTP requests handled, by status", labels, registry=self.registry
        )
        self._latency = Histogram(
            "macp_http_request_duration_seconds",
            "HTTP request handling time, by status",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._service = service

    def observe(self, method: str, route: str, status: str, seconds: float) -> None:
        self._requests.labels(self._service, method, route, status).inc()
        self._latency.labels(self._service, method, route, status).observe(seconds)
