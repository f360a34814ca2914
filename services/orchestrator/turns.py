"""One agent turn, start to end: reserve quota, Generate as the agent, stream, store, commit.

The order is what keeps money and messages exact: the quota hold comes first (a refused turn
costs nothing and says so); the deltas go to the conversation's event log as they arrive; the
answer is stored once (its message id derives from the turn, so a retried AppendMessage stores it
once); then the hold is committed with the AGENT_TURN usage event, whose id also derives from the
turn, so a second settlement (a takeover's) is the same row in metering. The round is the turn's
only biller: the agent proxy does not bill a turn of a conversation (agent_proxy/usage.py), so a
stored answer and a billed turn always come together. Anything failing on the way releases the
hold and ends the turn with an error event naming what failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import grpc
from macp.agent_proxy.v1 import agent_proxy_service_pb2 as proxy_pb
from macp.common.v1 import agent_settings_pb2, usage_pb2
from macp.conversation.v1 import conversation_service_pb2 as conversation_pb
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb

from services.orchestrator.downstream import Downstream, acting
from services.orchestrator.event_shapes import error_event, rpc_failure
from services.orchestrator.ledger import CHARS_PER_TOKEN, Ledger, Settle
from services.orchestrator.tool_use import DEFAULT_MAX_TOOL_CALLS, Toolbox, run_all
from services.runtime.auth.caller_tokens import acting_agent
from services.runtime.principal import Caller
from services.runtime.protos import now_timestamp
from services.runtime.usage_ids import agent_turn_event_id

log = logging.getLogger("macp.orchestrator.turns")

Emit = Callable[[pb.ConversationEvent], Awaitable[None]]


@dataclass
class Halt:
    """Why the work in flight should stop: a client's cancel or a newer message's interrupt."""

    event: asyncio.Event = field(default_factory=asyncio.Event)
    outcome: pb.TurnOutcome.ValueType = pb.TURN_OUTCOME_CANCELLED
    turn_id: str = ""
    # The halts of turns running side by side under this one (`within`): they stop with it.
    _inner: list[Halt] = field(default_factory=list, repr=False)

    def set(self, outcome: pb.TurnOutcome.ValueType, turn_id: str = "") -> None:
        if not self.event.is_set():
            self.outcome, self.turn_id = outcome, turn_id
            self.event.set()
            for inner in self._inner:
                inner.set(outcome, inner.turn_id or turn_id)

    def is_set(self) -> bool:
        return self.event.is_set()

    def within(self, turn_id: str) -> Halt:
        """The halt of one of several turns in flight at once: set on its own (a cancel naming that
        turn stops it alone) or with this one (a cancel of the round stops them all)."""
        inner = Halt(turn_id=turn_id)
        if self.is_set():
            inner.set(self.outcome, turn_id)
        else:
            self._inner.append(inner)
        return inner


@dataclass(frozen=True)
class TurnSpec:
    """What one turn runs: who, for whom, on what."""

    turn_id: str
    agent: conversation_pb.Agent
    caller: Caller
    conversation_id: str
    messages: list[proxy_pb.ChatMessage]
    system_prompt: str
    # Overrides of the agent's generation settings for this turn (a chat completion's max_tokens).
    overrides: agent_settings_pb2.GenerationSettings | None = None
    # The most tool calls the agent may make in the turn (the conversation's limit).
    max_tool_calls: int = DEFAULT_MAX_TOOL_CALLS
    # A chat completion's own tools: offered instead of the agent's, their calls not run but
    # returned (TurnResult.tool_calls) for the caller to run; and how the model must use them.
    client_tools: tuple[proxy_pb.ToolDefinition, ...] = ()
    tool_choice: proxy_pb.ToolChoice | None = None


@dataclass
class TurnResult:
    outcome: pb.TurnOutcome.ValueType
    text: str = ""
    message_id: str = ""
    usage: usage_pb2.UsageDimensions = field(default_factory=usage_pb2.UsageDimensions)
    error: pb.ErrorEvent | None = None
    # The calls of the caller's tools the model asked for (TurnSpec.client_tools): the turn's end.
    tool_calls: list[proxy_pb.ToolCall] = field(default_factory=list)


class TurnRunner(Ledger):
    """A turn's own steps (reserve, generate, store, commit), on the ledger's settling calls."""

    def __init__(
        self,
        downstream: Downstream,
        *,
        turn_timeout: float,
        reservation_ttl: int,
        settle_seconds: float = 60.0,
        reserve_seconds: float = 10.0,
    ) -> None:
        super().__init__(
            downstream,
            reservation_ttl=reservation_ttl,
            settle_seconds=settle_seconds,
            reserve_seconds=reserve_seconds,
        )
        self._turn_timeout = turn_timeout
        self._toolbox = Toolbox(downstream, self)

    async def generate(
        self, spec: TurnSpec, emit: Emit, halt: Halt
    ) -> tuple[TurnResult, proxy_pb.GenerateCompletion | None]:
        """Stream the agent's answer into the log as TokenDelta events; stop early on `halt`. When
        the model asks for tool calls, run them (tool_use.py) and generate again with their results,
        until it answers; the completion returned sums the usage of every generation. Calls of the
        caller's own tools (a chat completion's) are not run: they end the turn, in its result."""
        agent = spec.agent
        tools = await self._tools_of(spec, emit)
        messages = list(spec.messages)
        pieces: list[str] = []
        completion: proxy_pb.GenerateCompletion | None = None
        calls_made = 0
        while True:
            step = await self._generation(spec, self._request(spec, messages, tools), emit, halt, pieces)
            completion = _combined(completion, step.completion)
            if step.ended is not None:
                step.ended.text = "".join(pieces)
                return step.ended, completion
            if step.completion is None or step.completion.finish_reason != proxy_pb.FINISH_REASON_TOOL_USE:
                break
            if not step.tool_calls:
                break
            if spec.client_tools:
                # The caller's own tools: it runs the calls, so they end the turn as its answer.
                return TurnResult(
                    pb.TURN_OUTCOME_COMPLETED, "".join(pieces), tool_calls=step.tool_calls
                ), completion
            if calls_made >= spec.max_tool_calls:
                # Told its calls are used up, the model asks again: its text so far is the answer.
                await emit(
                    pb.ConversationEvent(
                        error=error_event(
                            grpc.StatusCode.RESOURCE_EXHAUSTED,
                            "TOOL_CALL_LIMIT",
                            f"agent {agent.name} asked for more than the {spec.max_tool_calls} tool "
                            "calls this conversation allows in one turn; its turn ends here",
                            spec.turn_id,
                        )
                    )
                )
                break
            results = await self._run_tools(spec, step.tool_calls, calls_made, emit, halt)
            if results is None:
                return TurnResult(halt.outcome, "".join(pieces)), completion
            calls_made += len(step.tool_calls)
            messages.append(
                proxy_pb.ChatMessage(
                    role=proxy_pb.CHAT_ROLE_ASSISTANT, text=step.text, tool_calls=step.tool_calls
                )
            )
            messages.extend(results)
        text = "".join(pieces)
        if halt.is_set():
            return TurnResult(halt.outcome, text), completion
        outcome = pb.TURN_OUTCOME_COMPLETED
        if completion is not None and completion.finish_reason == proxy_pb.FINISH_REASON_MAX_TOKENS:
            outcome = pb.TURN_OUTCOME_TRUNCATED
        if completion is None or completion.finish_reason == proxy_pb.FINISH_REASON_ERROR:
            return TurnResult(
                pb.TURN_OUTCOME_FAILED,
                text,
                error=error_event(
                    grpc.StatusCode.UNAVAILABLE,
                    "GENERATE_FAILED",
                    f"agent {agent.name}'s provider ended the answer with an error",
                    spec.turn_id,
                ),
            ), completion
        return TurnResult(outcome, text), completion

    async def _tools_of(self, spec: TurnSpec, emit: Emit) -> list[proxy_pb.ToolDefinition]:
        """The tools offered to the model in this turn: the agent's allowed ones, in a conversation
        (a chat completion's tools are the client's own). A gateway that cannot list them costs the
        turn its tools, not the turn: it goes on, and the clients are told why."""
        if spec.client_tools:
            return list(spec.client_tools)
        if not spec.conversation_id or not spec.agent.allowed_tools:
            return []
        try:
            return await self._toolbox.definitions(spec.agent)
        except grpc.aio.AioRpcError as exc:
            await emit(
                pb.ConversationEvent(
                    error=rpc_failure(
                        exc,
                        f"listing agent {spec.agent.name}'s tools (tool-gateway ListTools)",
                        "TOOLS_UNAVAILABLE",
                        spec.turn_id,
                    )
                )
            )
            return []

    async def _run_tools(
        self, spec: TurnSpec, calls: list[proxy_pb.ToolCall], calls_made: int, emit: Emit, halt: Halt
    ) -> list[proxy_pb.ChatMessage] | None:
        """The results of one generation's calls; None if `halt` stopped them first."""
        running = asyncio.ensure_future(
            run_all(
                self._toolbox,
                calls,
                allowed=spec.max_tool_calls - calls_made,
                limit=spec.max_tool_calls,
                agent=spec.agent,
                turn_id=spec.turn_id,
                conversation_id=spec.conversation_id,
                emit=emit,
            )
        )
        halted = asyncio.ensure_future(halt.event.wait())
        try:
            await asyncio.wait((running, halted), return_when=asyncio.FIRST_COMPLETED)
        finally:
            halted.cancel()
            if not running.done():
                running.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await running
        if halt.is_set() or running.cancelled():
            return None
        return running.result()

    def _request(
        self,
        spec: TurnSpec,
        messages: list[proxy_pb.ChatMessage],
        tools: list[proxy_pb.ToolDefinition],
    ) -> proxy_pb.GenerateRequest:
        agent = spec.agent
        request = proxy_pb.GenerateRequest(
            turn_id=spec.turn_id,
            conversation_id=spec.conversation_id,
            agent_id=agent.id,
            tenant_id=spec.caller.principal.tenant_id,
            provider=agent.provider,
            model=agent.model,
            system_prompt=spec.system_prompt,
            messages=messages,
            generation=agent.generation,
            tools=tools,
        )
        if spec.overrides is not None:
            request.generation.MergeFrom(spec.overrides)
        if tools and spec.tool_choice is not None:
            request.tool_choice.CopyFrom(spec.tool_choice)
        return request

    async def _generation(
        self, spec: TurnSpec, request: proxy_pb.GenerateRequest, emit: Emit, halt: Halt, pieces: list[str]
    ) -> _Step:
        """One Generate call, its text streamed into the log (appended to `pieces`)."""
        agent = spec.agent
        first = len(pieces)
        # The call carries the caller's token with the agent as its actor (a failed exchange fails
        # the call, with a message that says so).
        with acting_agent(acting(agent)):
            call = self._downstream.agent_proxy.Generate(request, timeout=self._turn_timeout)
        watcher = asyncio.create_task(_cancel_on(halt, call))
        relay = _Relay(call)
        try:
            # Deltas that arrive while the previous event is being appended go out as one event:
            # the log's cost is per event, not per token, so a fast stream costs fewer appends.
            async for text in relay.batches():
                await emit(
                    pb.ConversationEvent(
                        token_delta=pb.TokenDelta(
                            turn_id=spec.turn_id, agent_id=agent.id, text=text, index=len(pieces)
                        )
                    )
                )
                pieces.append(text)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.CANCELLED and halt.is_set():
                return _Step(ended=TurnResult(halt.outcome))
            return _Step(
                ended=TurnResult(
                    pb.TURN_OUTCOME_FAILED,
                    error=rpc_failure(
                        exc,
                        f"agent {agent.name} generating (agent-proxy Generate)",
                        "GENERATE_FAILED",
                        spec.turn_id,
                    ),
                )
            )
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if halt.is_set() and (current is None or not current.cancelling()):
                return _Step(ended=TurnResult(halt.outcome))
            raise
        finally:
            await relay.stop()
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        return _Step(completion=relay.completion, tool_calls=relay.tool_calls, text="".join(pieces[first:]))

    async def commit_turn(
        self,
        spec: TurnSpec,
        result: TurnResult,
        completion: proxy_pb.GenerateCompletion | None,
        started: float,
        bill: RoundBill | None = None,
    ) -> usage_pb2.UsageEvent | pb.ErrorEvent:
        """Commit the hold with the turn's AGENT_TURN event (and with it, in the same call, the
        round's orchestration in `bill`, if given); the turn's event, or why it failed."""
        dimensions = usage_pb2.UsageDimensions()
        if completion is not None and completion.HasField("usage"):
            dimensions.CopyFrom(completion.usage)
        else:
            # Cut short (cancelled): the agent proxy estimates the same way in its copy of the event.
            prompt = sum(len(m.text) for m in spec.messages) + len(spec.system_prompt)
            dimensions.input_tokens = max(1, round(prompt / CHARS_PER_TOKEN))
            dimensions.output_tokens = round(len(result.text) / CHARS_PER_TOKEN)
            dimensions.provider, dimensions.model = spec.agent.provider, spec.agent.model
            dimensions.estimated = True
        if not dimensions.duration_ms:
            dimensions.duration_ms = int((time.monotonic() - started) * 1000)
        principal = spec.caller.principal
        event = usage_pb2.UsageEvent(
            event_id=agent_turn_event_id(spec.turn_id),
            time=now_timestamp(),
            tenant_id=principal.tenant_id,
            user_id=principal.user_id,
            agent_id=spec.agent.id,
            conversation_id=spec.conversation_id,
            turn_id=spec.turn_id,
            type=usage_pb2.USAGE_EVENT_TYPE_AGENT_TURN,
            dimensions=dimensions,
            actor_chain=principal.actor_chain,
        )
        if bill is None:
            failure = await self.commit(spec.turn_id, event, "the turn's usage")
        else:
            orchestration = bill.event()
            failure, orchestration_failure = await self.commit_holds(
                [
                    Settle(spec.turn_id, event, "the turn's usage"),
                    Settle(orchestration.event_id, orchestration, "the round's usage"),
                ]
            )
            # Not billed here: the round's end commits it on its own, and says so if that fails.
            if orchestration_failure is None:
                bill.billed = orchestration
        if failure is not None:
            return failure
        result.usage = dimensions
        return event


