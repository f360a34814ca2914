"""RFC 7009 revocation requests, by token value or (MACP extension) by token id.

A client revokes only tokens issued to it. An unknown, invalid or already expired token is not an
error (RFC 7009 2.2): there is nothing left to revoke. Revoking a refresh token revokes its family.
"""

from __future__ import annotations

from macp.token.v1 import token_service_pb2 as pb

from services.runtime import audit
from services.runtime.audit import AuditEvent, Who
from services.token.clients import Clients
from services.token.hashing import hash_refresh_token
from services.token.introspection import looks_like_jwt
from services.token.oauth import oauth_error
from services.token.revocation_records import RevocationRecords
from services.token.store.directory import Client, DirectoryStore
from services.token.store.tokens import Revocation, TokenStore
from services.token.verification import TokenVerifier


class RevocationRequests:
    def __init__(
        self,
        clients: Clients,
        directory: DirectoryStore,
        verifier: TokenVerifier,
        tokens: TokenStore,
        revocations: RevocationRecords,
    ) -> None:
        self._clients = clients
        self._directory = directory
        self._verifier = verifier
        self._tokens = tokens
        self._revocations = revocations

    async def revoke(self, request: pb.RevokeRequest) -> None:
        client = await self._clients.authenticate(request.client_id, request.client_secret)
        if request.token_id:
            await self._by_id(client, request.token_id)
        elif looks_like_jwt(request.token):
            claims = await self._verifier.check(request.token)
            if claims is not None:
                await self._by_id(client, claims.jti)
        else:
            record = await self._tokens.refresh(hash_refresh_token(request.token))
            if record is not None:
                _own(client.client_id, record.client_id)
                user = await self._directory.user(record.user_id)
                tenant_id = user.tenant_id if user is not None else client.tenant_id
                audited = _revoked(client, tenant_id, f"token_family/{record.family_id}")
                await self._revocations.revoke_family(record.family_id, REASON, audited)

    async def _by_id(self, client: Client, jti: str) -> None:
        issued = await self._tokens.issued(jti)
        if issued is None:
            return
        _own(client.client_id, issued.client_id)
        audited = _revoked(client, issued.tenant_id, f"token/{jti}")
        await self._revocations.revoke([Revocation(jti, issued.expire_time)], REASON, audited)


REASON = "revoked by client"


def _revoked(client: Client, tenant_id: str, resource: str) -> AuditEvent:
    """The audit row of a client revoking a token (in the token's tenant, where its admins look)."""
    who = Who(tenant_id=tenant_id, subject=client.client_id, client_id=client.client_id)
    return AuditEvent(who, audit.TOKEN_REVOKE, resource, detail={"reason": REASON})


def _own(client_id: str, owner: str) -> None:
    if client_id != owner:
        raise oauth_error("unauthorized_client", "a client may revoke only the tokens issued to it")
