"""Postgres rows of authorization codes (RFC 6749 4.1.2): what each code was issued for, by its hash.

A code is claimed once, atomically (two concurrent redemptions cannot both win); a claim that
finds it used marks it reused, which the first redemption checks again once its tokens exist, so
a reuse racing the first exchange still revokes what that exchange issued.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

# How long an expired code is kept: a reuse within it is still recognised (and revokes).
SWEEP_AFTER = "1 hour"


@dataclass(frozen=True)
class AuthorizationCode:
    code_hash: bytes
    client_id: str
    redirect_uri: str
    code_challenge: str
    user_id: str
    scopes: tuple[str, ...]
    audiences: tuple[str, ...]
    family_id: uuid.UUID
    auth_time: datetime
    expire_time: datetime
    use_time: datetime | None = None
    reuse_time: datetime | None = None
    # OpenID Connect's nonce, for the ID token (Core 3.1.2.1); None when the request sent none.
    nonce: str | None = None


def _code(row: asyncpg.Record) -> AuthorizationCode:
    return AuthorizationCode(
        code_hash=bytes(row["code_hash"]),
        client_id=row["client_id"],
        redirect_uri=row["redirect_uri"],
        code_challenge=row["code_challenge"],
        user_id=row["user_id"],
        scopes=tuple(row["scopes"]),
        audiences=tuple(row["audiences"]),
        family_id=row["family_id"],
        auth_time=row["auth_time"],
        expire_time=row["expire_time"],
        use_time=row["use_time"],
        reuse_time=row["reuse_time"],
        nonce=row["nonce"],
    )


class CodeStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def insert(self, code: AuthorizationCode) -> None:
        """Store a new code, sweeping codes long expired in the same statement."""
        # $1 hash, $2 client, $3 redirect URI, $4 challenge, $5 user, $6 scopes, $7 audiences,
        # $8 family, $9 sign-in time, $10 expiry, $11 nonce.
        await self._pool.execute(
            f"""
            WITH swept AS (
                DELETE FROM token_authorization_codes WHERE expire_time < now() - interval '{SWEEP_AFTER}'
            )
            INSERT INTO token_authorization_codes
                (code_hash, client_id, redirect_uri, code_challenge, user_id, scopes, audiences,
                 family_id, auth_time, expire_time, nonce)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
            """,
            code.code_hash,
            code.client_id,
            code.redirect_uri,
            code.code_challenge,
            code.user_id,
            list(code.scopes),
            list(code.audiences),
            code.family_id,
            code.auth_time,
            code.expire_time,
            code.nonce,
        )

    async def code(self, code_hash: bytes) -> AuthorizationCode | None:
        row = await self._pool.fetchrow(
            "SELECT * FROM token_authorization_codes WHERE code_hash = $1", code_hash
        )
        return None if row is None else _code(row)

    async def claim(self, code_hash: bytes) -> AuthorizationCode | None:
        """Mark the code used if it is unused and unexpired, atomically; None when it was not."""
        row = await self._pool.fetchrow(
            """
            UPDATE token_authorization_codes SET use_time = now()
            WHERE code_hash = $1 AND use_time IS NULL AND expire_time > now()
            RETURNING *
            """,
            code_hash,
        )
        return None if row is None else _code(row)

    async def mark_reused(self, code_hash: bytes) -> None:
        await self._pool.execute(
            "UPDATE token_authorization_codes SET reuse_time = coalesce(reuse_time, now())"
            " WHERE code_hash = $1",
            code_hash,
        )

    async def reused(self, code_hash: bytes) -> bool:
        reused: bool = await self._pool.fetchval(
            "SELECT reuse_time IS NOT NULL FROM token_authorization_codes WHERE code_hash = $1", code_hash
        )
        return bool(reused)
