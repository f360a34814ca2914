"""Domain errors and the one place they become gRPC status codes.

Services raise these; the error interceptor turns them into `context.abort(code, message)`. The
edge maps the resulting gRPC status to HTTP in its own single table (services/edge/errors.py).
"""

from __future__ import annotations

import grpc


class DomainError(Exception):
    """Base of every error a handler may raise on purpose; `code` is the gRPC status it becomes."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(DomainError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(DomainError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(DomainError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(DomainError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDenied(DomainError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(DomainError):
    code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhausted(DomainError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(DomainError):
    code = grpc.StatusCode.UNAVAILABLE


class Unimplemented(DomainError):
    code = grpc.StatusCode.UNIMPLEMENTED
