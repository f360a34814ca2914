"""Taking over a round whose driver died: settle what it left exactly as the driver would have.

Every process sweeps the conversations with a round in flight or queued (markers.py). One whose
lease has lapsed has no live driver: the sweeper takes its lease and closes the round the dead
driver left, then drives the queue on. Closing follows the round's own log, which is what its
clients saw:

- a message whose MessageAccepted was never written had no round: its holds are released and
  nothing is said (its sender never heard it was accepted, and sends it again);
- a round that only lacked its RoundCompleted gets it, with the reason its driver noted;
- a round that had not got to its first turn (nothing but its MessageAccepted, and perhaps its
  bidding, in the log) is simply run, as its driver would have: its holds are asked for again
  under the same ids, which metering answers with the holds already made (the holds of turns it
  had marked but not started, which the run will not draw again, are released);
- otherwise each turn that started and did not complete is settled from the text the log holds:
  that text is stored as the agent's answer and billed as the turn (the agent proxy does not bill
  a call its caller cut, agent_proxy/usage.py), or, with no text, its hold is released; a turn
  the log shows completed is never reported again. The round's orchestration is billed once
  (its ORCHESTRATION event), holds the round never used are released, and the round ends with a
  DRIVER_LOST error and RoundCompleted FAILED. "Send the message again" is advised only when no
  answer of the round was stored.

Every call made here is idempotent (the answer's id and the usage event ids derive from the turn
and the message), and every event is written only after all of them succeeded: a takeover that
fails half way is tried again by the next sweep, which finds in the log what got out and writes
only the rest.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
import redis.asyncio as aioredis
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb

from services.orchestrator.event_log import EventLog
from services.orchestrator.event_shapes import error_event, round_completed, turn_completed
from services.orchestrator.lease import Lease, Leases, lease_key
from services.orchestrator.markers import Marker, RoundMarkers
from services.orchestrator.preparation import first_turn_id
from services.orchestrator.rounds import RoundJob, Rounds
from services.runtime.principal import acting_for
from services.runtime.usage_ids import orchestration_event_id

log = logging.getLogger("macp.orchestrator.sweeper")

DRIVER_LOST = "DRIVER_LOST"
STOPPED = "the round's driver stopped"

# Drives a conversation from a held lease: first `closing` (this module's; the round to run, if it
# resumes one), then its queue.
Closing = Callable[[Lease], Awaitable[RoundJob | None]]
Drive = Callable[[Lease, Closing], None]


@dataclass
class RoundSeen:
    """What a round's log shows of it."""

    started: dict[str, pb.TurnStarted] = field(default_factory=dict)
    completed: dict[str, pb.TurnCompleted] = field(default_factory=dict)
    text: dict[str, list[str]] = field(default_factory=dict)
    usage_ids: set[str] = field(default_factory=set)
    driver_lost: bool = False
    round_completed: bool = False
    accepted_sequence: int = 0
    errors: int = 0

    @property
    def resumable(self) -> bool:
        """Nothing of the round got out but its acceptance (and bidding): it can simply run."""
        return not (self.started or self.errors or self.round_completed or self.driver_lost)

    @classmethod
    def of(cls, events: list[pb.ConversationEvent], message_id: str) -> RoundSeen:
        seen = cls()
        for event in events:
            kind = event.WhichOneof("payload")
            if kind == "message_accepted" and event.message_accepted.message_id == message_id:
                seen.accepted_sequence = event.message_accepted.sequence
            elif kind == "turn_started" and event.turn_started.trigger_message_id == message_id:
                seen.started[event.turn_started.turn_id] = event.turn_started
            elif kind == "token_delta" and event.token_delta.turn_id in seen.started:
                seen.text.setdefault(event.token_delta.turn_id, []).append(event.token_delta.text)
            elif kind == "turn_completed" and event.turn_completed.turn_id in seen.started:
                seen.completed[event.turn_completed.turn_id] = event.turn_completed
            elif kind == "usage":
                seen.usage_ids.add(event.usage.event_id)
            elif kind == "error":
                seen.errors += 1
                seen.driver_lost = seen.driver_lost or event.error.detail.reason == DRIVER_LOST
            elif kind == "round_completed" and event.round_completed.trigger_message_id == message_id:
                seen.round_completed = True
        return seen


