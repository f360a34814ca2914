"""Postgres persistence of agents. Every query is scoped by tenant and skips soft-deleted rows.

Each write takes its audit row and writes it only if the write happened, atomically with it: in the
same statement (`audit.with_audit`) or, for a delete, in its transaction (services/runtime/audit.py).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

import asyncpg
from google.protobuf import json_format
from macp.common.v1 import agent_settings_pb2, audio_pb2
from macp.conversation.v1 import conversation_service_pb2 as pb

from services.runtime import audit
from services.runtime.audit import AuditEvent
from services.runtime.paging import TimeKey
from services.runtime.protos import timestamp

ACTIVE = pb.CONVERSATION_STATUS_ACTIVE


def _agent_from_row(row: asyncpg.Record) -> pb.Agent:
    agent = pb.Agent(
        id=str(row["id"]),
        tenant_id=row["tenant_id"],
        owner_id=row["owner_id"],
        name=row["name"],
        provider=row["provider"],
        model=row["model"],
        system_prompt=row["system_prompt"],
        capabilities=list(row["capabilities"]),
        allowed_tools=list(row["allowed_tools"]),
        etag=row["etag"],
    )
    json_format.ParseDict(json.loads(row["generation"]), agent.generation)
    json_format.ParseDict(json.loads(row["bidding"]), agent.bidding)
    json_format.ParseDict(json.loads(row["voice"]), agent.voice)
    if row["remote"] is not None:
        json_format.ParseDict(json.loads(row["remote"]), agent.remote)
    agent.create_time.CopyFrom(timestamp(row["create_time"]))
    agent.update_time.CopyFrom(timestamp(row["update_time"]))
    return agent


# The groups of an agent's settings stored as their proto JSON, a column each.
AgentSettings = (
    agent_settings_pb2.GenerationSettings | agent_settings_pb2.BiddingHints | audio_pb2.VoiceSettings
)


def _json(message: AgentSettings) -> str:
    return json.dumps(json_format.MessageToDict(message))


def _remote(agent: pb.Agent) -> str | None:
    """The agent's remote as stored: its proto JSON (the client secret already taken out), or NULL."""
    if not agent.HasField("remote"):
        return None
    return json.dumps(json_format.MessageToDict(agent.remote))


@dataclass(frozen=True)
class DeleteOutcome:
    """What a delete found: nothing to delete, a stale etag, a conversation still using the agent, or done."""

    found: bool
    etag_matched: bool = True
    active_conversation: uuid.UUID | None = None

    @property
    def deleted(self) -> bool:
        return self.found and self.etag_matched and self.active_conversation is None


class AgentStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def insert(self, agent: pb.Agent, sealed_secret: bytes | None, audited: AuditEvent) -> pb.Agent:
        """Insert `agent` (its remote's client secret already taken out) with `sealed_secret`."""
        sql, args = audit.with_audit(
            """
            INSERT INTO conversation_agents
                (id, tenant_id, owner_id, name, provider, model, system_prompt,
                 generation, capabilities, bidding, etag, allowed_tools, remote, sealed_remote_secret,
                 voice, create_time, update_time)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9, $10::jsonb, $11, $12, $13::jsonb, $14,
                    $15::jsonb, clock_timestamp(), clock_timestamp())
            RETURNING *
            """,
            [
                uuid.UUID(agent.id),
                agent.tenant_id,
                agent.owner_id,
                agent.name,
                agent.provider,
                agent.model,
                agent.system_prompt,
                _json(agent.generation),
                list(agent.capabilities),
                _json(agent.bidding),
                agent.etag,
                list(agent.allowed_tools),
                _remote(agent),
                sealed_secret,
                _json(agent.voice),
            ],
            audited,
        )
        return _agent_from_row(await self._pool.fetchrow(sql, *args))

    async def get(self, tenant_id: str, agent_id: uuid.UUID) -> pb.Agent | None:
        row = await self._pool.fetchrow(
            "SELECT * FROM conversation_agents WHERE tenant_id = $1 AND id = $2 AND delete_time IS NULL",
            tenant_id,
            agent_id,
        )
        return None if row is None else _agent_from_row(row)

    async def list(
        self, tenant_id: str, after: TimeKey | None, limit: int, capability: str
    ) -> list[pb.Agent]:
        """Up to `limit` agents after `after` in (create_time, id) order."""
        rows = await self._pool.fetch(
            """
            SELECT * FROM conversation_agents
            WHERE tenant_id = $1 AND delete_time IS NULL
              AND ($2::timestamptz IS NULL OR (create_time, id) > ($2, $3))
              AND ($4 = '' OR capabilities @> ARRAY[$4])
            ORDER BY create_time, id
            LIMIT $5
            """,
            tenant_id,
            None if after is None else after.time,
            None if after is None else after.id,
            capability,
            limit,
        )
        return [_agent_from_row(row) for row in rows]

    async def sealed_secret(self, tenant_id: str, agent_id: uuid.UUID) -> bytes | None:
        """The sealed client secret of the agent's remote, if it keeps one."""
        sealed: bytes | None = await self._pool.fetchval(
            "SELECT sealed_remote_secret FROM conversation_agents"
            " WHERE tenant_id = $1 AND id = $2 AND delete_time IS NULL",
            tenant_id,
            agent_id,
        )
        return sealed

    async def update(
        self, agent: pb.Agent, sealed_secret: bytes | None, expected_etag: str, audited: AuditEvent
    ) -> pb.Agent | None:
        """Write every mutable field of `agent` (and `sealed_secret`) if its row still has
        `expected_etag`; None if it does
        not (changed meanwhile, or gone). The etag test is in the UPDATE itself, so of two writers
        holding the same etag exactly one matches: the other's WHERE is re-checked against the new row.
        Audited only when it wrote."""
        sql, args = audit.with_audit(
            """
            UPDATE conversation_agents
            SET name = $4, provider = $5, model = $6, system_prompt = $7, generation = $8::jsonb,
                capabilities = $9, bidding = $10::jsonb, etag = $11, allowed_tools = $12,
                remote = $13::jsonb, sealed_remote_secret = $14, voice = $15::jsonb,
                update_time = clock_timestamp()
            WHERE tenant_id = $1 AND id = $2 AND etag = $3 AND delete_time IS NULL
            RETURNING *
            """,
            [
                agent.tenant_id,
                uuid.UUID(agent.id),
                expected_etag,
                agent.name,
                agent.provider,
                agent.model,
                agent.system_prompt,
                _json(agent.generation),
                list(agent.capabilities),
                _json(agent.bidding),
                agent.etag,
                list(agent.allowed_tools),
                _remote(agent),
                sealed_secret,
                _json(agent.voice),
            ],
            audited,
        )
        row = await self._pool.fetchrow(sql, *args)
        return None if row is None else _agent_from_row(row)

    async def delete(
        self, tenant_id: str, agent_id: uuid.UUID, etag: str, audited: AuditEvent
    ) -> DeleteOutcome:
        """Soft-delete the agent unless an active conversation lists it (or `etag`, if set, is stale).

        The agent row is locked first: CreateConversation locks the agents it names FOR SHARE, so a
        conversation created concurrently either commits before this check sees it, or waits and
        then finds the agent deleted."""
        async with self._pool.acquire() as conn, conn.transaction():
            current = await conn.fetchval(
                "SELECT etag FROM conversation_agents"
                " WHERE tenant_id = $1 AND id = $2 AND delete_time IS NULL FOR UPDATE",
                tenant_id,
                agent_id,
            )
            if current is None:
                return DeleteOutcome(found=False)
            if etag and etag != current:
                return DeleteOutcome(found=True, etag_matched=False)
            in_use = await conn.fetchval(
                """
                SELECT id FROM conversation_conversations
                WHERE tenant_id = $1 AND status = $2 AND delete_time IS NULL
                  AND participant_agent_ids @> ARRAY[$3::uuid]
                ORDER BY create_time, id LIMIT 1
                """,
                tenant_id,
                ACTIVE,
                agent_id,
            )
            if in_use is not None:
                return DeleteOutcome(found=True, active_conversation=in_use)
            await conn.execute(
                "UPDATE conversation_agents SET delete_time = clock_timestamp() WHERE id = $1", agent_id
            )
            await audit.record(conn, audited)
        return DeleteOutcome(found=True)
