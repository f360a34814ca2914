"""`MacpClient`: the same client for code without an event loop (scripts, notebooks, threads).

It is `AsyncMacpClient` run on an event loop of its own in a background thread (an anyio blocking
portal), not a second implementation: every method here is one call into the async one, and the
streams are its async iterators stepped from this thread. So both behave alike by construction
(token renewal, retries, resume), at the cost of one thread per client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from datetime import datetime
from typing import Self, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

from macp_client.auth import Grant
from macp_client.client import AsyncMacpClient
from macp_client.events import Event
from macp_client.transport import JsonObject, Params
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

T = TypeVar("T")


async def _step(iterator: AsyncIterator[T]) -> list[T]:
    """The iterator's next item, or [] at its end (StopAsyncIteration does not cross the portal
    as itself)."""
    try:
        return [await anext(iterator)]
    except StopAsyncIteration:
        return []


class _Runner:
    """Runs coroutines and async iterators of one event loop from other threads."""

    def __init__(self, portal: BlockingPortal) -> None:
        self.portal = portal

    def run(self, call: Callable[[], Awaitable[T]]) -> T:
        return self.portal.call(call)

    def iterate(self, iterator: AsyncIterator[T]) -> Iterator[T]:
        try:
            while items := self.portal.call(_step, iterator):
                yield items[0]
        finally:
            close = getattr(iterator, "aclose", None)
            if close is not None:
                self.portal.call(close)


class SyncConversationSocket:
    """`ConversationSocket` (macp_client.websocket) for blocking code; a context manager."""

    def __init__(self, runner: _Runner, socket: ConversationSocket) -> None:
        self._runner = runner
        self._socket = socket

    def __enter__(self) -> Self:
        self._runner.run(self._socket.__aenter__)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._runner.run(self._socket.close)

    @property
    def reconnects(self) -> int:
        return self._socket.reconnects

    @property
    def repeats(self) -> int:
        return self._socket.repeats

    def last_event_id(self, conversation_id: str) -> str | None:
        return self._socket.last_event_id(conversation_id)

    def subscribe(self, conversation_id: str, last_event_id: str | None = None) -> None:
        self._runner.run(lambda: self._socket.subscribe(conversation_id, last_event_id))

    def send_message(
        self,
        conversation_id: str,
        text: str,
        *,
        message_id: str | None = None,
        mention_agent_ids: Sequence[str] = (),
    ) -> str:
        return self._runner.run(
            lambda: self._socket.send_message(
                conversation_id, text, message_id=message_id, mention_agent_ids=mention_agent_ids
            )
        )

    def cancel(self, conversation_id: str, *, turn_id: str | None = None, reason: str | None = None) -> None:
        self._runner.run(lambda: self._socket.cancel(conversation_id, turn_id=turn_id, reason=reason))

    def events(self, conversation_id: str) -> Iterator[Event]:
        return self._runner.iterate(self._socket.events(conversation_id))

    def round(
        self,
        conversation_id: str,
        text: str,
        *,
        message_id: str | None = None,
        mention_agent_ids: Sequence[str] = (),
    ) -> Iterator[Event]:
        rounds = self._socket.round(
            conversation_id, text, message_id=message_id, mention_agent_ids=mention_agent_ids
        )
        return self._runner.iterate(rounds)

    def interrupt(self, away_seconds: float = 0.0) -> None:
        self._runner.run(lambda: self._socket.interrupt(away_seconds))


class MacpClient:
    """`AsyncMacpClient` for blocking code: the same arguments and methods, without `await`.
    Use it as a context manager, or `close()` it (which stops its thread)."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        grant: Grant | None = None,
        timeout: float = 30.0,
        trust_env: bool = True,
    ) -> None:
        self._portal_context = start_blocking_portal()
        self._runner = _Runner(self._portal_context.__enter__())

        async def build() -> AsyncMacpClient:  # on the portal's loop, where it will run
            return AsyncMacpClient(base_url, token=token, grant=grant, timeout=timeout, trust_env=trust_env)

        try:
            self._client = self._runner.run(build)
        except BaseException:
            self._portal_context.__exit__(None, None, None)
            raise

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._runner.run(self._client.aclose)
        finally:
            self._portal_context.__exit__(None, None, None)

    @property
    def base_url(self) -> str:
        return self._client.base_url

    @property
    def renewals(self) -> int:
        return self._client.renewals

    def sign_in(self, grant: Grant) -> TokenResponse:
        return self._runner.run(lambda: self._client.sign_in(grant))

    def access_token(self) -> str | None:
        return self._runner.run(self._client.access_token)

    def refresh(self) -> None:
        self._runner.run(self._client.refresh)

    def introspect(self, token: str, client_id: str, client_secret: str) -> Introspection:
        return self._runner.run(lambda: self._client.introspect(token, client_id, client_secret))

    def revoke(
        self, token: str, client_id: str, client_secret: str | None = None, token_type_hint: str | None = None
    ) -> None:
        self._runner.run(lambda: self._client.revoke(token, client_id, client_secret, token_type_hint))

    def request(
        self, method: str, path: str, *, json: object = None, params: Params | None = None
    ) -> JsonObject:
        return self._runner.run(lambda: self._client.request(method, path, json=json, params=params))

    def create_agent(self, draft: AgentDraft) -> Agent:
        return self._runner.run(lambda: self._client.create_agent(draft))

    def get_agent(self, agent_id: str) -> Agent:
        return self._runner.run(lambda: self._client.get_agent(agent_id))

    def list_agents(
        self, *, page_size: int | None = None, page_token: str | None = None, capability: str | None = None
    ) -> Page[Agent]:
        return self._runner.run(
            lambda: self._client.list_agents(
                page_size=page_size, page_token=page_token, capability=capability
            )
        )

    def update_agent(self, agent_id: str, changes: AgentChanges, etag: str) -> Agent:
        return self._runner.run(lambda: self._client.update_agent(agent_id, changes, etag))

    def delete_agent(self, agent_id: str, etag: str | None = None) -> None:
        self._runner.run(lambda: self._client.delete_agent(agent_id, etag))

    def create_conversation(self, draft: ConversationDraft) -> Conversation:
        return self._runner.run(lambda: self._client.create_conversation(draft))

    def get_conversation(self, conversation_id: str) -> Conversation:
        return self._runner.run(lambda: self._client.get_conversation(conversation_id))

    def list_conversations(
        self,
        *,
        page_size: int | None = None,
        page_token: str | None = None,
        status: ConversationStatus | None = None,
        agent_id: str | None = None,
    ) -> Page[Conversation]:
        return self._runner.run(
            lambda: self._client.list_conversations(
                page_size=page_size, page_token=page_token, status=status, agent_id=agent_id
            )
        )

    def update_conversation(
        self, conversation_id: str, changes: ConversationChanges, etag: str
    ) -> Conversation:
        return self._runner.run(lambda: self._client.update_conversation(conversation_id, changes, etag))

    def delete_conversation(self, conversation_id: str, etag: str | None = None) -> None:
        self._runner.run(lambda: self._client.delete_conversation(conversation_id, etag))

    def post_message(
        self,
        conversation_id: str,
        text: str,
        *,
        message_id: str | None = None,
        mention_agent_ids: Sequence[str] = (),
    ) -> PostedMessage:
        return self._runner.run(
            lambda: self._client.post_message(
                conversation_id, text, message_id=message_id, mention_agent_ids=mention_agent_ids
            )
        )

    def list_messages(
        self,
        conversation_id: str,
        *,
        page_size: int | None = None,
        page_token: str | None = None,
        newest_first: bool = False,
    ) -> Page[Message]:
        return self._runner.run(
            lambda: self._client.list_messages(
                conversation_id, page_size=page_size, page_token=page_token, newest_first=newest_first
            )
        )

    def archive_conversation(
        self,
        conversation_id: str,
        *,
        close: bool = False,
        etag: str | None = None,
        url_ttl_seconds: int | None = None,
    ) -> ArchiveResult:
        return self._runner.run(
            lambda: self._client.archive_conversation(
                conversation_id, close=close, etag=etag, url_ttl_seconds=url_ttl_seconds
            )
        )

    def list_archives(
        self, conversation_id: str, *, page_size: int | None = None, page_token: str | None = None
    ) -> Page[Archive]:
        return self._runner.run(
            lambda: self._client.list_archives(conversation_id, page_size=page_size, page_token=page_token)
        )

    def get_archive(
        self, conversation_id: str, archive_id: str, *, url_ttl_seconds: int | None = None
    ) -> ArchiveLink:
        return self._runner.run(
            lambda: self._client.get_archive(conversation_id, archive_id, url_ttl_seconds=url_ttl_seconds)
        )

    def usage(
        self,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        group_by: UsageGrouping = "event_type",
        user_id: str | None = None,
        page_size: int | None = None,
        page_token: str | None = None,
    ) -> Usage:
        return self._runner.run(
            lambda: self._client.usage(
                start=start,
                end=end,
                group_by=group_by,
                user_id=user_id,
                page_size=page_size,
                page_token=page_token,
            )
        )

    def invoice_preview(self, month: str | None = None) -> InvoicePreview:
        return self._runner.run(lambda: self._client.invoice_preview(month))

    def create_tool_server(self, draft: ToolServerDraft) -> JsonObject:
        return self._runner.run(lambda: self._client.create_tool_server(draft))

    def stream_message(
        self,
        conversation_id: str,
        text: str,
        *,
        message_id: str | None = None,
        mention_agent_ids: Sequence[str] = (),
    ) -> Iterator[Event]:
        return self._runner.iterate(
            self._client.stream_message(
                conversation_id, text, message_id=message_id, mention_agent_ids=mention_agent_ids
            )
        )

    def stream_events(self, conversation_id: str, *, after: str | None = None) -> Iterator[Event]:
        return self._runner.iterate(self._client.stream_events(conversation_id, after=after))

    def websocket(self, *, reconnects: int = 5) -> SyncConversationSocket:
        return SyncConversationSocket(self._runner, self._client.websocket(reconnects=reconnects))
