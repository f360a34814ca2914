"""One round: the agents' answer to one user message, under the conversation's turn policy.

The round holds the conversation's lease (its driver is the only writer of the conversation's
events; see lease.py) and writes every event through it, so a deposed driver writes nothing. It
reserves one orchestration of the tenant's quota, asks the policy for each next turn and runs it
(turns.py), and ends with the round's ORCHESTRATION usage event and a RoundCompleted event. Under
CHOREOGRAPHY the policy names every speaker at once and their turns run side by side, each with
its own halt: a cancel naming one turn stops it alone, a cancel of the round stops them all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, TypeVar

import grpc
from macp.common.v1 import usage_pb2
from macp.conversation.v1 import conversation_service_pb2 as conversation_pb
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb

from services.orchestrator.acceptance import Acceptance
from services.orchestrator.bidding import Bidder
from services.orchestrator.control import Signal
from services.orchestrator.downstream import Downstream
from services.orchestrator.event_log import EventLog
from services.orchestrator.event_shapes import round_completed, rpc_failure, turn_completed
from services.orchestrator.lease import Lease
from services.orchestrator.policies import (
    Choreography,
    Ensemble,
    RoundEnd,
    RoundView,
    Spoken,
    TurnPlan,
    policy_for,
    split_yield,
    turn_limit,
)
from services.orchestrator.preparation import Prepared, Preparer
from services.orchestrator.settings import OrchestratorSettings
from services.orchestrator.spoken_answers import Speaker
from services.orchestrator.tool_use import max_tool_calls
from services.orchestrator.transcript import Said, chat_messages
from services.orchestrator.turns import Halt, RoundBill, TurnResult, TurnRunner, TurnSpec
from services.orchestrator.voice import Voice, VoiceCall
from services.runtime import tracing
from services.runtime.principal import Caller
from services.runtime.protos import now_timestamp
from services.runtime.usage_ids import orchestration_event_id

# The codes of a turn refused rather than failed (quota, plan, permission): the round ends there,
# as every next turn would be refused alike.
_REFUSALS = frozenset(
    code.value[0]
    for code in (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.FAILED_PRECONDITION,
    )
)
log = logging.getLogger("macp.orchestrator.rounds")

T = TypeVar("T")


@dataclass(frozen=True)
class RoundJob:
    """A user message to answer: who sent it, and where it sits in the conversation."""

    caller: Caller
    conversation_id: str
    message_id: str
    text: str
    sequence: int
    mentions: tuple[str, ...] = ()
    # The conversation as read when the message was posted, if this round starts right away (a
    # queued message's round reads it afresh: participants may have changed meanwhile).
    conversation: conversation_pb.Conversation | None = None
    # The W3C trace context of the action that posted the message (services/runtime/tracing.py),
    # so the round is part of that trace even when it runs later (queued) or elsewhere (taken over).
    trace_context: tuple[tuple[str, str], ...] = ()
    # The message asked for its answers to be spoken (its conversation may ask for every round).
    speak: bool = False

    @classmethod
    def posted(
        cls,
        caller: Caller,
        conversation_id: str,
        message: pb.UserMessage,
        sequence: int,
        text: str | None = None,
    ) -> RoundJob:
        """The round of `message`, posted now by `caller` (in the trace of the current action)."""
        trace_context: dict[str, str] = {}
        tracing.inject(trace_context)
        text = message.text if text is None else text
        mentions = tuple(message.mention_agent_ids)
        return cls(
            caller,
            conversation_id,
            message.message_id,
            text,
            sequence,
            mentions,
            None,
            tuple(trace_context.items()),
            message.speak_answers,
        )


@dataclass
class RoundState:
    """What the running round shares with its signal handler and its bidder."""

    job: RoundJob
    lease: Lease
    # The round's inputs, asked for as soon as its driver held the lease (preparation.py); None:
    # the round asks for them itself (a queued message's round).
    preparing: asyncio.Task[Prepared] | None = None
    # Whether its message is in (acceptance.py): a round started while its message is stored
    # writes nothing before it is; a queued message's round starts accepted.
    acceptance: Acceptance = field(default_factory=Acceptance.given)
    prepared: Prepared | None = None
    # The round's orchestration, billed with its last turn when that turn is known to be the last.
    bill: RoundBill | None = None
    halt: Halt = field(default_factory=Halt)
    current_turn: str = ""
    # The turns of a CHOREOGRAPHY round in flight at once, each with its own halt (Halt.within).
    turn_halts: dict[str, Halt] = field(default_factory=dict)
    bidding_turn: str = ""
    client_bids: list[pb.Bid] = field(default_factory=list)


class RoundNotes(Protocol):
    """Where the driver notes how far its round got (markers.py), for whoever takes it over."""

    async def turn(self, conversation_id: str, *turn_ids: str) -> None:
        """The turns `turn_ids` start: one turn (noted with its TurnStarted, before anything it
        costs), or a CHOREOGRAPHY round's, all together before any of them asks for its hold."""

    async def ending(self, conversation_id: str, reason: pb.RoundEndReason.ValueType, turns: int) -> None:
        """The round is over, only its RoundCompleted is left to write (so a client that sends its
        next message on RoundCompleted finds no round in flight, and waits for the lease)."""


