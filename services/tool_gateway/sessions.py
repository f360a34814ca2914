"""Live MCP sessions to upstream servers, pooled per (server registration, tenant, credential).

Opening an MCP connection costs more than the call it carries (protocol discovery or the
initialize handshake: about 8 ms of wall time and 6 ms of CPU against the example servers), so a
session is kept open and reused by the next operations with the same key: the server's id, its
registration's etag and URL (a changed registration is a new key), the caller's tenant, and a
digest of the credential headers. A credential may be the caller's (token exchange mints one per
caller and server), so a session carries one caller's token on every request it makes and is never
lent to another caller. The tenant is in the key even where the credential is the gateway's own and
the same for every caller (no credential, a static one, client credentials; and every platform-wide
server): an upstream that keeps state per session (a cart, a scratchpad, a cursor) then never holds
two tenants' state in one.

Each session is owned by a keeper task: anyio's task groups (under the SDK's `Client`) must be
entered and left by one task, so the keeper enters the client, hands it out and waits; callers
send their requests on it concurrently from their own tasks. A session goes when:

- it has carried nothing for `idle_seconds` (its keeper times itself out);
- the pool holds `max_sessions` and another is needed (the least recently used goes, an idle one
  first);
- its server's registration changes or is deleted (`forget`);
- an operation on it fails in any way other than the server refusing the request itself (a
  transport error, a result cut at the cap, a call cut by its deadline, an HTTP error, an answer
  that is not JSON-RPC, a stream cut short): a session that has seen one of these is not trusted
  with the next call. It is retired: it takes no new operation and closes when the ones it
  carries end;
- it dies: its transport fails under it, which ends the client in the keeper; the SDK wakes every
  request still waiting on it with "connection closed" at once, so its callers fail promptly and
  sessions of other keys are untouched.

A live session also hears its server say that its tool list changed, and tells the pool's
`on_tools_changed` (the catalogue drops that server's list): a `notifications/tools/list_changed`
on a 2025-11-25 session (the SDK opens the standalone GET stream after the handshake and hands what
arrives there, or on a response, to the session's message handler), or an event on a
`subscriptions/listen` stream on a 2026-07-28 one, which the keeper holds open beside the calls when
the server's capabilities say it sends tool list changes (the SDK hands those events to the message
handler too). Both streams stay open while the server is silent (no read deadline; the SDK still
bounds each event to the result cap) and end with the session; a listen stream that fails is
logged and the session's calls go on.

What the HTTP responses to one operation showed (an HTTP error status, the cap tripped, the
transport broken, the server ending the session) is recorded on that operation's `Exchange`, found
through a ContextVar: the SDK's transport handles each outgoing message in the context of the task
that sent it (mcp.shared._context_streams), so a request's POST sees its caller's exchange even
though the transport's tasks belong to the keeper. The credential and the result cap never come
from that context: they are the session's own, set on its HTTP client when it opens.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import anyio
import httpx2
from macp.tool_gateway.v1 import tool_gateway_service_pb2 as pb
from mcp import Client
from mcp.client.session import IncomingMessage
from mcp.client.streamable_http import MCP_SESSION_ID, streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, METHOD_NOT_FOUND, ToolListChangedNotification
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from services.runtime.principal import caller_var

logger = logging.getLogger(__name__)

# JSON-RPC errors by which a server refuses a request itself (an unknown method, arguments its
# schema refuses): the caller's to fix, and the session that carried them is sound.
REFUSALS = (METHOD_NOT_FOUND, INVALID_PARAMS)
# How long closing the pool waits for sessions to say goodbye to their servers.
CLOSE_SECONDS = 1.0

# Told the id of a server whose tool list changed, by whichever of its sessions heard it.
ToolsChanged = Callable[[str], None]


class ResultTooLarge(Exception):
    pass


class SessionClosed(Exception):
    """The session was closed (the pool shut down) before it opened."""


@dataclass(frozen=True)
class SessionLimits:
    max_sessions: int
    idle_seconds: float


@dataclass(frozen=True)
class SessionKey:
    server_id: str
    etag: str
    url: str
    tenant_id: str  # the caller's (a platform server's sessions are per calling tenant)
    credential: str  # a digest of the credential headers: the pool never keys on a token itself


def session_key(server: pb.ToolServer, tenant_id: str, headers: Mapping[str, str]) -> SessionKey:
    digest = hashlib.sha256()
    for name, value in sorted((name.lower(), value) for name, value in headers.items()):
        digest.update(f"{name}\0{value}\0".encode())
    return SessionKey(server.id, server.etag, server.url, tenant_id, digest.hexdigest())


def callers_tenant() -> str:
    """The tenant the current operation is for, from its caller (services/runtime/principal.py),
    as the credential comes from it. Every RPC and MCP request of the gateway has a caller; work
    without one (the pool driven directly) keys as tenant '', which no caller has."""
    caller = caller_var.get()
    return caller.principal.tenant_id if caller is not None else ""


@dataclass
class Exchange:
    """What the HTTP responses to one operation's requests showed, which the SDK reports only as
    "an error": the statuses of HTTP errors (a 401 refusing the token, a 500), whether an answer
    went over the cap, whether the server said the session is gone (404 to a request naming it),
    and the transport failure under a request, if any."""

    errors: list[int] = field(default_factory=list)
    over: bool = False
    expired: bool = False
    broken: Exception | None = None
    # The session's listen stream (not an operation): open as long as the session, its answer
    # uncapped (the SDK caps each event), its failures its own.
    listening: bool = False

    def absorb(self, other: Exchange) -> None:
        self.errors.extend(other.errors)
        self.over = self.over or other.over
        self.expired = self.expired or other.expired
        self.broken = self.broken or other.broken

    @property
    def clean(self) -> bool:
        return not (self.errors or self.over or self.expired or self.broken)


# The operation whose requests are on the wire (see the module docstring).
_exchange: ContextVar[Exchange | None] = ContextVar("macp_tool_exchange", default=None)


class _CappedBody(httpx2.AsyncByteStream):
    """A response body that stops with `ResultTooLarge` past `limit` bytes, before holding them."""

    def __init__(self, body: httpx2.AsyncByteStream, limit: int, on_over: Callable[[], None]) -> None:
        self._body = body
        self._limit = limit
        self._on_over = on_over

    async def __aiter__(self) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in self._body:
            seen += len(chunk)
            if seen > self._limit:
                self._on_over()
                raise ResultTooLarge(f"the answer is over {self._limit} bytes")
            yield chunk

    async def aclose(self) -> None:
        await self._body.aclose()


class _SessionTransport(httpx2.AsyncBaseTransport):
    """One session's HTTP, on the pool's shared connections: every request carries the session's
    credential, and no answer to a request may exceed the result cap (a server that sends 50 MB is
    cut off at the cap, never read whole into the gateway's memory). The long-lived GET stream of
    server-initiated messages is bounded per event by the SDK instead."""

    def __init__(self, session: Session, inner: httpx2.AsyncBaseTransport) -> None:
        self._session = session
        self._inner = inner

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        request.headers.update(self._session.headers)
        exchange = _exchange.get() or Exchange()
        streams = request.method == "GET" or exchange.listening
        if streams:
            # A stream of the server's messages is silent until the server has something to say
            # (its keep-alive comes every 15 s with the SDK's server): a read deadline would cut it,
            # and after two cuts the SDK gives up the GET stream for good. The session bounds it.
            request.extensions["timeout"] = {**request.extensions.get("timeout", {}), "read": None}
        try:
            response = await self._inner.handle_async_request(request)
        except Exception as exc:
            exchange.broken = exchange.broken or exc
            if not exchange.listening:
                self._session.fault = self._session.fault or exc
            raise
        if response.status_code >= 400:
            exchange.errors.append(response.status_code)
            exchange.expired = exchange.expired or (
                response.status_code == 404 and MCP_SESSION_ID in request.headers
            )
        if streams:
            return response

        def over() -> None:
            exchange.over = True
            self._session.fault = self._session.fault or ResultTooLarge("an answer was over the cap")

        body = _CappedBody(response.stream, self._session.max_result_bytes, over)  # type: ignore[arg-type]
        return httpx2.Response(
            response.status_code, headers=response.headers, stream=body, extensions=response.extensions
        )

    async def aclose(self) -> None:
        """The connections are the pool's, closed with it."""


class Session:
    """One live MCP session and the keeper task that owns it."""

    def __init__(
        self,
        key: SessionKey,
        headers: Mapping[str, str],
        pool: SessionPool,
    ) -> None:
        self.key = key
        self.headers = dict(headers)
        self.max_result_bytes = pool.max_result_bytes
        self.in_use = 0
        self.last_used = time.monotonic()
        self.retired = False
        # Why the session failed, when it did: what its callers are told if it ends under them.
        self.fault: BaseException | None = None
        # What the handshake's responses showed: the callers waiting for it inherit it if it fails.
        self.opening = Exchange()
        self._pool = pool
        self._opened: asyncio.Future[Client] = asyncio.get_running_loop().create_future()
        self._wake = asyncio.Event()
        # A fresh context: the keeper outlives the operation that opened it and must not carry its
        # caller's identity (or anything else of the caller's context) into later ones.
        self.task = asyncio.create_task(
            self._keep(), name=f"mcp-session {key.url}", context=contextvars.Context()
        )

    async def client(self) -> Client:
        """The session's client once it has opened (the handshake runs once, in the keeper)."""
        if self._opened.done():
            return self._opened.result()
        # Shielded: a caller giving up must not cancel the opening that others wait for.
        return await asyncio.shield(self._opened)

    def enter(self) -> None:
        self.in_use += 1
        self.last_used = time.monotonic()

    def leave(self) -> None:
        self.in_use -= 1
        self.last_used = time.monotonic()
        if self.in_use == 0 and self.retired:
            self._wake.set()  # the keeper closes it now (an idle one it finds on its own)

    def retire(self) -> None:
        """No new operation on this session; it closes once the ones it carries end."""
        if not self.retired:
            self.retired = True
            self._pool.discard(self)
        self._wake.set()

    async def _keep(self) -> None:
        http = httpx2.AsyncClient(
            transport=_SessionTransport(self, self._pool.transport),
            timeout=httpx2.Timeout(self._pool.timeout_seconds),
            trust_env=False,
        )
        try:
            async with AsyncExitStack() as stack:
                _exchange.set(self.opening)
                transport = streamable_http_client(
                    self.key.url, http_client=http, max_sse_event_size=self.max_result_bytes
                )
                heard = self._heard if self._pool.on_tools_changed is not None else None
                async with asyncio.timeout(self._pool.timeout_seconds):
                    client = await stack.enter_async_context(
                        Client(transport, raise_exceptions=True, cache=None, message_handler=heard)
                    )
                _exchange.set(None)
                self._opened.set_result(client)
                async with anyio.create_task_group() as beside:
                    if heard is not None and _listens_for_tools(client):
                        beside.start_soon(self._listen, client)
                    await self._serve()
                    beside.cancel_scope.cancel()  # the listen stream ends with the session
        except Exception as exc:
            # Its callers learn of it from the SDK (the requests in flight) or from `_opened`.
            self.fault = self.fault or exc
            logger.debug("MCP session to %s ended: %r", self.key.url, exc)
            if not self._opened.done():
                self._opened.set_exception(exc)
                self._opened.exception()  # the callers waiting were told; no one else need be
        except BaseException:
            if not self._opened.done():
                self._opened.set_exception(SessionClosed("the gateway is shutting down"))
                self._opened.exception()
            raise
        finally:
            self.retire()
            await http.aclose()

    async def _heard(self, message: IncomingMessage) -> None:
        """What the server sent unasked: a change of its tool list is the catalogue's to know."""
        if isinstance(message, ToolListChangedNotification) and self._pool.on_tools_changed is not None:
            try:
                self._pool.on_tools_changed(self.key.server_id)
            except Exception:
                logger.exception("dropping the tool list of %s failed", self.key.url)

    async def _listen(self, client: Client) -> None:
        """Hold a 2026-07-28 `subscriptions/listen` stream for tool list changes until the session
        ends (the keeper cancels it). The SDK hands each event to `_heard` as it arrives, so this
        task only keeps the stream open. Its failure is its own: logged, and the calls go on (the
        catalogue's TTL bounds what a session that hears nothing misses)."""
        _exchange.set(Exchange(listening=True))
        try:
            async with AsyncExitStack() as stack:
                with anyio.fail_after(self._pool.timeout_seconds):
                    subscription = await stack.enter_async_context(client.listen(tools_list_changed=True))
                async for _event in subscription:
                    pass  # already handed to `_heard` by the SDK
            logger.info("MCP listen stream of %s closed by the server", self.key.url)
        except Exception as exc:
            logger.warning("MCP listen stream of %s failed: %r", self.key.url, exc)

    async def _serve(self) -> None:
        """Hold the session open until it is retired and idle, or idle for `idle_seconds`. The
        keeper looks at the clock once per idle period rather than being woken by every call."""
        idle_seconds = self._pool.limits.idle_seconds
        try:
            while not (self.retired and self.in_use == 0):
                delay: float | None = None  # retired: woken when the last operation leaves
                if not self.retired:
                    idle_left = idle_seconds - (time.monotonic() - self.last_used)
                    if self.in_use == 0 and idle_left <= 0:
                        self.retire()
                        continue
                    delay = idle_left if self.in_use == 0 else idle_seconds
                self._wake.clear()
                with anyio.move_on_after(delay):
                    await self._wake.wait()
        except BaseException:
            # The transport failed under the session (its task group cancels this wait): out of
            # the pool now, before the SDK wakes its waiters, so that no new call picks it.
            self.retire()
            raise


def _listens_for_tools(client: Client) -> bool:
    """Whether a session hears of tool list changes on a listen stream: a 2026-07-28 one whose
    server says it sends them (a 2025-11-25 server sends its notifications unasked)."""
    tools = client.server_capabilities.tools
    return client.protocol_version in MODERN_PROTOCOL_VERSIONS and bool(tools and tools.list_changed)


@dataclass(frozen=True)
class Lease:
    """A session lent to one operation."""

    client: Client
    session: Session


def keeps_session(exc: BaseException, exchange: Exchange) -> bool:
    """Whether a session is sound after an operation on it failed with `exc`: only when the server
    itself refused the request, over responses that showed nothing wrong."""
    return isinstance(exc, MCPError) and exc.code in REFUSALS and exchange.clean


class SessionPool:
    """The process's pooled sessions to upstreams, and the one HTTP connection pool under them."""

    def __init__(
        self,
        limits: SessionLimits,
        timeout_seconds: float,
        max_result_bytes: int,
        on_tools_changed: ToolsChanged | None = None,
    ) -> None:
        self.limits = limits
        self.timeout_seconds = timeout_seconds
        self.max_result_bytes = max_result_bytes
        # Told when a server says its tool list changed; without it, sessions listen for nothing.
        self.on_tools_changed = on_tools_changed
        # Building an HTTP transport costs about 30 ms of CPU (its TLS context): one per process.
        self.transport = httpx2.AsyncHTTPTransport()
        # Live sessions, least recently used first; retired ones leave it at once.
        self._sessions: OrderedDict[SessionKey, Session] = OrderedDict()
        self._keepers: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._sessions)

    @asynccontextmanager
    async def lease(
        self, server: pb.ToolServer, headers: Mapping[str, str], exchange: Exchange
    ) -> AsyncIterator[Lease]:
        """A session of `server` with `headers` for one operation of the caller's tenant, opened if
        none is live; what the operation's responses show is recorded on `exchange` (the
        handshake's too, if it fails). The operation failing retires the session unless the server
        only refused the request."""
        session = self._session_for(server, headers)
        reset = _exchange.set(exchange)
        session.enter()
        try:
            try:
                client = await session.client()
            except BaseException:
                exchange.absorb(session.opening)
                raise
            yield Lease(client, session)
        except BaseException as exc:
            if not keeps_session(exc, exchange):
                session.retire()
            raise
        finally:
            session.leave()
            _exchange.reset(reset)

    def _session_for(self, server: pb.ToolServer, headers: Mapping[str, str]) -> Session:
        key = session_key(server, callers_tenant(), headers)
        session = self._sessions.get(key)
        if session is not None:
            self._sessions.move_to_end(key)
            return session
        self._make_room(key)
        session = self._sessions[key] = Session(key, headers, self)
        self._keepers.add(session.task)
        session.task.add_done_callback(self._keepers.discard)
        return session

    def _make_room(self, key: SessionKey) -> None:
        """Retire the sessions of the server's former registrations, then the least recently used
        (an idle one first) while the pool is full."""
        for session in list(self._sessions.values()):
            if session.key.server_id == key.server_id and (session.key.etag, session.key.url) != (
                key.etag,
                key.url,
            ):
                session.retire()
        while len(self._sessions) >= self.limits.max_sessions:
            sessions = list(self._sessions.values())
            idle = next((session for session in sessions if session.in_use == 0), sessions[0])
            idle.retire()

    def discard(self, session: Session) -> None:
        if self._sessions.get(session.key) is session:
            del self._sessions[session.key]

    def forget(self, server_id: str) -> None:
        """Retire every session of a server whose registration is gone."""
        for session in list(self._sessions.values()):
            if session.key.server_id == server_id:
                session.retire()

    async def close(self) -> None:
        """Close every session now: a 2025-11-25 session still tells its server it ends (an HTTP
        DELETE), for a second at most."""
        keepers = list(self._keepers)
        for keeper in keepers:
            keeper.cancel()
        if keepers:
            _, late = await asyncio.wait(keepers, timeout=CLOSE_SECONDS)
            for keeper in late:
                keeper.cancel()
            await asyncio.gather(*keepers, return_exceptions=True)
        await self.transport.aclose()