class Sweeper:
    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str,
        markers: RoundMarkers,
        events: EventLog,
        leases: Leases,
        rounds: Rounds,
        interval: float,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._markers = markers
        self._events = events
        self._leases = leases
        self._rounds = rounds
        self._interval = interval

    async def sweep_forever(self, drive: Drive) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.sweep(drive)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("sweep failed: %s", exc)

    async def sweep(self, drive: Drive) -> None:
        """Take over every conversation whose round or queue has no live driver."""
        for conversation_id in await self._markers.swept():
            if await self._redis.exists(lease_key(self._prefix, conversation_id)):
                continue
            lease = await self._leases.acquire(conversation_id)
            if lease is not None:
                drive(lease, self.close)

    async def close(self, lease: Lease) -> RoundJob | None:
        """End the round a dead driver left in flight, or say it is to be run (see the module's
        docstring): the job to run, if any."""
        conversation_id = lease.conversation_id
        marker = await self._markers.read(conversation_id)
        if marker is None:
            return None
        job = marker.job
        if not await self._redis.exists(self._markers.accepted(conversation_id, job.message_id)):
            await self._release_unused(job, marker, RoundSeen())
            await self._markers.clear(conversation_id)
            return None
        events = await self._events.round_events(conversation_id, job.message_id)
        seen = RoundSeen.of(events or [], job.message_id)
        if seen.round_completed:
            await self._markers.clear(conversation_id)
            return None
        if events is not None and marker.ending is None and seen.resumable:
            log.warning(
                "resuming a round whose driver stopped before its first turn",
                extra={"conversation_id": conversation_id},
            )
            # Turns it marked but never started (a CHOREOGRAPHY round marks all its turns before
            # they start) drew ids of their own: the run draws new ones, so their holds go now.
            # The first turn's id is the round's own: its hold is the run's again.
            first = first_turn_id(job.conversation_id, job.message_id)
            for turn_id in sorted(set(marker.turn_ids) - {first}):
                await self._rounds.turns.release(turn_id, STOPPED)
            # The marker's job may predate the message's store (it is written with the lease).
            return dataclasses.replace(job, sequence=seen.accepted_sequence)
        if marker.ending is not None:
            closing = [round_completed(job.message_id, *marker.ending)]
        else:
            log.warning(
                "taking over a round whose driver stopped",
                extra={"conversation_id": conversation_id, "turn_ids": " ".join(marker.turn_ids)},
            )
            with acting_for(job.caller):  # the round's holds are its caller's
                closing = await self._settle(job, marker, seen)
        *before, last = closing
        for event in before:
            await self._events.append(conversation_id, event, lease)
        # RoundCompleted last, once the marker says the round is ending: a client that sends its
        # next message on it finds the round letting go, not in flight, and its post waits for
        # this lease (driver._claim). A crash in between leaves only RoundCompleted to write.
        ended = last.round_completed
        await self._markers.ending(conversation_id, ended.reason, ended.turn_count)
        await self._events.append(conversation_id, last, lease)
        await self._markers.clear(conversation_id)
        return None

    async def _settle(self, job: RoundJob, marker: Marker, seen: RoundSeen) -> list[pb.ConversationEvent]:
        """Settle every hold of the round; the events that say so, to write once all succeeded."""
        turns = self._rounds.turns
        closing: list[pb.ConversationEvent] = []
        answered = [c for c in seen.completed.values() if c.message_id]
        for turn_id, started in seen.started.items():
            if turn_id in seen.completed:
                continue
            text = "".join(seen.text.get(turn_id, []))
            if not text:
                await turns.release(turn_id, STOPPED)
                closing.append(turn_completed(turn_id, started.agent_id, pb.TURN_OUTCOME_FAILED))
                continue
            message_id = await turns.store_answer(job.conversation_id, started.agent_id, turn_id, text)
            usage = await turns.commit_cut_turn(job.conversation_id, started.agent_id, turn_id, text)
            if isinstance(usage, pb.ErrorEvent):
                raise RuntimeError(f"billing cut turn {turn_id} failed: {usage.detail.message}")
            closing.append(
                turn_completed(turn_id, started.agent_id, pb.TURN_OUTCOME_FAILED, message_id, text)
            )
            if usage.event_id not in seen.usage_ids:
                closing.append(pb.ConversationEvent(usage=usage))
            answered.append(closing[-2].turn_completed)
        await self._release_unused(job, marker, seen)
        orchestration = orchestration_event_id(job.conversation_id, job.message_id)
        if orchestration not in seen.usage_ids:
            billed = await self._rounds.commit_orchestration(job, len(seen.started))
            if isinstance(billed, pb.ErrorEvent):
                raise RuntimeError(f"billing the round's orchestration failed: {billed.detail.message}")
            closing.append(pb.ConversationEvent(usage=billed))
        if not seen.driver_lost:
            advice = (
                f"{len(answered)} answer(s) of the round were stored; it ended early"
                if answered
                else "nothing was stored: the message can be sent again"
            )
            closing.append(
                pb.ConversationEvent(
                    error=error_event(
                        grpc.StatusCode.UNAVAILABLE,
                        DRIVER_LOST,
                        f"the orchestrator process running this round stopped; {advice}",
                        # The turn cut short, when there was one (not several at once).
                        marker.turn_ids[0] if len(marker.turn_ids) == 1 else "",
                    )
                )
            )
        closing.append(round_completed(job.message_id, pb.ROUND_END_REASON_FAILED, len(seen.started)))
        return closing

    async def _release_unused(self, job: RoundJob, marker: Marker, seen: RoundSeen) -> None:
        """Release the holds the round made for turns that never started: the marker's turns
        (held as their TurnStarted was written) and the first turn (held before anyone was picked);
        and the orchestration's, when the round never got as far as its MessageAccepted."""
        turns = self._rounds.turns
        unused = {first_turn_id(job.conversation_id, job.message_id), *marker.turn_ids}
        for turn_id in sorted(unused - set(seen.started)):
            await turns.release(turn_id, STOPPED)
        if not await self._redis.exists(self._markers.accepted(job.conversation_id, job.message_id)):
            orchestration = orchestration_event_id(job.conversation_id, job.message_id)
            await turns.release(orchestration, "the message was never accepted")
