"""Who drives a conversation's rounds: one process at a time, whichever one a message reached.

Posting a message tries to take the conversation's lease (lease.py). With it, the message is
stored and this process drives the round, then every message queued behind it, then lets go.
Without it (a round is running somewhere), the conversation's double-texting policy decides:
REJECT refuses the message before anything is stored; ENQUEUE stores it and queues it for the
driver; INTERRUPT does the same and signals the driver to stop the turn in flight.

Keys, under the deployment's Redis prefix (all `orchestrator:`):
- `queue:<conversation>`: the messages waiting for a round, oldest first (each with its sender's
  token sealed, round_jobs.py, which the round calls the other services with; they expire with
  the token's lifetime);
- `round:<conversation>`: the round in flight (its trigger message, its turn, its sender's sealed token),
  so that if its driver dies another process can end it properly;
- `rounds`: the conversations with a round in flight or queued, which every process sweeps: one
  whose lease lapsed while a round was in flight is taken over (an error event, the round closed,
  its holds released) and its queue driven on;
- `accepted:<conversation>:<message>`: a posted message's sequence and event id, so that a retry
  is answered as a duplicate even while its own round holds the lease.

A message is retried safely: the conversation service stores it once (by its id), and the
accepted key answers the retry without a second round.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

import grpc
import redis.asyncio as aioredis
from macp.conversation.v1 import conversation_service_pb2 as conversation_pb
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb

from services.orchestrator.control import ControlBus, Signal
from services.orchestrator.downstream import Caller, Downstream
from services.orchestrator.event_log import EventLog
from services.orchestrator.lease import Lease, LeaseLost, Leases, lease_key
from services.orchestrator.preparation import Prepared, first_turn_id
from services.orchestrator.round_jobs import RoundJobCodec
from services.orchestrator.rounds import RoundJob, Rounds, RoundState
from services.orchestrator.settings import OrchestratorSettings
from services.orchestrator.turns import error_event
from services.runtime import tracing
from services.runtime.errors import FailedPrecondition, InvalidArgument
from services.runtime.sealing import Sealer
from services.runtime.usage_ids import orchestration_event_id

log = logging.getLogger("macp.orchestrator.driver")

ACCEPTED_SECONDS = 24 * 3600
QUEUE_SECONDS = 3600
# How long a message waits for a driver that has completed its round and is letting go.
LETTING_GO_SECONDS = 1.0
# How often it looks meanwhile: letting go takes a few Redis round trips, about a millisecond.
LETTING_GO_POLL_SECONDS = 0.001


@dataclass(frozen=True)
class Accepted:
    message_id: str
    sequence: int
    duplicate: bool
    event_id: str
    queue_position: int = 0

    def response(self) -> pb.PostMessageResponse:
        return pb.PostMessageResponse(
            message_id=self.message_id,
            sequence=self.sequence,
            duplicate=self.duplicate,
            event_id=self.event_id,
        )


class Driver:
    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str,
        downstream: Downstream,
        events: EventLog,
        leases: Leases,
        bus: ControlBus,
        settings: OrchestratorSettings,
    ) -> None:
        self._redis = redis
        self._jobs = RoundJobCodec(Sealer(settings.sealing_key))
        self._prefix = f"{prefix}orchestrator:"
        self._lease_prefix = prefix
        self._downstream = downstream
        self._events = events
        self._leases = leases
        self._bus = bus
        self._settings = settings
        self.rounds = Rounds(downstream, events, settings)
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def downstream(self) -> Downstream:
        return self._downstream

    # -- keys

    def _queue(self, conversation_id: str) -> str:
        return f"{self._prefix}queue:{conversation_id}"

    def _marker(self, conversation_id: str) -> str:
        return f"{self._prefix}round:{conversation_id}"

    def _accepted(self, conversation_id: str, message_id: str) -> str:
        return f"{self._prefix}accepted:{conversation_id}:{message_id}"

    @property
    def _active(self) -> str:
        return f"{self._prefix}rounds"

    # -- lifecycle

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="orchestrator-sweeper")

    async def stop(self) -> None:
        """Stop driving: rounds in flight stop where they are (their leases lapse or are released,
        and another process's sweep closes them with an error event)."""
        tasks = [t for t in (self._sweeper, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # -- posting

    async def conversation(self, caller: Caller, conversation_id: str) -> conversation_pb.Conversation:
        """The conversation as the caller may see it (NOT_FOUND for another tenant's)."""
        return await self._downstream.get_conversation(caller, conversation_id)

    async def post(self, caller: Caller, conversation_id: str, message: pb.UserMessage) -> Accepted:
        # Independent reads, made at once. The lease comes after them: a client that sends its
        # next message on RoundCompleted finds the round's driver letting go, and the reads give
        # it the time to.
        conversation, seen = await asyncio.gather(
            self.conversation(caller, conversation_id), self._seen(conversation_id, message.message_id)
        )
        _check_message(conversation, message)
        if seen is not None:
            return seen
        policy = conversation.double_texting_policy
        lease = await self._acquire_after_round(conversation_id)
        if lease is None:
            if policy in (
                conversation_pb.DOUBLE_TEXTING_POLICY_REJECT,
                conversation_pb.DOUBLE_TEXTING_POLICY_UNSPECIFIED,
            ):
                raise FailedPrecondition(
                    f"conversation {conversation_id} is still answering an earlier message and its "
                    "double_texting_policy is REJECT: send this one after the round completes"
                )
            return await self._enqueue(caller, conversation_id, message, policy)
        # The round's inputs are asked for while the message is stored: neither waits for the other.
        preparing = asyncio.create_task(
            self.rounds.preparer.prepare(caller, conversation_id, message.message_id, conversation)
        )
        try:
            accepted, job = await self._store(caller, conversation_id, message, lease)
        except BaseException:
            await asyncio.shield(self._discard(caller, preparing, "the message could not be stored"))
            await self._leases.release(lease)
            raise
        if accepted.duplicate:
            await self._discard(caller, preparing, "the message was already posted")
            await self._leases.release(lease)
            return accepted
        # The round starts before the message is noted as accepted: only its retries wait for that.
        self._spawn(self._drive(lease, dataclasses.replace(job, conversation=conversation), preparing))
        await self._remember(conversation_id, accepted)
        return accepted

    async def _discard(self, caller: Caller, preparing: asyncio.Task[Prepared], reason: str) -> None:
        """A round that will not run: its holds released (a failed preparation released its own)."""
        try:
            prepared = await preparing
        except Exception:
            return  # whatever it held expires by itself
        await self.rounds.preparer.release(caller, prepared, reason)

    async def _acquire_after_round(self, conversation_id: str) -> Lease | None:
        """The lease; or, while its driver is only letting go (the round has completed, so a client
        that waited for RoundCompleted sends its next message now), the lease a moment later."""
        deadline = time.monotonic() + LETTING_GO_SECONDS
        while True:
            lease = await self._leases.acquire(conversation_id)
            if lease is not None or time.monotonic() > deadline:
                return lease
            stored = await self._redis.get(self._marker(conversation_id))
            if stored is not None and not json.loads(stored).get("ending"):
                return None  # a round is in flight: the double-texting policy decides
            await asyncio.sleep(LETTING_GO_POLL_SECONDS)

    async def _enqueue(
        self,
        caller: Caller,
        conversation_id: str,
        message: pb.UserMessage,
        policy: conversation_pb.DoubleTextingPolicy.ValueType,
    ) -> Accepted:
        queue = self._queue(conversation_id)
        position = await self._redis.llen(queue)
        accepted, job = await self._store(caller, conversation_id, message, None, queue_position=position + 1)
        if accepted.duplicate:
            return accepted
        await self._remember(conversation_id, accepted)
        pipe = self._redis.pipeline(transaction=True)
        pipe.rpush(queue, self._jobs.encode(job))
        pipe.expire(queue, QUEUE_SECONDS)
        pipe.zadd(self._active, {conversation_id: time.time()})
        await pipe.execute()
        if policy == conversation_pb.DOUBLE_TEXTING_POLICY_INTERRUPT:
            await self._bus.send(conversation_id, Signal("interrupt", reason=f"message {message.message_id}"))
        # The driver may have let go between our failed acquire and the push: take over if so.
        await self._kick(conversation_id)
        return accepted

    async def _seen(self, conversation_id: str, message_id: str) -> Accepted | None:
        stored = await self._redis.get(self._accepted(conversation_id, message_id))
        if stored is None:
            return None
        sequence, event_id = (stored.decode() if isinstance(stored, bytes) else stored).split(" ", 1)
        return Accepted(message_id, int(sequence), True, event_id)

    async def _store(
        self,
        caller: Caller,
        conversation_id: str,
        message: pb.UserMessage,
        lease: Lease | None,
        queue_position: int = 0,
    ) -> tuple[Accepted, RoundJob]:
        principal = caller.principal
        reply = await self._downstream.conversation.AppendMessage(
            conversation_pb.AppendMessageRequest(
                message=conversation_pb.Message(
                    id=message.message_id,
                    conversation_id=conversation_id,
                    role=conversation_pb.MESSAGE_ROLE_USER,
                    author_id=principal.user_id or principal.tenant_id,
                    text=message.text,
                )
            ),
            timeout=self._downstream.timeout,
            metadata=await self._downstream.for_conversation(caller),
        )
        stored = reply.message
        trace_context: dict[str, str] = {}
        tracing.inject(trace_context)
        job = RoundJob(
            caller,
            conversation_id,
            stored.id,
            stored.text,
            stored.sequence,
            tuple(message.mention_agent_ids),
            trace_context=tuple(trace_context.items()),
        )
        if not reply.created:
            seen = await self._seen(conversation_id, stored.id)
            return seen or Accepted(stored.id, stored.sequence, True, ""), job
        event = await self._events.append(
            conversation_id,
            pb.ConversationEvent(
                message_accepted=pb.MessageAccepted(
                    message_id=stored.id, sequence=stored.sequence, queue_position=queue_position
                )
            ),
            lease,
        )
        return Accepted(stored.id, stored.sequence, False, event.event_id, queue_position), job

    async def _remember(self, conversation_id: str, accepted: Accepted) -> None:
        """Note `accepted`, so that a retry of its message is answered as a duplicate."""
        await self._redis.set(
            self._accepted(conversation_id, accepted.message_id),
            f"{accepted.sequence} {accepted.event_id}",
            ex=ACCEPTED_SECONDS,
        )

    async def cancel(self, conversation_id: str, turn_id: str, reason: str) -> None:
        """Cancel a turn (or, with no turn, the round in flight and every queued message)."""
        if not turn_id:
            await self._redis.delete(self._queue(conversation_id))
        await self._bus.send(conversation_id, Signal("cancel", turn_id=turn_id, reason=reason))

    async def bid(self, conversation_id: str, bid: pb.ClientBid) -> None:
        await self._bus.send(
            conversation_id,
            Signal(
                "bid", turn_id=bid.turn_id, agent_id=bid.agent_id, score=bid.score, rationale=bid.rationale
            ),
        )

    # -- driving

    def _spawn(self, work: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _kick(self, conversation_id: str) -> None:
        """Drive the conversation's queue if nobody does."""
        lease = await self._leases.acquire(conversation_id)
        if lease is None:
            return
        job = await self._next_job(conversation_id)
        if job is None:
            await self._leases.release(lease)
            await self._redis.zrem(self._active, conversation_id)
            return
        self._spawn(self._drive(lease, job))

    async def _next_job(self, conversation_id: str) -> RoundJob | None:
        data = await self._redis.lpop(self._queue(conversation_id))
        return None if data is None else self._jobs.decode(data)  # type: ignore[arg-type]

    async def _drive(
        self, lease: Lease, job: RoundJob | None, preparing: asyncio.Task[Prepared] | None = None
    ) -> None:
        conversation_id = lease.conversation_id
        lost = False
        try:
            async with self._leases.held(lease) as lost_event:
                while job is not None and not lost_event.is_set():
                    state = RoundState(job, lease, preparing)
                    preparing = None  # the first round's only
                    watcher = asyncio.create_task(_halt_on(lost_event, state))
                    try:
                        with self._bus.listening(conversation_id, partial(self.rounds.on_signal, state)):
                            await self._run_round(state)
                    except LeaseLost:
                        lost = True
                        break
                    finally:
                        watcher.cancel()
                    job = await self._next_job(conversation_id)
                lost = lost or lost_event.is_set()
        except Exception:
            log.exception("driving conversation %s failed", conversation_id)
            return
        if lost:
            return  # the new holder carries on
        if await self._redis.llen(self._queue(conversation_id)):
            await self._kick(conversation_id)
        else:
            await self._redis.zrem(self._active, conversation_id)
            # A message queued between the check and the removal kicks a driver itself.

    async def _run_round(self, state: RoundState) -> None:
        job = state.job
        marker = self._marker(job.conversation_id)

        async def on_turn(turn_id: str | None) -> None:
            # None: the round is ending (its RoundCompleted comes next). The marker says so rather
            # than going away, so a message sent on RoundCompleted waits for the lease instead of
            # being refused, and a driver dying right here still gets its round closed.
            fields = {"job": self._jobs.encode(job), "turn_id": turn_id or "", "ending": turn_id is None}
            await self._redis.set(marker, json.dumps(fields))

        # The round's marker and its conversation among those the sweep watches, in one round trip.
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(marker, json.dumps({"job": self._jobs.encode(job), "turn_id": "", "ending": False}))
        pipe.zadd(self._active, {job.conversation_id: time.time()})
        await pipe.execute()
        try:
            # The round's span continues the trace of the action that posted its message (a queued
            # message's round runs in the task of the round before it, whose context is not its own).
            with tracing.span(
                "round",
                headers=dict(job.trace_context),
                attributes={"macp.conversation_id": job.conversation_id, "macp.message_id": job.message_id},
            ):
                await self.rounds.run(state, on_turn)
        finally:
            # Left in place only if this process dies here: the sweep then closes the round.
            with contextlib.suppress(Exception):
                await self._redis.delete(marker)

    # -- takeover

    async def _sweep_forever(self) -> None:
        interval = self._settings.lease_ms / 2000
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("sweep failed: %s", exc)

    async def sweep(self) -> None:
        """Take over every conversation whose round or queue has no live driver."""
        members = cast(list[bytes | str], await self._redis.zrange(self._active, 0, -1))
        for member in members:
            conversation_id = member.decode() if isinstance(member, bytes) else member
            if await self._redis.exists(lease_key(self._lease_prefix, conversation_id)):
                continue
            lease = await self._leases.acquire(conversation_id)
            if lease is None:
                continue
            try:
                await self._close_orphan(lease)
            except Exception:
                await self._leases.release(lease)
                raise
            job = await self._next_job(conversation_id)
            if job is None:
                await self._leases.release(lease)
                await self._redis.zrem(self._active, conversation_id)
            else:
                self._spawn(self._drive(lease, job))

    async def _close_orphan(self, lease: Lease) -> None:
        """End the round a dead driver left in flight: events that say so, its holds released."""
        marker = self._marker(lease.conversation_id)
        stored = await self._redis.get(marker)
        if stored is None:
            return
        fields = json.loads(stored)
        job = self._jobs.decode(fields["job"])
        turn_id: str = fields.get("turn_id", "")
        if fields.get("ending"):
            # The driver died as the round ended: close it unless its RoundCompleted got out.
            last = await self._events.last_event(lease.conversation_id)
            closed = (
                last is not None
                and last.HasField("round_completed")
                and last.round_completed.trigger_message_id == job.message_id
            )
            if not closed:
                await self._fail_round(lease, job)
            await self._redis.delete(marker)
            return
        log.warning(
            "taking over a round whose driver stopped",
            extra={"conversation_id": lease.conversation_id, "turn_id": turn_id},
        )
        if turn_id:
            await self._events.append(
                lease.conversation_id,
                pb.ConversationEvent(
                    turn_completed=pb.TurnCompleted(turn_id=turn_id, outcome=pb.TURN_OUTCOME_FAILED)
                ),
                lease,
            )
        await self._events.append(
            lease.conversation_id,
            pb.ConversationEvent(
                error=error_event(
                    grpc.StatusCode.UNAVAILABLE,
                    "DRIVER_LOST",
                    "the orchestrator process running this round stopped; the round ended and the "
                    "message can be sent again",
                    turn_id,
                )
            ),
            lease,
        )
        await self._fail_round(lease, job)
        if turn_id:
            await self.rounds.turns.release(job.caller, turn_id, "the round's driver stopped")
        orchestration = orchestration_event_id(lease.conversation_id, job.message_id)
        await self.rounds.turns.release(job.caller, orchestration, "the round's driver stopped")
        # The first turn's hold is made before the marker names the turn (preparation.py).
        first_turn = first_turn_id(lease.conversation_id, job.message_id)
        if first_turn != turn_id:
            await self.rounds.turns.release(job.caller, first_turn, "the round's driver stopped")
        await self._redis.delete(marker)

    async def _fail_round(self, lease: Lease, job: RoundJob) -> None:
        """Close the round of `job` as failed (its driver is gone)."""
        await self._events.append(
            lease.conversation_id,
            pb.ConversationEvent(
                round_completed=pb.RoundCompleted(
                    trigger_message_id=job.message_id, reason=pb.ROUND_END_REASON_FAILED
                )
            ),
            lease,
        )


def _check_message(conversation: conversation_pb.Conversation, message: pb.UserMessage) -> None:
    """Refuse a message the conversation cannot take (archived, or mentioning a stranger)."""
    if conversation.status == conversation_pb.CONVERSATION_STATUS_ARCHIVED:
        raise FailedPrecondition(f"conversation {conversation.id} is archived; it takes no new messages")
    participants = set(conversation.participant_agent_ids)
    for index, agent_id in enumerate(message.mention_agent_ids):
        if agent_id not in participants:
            raise InvalidArgument(
                f"message.mention_agent_ids[{index}]: agent {agent_id} is not a participant of "
                "this conversation"
            )


async def _halt_on(lost: asyncio.Event, state: RoundState) -> None:
    # A lost lease stops the turn in flight at once: its writes would be refused anyway.
    await lost.wait()
    state.halt.set(pb.TURN_OUTCOME_FAILED, state.current_turn)
