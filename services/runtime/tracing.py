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
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterable, Iterator, Mapping, MutableMapping, Sequence
from contextvars import ContextVar, Token
from typing import Any, TypeAlias

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from services.runtime.context import reset_quietly
from services.runtime.settings import TracingSettings

log = logging.getLogger("macp.tracing")

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
SERVICE_ATTRIBUTE = "macp.service"
INSTRUMENTATION_SCOPE = "macp"

# The W3C headers as the caller sent them: (traceparent, tracestate or None).
Carried: TypeAlias = tuple[str, str | None]

_PROPAGATOR = TraceContextTextMapPropagator()

# Which service's code runs in this context (set where a service starts serving and per call), so
# a span made by shared code (a client call, a usage event) says whose it is.
service_var: ContextVar[str] = ContextVar("macp_service", default="macp")
# Tracing off: the caller's W3C headers, forwarded unchanged by every call made for it.
_carried_var: ContextVar[Carried | None] = ContextVar("macp_carried_trace", default=None)


class _Process:
    """The process's provider and tracer, or None while tracing is off (see the module docstring)."""

    provider: TracerProvider | None = None
    tracer: trace.Tracer | None = None


def enabled() -> bool:
    return _Process.tracer is not None


def _install(provider: TracerProvider) -> None:
    _Process.provider = provider
    _Process.tracer = provider.get_tracer(INSTRUMENTATION_SCOPE)


def configure(service: str, settings: TracingSettings) -> bool:
    """Start exporting this process's spans over OTLP/HTTP, if `settings` name an endpoint; True
    when tracing is on afterwards. A process serving several services (the tests, `macp up`'s
    in-process mode) configures once: the first service's name is the resource's, and every span's
    `macp.service` says which service made it."""
    service_var.set(service)
    if _Process.tracer is not None or settings.endpoint is None:
        return _Process.tracer is not None
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
    provider = _Process.provider
    _Process.provider = _Process.tracer = None
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
    previous = _Process.provider, _Process.tracer
    provider = TracerProvider(resource=Resource.create({"service.name": service}), sampler=ALWAYS_ON)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _install(provider)
    try:
        yield
    finally:
        _Process.provider, _Process.tracer = previous
        provider.shutdown()


# --- W3C headers ----------------------------------------------------------------------------------


def _headers(span_context: trace.SpanContext) -> Carried:
    """The W3C headers of `span_context` (what the propagator writes, without its dict round trip)."""
    traceparent = (
        f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{span_context.trace_flags:02x}"
    )
    return traceparent, span_context.trace_state.to_header() or None


def _extracted(traceparent: str | None, tracestate: str | None) -> otel_context.Context | None:
    if traceparent is None:
        return None
    carrier = {TRACEPARENT: traceparent}
    if tracestate is not None:
        carrier[TRACESTATE] = tracestate
    return _PROPAGATOR.extract(carrier)


def current_headers() -> Carried | None:
    """The W3C headers a call or message made now carries: the current span's when tracing is on,
    else what the caller sent (unchanged), else None."""
    if _Process.tracer is None:
        return _carried_var.get()
    span_context = trace.get_current_span().get_span_context()
    return _headers(span_context) if span_context.is_valid else None


def inject(carrier: MutableMapping[str, str]) -> None:
    """Puts the current W3C headers into `carrier` (a message's trace context map, say)."""
    headers = current_headers()
    if headers is not None:
        carrier[TRACEPARENT] = headers[0]
        if headers[1] is not None:
            carrier[TRACESTATE] = headers[1]


# --- spans ----------------------------------------------------------------------------------------


class Scope:
    """A span made current for a block of work (or only a caller's headers carried, tracing off);
    `end` restores the context and ends the span. Not a context manager, so the server interceptor
    can open it and end it in its own `try`/`finally` without another frame."""

    __slots__ = ("_context", "_service", "span")

    def __init__(
        self,
        span: Span | None,
        context: Token[otel_context.Context] | Token[Carried | None],
        service: Token[str] | None,
    ) -> None:
        self.span = span
        self._context = context
        self._service = service

    def end(self, error: BaseException | None = None) -> None:
        reset_quietly(self._context.var, self._context)
        if self._service is not None:
            reset_quietly(service_var, self._service)
        span = self.span
        if span is not None:
            if error is not None:
                span.set_status(Status(StatusCode.ERROR, type(error).__name__))
                span.record_exception(error)
            span.end()


