"""The server interceptor: the cross-cutting work of every RPC, written once.

The steps, outermost first: request id → trace → access log → error mapping → authentication →
validation → the handler. Each wraps the rest, so it sees the call's real outcome, including a streaming
one's, rather than only its start: the access log times and records the status the error mapping
chose, the error mapping maps what authentication, validation or the handler raised, and the
principal is set only while validation and the handler run.

Why one interceptor and not one per step: grpc.aio runs every interceptor's `intercept_service`
on every call, and each wrapping layer adds its own coroutine (or async generator) frames, so five
layers cost ten frames and five handler rebuilds per call, a measurable share of a cached read
(docs/benchmarks.md section 5). Here each method's wrapped handler is built once and the steps run
in one frame, in the same order and with the same logs, metrics and statuses.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import Token
from typing import Any, Protocol, TypeAlias, cast

import grpc
import protovalidate
from google.protobuf.message import Message

from services.runtime.context import (
    REQUEST_ID_HEADER,
    RpcContext,
    new_request_id,
    request_id_var,
    reset_quietly,
)
from services.runtime.errors import REASON_METADATA_KEY, DomainError, unreachable_store
from services.runtime.metrics import RpcMetrics
from services.runtime.principal import LOCAL_DEVELOPMENT_PRINCIPAL, Caller, Principal, caller_var
from services.runtime.tracing import TRACEPARENT, TRACESTATE, Scope, end_server_call, server_call

log = logging.getLogger("macp.rpc")

Context = RpcContext
Behavior = Callable[[Any, Context], Any]
# A string: grpc's runtime class is not subscriptable, only its stubs are.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable["Handler | None"]]


def _text(value: str | bytes) -> str:
    return value if isinstance(value, str) else value.decode()


def _yielding(behavior: Behavior) -> Behavior:
    """Adapts a streaming handler that writes with `context.write` and returns (the stock health
    `Watch` does) to one that yields, so the interceptor can iterate it; its writes go out directly."""

    async def responses(request: Any, context: Context) -> AsyncIterator[Any]:
        await behavior(request, context)
        return
        yield  # unreachable: it makes this function an async generator

    return responses


def _status_of(context: Context, failed: bool) -> grpc.StatusCode:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK


class Authenticator(Protocol):
    """Decides whether a call may proceed; `services.runtime.auth.authenticator.JwtAuthenticator` is
    the one every service uses by default."""

    async def authenticate(self, method: str, context: Context) -> Principal:
        """The caller's principal; raise `Unauthenticated` or `PermissionDenied` to refuse the call."""


def presented_token(context: Context) -> str:
    """The bearer token the call presented, or "" (none, or another scheme: the authenticator has
    already accepted or refused the call; this only says what to exchange on its behalf)."""
    for name, value in context.invocation_metadata() or ():
        if name == "authorization":
            text = value if isinstance(value, str) else value.decode("latin-1")
            scheme, _, token = text.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return ""


class AdmitAll:
    """Every call acts as the local development principal: an explicit override for tests and local
    experiments (`ServiceDefinition(authenticator=AdmitAll())`); services authenticate tokens by default."""

    async def authenticate(self, method: str, context: Context) -> Principal:
        return LOCAL_DEVELOPMENT_PRINCIPAL


def violations_message(message: Message) -> str | None:
    """Every protovalidate violation of `message` as one line naming the fields, or None if valid."""
    violations = protovalidate.collect_violations(message)
    if not violations:
        return None
    parts = []
    for violation in violations:
        proto = violation.proto
        elements = proto.field.elements if proto.field is not None else []
        path = ".".join(element.field_name for element in elements) or "(message)"
        parts.append(f"{path}: {proto.message}")
    return "; ".join(parts)


async def _validate(message: Any, context: Context) -> None:
    """Enforces the `buf.validate` constraints declared in the protos on one request message."""
    if isinstance(message, Message):
        problem = violations_message(message)
        if problem is not None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)


