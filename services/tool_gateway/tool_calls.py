"""Calls of a tenant's tools: the catalogue name resolved to the tenant's server, the upstream
called, the call audited (who, through which actors, which server and tool, how it went, how long)."""

from __future__ import annotations

import asyncpg
from google.protobuf import json_format
from macp.tool_gateway.v1 import tool_gateway_service_pb2 as pb

from services.runtime import audit
from services.runtime.audit import AuditEvent, Who
from services.runtime.errors import DomainError, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from services.runtime.principal import Principal
from services.tool_gateway import upstream
from services.tool_gateway.catalogue import split_name
from services.tool_gateway.guards import ServerGuards
from services.tool_gateway.server_store import ServerStore
from services.tool_gateway.upstream import UpstreamFailure, UpstreamHttp
from services.tool_gateway.upstream_tokens import UpstreamTokens

# How each kind of upstream failure reaches the caller.
_STATUS: dict[str, type[DomainError]] = {
    "unreachable": Unavailable,
    "timeout": Unavailable,
    "too_large": ResourceExhausted,
    "protocol": Unavailable,
    "refused": InvalidArgument,
    "open": Unavailable,
    "busy": ResourceExhausted,
    "credentials": Unavailable,
}


class ToolCalls:
    def __init__(
        self,
        store: ServerStore,
        pool: asyncpg.Pool,
        http: UpstreamHttp,
        guards: ServerGuards,
        tokens: UpstreamTokens,
    ) -> None:
        self._store = store
        self._pool = pool
        self._http = http
        self._guards = guards
        self._tokens = tokens

    async def call(self, principal: Principal, request: pb.CallToolRequest) -> pb.CallToolResponse:
        server_name, tool = split_name(request.name)
        server = await self._store.by_name(principal.tenant_id, server_name)
        if server is None:
            raise NotFound(f"name: the tenant has no tool server named {server_name}")
        arguments = json_format.MessageToDict(request.arguments)
        try:
            headers = await self._tokens.headers(server)
            async with self._guards.guarding(server):
                result = await upstream.call_tool(server, tool, arguments, self._http, headers)
        except UpstreamFailure as failure:
            await self._audit(principal, server, tool, failure.kind, 0)
            raise _STATUS[failure.kind](failure.message) from None
        await self._audit(
            principal, server, tool, "tool_error" if result.is_error else "ok", result.duration_ms
        )
        response = pb.CallToolResponse(
            text=result.text, is_error=result.is_error, duration_ms=result.duration_ms
        )
        if result.structured is not None:
            json_format.ParseDict(result.structured, response.structured_content)
        return response

    async def _audit(
        self, principal: Principal, server: pb.ToolServer, tool: str, result: str, duration_ms: int
    ) -> None:
        await audit.record(
            self._pool,
            AuditEvent(
                Who.of(principal),
                audit.TOOL_CALL,
                f"tool-server/{server.id}",
                detail={
                    "server": server.name,
                    "tool": tool,
                    "result": result,
                    "duration_ms": str(duration_ms),
                },
            ),
        )