def _open(
    tracer: trace.Tracer,
    name: str,
    kind: SpanKind,
    parent: otel_context.Context | None,
    attributes: Mapping[str, Any],
    service: str | None,
    links: Sequence[Link] = (),
) -> Scope:
    owner = service or service_var.get()
    span = tracer.start_span(
        name, context=parent, kind=kind, attributes={SERVICE_ATTRIBUTE: owner, **attributes}, links=links
    )
    token = otel_context.attach(trace.set_span_in_context(span, parent))
    return Scope(span, token, service_var.set(service) if service is not None else None)


def begin(
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    headers: Mapping[str, str] | None = None,
    attributes: Mapping[str, Any] | None = None,
    service: str | None = None,
    links: Sequence[trace.SpanContext] = (),
    root: bool = False,
) -> Scope | None:
    """A span for a block of work, current until `Scope.end`: the child of `headers`' trace when
    they hold a `traceparent` (work a message asked for), else of the current span, else (`root`)
    the start of a new trace. Tracing off, `headers`' own traceparent is carried on instead, and
    None is returned when there is nothing to do. `service` (when given) is the service whose code
    runs in the block."""
    traceparent = headers.get(TRACEPARENT) or None if headers else None
    tracestate = headers.get(TRACESTATE) or None if headers else None
    tracer = _Process.tracer
    if tracer is None:
        if traceparent is None:
            return None
        return Scope(None, _carried_var.set((traceparent, tracestate)), None)
    parent = _extracted(traceparent, tracestate)
    if parent is None and root:
        parent = otel_context.Context()  # an empty context: no parent, whatever is current
    return _open(
        tracer,
        name,
        kind,
        parent,
        attributes or {},
        service,
        [Link(link) for link in links if link.is_valid],
    )


@contextlib.contextmanager
def span(
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    headers: Mapping[str, str] | None = None,
    attributes: Mapping[str, Any] | None = None,
    service: str | None = None,
) -> Iterator[Span | None]:
    """`begin` as a block: the span (None while tracing is off) ends with the block, marked as an
    error if the block raises."""
    scope = begin(name, kind=kind, headers=headers, attributes=attributes, service=service)
    if scope is None:
        yield None
        return
    try:
        yield scope.span
    except BaseException as exc:
        scope.end(exc)
        raise
    scope.end()


def headers_of(span: Span) -> Carried:
    """The W3C headers naming `span` (for a response that tells its caller where its trace is)."""
    return _headers(span.get_span_context())


def end_http(scope: Scope, method: str, route: str, status: int) -> None:
    """Ends an HTTP request's SERVER span, named by its route template now that it is known."""
    span = scope.span
    if span is not None:
        span.update_name(f"{method} {route}" if route != "unmatched" else method)
        span.set_attribute("http.route", route)
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR, str(status)))
    scope.end()


def span_context_of(headers: Mapping[str, str] | None) -> trace.SpanContext | None:
    """The remote span context `headers` name (for a span link), or None."""
    if not headers or _Process.tracer is None:
        return None
    parent = _extracted(headers.get(TRACEPARENT), headers.get(TRACESTATE))
    if parent is None:
        return None
    span_context = trace.get_current_span(parent).get_span_context()
    return span_context if span_context.is_valid else None


# --- gRPC -----------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def _rpc_attributes(method: str) -> dict[str, str]:
    """`/macp.conversation.v1.ConversationService/GetAgent` as the rpc.* semantic conventions."""
    service, _, name = method.lstrip("/").rpartition("/")
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}


