"""Traces: OpenTelemetry spans across every hop, W3C trace context on every call and message.

The one place a process's tracing is set up (`configure`, from `TracingSettings`) and the few
operations the hops use: a SERVER span per RPC (the server interceptor), a CLIENT span per call
with `traceparent` in its metadata (the mesh channel's interceptors), a PRODUCER span per usage
event with `traceparent` in its Kafka headers (through the publisher's outbox), CONSUMER spans
that continue those (the consumer loop), and spans of the edge's HTTP requests and WebSocket
actions. Which service made a span is its `macp.service` attribute (besides the resource's
`service.name`): the tests run every service in one process, under one TracerProvider.

Why a module-level provider: OpenTelemetry's provider is one per process by design, and the hot
paths read one module attribute per call to know whether tracing is on. When it is off (no
endpoint configured, the default) nothing here creates a span or touches OpenTelemetry's context:
a call that arrives with a `traceparent` only has the header's text kept in a context variable,
and the calls and events made for it carry that text on unchanged, so a trace started upstream
stays connected through a process that does not record. The cost per call is a header compared
while the request id is looked up anyway, and one context variable read per outgoing call
(docs/benchmarks.md, section 11).

Three modules, and this one is the face every hop imports (it re-exports the others' public names):
here, the process's setup (`configure`, `shutdown`, and `collecting`/`exporting` for tests and
benches), the one part that knows exporters, samplers and resources; tracing_spans.py, the
transport-free layer (the tracer's state, W3C headers, `Scope`, `begin`, `span`); tracing_hops.py,
the spans of RPCs, HTTP requests and Kafka records, the parts that know a transport. The seams
follow what a change touches: a new exporter or sampler stays here, a new hop's conventions stay in
tracing_hops.py, and neither reaches the context handling that every span relies on.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased

from services.runtime import tracing_spans
from services.runtime.settings import TracingSettings

# The public names of the two lower modules, re-exported: every hop imports `tracing` alone, and
# which of the three modules defines a name is not their concern.
from services.runtime.tracing_hops import (
    client_call,
    consumer_spans,
    end_client_call,
    end_http,
    end_server_call,
    end_spans,
    header_pairs,
    record_headers,
    served,
    server_call,
)
from services.runtime.tracing_spans import (
    INSTRUMENTATION_SCOPE,
    SERVICE_ATTRIBUTE,
    TRACEPARENT,
    TRACESTATE,
    Carried,
    Scope,
    begin,
    current_headers,
    enabled,
    headers_of,
    inject,
    service_var,
    span,
    span_context_of,
)

__all__ = [
    "INSTRUMENTATION_SCOPE",
    "SERVICE_ATTRIBUTE",
    "TRACEPARENT",
    "TRACESTATE",
    "Carried",
    "Scope",
    "begin",
    "client_call",
    "collecting",
    "configure",
    "consumer_spans",
    "current_headers",
    "enabled",
    "end_client_call",
    "end_http",
    "end_server_call",
    "end_spans",
    "exporting",
    "header_pairs",
    "headers_of",
    "inject",
    "record_headers",
    "served",
    "server_call",
    "service_var",
    "shutdown",
    "span",
    "span_context_of",
]

log = logging.getLogger("macp.tracing")

# The process's provider and tracer: the class in tracing_spans.py whose attributes the hot paths
# read (a class, so every module sees one value); this module is the one that sets them.
_state = tracing_spans.ProcessTracer


def _install(provider: TracerProvider) -> None:
    _state.provider = provider
    _state.tracer = provider.get_tracer(INSTRUMENTATION_SCOPE)


def configure(service: str, settings: TracingSettings) -> bool:
    """Start exporting this process's spans over OTLP/HTTP, if `settings` name an endpoint; True
    when tracing is on afterwards. A process serving several services (the tests, `macp up`'s
    in-process mode) configures once: the first service's name is the resource's, and every span's
    `macp.service` says which service made it."""
    service_var.set(service)
    if _state.tracer is not None or settings.endpoint is None:
        return _state.tracer is not None
    # Imported here: the exporter pulls in requests and the OTLP protos, which a process that
    # does not trace never needs.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    provider = TracerProvider(
        resource=Resource.create({"service.name": service, "service.namespace": "macp"}),
        sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
    )
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.endpoint)))
    _install(provider)
    log.info("exporting traces", extra={"endpoint": settings.endpoint})
    return True


def shutdown() -> None:
    """Export what is buffered and stop (a process's last step); tracing is off afterwards."""
    provider = _state.provider
    _state.provider = _state.tracer = None
    if provider is not None:
        provider.shutdown()


@contextlib.contextmanager
def collecting(service: str = "tests") -> Iterator[InMemorySpanExporter]:
    """Tests: every span of the process, from now until the block ends, into an in-memory exporter
    (exported as each span ends, so a finished span is there at once); what was installed before
    is back afterwards."""
    exporter = InMemorySpanExporter()
    with exporting(exporter, service):
        yield exporter


@contextlib.contextmanager
def exporting(exporter: SpanExporter, service: str = "tests") -> Iterator[None]:
    """Every span, sampled, to `exporter` as it ends while the block runs (tests and benches)."""
    previous = _state.provider, _state.tracer
    provider = TracerProvider(resource=Resource.create({"service.name": service}), sampler=ALWAYS_ON)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _install(provider)
    try:
        yield
    finally:
        _state.provider, _state.tracer = previous
        provider.shutdown()
