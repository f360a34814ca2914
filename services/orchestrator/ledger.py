"""The calls that settle a turn's money and its answer: quota holds, their commit or release, the
stored answer. Each is idempotent (the hold's id, the usage event's id and the answer's id derive
from the turn), so each is made again while its service is away: a round whose metering, conversation
service or Envoy restarts waits for it, rather than billing a turn with no stored answer or leaving
a hold open until its TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

import grpc
from google.protobuf.duration_pb2 import Duration
from macp.common.v1 import usage_pb2
from macp.conversation.v1 import conversation_service_pb2 as conversation_pb
from macp.metering.v1 import metering_service_pb2 as metering_pb
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb

from services.orchestrator.downstream import Downstream
from services.orchestrator.event_shapes import error_event, rpc_failure
from services.runtime.principal import current_principal
from services.runtime.protos import now_timestamp
from services.runtime.usage_ids import agent_turn_event_id

log = logging.getLogger("macp.orchestrator.ledger")

CHARS_PER_TOKEN = 4
# The codes of a call that may succeed if made again: the callee (or Envoy before it) is away or
# was too slow. Only idempotent calls are retried (see TurnRunner._until_done).
TRANSIENT: Final = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNKNOWN}
)
RETRY_FIRST_SECONDS: Final = 0.1
RETRY_MAX_SECONDS: Final = 2.0

T = TypeVar("T")
_STATUS_CODES: Final = {code.value[0]: code for code in grpc.StatusCode}


@dataclass(frozen=True)
class Hold:
    """`quantity` of `meter` to hold for `what` (named in its refusal), under `reservation_id`."""

    reservation_id: str
    meter: metering_pb.Meter.ValueType
    what: str
    conversation_id: str
    turn_id: str = ""
    quantity: int = 1


@dataclass(frozen=True)
class Settle:
    """A hold to commit with its usage event; `what` is named if committing fails."""

    reservation_id: str
    event: usage_pb2.UsageEvent
    what: str


def _reserve_reason(code: grpc.StatusCode) -> str:
    return "QUOTA_EXCEEDED" if code == grpc.StatusCode.RESOURCE_EXHAUSTED else "RESERVE_FAILED"


def hold_failure(failure: metering_pb.HoldFailure, what: str, reason: str, turn_id: str) -> pb.ErrorEvent:
    """The error event of one hold a batch call did not take or settle: what `rpc_failure` says of
    the same failure of its own call."""
    code = _STATUS_CODES.get(failure.code, grpc.StatusCode.UNKNOWN)
    event = error_event(code, reason, f"{what} failed: {code.name}: {failure.message}", turn_id)
    if failure.reason:
        event.detail.metadata["callee_reason"] = failure.reason
    return event


def answer_message_id(turn_id: str) -> str:
    """The id of the agent's message that answers `turn_id`: one answer per turn, however often stored."""
    return str(uuid.uuid5(uuid.UUID(turn_id), "agent-message"))


def tool_call_message_id(turn_id: str, tool_call_id: str) -> str:
    """The id of the message storing one tool call of `turn_id`: stored once, however often retried."""
    return str(uuid.uuid5(uuid.UUID(turn_id), f"tool-call:{tool_call_id}"))


