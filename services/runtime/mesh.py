"""Client side of the mesh: one grpc.aio channel to Envoy's mesh listener, carrying the request id
and the W3C trace context.

Every service-to-service call goes through Envoy (routing, retries, breakers, health), so a
caller needs one channel, not one per callee; Envoy picks the cluster from the gRPC service name.
With tracing on, each call is a CLIENT span whose `traceparent` it sends; with tracing off, the
caller's own `traceparent` (if one came in) goes on unchanged (services/runtime/tracing.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry.trace import Span

from services.runtime.context import REQUEST_ID_HEADER, current_request_id
from services.runtime.tracing import TRACEPARENT, TRACESTATE, client_call, end_client_call

if TYPE_CHECKING:
    from services.runtime.auth.caller_tokens import CallerTokens

AUTHORIZATION = "authorization"

# Keepalive keeps long-lived streams through Envoy from being dropped as idle. Envoy is local (a
# sidecar or the compose network), so reconnecting soon after it comes up matters more than backing
# off: a process that started before Envoy would otherwise wait up to two minutes to reach it.
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
]


def _outgoing(
    details: grpc.aio.ClientCallDetails, authorization: str | None
) -> tuple[grpc.aio.ClientCallDetails, Span | None]:
    """The call's details with the request id, the trace context (and the call's CLIENT span,
    tracing on) and `authorization` when given, and waiting for the channel to be ready unless the
    caller said otherwise: Envoy is local, so a call made while the channel (re)connects to it (a
    process that started before Envoy, or an Envoy restart) waits within its deadline instead of
    failing at once. Callers on the mesh always set a deadline."""
    request_id = current_request_id()
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    if request_id is not None and metadata.get(REQUEST_ID_HEADER) is None:
        metadata.add(REQUEST_ID_HEADER, request_id)
    if authorization is not None:
        metadata.add(AUTHORIZATION, authorization)
    span, headers = client_call(details.method)
    if headers is not None and metadata.get(TRACEPARENT) is None:
        metadata.add(TRACEPARENT, headers[0])
        if headers[1] is not None:
            metadata.add(TRACESTATE, headers[1])
    wait_for_ready = True if details.wait_for_ready is None else details.wait_for_ready
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, wait_for_ready
    ), span


def _final_code(call: grpc.aio.Call) -> grpc.StatusCode:
    """A finished call's status, read in its done callback. `code()` is a coroutine, but once the
    call is done its status is already there and the coroutine returns without suspending, so it is
    run to its end here rather than in a task of its own per call."""
    if call.cancelled():
        return grpc.StatusCode.CANCELLED
    reading = call.code()
    try:
        reading.send(None)
    except StopIteration as finished:
        code: grpc.StatusCode = finished.value
        return code
    reading.close()  # it would have waited: not expected of a done call
    return grpc.StatusCode.UNKNOWN


def _end_when_done(call: Any, span: Span) -> Any:
    call.add_done_callback(lambda done: end_client_call(span, _final_code(done)))
    return call


async def _unary_ended(call: Any, span: Span) -> Any:
    """Waits for a unary call's outcome to end its span; the call is returned as it was, so the
    caller awaits the same response or error."""
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        end_client_call(span, exc.code())
    except asyncio.CancelledError:
        end_client_call(span, grpc.StatusCode.CANCELLED)
        raise
    except Exception:
        end_client_call(span, grpc.StatusCode.UNKNOWN)
        raise
    else:
        end_client_call(span, grpc.StatusCode.OK)
    return call


class _MeshInterceptor:
    """What every call on a mesh channel gets (see `_outgoing`), with the caller's token for the
    callee when the channel was opened with `CallerTokens`."""

    def __init__(self, caller_tokens: CallerTokens | None) -> None:
        self._caller_tokens = caller_tokens

    async def _prepare(
        self, details: grpc.aio.ClientCallDetails
    ) -> tuple[grpc.aio.ClientCallDetails, Span | None]:
        authorization = None
        if self._caller_tokens is not None and not _has_authorization(details.metadata):
            authorization = await self._caller_tokens.authorization(_text(details.method))
        return _outgoing(details, authorization)


def _has_authorization(metadata: Any) -> bool:
    return any(name == AUTHORIZATION for name, _ in metadata or ())


def _text(method: str | bytes) -> str:
    return method.decode() if isinstance(method, bytes) else method


class _MeshUnaryUnary(_MeshInterceptor, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self,
        continuation: Callable[..., Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        details, span = await self._prepare(client_call_details)
        call = await continuation(details, request)
        return call if span is None else await _unary_ended(call, span)


class _MeshUnaryStream(_MeshInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self,
        continuation: Callable[..., Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        details, span = await self._prepare(client_call_details)
        call = await continuation(details, request)
        return call if span is None else _end_when_done(call, span)


class _MeshStreamStream(_MeshInterceptor, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self,
        continuation: Callable[..., Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        details, span = await self._prepare(client_call_details)
        call = await continuation(details, request_iterator)
        return call if span is None else _end_when_done(call, span)


def open_mesh_channel(mesh_address: str, caller_tokens: CallerTokens | None = None) -> grpc.aio.Channel:
    """A channel to Envoy's mesh listener (plaintext h2c on loopback or the compose network).

    With `caller_tokens`, each call made while a caller is set carries the caller's token exchanged
    for the callee (services/runtime/auth/caller_tokens.py). Its token client needs a channel of
    its own, opened without: its calls authenticate the service itself, never a caller."""
    interceptors = (
        _MeshUnaryUnary(caller_tokens),
        _MeshUnaryStream(caller_tokens),
        _MeshStreamStream(caller_tokens),
    )
    return grpc.aio.insecure_channel(mesh_address, options=_CHANNEL_OPTIONS, interceptors=interceptors)


def open_probe_channel(mesh_address: str) -> grpc.aio.Channel:
    """A channel to the mesh listener for readiness checks (services/runtime/readiness.py): no
    request id and no span, as a check every half second is nobody's request and would flood
    the traces."""
    return grpc.aio.insecure_channel(mesh_address, options=_CHANNEL_OPTIONS)
