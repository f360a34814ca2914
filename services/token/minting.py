"""Minting: an identity, its audiences, scopes and lifetime become a signed, recorded, audited
access token (the record and its audit row are one transaction, so every token issued is audited
exactly once, whichever grant issued it)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from services.runtime.audit import AuditEvent, Who
from services.token.claims import AccessClaims, Identity
from services.token.signing import SigningKeys
from services.token.store.tokens import IssuedToken, TokenStore


@dataclass(frozen=True)
class Minted:
    token: str
    claims: AccessClaims

    @property
    def expires_in(self) -> int:
        return max(0, self.claims.exp - int(time.time()))

    @property
    def scope(self) -> str:
        return " ".join(self.claims.scopes)


@dataclass(frozen=True)
class Audit:
    """How issuing a token is audited: the action, its facts, and who asked, when that is not the
    token's own identity (an agent token is asked for by an internal service, not by the agent)."""

    action: str
    detail: Mapping[str, str] = field(default_factory=dict)
    who: Who | None = None


def who_of(identity: Identity) -> Who:
    """A token's identity as the audit log names it: its subject, its `act` chain, its client."""
    return Who(
        tenant_id=identity.tenant_id,
        subject=identity.sub,
        actor_chain=tuple(actor.message() for actor in identity.actors),
        client_id=identity.client_id,
    )


class Minter:
    def __init__(self, keys: SigningKeys, store: TokenStore, issuer: str) -> None:
        self._keys = keys
        self._store = store
        self._issuer = issuer

    async def mint(
        self,
        identity: Identity,
        *,
        audiences: tuple[str, ...],
        scopes: tuple[str, ...],
        lifetime_seconds: int,
        audit: Audit,
        not_after: int | None = None,
        family_id: uuid.UUID | None = None,
        exchanged_from: tuple[str, str | None] | None = None,
    ) -> Minted:
        """Sign and record a token. `not_after` caps its expiry (a delegated token never outlives the
        tokens it came from); `family_id` ties it to a refresh-token family for revocation;
        `exchanged_from` (subject jti, actor jti) to the tokens an exchange made it from, whose
        revocation revokes it."""
        now = int(time.time())
        exp = now + lifetime_seconds if not_after is None else min(now + lifetime_seconds, not_after)
        claims = AccessClaims(
            iss=self._issuer,
            aud=audiences,
            exp=exp,
            iat=now,
            nbf=now,
            jti=str(uuid.uuid4()),
            scopes=scopes,
            identity=identity,
        )
        signer = await self._keys.signer()
        token = signer.sign(claims.to_jwt())
        await self._store.record_issued(
            IssuedToken(
                jti=claims.jti,
                client_id=identity.client_id,
                tenant_id=identity.tenant_id,
                subject=identity.sub,
                family_id=family_id,
                expire_time=datetime.fromtimestamp(exp, UTC),
                subject_jti=exchanged_from[0] if exchanged_from else None,
                actor_jti=exchanged_from[1] if exchanged_from else None,
            ),
            AuditEvent(
                who=audit.who or who_of(identity),
                action=audit.action,
                resource=f"token/{claims.jti}",
                detail={**audit.detail, "scope": " ".join(scopes), "audience": " ".join(audiences)},
            ),
        )
        return Minted(token, claims)
