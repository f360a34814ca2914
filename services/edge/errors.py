"""The one table from gRPC status to HTTP status, and the one JSON error shape the edge answers with."""

from __future__ import annotations

from http import HTTPStatus

import grpc
from starlette.responses import JSONResponse

from services.runtime.context import current_request_id

GRPC_TO_HTTP: dict[grpc.StatusCode, HTTPStatus] = {
    grpc.StatusCode.OK: HTTPStatus.OK,
    grpc.StatusCode.INVALID_ARGUMENT: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.OUT_OF_RANGE: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.NOT_FOUND: HTTPStatus.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS: HTTPStatus.CONFLICT,
    grpc.StatusCode.ABORTED: HTTPStatus.CONFLICT,
    grpc.StatusCode.FAILED_PRECONDITION: HTTPStatus.PRECONDITION_FAILED,
    grpc.StatusCode.RESOURCE_EXHAUSTED: HTTPStatus.TOO_MANY_REQUESTS,
    grpc.StatusCode.UNAUTHENTICATED: HTTPStatus.UNAUTHORIZED,
    grpc.StatusCode.PERMISSION_DENIED: HTTPStatus.FORBIDDEN,
    grpc.StatusCode.UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: HTTPStatus.GATEWAY_TIMEOUT,
    grpc.StatusCode.UNIMPLEMENTED: HTTPStatus.NOT_IMPLEMENTED,
    grpc.StatusCode.CANCELLED: HTTPStatus.BAD_REQUEST,
}


class HttpError(Exception):
    """An error the edge answers itself (bad JSON, body too large), before any RPC is made."""

    def __init__(self, status: HTTPStatus, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_response(status: HTTPStatus, code: str, message: str) -> JSONResponse:
    return JSONResponse(
        {"code": code, "message": message, "request_id": current_request_id()}, status_code=status.value
    )


def rpc_error_response(error: grpc.aio.AioRpcError) -> JSONResponse:
    code = error.code()
    status = GRPC_TO_HTTP.get(code, HTTPStatus.INTERNAL_SERVER_ERROR)
    return error_response(status, code.name, error.details() or code.name.lower())
