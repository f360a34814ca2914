"""What a round's first turn waits for, asked for at once: most of the time to the first token.

A round needs its conversation and agents, the recent messages as context, one orchestration of
the tenant's quota and one agent turn for its first speaker. None of these depends on another, nor
on the user's message being stored: so the driver starts the round the moment it holds the lease,
while the message is still being written (driver.py, acceptance.py), and the round (rounds.py)
only waits for what is not in yet. The first turn's id is derived from the message
(`first_turn_id`) rather than drawn when the policy picks the speaker, so its quota hold can be
asked for before anybody is picked; a hold the round does not use (no speaker, a refusal
elsewhere) is released.

Nothing here writes an event: whatever the round says (a refusal, a failure to load) it says in
order, after the message's MessageAccepted.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Final

import grpc
from macp.conversation.v1 import conversation_service_pb2 as conversation_pb
from macp.metering.v1 import metering_service_pb2 as metering_pb
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb

from services.orchestrator.downstream import Downstream
from services.orchestrator.event_shapes import rpc_failure
from services.orchestrator.ledger import Hold
from services.orchestrator.policies import Agent
from services.orchestrator.transcript import Said
from services.orchestrator.turns import TurnRunner
from services.runtime.usage_ids import orchestration_event_id

# ListMessages' largest page, and what a history page asks for beyond the context it keeps: the
# trigger itself and a few user messages queued behind it, which the round leaves out.
MAX_PAGE: Final = 1000
HISTORY_SLACK: Final = 8
# ListMessagesRequest.order_by, newest first.
NEWEST_FIRST: Final = "sequence desc"
# Above any message's sequence (an int64 column).
LAST_SEQUENCE: Final = 2**63 - 1
# Fixed forever: a first turn's id names its quota hold and, through it, its usage event.
_FIRST_TURN_NAMESPACE: Final = uuid.UUID("0b3f6c1e-52d4-4e8a-9f27-6a1d2c3b4e5f")


def first_turn_id(conversation_id: str, message_id: str) -> str:
    """The id of the first turn of the round that answers `message_id`."""
    return str(uuid.uuid5(_FIRST_TURN_NAMESPACE, f"{conversation_id}:{message_id}"))


@dataclass
class Prepared:
    """The round's inputs, or why it cannot start (`failure`, its first turn's hold released)."""

    orchestration_id: str
    first_turn_id: str
    conversation: conversation_pb.Conversation = field(default_factory=conversation_pb.Conversation)
    agents: list[Agent] = field(default_factory=list)
    # The newest messages, newest first, and the token of the page after them ("" if none).
    recent: list[conversation_pb.Message] = field(default_factory=list)
    more: str = ""
    failure: pb.ErrorEvent | None = None
    # A hold's refusal as the error event to send; None: held.
    orchestration_refusal: pb.ErrorEvent | None = None
    first_turn_refusal: pb.ErrorEvent | None = None
    # Set once a hold is committed by a turn or released, so that it is never released twice.
    orchestration_settled: bool = False
    first_turn_settled: bool = False


class Preparer:
    def __init__(self, downstream: Downstream, turns: TurnRunner, context_messages: int) -> None:
        self._downstream = downstream
        self._turns = turns
        self._context_messages = context_messages

    async def prepare(
        self,
        conversation_id: str,
        message_id: str,
        conversation: conversation_pb.Conversation | None,
    ) -> Prepared:
        """Everything at once: the two quota holds, the conversation and its agents (`conversation`
        if already read), the newest page of messages."""
        prepared = Prepared(
            orchestration_event_id(conversation_id, message_id), first_turn_id(conversation_id, message_id)
        )
        # Both holds in one call (each answered on its own: the orchestration refused does not
        # refuse the first turn, nor the other way round), beside the reads.
        holds = asyncio.ensure_future(
            self._turns.reserve_holds(
                [
                    Hold(
                        prepared.orchestration_id,
                        metering_pb.METER_ORCHESTRATIONS,
                        "the round's orchestration quota",
                        conversation_id,
                    ),
                    Hold(
                        prepared.first_turn_id,
                        metering_pb.METER_AGENT_TURNS,
                        "the turn's quota",
                        conversation_id,
                        prepared.first_turn_id,
                    ),
                ]
            )
        )
        try:
            (prepared.conversation, prepared.agents), (prepared.recent, prepared.more) = await asyncio.gather(
                self._load(conversation_id, conversation), self._newest(conversation_id, "")
            )
        except grpc.aio.AioRpcError as exc:
            # The round still runs (and is billed, rounds.py): it only says why it cannot answer.
            prepared.orchestration_refusal, prepared.first_turn_refusal = await holds
            await self.release_first_turn(prepared, "the conversation could not be loaded")
            prepared.failure = rpc_failure(exc, "loading the conversation", "LOAD_FAILED")
            return prepared
        except BaseException:
            holds.cancel()  # a hold already made expires by itself after its TTL
            raise
        prepared.orchestration_refusal, prepared.first_turn_refusal = await holds
        return prepared

    async def release(self, prepared: Prepared, reason: str) -> None:
        """Release both holds, if made and not settled yet."""
        if prepared.orchestration_refusal is None and not prepared.orchestration_settled:
            prepared.orchestration_settled = True
            await self._turns.release(prepared.orchestration_id, reason)
        await self.release_first_turn(prepared, reason)

    async def release_first_turn(self, prepared: Prepared, reason: str) -> None:
        if prepared.first_turn_refusal is None and not prepared.first_turn_settled:
            prepared.first_turn_settled = True
            await self._turns.release(prepared.first_turn_id, reason)

    async def history(
        self,
        prepared: Prepared,
        conversation_id: str,
        message_id: str,
        sequence: int,
        text: str,
    ) -> list[Said]:
        """The conversation's newest messages as context, the trigger (`text`) last; user messages
        sent after it (queued behind this round) belong to later rounds and are left out. A
        `sequence` of 0: the trigger's is not known yet (its round started while it was stored,
        acceptance.py)."""
        wanted = self._context_messages
        if not sequence:
            # The page was read while the trigger was stored. If it holds the trigger, that gives
            # its sequence; if not, it was read before the trigger was in, so it holds nothing
            # stored after it either (sequences are taken in the order messages are written).
            sequence = next((m.sequence for m in prepared.recent if m.id == message_id), LAST_SEQUENCE)

        def kept(messages: list[conversation_pb.Message]) -> list[conversation_pb.Message]:
            return [
                m
                for m in messages
                if m.id != message_id
                # A turn's tool calls are its own business: its answer says what they gave.
                and m.role != conversation_pb.MESSAGE_ROLE_TOOL
                and not (m.role == conversation_pb.MESSAGE_ROLE_USER and m.sequence > sequence)
            ]

        # One page usually does: it holds the context plus the trigger and any messages queued
        # behind it. A long queue costs more pages.
        newest, page_token = kept(prepared.recent), prepared.more
        while len(newest) < wanted and page_token:
            page, page_token = await self._newest(conversation_id, page_token)
            newest += kept(page)
        history = [Said.of(message) for message in reversed(newest[:wanted])]
        history.append(Said(None, text))
        return history

    async def _load(
        self, conversation_id: str, conversation: conversation_pb.Conversation | None
    ) -> tuple[conversation_pb.Conversation, list[Agent]]:
        if conversation is None:
            conversation = await self._downstream.get_conversation(conversation_id)

        async def agent(agent_id: str) -> Agent | None:
            try:
                return await self._downstream.get_agent(agent_id)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    return None  # deleted since it joined: it no longer speaks
                raise

        found = await asyncio.gather(*(agent(a) for a in conversation.participant_agent_ids))
        return conversation, [a for a in found if a is not None]

    async def _newest(
        self, conversation_id: str, page_token: str
    ) -> tuple[list[conversation_pb.Message], str]:
        """A page of the conversation's messages, newest first (a long conversation costs one page,
        not a read from its first message)."""
        reply = await self._downstream.conversation.ListMessages(
            conversation_pb.ListMessagesRequest(
                conversation_id=conversation_id,
                page_size=min(self._context_messages + HISTORY_SLACK, MAX_PAGE),
                page_token=page_token,
                order_by=NEWEST_FIRST,
            ),
            timeout=self._downstream.timeout,
        )
        return list(reply.messages), reply.next_page_token
