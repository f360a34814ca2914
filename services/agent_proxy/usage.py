"""What one Generate consumed, and the AGENT_TURN usage event it becomes.

Token counts are the provider's where it reported them; otherwise (an OpenAI-compatible server
without usage, a cut stream, a cancelled call) they are estimated at four characters per token,
the rule of thumb both providers document, and the event says `estimated`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from macp.agent_proxy.v1 import agent_proxy_service_pb2 as pb
from macp.common.v1 import usage_pb2

from services.runtime.principal import Principal
from services.runtime.protos import now_timestamp
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
    # A turn of a conversation's round (GenerateRequest.conversation_id set), not a completion.
    in_conversation: bool = False
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

        Never for a turn of a conversation: whoever settles its round (the orchestrator driving
        it, or the one that takes it over from its log when the driver dies) bills it, because
        only it knows whether the answer was stored, and a stored answer and a billed turn must
        come together (a copy from here, of a generation whose driver died before logging any of
        it, was a turn billed with no answer). For a call outside any conversation (a chat
        completion) this copy, under the turn's own event id, keeps a completed generation billed
        when its caller dies before its Commit; not when nothing was said or the caller cut the
        call (the caller bills what reached it), nor when no provider took the call.
        """
        return (
            not self.in_conversation
            and self.reached_provider
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
    return usage_pb2.UsageEvent(
        event_id=agent_turn_event_id(request.turn_id),
        time=now_timestamp(),
        tenant_id=principal.tenant_id,
        user_id=principal.user_id,
        agent_id=request.agent_id,
        conversation_id=request.conversation_id,
        turn_id=request.turn_id,
        type=usage_pb2.USAGE_EVENT_TYPE_AGENT_TURN,
        dimensions=record.dimensions(),
        actor_chain=principal.actor_chain,
    )
