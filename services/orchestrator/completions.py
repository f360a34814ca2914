"""Complete: one agent turn outside any conversation (the edge's OpenAI-compatible endpoint).

It is a turn like any in a round (turns.py): the quota held first, a token delegated to the agent,
Generate through the agent proxy, the usage committed under an id derived from the turn; only
nothing is stored, and the deltas go straight to the caller instead of a conversation's log.

The caller may offer tools of its own (OpenAI's client-side tools): the agent's calls of them end
the turn, returned in CompletionDone for the caller to run; their results come back as tool
messages of its next request, a turn of its own. A turn that ends in calls is an answer like a text
(the model worked for it): it is committed, not released.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import grpc
from macp.agent_proxy.v1 import agent_proxy_service_pb2 as proxy_pb
from macp.common.v1 import agent_settings_pb2, usage_pb2
from macp.conversation.v1 import conversation_service_pb2 as conversation_pb
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb

from services.orchestrator.completion_prompt import completion_prompt
from services.orchestrator.turns import Halt, TurnResult, TurnRunner, TurnSpec
from services.runtime.errors import domain_error
from services.runtime.principal import Caller

# google.rpc.Code numbers (ErrorEvent.code) to their grpc.StatusCode.
_STATUS = {code.value[0]: code for code in grpc.StatusCode}


def _raise(error: pb.ErrorEvent) -> None:
    """An error event of the turn as this RPC's status (Complete answers the caller directly)."""
    raise domain_error(_STATUS.get(error.code, grpc.StatusCode.UNAVAILABLE), error.detail.message)


async def complete(
    runner: TurnRunner,
    caller: Caller,
    agent: conversation_pb.Agent,
    request: pb.CompleteRequest,
    overrides: agent_settings_pb2.GenerationSettings,
    *,
    turn_id: str,
) -> AsyncIterator[pb.CompleteResponse]:
    system_prompt, messages = completion_prompt(agent, request.messages)
    spec = TurnSpec(
        turn_id=turn_id,
        agent=agent,
        caller=caller,
        conversation_id="",
        messages=messages,
        system_prompt=system_prompt,
        overrides=overrides,
        client_tools=tuple(request.tools),
        tool_choice=request.tool_choice if request.HasField("tool_choice") else None,
    )
    refusal = await runner.reserve_turn(spec.conversation_id, spec.turn_id)
    if refusal is not None:
        _raise(refusal)
    started = time.monotonic()
    deltas: asyncio.Queue[pb.CompleteResponse | None] = asyncio.Queue()

    async def emit(event: pb.ConversationEvent) -> None:
        await deltas.put(pb.CompleteResponse(delta=event.token_delta))

    async def run() -> tuple[TurnResult, proxy_pb.GenerateCompletion | None]:
        try:
            return await runner.generate(spec, emit, Halt())
        finally:
            await deltas.put(None)

    generating = asyncio.create_task(run())
    settled = False
    relayed: list[str] = []
    try:
        while (item := await deltas.get()) is not None:
            relayed.append(item.delta.text)
            yield item
        result, completion = await generating
        if not result.text and not result.tool_calls:
            await runner.release(turn_id, "no answer")
            settled = True
            if result.error is not None:
                _raise(result.error)
        usage = await runner.commit_turn(spec, result, completion, started)
        settled = True
        if not isinstance(usage, usage_pb2.UsageEvent):
            _raise(usage)
        if result.error is not None and not result.text:
            _raise(result.error)
        yield pb.CompleteResponse(
            done=pb.CompletionDone(
                outcome=result.outcome, text=result.text, usage=result.usage, tool_calls=result.tool_calls
            )
        )
    finally:
        if not generating.done():
            generating.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await generating
        if not settled:
            # The agent proxy bills no call its caller cut (agent_proxy/usage.py): what reached
            # the caller is billed here, and a turn that said nothing is released.
            await asyncio.shield(_settle_cut(runner, spec, "".join(relayed), started))


async def _settle_cut(runner: TurnRunner, spec: TurnSpec, text: str, started: float) -> None:
    if not text:
        await runner.release(spec.turn_id, "the caller left before the answer began")
        return
    await runner.commit_turn(spec, TurnResult(pb.TURN_OUTCOME_CANCELLED, text), None, started)
