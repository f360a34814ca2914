"""Postgres persistence of messages: appends that are idempotent and gap-free, reads in sequence order."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg
from macp.conversation.v1 import conversation_service_pb2 as pb

from services.conversation.conversation_store import LIVE
from services.runtime.protos import timestamp


def message_from_row(row: asyncpg.Record) -> pb.Message:
    message = pb.Message(
        id=str(row["id"]),
        conversation_id=str(row["conversation_id"]),
        role=row["role"],
        author_id=row["author_id"],
        text=row["text"],
        turn_id=str(row["turn_id"] or ""),
        sequence=row["sequence"],
    )
    message.create_time.CopyFrom(timestamp(row["create_time"]))
    return message


def same_content(stored: pb.Message, candidate: pb.Message) -> bool:
    """Whether `candidate` is a retry of `stored` (everything the client chose is equal)."""
    fields = ("role", "author_id", "text", "turn_id")
    return all(getattr(stored, name) == getattr(candidate, name) for name in fields)


@dataclass(frozen=True)
class ConversationState:
    """What the append rules look at, read under the conversation's row lock."""

    status: int
    participants: tuple[str, ...]


Check = Callable[[ConversationState], None]


class MessageStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def append(
        self, tenant_id: str, message: pb.Message, check: Check
    ) -> tuple[pb.Message, bool] | None:
        """Store `message` and return it with True, or the message already stored under its id with
        False; None if the conversation does not exist (for this tenant).

        The conversation row is locked FOR UPDATE for the whole transaction, which serialises the
        appends of one conversation: a retry running at the same time as the first attempt sees the
        first attempt's row, and the next sequence number is taken without gaps. `check` runs under
        that lock before a new row is written, so the domain's rules (status, author) judge the state
        the insert commits against; it raises to refuse.
        """
        conversation_id = uuid.UUID(message.conversation_id)
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT status, participant_agent_ids FROM conversation_conversations"
                f" WHERE {LIVE} FOR UPDATE",
                tenant_id,
                conversation_id,
            )
            if row is None:
                return None
            stored = await conn.fetchrow(
                "SELECT * FROM conversation_messages WHERE conversation_id = $1 AND id = $2",
                conversation_id,
                uuid.UUID(message.id),
            )
            if stored is not None:
                return message_from_row(stored), False
            check(ConversationState(row["status"], tuple(str(a) for a in row["participant_agent_ids"])))
            sequence = await conn.fetchval(
                "UPDATE conversation_conversations SET last_sequence = last_sequence + 1"
                " WHERE id = $1 RETURNING last_sequence",
                conversation_id,
            )
            inserted = await conn.fetchrow(
                """
                INSERT INTO conversation_messages
                    (conversation_id, id, tenant_id, sequence, role, author_id, text, turn_id, create_time)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, clock_timestamp())
                RETURNING *
                """,
                conversation_id,
                uuid.UUID(message.id),
                tenant_id,
                sequence,
                message.role,
                message.author_id,
                message.text,
                uuid.UUID(message.turn_id) if message.turn_id else None,
            )
        return message_from_row(inserted), True

    async def list_newest(
        self, tenant_id: str, conversation_id: uuid.UUID, before_sequence: int, limit: int
    ) -> list[pb.Message]:
        """The messages before `before_sequence`, newest first (the same index, read backwards)."""
        rows = await self._pool.fetch(
            """
            SELECT * FROM conversation_messages
            WHERE tenant_id = $1 AND conversation_id = $2 AND sequence < $3
            ORDER BY sequence DESC
            LIMIT $4
            """,
            tenant_id,
            conversation_id,
            before_sequence,
            limit,
        )
        return [message_from_row(row) for row in rows]

    async def list(
        self, tenant_id: str, conversation_id: uuid.UUID, after_sequence: int, limit: int
    ) -> list[pb.Message]:
        rows = await self._pool.fetch(
            """
            SELECT * FROM conversation_messages
            WHERE tenant_id = $1 AND conversation_id = $2 AND sequence > $3
            ORDER BY sequence
            LIMIT $4
            """,
            tenant_id,
            conversation_id,
            after_sequence,
            limit,
        )
        return [message_from_row(row) for row in rows]
