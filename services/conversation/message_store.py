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
    if row["tool_call"] is not None:
        message.tool_call.ParseFromString(row["tool_call"])
    message.create_time.CopyFrom(timestamp(row["create_time"]))
    return message


def same_content(stored: pb.Message, candidate: pb.Message) -> bool:
    """Whether `candidate` is a retry of `stored` (everything the client chose is equal)."""
    fields = ("role", "author_id", "text", "turn_id", "tool_call")
    return all(getattr(stored, name) == getattr(candidate, name) for name in fields)


@dataclass(frozen=True)
class ConversationState:
    """What the append rules look at, read under the conversation's row lock."""

    status: int
    participants: tuple[str, ...]


Check = Callable[[ConversationState], None]


# The conversation's state and the message already stored under the id, if any (one row, or none
# for an unknown conversation). $1 tenant, $2 conversation, $3 message id.
_READ_STATE = """
SELECT c.status, c.participant_agent_ids, m.*
FROM conversation_conversations c
LEFT JOIN conversation_messages m ON m.conversation_id = c.id AND m.id = $3
WHERE c.tenant_id = $1 AND c.id = $2 AND c.delete_time IS NULL
"""

# One statement, so one transaction: the sequence taken and the row written, only while the
# conversation is as checked ($3 status, $4 participants); a duplicate key rolls back both.
# $1 tenant, $2 conversation, $5.. the message's columns (`_columns`).
_INSERT_IF_UNCHANGED = f"""
WITH taken AS (
    UPDATE conversation_conversations SET last_sequence = last_sequence + 1
    WHERE {LIVE} AND status = $3 AND participant_agent_ids = $4
    RETURNING last_sequence
)
INSERT INTO conversation_messages
    (conversation_id, id, tenant_id, sequence, role, author_id, text, turn_id, tool_call, create_time)
SELECT $2, $5::uuid, $1, taken.last_sequence, $6::smallint, $7::text, $8::text, $9::uuid, $10::bytea,
    clock_timestamp()
FROM taken
RETURNING *
"""


def _columns(message: pb.Message) -> tuple[object, ...]:
    """The message's own columns, in `_INSERT_IF_UNCHANGED`'s order from $5."""
    turn_id = uuid.UUID(message.turn_id) if message.turn_id else None
    tool_call = message.tool_call.SerializeToString() if message.HasField("tool_call") else None
    return uuid.UUID(message.id), message.role, message.author_id, message.text, turn_id, tool_call


class MessageStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def append(
        self, tenant_id: str, message: pb.Message, check: Check
    ) -> tuple[pb.Message, bool] | None:
        """Store `message` and return it with True, or the message already stored under its id with
        False; None if the conversation does not exist (for this tenant). `check` judges the
        conversation's state (status, participants) before a new row is written; it raises to
        refuse. Sequence numbers are taken without gaps.

        Two round trips in the usual case, where a transaction holding the conversation's row lock
        took six (BEGIN, lock, look-up, sequence, insert, COMMIT), twice per agent turn: read the
        state and any message already stored under the id; if none, `check` the state and write
        the row and its sequence in one statement, which takes the row lock itself and writes only
        if the state is still the one checked. Anything else (the state changed in between, or a
        concurrent attempt stored the same id first and the statement rolled back on the key) goes
        the locked way (`_append_locked`), which serialises it against every other append.
        """
        conversation_id = uuid.UUID(message.conversation_id)
        message_id = uuid.UUID(message.id)
        row = await self._pool.fetchrow(_READ_STATE, tenant_id, conversation_id, message_id)
        if row is None:
            return None
        if row["id"] is not None:
            return message_from_row(row), False
        state = ConversationState(row["status"], tuple(str(a) for a in row["participant_agent_ids"]))
        check(state)
        try:
            inserted = await self._pool.fetchrow(
                _INSERT_IF_UNCHANGED,
                tenant_id,
                conversation_id,
                row["status"],
                row["participant_agent_ids"],
                *_columns(message),
            )
        except asyncpg.UniqueViolationError:
            inserted = None  # a concurrent attempt stored it: the whole statement rolled back
        if inserted is not None:
            return message_from_row(inserted), True
        return await self._append_locked(tenant_id, message, check)

    async def _append_locked(
        self, tenant_id: str, message: pb.Message, check: Check
    ) -> tuple[pb.Message, bool] | None:
        """The append under the conversation's row lock (FOR UPDATE for the whole transaction),
        which serialises the appends of one conversation: a retry running at the same time as the
        first attempt sees the first attempt's row, and `check` judges the state the insert
        commits against."""
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
                    (conversation_id, tenant_id, sequence, id, role, author_id, text, turn_id, tool_call,
                     create_time)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, clock_timestamp())
                RETURNING *
                """,
                conversation_id,
                tenant_id,
                sequence,
                *_columns(message),
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
