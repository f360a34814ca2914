"""Agent rules: what a new agent must have, who may see one, how it changes and when it may go."""

from __future__ import annotations

import uuid

from google.protobuf.field_mask_pb2 import FieldMask
from macp.conversation.v1 import conversation_service_pb2 as pb

from services.conversation.agent_remotes import A2A, AgentRemotes
from services.conversation.agent_store import AgentStore
from services.conversation.cache import ResourceCache
from services.conversation.fields import merged
from services.runtime import audit
from services.runtime.audit import AuditEvent, Who
from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound, StaleEtag
from services.runtime.ids import new_etag, parse_id
from services.runtime.paging import decode_page_token, filter_digest, page_size, time_key, time_page
from services.runtime.principal import Principal

REQUIRED_ON_CREATE = ("name", "provider", "model")


def not_found(agent_id: str) -> NotFound:
    # Another tenant's agent is reported exactly like a missing one: existence is not revealed.
    return NotFound(f"agent {agent_id} not found")


def _audited(principal: Principal, action: str, agent_id: str, **detail: str) -> AuditEvent:
    return AuditEvent(Who.of(principal), action, f"agent/{agent_id}", detail=detail)


def stale_etag(agent_id: str) -> StaleEtag:
    return StaleEtag(f"agent {agent_id} changed since it was read (etag mismatch); read it again")


class Agents:
    def __init__(self, store: AgentStore, cache: ResourceCache, remotes: AgentRemotes) -> None:
        self._store = store
        self._cache = cache
        self._remotes = remotes

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
        sealed = self._remotes.take_secret(agent, kept=None)
        return await self._store.insert(
            agent, sealed, _audited(principal, audit.AGENT_CREATE, agent.id, name=agent.name)
        )

    async def get(self, principal: Principal, agent_id: str) -> pb.Agent:
        key = parse_id(agent_id, "id")
        agent = await self._cache.get(
            principal.tenant_id,
            str(key),
            pb.Agent.FromString,
            lambda: self._store.get(principal.tenant_id, key),
        )
        if agent is None:
            raise not_found(agent_id)
        return agent

    async def remote(self, principal: Principal, agent_id: str) -> tuple[pb.Agent, bytes]:
        """An `a2a` agent and its remote's sealed client secret (empty when it keeps none), for the
        agent proxy that calls the remote; read from the store, not the cache, so never stale."""
        key = parse_id(agent_id, "id")
        agent = await self._store.get(principal.tenant_id, key)
        if agent is None:
            raise not_found(agent_id)
        if agent.provider != A2A:
            raise FailedPrecondition(
                f"agent {agent_id} is of provider {agent.provider}, not a2a: it has no remote"
            )
        return agent, await self._store.sealed_secret(principal.tenant_id, key) or b""

    async def list(self, principal: Principal, request: pb.ListAgentsRequest) -> pb.ListAgentsResponse:
        digest = filter_digest("agents", principal.tenant_id, request.capability)
        after = time_key(decode_page_token(request.page_token, digest))
        size = page_size(request.page_size)
        found = await self._store.list(principal.tenant_id, after, size + 1, request.capability)
        agents, next_page_token = time_page(found, size, digest)
        return pb.ListAgentsResponse(agents=agents, next_page_token=next_page_token)

    async def update(self, principal: Principal, changes: pb.Agent, mask: FieldMask) -> pb.Agent:
        key = parse_id(changes.id, "agent.id")
        current = await self._store.get(principal.tenant_id, key)
        if current is None:
            raise not_found(changes.id)
        if current.etag != changes.etag:
            raise stale_etag(changes.id)
        agent = merged(current, changes, mask)
        agent.etag = new_etag()
        # A client secret is given only when it changes: without one, the stored one stays.
        sealed = self._remotes.take_secret(
            agent, kept=await self._store.sealed_secret(principal.tenant_id, key)
        )
        audited = _audited(principal, audit.AGENT_UPDATE, changes.id, fields=",".join(mask.paths))
        updated = await self._store.update(agent, sealed, expected_etag=changes.etag, audited=audited)
        if updated is None:
            # Changed or deleted between the read and the write: the etag no longer matches.
            if await self._store.get(principal.tenant_id, key) is None:
                raise not_found(changes.id)
            raise stale_etag(changes.id)
        await self._cache.invalidate(principal.tenant_id, str(key))
        return updated

    async def delete(self, principal: Principal, agent_id: str, etag: str) -> None:
        key = parse_id(agent_id, "id")
        outcome = await self._store.delete(
            principal.tenant_id, key, etag, _audited(principal, audit.AGENT_DELETE, str(key))
        )
        if not outcome.found:
            raise not_found(agent_id)
        if not outcome.etag_matched:
            raise stale_etag(agent_id)
        if outcome.active_conversation is not None:
            raise FailedPrecondition(
                f"agent {agent_id} takes part in active conversation {outcome.active_conversation}; "
                "archive or delete that conversation first"
            )
        await self._cache.invalidate(principal.tenant_id, str(key))
