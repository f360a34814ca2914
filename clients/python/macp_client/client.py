"""`AsyncMacpClient`: the platform's public API from asyncio code.

REST (agents, conversations, messages, archives, usage, tool servers), OAuth (sign in, keep the
token fresh, introspect, revoke), SSE and the WebSocket, each as the edge's OpenAPI document
(`/v1/openapi.json`) and docs/websocket.md describe it. `MacpClient` (macp_client.sync) is the
same client for code without an event loop.

Conventions kept here once: a resource's etag goes back in `If-Match` (a PATCH needs it: the edge
answers 428 without one); a user message always carries its id, generated when not given, so that
posting it again after a lost answer is answered `duplicate` rather than starting a second round.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any, Self, cast
from urllib.parse import quote

import httpx

from macp_client.auth import Grant, TokenKeeper
from macp_client.events import Cursor, Event
from macp_client.sse import EVENT_STREAM, Opener, follow
from macp_client.transport import JsonObject, Params, Transport
from macp_client.types import (
    Agent,
    AgentChanges,
    AgentDraft,
    Archive,
    ArchiveLink,
    ArchiveResult,
    Conversation,
    ConversationChanges,
    ConversationDraft,
    ConversationStatus,
    Introspection,
    InvoicePreview,
    Message,
    Page,
    PostedMessage,
    TokenResponse,
    ToolServerDraft,
    Usage,
    UsageGrouping,
)
from macp_client.websocket import ConversationSocket


def _id(value: str) -> str:
    return quote(value, safe="")


def _if_match(etag: str | None) -> dict[str, str]:
    return {} if etag is None else {"if-match": f'"{etag}"'}


def _page(document: JsonObject, key: str) -> Page[Any]:
    items = document.get(key)
    token = document.get("nextPageToken")
    return Page(items if isinstance(items, list) else [], token if isinstance(token, str) else "")


def _time(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


class AsyncMacpClient:
    """A client of one MACP edge (`base_url`: Envoy's front listener, `http://localhost:8080`).

    Authenticate with `token` (an access token, used as it is) or `grant` (signed in on first use
    and kept fresh: macp_client.auth). Use it as an async context manager, or `aclose()` it."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        grant: Grant | None = None,
        timeout: float = 30.0,
        trust_env: bool = True,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        keeper = TokenKeeper(token=token, grant=grant)
        self._transport = Transport(base_url, keeper, timeout=timeout, trust_env=trust_env, http=http)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._transport.aclose()

    @property
    def base_url(self) -> str:
        return self._transport.base_url

    # OAuth (RFC 6749, 7009, 7662).

    async def sign_in(self, grant: Grant) -> TokenResponse:
        """Run `grant` now; the client then calls with its token and keeps it fresh."""
        return await self._transport.keeper.sign_in(self._transport, grant)

    async def access_token(self) -> str | None:
        """The access token the next request sends (renewed first if it is about to expire)."""
        return await self._transport.bearer()

    async def refresh(self) -> None:
        """Renew the access token now (with the refresh token when there is one)."""
        keeper = self._transport.keeper
        await keeper.renew(self._transport, await keeper.current(self._transport))

    @property
    def renewals(self) -> int:
        """How many times the client renewed its token."""
        return self._transport.keeper.renewals

    async def introspect(self, token: str, client_id: str, client_secret: str) -> Introspection:
        """Whether `token` is active (RFC 7662), asked as a confidential client."""
        form = [("token", token), ("client_id", client_id), ("client_secret", client_secret)]
        return cast(Introspection, await self._transport.form("/oauth2/introspect", form))

    async def revoke(
        self,
        token: str,
        client_id: str,
        client_secret: str | None = None,
        token_type_hint: str | None = None,
    ) -> None:
        """Revoke `token` (RFC 7009) as the client it was issued to."""
        form = [("token", token), ("client_id", client_id)]
        if client_secret is not None:
            form.append(("client_secret", client_secret))
        if token_type_hint is not None:
            form.append(("token_type_hint", token_type_hint))
        await self._transport.form("/oauth2/revoke", form)

    # Any route (what the methods below do not cover yet).

    async def request(
        self, method: str, path: str, *, json: object = None, params: Params | None = None
    ) -> JsonObject:
        """An authenticated request to `path`; its JSON answer ({} for an empty one)."""
        response = await self._transport.call(method, path, json=json, params=params)
        if not response.content:
            return {}
        body = response.json()
        return body if isinstance(body, dict) else {"items": body}

    # Agents.

    async def create_agent(self, draft: AgentDraft) -> Agent:
        return cast(Agent, await self._transport.document("POST", "/v1/agents", json=draft))

    async def get_agent(self, agent_id: str) -> Agent:
        return cast(Agent, await self._transport.document("GET", f"/v1/agents/{_id(agent_id)}"))

    async def list_agents(
        self, *, page_size: int | None = None, page_token: str | None = None, capability: str | None = None
    ) -> Page[Agent]:
        params = {"page_size": page_size, "page_token": page_token, "capability": capability}
        return _page(await self._transport.document("GET", "/v1/agents", params=params), "agents")

    async def update_agent(self, agent_id: str, changes: AgentChanges, etag: str) -> Agent:
        """Change the fields in `changes`, if the agent is still at `etag` (412 otherwise)."""
        path = f"/v1/agents/{_id(agent_id)}"
        return cast(
            Agent, await self._transport.document("PATCH", path, json=changes, headers=_if_match(etag))
        )

    async def delete_agent(self, agent_id: str, etag: str | None = None) -> None:
        await self._transport.call("DELETE", f"/v1/agents/{_id(agent_id)}", headers=_if_match(etag))

    # Conversations.

    async def create_conversation(self, draft: ConversationDraft) -> Conversation:
        return cast(Conversation, await self._transport.document("POST", "/v1/conversations", json=draft))

    async def get_conversation(self, conversation_id: str) -> Conversation:
        path = f"/v1/conversations/{_id(conversation_id)}"
        return cast(Conversation, await self._transport.document("GET", path))

    async def list_conversations(
        self,
        *,
        page_size: int | None = None,
        page_token: str | None = None,
        status: ConversationStatus | None = None,
        agent_id: str | None = None,
    ) -> Page[Conversation]:
        params = {"page_size": page_size, "page_token": page_token, "status": status, "agent_id": agent_id}
        document = await self._transport.document("GET", "/v1/conversations", params=params)
        return _page(document, "conversations")

    async def update_conversation(
        self, conversation_id: str, changes: ConversationChanges, etag: str
    ) -> Conversation:
        path = f"/v1/conversations/{_id(conversation_id)}"
        document = await self._transport.document("PATCH", path, json=changes, headers=_if_match(etag))
        return cast(Conversation, document)

    async def delete_conversation(self, conversation_id: str, etag: str | None = None) -> None:
        path = f"/v1/conversations/{_id(conversation_id)}"
        await self._transport.call("DELETE", path, headers=_if_match(etag))

    # Messages.

    @staticmethod
    def _message_body(text: str, message_id: str | None, mention_agent_ids: Sequence[str]) -> JsonObject:
        body: JsonObject = {"id": message_id or str(uuid.uuid4()), "text": text}
        if mention_agent_ids:
            body["mentionAgentIds"] = list(mention_agent_ids)
        return body

    async def post_message(
        self,
        conversation_id: str,
        text: str,
        *,
        message_id: str | None = None,
        mention_agent_ids: Sequence[str] = (),
    ) -> PostedMessage:
        """Post a user message, starting a round; retried on a lost answer (it is stored once by id)."""
        path = f"/v1/conversations/{_id(conversation_id)}/messages"
        body = self._message_body(text, message_id, mention_agent_ids)
        return cast(PostedMessage, await self._transport.document("POST", path, json=body, retry=True))

    async def list_messages(
        self,
        conversation_id: str,
        *,
        page_size: int | None = None,
        page_token: str | None = None,
        newest_first: bool = False,
    ) -> Page[Message]:
        path = f"/v1/conversations/{_id(conversation_id)}/messages"
        params = {
            "page_size": page_size,
            "page_token": page_token,
            "order_by": "sequence desc" if newest_first else None,
        }
        return _page(await self._transport.document("GET", path, params=params), "messages")

    # Archives.

    async def archive_conversation(
        self,
        conversation_id: str,
        *,
        close: bool = False,
        etag: str | None = None,
        url_ttl_seconds: int | None = None,
    ) -> ArchiveResult:
        """Write the transcript to S3 (`close`: and make the conversation read-only)."""
        body: JsonObject = {"close": close}
        if url_ttl_seconds is not None:
            body["urlTtl"] = f"{url_ttl_seconds}s"
        path = f"/v1/conversations/{_id(conversation_id)}/archive"
        document = await self._transport.document("POST", path, json=body, headers=_if_match(etag))
        return cast(ArchiveResult, document)

    async def list_archives(
        self, conversation_id: str, *, page_size: int | None = None, page_token: str | None = None
    ) -> Page[Archive]:
        path = f"/v1/conversations/{_id(conversation_id)}/archives"
        params = {"page_size": page_size, "page_token": page_token}
        return _page(await self._transport.document("GET", path, params=params), "archives")

    async def get_archive(
        self, conversation_id: str, archive_id: str, *, url_ttl_seconds: int | None = None
    ) -> ArchiveLink:
        path = f"/v1/conversations/{_id(conversation_id)}/archives/{_id(archive_id)}"
        params = {"url_ttl": None if url_ttl_seconds is None else f"{url_ttl_seconds}s"}
        return cast(ArchiveLink, await self._transport.document("GET", path, params=params))

    # Usage.

    async def usage(
        self,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        group_by: UsageGrouping = "event_type",
        user_id: str | None = None,
        page_size: int | None = None,
        page_token: str | None = None,
    ) -> Usage:
        """The tenant's usage over a period (default: this billing month), grouped."""
        params = {
            "start": _time(start),
            "end": _time(end),
            "group_by": group_by,
            "user_id": user_id,
            "page_size": page_size,
            "page_token": page_token,
        }
        return cast(Usage, await self._transport.document("GET", "/v1/usage", params=params))

    async def invoice_preview(self, month: str | None = None) -> InvoicePreview:
        """The tenant's charges for a billing month (`YYYY-MM`, default this one) so far."""
        document = await self._transport.document("GET", "/v1/usage/invoice-preview", params={"month": month})
        return cast(InvoicePreview, document)

    # Tool servers (docs/tool-gateway.md).

    async def create_tool_server(self, draft: ToolServerDraft) -> JsonObject:
        return await self._transport.document("POST", "/v1/tool-servers", json=draft)

    # Events: SSE and the WebSocket.

    async def stream_message(
        self,
        conversation_id: str,
        text: str,
        *,
        message_id: str | None = None,
        mention_agent_ids: Sequence[str] = (),
    ) -> AsyncIterator[Event]:
        """Post a user message and yield its round as server-sent events, from its MessageAccepted
        to its RoundCompleted (or a fatal error). A stream that breaks is followed again after the
        last event received, so every event comes once."""
        body = self._message_body(text, message_id, mention_agent_ids)
        posted = str(body["id"])
        path = f"/v1/conversations/{_id(conversation_id)}/messages"

        def post(_after: str | None) -> contextlib.AbstractAsyncContextManager[httpx.Response]:
            return self._transport.stream("POST", path, json=body, headers={"accept": EVENT_STREAM})

        def stop(event: Event) -> bool:
            return event.ends_round_of(posted)

        async for event in follow(post, Cursor(), stop, resume=self._events_opener(conversation_id)):
            yield event

    async def stream_events(self, conversation_id: str, *, after: str | None = None) -> AsyncIterator[Event]:
        """Follow a conversation's events as server-sent events (after event `after`, else live),
        for as long as the caller iterates; a broken stream resumes after the last event."""
        async for event in follow(self._events_opener(conversation_id), Cursor(after)):
            yield event

    def _events_opener(self, conversation_id: str) -> Opener:
        path = f"/v1/conversations/{_id(conversation_id)}/events"

        def open_after(after: str | None) -> contextlib.AbstractAsyncContextManager[httpx.Response]:
            headers = {"accept": EVENT_STREAM, **({"last-event-id": after} if after else {})}
            return self._transport.stream("GET", path, headers=headers)

        return open_after

    def websocket(self, *, reconnects: int = 5) -> ConversationSocket:
        """A WebSocket following conversations, resuming after disconnects (`async with`)."""
        return ConversationSocket(self._transport, reconnects=reconnects)
