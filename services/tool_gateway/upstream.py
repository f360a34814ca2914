"""Calls to one upstream MCP server, with the official SDK's client over Streamable HTTP.

Each operation runs on a live session of the server for its credential (sessions.py), opened on
first use and kept for the next operations: the SDK's client negotiates the protocol itself when
it opens (the stateless 2026-07-28 transport where the server speaks it, the 2025-11-25 session
otherwise). Every operation runs under the server's deadline. What the upstream does wrong
(unreachable, too slow, out of protocol, an answer over the size cap) becomes an `UpstreamFailure`
naming the server and what happened, for that operation only. A server that answers 404 to a
request naming its session has ended it (MCP 2025-11-25, after a restart or its own idle timeout):
the operation is tried once more, on a fresh session, within the same deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import httpx2
import mcp_types as types
from macp.tool_gateway.v1 import tool_gateway_service_pb2 as pb
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED

from services.tool_gateway.sessions import (
    REFUSALS,
    Exchange,
    Lease,
    ResultTooLarge,
    SessionLimits,
    SessionPool,
    ToolsChanged,
)

# A catalogue never takes more than this many tools of one server (pages are followed up to it).
MAX_TOOLS_PER_SERVER = 1000


class UpstreamFailure(Exception):
    """An operation on an upstream server failed; `kind` says how (for the status and the audit)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        # "unreachable", "timeout", "protocol", "too_large", "refused" (the server refused the
        # request as invalid), "credentials" (no token for it could be had: upstream_tokens.py);
        # refused before any call (guards.py):
        # "open" (its breaker) and "busy" (its cap on calls in flight).
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class ToolResult:
    text: str
    structured: dict[str, object] | None
    is_error: bool
    duration_ms: int


@dataclass(frozen=True)
class UpstreamLimits:
    timeout_seconds: float
    max_result_bytes: int


class UpstreamHttp:
    """The process's connections to upstreams: the pooled MCP sessions and the one HTTP connection
    pool under them (sessions.py). `on_tools_changed` hears of a server whose tool list changed."""

    def __init__(
        self, limits: UpstreamLimits, sessions: SessionLimits, on_tools_changed: ToolsChanged | None = None
    ) -> None:
        self.limits = limits
        self.sessions = SessionPool(
            sessions, limits.timeout_seconds, limits.max_result_bytes, on_tools_changed
        )

    def forget(self, server_id: str) -> None:
        """The server's registration is gone: its sessions go too."""
        self.sessions.forget(server_id)

    async def close(self) -> None:
        await self.sessions.close()


T = TypeVar("T")


async def _operate(
    server: pb.ToolServer,
    http: UpstreamHttp,
    headers: Mapping[str, str],
    what: str,
    operation: Callable[[Client], Awaitable[T]],
) -> T:
    """`operation` on a session of `server` within the server's deadline; tried once more on a fresh
    session when the server has ended the one it ran on, and on no other failure."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + http.limits.timeout_seconds
    for attempt in (1, 2):
        exchange = Exchange()
        lease: Lease | None = None
        try:
            async with (
                asyncio.timeout_at(deadline),
                http.sessions.lease(server, headers, exchange) as lease,
            ):
                return await operation(lease.client)
        except UpstreamFailure:
            raise
        except Exception as exc:  # every failure of this one server is its own, never the caller's
            if exchange.expired and attempt == 1:
                continue
            fault = lease.session.fault if lease is not None else None
            raise _failure(server, what, exc, exchange, fault) from exc
    raise AssertionError("unreachable")  # the second attempt returns or raises


def _first_cause(exc: BaseException) -> BaseException:
    """The SDK's transport runs in an anyio task group, which wraps what failed in a group."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _failure(
    server: pb.ToolServer, what: str, exc: BaseException, exchange: Exchange, fault: BaseException | None
) -> UpstreamFailure:
    """The failure of one operation: what its own responses showed first, then how the session it
    ran on ended (`fault`) when that cut it short, then the exception itself."""
    exc = _first_cause(exc)
    name = f"tool server {server.name}"
    if exchange.over or isinstance(exc, ResultTooLarge):
        return UpstreamFailure("too_large", f"{name}: {what}: the answer is over the cap")
    if isinstance(exc, TimeoutError):
        return UpstreamFailure("timeout", f"{name}: {what} timed out")
    if exchange.errors:
        return UpstreamFailure("protocol", f"{name}: {what}: the server answered HTTP {exchange.errors[-1]}")
    broken = exchange.broken or exc
    if isinstance(broken, httpx2.HTTPError | OSError):
        return UpstreamFailure("unreachable", f"{name} is unreachable: {broken}")
    if isinstance(exc, MCPError) and exc.code == CONNECTION_CLOSED and fault is not None:
        # Another operation's failure ended the session this one was waiting on.
        kind = "unreachable" if isinstance(fault, httpx2.HTTPError | OSError) else "protocol"
        return UpstreamFailure(kind, f"{name}: {what} failed: its session ended ({fault})")
    if isinstance(exc, MCPError):
        # The server refusing the request itself (an unknown method, arguments its schema refuses)
        # is the caller's to fix; anything else is the server failing to speak MCP.
        kind = "refused" if exc.code in REFUSALS else "protocol"
        return UpstreamFailure(kind, f"{name}: {what} failed: {exc.message}")
    return UpstreamFailure("protocol", f"{name}: {what} failed: {exc!r}")


async def list_tools(
    server: pb.ToolServer, http: UpstreamHttp, headers: Mapping[str, str]
) -> list[types.Tool]:
    """Every tool `server` lists, following its pages; more than MAX_TOOLS_PER_SERVER is a failure
    of the server (a catalogue that silently lost some tools would be worse)."""

    async def listing(client: Client) -> list[types.Tool]:
        tools: list[types.Tool] = []
        cursor: str | None = None
        while True:
            page = await client.list_tools(cursor=cursor)
            tools.extend(page.tools)
            if len(tools) > MAX_TOOLS_PER_SERVER:
                raise UpstreamFailure(
                    "protocol",
                    f"tool server {server.name} lists more than {MAX_TOOLS_PER_SERVER} tools, "
                    "the most the gateway takes of one server",
                )
            cursor = page.next_cursor
            if not cursor:
                return tools

    return await _operate(server, http, headers, "listing tools", listing)


async def call_tool(
    server: pb.ToolServer,
    tool: str,
    arguments: dict[str, object],
    http: UpstreamHttp,
    headers: Mapping[str, str],
) -> ToolResult:
    started = time.monotonic()

    async def calling(client: Client) -> types.CallToolResult:
        return await client.call_tool(tool, arguments)

    result = await _operate(server, http, headers, f"calling {tool}", calling)
    duration_ms = int((time.monotonic() - started) * 1000)
    text = "\n".join(item.text for item in result.content if isinstance(item, types.TextContent))
    if len(text.encode()) > http.limits.max_result_bytes:
        raise UpstreamFailure("too_large", f"tool server {server.name}: {tool}'s result is over the cap")
    return ToolResult(text, result.structured_content, bool(result.is_error), duration_ms)
