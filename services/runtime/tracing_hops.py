"""Traces, the hops' adapters: the spans of RPCs, HTTP requests and Kafka records.

Each function here is what one transport's code calls (the server interceptor, the mesh channel's
client interceptors, the edge's HTTP middleware, the usage publisher and the consumer loop): it
names its span and sets its attributes after the semantic conventions of that transport (rpc.*,
http.*, messaging.*), and writes or reads the W3C headers where that transport carries them. The
seam: these are the parts that know a transport, built on the transport-free layer of
tracing_spans.py. Import the names through `services.runtime.tracing`, the module's public face.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import grpc
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from services.runtime.tracing_spans import (
    SERVICE_ATTRIBUTE,
    TRACEPARENT,
    TRACESTATE,
    Carried,
    ProcessTracer,
    Scope,
    carried_var,
    context_headers,
    extracted,
    open_scope,
    service_var,
)

# --- requests served (gRPC and HTTP) -------------------------------------------------------------


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
    tracer = ProcessTracer.tracer
    if tracer is None:
        if traceparent is None:
            return None
        return Scope(None, carried_var.set((traceparent, tracestate)), None)
    return open_scope(tracer, name, SpanKind.SERVER, extracted(traceparent, tracestate), attributes, service)


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


# --- gRPC -----------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def _rpc_attributes(method: str) -> dict[str, str]:
    """`/macp.conversation.v1.ConversationService/GetAgent` as the rpc.* semantic conventions."""
    service, _, name = method.lstrip("/").rpartition("/")
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}


def server_call(
    service: str | None, method: str, traceparent: str | None, tracestate: str | None
) -> Scope | None:
    """The SERVER span of one RPC (the server interceptor's); see `served`."""
    if ProcessTracer.tracer is None and traceparent is None:
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
    tracer = ProcessTracer.tracer
    if tracer is None:
        return None, carried_var.get()
    if isinstance(method, bytes):
        method = method.decode()
    attributes = {SERVICE_ATTRIBUTE: service_var.get(), **_rpc_attributes(method)}
    span = tracer.start_span(method.lstrip("/"), kind=SpanKind.CLIENT, attributes=attributes)
    return span, context_headers(span.get_span_context())


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
    tracer = ProcessTracer.tracer
    if tracer is None:
        return []
    spans = []
    service = service_var.get()
    for record in records:
        headers = record_headers(record.headers)
        parent = extracted(headers.get(TRACEPARENT), headers.get(TRACESTATE))
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
