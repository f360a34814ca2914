"""A tenant's tool catalogue: the union of its servers' tools, each named `<server>__<tool>`.

Every server is listed concurrently, each under its own deadline; a server that fails marks its own
tools unavailable (as last seen) and is named with the reason, and hides nothing else. A server's
list is reused for `catalogue_seconds` (keyed by the server's id and etag, so a re-registered server
is listed afresh); this process's copy only, which is safe with any number of gateway processes, as
each lists for itself.
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
from services.tool_gateway.settings import ToolGatewaySettings
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
    at: float


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
        self, settings: ToolGatewaySettings, http: UpstreamHttp, guards: ServerGuards, tokens: UpstreamTokens
    ) -> None:
        self._settings = settings
        self._http = http
        self._guards = guards
        self._tokens = tokens
        self._listed: dict[tuple[str, str], _Listed] = {}

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
        key = (server.id, server.etag)
        listed = self._listed.get(key)
        now = time.monotonic()
        if listed is not None and now - listed.at < self._settings.catalogue_seconds:
            return listed.tools, None
        try:
            headers = await self._tokens.headers(server)
            async with self._guards.guarding(server):
                tools = tuple(await upstream.list_tools(server, self._http, headers))
        except UpstreamFailure as failure:
            return (listed.tools if listed is not None else ()), failure
        self._listed[key] = _Listed(tools, now)
        return tools, None

    def forget(self, server_id: str) -> None:
        """The server's registration is gone: its list, and its upstream sessions, go too."""
        self._http.forget(server_id)
        for key in [key for key in self._listed if key[0] == server_id]:
            del self._listed[key]
