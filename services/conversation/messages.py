"""Message rules: who may write what into a conversation, idempotent appends, ordered reads."""

from __future__ import annotations

from macp.conversation.v1 import conversation_service_pb2 as pb

from services.conversation.conversations import Conversations, archived, not_found
from services.conversation.message_store import ConversationState, MessageStore, same_content
from services.runtime.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from services.runtime.ids import parse_id
from services.runtime.paging import decode_page_token, filter_digest, page_size, sequence_token
from services.runtime.principal import Principal

# ListMessagesRequest.order_by for newest first (AIP-132); "" and "sequence" are oldest first.
NEWEST_FIRST = "sequence desc"
# Above every sequence a conversation can reach: the bound of a newest-first first page.
LAST_SEQUENCE = 2**63 - 1


class Messages:
    def __init__(self, store: MessageStore, conversations: Conversations) -> None:
        self._store = store
        self._conversations = conversations

    async def append(self, principal: Principal, message: pb.Message) -> tuple[pb.Message, bool]:
        """The stored message and whether this call stored it (False: an idempotent retry)."""
        conversation_id = str(parse_id(message.conversation_id, "message.conversation_id"))
        if message.role == pb.MESSAGE_ROLE_USER and message.author_id != principal.user_id:
            # A user message is written by the calling user: the principal, not the body, says who.
            raise InvalidArgument("message.author_id: a user message's author must be the calling user")
        if message.role == pb.MESSAGE_ROLE_SYSTEM and message.author_id:
            raise InvalidArgument("message.author_id: must be empty for a system message")

        def check(state: ConversationState) -> None:
            if state.status != pb.CONVERSATION_STATUS_ACTIVE:
                raise archived(conversation_id)
            speaks_as_agent = message.role in (pb.MESSAGE_ROLE_AGENT, pb.MESSAGE_ROLE_TOOL)
            if speaks_as_agent and message.author_id not in state.participants:
                raise FailedPrecondition(
                    f"message.author_id: agent {message.author_id} does not take part in this conversation"
                )

        result = await self._store.append(principal.tenant_id, message, check)
        if result is None:
            raise not_found(message.conversation_id)
        stored, created = result
        if not created and not same_content(stored, message):
            raise AlreadyExists(
                f"message.id: message {message.id} is already stored with other content; "
                "a new message needs a new id"
            )
        return stored, created

    async def list(self, principal: Principal, request: pb.ListMessagesRequest) -> pb.ListMessagesResponse:
        conversation = await self._conversations.get(principal, request.conversation_id)
        newest_first = request.order_by == NEWEST_FIRST
        # The order is part of the digest: a token of one order is refused by the other (oldest
        # first keeps the digest it always had, so its tokens stay valid).
        order = (NEWEST_FIRST,) if newest_first else ()
        digest = filter_digest("messages", principal.tenant_id, conversation.id, *order)
        cursor = decode_page_token(request.page_token, digest)
        size = page_size(request.page_size)
        conversation_key = parse_id(conversation.id, "conversation_id")
        if newest_first:
            before = LAST_SEQUENCE if cursor is None else cursor.after_sequence
            found = await self._store.list_newest(principal.tenant_id, conversation_key, before, size + 1)
        else:
            after = 0 if cursor is None else cursor.after_sequence
            found = await self._store.list(principal.tenant_id, conversation_key, after, size + 1)
        response = pb.ListMessagesResponse(messages=found[:size])
        if len(found) > size:
            response.next_page_token = sequence_token(found[size - 1].sequence, digest)
        return response
