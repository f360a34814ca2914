"""Postgres persistence of archives: the record of each transcript written to S3.

An archive is taken inside one transaction that locks the conversation row FOR UPDATE (the lock
appends take too), so the transcript holds exactly the messages stored when it was taken and, with
`close`, no message can slip in between the transcript and the status change. The S3 upload runs
inside that transaction: if it fails nothing is recorded; if the process dies after the upload and
before the commit, an object without a record is left behind (harmless: nothing points to it, and
a retry writes a new archive under a new id). Its audit row is inserted in the same transaction.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
from macp.conversation.v1 import conversation_service_pb2 as pb

from services.conversation.conversation_store import ACTIVE, ARCHIVED, LIVE, conversation_from_row
from services.conversation.message_store import message_from_row
from services.runtime import audit
from services.runtime.audit import AuditEvent
from services.runtime.paging import TimeKey
from services.runtime.protos import timestamp


def archive_from_row(row: asyncpg.Record) -> pb.Archive:
    archive = pb.Archive(
        id=str(row["id"]),
        conversation_id=str(row["conversation_id"]),
        tenant_id=row["tenant_id"],
        bucket=row["bucket"],
        object_key=row["object_key"],
        content_type=row["content_type"],
        size_bytes=row["size_bytes"],
        message_count=row["message_count"],
        last_sequence=row["last_sequence"],
        sha256=row["sha256"],
    )
    archive.create_time.CopyFrom(timestamp(row["create_time"]))
    return archive


@dataclass(frozen=True)
class ArchiveRequest:
    tenant_id: str
    conversation_id: uuid.UUID
    etag: str  # empty: no etag check
    close: bool
    new_etag: str


# Writes the transcript of these messages to S3 and returns the archive record (without its times).
WriteTranscript = Callable[[pb.Conversation, list[pb.Message]], Awaitable[pb.Archive]]


@dataclass(frozen=True)
class ArchiveOutcome:
    """None fields mean: no such conversation; `etag_matched` False: the etag was stale."""

    conversation: pb.Conversation | None
    archive: pb.Archive | None = None
    etag_matched: bool = True


class ArchiveStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def archive(
        self, request: ArchiveRequest, write: WriteTranscript, audited: AuditEvent
    ) -> ArchiveOutcome:
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"SELECT * FROM conversation_conversations WHERE {LIVE} FOR UPDATE",
                request.tenant_id,
                request.conversation_id,
            )
            if row is None:
                return ArchiveOutcome(conversation=None)
            current = conversation_from_row(row)
            if request.etag and request.etag != current.etag:
                return ArchiveOutcome(conversation=current, etag_matched=False)
            rows = await conn.fetch(
                "SELECT * FROM conversation_messages WHERE conversation_id = $1 ORDER BY sequence",
                request.conversation_id,
            )
            archive = await write(current, [message_from_row(message) for message in rows])
            stored = await conn.fetchrow(
                """
                INSERT INTO conversation_archives
                    (id, tenant_id, conversation_id, bucket, object_key, content_type, size_bytes,
                     message_count, last_sequence, sha256, create_time)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, clock_timestamp())
                RETURNING *
                """,
                uuid.UUID(archive.id),
                request.tenant_id,
                request.conversation_id,
                archive.bucket,
                archive.object_key,
                archive.content_type,
                archive.size_bytes,
                archive.message_count,
                archive.last_sequence,
                archive.sha256,
            )
            closing = request.close and current.status == ACTIVE
            updated = await conn.fetchrow(
                """
                UPDATE conversation_conversations
                SET archive_key = $2, etag = $3, update_time = clock_timestamp(),
                    status = CASE WHEN $4 THEN $5 ELSE status END,
                    archive_time = CASE WHEN $4 THEN clock_timestamp() ELSE archive_time END
                WHERE id = $1
                RETURNING *
                """,
                request.conversation_id,
                archive.object_key,
                request.new_etag,
                closing,
                ARCHIVED,
            )
            detail = {
                "archive_id": archive.id,
                "object_key": archive.object_key,
                "closed": str(closing).lower(),
            }
            await audit.record(conn, dataclasses.replace(audited, detail={**audited.detail, **detail}))
        return ArchiveOutcome(conversation=conversation_from_row(updated), archive=archive_from_row(stored))

    async def list(
        self, tenant_id: str, conversation_id: uuid.UUID, after: TimeKey | None, limit: int
    ) -> list[pb.Archive]:
        rows = await self._pool.fetch(
            """
            SELECT * FROM conversation_archives
            WHERE tenant_id = $1 AND conversation_id = $2
              AND ($3::timestamptz IS NULL OR (create_time, id) > ($3, $4))
            ORDER BY create_time, id
            LIMIT $5
            """,
            tenant_id,
            conversation_id,
            None if after is None else after.time,
            None if after is None else after.id,
            limit,
        )
        return [archive_from_row(row) for row in rows]

    async def get(self, tenant_id: str, archive_id: uuid.UUID) -> pb.Archive | None:
        """The archive, if its conversation is a live one of the tenant (a deleted conversation's
        archives stay in S3 but are no longer served)."""
        row = await self._pool.fetchrow(
            """
            SELECT a.* FROM conversation_archives a
            JOIN conversation_conversations c ON c.id = a.conversation_id
            WHERE a.tenant_id = $1 AND a.id = $2 AND c.tenant_id = $1 AND c.delete_time IS NULL
            """,
            tenant_id,
            archive_id,
        )
        return None if row is None else archive_from_row(row)
