"""Postgres rows of issued tokens: access tokens by id, refresh-token families, revocations."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from services.runtime import audit
from services.runtime.audit import AuditEvent


@dataclass(frozen=True)
class IssuedToken:
    jti: str
    client_id: str
    tenant_id: str
    subject: str
    family_id: uuid.UUID | None
    expire_time: datetime
    # For an exchanged token (RFC 8693): the ids of the tokens it was exchanged from.
    subject_jti: str | None = None
    actor_jti: str | None = None


@dataclass(frozen=True)
class RefreshRecord:
    token_hash: bytes
    family_id: uuid.UUID
    client_id: str
    user_id: str
    scopes: tuple[str, ...]
    audiences: tuple[str, ...]
    issue_time: datetime
    expire_time: datetime
    use_time: datetime | None
    revoke_time: datetime | None


@dataclass(frozen=True)
class Revocation:
    jti: str
    expire_time: datetime


def _refresh(row: asyncpg.Record) -> RefreshRecord:
    return RefreshRecord(
        token_hash=bytes(row["token_hash"]),
        family_id=row["family_id"],
        client_id=row["client_id"],
        user_id=row["user_id"],
        scopes=tuple(row["scopes"]),
        audiences=tuple(row["audiences"]),
        issue_time=row["issue_time"],
        expire_time=row["expire_time"],
        use_time=row["use_time"],
        revoke_time=row["revoke_time"],
    )


class TokenStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def record_issued(self, token: IssuedToken, audited: AuditEvent) -> None:
        """Record an issued token and its audit row, in one statement."""
        sql, args = audit.with_audit(
            """
            INSERT INTO token_issued
                (jti, client_id, tenant_id, subject, family_id, expire_time, subject_jti, actor_jti)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
            RETURNING jti
            """,
            [
                token.jti,
                token.client_id,
                token.tenant_id,
                token.subject,
                token.family_id,
                token.expire_time,
                token.subject_jti,
                token.actor_jti,
            ],
            audited,
        )
        await self._pool.execute(sql, *args)

    async def issued(self, jti: str) -> IssuedToken | None:
        row = await self._pool.fetchrow("SELECT * FROM token_issued WHERE jti = $1", jti)
        if row is None:
            return None
        return IssuedToken(
            row["jti"],
            row["client_id"],
            row["tenant_id"],
            row["subject"],
            row["family_id"],
            row["expire_time"],
            row["subject_jti"],
            row["actor_jti"],
        )

    async def insert_refresh(self, record: RefreshRecord) -> None:
        await self._pool.execute(
            """
            INSERT INTO token_refresh
                (token_hash, family_id, client_id, user_id, scopes, audiences, issue_time, expire_time)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
            """,
            record.token_hash,
            record.family_id,
            record.client_id,
            record.user_id,
            list(record.scopes),
            list(record.audiences),
            record.issue_time,
            record.expire_time,
        )

    async def refresh(self, token_hash: bytes) -> RefreshRecord | None:
        row = await self._pool.fetchrow("SELECT * FROM token_refresh WHERE token_hash = $1", token_hash)
        return None if row is None else _refresh(row)

    async def claim_refresh(self, token_hash: bytes) -> RefreshRecord | None:
        """Mark the refresh token used if it is unused, unrevoked and unexpired, atomically (two
        concurrent uses cannot both win); None when it was not claimable."""
        row = await self._pool.fetchrow(
            """
            UPDATE token_refresh SET use_time = now()
            WHERE token_hash = $1 AND use_time IS NULL AND revoke_time IS NULL AND expire_time > now()
            RETURNING *
            """,
            token_hash,
        )
        return None if row is None else _refresh(row)

    async def revoke_family(self, family_id: uuid.UUID, reason: str, audited: AuditEvent) -> list[Revocation]:
        """Revoke every refresh token of the family and its access tokens that are still live (which
        it returns, for Redis), in one transaction; audited only if this call revoked anything, so a
        repeated revocation of the same family writes no second row."""
        async with self._pool.acquire() as conn, conn.transaction():
            refreshed = await conn.fetch(
                "UPDATE token_refresh SET revoke_time = now()"
                " WHERE family_id = $1 AND revoke_time IS NULL RETURNING family_id",
                family_id,
            )
            rows = await conn.fetch(
                "SELECT jti, expire_time FROM token_issued WHERE family_id = $1 AND expire_time > now()",
                family_id,
            )
            live = [Revocation(row["jti"], row["expire_time"]) for row in rows]
            new = await self._insert_revocations(conn, live, reason)
            if refreshed or new:
                await audit.record(conn, audited)
        return live

    async def record_revocations(
        self, revocations: list[Revocation], reason: str, audited: AuditEvent | None
    ) -> None:
        """Record revocations and, if any is new, the audit row (when given), in one transaction."""
        async with self._pool.acquire() as conn, conn.transaction():
            if await self._insert_revocations(conn, revocations, reason) and audited is not None:
                await audit.record(conn, audited)

    async def revoke_descendants(self, jtis: list[str], reason: str) -> list[Revocation]:
        """Revoke every live token exchanged from one of `jtis` (as its subject or its actor), at any
        depth, in one statement; returns them all, the ones revoked before included (for Redis).

        Called once the revocation of `jtis` has committed: an exchange recorded too late for this
        statement to see it finds that revocation when it checks its inputs again after recording
        (services/token/exchange.py), so no descendant escapes either way. An exchanged token never
        outlives its inputs, so the walk stops at expired ones."""
        if not jtis:
            return []
        rows = await self._pool.fetch(
            """
            WITH RECURSIVE descendants (jti, expire_time) AS (
                SELECT jti, expire_time FROM token_issued
                WHERE (subject_jti = ANY($1::text[]) OR actor_jti = ANY($1::text[])) AND expire_time > now()
                UNION
                SELECT child.jti, child.expire_time
                FROM token_issued child JOIN descendants parent
                    ON child.subject_jti = parent.jti OR child.actor_jti = parent.jti
                WHERE child.expire_time > now()
            ),
            revoked AS (
                INSERT INTO token_revocations (jti, reason, expire_time)
                SELECT jti, $2, expire_time FROM descendants
                ON CONFLICT (jti) DO NOTHING
            )
            SELECT jti, expire_time FROM descendants
            """,
            jtis,
            reason,
        )
        return [Revocation(row["jti"], row["expire_time"]) for row in rows]

    @staticmethod
    async def _insert_revocations(
        conn: asyncpg.Connection, revocations: list[Revocation], reason: str
    ) -> int:
        """How many of `revocations` were not recorded before."""
        if not revocations:
            return 0
        rows = await conn.fetch(
            """
            INSERT INTO token_revocations (jti, reason, expire_time)
            SELECT jti, $2, expire_time FROM unnest($1::text[], $3::timestamptz[]) AS r (jti, expire_time)
            ON CONFLICT (jti) DO NOTHING
            RETURNING jti
            """,
            [r.jti for r in revocations],
            reason,
            [r.expire_time for r in revocations],
        )
        return len(rows)

    async def is_revoked(self, jti: str) -> bool:
        revoked: bool = await self._pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM token_revocations WHERE jti = $1)", jti
        )
        return revoked

    async def any_revoked(self, jtis: list[str]) -> bool:
        revoked: bool = await self._pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM token_revocations WHERE jti = ANY($1::text[]))", jtis
        )
        return revoked

    async def live_revocations(self) -> list[Revocation]:
        rows = await self._pool.fetch(
            "SELECT jti, expire_time FROM token_revocations WHERE expire_time > now()"
        )
        return [Revocation(row["jti"], row["expire_time"]) for row in rows]
