"""Postgres persistence of tool servers. Every query is scoped by tenant; each write writes its
audit row in the same statement or transaction (services/runtime/audit.py).

Platform-wide servers are the rows of tenant '' (PLATFORM): every read of a tenant takes
`tenant_id IN ($1, '')`, so it sees its own rows and the platform's and never another tenant's,
and a tenant's own server of a name comes before the platform's of that name (`by_name`,
`all_of`). A server's sealed secret (upstream_secrets.py) is read only by `sealed_secret` and
`sealed_secrets`, never into a `ToolServer`.
"""

from __future__ import annotations

import uuid

import asyncpg
from macp.tool_gateway.v1 import tool_gateway_service_pb2 as pb

from services.runtime import audit
from services.runtime.audit import AuditEvent
from services.runtime.paging import TimeKey
from services.runtime.protos import timestamp

# The tenant of platform-wide servers: no tenant's id is empty.
PLATFORM = ""
# The columns a `ToolServer` is read from (never the sealed secret).
_COLUMNS = """id, tenant_id, name, url, version_label, auth, etag, create_time, credential_header,
    oauth_token_url, oauth_client_id, oauth_scope, oauth_resource"""


def _server_from_row(row: asyncpg.Record) -> pb.ToolServer:
    server = pb.ToolServer(
        id=str(row["id"]),
        tenant_id=row["tenant_id"],
        name=row["name"],
        url=row["url"],
        version_label=row["version_label"],
        auth=row["auth"],
        etag=row["etag"],
        platform=row["tenant_id"] == PLATFORM,
    )
    server.create_time.CopyFrom(timestamp(row["create_time"]))
    if row["auth"] == pb.UPSTREAM_AUTH_STATIC:
        server.static_credential.header = row["credential_header"]
    if row["auth"] == pb.UPSTREAM_AUTH_CLIENT_CREDENTIALS:
        server.client_credentials.CopyFrom(
            pb.OAuthClientCredentials(
                token_url=row["oauth_token_url"],
                client_id=row["oauth_client_id"],
                scope=row["oauth_scope"],
                resource=row["oauth_resource"],
            )
        )
    return server


class ServerStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def insert(
        self, server: pb.ToolServer, sealed_secret: bytes | None, audited: AuditEvent
    ) -> pb.ToolServer | None:
        """The stored server; None when its tenant (or the platform) already has one of that name.
        `server.tenant_id` is PLATFORM for a platform-wide server."""
        oauth = server.client_credentials
        sql, args = audit.with_audit(
            f"""
            INSERT INTO tool_gateway_servers
                (id, tenant_id, name, url, version_label, auth, etag, create_time, credential_header,
                 oauth_token_url, oauth_client_id, oauth_scope, oauth_resource, sealed_secret)
            VALUES ($1, $2, $3, $4, $5, $6, $7, clock_timestamp(), $8, $9, $10, $11, $12, $13)
            ON CONFLICT (tenant_id, name) DO NOTHING
            RETURNING {_COLUMNS}
            """,
            # $8: a STATIC server's header; $9-$12: a CLIENT_CREDENTIALS server's grant (else '');
            # $13: the sealed header value or client secret, NULL for the other modes.
            [
                uuid.UUID(server.id),
                server.tenant_id,
                server.name,
                server.url,
                server.version_label,
                server.auth,
                server.etag,
                server.static_credential.header,
                oauth.token_url,
                oauth.client_id,
                oauth.scope,
                oauth.resource,
                sealed_secret,
            ],
            audited,
        )
        row = await self._pool.fetchrow(sql, *args)
        return None if row is None else _server_from_row(row)

    async def get(self, tenant_id: str, server_id: uuid.UUID) -> pb.ToolServer | None:
        row = await self._pool.fetchrow(
            f"SELECT {_COLUMNS} FROM tool_gateway_servers WHERE tenant_id IN ($1, '') AND id = $2",
            tenant_id,
            server_id,
        )
        return None if row is None else _server_from_row(row)

    async def page(self, tenant_id: str, after: TimeKey | None, limit: int) -> list[pb.ToolServer]:
        """Up to `limit` servers (the tenant's and the platform's) after `after` in (create_time, id)
        order."""
        rows = await self._pool.fetch(
            f"""
            SELECT {_COLUMNS} FROM tool_gateway_servers
            WHERE tenant_id IN ($1, '') AND ($2::timestamptz IS NULL OR (create_time, id) > ($2, $3))
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
        """The server `name` resolves to in the tenant: its own, else the platform's."""
        row = await self._pool.fetchrow(
            f"""
            SELECT {_COLUMNS} FROM tool_gateway_servers
            WHERE tenant_id IN ($1, '') AND name = $2
            ORDER BY tenant_id = '' LIMIT 1
            """,
            tenant_id,
            name,
        )
        return None if row is None else _server_from_row(row)

    async def all_of(self, tenant_id: str, limit: int) -> list[pb.ToolServer]:
        """The servers of the tenant's catalogue (at most `limit`), by name: its own, and the
        platform's that none of its own shadows."""
        rows = await self._pool.fetch(
            f"""
            SELECT * FROM (
                SELECT DISTINCT ON (name) {_COLUMNS} FROM tool_gateway_servers
                WHERE tenant_id IN ($1, '')
                ORDER BY name, tenant_id = ''
            ) AS visible
            ORDER BY name LIMIT $2
            """,
            tenant_id,
            limit,
        )
        return [_server_from_row(row) for row in rows]

    async def sealed_secret(self, tenant_id: str, server_id: uuid.UUID) -> bytes | None:
        """The sealed secret of the server of `tenant_id` (PLATFORM for a platform server)."""
        sealed: bytes | None = await self._pool.fetchval(
            "SELECT sealed_secret FROM tool_gateway_servers WHERE tenant_id = $1 AND id = $2",
            tenant_id,
            server_id,
        )
        return sealed

    async def sealed_secrets(self) -> list[tuple[str, str, pb.UpstreamAuth.ValueType, bytes]]:
        """(id, name, auth, sealed secret) of every server keeping one, of every tenant: only for
        the check at start that the sealing key opens them (upstream_secrets.py)."""
        rows = await self._pool.fetch(
            "SELECT id, name, auth, sealed_secret FROM tool_gateway_servers "
            "WHERE sealed_secret IS NOT NULL ORDER BY create_time, id"
        )
        return [(str(row["id"]), row["name"], row["auth"], row["sealed_secret"]) for row in rows]

    async def delete(
        self, tenant_id: str, server_id: uuid.UUID, etag: str, audited: AuditEvent, *, operator: bool
    ) -> str:
        """ "deleted", "missing", "stale" (the etag, if given, no longer matches), or "platform" (a
        platform server, which only an `operator` deletes)."""
        async with self._pool.acquire() as conn, conn.transaction():
            current = await conn.fetchrow(
                "SELECT tenant_id, etag FROM tool_gateway_servers "
                "WHERE tenant_id IN ($1, '') AND id = $2 FOR UPDATE",
                tenant_id,
                server_id,
            )
            if current is None:
                return "missing"
            if current["tenant_id"] == PLATFORM and not operator:
                return "platform"
            if etag and etag != current["etag"]:
                return "stale"
            await conn.execute(
                "DELETE FROM tool_gateway_servers WHERE tenant_id = $1 AND id = $2",
                current["tenant_id"],
                server_id,
            )
            await audit.record(conn, audited)
            return "deleted"
