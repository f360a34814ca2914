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


class ConsumerMetrics:
    """A Kafka consumer's signals: records by outcome (rate() of it is events/s), lag per partition,
    batches and their handling time. Outcomes are the sink's own words ("recorded", "duplicate",
    "dead_lettered")."""

    def __init__(self, service: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._records = Counter(
            "macp_consumer_records",
            "Kafka records handled, by outcome",
            ("service", "topic", "outcome"),
            registry=self.registry,
        )
        self._lag = Gauge(
            "macp_consumer_lag",
            "Records between the partition's high watermark and the consumer's position",
            ("service", "topic", "partition"),
            registry=self.registry,
        )
        self._rate = Gauge(
            "macp_consumer_records_per_second",
            "Records handled per second over the last completed batches (at least a second's worth)",
            ("service", "topic"),
            registry=self.registry,
        )
        self._batch = Histogram(
            "macp_consumer_batch_duration_seconds",
            "Time from a batch's arrival to its offsets being committed",
            ("service", "topic"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._service = service

    def count(self, topic: str, outcome: str, records: int) -> None:
        if records:
            self._records.labels(self._service, topic, outcome).inc(records)

    def set_lag(self, topic: str, partition: int, lag: int) -> None:
        self._lag.labels(self._service, topic, str(partition)).set(lag)

    def set_rate(self, topic: str, per_second: float) -> None:
        self._rate.labels(self._service, topic).set(per_second)

    def observe_batch(self, topic: str, seconds: float) -> None:
        self._batch.labels(self._service, topic).observe(seconds)

    def value(self, name: str, labels: dict[str, str]) -> float:
        """A sample's current value (0 when it was never set), for tests and the CLI."""
        sample = self.registry.get_sample_value(name, {"service": self._service, **labels})
        return 0.0 if sample is None else sample


def pending_requests_gauge(service: str, registry: CollectorRegistry) -> Gauge:
    """`pending_agent_requests`: calls waiting for an upstream slot. The name is 000_*.txt's, which
    scales the agent proxy on it; the `service` label tells replicas' processes apart in the sum."""
    return Gauge(
        "pending_agent_requests",
        "Generate calls waiting in the fair queue for a provider slot",
        ("service",),
        registry=registry,
    )
