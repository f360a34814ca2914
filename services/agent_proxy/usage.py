"""What one Generate consumed, and the AGENT_TURN usage event it becomes.

Token counts are the provider's where it reported them; otherwise (an OpenAI-compatible server
without usage, a cut stream, a cancelled call) they are estimated at four characters per token,
the rule of thumb both providers document, and the event says `estimated`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from google.protobuf.timestamp_pb2 import Timestamp
from macp.agent_proxy.v1 import agent_proxy_service_pb2 as pb
from macp.common.v1 import usage_pb2

from services.runtime.principal import Principal
from services.runtime.usage_ids import agent_turn_event_id

CHARS_PER_TOKEN = 4


def estimate_tokens(characters: int) -> int:
    return 0 if characters <= 0 else max(1, round(characters / CHARS_PER_TOKEN))


@dataclass
class TurnRecord:
    """Filled in while a Generate runs; read once, when it ends however it ends."""

    provider: str
    model: str
    prompt_characters: int
    started: float = field(default_factory=time.monotonic)
    reached_provider: bool = False
    input_tokens: int | None = None
    output_tokens: int | None = None
    output_characters: int = 0
    finish_reason: pb.FinishReason.ValueType = pb.FINISH_REASON_UNSPECIFIED
    provider_request_id: str = ""

    @property
    def billable(self) -> bool:
        """Whether this proxy publishes the turn's AGENT_TURN event itself.

        Not for a call refused before any provider took it (queue full, every breaker open): it
        used nothing. Not for a call that produced no text: its caller releases the turn's hold
        (no answer, no turn), and one copy here would bill a turn nobody has an answer for. Not
        for a call its caller cancelled: the caller (a halted turn, or the orchestrator that takes
        over a round whose driver died) bills what it relayed and stores it as the answer, and
        only it knows how much of the text reached the conversation. What is left, a generation
        that ended by itself with text, is billed here too, under the turn's own event id, so
        that a caller that dies before its own Commit still leaves the turn billed exactly once.
        """
        return (
            self.reached_provider
            and self.output_characters > 0
            and self.finish_reason != pb.FINISH_REASON_CANCELLED
        )

    def dimensions(self) -> usage_pb2.UsageDimensions:
        estimated = False
        input_tokens, output_tokens = self.input_tokens, self.output_tokens
        if not self.reached_provider:
            input_tokens = output_tokens = 0  # refused before any provider took the call: nothing billed
        if input_tokens is None:
            input_tokens, estimated = estimate_tokens(self.prompt_characters), True
        if output_tokens is None:
            output_tokens, estimated = estimate_tokens(self.output_characters), True
        return usage_pb2.UsageDimensions(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            duration_ms=int((time.monotonic() - self.started) * 1000),
            provider=self.provider,
            model=self.model,
            estimated=estimated,
        )


def agent_turn_event(
    request: pb.GenerateRequest, principal: Principal, record: TurnRecord
) -> usage_pb2.UsageEvent:
    now = Timestamp()
    now.GetCurrentTime()
    return usage_pb2.UsageEvent(
        event_id=agent_turn_event_id(request.turn_id),
        time=now,
        tenant_id=principal.tenant_id,
        user_id=principal.user_id,
        agent_id=request.agent_id,
        conversation_id=request.conversation_id,
        turn_id=request.turn_id,
        type=usage_pb2.USAGE_EVENT_TYPE_AGENT_TURN,
        dimensions=record.dimensions(),
        actor_chain=principal.actor_chain,
    )