@dataclass
class RoundBill:
    """A round's ORCHESTRATION usage, committed with the usage of the turn it is known to end with
    (its policy's turn limit is reached with that turn): one metering call, not two. `event` builds
    it when committed; `billed` is it once committed, so the round's end bills it no second time.
    Folded or not, it is the same hold and the same event id: a takeover that commits it again
    finds both already recorded."""

    event: Callable[[], usage_pb2.UsageEvent]
    billed: usage_pb2.UsageEvent | None = None


@dataclass
class _Step:
    """What one Generate call of a turn gave: how the turn ended if it did (cancelled, failed), or
    its completion, the tool calls the model asked for and the text it wrote."""

    ended: TurnResult | None = None
    completion: proxy_pb.GenerateCompletion | None = None
    tool_calls: list[proxy_pb.ToolCall] = field(default_factory=list)
    text: str = ""


def _combined(
    total: proxy_pb.GenerateCompletion | None, latest: proxy_pb.GenerateCompletion | None
) -> proxy_pb.GenerateCompletion | None:
    """The completion of a turn's generations so far: the latest's, with the usage of all."""
    if latest is None or total is None:
        return latest or total
    merged = proxy_pb.GenerateCompletion()
    merged.CopyFrom(latest)
    merged.usage.input_tokens += total.usage.input_tokens
    merged.usage.output_tokens += total.usage.output_tokens
    merged.usage.duration_ms += total.usage.duration_ms
    merged.usage.estimated = merged.usage.estimated or total.usage.estimated
    return merged


