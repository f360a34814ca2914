"""Postgres rows of the signing keys (sealed private keys; the current one and the retiring ones)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from services.runtime import audit
from services.runtime.audit import AuditEvent

# Serialises key creation and rotation across token service replicas.
_KEYS_LOCK = 0x6D61_6B79  # "maky"


@dataclass(frozen=True)
class NewKey:
    kid: str
    alg: str
    public_jwk: dict[str, Any]
    sealed_private_key: bytes


@dataclass(frozen=True)
class StoredKey:
    kid: str
    alg: str
    public_jwk: dict[str, Any]
    sealed_private_key: bytes
    create_time: datetime
    rotate_time: datetime | None
    retire_time: datetime | None


def _key(row: asyncpg.Record) -> StoredKey:
    return StoredKey(
        kid=row["kid"],
        alg=row["alg"],
        public_jwk=json.loads(row["public_jwk"]),
        sealed_private_key=bytes(row["private_key"]),
        create_time=row["create_time"],
        rotate_time=row["rotate_time"],
        retire_time=row["retire_time"],
    )


class KeyStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def current(self) -> StoredKey | None:
        row = await self._pool.fetchrow("SELECT * FROM token_signing_keys WHERE rotate_time IS NULL")
        return None if row is None else _key(row)

    async def published(self) -> list[StoredKey]:
        """The current key first, then the rotated ones not yet retired, newest first."""
        rows = await self._pool.fetch(
            """
            SELECT * FROM token_signing_keys
            WHERE rotate_time IS NULL OR retire_time > now()
            ORDER BY rotate_time DESC NULLS FIRST, create_time DESC
            """
        )
        return [_key(row) for row in rows]

    async def get(self, kid: str) -> StoredKey | None:
        row = await self._pool.fetchrow("SELECT * FROM token_signing_keys WHERE kid = $1", kid)
        return None if row is None else _key(row)

    async def create_first(self, key: NewKey) -> StoredKey:
        """Store `key` as current unless another replica made one first; returns the current key."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _KEYS_LOCK)
            row = await conn.fetchrow("SELECT * FROM token_signing_keys WHERE rotate_time IS NULL")
            if row is not None:
                return _key(row)
            return _key(await _insert(conn, key))

    async def rotate(
        self, key: NewKey, retire_after_seconds: int, audited: AuditEvent
    ) -> tuple[StoredKey, StoredKey | None]:
        """Make `key` current; the previous current key retires `retire_after_seconds` from now; the
        audit row (naming the previous key) in the same transaction. Returns the new key and the
        rotated one (None if there was none)."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _KEYS_LOCK)
            previous = await conn.fetchrow(
                """
                UPDATE token_signing_keys
                SET rotate_time = now(), retire_time = now() + make_interval(secs => $1)
                WHERE rotate_time IS NULL
                RETURNING *
                """,
                float(retire_after_seconds),
            )
            current = await _insert(conn, key)
            previous_kid = "" if previous is None else str(previous["kid"])
            await audit.record(
                conn, dataclasses.replace(audited, detail={**audited.detail, "previous_kid": previous_kid})
            )
        return _key(current), None if previous is None else _key(previous)


async def _insert(conn: asyncpg.Connection, key: NewKey) -> asyncpg.Record:
    row: asyncpg.Record = await conn.fetchrow(
        """
        INSERT INTO token_signing_keys (kid, alg, public_jwk, private_key)
        VALUES ($1, $2, $3::jsonb, $4)
        RETURNING *
        """,
        key.kid,
        key.alg,
        json.dumps(key.public_jwk),
        key.sealed_private_key,
    )
    return row
