"""Server interceptors: the cross-cutting work of every RPC, written once.

Order (outermost first) as `server.py` installs them: request id → access log → error mapping →
authentication → validation → the handler. Each wraps the handler's behaviour, so it sees the
call's real outcome, including streaming ones, rather than only its start.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar, Token
from typing import Any, Protocol, cast

import grpc
import protovalidate
from google.protobuf.message import Message

from services.runtime.context import REQUEST_ID_HEADER, RpcContext, new_request_id, request_id_var
from services.runtime.errors import REASON_METADATA_KEY, DomainError
from services.runtime.metrics import RpcMetrics
from services.runtime.principal import LOCAL_DEVELOPMENT_PRINCIPAL, Principal, principal_var

log = logging.getLogger("macp.rpc")

Context = RpcContext
Behavior = Callable[[Any, Context], Any]
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable["grpc.RpcMethodHandler[Any, Any] | None"]]


def _reset(var: ContextVar[Any], token: Token[Any]) -> None:
    """`var.reset(token)`, or nothing when `token` belongs to another Context.

    A streaming call's async generators may be closed outside the task that ran them: when a client
    cancels while the server is sending, grpc.aio drops the suspended generators and the event loop's
    finalizer closes them in a task of its own, in another Context. There `reset` raises ValueError
    (the token was made in the handler task's Context). Leaving the variable is right: the Context
    that holds this call's value belonged to the finished handler task and goes away with it, and
    whatever the closing task's Context holds is not this call's to undo.
    """
    with contextlib.suppress(ValueError):
        var.reset(token)


def _metadata_value(context: Context, key: str) -> str | None:
    for name, value in context.invocation_metadata() or ():
        if name == key:
            return value if isinstance(value, str) else value.decode()
    return None


def _yielding(behavior: Behavior) -> Behavior:
    """Adapts a streaming handler that writes with `context.write` and returns (the stock health
    `Watch` does) to one that yields, so every interceptor can iterate it; its writes go out directly."""

    async def responses(request: Any, context: Context) -> AsyncIterator[Any]:
        await behavior(request, context)
        return
        yield  # unreachable: it makes this function an async generator

    return responses


class WrappingInterceptor(grpc.aio.ServerInterceptor):
    """Base for interceptors that run around each call's behaviour.

    Subclasses override `around_unary` (the response is one message) and/or `around_stream` (the
    response streams); the defaults pass through.
    """

    async def around_unary(self, method: str, behavior: Behavior, request: Any, context: Context) -> Any:
        return await behavior(request, context)

    async def around_stream(
        self, method: str, behavior: Behavior, request: Any, context: Context
    ) -> AsyncIterator[Any]:
        async for response in behavior(request, context):
            yield response

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        if handler.response_streaming:
            inner = cast(Behavior, handler.unary_stream or handler.stream_stream)
            if not inspect.isasyncgenfunction(inner):
                inner = _yielding(inner)

            async def stream_behavior(request: Any, context: Context) -> AsyncIterator[Any]:
                async for response in self.around_stream(method, inner, request, context):
                    yield response

            factory = grpc.stream_stream_rpc_method_handler
            if not handler.request_streaming:
                factory = grpc.unary_stream_rpc_method_handler
            return factory(stream_behavior, handler.request_deserializer, handler.response_serializer)

        inner = cast(Behavior, handler.unary_unary or handler.stream_unary)

        async def unary_behavior(request: Any, context: Context) -> Any:
            return await self.around_unary(method, inner, request, context)

        factory = grpc.stream_unary_rpc_method_handler
        if not handler.request_streaming:
            factory = grpc.unary_unary_rpc_method_handler
        return factory(unary_behavior, handler.request_deserializer, handler.response_serializer)


class RequestIdInterceptor(WrappingInterceptor):
    """Takes `x-request-id` from the caller (Envoy or the edge sets it) or makes one, for the whole call."""

    def _begin(self, context: Context) -> Any:
        request_id = _metadata_value(context, REQUEST_ID_HEADER) or new_request_id()
        context.set_trailing_metadata(((REQUEST_ID_HEADER, request_id),))
        return request_id_var.set(request_id)

    async def around_unary(self, method: str, behavior: Behavior, request: Any, context: Context) -> Any:
        token = self._begin(context)
        try:
            return await behavior(request, context)
        finally:
            _reset(request_id_var, token)

    async def around_stream(
        self, method: str, behavior: Behavior, request: Any, context: Context
    ) -> AsyncIterator[Any]:
        token = self._begin(context)
        try:
            async for response in behavior(request, context):
                yield response
        finally:
            _reset(request_id_var, token)


def _status_of(context: Context, failed: bool) -> grpc.StatusCode:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK


class AccessLogInterceptor(WrappingInterceptor):
    """One log line and one metrics observation per call, with its final status and duration."""

    def __init__(self, metrics: RpcMetrics) -> None:
        self._metrics = metrics

    def _finish(self, method: str, context: Context, started: float, failed: bool) -> None:
        elapsed = time.perf_counter() - started
        code = _status_of(context, failed)
        self._metrics.observe(method, code.name, elapsed)
        log.info(
            "rpc",
            extra={"rpc": method, "grpc_status": code.name, "duration_ms": round(elapsed * 1000, 2)},
        )

    async def around_unary(self, method: str, behavior: Behavior, request: Any, context: Context) -> Any:
        started, failed = time.perf_counter(), True
        try:
            response = await behavior(request, context)
            failed = False
            return response
        finally:
            self._finish(method, context, started, failed)

    async def around_stream(
        self, method: str, behavior: Behavior, request: Any, context: Context
    ) -> AsyncIterator[Any]:
        started, failed = time.perf_counter(), True
        try:
            async for response in behavior(request, context):
                yield response
            failed = False
        finally:
            self._finish(method, context, started, failed)


class ErrorMappingInterceptor(WrappingInterceptor):
    """The one place a domain error becomes a gRPC status; anything unexpected becomes INTERNAL."""

    async def _abort(self, method: str, exc: BaseException, context: Context) -> None:
        if isinstance(exc, DomainError):
            if exc.reason:
                # Keep the trailers set so far (the request id) and add the reason.
                trailers = (*(context.trailing_metadata() or ()), (REASON_METADATA_KEY, exc.reason))
                await context.abort(exc.code, exc.message, trailing_metadata=trailers)
            await context.abort(exc.code, exc.message)
        if isinstance(exc, NotImplementedError):
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented yet")
        log.exception("unhandled error in %s", method, exc_info=exc)
        await context.abort(grpc.StatusCode.INTERNAL, "internal error; the request id names it in the logs")

    async def around_unary(self, method: str, behavior: Behavior, request: Any, context: Context) -> Any:
        try:
            return await behavior(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await self._abort(method, exc, context)

    async def around_stream(
        self, method: str, behavior: Behavior, request: Any, context: Context
    ) -> AsyncIterator[Any]:
        try:
            async for response in behavior(request, context):
                yield response
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await self._abort(method, exc, context)


class Authenticator(Protocol):
    """Decides whether a call may proceed; `services.runtime.auth.authenticator.JwtAuthenticator` is
    the one every service uses by default."""

    async def authenticate(self, method: str, context: Context) -> Principal:
        """The caller's principal; raise `Unauthenticated` or `PermissionDenied` to refuse the call."""


class AuthenticationInterceptor(WrappingInterceptor):
    """The authentication hook: every call passes the configured `Authenticator` first."""

    def __init__(self, authenticator: Authenticator, exempt_prefixes: tuple[str, ...]) -> None:
        self._authenticator = authenticator
        # Health and reflection must answer probes that carry no token.
        self._exempt_prefixes = exempt_prefixes

    async def _begin(self, method: str, context: Context) -> Token[Principal | None] | None:
        if method.startswith(self._exempt_prefixes):
            return None
        return principal_var.set(await self._authenticator.authenticate(method, context))

    async def around_unary(self, method: str, behavior: Behavior, request: Any, context: Context) -> Any:
        token = await self._begin(method, context)
        try:
            return await behavior(request, context)
        finally:
            if token is not None:
                _reset(principal_var, token)

    async def around_stream(
        self, method: str, behavior: Behavior, request: Any, context: Context
    ) -> AsyncIterator[Any]:
        token = await self._begin(method, context)
        try:
            async for response in behavior(request, context):
                yield response
        finally:
            if token is not None:
                _reset(principal_var, token)


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


class ValidationInterceptor(WrappingInterceptor):
    """Enforces the `buf.validate` constraints declared in the protos, once, for every request message."""

    @staticmethod
    async def _validate(message: Any, context: Context) -> None:
        if isinstance(message, Message):
            problem = violations_message(message)
            if problem is not None:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)

    async def _validated_stream(self, requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
        async for message in requests:
            await self._validate(message, context)
            yield message

    async def _checked(self, request: Any, context: Context) -> Any:
        if hasattr(request, "__aiter__"):
            return self._validated_stream(request, context)
        await self._validate(request, context)
        return request

    async def around_unary(self, method: str, behavior: Behavior, request: Any, context: Context) -> Any:
        return await behavior(await self._checked(request, context), context)

    async def around_stream(
        self, method: str, behavior: Behavior, request: Any, context: Context
    ) -> AsyncIterator[Any]:
        async for response in behavior(await self._checked(request, context), context):
            yield response


def server_interceptors(
    metrics: RpcMetrics, authenticator: Authenticator, exempt_prefixes: tuple[str, ...]
) -> list[grpc.aio.ServerInterceptor]:
    """The chain every service's server installs, outermost first (see the module docstring)."""
    return [
        RequestIdInterceptor(),
        AccessLogInterceptor(metrics),
        ErrorMappingInterceptor(),
        AuthenticationInterceptor(authenticator, exempt_prefixes),
        ValidationInterceptor(),
    ]
