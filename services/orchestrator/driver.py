"""Who drives a conversation's rounds: one process at a time, whichever one a message reached.

Posting a message tries to take the conversation's lease (lease.py), writing the round's marker
with it (markers.py). With it, this process drives the round (started while the message is
stored, acceptance.py), then every message queued behind it, then lets go. Without it (a round
is running somewhere), the conversation's double-texting policy decides: REJECT refuses the
message before anything is stored; ENQUEUE stores it and queues it for the driver; INTERRUPT
does the same and signals the driver to stop the turn in flight. A round whose driver dies is
closed by whichever process sweeps it first (sweeper.py).

A message is retried safely: the conversation service stores it once (by its id), and its
MessageAccepted is written once (with the `accepted` key, in one step): a retry is answered as a
duplicate, and a message that was stored but never accepted (its poster died between the two)
is accepted by its retry, which runs its round.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import redis.asyncio as aioredis
from macp.conversation.v1 import conversation_service_pb2 as conversation_pb
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb

from services.orchestrator.acceptance import Acceptance, NotAccepted
from services.orchestrator.control import ControlBus, Signal
from services.orchestrator.downstream import Downstream
from services.orchestrator.event_log import EventLog
from services.orchestrator.lease import Holdup, Lease, LeaseLost, Leases
from services.orchestrator.markers import ACCEPTED_SECONDS, RoundMarkers
from services.orchestrator.preparation import Prepared
from services.orchestrator.round_jobs import RoundJobCodec
from services.orchestrator.rounds import RoundJob, Rounds, RoundState
from services.orchestrator.settings import OrchestratorSettings
from services.orchestrator.sweeper import Closing, Sweeper
from services.runtime import tracing
from services.runtime.errors import FailedPrecondition, InvalidArgument
from services.runtime.principal import Caller, acting_for, current_caller
from services.runtime.sealing import Sealer

Conversation = conversation_pb.Conversation

log = logging.getLogger("macp.orchestrator.driver")

# How often a message looks again for a lease held with no round in flight: from a millisecond
# (letting go is a round trip) up to 20, so that many waiting posters do not flood Redis.
SETTLING_FIRST_POLL_SECONDS = 0.001
SETTLING_LAST_POLL_SECONDS = 0.02
# How many lease times it waits at most (a dead holder's lease lapses within one, and its round is
# closed right after): past them, it is refused (REJECT) or queued as if a round were in flight.
SETTLING_LEASE_TIMES = 3


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
        self._markers = RoundMarkers(redis, prefix, RoundJobCodec(Sealer(settings.sealing_key)))
        self._downstream = downstream
        self._events = events
        self._leases = leases
        self._bus = bus
        self.rounds = Rounds(downstream, events, settings)
        self.sweeper = Sweeper(
            redis, prefix, self._markers, events, leases, self.rounds, interval=settings.lease_ms / 2000
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def downstream(self) -> Downstream:
        return self._downstream

    # -- lifecycle

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(
            self.sweeper.sweep_forever(self._take_over), name="orchestrator-sweeper"
        )

    async def stop(self) -> None:
        """Stop driving: rounds in flight stop where they are (their leases lapse or are released,
        and another process's sweep closes them)."""
        tasks = [t for t in (self._sweeper, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def sweep(self) -> None:
        """One sweep now (tests; the background one runs every half lease)."""
        await self.sweeper.sweep(self._take_over)

    # -- posting

    async def conversation(self, conversation_id: str) -> conversation_pb.Conversation:
        """The conversation as the current caller may see it (NOT_FOUND for another tenant's)."""
        return await self._downstream.get_conversation(conversation_id)

    async def post(self, conversation_id: str, message: pb.UserMessage) -> Accepted:
        caller = current_caller()
        # Independent reads, made at once.
        conversation, seen = await asyncio.gather(
            self.conversation(conversation_id), self._seen(conversation_id, message.message_id)
        )
        _check_message(conversation, message)
        if seen is not None:
            return seen
        policy = conversation.double_texting_policy
        job = RoundJob.posted(caller, conversation_id, message, sequence=0)
        lease = await self._claim(job)
        if lease is None:
            if policy in (
                conversation_pb.DOUBLE_TEXTING_POLICY_REJECT,
                conversation_pb.DOUBLE_TEXTING_POLICY_UNSPECIFIED,
            ):
                raise FailedPrecondition(
                    f"conversation {conversation_id} is still answering an earlier message and its "
                    "double_texting_policy is REJECT: send this one after the round completes"
                )
            # Shielded for the same reason as a round's acceptance below.
            return await asyncio.shield(self._enqueue(caller, conversation_id, message, policy))
        # The round starts while its message is stored (acceptance.py): its inputs are asked for
        # and its first speaker generates meanwhile; it writes nothing before the message is in.
        # (The marker written with the lease names the round first: a takeover releases its holds.)
        preparing = asyncio.create_task(
            self.rounds.preparer.prepare(conversation_id, message.message_id, conversation)
        )
        acceptance = Acceptance.pending()
        self._spawn(
            self._drive(lease, dataclasses.replace(job, conversation=conversation), preparing, acceptance)
        )
        # Shielded: a client that goes away mid-post (its edge died, its stream was cancelled) must
        # not stop a message half-way, accepted in the log but with no round to answer it.
        return await asyncio.shield(self._accept(job, message, lease, acceptance))

    async def _accept(
        self, job: RoundJob, message: pb.UserMessage, lease: Lease, acceptance: Acceptance
    ) -> Accepted:
        """Store the message and tell its round, already started, whether it is in: if not (the
        store failed, or a retry of it was accepted first), the round stops without a word, releases
        its holds and hands the lease on."""
        try:
            accepted, _stored = await self._store(job.caller, job.conversation_id, message, lease)
        except BaseException:
            acceptance.refuse("the message could not be stored")
            await self._until_round_over(acceptance)
            raise
        if accepted.duplicate:
            acceptance.refuse("the message was already posted")
            await self._until_round_over(acceptance)
        else:
            acceptance.accept()
        return accepted

    async def _until_round_over(self, acceptance: Acceptance) -> None:
        """Answer a message that has no round only once that round let go of the lease: the
        poster's next message (or its retry) must find the conversation free, not a round in
        flight. Bounded by the lease time (a round cut short lets go by the lease lapsing)."""
        await asyncio.shield(acceptance.until_round_over(self._leases.ttl_ms / 1000))

    async def _claim(self, job: RoundJob) -> Lease | None:
        """The lease for `job`'s round; None while another round is in flight. A driver hands its
        lease on as it clears its round's marker, one step after RoundCompleted (markers.hand_on);
        until then, and whenever the holder has no round in flight, this waits for the lease. A
        finished round its driver left unclosed is closed first, as a sweep would."""
        note = self._markers.note(job)
        deadline = time.monotonic() + SETTLING_LEASE_TIMES * self._leases.ttl_ms / 1000
        pause = SETTLING_FIRST_POLL_SECONDS
        while True:
            taken = await self._leases.claim(job.conversation_id, note)
            if isinstance(taken, Lease):
                return taken
            if taken is Holdup.IN_FLIGHT or time.monotonic() > deadline:
                return None
            if taken is Holdup.LEFT_OVER:
                await self._kick(job.conversation_id)
            await asyncio.sleep(pause)
            pause = min(pause * 2, SETTLING_LAST_POLL_SECONDS)

    async def _enqueue(
        self,
        caller: Caller,
        conversation_id: str,
        message: pb.UserMessage,
        policy: conversation_pb.DoubleTextingPolicy.ValueType,
    ) -> Accepted:
        position = await self._markers.waiting(conversation_id)
        accepted, job = await self._store(caller, conversation_id, message, None, queue_position=position + 1)
        if accepted.duplicate:
            return accepted
        await self._markers.push(job)
        if policy == conversation_pb.DOUBLE_TEXTING_POLICY_INTERRUPT:
            await self._bus.send(conversation_id, Signal("interrupt", reason=f"message {message.message_id}"))
        # The driver may have let go between our failed acquire and the push: take over if so.
        await self._kick(conversation_id)
        return accepted

    async def seen(self, conversation_id: str, message_id: str) -> bool:
        """Whether the message was accepted already (a retry of it changes nothing)."""
        return await self._seen(conversation_id, message_id) is not None

    async def _seen(self, conversation_id: str, message_id: str) -> Accepted | None:
        stored = await self._markers.accepted_value(conversation_id, message_id)
        return None if stored is None else _accepted_from(message_id, stored)

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
        )
        stored = reply.message
        job = RoundJob.posted(caller, conversation_id, message, stored.sequence, text=stored.text)
        # Stored now or by an earlier try: either way accepted once, by whoever writes this first.
        event, value = await self._events.append_once(
            conversation_id,
            pb.ConversationEvent(
                message_accepted=pb.MessageAccepted(
                    message_id=stored.id, sequence=stored.sequence, queue_position=queue_position
                )
            ),
            lease,
            (self._markers.accepted(conversation_id, stored.id), str(stored.sequence), ACCEPTED_SECONDS),
        )
        if event is None:
            return _accepted_from(stored.id, value), job
        return Accepted(stored.id, stored.sequence, False, event.event_id, queue_position), job

    async def cancel(self, conversation_id: str, turn_id: str, reason: str) -> None:
        """Cancel a turn (or, with no turn, the round in flight and every queued message)."""
        if not turn_id:
            await self._markers.drop_queue(conversation_id)
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

    def _take_over(self, lease: Lease, closing: Closing) -> None:
        """Drive a conversation the sweep took over: close what its dead driver left, then go on."""
        self._spawn(self._drive(lease, None, closing=closing))

    async def _kick(self, conversation_id: str) -> None:
        """Drive the conversation's queue if nobody does (closing first, as a sweep would, a round
        whose driver left it: a queued round never writes over its marker)."""
        lease = await self._leases.acquire(conversation_id)
        if lease is not None:
            self._take_over(lease, self.sweeper.close)

    async def _drive(
        self,
        lease: Lease,
        job: RoundJob | None,
        preparing: asyncio.Task[Prepared] | None = None,
        acceptance: Acceptance | None = None,
        *,
        closing: Closing | None = None,
    ) -> None:
        """Drive `job`'s round (None: the queue's next), then the queue's, until it is empty."""
        conversation_id = lease.conversation_id
        lost = handed_on = False
        first_acceptance = acceptance
        try:
            async with self._leases.held(lease) as lost_event:
                if closing is not None:
                    job = await closing(lease)
                if job is None:
                    job = await self._markers.next(conversation_id)
                while job is not None and not lost_event.is_set():
                    state = RoundState(job, lease, preparing, acceptance or Acceptance.given())
                    preparing, acceptance = None, None  # the first round's only
                    watcher = asyncio.create_task(_halt_on(lost_event, state))
                    try:
                        with self._bus.listening(conversation_id, partial(self.rounds.on_signal, state)):
                            await self._round(state)
                        # The round completed: the queue's next round, or the lease let go, in one
                        # step with clearing its marker (see _claim).
                        job = await self._markers.hand_on(lease)
                    except LeaseLost:
                        lost = True
                        break
                    finally:
                        watcher.cancel()
                        state.acceptance.round_over()
                    if job is None:
                        handed_on = True
                        self._leases.given_up(lease)
                lost = lost or lost_event.is_set()
        except Exception:
            log.exception("driving conversation %s failed", conversation_id)
            return
        finally:
            if first_acceptance is not None:
                first_acceptance.round_over()  # however the drive ended before its round did
        if lost or handed_on:
            return  # the new holder carries on; or the lease went with nothing queued (hand_on)
        if await self._markers.waiting(conversation_id):
            await self._kick(conversation_id)
        else:
            await self._markers.forget(conversation_id)
            # A message queued between the check and the removal kicks a driver itself.

    async def _round(self, state: RoundState) -> None:
        job = state.job
        # The round's span continues the trace of the action that posted its message (a queued
        # message's round runs in the task of the round before it, whose context is not its own).
        # So are its calls: they are made for the caller who posted the message.
        # Its marker is cleared by _drive's hand_on once it ended. One cut short by an error (Redis
        # gone mid-append: whether it happened is unknown, so it is not tried again) is closed by a
        # sweep from its log; one whose lease was lost, by the new holder. One whose message was
        # not accepted wrote nothing and released its holds: the lease goes on as after any round.
        with (
            acting_for(job.caller),
            tracing.span(
                "round",
                headers=dict(job.trace_context),
                attributes={"macp.conversation_id": job.conversation_id, "macp.message_id": job.message_id},
            ),
            contextlib.suppress(NotAccepted),
        ):
            await self.rounds.run(state, self._markers)


def _accepted_from(message_id: str, value: str) -> Accepted:
    """A duplicate's answer from its `accepted` key ("<sequence> <event id>")."""
    sequence, event_id = value.split(" ", 1)
    return Accepted(message_id, int(sequence), True, event_id)


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