async def _validated_stream(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
    async for message in requests:
        await _validate(message, context)
        yield message


class RpcInterceptor(grpc.aio.ServerInterceptor):
    """Request id → trace → access log → error mapping → authentication → validation, for every call.

    - Request id: `x-request-id` from the caller (Envoy or the edge sets it), or a new one; set for
      the whole call and sent back in the trailing metadata.
    - Trace: a SERVER span per call, child of the caller's `traceparent`, ended with the call's
      final status (services/runtime/tracing.py); with tracing off, only the caller's headers
      kept for the calls the handler makes. Found in the same pass over the metadata as the
      request id, so it costs nothing more when absent.
    - Access log: one log line and one metrics observation per call, with its final status and
      duration.
    - Error mapping: the one place a domain error becomes a gRPC status; a store that is away
      (Redis or Postgres restarting) becomes UNAVAILABLE, which callers retry; anything else
      unexpected becomes INTERNAL, its text only in the log.
    - Authentication: every call but health (`exempt_prefixes`, which must answer probes that
      carry no token) passes the `Authenticator` first; its principal is the call's.
    - Validation: the request message(s) must satisfy their protovalidate constraints.
    """

    def __init__(
        self,
        metrics: RpcMetrics,
        authenticator: Authenticator,
        exempt_prefixes: tuple[str, ...],
        service: str | None = None,
    ) -> None:
        self._metrics = metrics
        self._service = service
        self._authenticator = authenticator
        self._exempt_prefixes = exempt_prefixes
        # Full method name → (the server's handler, its wrapped one). Only methods the server has
        # a handler for are kept, so it holds at most one entry per registered method.
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, method: str, handler: Handler) -> Handler:
        authenticates = not method.startswith(self._exempt_prefixes)
        if handler.response_streaming:
            inner = cast(Behavior, handler.unary_stream or handler.stream_stream)
            if not inspect.isasyncgenfunction(inner):
                inner = _yielding(inner)
            behavior = self._streaming(method, inner, authenticates)
            factory = grpc.stream_stream_rpc_method_handler
            if not handler.request_streaming:
                factory = grpc.unary_stream_rpc_method_handler
        else:
            inner = cast(Behavior, handler.unary_unary or handler.stream_unary)
            behavior = self._unary(method, inner, authenticates)
            factory = grpc.stream_unary_rpc_method_handler
            if not handler.request_streaming:
                factory = grpc.unary_unary_rpc_method_handler
        return factory(behavior, handler.request_deserializer, handler.response_serializer)

    def _unary(self, method: str, inner: Behavior, authenticates: bool) -> Behavior:
        async def behavior(request: Any, context: Context) -> Any:
            request_id, trace = self._begin(method, context)
            started, failed = time.perf_counter(), True
            try:
                try:
                    caller = await self._authenticate(method, context) if authenticates else None
                    try:
                        response = await inner(await self._checked(request, context), context)
                    finally:
                        if caller is not None:
                            reset_quietly(caller_var, caller)
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await self._abort(method, exc, context)
                    response = None  # not reached: abort raises
                failed = False
                return response
            finally:
                self._finish(method, context, started, failed, trace)
                reset_quietly(request_id_var, request_id)

        return behavior

    def _streaming(self, method: str, inner: Behavior, authenticates: bool) -> Behavior:
        async def behavior(request: Any, context: Context) -> AsyncIterator[Any]:
            request_id, trace = self._begin(method, context)
            started, failed = time.perf_counter(), True
            try:
                try:
                    caller = await self._authenticate(method, context) if authenticates else None
                    try:
                        async for response in inner(await self._checked(request, context), context):
                            yield response
                    finally:
                        if caller is not None:
                            reset_quietly(caller_var, caller)
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await self._abort(method, exc, context)
                failed = False
            finally:
                self._finish(method, context, started, failed, trace)
                reset_quietly(request_id_var, request_id)

        return behavior

    # --- the steps ------------------------------------------------------------------------------

    def _begin(self, method: str, context: Context) -> tuple[Token[str | None], Scope | None]:
        request_id = traceparent = tracestate = None
        for name, value in context.invocation_metadata() or ():
            if name == REQUEST_ID_HEADER:
                request_id = request_id or _text(value)
            elif name == TRACEPARENT:
                traceparent = traceparent or _text(value)
            elif name == TRACESTATE:
                tracestate = tracestate or _text(value)
        request_id = request_id or new_request_id()
        context.set_trailing_metadata(((REQUEST_ID_HEADER, request_id),))
        return request_id_var.set(request_id), server_call(self._service, method, traceparent, tracestate)

    def _finish(
        self, method: str, context: Context, started: float, failed: bool, trace: Scope | None
    ) -> None:
        elapsed = time.perf_counter() - started
        code = _status_of(context, failed)
        if trace is not None:
            end_server_call(trace, code)
        self._metrics.observe(method, code.name, elapsed)
        log.info(
            "rpc",
            extra={"rpc": method, "grpc_status": code.name, "duration_ms": round(elapsed * 1000, 2)},
        )

    async def _authenticate(self, method: str, context: Context) -> Token[Caller | None]:
        principal = await self._authenticator.authenticate(method, context)
        # The token goes with the principal: calls the handler makes on the caller's behalf send
        # it exchanged for their callee (services/runtime/auth/caller_tokens.py).
        return caller_var.set(Caller(presented_token(context), principal))

    @staticmethod
    async def _checked(request: Any, context: Context) -> Any:
        if hasattr(request, "__aiter__"):
            return _validated_stream(request, context)
        await _validate(request, context)
        return request

    @staticmethod
    async def _abort(method: str, exc: BaseException, context: Context) -> None:
        if isinstance(exc, DomainError):
            if exc.reason:
                # Keep the trailers set so far (the request id) and add the reason.
                trailers = (*(context.trailing_metadata() or ()), (REASON_METADATA_KEY, exc.reason))
                await context.abort(exc.code, exc.message, trailing_metadata=trailers)
            await context.abort(exc.code, exc.message)
        if isinstance(exc, NotImplementedError):
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented yet")
        store = unreachable_store(exc)
        if store is not None:
            log.warning("%s failed: %s is unreachable: %r", method, store, exc)
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{store} is unreachable right now; try again")
        log.exception("unhandled error in %s", method, exc_info=exc)
        await context.abort(grpc.StatusCode.INTERNAL, "internal error; the request id names it in the logs")


def server_interceptors(
    metrics: RpcMetrics,
    authenticator: Authenticator,
    exempt_prefixes: tuple[str, ...],
    service: str | None = None,
) -> list[grpc.aio.ServerInterceptor]:
    """What every service's server installs (see the module docstring); `service` names its spans."""
    return [RpcInterceptor(metrics, authenticator, exempt_prefixes, service)]
