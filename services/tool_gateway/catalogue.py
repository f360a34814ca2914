"""A tenant's tool catalogue: the union of its servers' tools, each named `<server>__<tool>`.

Every server is listed concurrently, each under its own deadline; a server that fails marks its own
tools unavailable (as last seen) and is named with the reason, and hides nothing else. A server's
list is reused for `catalogue_seconds` (keyed by the server's id and etag, so a re-registered server
is listed afresh) unless the server says its list changed (`ToolLists.changed`); this process's copy
only, which is safe with any number of gateway processes, as each lists for itself.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import mcp_types as types
from google.protobuf import struct_pb2
from macp.tool_gateway.v1 import tool_gateway_service_pb2 as pb

from services.tool_gateway import upstream
from services.tool_gateway.guards import ServerGuards
from services.tool_gateway.upstream import UpstreamFailure, UpstreamHttp
from services.tool_gateway.upstream_tokens import UpstreamTokens

SEPARATOR = "__"


def catalogue_name(server_name: str, tool_name: str) -> str:
    return f"{server_name}{SEPARATOR}{tool_name}"


def split_name(name: str) -> tuple[str, str]:
    """(server name, tool name) of a catalogue name (the proto's pattern guarantees the separator)."""
    server_name, _, tool_name = name.partition(SEPARATOR)
    return server_name, tool_name


@dataclass(frozen=True)
class _Listed:
    tools: tuple[types.Tool, ...]
    at: float  # when its listing began
    generation: int  # the server's changes heard when its listing began


class ToolLists:
    """Each server's tool list as this process last listed it, reused for `seconds`.

    A server that says its list changed (`changed`: its live upstream sessions hear it, sessions.py)
    has its lists dropped at once, so the next catalogue lists it afresh. A listing that was in
    flight when the change was heard may carry the list from before it and land after the drop:
    each server's changes are counted, and a list is reused only while no change was heard since its
    listing began (it is still what an unavailable server shows as last seen). A server with no live
    session hears nothing, and the TTL alone bounds how stale its list gets."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._listed: dict[tuple[str, str], _Listed] = {}
        self._changes: dict[str, int] = {}

    def fresh(self, server: pb.ToolServer) -> tuple[types.Tool, ...] | None:
        listed = self._listed.get((server.id, server.etag))
        if listed is None or listed.generation != self._changes.get(server.id, 0):
            return None
        return listed.tools if time.monotonic() - listed.at < self._seconds else None

    def last(self, server: pb.ToolServer) -> tuple[types.Tool, ...]:
        listed = self._listed.get((server.id, server.etag))
        return listed.tools if listed is not None else ()

    def generation(self, server_id: str) -> int:
        return self._changes.get(server_id, 0)

    def keep(self, server: pb.ToolServer, tools: tuple[types.Tool, ...], at: float, generation: int) -> None:
        self._listed[(server.id, server.etag)] = _Listed(tools, at, generation)

    def changed(self, server_id: str) -> None:
        """The server says its tool list changed."""
        self._changes[server_id] = self._changes.get(server_id, 0) + 1
        self._drop(server_id)

    def forget(self, server_id: str) -> None:
        self._changes.pop(server_id, None)
        self._drop(server_id)

    def _drop(self, server_id: str) -> None:
        for key in [key for key in self._listed if key[0] == server_id]:
            del self._listed[key]


def _tool(server: pb.ToolServer, tool: types.Tool, available: bool) -> pb.Tool:
    listed = pb.Tool(
        name=catalogue_name(server.name, tool.name),
        server_id=server.id,
        server_name=server.name,
        upstream_name=tool.name,
        description=tool.description or "",
        available=available,
    )
    schema = struct_pb2.Struct()
    schema.update(tool.input_schema)
    listed.input_schema.CopyFrom(schema)
    return listed


class Catalogue:
    def __init__(
        self, lists: ToolLists, http: UpstreamHttp, guards: ServerGuards, tokens: UpstreamTokens
    ) -> None:
        self._lists = lists
        self._http = http
        self._guards = guards
        self._tokens = tokens

    async def tools(self, servers: list[pb.ToolServer]) -> pb.ListToolsResponse:
        outcomes = await asyncio.gather(*(self._server_tools(server) for server in servers))
        response = pb.ListToolsResponse()
        for server, (tools, failure) in zip(servers, outcomes, strict=True):
            response.tools.extend(_tool(server, tool, failure is None) for tool in tools)
            if failure is not None:
                response.unavailable.add(server_id=server.id, server_name=server.name, reason=failure.message)
        response.tools.sort(key=lambda tool: tool.name)
        return response

    async def _server_tools(
        self, server: pb.ToolServer
    ) -> tuple[tuple[types.Tool, ...], UpstreamFailure | None]:
        fresh = self._lists.fresh(server)
        if fresh is not None:
            return fresh, None
        began, generation = time.monotonic(), self._lists.generation(server.id)
        try:
            headers = await self._tokens.headers(server)
            async with self._guards.guarding(server):
                tools = tuple(await upstream.list_tools(server, self._http, headers))
        except UpstreamFailure as failure:
            return self._lists.last(server), failure
        self._lists.keep(server, tools, began, generation)
        return tools, None

    def forget(self, server_id: str) -> None:
        """The server's registration is gone: its list, and its upstream sessions, go too."""
        self._http.forget(server_id)
        self._lists.forget(server_id)
