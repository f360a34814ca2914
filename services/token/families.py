"""Revoking a sign-in's whole token family when the token service itself sees it stolen: a refresh
token used twice (RFC 9700 4.14.2) or an authorization code redeemed twice (RFC 6749 4.1.2).

Nobody asked for such a revocation, so the client the family belongs to stands as the subject of
its audit row, in the user's tenant (where that tenant's admins look).
"""

from __future__ import annotations

import uuid

from services.runtime import audit
from services.runtime.audit import AuditEvent, Who
from services.token.revocation_records import RevocationRecords
from services.token.store.directory import DirectoryStore

REFRESH_REUSE = "refresh token reuse"
CODE_REUSE = "authorization code reuse"


async def revoke_family(
    revocations: RevocationRecords,
    directory: DirectoryStore,
    *,
    family_id: uuid.UUID,
    user_id: str,
    client_id: str,
    reason: str,
) -> None:
    """Revoke every refresh token of the family and every access token issued from it."""
    user = await directory.user(user_id)
    who = Who(tenant_id=user.tenant_id if user is not None else "", subject=client_id, client_id=client_id)
    audited = AuditEvent(who, audit.TOKEN_REVOKE, f"token_family/{family_id}", detail={"reason": reason})
    await revocations.revoke_family(family_id, reason, audited)
