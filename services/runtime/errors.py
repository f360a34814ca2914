"""Domain errors and the one place they become gRPC status codes.

Services raise these; the error interceptor turns them into `context.abort(code, message)`. The
edge maps the resulting gRPC status to HTTP in its own single table (services/edge/errors.py).
"""

from __future__ import annotations

import asyncpg
import grpc
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

REASON_METADATA_KEY = "macp-error-reason"

# What a store that is away (restarting, unreachable, shutting down) raises: the call may succeed
# if made again shortly, so it is UNAVAILABLE, which callers retry, and not INTERNAL, a bug.
_UNREACHABLE: dict[str, tuple[type[BaseException], ...]] = {
    "Redis": (RedisConnectionError, RedisTimeoutError),
    "Postgres": (
        asyncpg.PostgresConnectionError,
        asyncpg.CannotConnectNowError,
        asyncpg.AdminShutdownError,
        asyncpg.CrashShutdownError,
        # A pooled connection whose server died under it ("cannot switch to state 12; another
        # operation is in progress"): the pool replaces it, and the call succeeds when made again.
        asyncpg.InternalClientError,
    ),
}


def unreachable_store(exc: BaseException) -> str | None:
    """The name of the store `exc` says is unreachable right now, or None for any other error."""
    for name, kinds in _UNREACHABLE.items():
        if isinstance(exc, kinds):
            return name
    if isinstance(exc, ConnectionError):  # a socket refused or reset on the way to a store
        return "a store"
    return None


class DomainError(Exception):
    """Base of every error a handler may raise on purpose; `code` is the gRPC status it becomes.

    `reason`, when set, rides in the `macp-error-reason` trailer (in the spirit of AIP-193's
    ErrorInfo.reason): a machine-readable refinement of the code, for the callers that must tell
    two causes of one status apart (the edge answers a stale etag 412, other failed preconditions 409).
    """

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = ""

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


class StaleEtag(FailedPrecondition):
    """The etag the caller sent is not the resource's current one: it changed since it was read."""

    reason = "ETAG_MISMATCH"


class OutOfRange(DomainError):
    """A position that is no longer (or not yet) there: an event id older than what is retained."""

    code = grpc.StatusCode.OUT_OF_RANGE


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


class Aborted(DomainError):
    code = grpc.StatusCode.ABORTED


# What a service answers when a call it made on the caller's behalf failed: the callee's verdict
# about the caller's request (not found, invalid, refused, over quota, a stale etag) passes through
# unchanged, so a facade such as the orchestrator never turns a 404 into a 500; the callee's own
# trouble (internal, unauthenticated: a token this service made) is this service's unavailability.
_RELAYED: dict[grpc.StatusCode, type[DomainError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        OutOfRange,
        PermissionDenied,
        ResourceExhausted,
        Aborted,
    )
}


def domain_error(code: grpc.StatusCode, message: str) -> DomainError:
    """The domain error of a callee's verdict `code` (UNAVAILABLE for the callee's own trouble)."""
    return _RELAYED.get(code, Unavailable)(message)


def relayed(exc: grpc.aio.AioRpcError, what: str) -> DomainError:
    """The domain error to answer when the call `what` (e.g. "the conversation service") failed."""
    trailing = dict(exc.trailing_metadata() or ())
    if exc.code() not in _RELAYED:
        return Unavailable(f"{what} failed: {exc.code().name}: {exc.details()}")
    error = domain_error(exc.code(), exc.details() or exc.code().name)
    reason = trailing.get(REASON_METADATA_KEY)
    if isinstance(reason, str):
        error.reason = reason
    return error
