"""Agent rules: what a new agent must have, and who may see one."""

from __future__ import annotations

import uuid

from macp.conversation.v1 import conversation_service_pb2 as pb

from services.conversation.store import AgentStore
from services.runtime.errors import InvalidArgument, NotFound
from services.runtime.principal import Principal

REQUIRED_ON_CREATE = ("name", "provider", "model")


def new_etag() -> str:
    return uuid.uuid4().hex


def parse_id(value: str, field: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidArgument(f"{field}: must be a UUID") from None


class Agents:
    def __init__(self, store: AgentStore) -> None:
        self._store = store

    async def create(self, principal: Principal, draft: pb.Agent) -> pb.Agent:
        missing = [name for name in REQUIRED_ON_CREATE if not getattr(draft, name)]
        if missing:
            raise InvalidArgument("; ".join(f"agent.{name}: value is required" for name in missing))
        agent = pb.Agent()
        agent.CopyFrom(draft)
        # Output-only fields come from the server and the caller's principal, never from the body.
        agent.id = str(uuid.uuid4())
        agent.tenant_id = principal.tenant_id
        agent.owner_id = principal.user_id
        agent.etag = new_etag()
        agent.ClearField("create_time")
        agent.ClearField("update_time")
        return await self._store.insert(agent)

    async def get(self, principal: Principal, agent_id: str) -> pb.Agent:
        agent = await self._store.get(principal.tenant_id, parse_id(agent_id, "id"))
        if agent is None:
            # Another tenant's agent is reported exactly like a missing one: existence is not revealed.
            raise NotFound(f"agent {agent_id} not found")
        return agent
