"""Conversation rules: who takes part, how turns are taken, how a conversation changes and goes."""

from __future__ import annotations

import uuid

from google.protobuf.field_mask_pb2 import FieldMask
from macp.conversation.v1 import conversation_service_pb2 as pb

from services.conversation.cache import ResourceCache
from services.conversation.conversation_store import ConversationStore, MissingAgents
from services.conversation.fields import merged
from services.runtime import audit
from services.runtime.audit import AuditEvent, Who
from services.runtime.errors import FailedPrecondition, NotFound, StaleEtag
from services.runtime.ids import new_etag, parse_id
from services.runtime.paging import decode_page_token, filter_digest, page_size, time_key, time_page
from services.runtime.principal import Principal

# Fields whose new values change which agents a conversation needs.
AGENT_FIELDS = ("participant_agent_ids", "coordinator_agent_id")


def not_found(conversation_id: str) -> NotFound:
    # Another tenant's conversation is reported exactly like a missing one.
    return NotFound(f"conversation {conversation_id} not found")


def audited(principal: Principal, action: str, conversation_id: str, **detail: str) -> AuditEvent:
    return AuditEvent(Who.of(principal), action, f"conversation/{conversation_id}", detail=detail)


def stale_etag(conversation_id: str) -> StaleEtag:
    return StaleEtag(
        f"conversation {conversation_id} changed since it was read (etag mismatch); read it again"
    )


def archived(conversation_id: str) -> FailedPrecondition:
    return FailedPrecondition(f"conversation {conversation_id} is archived and read-only")


def _missing(error: MissingAgents) -> FailedPrecondition:
    return FailedPrecondition(
        f"participant_agent_ids: {', '.join(error.agent_ids)} not agents of this tenant"
    )


def _check_coordinator(conversation: pb.Conversation) -> None:
    """The rule of CreateConversationRequest's CEL, re-checked after an update's merge."""
    if conversation.turn_policy == pb.TURN_POLICY_COORDINATOR and (
        conversation.coordinator_agent_id not in conversation.participant_agent_ids
    ):
        raise FailedPrecondition(
            "coordinator_agent_id: a COORDINATOR conversation needs a coordinator"
            " that is one of its participants"
        )


class Conversations:
    def __init__(self, store: ConversationStore, cache: ResourceCache) -> None:
        self._store = store
        self._cache = cache

    async def create(self, principal: Principal, draft: pb.Conversation) -> pb.Conversation:
        conversation = pb.Conversation()
        conversation.CopyFrom(draft)
        # Output-only fields come from the server and the caller's principal, never from the body.
        conversation.id = str(uuid.uuid4())
        conversation.tenant_id = principal.tenant_id
        conversation.owner_id = principal.user_id
        conversation.etag = new_etag()
        for output_only in ("status", "archive_key", "create_time", "update_time", "archive_time"):
            conversation.ClearField(output_only)
        if conversation.double_texting_policy == pb.DOUBLE_TEXTING_POLICY_UNSPECIFIED:
            conversation.double_texting_policy = pb.DOUBLE_TEXTING_POLICY_REJECT
        try:
            return await self._store.insert(
                conversation, audited(principal, audit.CONVERSATION_CREATE, conversation.id)
            )
        except MissingAgents as exc:
            raise _missing(exc) from None

    async def get(self, principal: Principal, conversation_id: str) -> pb.Conversation:
        key = parse_id(conversation_id, "id")
        conversation = await self._cache.get(
            principal.tenant_id,
            str(key),
            pb.Conversation.FromString,
            lambda: self._store.get(principal.tenant_id, key),
        )
        if conversation is None:
            raise not_found(conversation_id)
        return conversation

    async def list(
        self, principal: Principal, request: pb.ListConversationsRequest
    ) -> pb.ListConversationsResponse:
        digest = filter_digest("conversations", principal.tenant_id, request.status, request.agent_id)
        after = time_key(decode_page_token(request.page_token, digest))
        agent = parse_id(request.agent_id, "agent_id") if request.agent_id else None
        size = page_size(request.page_size)
        found = await self._store.list(principal.tenant_id, after, size + 1, request.status, agent)
        conversations, next_page_token = time_page(found, size, digest)
        return pb.ListConversationsResponse(conversations=conversations, next_page_token=next_page_token)

    async def update(
        self, principal: Principal, changes: pb.Conversation, mask: FieldMask
    ) -> pb.Conversation:
        key = parse_id(changes.id, "conversation.id")
        current = await self._store.get(principal.tenant_id, key)
        if current is None:
            raise not_found(changes.id)
        if current.etag != changes.etag:
            raise stale_etag(changes.id)
        if current.status == pb.CONVERSATION_STATUS_ARCHIVED:
            raise archived(changes.id)
        conversation = merged(current, changes, mask)
        _check_coordinator(conversation)
        conversation.etag = new_etag()
        check_agents = any(path.split(".")[0] in AGENT_FIELDS for path in mask.paths)
        try:
            updated = await self._store.update(
                conversation,
                changes.etag,
                check_agents,
                audited(principal, audit.CONVERSATION_UPDATE, changes.id, fields=",".join(mask.paths)),
            )
        except MissingAgents as exc:
            raise _missing(exc) from None
        if updated is None:
            # Changed, archived or deleted between the read and the write.
            now = await self._store.get(principal.tenant_id, key)
            if now is None:
                raise not_found(changes.id)
            if now.status == pb.CONVERSATION_STATUS_ARCHIVED:
                raise archived(changes.id)
            raise stale_etag(changes.id)
        await self._cache.invalidate(principal.tenant_id, str(key))
        return updated

    async def delete(self, principal: Principal, conversation_id: str, etag: str) -> None:
        key = parse_id(conversation_id, "id")
        deleted = await self._store.delete(
            principal.tenant_id, key, etag, audited(principal, audit.CONVERSATION_DELETE, str(key))
        )
        if deleted is None:
            raise not_found(conversation_id)
        if not deleted:
            raise stale_etag(conversation_id)
        await self._cache.invalidate(principal.tenant_id, str(key))

    async def invalidate(self, principal: Principal, conversation_id: str) -> None:
        """After a write elsewhere (an archive) changed the conversation's row."""
        await self._cache.invalidate(principal.tenant_id, conversation_id)
