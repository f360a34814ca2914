"""Traces, the shared layer: the process's tracer, W3C trace context and the span of a block of work.

What every hop's tracing is built from (services/runtime/tracing.py says how the whole works): the
constants and context variables, the process's provider and tracer (`ProcessTracer`, set up by
`tracing.configure`), the W3C headers read and written, `Scope` and `begin`/`span` for a block of
work. The seam: this module knows nothing of gRPC, HTTP or Kafka (those adapters are in
tracing_hops.py) nor of exporters (the process's setup is in tracing.py), so both import it and it
imports neither. Import the names through `services.runtime.tracing`, the module's public face.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextvars import ContextVar, Token
from typing import Any, TypeAlias

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from services.runtime.context import reset_quietly

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
carried_var: ContextVar[Carried | None] = ContextVar("macp_carried_trace", default=None)


class ProcessTracer:
    """The process's provider and tracer, or None while tracing is off (tracing.py's docstring says
    why one per process); a class, so every module reads the same attributes however it imported it."""

    provider: TracerProvider | None = None
    tracer: trace.Tracer | None = None


def enabled() -> bool:
    return ProcessTracer.tracer is not None


# --- W3C headers ----------------------------------------------------------------------------------


def context_headers(span_context: trace.SpanContext) -> Carried:
    """The W3C headers of `span_context` (what the propagator writes, without its dict round trip)."""
    traceparent = (
        f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{span_context.trace_flags:02x}"
    )
    return traceparent, span_context.trace_state.to_header() or None


def extracted(traceparent: str | None, tracestate: str | None) -> otel_context.Context | None:
    if traceparent is None:
        return None
    carrier = {TRACEPARENT: traceparent}
    if tracestate is not None:
        carrier[TRACESTATE] = tracestate
    return _PROPAGATOR.extract(carrier)


def current_headers() -> Carried | None:
    """The W3C headers a call or message made now carries: the current span's when tracing is on,
    else what the caller sent (unchanged), else None."""
    if ProcessTracer.tracer is None:
        return carried_var.get()
    span_context = trace.get_current_span().get_span_context()
    return context_headers(span_context) if span_context.is_valid else None


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


def open_scope(
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
    tracer = ProcessTracer.tracer
    if tracer is None:
        if traceparent is None:
            return None
        return Scope(None, carried_var.set((traceparent, tracestate)), None)
    parent = extracted(traceparent, tracestate)
    if parent is None and root:
        parent = otel_context.Context()  # an empty context: no parent, whatever is current
    return open_scope(
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
    return context_headers(span.get_span_context())


def span_context_of(headers: Mapping[str, str] | None) -> trace.SpanContext | None:
    """The remote span context `headers` name (for a span link), or None."""
    if not headers or ProcessTracer.tracer is None:
        return None
    parent = extracted(headers.get(TRACEPARENT), headers.get(TRACESTATE))
    if parent is None:
        return None
    span_context = trace.get_current_span(parent).get_span_context()
    return span_context if span_context.is_valid else None
