"""Whose usage a call may touch: the caller's own tenant, or any tenant for an administrator."""

from __future__ import annotations

from services.runtime.errors import PermissionDenied
from services.runtime.principal import Principal

ADMIN_SCOPE = "macp:admin"


def tenant_for(principal: Principal, requested: str, field: str = "tenant_id") -> str:
    """`requested` if the principal may act on it. The tenant in a request only names what the
    token already allows; it never widens it."""
    if requested == principal.tenant_id or ADMIN_SCOPE in principal.scopes:
        return requested
    raise PermissionDenied(f"{field}: {requested} is not the caller's tenant")
