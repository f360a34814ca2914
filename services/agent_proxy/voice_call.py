"""What Synthesize and Transcribe share: who a call works for, its record, its usage event, and
the errors a provider's refusal or cut stream becomes (speech.py says when each applies)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from macp.agent_proxy.v1 import agent_proxy_service_pb2 as pb
from macp.common.v1 import usage_pb2

from services.agent_proxy.audio_provider import AudioTarget
from services.agent_proxy.provider import ProviderFailure
from services.runtime.errors import InvalidArgument, PermissionDenied, Unavailable
from services.runtime.principal import Principal
from services.runtime.protos import now_timestamp
from services.runtime.usage_ids import speech_event_id, transcription_event_id


@dataclass
class CallRecord:
    """Filled in while a voice call runs; read once, when it ends however it ends."""

    provider: str
    model: str
    started: float = field(default_factory=time.monotonic)
    provider_request_id: str = ""
    cancelled: bool = False
    # Set when the provider finished: what the call made or heard, the usage to publish.
    dimensions: usage_pb2.UsageDimensions | None = None

    def attempt(self, target: AudioTarget) -> None:
        """The record describes the attempt that answers: usage is metered for that model only."""
        self.provider, self.model = target.provider.config.name, target.model
        self.provider_request_id = ""

    def finish(self, audio_seconds: float, characters: int = 0) -> usage_pb2.UsageDimensions:
        self.dimensions = usage_pb2.UsageDimensions(
            audio_seconds=audio_seconds,
            characters=characters,
            duration_ms=int((time.monotonic() - self.started) * 1000),
            provider=self.provider,
            model=self.model,
        )
        return self.dimensions


def check_tenant(scope: pb.VoiceCallScope, principal: Principal) -> None:
    if scope.tenant_id != principal.tenant_id:
        raise PermissionDenied("scope.tenant_id: a call may only be made for its token's own tenant")


def refused(failure: ProviderFailure) -> Exception:
    """A provider's refusal of the request (a 400): the caller's to fix, in the provider's words."""
    return InvalidArgument(failure.message)


def cut(target: AudioTarget, what: str, after: str, why: str) -> Unavailable:
    """A stream the provider broke after some of it reached the caller: no retry could mend it."""
    return Unavailable(f"{target.name} cut its {what} after {after}: {why}")


def usage_event(
    scope: pb.VoiceCallScope,
    principal: Principal,
    event_type: usage_pb2.UsageEventType.ValueType,
    dimensions: usage_pb2.UsageDimensions,
) -> usage_pb2.UsageEvent:
    """The call's usage event, under the id its caller commits too (services/runtime/usage_ids.py)."""
    synthesis = event_type == usage_pb2.USAGE_EVENT_TYPE_VOICE_SYNTHESIS
    event_id = speech_event_id if synthesis else transcription_event_id
    return usage_pb2.UsageEvent(
        event_id=event_id(scope.request_id),
        time=now_timestamp(),
        tenant_id=principal.tenant_id,
        user_id=principal.user_id,
        agent_id=scope.agent_id,
        conversation_id=scope.conversation_id,
        turn_id=scope.turn_id,
        type=event_type,
        dimensions=dimensions,
        actor_chain=principal.actor_chain,
    )