class Rounds:
    def __init__(self, downstream: Downstream, events: EventLog, settings: OrchestratorSettings) -> None:
        self._downstream = downstream
        self._events = events
        self._settings = settings
        self._turns = TurnRunner(
            downstream,
            turn_timeout=settings.turn_timeout_seconds,
            reservation_ttl=settings.reservation_ttl_seconds,
            settle_seconds=settings.settle_seconds,
            reserve_seconds=settings.reserve_seconds,
        )
        self._preparer = Preparer(downstream, self._turns, settings.context_messages)
        self._voice = Voice(self._turns, downstream.agent_proxy, settings.turn_timeout_seconds)

    @property
    def turns(self) -> TurnRunner:
        return self._turns

    @property
    def voice(self) -> Voice:
        return self._voice

    @property
    def preparer(self) -> Preparer:
        return self._preparer

    async def run(self, state: RoundState, notes: RoundNotes) -> pb.RoundEndReason.ValueType:
        """Run the round to its end; LeaseLost propagates (the round stops writing at once)."""
        job = state.job
        started = time.monotonic()
        bill = state.bill = RoundBill(partial(self.orchestration_event, job, started))

        async def emit(event: pb.ConversationEvent) -> None:
            await state.acceptance.wait()
            await self._events.append(job.conversation_id, event, state.lease)

        async def finish(turns: int, reason: pb.RoundEndReason.ValueType) -> pb.RoundEndReason.ValueType:
            await notes.ending(job.conversation_id, reason, turns)
            await emit(round_completed(job.message_id, reason, turns))
            return reason

        preparing = state.preparing or asyncio.create_task(
            self._preparer.prepare(job.conversation_id, job.message_id, job.conversation)
        )
        try:
            prepared = await preparing
        except BaseException:
            preparing.cancel()
            raise
        if prepared.orchestration_refusal is not None:
            # Refused its quota (or metering stayed away): not an orchestration, nothing billed.
            await self._preparer.release_first_turn(prepared, "the round was refused its quota")
            await emit(pb.ConversationEvent(error=prepared.failure or prepared.orchestration_refusal))
            return await finish(0, pb.ROUND_END_REASON_FAILED)
        failure = prepared.failure
        spoken: list[Spoken] = []
        reason: pb.RoundEndReason.ValueType = pb.ROUND_END_REASON_FAILED
        try:
            if failure is None:
                try:
                    history = await self._preparer.history(
                        prepared, job.conversation_id, job.message_id, job.sequence, job.text
                    )
                except grpc.aio.AioRpcError as exc:
                    failure = rpc_failure(exc, "loading the conversation", "LOAD_FAILED")
            if failure is None:
                state.prepared = prepared
                reason = await self._speak(state, prepared, history, spoken, emit, notes)
            await state.acceptance.wait()  # a round that wrote nothing may not know yet
        finally:
            if state.acceptance.accepted:
                await self._preparer.release_first_turn(prepared, "the round ended before its first turn")
                # However the round ends (a failure to load, LeaseLost included), it held an
                # orchestration: billed once, here, or with its last turn (RoundBill), or by
                # whoever takes the round over.
                usage: usage_pb2.UsageEvent | pb.ErrorEvent
                if bill.billed is not None:
                    usage = bill.billed
                else:
                    usage = await self.commit_orchestration(job, len(spoken), started)
            else:
                await self._preparer.release(prepared, "the message was not accepted")
        if failure is not None:
            await emit(pb.ConversationEvent(error=failure))
        if isinstance(usage, usage_pb2.UsageEvent):
            await emit(pb.ConversationEvent(usage=usage))
        else:
            await emit(pb.ConversationEvent(error=usage))
        return await finish(len(spoken), reason)

    async def _speak(
        self,
        state: RoundState,
        prepared: Prepared,
        history: list[Said],
        spoken: list[Spoken],
        emit: Callable[[pb.ConversationEvent], Awaitable[None]],
        notes: RoundNotes,
    ) -> pb.RoundEndReason.ValueType:
        """The round's turns, as its policy picks them, until it ends; how it ended. `spoken` fills
        with each turn that got an answer (under CHOREOGRAPHY, with every turn that ran)."""
        job = state.job
        conversation, agents = prepared.conversation, prepared.agents
        names = {agent.id: agent.name for agent in agents}
        view = RoundView(
            question=job.text,
            participants=agents,
            mentions=[m for m in job.mentions if m in names],
            limit=turn_limit(conversation, len(agents), self._settings.default_turn_limit),
            first_turn_id=prepared.first_turn_id,
            spoken=spoken,
        )
        policy = policy_for(
            conversation,
            Bidder(self._downstream, self._settings.bid_window_seconds, state, emit, history, names),
        )
        if isinstance(policy, Choreography):
            if not agents:
                return pb.ROUND_END_REASON_COMPLETED
            return await self._speak_at_once(state, policy, view, history, names, emit, notes)
        while True:
            if state.halt.is_set():
                return _halted(state.halt)
            decision = await policy.next_turn(view) if agents else RoundEnd(pb.ROUND_END_REASON_COMPLETED)
            if isinstance(decision, RoundEnd):
                return decision.reason
            state.current_turn = decision.turn_id
            mark = partial(notes.turn, job.conversation_id, decision.turn_id)
            # With the turn limit reached by this turn, no policy plans another (policies.py): its
            # commit may carry the round's orchestration too.
            last = len(view.spoken) + 1 >= view.limit
            result = await self._start_turn(
                state,
                emit,
                decision,
                len(view.spoken) + 1,
                history,
                names,
                mark,
                state.bill if last else None,
            )
            state.current_turn = ""
            if result.outcome in (pb.TURN_OUTCOME_CANCELLED, pb.TURN_OUTCOME_INTERRUPTED):
                return _halted(state.halt)
            if result.outcome == pb.TURN_OUTCOME_FAILED:
                if policy.failures_end_round or _refused(result):
                    return pb.ROUND_END_REASON_FAILED
                # The agent failed (its error event is out): the round goes on without it.
                view.spoken.append(Spoken(decision.agent.id, "", yielded=False, failed=True))
                continue
            _text, yielded = split_yield(result.text)
            view.spoken.append(Spoken(decision.agent.id, result.text, yielded))
            history.append(Said(decision.agent.id, result.text))

    async def _speak_at_once(
        self,
        state: RoundState,
        policy: Choreography,
        view: RoundView,
        history: Sequence[Said],
        names: dict[str, str],
        emit: Callable[[pb.ConversationEvent], Awaitable[None]],
        notes: RoundNotes,
    ) -> pb.RoundEndReason.ValueType:
        """A CHOREOGRAPHY round: every speaker's turn at once, each on the conversation up to the
        user's message (none sees another's answer of this round); over when the last one is."""
        ensemble = await policy.speakers(view)
        if isinstance(ensemble, RoundEnd):
            return ensemble.reason
        if state.halt.is_set():
            return _halted(state.halt)
        plans = ensemble.plans
        state.turn_halts = {plan.turn_id: state.halt.within(plan.turn_id) for plan in plans}
        # Marked together before any turn asks for its hold: a takeover then releases the hold of
        # every turn it finds marked but not started (sweeper.py).
        await notes.turn(state.job.conversation_id, *state.turn_halts)
        try:
            results = await _all_or_none(
                [
                    self._start_turn(
                        state,
                        emit,
                        plan,
                        index,
                        history,
                        names,
                        _marked_already,
                        halt=state.turn_halts[plan.turn_id],
                    )
                    for index, plan in enumerate(plans, start=1)
                ]
            )
        finally:
            state.turn_halts = {}
        for plan, result in zip(plans, results, strict=True):
            view.spoken.append(Spoken(plan.agent.id, result.text, yielded=False))
        return _ensemble_end(state.halt, ensemble, results)

    def on_signal(self, state: RoundState, signal: Signal) -> None:
        """A control signal for the round in flight (called by the control bus)."""
        if signal.kind == "interrupt":
            state.halt.set(pb.TURN_OUTCOME_INTERRUPTED, state.current_turn)
        elif signal.kind == "cancel":
            if signal.turn_id and signal.turn_id in state.turn_halts:
                state.turn_halts[signal.turn_id].set(pb.TURN_OUTCOME_CANCELLED, signal.turn_id)
            elif not signal.turn_id or signal.turn_id in (state.current_turn, state.bidding_turn):
                state.halt.set(pb.TURN_OUTCOME_CANCELLED, state.current_turn)
        elif signal.kind == "bid" and state.bidding_turn and signal.turn_id in ("", state.bidding_turn):
            state.client_bids.append(
                pb.Bid(
                    agent_id=signal.agent_id,
                    score=signal.score,
                    rationale=signal.rationale,
                    source=pb.BID_SOURCE_CLIENT,
                )
            )

    async def _start_turn(
        self,
        state: RoundState,
        emit: Callable[[pb.ConversationEvent], Awaitable[None]],
        plan: TurnPlan,
        index: int,
        history: Sequence[Said],
        names: dict[str, str],
        mark: Callable[[], Awaitable[None]],
        bill: RoundBill | None = None,
        halt: Halt | None = None,
    ) -> TurnResult:
        """One turn; `mark` (the driver noting the turn in flight) is written with TurnStarted,
        both before the turn's first word (its generation starts meanwhile: a takeover releases
        the hold of a turn it finds marked, or the first turn's, and the agent proxy bills no call
        its caller cut). `halt` stops it (the round's, unless the turn has one of its own)."""
        job, agent = state.job, plan.agent
        spec = TurnSpec(
            turn_id=plan.turn_id,
            agent=agent,
            caller=job.caller,
            conversation_id=job.conversation_id,
            messages=chat_messages(history, agent.id, names, plan.instruction),
            system_prompt=agent.system_prompt,
            max_tool_calls=max_tool_calls(state.prepared.conversation if state.prepared else None),
        )
        # The quota hold is asked for while TurnStarted is written (the first turn's was asked for
        # with the round's): one round trip less to the first token. A refusal still ends the turn
        # before any provider call.
        prepared = state.prepared
        reserving: asyncio.Future[pb.ErrorEvent | None]
        if (
            prepared is not None
            and plan.turn_id == prepared.first_turn_id
            and not prepared.first_turn_settled
        ):
            prepared.first_turn_settled = True  # committed or released by the turn from here on
            reserving = asyncio.get_running_loop().create_future()
            reserving.set_result(prepared.first_turn_refusal)
        else:
            reserving = asyncio.ensure_future(self._turns.reserve_turn(spec.conversation_id, spec.turn_id))
        started = pb.ConversationEvent(
            turn_started=pb.TurnStarted(
                turn_id=plan.turn_id, agent_id=agent.id, trigger_message_id=job.message_id, turn_index=index
            )
        )

        async def announce() -> None:
            await state.acceptance.wait()
            await asyncio.gather(mark(), emit(started))

        # The generation starts while TurnStarted is written (and, in a round that started while
        # its message was stored, before that message is in): what it says waits for TurnStarted.
        announcing = asyncio.ensure_future(announce())

        async def emit_announced(event: pb.ConversationEvent) -> None:
            await asyncio.shield(announcing)
            await emit(event)

        turn_emit = emit_announced
        if job.speak or (prepared is not None and prepared.conversation.speak_answers):
            call = VoiceCall(job.caller, agent, plan.turn_id, job.conversation_id, plan.turn_id)
            turn_emit = Speaker(self._voice, call, emit_announced).emit
        turn = asyncio.ensure_future(
            take_turn(self._turns, spec, turn_emit, halt or state.halt, asyncio.shield(reserving), bill)
        )
        # A turn that cannot be announced stops at once (its generation cut, its hold released by
        # take_turn), not at its first word.
        announcing.add_done_callback(lambda done: _failed(done) is None or turn.cancel())
        try:
            return await turn
        except asyncio.CancelledError:
            failure = _failed(announcing)
            if failure is None:
                raise
            # Stopped before it generated, the turn may hold quota it never released.
            if await reserving is None:
                await self._turns.release(spec.turn_id, "the turn could not be announced")
            raise failure from None
        finally:
            if not announcing.done():
                announcing.cancel()

    async def commit_orchestration(
        self, job: RoundJob, turns: int, started: float | None = None
    ) -> usage_pb2.UsageEvent | pb.ErrorEvent:
        """Bill the round's orchestration (once: the event's id derives from its message); the
        event, or why committing failed. `started`: when the round began, if known."""
        event = self.orchestration_event(job, started)
        failure = await self._turns.commit(event.event_id, event, f"the round's usage ({turns} turns)")
        return event if failure is None else failure

    @staticmethod
    def orchestration_event(job: RoundJob, started: float | None = None) -> usage_pb2.UsageEvent:
        """The round's ORCHESTRATION event, its id (and its hold's) derived from its message; its
        duration from `started`, when the round began, if known."""
        principal = job.caller.principal
        duration_ms = 0 if started is None else int((time.monotonic() - started) * 1000)
        return usage_pb2.UsageEvent(
            event_id=orchestration_event_id(job.conversation_id, job.message_id),
            time=now_timestamp(),
            tenant_id=principal.tenant_id,
            user_id=principal.user_id,
            conversation_id=job.conversation_id,
            type=usage_pb2.USAGE_EVENT_TYPE_ORCHESTRATION,
            dimensions=usage_pb2.UsageDimensions(duration_ms=duration_ms),
            actor_chain=principal.actor_chain,
        )


