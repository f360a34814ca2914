"""Calls of a tenant's tools: the catalogue name resolved to the tenant's server, the tenant's
rate limit of the tool counted (call_limits.py), one call held against its quota (call_metering.py),
the upstream called, the call billed if the upstream answered, and audited (who, through which
actors, which server and tool, how it went, how long).

A call refused before the upstream is audited with why: `rate_limited`, `quota`, `metering` (the
hold could not be asked for), or the guard or credential failure that stopped it."""

from __future__ import annotations

import asyncio
import json
import uuid

import asyncpg
from google.protobuf import json_format
from macp.tool_gateway.v1 import tool_gateway_service_pb2 as pb

from services.runtime import audit
from services.runtime.audit import AuditEvent, Who
from services.runtime.errors import DomainError, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from services.runtime.principal import Principal
from services.tool_gateway import upstream
from services.tool_gateway.call_limits import CallLimits, ToolRateLimited
from services.tool_gateway.call_metering import CallMetering, Metered, ToolQuotaExceeded
from services.tool_gateway.catalogue import split_name
from services.tool_gateway.guards import ServerGuards
from services.tool_gateway.server_store import ServerStore
from services.tool_gateway.upstream import ToolResult, UpstreamFailure, UpstreamHttp
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
        limits: CallLimits,
        metering: CallMetering,
    ) -> None:
        self._store = store
        self._pool = pool
        self._http = http
        self._guards = guards
        self._tokens = tokens
        self._limits = limits
        self._metering = metering

    async def call(self, principal: Principal, request: pb.CallToolRequest) -> pb.CallToolResponse:
        server_name, tool = split_name(request.name)
        arguments = json_format.MessageToDict(request.arguments)
        call_id = call_key(principal, request)
        # The server's look-up (Postgres) and the call's count against its rate limit (Redis) do
        # not wait on each other: one round trip's time for both, on every call.
        found, admitted = await asyncio.gather(
            self._store.by_name(principal.tenant_id, server_name),
            self._limits.admit(principal.tenant_id, request.name),
            return_exceptions=True,
        )
        if isinstance(found, BaseException):
            raise found
        server = found
        if server is None:
            raise NotFound(f"name: the tenant has no tool server named {server_name}")
        try:
            if isinstance(admitted, BaseException):
                raise admitted
            await self._metering.reserve(principal, call_id)
        except ToolRateLimited:
            await self._audit(principal, server, tool, "rate_limited", 0, call_id, audit.DENIED)
            raise
        except ToolQuotaExceeded:
            await self._audit(principal, server, tool, "quota", 0, call_id, audit.DENIED)
            raise
        except DomainError:
            await self._audit(principal, server, tool, "metering", 0, call_id)
            raise
        result = await self._upstream(principal, server, tool, arguments, call_id)
        metered = Metered(
            server.name,
            tool,
            result.duration_ms,
            _result_bytes(result),
            request.conversation_id,
            request.turn_id,
        )
        outcome = "tool_error" if result.is_error else "ok"
        # The usage event (Redis, metering) and the audit row (Postgres) are written together.
        await asyncio.gather(
            self._metering.settle(principal, call_id, metered),
            self._audit(principal, server, tool, outcome, result.duration_ms, call_id),
        )
        response = pb.CallToolResponse(
            text=result.text, is_error=result.is_error, duration_ms=result.duration_ms
        )
        if result.structured is not None:
            json_format.ParseDict(result.structured, response.structured_content)
        return response

    async def _upstream(
        self,
        principal: Principal,
        server: pb.ToolServer,
        tool: str,
        arguments: dict[str, object],
        call_id: str,
    ) -> ToolResult:
        """The upstream's answer; the hold `call_id` released if there is none (no usage)."""
        try:
            headers = await self._tokens.headers(server)
            async with self._guards.guarding(server):
                return await upstream.call_tool(server, tool, arguments, self._http, headers)
        except UpstreamFailure as failure:
            await self._metering.release(call_id, f"tool call not answered: {failure.kind}")
            await self._audit(principal, server, tool, failure.kind, 0, call_id)
            raise _STATUS[failure.kind](failure.message) from None
        except BaseException:
            # Cancelled (the caller went away) or failed unexpectedly: no usage to bill; the
            # release must not be cancelled with the call.
            await asyncio.shield(self._metering.release(call_id, "tool call abandoned"))
            raise

    async def _audit(
        self,
        principal: Principal,
        server: pb.ToolServer,
        tool: str,
        result: str,
        duration_ms: int,
        call_id: str,
        outcome: str = audit.SUCCESS,
    ) -> None:
        """`call_id` is the call's quota hold, from which its usage event's id derives
        (`tool_call_event_id`): the audit row and the bill of one call can be matched."""
        await audit.record(
            self._pool,
            AuditEvent(
                Who.of(principal),
                audit.TOOL_CALL,
                f"tool-server/{server.id}",
                outcome=outcome,
                detail={
                    "server": server.name,
                    "tool": tool,
                    "result": result,
                    "duration_ms": str(duration_ms),
                    "call_id": call_id,
                },
            ),
        )


def call_key(principal: Principal, request: pb.CallToolRequest) -> str:
    """The call's id (its quota hold's, from which its usage event's derives): derived from the
    turn and the model's id of the call when the request names both, so the same call of a turn
    is held and metered once however often it is made; else new for each call."""
    if request.turn_id and request.tool_call_id:
        return str(uuid.uuid5(uuid.UUID(request.turn_id), f"{principal.tenant_id}:{request.tool_call_id}"))
    return str(uuid.uuid4())


def _result_bytes(result: ToolResult) -> int:
    """The result's size as the gateway returns it: its text, and its structured content as
    compact JSON (the measure a TOOL_CALL event carries)."""
    size = len(result.text.encode())
    if result.structured is not None:
        size += len(json.dumps(result.structured, separators=(",", ":"), ensure_ascii=False).encode())
    return size
