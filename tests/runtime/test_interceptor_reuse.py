"""The interceptor builds each method's wrapped handler once, and builds it anew when the server
hands it another handler for that method, so a cached wrapper never serves a stale behaviour."""

from __future__ import annotations

from typing import Any, cast

import grpc
from grpc_health.v1 import health_pb2

from services.runtime.context import RpcContext
from services.runtime.interceptors import AdmitAll, RpcInterceptor
from services.runtime.metrics import RpcMetrics
from tests.runtime.test_stream_close import CallDetails, StreamContext


def check_answering(status: int) -> Any:
    async def check(request: health_pb2.HealthCheckRequest, context: RpcContext) -> Any:
        return health_pb2.HealthCheckResponse(status=status)

    return grpc.unary_unary_rpc_method_handler(check)


async def wrapped(interceptor: RpcInterceptor, handler: Any, method: str) -> Any:
    async def continuation(_: grpc.HandlerCallDetails) -> Any:
        return handler

    return await interceptor.intercept_service(
        continuation, cast(grpc.HandlerCallDetails, CallDetails(method, ()))
    )


async def test_a_methods_wrapper_is_built_once_and_again_for_another_handler() -> None:
    interceptor = RpcInterceptor(RpcMetrics("test"), AdmitAll(), exempt_prefixes=())
    serving, not_serving = check_answering(1), check_answering(2)
    first = await wrapped(interceptor, serving, "/grpc.health.v1.Health/Check")
    assert await wrapped(interceptor, serving, "/grpc.health.v1.Health/Check") is first
    # Another method, or another handler for the same one, gets its own wrapper.
    assert await wrapped(interceptor, serving, "/grpc.health.v1.Health/Other") is not first
    replaced = await wrapped(interceptor, not_serving, "/grpc.health.v1.Health/Check")
    assert replaced is not first

    context = cast(RpcContext, StreamContext("req-1"))
    answer = await replaced.unary_unary(health_pb2.HealthCheckRequest(), context)
    assert answer.status == 2
    # A method the server has no handler for stays unknown.
    assert await wrapped(interceptor, None, "/grpc.health.v1.Health/Missing") is None