async def take_turn(
    runner: TurnRunner,
    spec: TurnSpec,
    emit: Callable[[pb.ConversationEvent], Awaitable[None]],
    halt: Halt,
    reserving: Awaitable[pb.ErrorEvent | None] | None = None,
    bill: RoundBill | None = None,
) -> TurnResult:
    """Reserve (unless `reserving` already does), generate, store, commit (with the round's
    orchestration in `bill`, if given: the round ends with this turn), and say how the turn ended
    (TurnStarted is the caller's)."""
    started = time.monotonic()
    refusal = await (
        reserving if reserving is not None else runner.reserve_turn(spec.conversation_id, spec.turn_id)
    )
    if refusal is not None:
        await emit(pb.ConversationEvent(error=refusal))
        await emit(turn_completed(spec.turn_id, spec.agent.id, pb.TURN_OUTCOME_FAILED))
        return TurnResult(pb.TURN_OUTCOME_FAILED, error=refusal)
    try:
        result, completion = await runner.generate(spec, emit, halt)
    except BaseException:
        await asyncio.shield(runner.release(spec.turn_id, "the round stopped mid-turn"))
        raise
    if not result.text:
        # Nothing was said: nothing to store, and nothing consumed worth a turn.
        await runner.release(spec.turn_id, "no answer")
        if result.error is not None:
            await emit(pb.ConversationEvent(error=result.error))
        await emit(turn_completed(spec.turn_id, spec.agent.id, result.outcome))
        return result
    # The answer is stored first, and the turn billed once it is: a stored answer and a billed turn
    # come together (each call is retried while its service is away, ledger.py). An answer that
    # cannot be stored at all is not billed: its hold is released.
    try:
        result.message_id = await runner.store_answer(
            spec.conversation_id, spec.agent.id, spec.turn_id, result.text
        )
    except grpc.aio.AioRpcError as exc:
        await runner.release(spec.turn_id, "the answer could not be stored")
        result.outcome = pb.TURN_OUTCOME_FAILED
        result.error = rpc_failure(
            exc, "storing the answer (conversation AppendMessage)", "STORE_FAILED", spec.turn_id
        )
        await emit(turn_completed(spec.turn_id, spec.agent.id, result.outcome, "", result.text))
        await emit(pb.ConversationEvent(error=result.error))
        return result
    usage = await runner.commit_turn(spec, result, completion, started, bill)
    await emit(turn_completed(spec.turn_id, spec.agent.id, result.outcome, result.message_id, result.text))
    if isinstance(usage, usage_pb2.UsageEvent):
        await emit(pb.ConversationEvent(usage=usage))
    else:
        await emit(pb.ConversationEvent(error=usage))
    if result.error is not None:
        await emit(pb.ConversationEvent(error=result.error))
    return result


