"""Postgres persistence of the conversation service. Every query is scoped by tenant."""

from __future__ import annotations

import json
import uuid

import asyncpg
from google.protobuf import json_format
from macp.common.v1 import agent_settings_pb2
from macp.conversation.v1 import conversation_service_pb2 as pb

from services.runtime.protos import timestamp


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
        etag=row["etag"],
    )
    json_format.ParseDict(json.loads(row["generation"]), agent.generation)
    json_format.ParseDict(json.loads(row["bidding"]), agent.bidding)
    agent.create_time.CopyFrom(timestamp(row["create_time"]))
    agent.update_time.CopyFrom(timestamp(row["update_time"]))
    return agent


def _json(message: agent_settings_pb2.GenerationSettings | agent_settings_pb2.BiddingHints) -> str:
    return json.dumps(json_format.MessageToDict(message))


class AgentStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def insert(self, agent: pb.Agent) -> pb.Agent:
        row = await self._pool.fetchrow(
            """
            INSERT INTO conversation_agents
                (id, tenant_id, owner_id, name, provider, model, system_prompt,
                 generation, capabilities, bidding, etag)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9, $10::jsonb, $11)
            RETURNING *
            """,
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
        )
        return _agent_from_row(row)

    async def get(self, tenant_id: str, agent_id: uuid.UUID) -> pb.Agent | None:
        row = await self._pool.fetchrow(
            "SELECT * FROM conversation_agents WHERE tenant_id = $1 AND id = $2 AND delete_time IS NULL",
            tenant_id,
            agent_id,
        )
        return None if row is None else _agent_from_row(row)