def served(
    name: str,
    service: str | None,
    traceparent: str | None,
    tracestate: str | None,
    attributes: Mapping[str, Any],
) -> Scope | None:
    """The SERVER span of one request, child of the caller's headers (the raw header values, as the
    caller's metadata or HTTP headers hold them); tracing off, the caller's headers carried on for
    the calls made for it, or None when it sent none."""
    tracer = _Process.tracer
    if tracer is None:
        if traceparent is None:
            return None
        return Scope(None, _carried_var.set((traceparent, tracestate)), None)
    return _open(tracer, name, SpanKind.SERVER, _extracted(traceparent, tracestate), attributes, service)


def server_call(
    service: str | None, method: str, traceparent: str | None, tracestate: str | None
) -> Scope | None:
    """The SERVER span of one RPC (the server interceptor's); see `served`."""
    if _Process.tracer is None and traceparent is None:
        return None
    return served(method.lstrip("/"), service, traceparent, tracestate, _rpc_attributes(method))


def end_server_call(scope: Scope, code: grpc.StatusCode) -> None:
    span = scope.span
    if span is not None:
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code is not grpc.StatusCode.OK:
            span.set_status(Status(StatusCode.ERROR, code.name))
    scope.end()


def client_call(method: str | bytes) -> tuple[Span | None, Carried | None]:
    """A CLIENT span for one outgoing call (tracing on) and the W3C headers the call carries: the
    span's, or (tracing off) the caller's, unchanged; (None, None) when there is nothing to send.
    `method` as grpc.aio's call details hold it (bytes), decoded only when a span needs it."""
    tracer = _Process.tracer
    if tracer is None:
        return None, _carried_var.get()
    if isinstance(method, bytes):
        method = method.decode()
    attributes = {SERVICE_ATTRIBUTE: service_var.get(), **_rpc_attributes(method)}
    span = tracer.start_span(method.lstrip("/"), kind=SpanKind.CLIENT, attributes=attributes)
    return span, _headers(span.get_span_context())


def end_client_call(span: Span, code: grpc.StatusCode) -> None:
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code is not grpc.StatusCode.OK:
        span.set_status(Status(StatusCode.ERROR, code.name))
    span.end()


# --- Kafka ----------------------------------------------------------------------------------------


def header_pairs(headers: Carried | None) -> list[tuple[str, bytes]]:
    """W3C headers as Kafka record headers."""
    if headers is None:
        return []
    pairs = [(TRACEPARENT, headers[0].encode())]
    if headers[1] is not None:
        pairs.append((TRACESTATE, headers[1].encode()))
    return pairs


def record_headers(headers: Iterable[tuple[str, bytes]] | None) -> dict[str, str]:
    """The W3C headers of a Kafka record (empty when it has none)."""
    found: dict[str, str] = {}
    for name, value in headers or ():
        if name in (TRACEPARENT, TRACESTATE):
            found[name] = value.decode("latin-1")
    return found


def consumer_spans(topic: str, records: Iterable[Any]) -> list[Span]:
    """A CONSUMER span for each record of a batch that carries a trace, parented on the producer's
    span: a batch mixes events of many traces, and each trace gets the step that made its event
    durable (the spans end together, when the batch is). Tracing off, none; so is a record
    without headers."""
    tracer = _Process.tracer
    if tracer is None:
        return []
    spans = []
    service = service_var.get()
    for record in records:
        headers = record_headers(record.headers)
        parent = _extracted(headers.get(TRACEPARENT), headers.get(TRACESTATE))
        if parent is None:
            continue
        attributes = {
            SERVICE_ATTRIBUTE: service,
            "messaging.system": "kafka",
            "messaging.operation.type": "process",
            "messaging.destination.name": topic,
            "messaging.destination.partition.id": str(record.partition),
            "messaging.kafka.offset": record.offset,
        }
        spans.append(
            tracer.start_span(
                f"process {topic}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
            )
        )
    return spans


def end_spans(spans: Sequence[Span], error: BaseException | None = None) -> None:
    for one in spans:
        if error is not None:
            one.set_status(Status(StatusCode.ERROR, type(error).__name__))
        one.end()
