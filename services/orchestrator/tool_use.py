"""An agent's tools in its turn: the tools it may use, and each call its model asks for, run through
the tool gateway, stored in the conversation and shown to the clients.

Every gateway call is made inside `acting_agent(acting(agent))`, like the turn's Generate: the
gateway sees the user as subject and the agent in `act`, so it lists only the tools the agent
resource allows and refuses any other (services/tool_gateway/agent_tools.py), and each upstream gets
a token of its own naming the user and the agent, never the user's. A call's failure (refused,
unavailable, over a limit) is not the turn's: the model is told, as the call's result, and goes on.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable

import grpc
from macp.agent_proxy.v1 import agent_proxy_service_pb2 as proxy_pb
from macp.common.v1 import error_pb2
from macp.conversation.v1 import conversation_service_pb2 as conversation_pb
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb
from macp.tool_gateway.v1 import tool_gateway_service_pb2 as gateway_pb

from services.orchestrator.downstream import Downstream, acting
from services.orchestrator.ledger import Ledger
from services.orchestrator.transcript import MAX_TEXT
from services.runtime.auth.caller_tokens import acting_agent
from services.runtime.errors import REASON_METADATA_KEY

log = logging.getLogger("macp.orchestrator.tool_use")

Emit = Callable[[pb.ConversationEvent], Awaitable[None]]

# ConversationLimits.max_tool_calls_per_turn when the conversation sets none.
DEFAULT_MAX_TOOL_CALLS = 8
# How much of a result a ToolCallCompleted event carries; the stored message has it whole.
RESULT_PREVIEW_CHARS = 2000
# The tool names both provider APIs take (Anthropic's and OpenAI's rule): a catalogue name
# outside it cannot be offered to a model.
_PROVIDER_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_DESCRIPTION_CHARS = 4096


def max_tool_calls(conversation: conversation_pb.Conversation | None) -> int:
    if conversation is None or not conversation.limits.max_tool_calls_per_turn:
        return DEFAULT_MAX_TOOL_CALLS
    return conversation.limits.max_tool_calls_per_turn


class Toolbox:
    """The tool gateway as a turn uses it."""

    def __init__(self, downstream: Downstream, ledger: Ledger) -> None:
        self._downstream = downstream
        self._ledger = ledger

    async def definitions(self, agent: conversation_pb.Agent) -> list[proxy_pb.ToolDefinition]:
        """The tools `agent` may use now, as the model is offered them (none if it is allowed none,
        without asking the gateway). A server that is down has its tools left out."""
        if not agent.allowed_tools:
            return []
        with acting_agent(acting(agent)):
            reply = await self._downstream.tool_gateway.ListTools(
                gateway_pb.ListToolsRequest(), timeout=self._downstream.timeout
            )
        offered = []
        for tool in reply.tools:
            if not tool.available:
                continue
            if not _PROVIDER_TOOL_NAME.match(tool.name):
                log.info("tool %s is not offered: its name is not one the provider APIs take", tool.name)
                continue
            offered.append(
                proxy_pb.ToolDefinition(
                    name=tool.name,
                    description=tool.description[:_DESCRIPTION_CHARS],
                    input_schema=tool.input_schema,
                )
            )
        return offered

    async def run(
        self,
        call: proxy_pb.ToolCall,
        *,
        agent: conversation_pb.Agent,
        turn_id: str,
        conversation_id: str,
        emit: Emit,
        refusal: str | None = None,
    ) -> proxy_pb.ChatMessage:
        """Run one call (or refuse it with `refusal`), store it with its result, tell the clients;
        the result as the model is given it."""
        await emit(
            pb.ConversationEvent(
                tool_call_started=pb.ToolCallStarted(
                    turn_id=turn_id,
                    agent_id=agent.id,
                    tool_call_id=call.id,
                    name=call.name,
                    arguments=call.arguments,
                )
            )
        )
        started = time.monotonic()
        error: error_pb2.ErrorDetail | None = None
        if refusal is not None:
            text, is_error = refusal, True
            error = error_pb2.ErrorDetail(
                reason="TOOL_CALL_LIMIT", domain="macp.orchestrator", message=refusal
            )
        else:
            text, is_error, error = await self._call(call, agent, turn_id, conversation_id)
        duration_ms = int((time.monotonic() - started) * 1000)
        text = text[-MAX_TEXT:] if len(text) > MAX_TEXT else text
        record = conversation_pb.ToolCallRecord(
            tool_call_id=call.id,
            name=call.name,
            arguments=call.arguments,
            is_error=is_error,
            duration_ms=duration_ms,
        )
        message_id = await self._ledger.store_tool_call(conversation_id, agent.id, turn_id, record, text)
        completed = pb.ToolCallCompleted(
            turn_id=turn_id,
            agent_id=agent.id,
            tool_call_id=call.id,
            name=call.name,
            result=text[:RESULT_PREVIEW_CHARS],
            result_truncated=len(text) > RESULT_PREVIEW_CHARS,
            is_error=is_error,
            duration_ms=duration_ms,
            message_id=message_id,
        )
        if error is not None:
            completed.error.CopyFrom(error)
        await emit(pb.ConversationEvent(tool_call_completed=completed))
        return proxy_pb.ChatMessage(
            role=proxy_pb.CHAT_ROLE_TOOL,
            text=text or "(empty result)",
            tool_result=proxy_pb.ToolResult(tool_call_id=call.id, is_error=is_error),
        )

    async def _call(
        self, call: proxy_pb.ToolCall, agent: conversation_pb.Agent, turn_id: str, conversation_id: str
    ) -> tuple[str, bool, error_pb2.ErrorDetail | None]:
        """The call through the gateway: its text, whether it is an error, and the gateway's error."""
        try:
            with acting_agent(acting(agent)):
                reply = await self._downstream.tool_gateway.CallTool(
                    gateway_pb.CallToolRequest(
                        name=call.name,
                        arguments=call.arguments,
                        conversation_id=conversation_id,
                        turn_id=turn_id,
                        tool_call_id=call.id,
                    ),
                    timeout=self._downstream.timeout,
                )
        except grpc.aio.AioRpcError as exc:
            trailing = dict(exc.trailing_metadata() or ())
            reason = trailing.get(REASON_METADATA_KEY)
            message = f"the tool gateway did not run {call.name}: {exc.code().name}: {exc.details()}"
            detail = error_pb2.ErrorDetail(
                reason=reason if isinstance(reason, str) else exc.code().name,
                domain="macp.tool_gateway",
                message=message,
            )
            return message, True, detail
        return reply.text, reply.is_error, None


async def run_all(
    toolbox: Toolbox,
    calls: list[proxy_pb.ToolCall],
    *,
    allowed: int,
    limit: int,
    agent: conversation_pb.Agent,
    turn_id: str,
    conversation_id: str,
    emit: Emit,
) -> list[proxy_pb.ChatMessage]:
    """The calls of one generation, concurrently; past the first `allowed`, each is refused as over
    the conversation's `limit`. The results in the calls' order."""
    refusal = f"not run: this conversation allows {limit} tool calls in one turn, and they are used up"
    return list(
        await asyncio.gather(
            *(
                toolbox.run(
                    call,
                    agent=agent,
                    turn_id=turn_id,
                    conversation_id=conversation_id,
                    emit=emit,
                    refusal=None if index < allowed else refusal,
                )
                for index, call in enumerate(calls)
            )
        )
    )
