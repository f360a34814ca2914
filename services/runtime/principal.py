"""Who is calling: the authenticated principal of the current call, set by the authentication hook."""

from __future__ import annotations

from contextvars import ContextVar

from macp.common.v1 import principal_pb2

from services.runtime.errors import Unauthenticated

Principal = principal_pb2.Principal

principal_var: ContextVar[Principal | None] = ContextVar("macp_principal", default=None)


def current_principal() -> Principal:
    """The caller; a call without one was not authenticated, which a handler must never serve."""
    principal = principal_var.get()
    if principal is None:
        raise Unauthenticated("this call carries no authenticated principal")
    return principal


# Until the token service lands every call acts as this one local principal, so that rows still
# carry a tenant and an owner and tenant scoping is exercised from the first slice on.
LOCAL_DEVELOPMENT_PRINCIPAL = Principal(tenant_id="local", user_id="local-user")
