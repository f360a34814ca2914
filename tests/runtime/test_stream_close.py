"""A streaming call whose handler is closed from another task, as grpc.aio leaves it when a client
cancels while the server is sending: the stream's async generators are suspended at a `yield`, the
handler task is gone, and garbage collection closes them in a task (and Context) of their own.

The interceptors set the request id and the principal in the handler task's Context; resetting them
with that Context's tokens from another one raises ValueError, which the event loop logged as
"an error occurred during closing of asynchronous generator" after every such cancelled stream.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple, cast

import grpc
from grpc_health.v1 import health_pb2

from services.runtime.context import REQUEST_ID_HEADER, RpcContext, request_id_var
from services.runtime.interceptors import AdmitAll, server_interceptors
from services.runtime.metrics import RpcMetrics
from services.runtime.principal import caller_var

METHOD = "/macp.test.v1.StreamService/Watch"


class CallDetails(NamedTuple):
    """What grpc.aio hands `intercept_service`: the method and the caller's metadata."""

    method: str
    invocation_metadata: tuple[tuple[str, str], ...]


class StreamContext:
    """The few servicer-context calls the interceptors make on a call that succeeds. Not a real
    `grpc.aio.ServicerContext` (which only a running call can have): the test drives the wrapped
    handler by hand, from two tasks, which a real server never lets a caller choose."""

    def __init__(self, request_id: str) -> None:
        self._metadata = ((REQUEST_ID_HEADER, request_id),)
        self._trailers: tuple[tuple[str, str], ...] = ()

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def set_trailing_metadata(self, trailers: tuple[tuple[str, str], ...]) -> None:
        self._trailers = trailers

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._trailers

    def code(self) -> None:
        return None

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> None:
        raise AssertionError(f"the stream was aborted: {code} {details}")


async def watch(request: health_pb2.HealthCheckRequest, context: RpcContext) -> AsyncIterator[Any]:
    """A stream that never ends by itself, like Health.Watch or a conversation's events."""
    while True:
        yield health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)
        await asyncio.sleep(0)


async def intercepted_watch() -> Any:
    """`watch` wrapped by the chain every service installs, as grpc.aio would call it."""
    handler: grpc.RpcMethodHandler[Any, Any] | None = grpc.unary_stream_rpc_method_handler(watch)
    details = CallDetails(METHOD, ())
    metrics = RpcMetrics("test")
    for interceptor in reversed(server_interceptors(metrics, AdmitAll(), exempt_prefixes=())):

        async def continuation(
            _: grpc.HandlerCallDetails, inner: Any = handler
        ) -> grpc.RpcMethodHandler[Any, Any] | None:
            return cast("grpc.RpcMethodHandler[Any, Any] | None", inner)

        handler = await interceptor.intercept_service(continuation, cast(grpc.HandlerCallDetails, details))
    assert handler is not None
    assert handler.unary_stream is not None
    return handler.unary_stream


@contextmanager
def loop_errors() -> Iterator[list[dict[str, Any]]]:
    """What the running loop's exception handler receives while the block runs (it is where the
    errors of generators closed by garbage collection go)."""
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    seen: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: seen.append(context))
    try:
        yield seen
    finally:
        loop.set_exception_handler(previous)


async def settle() -> None:
    """Collect the dropped generators and let the loop run the closing tasks it scheduled for them."""
    for _ in range(5):
        gc.collect()
        for _ in range(10):
            await asyncio.sleep(0)


async def test_a_stream_closed_from_another_task_resets_nothing_and_logs_no_error() -> None:
    behavior = await intercepted_watch()
    request = health_pb2.HealthCheckRequest()
    seen_in_handler: list[tuple[str | None, bool]] = []

    with loop_errors() as errors:
        for index in range(20):
            stream = behavior(request, cast(RpcContext, StreamContext(f"req-{index}")))

            async def first_response(responses: Any = stream) -> Any:
                response = await responses.__anext__()
                seen_in_handler.append((request_id_var.get(), caller_var.get() is not None))
                return response

            # The handler task: the interceptors set their variables in its Context.
            await asyncio.create_task(first_response())
            # Another task closes it, as the loop's finalizer does for a cancelled call's stream.
            await asyncio.create_task(stream.aclose())
            del stream, first_response
        await settle()

    assert seen_in_handler == [(f"req-{index}", True) for index in range(20)]
    # Only what concerns these streams: the loop is the session's, and the collections in settle()
    # also finalize what earlier tests left behind (a task destroyed while pending says so here,
    # with no exception), which is not this test's to judge.
    ours = [c for c in errors if c.get("exception") is not None or "asyncgen" in str(c.get("message", ""))]
    assert [(c.get("message"), c.get("exception")) for c in ours] == []
    # The closing tasks leave this task's Context as it was.
    assert request_id_var.get() is None
    assert caller_var.get() is None
