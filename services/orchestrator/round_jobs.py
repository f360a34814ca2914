"""A queued or in-flight round as Redis keeps it, with its sender's bearer token sealed.

A round may be driven by another process than the one its message reached (a queued message, a
takeover after a driver died), and that process calls the other services as the sender, so the
sender's token must be kept with the round. It is kept sealed (AES-256-GCM under
`MACP_ORCHESTRATOR_SEALING_KEY`, services/runtime/sealing.py), bound to its conversation and
message: whoever reads Redis, a dump of it or its replica, holds no usable credential. A hash would
not do: the token is used again, not compared.
"""

from __future__ import annotations

from macp.orchestrator.v1 import stored_round_pb2

from services.orchestrator.rounds import RoundJob
from services.runtime.principal import Caller
from services.runtime.sealing import Sealer


class RoundJobCodec:
    """A RoundJob to and from its Redis form, the internal StoredRound message
    (proto/macp/orchestrator/v1/stored_round.proto)."""

    def __init__(self, sealer: Sealer) -> None:
        self._sealer = sealer

    def encode(self, job: RoundJob) -> bytes:
        sealed = self._sealer.seal(job.caller.token.encode(), _bound_to(job.conversation_id, job.message_id))
        return stored_round_pb2.StoredRound(
            sealed_token=sealed,
            principal=job.caller.principal,
            conversation_id=job.conversation_id,
            message_id=job.message_id,
            text=job.text,
            sequence=job.sequence,
            mention_agent_ids=job.mentions,
            trace_context=dict(job.trace_context),
            speak_answers=job.speak,
        ).SerializeToString()

    def decode(self, data: bytes) -> RoundJob:
        """The job; SealError when this process's sealing key is not the one that sealed it."""
        stored = stored_round_pb2.StoredRound.FromString(data)
        bound = _bound_to(stored.conversation_id, stored.message_id)
        token = self._sealer.open(stored.sealed_token, bound).decode()
        return RoundJob(
            caller=Caller(token, stored.principal),
            conversation_id=stored.conversation_id,
            message_id=stored.message_id,
            text=stored.text,
            sequence=stored.sequence,
            mentions=tuple(stored.mention_agent_ids),
            trace_context=tuple(sorted(stored.trace_context.items())),
            speak=stored.speak_answers,
        )


def _bound_to(conversation_id: str, message_id: str) -> bytes:
    return f"round-job {conversation_id} {message_id}".encode()
