"""Prometheus metrics: the same metric names in every service, served on each one's `/metrics` port."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

# A scrape's request is a line and a few headers; anything longer is not Prometheus.
REQUEST_HEAD_LIMIT_BYTES = 16 * 1024
SCRAPE_READ_TIMEOUT_SECONDS = 10.0

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
    """The running `/metrics` HTTP server on the service's own event loop; `close()` frees its port
    at once (a thread server would hold the stop for its poll interval, blocking the loop)."""

    server: asyncio.Server

    async def close(self) -> None:
        self.server.close()
        await self.server.wait_closed()


async def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> MetricsEndpoint:
    """`registry` in the Prometheus text format (or OpenMetrics, by the scrape's Accept header) on
    `host:port`, one response per connection, until the endpoint is closed."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), SCRAPE_READ_TIMEOUT_SECONDS)
            status, content_type, body = _scrape(registry, head)
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            pass  # a client that went away or never sent a request gets nothing
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_server(answer, host, port, limit=REQUEST_HEAD_LIMIT_BYTES)
    return MetricsEndpoint(server=server)


def _scrape(registry: CollectorRegistry, head: bytes) -> tuple[str, str, bytes]:
    """The status line's tail, content type and body answering one request head."""
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    method = request_line.split(" ", 1)[0]
    if method != "GET":
        return "405 Method Not Allowed", "text/plain", b"only GET serves metrics\n"
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in header_lines if line)
    }
    encoder, content_type = choose_encoder(headers.get("accept", ""))
    return "200 OK", content_type, encoder(registry)


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


def quota_refusals_counter(
    service: str, registry: CollectorRegistry, tiers: Iterable[str], meters: Iterable[str]
) -> Counter:
    """`macp_quota_refusals_total`: holds metering refused (Reserve answered RESOURCE_EXHAUSTED),
    by tier and meter. Every (tier, meter) starts at 0, so `increase()` sees a tenant's first
    refusal instead of the series appearing at 1 (which rate() reads as no change)."""
    counter = Counter(
        "macp_quota_refusals",
        "Reserve calls refused because the tier's hard monthly limit is reached, by tier and meter",
        ("service", "tier", "meter"),
        registry=registry,
    )
    meter_names = tuple(meters)
    for tier in tiers:
        for meter in meter_names:
            counter.labels(service, tier, meter)
    return counter


# A breaker's state as a number, so dashboards can plot it and alerts compare it: 0 closed,
# 1 half-open (one trial call allowed), 2 open (calls refused at once).
BREAKER_STATE_VALUES: dict[str, int] = {"closed": 0, "half_open": 1, "open": 2}

BreakerStates = Callable[[], Iterable[tuple[str, str, str]]]


class BreakerStateCollector(Collector):
    """`macp_breaker_state{provider, model}`, read from the breakers at scrape time.

    A breaker turns from open to half-open by the clock alone, with no call to set a gauge on, so
    the value is computed when Prometheus asks. `states` runs on the metrics server's thread: it
    must only read (a snapshot of the breakers), never create or change one."""

    def __init__(self, service: str, states: BreakerStates) -> None:
        self._service = service
        self._states = states

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "macp_breaker_state",
            "Circuit breaker per provider and model: 0 closed, 1 half-open, 2 open",
            labels=("service", "provider", "model"),
        )

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for provider, model, state in self._states():
            family.add_metric((self._service, provider, model), BREAKER_STATE_VALUES[state])
        yield family


def breaker_state_collector(service: str, registry: CollectorRegistry, states: BreakerStates) -> None:
    registry.register(BreakerStateCollector(service, states))


def first_token_histogram(service: str, registry: CollectorRegistry) -> Histogram:
    """`macp_generate_first_token_seconds`: from a Generate call's arrival (so the fair queue's
    wait is in it) to its first text, by the provider and model that answered."""
    return Histogram(
        "macp_generate_first_token_seconds",
        "Time from a Generate call's arrival to its first text delta, by provider and model",
        ("service", "provider", "model"),
        buckets=LATENCY_BUCKETS,
        registry=registry,
    )


class RateLimitMetrics:
    """Rate-limit decisions per limit (services/runtime/request_limits.py, at the edge and at the
    tool gateway's `/mcp`): `macp_rate_limit_decisions_total{scope, limit, decision}`. An admitted
    request counts once under every limit it was counted against; a refused one only under the limit
    that refused it (the others did not count it either). `scope` is `global` (the API as a whole),
    `class` (the caller's client class), `tenant` or `source` (a source address)."""

    def __init__(self, registry: CollectorRegistry | None, limits: Iterable[tuple[str, str]]) -> None:
        self._decisions = Counter(
            "macp_rate_limit_decisions",
            "Requests checked against a rate limit, by scope, limit and decision (admitted, refused)",
            ("scope", "limit", "decision"),
            registry=registry,
        )
        # limit name -> (admitted, refused) children, bound once: this runs on every request.
        self._children: dict[str, tuple[Counter, Counter]] = {}
        for scope, name in limits:
            self._children[name] = (
                self._decisions.labels(scope, name, "admitted"),
                self._decisions.labels(scope, name, "refused"),
            )

    def admitted(self, limit: str) -> None:
        self._children[limit][0].inc()

    def refused(self, limit: str) -> None:
        self._children[limit][1].inc()
