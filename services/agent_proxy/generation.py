"""Generate: queue for a slot, pick a provider whose breaker is closed, fall back before the first
output, relay the text (coalesced for slow readers) and each whole tool call, end with one
completion, and record usage once.

Fallback and retries happen only before the first output (text or a tool call): once some has
reached the caller another attempt would repeat it, so a failure after it ends the call. A failure
before it (connection refused, a 5xx, a timeout, an error event before any content) counts against
its (provider, model) breaker, and the same call goes at once to the next candidate whose breaker
lets it through: the requested model, then every other configured one in the configured order
(`Providers.candidates`). When every candidate has failed, the walk starts again after an
exponential backoff with jitter, at most `retries` more times. The caller's deadline bounds it all:
every upstream call (the SDK timeout is the smaller of it and the call timeout, and gRPC cancels
the handler when it passes), each backoff, and each fallback, which is not started once it has
passed. That walk is services/agent_proxy/fallback.py, which speech's calls take too.
A cancelled Generate closes the upstream response before it returns.

An agent of provider `a2a` is an outside A2A agent, not a model: it has no fallback, and its turn
runs in services/agent_proxy/remote_agents.py, in the same queue, metered the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable

from macp.agent_proxy.v1 import agent_proxy_service_pb2 as pb
from macp.common.v1 import usage_pb2

from services.agent_proxy.coalescing import DeltaBuffer
from services.agent_proxy.fair_queue import FairQueue
from services.agent_proxy.fallback import Fallback, bounded
from services.agent_proxy.provider import Finished, ProviderEvent, ProviderFailure, Started, ToolCall, Turn
from services.agent_proxy.providers import Providers, Target
from services.agent_proxy.remote_agents import A2A, RemoteAgents, remote_prompt_characters
from services.agent_proxy.settings import ProxySettings
from services.agent_proxy.turn import as_struct, build_turn, prompt_characters
from services.agent_proxy.usage import TurnRecord, agent_turn_event
from services.runtime.errors import FailedPrecondition, PermissionDenied
from services.runtime.principal import Principal

PublishUsage = Callable[[usage_pb2.UsageEvent], Awaitable[None]]
# Told of each call's time to its first text (queue wait included), by the provider and model that
# gave it: the metrics' hook.
OnFirstToken = Callable[[str, str, float], None]
Upstream = AsyncGenerator[ProviderEvent]
# What a provider's stream produces after it started: the first one ends the retries.
Output = str | ToolCall | Finished


class Generation:
    def __init__(
        self,
        settings: ProxySettings,
        providers: Providers,
        queue: FairQueue,
        publish_usage: PublishUsage,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        remote: RemoteAgents | None = None,
    ) -> None:
        self._settings = settings
        self._providers = providers
        self._remote = remote
        self._queue = queue
        self._publish_usage = publish_usage
        self._fallback = Fallback(settings.retries, settings.retry_base_seconds, sleep)
        self.on_first_token: OnFirstToken = lambda provider, model, seconds: None

    async def generate(
        self, request: pb.GenerateRequest, principal: Principal, time_remaining: float | None
    ) -> AsyncIterator[pb.GenerateResponse]:
        if request.tenant_id != principal.tenant_id:
            raise PermissionDenied("tenant_id: a call may only generate for its token's own tenant")
        if request.provider == A2A:
            async for response in self._remote_turn(request, principal, time_remaining):
                yield response
            return
        self._providers.require(request.provider)
        turn = build_turn(request, self._settings.default_max_tokens)
        record = TurnRecord(
            provider=request.provider,
            model=request.model,
            prompt_characters=prompt_characters(turn),
            in_conversation=bool(request.conversation_id),
        )
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        deadline = arrived + time_remaining if time_remaining is not None else None
        async with (
            self._settling(request, principal, record),
            self._queue.slot(principal.tier, principal.tenant_id),
        ):
            target, (upstream, first) = await self._first_output(request, turn, record, deadline)
            self.on_first_token(record.provider, record.model, loop.time() - arrived)
            async for response in self._relay(target, upstream, first, record):
                yield response

    async def _remote_turn(
        self, request: pb.GenerateRequest, principal: Principal, time_remaining: float | None
    ) -> AsyncIterator[pb.GenerateResponse]:
        """An outside A2A agent's turn: queued, timed and metered as a provider's."""
        if self._remote is None:
            raise FailedPrecondition("provider: this agent proxy does not call outside A2A agents")
        remote = self._remote
        record = TurnRecord(
            provider=A2A,
            model=request.model,
            prompt_characters=remote_prompt_characters(request),
            in_conversation=bool(request.conversation_id),
        )
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        deadline = arrived + time_remaining if time_remaining is not None else None
        first = True
        async with (
            self._settling(request, principal, record),
            self._queue.slot(principal.tier, principal.tenant_id),
        ):
            async for response in remote.generate(request, record, lambda limit: bounded(limit, deadline)):
                if first:
                    first = False
                    self.on_first_token(A2A, request.model, loop.time() - arrived)
                yield response

    @contextlib.asynccontextmanager
    async def _settling(
        self, request: pb.GenerateRequest, principal: Principal, record: TurnRecord
    ) -> AsyncIterator[None]:
        """However a turn ends, its record says how (cut by the caller, failed) and, when it is
        billable, its usage is published."""
        try:
            yield
        except (asyncio.CancelledError, GeneratorExit):
            record.finish_reason = pb.FINISH_REASON_CANCELLED
            raise
        finally:
            if record.finish_reason == pb.FINISH_REASON_UNSPECIFIED:
                record.finish_reason = pb.FINISH_REASON_ERROR
            if record.billable:
                await self._publish_usage(agent_turn_event(request, principal, record))

    def _timeout(self, deadline: float | None) -> float:
        return bounded(self._settings.call_timeout_seconds, deadline)

    async def _first_output(
        self, request: pb.GenerateRequest, turn: Turn, record: TurnRecord, deadline: float | None
    ) -> tuple[Target, tuple[Upstream, Output]]:
        """The first candidate that produces text or a tool call (or finishes), walked as every
        provider call is (fallback.py); a request the provider refused is FAILED_PRECONDITION."""
        return await self._fallback.first_output(
            self._providers.candidates(request.provider, request.model),
            lambda target: self._attempt(target, turn, record, deadline),
            deadline,
            refused=lambda failure: FailedPrecondition(failure.message),
        )

    async def _attempt(
        self, target: Target, turn: Turn, record: TurnRecord, deadline: float | None
    ) -> tuple[Upstream, Output]:
        """One upstream call until its first output; its stream closed when it fails."""
        # The record describes the attempt that answers: usage is metered for that model only.
        record.provider, record.model = target.provider.config.name, target.model
        record.reached_provider, record.input_tokens, record.provider_request_id = False, None, ""
        upstream = target.provider.stream(target.model, turn, self._timeout(deadline))
        try:
            first = await self._until_output(upstream, record)
        except BaseException:
            await upstream.aclose()
            raise
        return upstream, first

    @staticmethod
    async def _until_output(upstream: Upstream, record: TurnRecord) -> Output:
        async for event in upstream:
            if isinstance(event, Started):
                record.reached_provider = True
                record.provider_request_id = event.request_id
                record.input_tokens = event.input_tokens
            else:
                return event
        raise ProviderFailure("the provider's stream ended without an answer", retryable=True)

    async def _relay(
        self, target: Target, upstream: Upstream, first: Output, record: TurnRecord
    ) -> AsyncIterator[pb.GenerateResponse]:
        buffer: DeltaBuffer[ToolCall] = DeltaBuffer()
        failures: list[ProviderFailure] = []
        finished: list[Finished] = []
        if isinstance(first, Finished):
            finished.append(first)
            buffer.close()
            pump = None
            await upstream.aclose()
        else:
            self._buffered(first, buffer, record)
            pump = asyncio.create_task(self._pump(upstream, buffer, record, failures, finished))
        called = False
        try:
            index = 0
            while (part := await buffer.take()) is not None:
                if isinstance(part, str):
                    yield pb.GenerateResponse(text_delta=pb.TextDelta(text=part, index=index))
                    index += 1
                else:
                    called = True
                    call = pb.ToolCall(id=part.id, name=part.name, arguments=as_struct(part.arguments))
                    yield pb.GenerateResponse(tool_call=call)
            if pump is not None:
                await pump
        finally:
            if pump is not None and not pump.done():
                # The pump owns the upstream stream and closes it as it ends; a second cancellation
                # of this call interrupts only the wait, never the close.
                pump.cancel()
                await asyncio.wait([pump])
        if failures:
            target.breaker.record_failure()
            record.finish_reason = pb.FINISH_REASON_ERROR
        else:
            end = finished[0]
            record.finish_reason = end.finish_reason
            if called and end.finish_reason == pb.FINISH_REASON_STOP:
                # Some compatible servers finish a tool-calling answer with "stop"; the caller
                # needs to know the model waits for the results.
                record.finish_reason = pb.FINISH_REASON_TOOL_USE
            record.input_tokens = end.input_tokens if end.input_tokens is not None else record.input_tokens
            record.output_tokens = end.output_tokens
            record.provider_request_id = end.request_id or record.provider_request_id
        completion = pb.GenerateCompletion(
            finish_reason=record.finish_reason,
            usage=record.dimensions(),
            provider_request_id=record.provider_request_id,
        )
        yield pb.GenerateResponse(completion=completion)

    @staticmethod
    def _buffered(part: str | ToolCall, buffer: DeltaBuffer[ToolCall], record: TurnRecord) -> None:
        buffer.put(part)
        if isinstance(part, str):
            record.output_characters += len(part)
        else:  # what the model wrote for the call counts as its output (the usage estimate)
            record.output_characters += len(part.name) + len(json.dumps(part.arguments))

    @classmethod
    async def _pump(
        cls,
        upstream: Upstream,
        buffer: DeltaBuffer[ToolCall],
        record: TurnRecord,
        failures: list[ProviderFailure],
        finished: list[Finished],
    ) -> None:
        """Read the provider as fast as it sends, whatever the caller's pace; close it at the end."""
        try:
            async for event in upstream:
                if isinstance(event, Finished):
                    finished.append(event)
                elif not isinstance(event, Started):
                    cls._buffered(event, buffer, record)
        except ProviderFailure as failure:
            failures.append(failure)
        finally:
            buffer.close()
            await upstream.aclose()