async def _marked_already() -> None:
    """A CHOREOGRAPHY round's turns are marked together before any of them starts."""


def _ensemble_end(
    halt: Halt, ensemble: Ensemble, results: Sequence[TurnResult]
) -> pb.RoundEndReason.ValueType:
    """How a CHOREOGRAPHY round ended once all its turns did: as the round was stopped, if it was;
    else as every turn was, when they all failed or were each cancelled; else it completed (at
    the turn limit, if that left a speaker out)."""
    if halt.is_set():
        return _halted(halt)
    outcomes = {result.outcome for result in results}
    if outcomes == {pb.TURN_OUTCOME_FAILED}:
        return pb.ROUND_END_REASON_FAILED
    if outcomes == {pb.TURN_OUTCOME_CANCELLED}:
        return pb.ROUND_END_REASON_CANCELLED
    return pb.ROUND_END_REASON_TURN_LIMIT if ensemble.limited else pb.ROUND_END_REASON_COMPLETED


async def _all_or_none(work: Sequence[Coroutine[Any, Any, T]]) -> list[T]:
    """Run `work` side by side; what each returned, in order. One failing (a lost lease, a turn
    that could not be announced) stops the others, and its error is raised once they ended."""
    tasks = [asyncio.ensure_future(coroutine) for coroutine in work]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
        # Each ends its own way (a cancelled turn releases its hold): wait for all of them.
        await asyncio.wait(tasks)
    failures = [error for task in tasks if not task.cancelled() and (error := task.exception()) is not None]
    if failures:
        raise failures[0]
    return [task.result() for task in tasks]


def _refused(result: TurnResult) -> bool:
    """The turn was refused (quota, plan, permission) rather than failed: so would the next be."""
    return result.error is not None and result.error.code in _REFUSALS


def _failed(future: asyncio.Future[None]) -> BaseException | None:
    """The exception `future` ended with, if it is done and failed."""
    if not future.done() or future.cancelled():
        return None
    return future.exception()


def _halted(halt: Halt) -> pb.RoundEndReason.ValueType:
    if halt.outcome == pb.TURN_OUTCOME_INTERRUPTED:
        return pb.ROUND_END_REASON_INTERRUPTED
    return pb.ROUND_END_REASON_CANCELLED
