"""Postgres persistence of tool servers. Every query is scoped by tenant; each write writes its
audit row in the same statement or transaction (services/runtime/audit.py)."""

from __future__ import annotations

import uuid

import asyncpg
from macp.tool_gateway.v1 import tool_gateway_service_pb2 as pb

from services.runtime import audit
from services.runtime.audit import AuditEvent
from services.runtime.paging import TimeKey
from services.runtime.protos import timestamp


def _server_from_row(row: asyncpg.Record) -> pb.ToolServer:
    server = pb.ToolServer(
        id=str(row["id"]),
        tenant_id=row["tenant_id"],
        name=row["name"],
        url=row["url"],
        version_label=row["version_label"],
        auth=row["auth"],
        etag=row["etag"],
    )
    server.create_time.CopyFrom(timestamp(row["create_time"]))
    return server


class ServerStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def insert(self, server: pb.ToolServer, audited: AuditEvent) -> pb.ToolServer | None:
        """The stored server; None when the tenant already has a server of that name."""
        sql, args = audit.with_audit(
            """
            INSERT INTO tool_gateway_servers
                (id, tenant_id, name, url, version_label, auth, etag, create_time)
            VALUES ($1, $2, $3, $4, $5, $6, $7, clock_timestamp())
            ON CONFLICT (tenant_id, name) DO NOTHING
            RETURNING *
            """,
            [
                uuid.UUID(server.id),
                server.tenant_id,
                server.name,
                server.url,
                server.version_label,
                server.auth,
                server.etag,
            ],
            audited,
        )
        row = await self._pool.fetchrow(sql, *args)
        return None if row is None else _server_from_row(row)

    async def get(self, tenant_id: str, server_id: uuid.UUID) -> pb.ToolServer | None:
        row = await self._pool.fetchrow(
            "SELECT * FROM tool_gateway_servers WHERE tenant_id = $1 AND id = $2", tenant_id, server_id
        )
        return None if row is None else _server_from_row(row)

    async def page(self, tenant_id: str, after: TimeKey | None, limit: int) -> list[pb.ToolServer]:
        """Up to `limit` servers after `after` in (create_time, id) order."""
        rows = await self._pool.fetch(
            """
            SELECT * FROM tool_gateway_servers
            WHERE tenant_id = $1 AND ($2::timestamptz IS NULL OR (create_time, id) > ($2, $3))
            ORDER BY create_time, id
            LIMIT $4
            """,
            tenant_id,
            None if after is None else after.time,
            None if after is None else after.id,
            limit,
        )
        return [_server_from_row(row) for row in rows]

    async def by_name(self, tenant_id: str, name: str) -> pb.ToolServer | None:
        row = await self._pool.fetchrow(
            "SELECT * FROM tool_gateway_servers WHERE tenant_id = $1 AND name = $2", tenant_id, name
        )
        return None if row is None else _server_from_row(row)

    async def all_of(self, tenant_id: str, limit: int) -> list[pb.ToolServer]:
        """The tenant's servers (at most `limit`), by name: the catalogue's sources."""
        rows = await self._pool.fetch(
            "SELECT * FROM tool_gateway_servers WHERE tenant_id = $1 ORDER BY name LIMIT $2", tenant_id, limit
        )
        return [_server_from_row(row) for row in rows]

    async def delete(self, tenant_id: str, server_id: uuid.UUID, etag: str, audited: AuditEvent) -> str:
        """ "deleted", "missing", or "stale" (the etag, if given, no longer matches)."""
        async with self._pool.acquire() as conn, conn.transaction():
            current = await conn.fetchval(
                "SELECT etag FROM tool_gateway_servers WHERE tenant_id = $1 AND id = $2 FOR UPDATE",
                tenant_id,
                server_id,
            )
            if current is None:
                return "missing"
            if etag and etag != current:
                return "stale"
            await conn.execute(
                "DELETE FROM tool_gateway_servers WHERE tenant_id = $1 AND id = $2", tenant_id, server_id
            )
            await audit.record(conn, audited)
            return "deleted"
