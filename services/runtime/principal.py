"""Who is calling: the caller of the current call, request or round, in one context variable.

It is set where a caller arrives: the runtime's server interceptor for a gRPC call, the edge's
authentication middleware for an HTTP request or a WebSocket connection, the orchestrator's driver
for a queued round (the way it sets the round's trace context). Calls to other services made while
it is set go out with the caller's token exchanged for the callee (services/runtime/auth/
caller_tokens.py, installed on the mesh channel), so no call site builds credentials by hand.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from contextvars import ContextVar
from dataclasses import dataclass

from macp.common.v1 import principal_pb2

from services.runtime.context import setting
from services.runtime.errors import Unauthenticated

Principal = principal_pb2.Principal


@dataclass(frozen=True)
class Caller:
    """The party the current work is for: the access token it presented (verified where it
    arrived; empty for the local development principal) and the principal that token names."""

    token: str
    principal: Principal


caller_var: ContextVar[Caller | None] = ContextVar("macp_caller", default=None)


def current_caller() -> Caller:
    """The caller; work without one was not authenticated, which a handler must never serve."""
    caller = caller_var.get()
    if caller is None:
        raise Unauthenticated("this call carries no authenticated principal")
    return caller


def current_principal() -> Principal:
    return current_caller().principal


def acting_for(caller: Caller) -> AbstractContextManager[None]:
    """Work done (and calls made) inside the block are `caller`'s."""
    return setting(caller_var, caller)


# Until the token service lands every call acts as this one local principal, so that rows still
# carry a tenant and an owner and tenant scoping is exercised from the first slice on.
LOCAL_DEVELOPMENT_PRINCIPAL = Principal(tenant_id="local", user_id="local-user")
