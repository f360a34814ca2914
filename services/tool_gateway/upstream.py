"""Calls to one upstream MCP server, with the official SDK's client over Streamable HTTP.

Each operation opens its own connection to the server and closes it at the end: the SDK's client
negotiates the protocol itself (the stateless 2026-07-28 transport where the server speaks it, the
2025-11-25 session otherwise), and no session outlives the call that opened it, so nothing breaks
when a server restarts or a gateway process changes between two calls. Every operation runs under
the server's deadline. What the upstream does wrong (unreachable, too slow, out of protocol, an
answer over the size cap) becomes an `UpstreamFailure` naming the server and what happened, for
that operation only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import httpx2
import mcp_types as types
from macp.tool_gateway.v1 import tool_gateway_service_pb2 as pb
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, METHOD_NOT_FOUND

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


class ResultTooLarge(Exception):
    pass


@dataclass
class _Operation:
    """What one upstream operation sends and what its responses showed, for the shared transport:
    its credential, the result cap, the cap's trips and the HTTP error statuses the server
    answered (a 401 refusing the token, a 500), which the SDK reports only as "an error"."""

    headers: Mapping[str, str]
    limit: int
    over: list[int] = field(default_factory=list)
    errors: list[int] = field(default_factory=list)


# The operation in progress: the SDK's transport tasks are started inside the operation's own
# client, so they see it (services/runtime/principal.py explains the pattern).
_operation: ContextVar[_Operation | None] = ContextVar("macp_tool_operation", default=None)


class _CappedBody(httpx2.AsyncByteStream):
    """A response body that stops with `ResultTooLarge` past `limit` bytes, before holding them."""

    def __init__(self, body: httpx2.AsyncByteStream, operation: _Operation) -> None:
        self._body = body
        self._operation = operation

    async def __aiter__(self) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in self._body:
            seen += len(chunk)
            if seen > self._operation.limit:
                self._operation.over.append(seen)
                raise ResultTooLarge(f"the answer is over {self._operation.limit} bytes")
            yield chunk

    async def aclose(self) -> None:
        await self._body.aclose()


class _OperationTransport(httpx2.AsyncBaseTransport):
    """HTTP to upstreams for every operation of the process, on one connection pool: each request
    carries its operation's credential, and its response may not exceed the operation's result cap
    (a server that sends 50 MB is cut off at the cap, never read whole into the gateway's memory)."""

    def __init__(self) -> None:
        self._inner = httpx2.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        operation = _operation.get()
        if operation is None:
            return await self._inner.handle_async_request(request)
        request.headers.update(operation.headers)
        response = await self._inner.handle_async_request(request)
        if response.status_code >= 400:
            operation.errors.append(response.status_code)
        body = _CappedBody(response.stream, operation)  # type: ignore[arg-type]
        return httpx2.Response(
            response.status_code, headers=response.headers, stream=body, extensions=response.extensions
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


class UpstreamHttp:
    """The process's one HTTP client to upstreams: building one costs about 30 ms of CPU (its TLS
    context), more than a whole call, and its pool keeps connections to each server open."""

    def __init__(self, limits: UpstreamLimits) -> None:
        self.limits = limits
        self.client = httpx2.AsyncClient(
            timeout=httpx2.Timeout(limits.timeout_seconds), transport=_OperationTransport()
        )

    async def close(self) -> None:
        await self.client.aclose()


@asynccontextmanager
async def _connected(
    server: pb.ToolServer, http: UpstreamHttp, operation: _Operation
) -> AsyncIterator[Client]:
    """A client of `server` for one operation, on the shared HTTP client, within its deadline."""
    reset = _operation.set(operation)
    try:
        transport = streamable_http_client(
            server.url, http_client=http.client, max_sse_event_size=http.limits.max_result_bytes
        )
        async with (
            asyncio.timeout(http.limits.timeout_seconds),
            Client(transport, raise_exceptions=True, cache=None) as client,
        ):
            yield client
    finally:
        _operation.reset(reset)


def _first_cause(exc: BaseException) -> BaseException:
    """The SDK's transport runs in an anyio task group, which wraps what failed in a group."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _failure(server: pb.ToolServer, what: str, exc: BaseException, capped: _Operation) -> UpstreamFailure:
    exc = _first_cause(exc)
    if capped.over or isinstance(exc, ResultTooLarge):
        return UpstreamFailure("too_large", f"tool server {server.name}: {what}: the answer is over the cap")
    if isinstance(exc, TimeoutError):
        return UpstreamFailure("timeout", f"tool server {server.name}: {what} timed out")
    if capped.errors:
        return UpstreamFailure(
            "protocol", f"tool server {server.name}: {what}: the server answered HTTP {capped.errors[-1]}"
        )
    if isinstance(exc, MCPError):
        # The server refusing the request itself (an unknown method, arguments its schema refuses)
        # is the caller's to fix; anything else is the server failing to speak MCP.
        kind = "refused" if exc.code in (METHOD_NOT_FOUND, INVALID_PARAMS) else "protocol"
        return UpstreamFailure(kind, f"tool server {server.name}: {what} failed: {exc.message}")
    if isinstance(exc, httpx2.HTTPError | OSError):
        return UpstreamFailure("unreachable", f"tool server {server.name} is unreachable: {exc}")
    return UpstreamFailure("protocol", f"tool server {server.name}: {what} failed: {exc!r}")


async def list_tools(
    server: pb.ToolServer, http: UpstreamHttp, headers: Mapping[str, str]
) -> list[types.Tool]:
    """Every tool `server` lists, following its pages; more than MAX_TOOLS_PER_SERVER is a failure
    of the server (a catalogue that silently lost some tools would be worse)."""
    capped = _Operation(headers, http.limits.max_result_bytes)
    try:
        async with _connected(server, http, capped) as client:
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
    except UpstreamFailure:
        raise
    except Exception as exc:  # every failure of this one server is its own, never the catalogue's
        raise _failure(server, "listing tools", exc, capped) from exc


async def call_tool(
    server: pb.ToolServer,
    tool: str,
    arguments: dict[str, object],
    http: UpstreamHttp,
    headers: Mapping[str, str],
) -> ToolResult:
    started = time.monotonic()
    capped = _Operation(headers, http.limits.max_result_bytes)
    try:
        async with _connected(server, http, capped) as client:
            result = await client.call_tool(tool, arguments)
    except Exception as exc:
        raise _failure(server, f"calling {tool}", exc, capped) from exc
    duration_ms = int((time.monotonic() - started) * 1000)
    text = "\n".join(item.text for item in result.content if isinstance(item, types.TextContent))
    if len(text.encode()) > http.limits.max_result_bytes:
        raise UpstreamFailure("too_large", f"tool server {server.name}: {tool}'s result is over the cap")
    return ToolResult(text, result.structured_content, bool(result.is_error), duration_ms)
