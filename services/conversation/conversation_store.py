"""Postgres persistence of conversations. Every query is scoped by tenant and skips soft-deleted rows.

Writes that depend on agents run in one transaction that locks the named agents FOR SHARE, the
counterpart of DeleteAgent's FOR UPDATE (see `AgentStore.delete`): a conversation can never end up
listing an agent deleted at the same moment. Each write writes its audit row only if the write
happened, in its transaction or its one statement (services/runtime/audit.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import asyncpg
from macp.conversation.v1 import conversation_service_pb2 as pb

from services.runtime import audit
from services.runtime.audit import AuditEvent
from services.runtime.paging import TimeKey
from services.runtime.protos import timestamp

ACTIVE = pb.CONVERSATION_STATUS_ACTIVE
ARCHIVED = pb.CONVERSATION_STATUS_ARCHIVED
LIVE = "tenant_id = $1 AND id = $2 AND delete_time IS NULL"


def conversation_from_row(row: asyncpg.Record) -> pb.Conversation:
    conversation = pb.Conversation(
        id=str(row["id"]),
        tenant_id=row["tenant_id"],
        owner_id=row["owner_id"],
        title=row["title"],
        participant_agent_ids=[str(agent_id) for agent_id in row["participant_agent_ids"]],
        turn_policy=row["turn_policy"],
        coordinator_agent_id=str(row["coordinator_agent_id"] or ""),
        limits=pb.ConversationLimits(
            max_agent_turns_per_user_message=row["max_agent_turns"],
            max_tool_calls_per_turn=row["max_tool_calls"],
        ),
        double_texting_policy=row["double_texting_policy"],
        status=row["status"],
        etag=row["etag"],
        archive_key=row["archive_key"],
        speak_answers=row["speak_answers"],
    )
    conversation.create_time.CopyFrom(timestamp(row["create_time"]))
    conversation.update_time.CopyFrom(timestamp(row["update_time"]))
    if row["archive_time"] is not None:
        conversation.archive_time.CopyFrom(timestamp(row["archive_time"]))
    return conversation


def _columns(conversation: pb.Conversation) -> tuple[object, ...]:
    """The mutable columns, in the order of the INSERT's and UPDATE's $3.. parameters."""
    return (
        conversation.title,
        [uuid.UUID(agent_id) for agent_id in conversation.participant_agent_ids],
        conversation.turn_policy,
        uuid.UUID(conversation.coordinator_agent_id) if conversation.coordinator_agent_id else None,
        conversation.limits.max_agent_turns_per_user_message,
        conversation.double_texting_policy,
        conversation.etag,
        conversation.limits.max_tool_calls_per_turn,
    )


async def missing_agents(conn: asyncpg.Connection, tenant_id: str, agent_ids: Sequence[str]) -> list[str]:
    """Which of `agent_ids` are not live agents of the tenant; the others stay locked FOR SHARE
    until the transaction ends."""
    rows = await conn.fetch(
        "SELECT id FROM conversation_agents"
        " WHERE tenant_id = $1 AND id = ANY($2::uuid[]) AND delete_time IS NULL FOR SHARE",
        tenant_id,
        [uuid.UUID(agent_id) for agent_id in agent_ids],
    )
    found = {str(row["id"]) for row in rows}
    return [agent_id for agent_id in agent_ids if agent_id not in found]


class MissingAgents(Exception):
    """Some participants are not agents of the tenant (the domain words the error)."""

    def __init__(self, agent_ids: list[str]) -> None:
        super().__init__(", ".join(agent_ids))
        self.agent_ids = agent_ids


class ConversationStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def insert(self, conversation: pb.Conversation, audited: AuditEvent) -> pb.Conversation:
        """Store a new conversation; MissingAgents if a participant is not a live agent of its tenant."""
        async with self._pool.acquire() as conn, conn.transaction():
            missing = await missing_agents(conn, conversation.tenant_id, conversation.participant_agent_ids)
            if missing:
                raise MissingAgents(missing)
            row = await conn.fetchrow(
                """
                INSERT INTO conversation_conversations
                    (id, tenant_id, owner_id, title, participant_agent_ids, turn_policy,
                     coordinator_agent_id, max_agent_turns, double_texting_policy, etag, max_tool_calls,
                     status, speak_answers, create_time, update_time)
                VALUES ($1, $2, $11, $3, $4, $5, $6, $7, $8, $9, $10, $12, $13,
                        clock_timestamp(), clock_timestamp())
                RETURNING *
                """,
                uuid.UUID(conversation.id),
                conversation.tenant_id,
                *_columns(conversation),
                conversation.owner_id,
                ACTIVE,
                conversation.speak_answers,
            )
            await audit.record(conn, audited)
        return conversation_from_row(row)

    async def get(self, tenant_id: str, conversation_id: uuid.UUID) -> pb.Conversation | None:
        row = await self._pool.fetchrow(
            f"SELECT * FROM conversation_conversations WHERE {LIVE}", tenant_id, conversation_id
        )
        return None if row is None else conversation_from_row(row)

    async def list(
        self, tenant_id: str, after: TimeKey | None, limit: int, status: int, agent_id: uuid.UUID | None
    ) -> list[pb.Conversation]:
        rows = await self._pool.fetch(
            """
            SELECT * FROM conversation_conversations
            WHERE tenant_id = $1 AND delete_time IS NULL
              AND ($2::timestamptz IS NULL OR (create_time, id) > ($2, $3))
              AND ($4 = 0 OR status = $4)
              AND ($5::uuid IS NULL OR participant_agent_ids @> ARRAY[$5::uuid])
            ORDER BY create_time, id
            LIMIT $6
            """,
            tenant_id,
            None if after is None else after.time,
            None if after is None else after.id,
            status,
            agent_id,
            limit,
        )
        return [conversation_from_row(row) for row in rows]

    async def update(
        self, conversation: pb.Conversation, expected_etag: str, check_agents: bool, audited: AuditEvent
    ) -> pb.Conversation | None:
        """Write the mutable fields if the row still has `expected_etag` and is ACTIVE; None if not.
        With `check_agents`, MissingAgents if a participant is not a live agent of the tenant."""
        async with self._pool.acquire() as conn, conn.transaction():
            if check_agents:
                missing = await missing_agents(
                    conn, conversation.tenant_id, conversation.participant_agent_ids
                )
                if missing:
                    raise MissingAgents(missing)
            row = await conn.fetchrow(
                f"""
                UPDATE conversation_conversations
                SET title = $3, participant_agent_ids = $4, turn_policy = $5, coordinator_agent_id = $6,
                    max_agent_turns = $7, double_texting_policy = $8, etag = $9, max_tool_calls = $10,
                    speak_answers = $13, update_time = clock_timestamp()
                WHERE {LIVE} AND etag = $11 AND status = $12
                RETURNING *
                """,
                conversation.tenant_id,
                uuid.UUID(conversation.id),
                *_columns(conversation),
                expected_etag,
                ACTIVE,
                conversation.speak_answers,
            )
            if row is not None:
                await audit.record(conn, audited)
        return None if row is None else conversation_from_row(row)

    async def delete(
        self, tenant_id: str, conversation_id: uuid.UUID, etag: str, audited: AuditEvent
    ) -> bool | None:
        """Soft-delete: True if deleted, None if there is no such conversation, False if `etag` is stale."""
        sql, args = audit.with_audit(
            f"""
            UPDATE conversation_conversations SET delete_time = clock_timestamp()
            WHERE {LIVE} AND ($3 = '' OR etag = $3)
            RETURNING id
            """,
            [tenant_id, conversation_id, etag],
            audited,
        )
        row = await self._pool.fetchrow(sql, *args)
        if row is not None:
            return True
        return None if await self.get(tenant_id, conversation_id) is None else False
