"""Postgres rows of who may hold tokens: tenants (with their tier), local users and OAuth clients."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from services.runtime import audit
from services.runtime.audit import AuditEvent

SYSTEM_TENANT = "macp"


@dataclass(frozen=True)
class Tenant:
    tenant_id: str
    tier: str
    display_name: str
    create_time: datetime


@dataclass(frozen=True)
class User:
    user_id: str
    tenant_id: str
    username: str
    password_hash: str
    create_time: datetime
    admin: bool = False


@dataclass(frozen=True)
class Client:
    client_id: str
    tenant_id: str
    client_class: str
    secret_hash: bytes | None
    auth_method: str
    grant_types: tuple[str, ...]
    scopes: tuple[str, ...]
    metadata: dict[str, Any]
    create_time: datetime


def _tenant(row: asyncpg.Record) -> Tenant:
    return Tenant(row["tenant_id"], row["tier"], row["display_name"], row["create_time"])


def _user(row: asyncpg.Record) -> User:
    return User(
        row["user_id"],
        row["tenant_id"],
        row["username"],
        row["password_hash"],
        row["create_time"],
        row["admin"],
    )


def _client(row: asyncpg.Record) -> Client:
    secret = row["secret_hash"]
    return Client(
        client_id=row["client_id"],
        tenant_id=row["tenant_id"],
        client_class=row["client_class"],
        secret_hash=None if secret is None else bytes(secret),
        auth_method=row["auth_method"],
        grant_types=tuple(row["grant_types"]),
        scopes=tuple(row["scopes"]),
        metadata=json.loads(row["metadata"]),
        create_time=row["create_time"],
    )


class DirectoryStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def tenant(self, tenant_id: str) -> Tenant | None:
        row = await self._pool.fetchrow("SELECT * FROM token_tenants WHERE tenant_id = $1", tenant_id)
        return None if row is None else _tenant(row)

    async def insert_tenant(
        self, tenant_id: str, tier: str, display_name: str, audited: AuditEvent
    ) -> Tenant | None:
        """The new tenant and its audit row, in one statement; None (and no row) when the id is taken."""
        sql, args = audit.with_audit(
            """
            INSERT INTO token_tenants (tenant_id, tier, display_name) VALUES ($1, $2, $3)
            ON CONFLICT (tenant_id) DO NOTHING
            RETURNING *
            """,
            [tenant_id, tier, display_name],
            audited,
        )
        row = await self._pool.fetchrow(sql, *args)
        return None if row is None else _tenant(row)

    async def user_by_name(self, username: str) -> User | None:
        row = await self._pool.fetchrow("SELECT * FROM token_users WHERE username = $1", username)
        return None if row is None else _user(row)

    async def user(self, user_id: str) -> User | None:
        row = await self._pool.fetchrow("SELECT * FROM token_users WHERE user_id = $1", user_id)
        return None if row is None else _user(row)

    async def insert_user(
        self,
        user_id: str,
        tenant_id: str,
        username: str,
        password_hash: str,
        admin: bool,
        audited: AuditEvent,
    ) -> User | None:
        """The new user and its audit row, in one statement; None (and no row) when the username is
        taken."""
        sql, args = audit.with_audit(
            """
            INSERT INTO token_users (user_id, tenant_id, username, password_hash, admin)
            VALUES ($1, $2, $3, $4, $5)
            ON CONFLICT (username) DO NOTHING
            RETURNING *
            """,
            [user_id, tenant_id, username, password_hash, admin],
            audited,
        )
        row = await self._pool.fetchrow(sql, *args)
        return None if row is None else _user(row)

    async def client(self, client_id: str) -> Client | None:
        row = await self._pool.fetchrow("SELECT * FROM token_clients WHERE client_id = $1", client_id)
        return None if row is None else _client(row)

    async def ensure_client(self, client: Client, audited: AuditEvent) -> bool:
        """Create `client`, or make the stored one say what it says (not its secret); audited, and
        True, only when this call created or changed it. One statement, so any number of token
        service replicas starting at once leave one row and no duplicate audit rows."""
        # $1 id, $2 tenant, $3 class, $4 auth method, $5 grant types, $6 scopes, $7 metadata.
        sql, args = audit.with_audit(
            """
            INSERT INTO token_clients
                (client_id, tenant_id, client_class, secret_hash, auth_method, grant_types, scopes, metadata)
            VALUES ($1, $2, $3, NULL, $4, $5, $6, $7::jsonb)
            ON CONFLICT (client_id) DO UPDATE SET
                tenant_id = EXCLUDED.tenant_id,
                client_class = EXCLUDED.client_class,
                secret_hash = NULL,
                auth_method = EXCLUDED.auth_method,
                grant_types = EXCLUDED.grant_types,
                scopes = EXCLUDED.scopes,
                metadata = EXCLUDED.metadata
            WHERE (token_clients.tenant_id, token_clients.client_class, token_clients.secret_hash,
                   token_clients.auth_method, token_clients.grant_types, token_clients.scopes,
                   token_clients.metadata)
                IS DISTINCT FROM (EXCLUDED.tenant_id, EXCLUDED.client_class, NULL::bytea,
                   EXCLUDED.auth_method, EXCLUDED.grant_types, EXCLUDED.scopes, EXCLUDED.metadata)
            RETURNING client_id
            """,
            [
                client.client_id,
                client.tenant_id,
                client.client_class,
                client.auth_method,
                list(client.grant_types),
                list(client.scopes),
                json.dumps(client.metadata),
            ],
            audited,
        )
        rows = await self._pool.fetch(sql, *args)
        return bool(rows)

    async def insert_client(self, client: Client, audited: AuditEvent) -> Client:
        """Store a new client and its audit row, in one transaction."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await self._insert_client(conn, client)
            await audit.record(conn, audited)
        return _client(row)

    @staticmethod
    async def _insert_client(conn: asyncpg.Connection, client: Client) -> asyncpg.Record:
        row: asyncpg.Record = await conn.fetchrow(
            """
            INSERT INTO token_clients
                (client_id, tenant_id, client_class, secret_hash, auth_method, grant_types, scopes, metadata)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb)
            RETURNING *
            """,
            client.client_id,
            client.tenant_id,
            client.client_class,
            client.secret_hash,
            client.auth_method,
            list(client.grant_types),
            list(client.scopes),
            json.dumps(client.metadata),
        )
        return row
