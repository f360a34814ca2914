"""Tool calls as usage: a quota hold before the upstream is called, one TOOL_CALL event after it
answered, settled the way a turn is (services/orchestrator/ledger.py).

Each call gets an id, which is its hold's reservation id and (through `tool_call_event_id`) its
event's id. Before the upstream, metering Reserve holds one `METER_TOOL_CALLS` call: a tenant past a
hard limit (the free tier's monthly calls) is refused there, RESOURCE_EXHAUSTED naming the quota,
and the upstream is never called. After the upstream answered (a result or the tool's own error)
the event goes two ways at once, both carrying the same event id:

- into the usage outbox (services/runtime/usage_publisher.py), the agent proxy's: in Redis before
  the call is answered, delivered to Kafka later, so a crash or a restart of this process after
  the upstream answered loses no call;
- to metering Commit with the hold, which records it in Postgres and settles the hold at once, so
  the next Reserve sees it.

Metering keeps one row per event id, so whichever copy arrives first counts and the other, or a
retried Commit, counts nothing. A call the upstream never answered, or refused before it, is not
usage: its hold is released (or, if even that fails, lapses after its TTL).

With holds off (`MACP_TOOL_GATEWAY_QUOTA_HOLDS=off`, for a partial mesh without metering: the
benchmark, tests of other parts) nothing is asked of metering and no quota is enforced; every
call's event still goes into the outbox, so usage is still counted and billed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
from google.protobuf.duration_pb2 import Duration
from macp.common.v1 import usage_pb2
from macp.metering.v1 import metering_service_pb2 as metering_pb
from macp.metering.v1 import metering_service_pb2_grpc as metering_grpc

from services.runtime.errors import ResourceExhausted, relayed
from services.runtime.principal import Principal
from services.runtime.protos import now_timestamp
from services.runtime.usage_ids import tool_call_event_id
from services.tool_gateway.agent_tools import acting_agent_id

log = logging.getLogger("macp.tool_gateway.usage")

QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
# What a hold outlives: the upstream's deadline, and the settling after it.
HOLD_MARGIN_SECONDS = 30

Publish = Callable[[usage_pb2.UsageEvent], Awaitable[None]]


class ToolQuotaExceeded(ResourceExhausted):
    reason = QUOTA_EXCEEDED


@dataclass(frozen=True)
class Metered:
    """What a TOOL_CALL event says about one call that reached its upstream."""

    server: str
    tool: str
    duration_ms: int
    result_bytes: int
    # The conversation and turn the call was made in, when the caller said (an agent's turn).
    conversation_id: str = ""
    turn_id: str = ""


def tool_call_event(principal: Principal, call_id: str, metered: Metered) -> usage_pb2.UsageEvent:
    """The usage event of one call: the caller's tenant and user (the token's subject), the agent
    its act chain names, if any, and the conversation and turn the request named."""
    return usage_pb2.UsageEvent(
        event_id=tool_call_event_id(call_id),
        time=now_timestamp(),
        tenant_id=principal.tenant_id,
        user_id=principal.user_id,
        agent_id=_agent_id(principal),
        conversation_id=metered.conversation_id,
        turn_id=metered.turn_id,
        type=usage_pb2.USAGE_EVENT_TYPE_TOOL_CALL,
        dimensions=usage_pb2.UsageDimensions(
            tool_server=metered.server,
            tool=metered.tool,
            duration_ms=metered.duration_ms,
            result_bytes=metered.result_bytes,
        ),
        actor_chain=principal.actor_chain,
    )


def _agent_id(principal: Principal) -> str:
    """The acting agent's id, when it is one an event may carry (agents' ids are UUIDs; an actor
    named otherwise stays in the actor chain only)."""
    agent_id = acting_agent_id(principal) or ""
    try:
        canonical = str(uuid.UUID(agent_id)) == agent_id.lower()
    except ValueError:
        canonical = False
    return agent_id if canonical else ""


class CallMetering:
    """Holds, settles and releases tool calls at metering, on the caller's behalf (its mesh channel
    exchanges the caller's token, with `usage:write` added by the gateway's internal client)."""

    def __init__(
        self,
        metering: metering_grpc.MeteringServiceStub,
        publish: Publish,
        *,
        upstream_timeout_seconds: float,
        rpc_timeout_seconds: float,
        holds: bool = True,
    ) -> None:
        self._metering = metering
        self._holds = holds
        self._publish = publish
        self._hold_ttl = Duration(seconds=math.ceil(upstream_timeout_seconds) + HOLD_MARGIN_SECONDS)
        self._timeout = rpc_timeout_seconds

    async def reserve(self, principal: Principal, call_id: str) -> None:
        """Hold one call; `ToolQuotaExceeded` (metering's words, naming the quota) past a hard
        limit, the relayed failure if metering cannot answer."""
        if not self._holds:
            return
        request = metering_pb.ReserveRequest(
            reservation_id=call_id,
            tenant_id=principal.tenant_id,
            meter=metering_pb.METER_TOOL_CALLS,
            quantity=1,
            ttl=self._hold_ttl,
        )
        try:
            await self._metering.Reserve(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise ToolQuotaExceeded(
                    exc.details() or "QUOTA_EXCEEDED: the tool calls quota is reached"
                ) from None
            raise relayed(exc, "metering (holding the tool call's quota)") from None

    async def settle(self, principal: Principal, call_id: str, metered: Metered) -> usage_pb2.UsageEvent:
        """The call's event, into the outbox and committed with its hold, both at once. Neither
        failing fails the call, whose upstream already answered: the other copy still counts it
        (a hold left open lapses after its TTL)."""
        event = tool_call_event(principal, call_id, metered)
        if not self._holds:
            await self._publish(event)
            return event
        commit = metering_pb.CommitRequest(reservation_id=call_id, usage=[event])
        published, committed = await asyncio.gather(
            self._publish(event),
            self._metering.Commit(commit, timeout=self._timeout),
            return_exceptions=True,
        )
        for step, outcome in (("publishing", published), ("committing", committed)):
            if isinstance(outcome, BaseException):
                if isinstance(outcome, asyncio.CancelledError):
                    raise outcome
                log.warning(
                    "%s a tool call's usage failed; the other copy counts it",
                    step,
                    extra={"event_id": event.event_id, "error": repr(outcome)},
                )
        if isinstance(published, BaseException) and isinstance(committed, BaseException):
            log.error(
                "a tool call's usage was neither published nor committed", extra={"event_id": event.event_id}
            )
        return event

    async def release(self, call_id: str, reason: str) -> None:
        """Frees the hold of a call that was not usage; a failure only leaves it to lapse."""
        if not self._holds:
            return
        try:
            await self._metering.Release(
                metering_pb.ReleaseRequest(reservation_id=call_id, reason=reason[:500]), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as exc:
            log.warning("releasing a tool call's hold failed; it lapses", extra={"error": exc.details()})