class Ledger:
    def __init__(
        self,
        downstream: Downstream,
        *,
        reservation_ttl: int,
        settle_seconds: float = 60.0,
        reserve_seconds: float = 10.0,
    ) -> None:
        self._downstream = downstream
        self._reservation_ttl = reservation_ttl
        self._settle_seconds = settle_seconds
        self._reserve_seconds = reserve_seconds

    async def _until_done(self, attempt: Callable[[], Awaitable[T]], budget: float | None = None) -> T:
        """attempt() again while it fails for a transient reason, for up to `budget` seconds
        (`settle_seconds` unless given).

        For the calls that settle a turn (storing its answer, committing or releasing its hold):
        each is idempotent, and each must happen even when its service restarts meanwhile, or a
        turn is billed with no stored answer or a hold stays open until its TTL.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self._settle_seconds if budget is None else budget)
        delay = RETRY_FIRST_SECONDS
        while True:
            try:
                return await attempt()
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in TRANSIENT or loop.time() + delay > deadline:
                    raise
                log.warning("retrying in %.1f s: %s %s", delay, exc.code().name, exc.details())
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)

    async def reserve_turn(self, conversation_id: str, turn_id: str) -> pb.ErrorEvent | None:
        """Hold one agent turn for `turn_id` (its reservation's id too), before or with its spec."""
        return await self.reserve(
            turn_id,
            metering_pb.METER_AGENT_TURNS,
            "the turn's quota",
            conversation_id=conversation_id,
            turn_id=turn_id,
        )

    def _reserve_request(self, hold: Hold) -> metering_pb.ReserveRequest:
        return metering_pb.ReserveRequest(
            reservation_id=hold.reservation_id,
            tenant_id=current_principal().tenant_id,
            meter=hold.meter,
            quantity=hold.quantity,
            conversation_id=hold.conversation_id,
            turn_id=hold.turn_id,
            ttl=Duration(seconds=self._reservation_ttl),
        )

    async def reserve(
        self,
        reservation_id: str,
        meter: metering_pb.Meter.ValueType,
        what: str,
        *,
        conversation_id: str,
        turn_id: str = "",
        quantity: int = 1,
    ) -> pb.ErrorEvent | None:
        """Hold `quantity` of `meter` (metering Reserve); the refusal as an error event, if refused."""
        hold = Hold(reservation_id, meter, what, conversation_id, turn_id, quantity)
        request = self._reserve_request(hold)

        async def attempt() -> object:
            return await self._downstream.metering.Reserve(
                request,
                timeout=self._downstream.timeout,
            )

        # Idempotent by reservation id, so asked again while metering restarts: a round waits for
        # it rather than failing (a refusal for quota is not transient and answers at once). Not
        # as long as a settlement is retried: nothing is owed yet, and a caller waits for it.
        try:
            await self._until_done(attempt, self._reserve_seconds)
        except grpc.aio.AioRpcError as exc:
            return rpc_failure(
                exc, f"reserving {what} (metering Reserve)", _reserve_reason(exc.code()), turn_id
            )
        return None

    async def reserve_holds(self, holds: Sequence[Hold]) -> list[pb.ErrorEvent | None]:
        """Hold one unit for each of `holds` in one call (metering ReserveHolds): for each, in
        order, its refusal as an error event, or None if held. Each hold is answered on its own, as
        `reserve` would answer it; the call is retried as `reserve` is (every hold is idempotent by
        its id), and if it fails all the same, every hold fails with it."""
        request = metering_pb.ReserveHoldsRequest(holds=[self._reserve_request(hold) for hold in holds])

        async def attempt() -> metering_pb.ReserveHoldsResponse:
            response: metering_pb.ReserveHoldsResponse = await self._downstream.metering.ReserveHolds(
                request, timeout=self._downstream.timeout
            )
            return response

        try:
            response = await self._until_done(attempt, self._reserve_seconds)
        except grpc.aio.AioRpcError as exc:
            reason = _reserve_reason(exc.code())
            return [
                rpc_failure(exc, f"reserving {hold.what} (metering ReserveHolds)", reason, hold.turn_id)
                for hold in holds
            ]
        refusals: list[pb.ErrorEvent | None] = []
        for hold, result in zip(holds, response.results, strict=True):
            if result.HasField("reserved"):
                refusals.append(None)
                continue
            code = _STATUS_CODES.get(result.failure.code, grpc.StatusCode.UNKNOWN)
            refusals.append(
                hold_failure(
                    result.failure,
                    f"reserving {hold.what} (metering ReserveHolds)",
                    _reserve_reason(code),
                    hold.turn_id,
                )
            )
        return refusals

    async def commit(
        self, reservation_id: str, event: usage_pb2.UsageEvent, what: str
    ) -> pb.ErrorEvent | None:
        """Commit the hold `reservation_id` with its usage `event`; why it failed, if it did."""

        async def attempt() -> object:
            return await self._downstream.metering.Commit(
                metering_pb.CommitRequest(reservation_id=reservation_id, usage=[event]),
                timeout=self._downstream.timeout,
            )

        try:
            await self._until_done(attempt)
        except grpc.aio.AioRpcError as exc:
            return rpc_failure(exc, f"committing {what} (metering Commit)", "COMMIT_FAILED", event.turn_id)
        return None

    async def commit_holds(self, settles: Sequence[Settle]) -> list[pb.ErrorEvent | None]:
        """Commit each hold of `settles` with its usage event in one call (metering CommitHolds):
        for each, in order, why it failed, or None. Retried as `commit` is (each hold and event is
        idempotent by its id); each hold answered on its own."""
        request = metering_pb.CommitHoldsRequest(
            holds=[
                metering_pb.CommitRequest(reservation_id=settle.reservation_id, usage=[settle.event])
                for settle in settles
            ]
        )

        async def attempt() -> metering_pb.CommitHoldsResponse:
            response: metering_pb.CommitHoldsResponse = await self._downstream.metering.CommitHolds(
                request, timeout=self._downstream.timeout
            )
            return response

        try:
            response = await self._until_done(attempt)
        except grpc.aio.AioRpcError as exc:
            return [
                rpc_failure(
                    exc,
                    f"committing {settle.what} (metering CommitHolds)",
                    "COMMIT_FAILED",
                    settle.event.turn_id,
                )
                for settle in settles
            ]
        return [
            None
            if result.HasField("committed")
            else hold_failure(
                result.failure,
                f"committing {settle.what} (metering CommitHolds)",
                "COMMIT_FAILED",
                settle.event.turn_id,
            )
            for settle, result in zip(settles, response.results, strict=True)
        ]

    async def release(self, reservation_id: str, reason: str) -> None:
        async def attempt() -> object:
            return await self._downstream.metering.Release(
                metering_pb.ReleaseRequest(reservation_id=reservation_id, reason=reason[:500]),
                timeout=self._downstream.timeout,
            )

        # Retried like a commit; past that, an unreleased hold expires by itself after its TTL.
        try:
            await self._until_done(attempt)
        except grpc.aio.AioRpcError as exc:
            log.warning("release of %s failed: %s", reservation_id, exc.details())

    async def store_answer(self, conversation_id: str, agent_id: str, turn_id: str, text: str) -> str:
        """`text` stored as `agent_id`'s answer of `turn_id`, retried while the conversation
        service is away; the message's id."""
        message = conversation_pb.Message(
            id=answer_message_id(turn_id),
            conversation_id=conversation_id,
            role=conversation_pb.MESSAGE_ROLE_AGENT,
            author_id=agent_id,
            text=_storable(text),
            turn_id=turn_id,
        )
        return await self._store(message)

    async def store_tool_call(
        self,
        conversation_id: str,
        agent_id: str,
        turn_id: str,
        record: conversation_pb.ToolCallRecord,
        result: str,
    ) -> str:
        """One tool call of `turn_id` and its `result` stored as a TOOL message of `agent_id`,
        retried while the conversation service is away; the message's id."""
        message = conversation_pb.Message(
            id=tool_call_message_id(turn_id, record.tool_call_id),
            conversation_id=conversation_id,
            role=conversation_pb.MESSAGE_ROLE_TOOL,
            author_id=agent_id,
            text=_storable(result) or "(empty result)",
            turn_id=turn_id,
            tool_call=record,
        )
        return await self._store(message)

    async def _store(self, message: conversation_pb.Message) -> str:
        """`message` appended (idempotent by its id, derived from its turn), retried while the
        conversation service is away; its id."""
        request = conversation_pb.AppendMessageRequest(message=message)

        async def attempt() -> object:
            return await self._downstream.conversation.AppendMessage(
                request, timeout=self._downstream.timeout
            )

        await self._until_done(attempt)
        return message.id

    async def commit_cut_turn(
        self, conversation_id: str, agent_id: str, turn_id: str, text: str
    ) -> usage_pb2.UsageEvent | pb.ErrorEvent:
        """Bill a turn whose driver died mid-answer for the `text` its log holds (an estimate:
        nobody knows what the provider counted); the event, or why committing failed."""
        principal = current_principal()
        event = usage_pb2.UsageEvent(
            event_id=agent_turn_event_id(turn_id),
            time=now_timestamp(),
            tenant_id=principal.tenant_id,
            user_id=principal.user_id,
            agent_id=agent_id,
            conversation_id=conversation_id,
            turn_id=turn_id,
            type=usage_pb2.USAGE_EVENT_TYPE_AGENT_TURN,
            dimensions=usage_pb2.UsageDimensions(
                output_tokens=max(1, round(len(text) / CHARS_PER_TOKEN)), estimated=True
            ),
            actor_chain=principal.actor_chain,
        )
        with contextlib.suppress(grpc.aio.AioRpcError):  # provider and model are only labels
            agent = await self._downstream.get_agent(agent_id)
            event.dimensions.provider, event.dimensions.model = agent.provider, agent.model
        failure = await self.commit(turn_id, event, "the cut turn's usage")
        return event if failure is None else failure


def _storable(text: str) -> str:
    # A provider's (or a tool's) NUL would have the contract refuse the whole message (Postgres
    # cannot store it): it is stored as U+FFFD, the replacement character, as a decoder would.
    return text.replace("\x00", "\ufffd")