class _Relay:
    """Reads a Generate stream in its own task, so the deltas that arrive while the caller is busy
    with the previous batch are joined into the next one; the completion is kept aside."""

    def __init__(self, call: grpc.aio.UnaryStreamCall) -> None:  # type: ignore[type-arg]
        self._call = call
        self._pending: list[str] = []
        self._arrived = asyncio.Event()
        self._reader: asyncio.Task[None] = asyncio.create_task(self._read())
        self.completion: proxy_pb.GenerateCompletion | None = None
        self.tool_calls: list[proxy_pb.ToolCall] = []

    async def _read(self) -> None:
        try:
            async for response in self._call:
                if response.HasField("text_delta"):
                    self._pending.append(response.text_delta.text)
                    self._arrived.set()
                elif response.HasField("tool_call"):
                    self.tool_calls.append(response.tool_call)
                elif response.HasField("completion"):
                    self.completion = response.completion
        finally:
            self._arrived.set()

    async def batches(self) -> AsyncIterator[str]:
        """The text in batches, in order; then the stream's own error, if it failed."""
        while True:
            if not self._pending and not self._reader.done():
                await self._arrived.wait()
            self._arrived.clear()
            if self._pending:
                text = "".join(self._pending)
                self._pending.clear()
                yield text
            elif self._reader.done():
                await self._reader  # raises the stream's error, if any
                return

    async def stop(self) -> None:
        if not self._reader.done():
            self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await self._reader


async def _cancel_on(halt: Halt, call: grpc.aio.UnaryStreamCall) -> None:  # type: ignore[type-arg]
    await halt.event.wait()
    call.cancel()
